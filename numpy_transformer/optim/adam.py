r"""Adam, as ``torch.optim.Adam``: the update rule :func:`adam_update`, then :class:`Adam`.

Every operation of the rule is element-wise, so it gives the same numbers on any slice of a
parameter as on the whole: the class runs it slice by slice on a large parameter (an embedding
table), so that every temporary of a slice stays in cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from ..functional.checks import check_bool, check_integer, check_real
from .optimizer import HyperParameter, Optimizer, check_update_arrays, flat_slices


def adam_update(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    max_exp_avg_sq: np.ndarray | None = None,
    *,
    check: bool = True,
    scratch: np.ndarray | None = None,
) -> None:
    r"""Update :math:`t` of one parameter by Adam (Kingma & Ba, 2015) with L2 weight decay and optional AMSGrad.

    The rule of ``torch.optim.Adam``. With gradient :math:`g_t`, learning rate :math:`\gamma`,
    betas :math:`\beta_1, \beta_2`, :math:`\epsilon` and weight decay :math:`\lambda`, update
    :math:`t = 1, 2, \dots` is::

        g_t      = g_t + \lambda \theta_{t-1}                  (L2: the decay goes through the moments)
        m_t      = \beta_1 m_{t-1} + (1 - \beta_1) g_t          (m_0 = 0)
        v_t      = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2        (v_0 = 0)
        \hat v_t = \max(\hat v_{t-1}, v_t)  (AMSGrad)  or  v_t
        \theta_t = \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \cdot
                   \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    :math:`\epsilon` is added **after** the bias-corrected square root. (Adding it to
    :math:`\sqrt{\hat v_t}` before dividing by :math:`\sqrt{1 - \beta_2^t}` is a different
    optimizer: early on, while :math:`1 - \beta_2^t` is small, its effective epsilon is
    many times larger.)

    A function of its arguments alone: it writes ``param`` and the moment buffers in place
    and nothing else (``grad`` is only read). Arithmetic stays in the arrays' dtype.

    Parameters
    ----------
    param : ndarray
        :math:`\theta_{t-1}`, float32 or float64; becomes :math:`\theta_t`.
    grad : ndarray
        :math:`g_t`, the shape and dtype of ``param``.
    exp_avg, exp_avg_sq : ndarray
        :math:`m_{t-1}, v_{t-1}` (zeros before update 1), become :math:`m_t, v_t`.
    step : int
        :math:`t` >= 1, the number of this update of this parameter (for the bias corrections).
    lr : float, default 1e-3
        :math:`\gamma` >= 0.
    beta1, beta2 : float, default 0.9, 0.999
        :math:`\beta_1, \beta_2`, each in [0, 1).
    eps : float, default 1e-8
        :math:`\epsilon` > 0.
    weight_decay : float, default 0
        :math:`\lambda` >= 0, added to the gradient (L2). See :func:`adamw_update` for decoupled decay.
    max_exp_avg_sq : ndarray, optional
        AMSGrad's :math:`\hat v_{t-1}` (zeros before update 1), becomes :math:`\hat v_t`; without it, plain Adam.
    check : bool, default True
        False skips the argument checks, for a caller that has made them already: :class:`Adam`
        checks hyper-parameters when they are set and arrays at construction.
    scratch : ndarray, optional
        A contiguous array of ``param``'s dtype with at least ``param.size`` elements, for the one
        temporary of the update (:class:`Adam` passes the same one to every parameter); without it,
        a new array. Its contents are overwritten; the numbers do not depend on it.
    """
    if check:
        given = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
        hyper = check_adam_hyperparameters({**given, "amsgrad": max_exp_avg_sq is not None}, lambda key: key)
        lr, beta1, beta2, eps, weight_decay = (hyper[k] for k in given)
        step = check_integer("step", step, low=1)
        check_update_arrays(param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, max_exp_avg_sq=max_exp_avg_sq)

    step_size = lr / (1.0 - beta1**step)  # gamma / (1 - beta1^t), a Python float
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    if weight_decay != 0.0:
        grad = grad + weight_decay * param  # L2 term joins the gradient (a new array; the stored grad is kept)
    # Every step below writes into the moments, the parameter or the one temporary ``tmp``, in
    # place: the same operations, in the same order, as the one-line forms in the comments, so the
    # same numbers, without a new array per operation.
    if scratch is None:
        tmp = np.empty(param.shape, dtype=param.dtype)
    else:
        tmp = scratch.reshape(-1)[: param.size].reshape(param.shape)
    # exp_avg += (1 - beta1) * (grad - exp_avg): = beta1 m + (1 - beta1) g, written as a step towards g
    np.subtract(grad, exp_avg, out=tmp)
    tmp *= 1.0 - beta1
    exp_avg += tmp
    # exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    exp_avg_sq *= beta2
    np.multiply(grad, grad, out=tmp)
    tmp *= 1.0 - beta2
    exp_avg_sq += tmp
    if max_exp_avg_sq is not None:  # AMSGrad: the running maximum of v
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v_hat = max_exp_avg_sq
    else:
        v_hat = exp_avg_sq
    # denom = sqrt(v_hat) / sqrt(1 - beta2^t) + eps: eps after the bias correction
    denom = np.sqrt(v_hat, out=tmp)
    denom /= bias_correction2_sqrt
    denom += eps
    # param -= step_size * (exp_avg / denom)
    update = np.divide(exp_avg, denom, out=tmp)
    update *= step_size
    param -= update


def _check_beta(name: str, value: object) -> float:
    out = check_real(name, value)
    if not 0.0 <= out < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {out!r}")
    return out


def check_adam_hyperparameters(hyper: Mapping[str, object], label: Callable[[str], str]) -> dict[str, Any]:
    """``hyper`` (the keys of ``Adam._HYPER``) checked, as Python scalars; ``label(key)`` names a key in a message."""
    return {
        "lr": check_real(label("lr"), hyper["lr"], low=0.0),
        "beta1": _check_beta(label("beta1"), hyper["beta1"]),
        "beta2": _check_beta(label("beta2"), hyper["beta2"]),
        "eps": check_real(label("eps"), hyper["eps"], low=0.0, low_inclusive=False),
        "weight_decay": check_real(label("weight_decay"), hyper["weight_decay"], low=0.0),
        "amsgrad": check_bool(label("amsgrad"), hyper["amsgrad"]),
    }


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015) with L2 weight decay and optional AMSGrad, as ``torch.optim.Adam``.

    The rule is written out in :func:`adam_update` (the class's ``update_rule``), which
    :meth:`step` applies to every parameter, slice by slice, with the parameter's own update
    number in the bias corrections (a parameter frozen for a while restarts them, as in PyTorch).

    Parameters
    ----------
    params : module, iterable of (name, param, grad), or list of group dicts
        Anything with ``named_parameters()`` / ``named_grads()``, ``(name, param, grad)``
        triples of float32/float64 arrays of matching shape and dtype, or parameter groups
        ``[{"params": ..., "lr": ..., "betas": ...}, ...]`` (see :class:`Optimizer`).
    lr : float, default 1e-3
        :math:`\gamma` >= 0.
    betas : (float, float), default (0.9, 0.999)
        :math:`\beta_1, \beta_2`, each in [0, 1).
    eps : float, default 1e-8
        :math:`\epsilon` > 0.
    weight_decay : float, default 0
        :math:`\lambda` >= 0, added to the gradient (L2 regularisation). See :class:`AdamW`
        for decoupled decay.
    amsgrad : bool, default False
        Normalise by the running maximum of :math:`v_t`.

    State buffers: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`) and, with AMSGrad,
    ``max_exp_avg_sq`` (:math:`\hat v`) -- PyTorch's names.
    """

    _HYPER: ClassVar[tuple[str, ...]] = ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad")
    _GROUP_KEYS: ClassVar[tuple[str, ...]] = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _PARTS: ClassVar[dict[str, tuple[str, int]]] = {"beta1": ("betas", 0), "beta2": ("betas", 1)}

    update_rule: ClassVar[Callable[..., None]] = staticmethod(adam_update)

    beta1 = HyperParameter()
    beta2 = HyperParameter()
    eps = HyperParameter()
    weight_decay = HyperParameter()
    amsgrad = HyperParameter()

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def _flatten(self, group: Mapping[str, object], prefix: str) -> dict[str, object]:
        out = dict(group)
        if "betas" in out:
            betas = out.pop("betas")
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
                raise TypeError(f"{self._label(prefix, 'betas')}: expected a pair (beta1, beta2), got {betas!r}")
            out["beta1"], out["beta2"] = betas
        return out

    def _unflatten(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        out = {key: hyper[key] for key in self._HYPER}
        out["betas"] = (out.pop("beta1"), out.pop("beta2"))
        return {key: out[key] for key in self._GROUP_KEYS}

    def _validate(self, hyper: Mapping[str, object], prefix: str) -> dict[str, Any]:
        return check_adam_hyperparameters(hyper, lambda key: self._label(prefix, key))

    def _buffer_names(self, hyper: Mapping[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hyper["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _check_same_structure(self, old: Mapping[str, Any], new: Mapping[str, Any], label: Any) -> None:
        if new["amsgrad"] != old["amsgrad"]:
            raise ValueError(
                f"{label('amsgrad')}: {new['amsgrad']} but the group has {old['amsgrad']} "
                "(fixed at construction: it decides the max_exp_avg_sq buffer)"
            )

    def _step_group(self, hyper: Mapping[str, Any], triples: list) -> None:
        lr, beta1, beta2, eps, wd, amsgrad = (hyper[k] for k in self._HYPER)
        scratch: dict[np.dtype, np.ndarray] = {}  # one temporary per dtype, as large as the largest slice
        for name, p, g in triples:
            t = self.param_steps[name]  # = step_count unless the parameter was frozen for a while
            arrays = [p, g, self.state["exp_avg"][name], self.state["exp_avg_sq"][name]]
            if amsgrad:
                arrays.append(self.state["max_exp_avg_sq"][name])
            for p_s, g_s, m_s, v_s, *max_s in flat_slices(arrays):
                v_max = max_s[0] if max_s else None
                tmp = scratch.get(p_s.dtype)
                if tmp is None or tmp.size < p_s.size:
                    tmp = scratch[p_s.dtype] = np.empty(p_s.size, dtype=p_s.dtype)
                self.update_rule(p_s, g_s, m_s, v_s, t, lr, beta1, beta2, eps, wd, v_max, check=False, scratch=tmp)
