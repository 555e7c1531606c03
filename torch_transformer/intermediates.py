"""The twin of ``numpy_transformer.functional.intermediates``: ``expose(name, tensor)`` marks a forward quantity.

The twin's ops call it on the same forward quantities whose gradients the NumPy backward
declares with ``gradient_at``::

    xhat = expose("xhat", (x - mean) / torch.sqrt(var + eps))

``expose`` returns ``tensor`` itself. Only inside ``with tracking() as exposed:``, and only for a
tensor that requires grad, does it call ``tensor.retain_grad()`` and append ``Exposed(name,
tensor)``: after ``backward()`` each ``tensor.grad`` is autograd's gradient of the loss at that
quantity, which ``torch_transformer.explain`` sets next to the NumPy step of the same name.
Off by default (a ``contextvars.ContextVar``); outside ``tracking`` nothing is kept and no
number changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Exposed:
    """A forward quantity of the twin, in forward order; after the backward, ``tensor.grad`` is its gradient."""

    name: str
    tensor: torch.Tensor


_TRACK: ContextVar[list[Exposed] | None] = ContextVar("torch_transformer_exposed", default=None)
_PREFIX: ContextVar[str] = ContextVar("torch_transformer_exposed_prefix", default="")


def expose(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor``; while :func:`tracking` is active and it requires grad, retain and list its gradient."""
    track = _TRACK.get()
    if track is not None and tensor.requires_grad:
        tensor.retain_grad()
        track.append(Exposed(_PREFIX.get() + name, tensor))
    return tensor


def expose_transposed(name: str, tensor: torch.Tensor, dim0: int, dim1: int) -> torch.Tensor:
    """Expose ``tensor`` under ``name`` in the layout the NumPy half uses (``dim0`` and ``dim1`` swapped).

    Returns a view of ``tensor``'s own values (two transposes): the same numbers flow on, and the
    exposed tensor's gradient is the NumPy step's layout (Whisper's front end is (B, M, T) in the
    twin, (B, T, M) in the NumPy backward).
    """
    return expose(name, tensor.transpose(dim0, dim1)).transpose(dim0, dim1)


def is_tracking() -> bool:
    """Whether a :func:`tracking` context is active here."""
    return _TRACK.get() is not None


@contextmanager
def tracking() -> Iterator[list[Exposed]]:
    """List every :func:`expose` inside the block, in forward order."""
    exposed: list[Exposed] = []
    token = _TRACK.set(exposed)
    try:
        yield exposed
    finally:
        _TRACK.reset(token)


@contextmanager
def prefix(scope: str) -> Iterator[None]:
    """Name the tensors exposed inside the block ``scope/name``, as the NumPy backward's ``prefix`` does."""
    token = _PREFIX.set(f"{_PREFIX.get()}{scope}/")
    try:
        yield
    finally:
        _PREFIX.reset(token)


__all__ = ["Exposed", "expose", "expose_transposed", "is_tracking", "prefix", "tracking"]
