r"""Stochastic gradient descent, as ``torch.optim.SGD``: the update rule :func:`sgd_update`, then :class:`SGD`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from ..functional.checks import check_bool, check_integer, check_real
from .optimizer import HyperParameter, Optimizer, check_update_arrays


def sgd_update(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None,
    step: int,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    check: bool = True,
) -> None:
    r"""Update :math:`t` of one parameter by SGD with momentum, dampening, Nesterov and L2 weight decay.

    The rule of ``torch.optim.SGD``. With gradient :math:`g_t`, parameter :math:`\theta`,
    learning rate :math:`\gamma`, momentum :math:`\mu`, dampening :math:`\tau` and weight
    decay :math:`\lambda`, update :math:`t = 1, 2, \dots` is::

        g_t = g_t + \lambda \theta_{t-1}                       (if \lambda \ne 0)
        b_t = g_t                                              (t = 1: the buffer starts at the gradient,
        b_t = \mu b_{t-1} + (1 - \tau) g_t                      t > 1:  not at (1 - \tau) g_1)
        g_t = g_t + \mu b_t   (Nesterov)   or   g_t = b_t       (if \mu \ne 0)
        \theta_t = \theta_{t-1} - \gamma g_t

    A function of its arguments alone: it writes ``param`` and ``momentum_buffer`` in place
    and nothing else (``grad`` is only read). Arithmetic stays in the arrays' dtype.

    Parameters
    ----------
    param : ndarray
        :math:`\theta_{t-1}`, float32 or float64; becomes :math:`\theta_t`.
    grad : ndarray
        :math:`g_t`, the shape and dtype of ``param``.
    momentum_buffer : ndarray or None
        :math:`b_{t-1}` (any values at ``step=1``), becomes :math:`b_t`; ``None`` exactly when
        ``momentum`` is 0 (then there is no buffer).
    step : int
        :math:`t` >= 1, the number of this update of this parameter.
    lr : float
        :math:`\gamma` >= 0.
    momentum : float, default 0
        :math:`\mu` >= 0.
    dampening : float, default 0
        :math:`\tau` in [0, 1].
    weight_decay : float, default 0
        :math:`\lambda` >= 0.
    nesterov : bool, default False
        Needs ``momentum > 0`` and ``dampening == 0`` (as in PyTorch).
    check : bool, default True
        False skips the argument checks, for a caller that has made them already: :class:`SGD`
        checks hyper-parameters when they are set and arrays at construction.
    """
    if check:
        given = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay}
        hyper = check_sgd_hyperparameters({**given, "nesterov": nesterov}, lambda key: key)
        lr, momentum, dampening, weight_decay, nesterov = (hyper[k] for k in (*given, "nesterov"))
        step = check_integer("step", step, low=1)
        check_update_arrays(param, grad, momentum_buffer=momentum_buffer)
        if (momentum_buffer is None) != (momentum == 0.0):
            need = "no buffer: pass None" if momentum == 0.0 else "the buffer b_{t-1} (zeros before update 1)"
            raise ValueError(f"momentum_buffer: momentum is {momentum!r}, so the update needs {need}")

    g = grad + weight_decay * param if weight_decay != 0.0 else grad  # new array: the stored grad is kept
    if momentum != 0.0:
        if step == 1:
            np.copyto(momentum_buffer, g)  # PyTorch starts the buffer at the gradient itself
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1.0 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * g


def check_sgd_hyperparameters(hyper: Mapping[str, object], label: Callable[[str], str]) -> dict[str, Any]:
    """``hyper`` (the keys of ``SGD._HYPER``) checked, as Python scalars; ``label(key)`` names a key in a message."""
    out = {"lr": check_real(label("lr"), hyper["lr"], low=0.0)}
    out["momentum"] = check_real(label("momentum"), hyper["momentum"], low=0.0)
    out["dampening"] = check_real(label("dampening"), hyper["dampening"], low=0.0)
    if out["dampening"] > 1.0:
        raise ValueError(f"{label('dampening')}: expected a number in [0, 1], got {out['dampening']!r}")
    out["weight_decay"] = check_real(label("weight_decay"), hyper["weight_decay"], low=0.0)
    out["nesterov"] = check_bool(label("nesterov"), hyper["nesterov"])
    if out["nesterov"] and (out["momentum"] == 0.0 or out["dampening"] != 0.0):
        raise ValueError(
            f"{label('nesterov')}: Nesterov momentum needs momentum > 0 and dampening == 0, "
            f"got momentum={out['momentum']!r}, dampening={out['dampening']!r}"
        )
    return out


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay.

    The rule of ``torch.optim.SGD``, written out in :func:`sgd_update`, which :meth:`step`
    applies to every parameter with its own update number (a parameter frozen for a while
    restarts its buffer on its first update, as in PyTorch).

    Parameters
    ----------
    params : module, iterable of (name, param, grad), or list of group dicts
        Anything with ``named_parameters()`` / ``named_grads()``, ``(name, param, grad)``
        triples of float32/float64 arrays of matching shape and dtype, or parameter groups
        ``[{"params": ..., "lr": ..., "momentum": ...}, ...]`` (see :class:`Optimizer`).
    lr : float
        Learning rate :math:`\gamma` >= 0. Required, unless every group gives its own
        (torch's ``required``; leave it ``None`` then).
    momentum : float, default 0
        :math:`\mu` >= 0. With 0 there is no buffer.
    dampening : float, default 0
        :math:`\tau` in [0, 1].
    weight_decay : float, default 0
        L2 coefficient :math:`\lambda` >= 0, added to the gradient.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0`` (as in PyTorch).

    State buffers: ``momentum_buffer`` (only for parameters in a group with ``momentum != 0``).
    """

    _HYPER: ClassVar[tuple[str, ...]] = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _GROUP_KEYS: ClassVar[tuple[str, ...]] = _HYPER

    momentum = HyperParameter()
    dampening = HyperParameter()
    weight_decay = HyperParameter()
    nesterov = HyperParameter()

    def __init__(
        self,
        params: Any,
        lr: float | None = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(
            params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
        )

    def _validate(self, hyper: Mapping[str, object], prefix: str) -> dict[str, Any]:
        return check_sgd_hyperparameters(hyper, lambda key: self._label(prefix, key))

    def _buffer_names(self, hyper: Mapping[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if hyper["momentum"] != 0.0 else ()

    def _check_same_structure(self, old: Mapping[str, Any], new: Mapping[str, Any], label: Any) -> None:
        if (new["momentum"] != 0.0) != (old["momentum"] != 0.0):
            raise ValueError(
                f"{label('momentum')}: {new['momentum']!r} and the group's {old['momentum']!r} disagree "
                "on whether there is a momentum buffer (fixed at construction)"
            )

    def _step_group(self, hyper: Mapping[str, Any], triples: list) -> None:
        buffers = self.state["momentum_buffer"] if hyper["momentum"] != 0.0 else {}
        for name, p, g in triples:
            sgd_update(p, g, buffers.get(name), self.param_steps[name], **hyper, check=False)
