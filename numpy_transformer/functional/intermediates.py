"""Naming the steps of a backward: ``gradient_at(name, value)``, the one switchable recorder of the reference.

A backward pass computes, on its way from ``dout`` to the input gradients, the gradient of the
loss with respect to each forward quantity it goes back through: layer norm's ``g = dout * weight``
is the gradient at ``xhat``, attention's ``dscores`` the gradient at the scores. A backward names
those steps where it computes them::

    g = gradient_at("xhat", dout * weight)  # (..., C) gradient at xhat

``gradient_at`` returns ``value`` itself, unchanged. Only inside ``with recording() as record:``
does it also append ``Recorded(name, copy of value, calling function)`` to ``record``; the
``explain`` command (``python -m numpy_transformer explain OP``) records one backward that way and
sets each step next to autograd's gradient at the twin's tensor of the same name
(``torch_transformer.intermediates.expose``).

DESIGN.md says "no hidden globals, no tape", and this is the one exception, on purpose kept
harmless: the switch is a ``contextvars.ContextVar``, off by default (so threads and other
contexts never see one another's records); when it is off ``gradient_at`` is an identity that
stores nothing and changes no number; when it is on it only copies (a later in-place update of
the array cannot alter what was recorded). No backward ever reads the record back. (:func:`prefix`
only names the steps of a block, for a backward that calls one op twice.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Recorded:
    """One named step of a backward: the gradient of the loss at the forward quantity ``name``."""

    name: str  # the forward quantity's name, as the backward's docstring and comments use it
    value: np.ndarray  # a copy, taken when the backward computed it
    where: str  # the declaring function's qualified name: "layer_norm_backward", "MultiHeadAttention.backward"


_RECORD: ContextVar[list[Recorded] | None] = ContextVar("numpy_transformer_gradient_record", default=None)
_PREFIX: ContextVar[str] = ContextVar("numpy_transformer_gradient_prefix", default="")


def gradient_at(name: str, value: np.ndarray) -> np.ndarray:
    """Return ``value`` unchanged; while :func:`recording` is active, also record a copy under ``name``."""
    record = _RECORD.get()
    if record is not None:
        caller = sys._getframe(1)  # the backward that declares the step
        where = getattr(caller.f_code, "co_qualname", caller.f_code.co_name)  # co_qualname: Python 3.11 and later
        record.append(Recorded(_PREFIX.get() + name, np.array(value, copy=True), where))
    return value


def is_recording() -> bool:
    """Whether a :func:`recording` context is active here."""
    return _RECORD.get() is not None


@contextmanager
def recording() -> Iterator[list[Recorded]]:
    """Record every :func:`gradient_at` inside the block, in the order the backward computes them."""
    record: list[Recorded] = []
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


@contextmanager
def prefix(scope: str) -> Iterator[None]:
    """Name the steps recorded inside the block ``scope/name``: for an op a backward calls twice.

    Pairing with the twin goes by name, occurrence by occurrence in reverse forward order; where a
    backward does not undo its sub-calls in exactly that order (``clip_loss`` takes the image rows'
    cross-entropy first, as its forward does), both halves name the sub-calls, so that the pairing is
    by name, never by luck. The twin's ``torch_transformer.intermediates.prefix`` is the other half.
    """
    token = _PREFIX.set(f"{_PREFIX.get()}{scope}/")
    try:
        yield
    finally:
        _PREFIX.reset(token)


__all__ = ["Recorded", "gradient_at", "is_recording", "prefix", "recording"]
