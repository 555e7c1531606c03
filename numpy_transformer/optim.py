r"""Optimizers, gradient clipping and learning-rate schedules, with PyTorch's update rules.

Everything here is plain NumPy and follows ``torch.optim`` and
``torch.nn.utils.clip_grad_norm_`` operation for operation, so a NumPy run and a
PyTorch run fed the same gradients stay within the parity contract step after step
(``parity_tests/test_optim.py`` checks every parameter and every state buffer).

Parameters and gradients
------------------------
An optimizer takes either a module (anything with ``named_parameters()`` and
``named_grads()`` yielding ``(name, array)`` pairs with the same names in the same
order, like :class:`numpy_transformer.Module`) or a list of ``(name, param, grad)``
triples. It keeps references to those arrays and updates the parameters **in place**,
so the module sees the new values without any copying back. Gradients are read, never
written, by :meth:`Optimizer.step`; :meth:`Optimizer.zero_grad` zeroes them in place.

All arithmetic happens in each parameter's own dtype (float32 or float64): scalars such
as the learning rate stay Python floats, which NumPy applies in the array's dtype, the
same way PyTorch applies a Python scalar to a float32 tensor.

Learning rate and schedules
---------------------------
``optimizer.lr`` is an attribute (checked: >= 0), read at every :meth:`~Optimizer.step`. A schedule
is a pure function of the update number; set the rate just before each update::

    opt.lr = inverse_sqrt_warmup(opt.step_count + 1, d_model=512, warmup_steps=4000)
    opt.step()

Updates are numbered from 1 (the first ``step()`` is update 1), as in the Transformer
paper. In the usual PyTorch loop (``optimizer.step(); scheduler.step()``) a
``LambdaLR`` calls its function with ``last_epoch`` = 0 for the first update, so update
``s`` here is ``last_epoch = s - 1`` there. Both schedules give 0 for ``step=0`` (before any
update) when they have a warm-up.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "clip_grad_norm",
    "inverse_sqrt_warmup",
    "linear_warmup_cosine",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------


def _number(name: str, value: object, *, low: float | None = None, low_inclusive: bool = True) -> float:
    """A finite real number (not a bool) as a Python float, optionally bounded below."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name}: expected a finite number, got {out!r}")
    if low is not None and (out < low or (out == low and not low_inclusive)):
        bound = f">= {low}" if low_inclusive else f"> {low}"
        raise ValueError(f"{name}: expected a number {bound}, got {out!r}")
    return out


def _integer(name: str, value: object, *, low: int = 0) -> int:
    """An integer (not a bool) >= ``low`` as a Python int."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    out = int(value)
    if out < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {out}")
    return out


def _flag(name: str, value: object) -> bool:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _beta(name: str, value: object) -> float:
    out = _number(name, value)
    if not 0.0 <= out < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {out!r}")
    return out


def _check_pair(name: str, param: object, grad: object) -> None:
    for what, a in (("parameter", param), ("gradient", grad)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"params: {what} {name!r} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"params: {what} {name!r} must be float32 or float64, got {a.dtype}")
        if not a.flags.writeable:
            raise ValueError(f"params: {what} {name!r} is read-only; the optimizer updates it in place")
    if grad.shape != param.shape or grad.dtype != param.dtype:
        raise ValueError(
            f"params: gradient {name!r} must match its parameter, shape {param.shape} dtype {param.dtype}; "
            f"got shape {grad.shape} dtype {grad.dtype}"
        )


def _collect_params(params: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, param, grad)`` triples from a module-like object or an iterable of triples."""
    if hasattr(params, "named_parameters") and hasattr(params, "named_grads"):
        named_p = list(params.named_parameters())
        named_g = list(params.named_grads())
        names_p = [n for n, _ in named_p]
        names_g = [n for n, _ in named_g]
        if names_p != names_g:
            raise ValueError(
                f"params: named_parameters() and named_grads() must give the same names in the same order, "
                f"got {names_p} and {names_g}"
            )
        triples = [(n, p, g) for (n, p), (_, g) in zip(named_p, named_g, strict=True)]
    else:
        if isinstance(params, (np.ndarray, str, Mapping)) or not isinstance(params, Iterable):
            raise TypeError(
                "params: expected an object with named_parameters() and named_grads(), or an iterable of "
                f"(name, param, grad) triples; got {type(params).__name__}"
            )
        triples = []
        for item in params:
            if not (isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str)):
                raise TypeError(f"params: expected (name, param, grad) triples, got {item!r:.80}")
            triples.append(item)
    if not triples:
        raise ValueError("params: got no parameters to optimize")
    seen: set[str] = set()
    for name, p, g in triples:
        if name in seen:
            raise ValueError(f"params: duplicate parameter name {name!r}")
        seen.add(name)
        _check_pair(name, p, g)
    return triples


# ---------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------


class Optimizer:
    """Shared machinery: parameter bookkeeping, ``lr``, ``zero_grad`` and the flat state dict.

    A subclass lists its hyper-parameters in ``_HYPER`` (validated by
    :meth:`_validate`) and its per-parameter buffers in :meth:`_buffer_names`.

    Attributes
    ----------
    lr : float
        Learning rate used by the next :meth:`step`; schedules assign it. Must be >= 0.
    step_count : int
        Number of updates made so far (``step()`` calls).
    state : dict[str, dict[str, numpy.ndarray]]
        ``state[buffer][param_name]``: the per-parameter buffers, e.g. ``state["exp_avg"]["weight"]``,
        allocated as zeros at construction in the parameter's shape and dtype.
    """

    _HYPER: ClassVar[tuple[str, ...]] = ("lr",)

    def __init__(self, params: Any, **hyper: object) -> None:
        self._params = _collect_params(params)
        for key, value in self._validate(hyper).items():
            setattr(self, "_lr" if key == "lr" else key, value)
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {
            buf: {name: np.zeros_like(p) for name, p, _ in self._params} for buf in self._buffer_names()
        }

    # -- to be provided by subclasses ------------------------------------------------
    def _validate(self, hyper: Mapping[str, object]) -> dict[str, Any]:
        """Checked, normalised hyper-parameters (Python scalars); raise naming the bad one."""
        return {"lr": _number("lr", hyper["lr"], low=0.0)}

    def _buffer_names(self) -> tuple[str, ...]:
        return ()

    def step(self) -> None:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: object) -> None:
        self._lr = _number("lr", value, low=0.0)

    def hyperparameters(self) -> dict[str, Any]:
        """The current hyper-parameters, keyed as in the constructor (betas split into beta1, beta2)."""
        return {key: getattr(self, key) for key in self._HYPER}

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, p, _ in self._params:
            yield name, p

    def named_grads(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, _, g in self._params:
            yield name, g

    def zero_grad(self) -> None:
        """Set every gradient to zero, in place."""
        for _, _, g in self._params:
            g.fill(0)

    def state_dict(self) -> dict[str, Any]:
        """A flat dict of Python scalars and array copies, ready for ``np.savez(path, **state)``.

        Keys: ``"type"`` (the class name), ``"step"``, every hyper-parameter (``"lr"``, ...)
        and ``"<buffer>.<param name>"`` for every buffer, e.g. ``"exp_avg.q_proj.weight"``.
        """
        out: dict[str, Any] = {"type": type(self).__name__, "step": self.step_count}
        out.update(self.hyperparameters())
        for buf, arrays in self.state.items():
            for name, a in arrays.items():
                out[f"{buf}.{name}"] = a.copy()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore step count, hyper-parameters and buffers from :meth:`state_dict` (or its ``.npz``).

        Scalars may be Python scalars or 0-d arrays (what ``np.load`` gives back). The keys
        must be exactly those of this optimizer's own state dict, every buffer must have its
        parameter's shape and dtype, and the hyper-parameters must pass the constructor's
        checks. Everything is checked before anything is written, so on error
        (``KeyError``, ``TypeError``, ``ValueError``) the optimizer is unchanged.
        """
        buffer_keys = {f"{buf}.{name}": (buf, name) for buf in self.state for name, _, _ in self._params}
        own_keys = {"type", "step", *self._HYPER, *buffer_keys}
        missing = sorted(own_keys - set(state))
        extra = sorted(set(state) - own_keys)
        if missing or extra:
            raise KeyError(f"state: keys do not match {type(self).__name__}: missing {missing}, unexpected {extra}")
        kind = state["type"]
        kind = kind[()] if isinstance(kind, np.ndarray) and kind.ndim == 0 else kind
        if str(kind) != type(self).__name__:
            raise ValueError(f"state['type']: this is a {type(self).__name__}, the state is from a {kind!s}")
        step = _integer("state['step']", state["step"])
        hyper = self._validate({key: state[key] for key in self._HYPER})
        self._check_same_structure(hyper)
        for key, (_, name) in buffer_keys.items():
            value, param = state[key], self._param(name)
            if not isinstance(value, np.ndarray):
                raise TypeError(f"state[{key!r}]: expected a numpy.ndarray, got {type(value).__name__}")
            if value.shape != param.shape:
                raise ValueError(f"state[{key!r}]: expected shape {param.shape}, got {value.shape}")
            if value.dtype != param.dtype:
                raise TypeError(f"state[{key!r}]: expected dtype {param.dtype}, got {value.dtype}")
        # everything checked: commit
        self.step_count = step
        for key, value in hyper.items():
            setattr(self, "_lr" if key == "lr" else key, value)
        for key, (buf, name) in buffer_keys.items():
            np.copyto(self.state[buf][name], state[key])

    def _check_same_structure(self, hyper: Mapping[str, Any]) -> None:
        """Reject a state whose hyper-parameters would need other buffers than this optimizer has."""

    def _param(self, name: str) -> np.ndarray:
        return next(p for n, p, _ in self._params if n == name)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self._params)} parameters, step_count={self.step_count}, {hp})"


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay.

    The same rule as ``torch.optim.SGD``. With gradient :math:`g_t`, parameter
    :math:`\theta`, learning rate :math:`\gamma`, momentum :math:`\mu`, dampening
    :math:`\tau` and weight decay :math:`\lambda`, update :math:`t = 1, 2, \dots` is::

        g_t = g_t + \lambda \theta_{t-1}                       (if \lambda \ne 0)
        b_t = g_t                                              (t = 1: the buffer starts at the gradient,
        b_t = \mu b_{t-1} + (1 - \tau) g_t                      t > 1:  not at (1 - \tau) g_1)
        g_t = g_t + \mu b_t   (Nesterov)   or   g_t = b_t       (if \mu \ne 0)
        \theta_t = \theta_{t-1} - \gamma g_t

    Parameters
    ----------
    params : module or iterable of (name, param, grad)
        Anything with ``named_parameters()`` / ``named_grads()``, or ``(name, param, grad)``
        triples of float32/float64 arrays of matching shape and dtype.
    lr : float
        Learning rate :math:`\gamma` >= 0.
    momentum : float, default 0
        :math:`\mu` >= 0. With 0 there is no buffer.
    dampening : float, default 0
        :math:`\tau` in [0, 1].
    weight_decay : float, default 0
        L2 coefficient :math:`\lambda` >= 0, added to the gradient.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0`` (as in PyTorch).

    State buffers: ``momentum_buffer`` (only when ``momentum != 0``).
    """

    _HYPER: ClassVar[tuple[str, ...]] = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(
            params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
        )

    def _validate(self, hyper: Mapping[str, object]) -> dict[str, Any]:
        out = super()._validate(hyper)
        out["momentum"] = _number("momentum", hyper["momentum"], low=0.0)
        out["dampening"] = _number("dampening", hyper["dampening"], low=0.0)
        if out["dampening"] > 1.0:
            raise ValueError(f"dampening: expected a number in [0, 1], got {out['dampening']!r}")
        out["weight_decay"] = _number("weight_decay", hyper["weight_decay"], low=0.0)
        out["nesterov"] = _flag("nesterov", hyper["nesterov"])
        if out["nesterov"] and (out["momentum"] == 0.0 or out["dampening"] != 0.0):
            raise ValueError(
                f"nesterov: Nesterov momentum needs momentum > 0 and dampening == 0, "
                f"got momentum={out['momentum']!r}, dampening={out['dampening']!r}"
            )
        return out

    def _buffer_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0.0 else ()

    def _check_same_structure(self, hyper: Mapping[str, Any]) -> None:
        if (hyper["momentum"] != 0.0) != (self.momentum != 0.0):
            raise ValueError(
                f"state['momentum']: {hyper['momentum']!r} and this optimizer's {self.momentum!r} disagree "
                "on whether there is a momentum buffer"
            )

    def step(self) -> None:
        """One update of every parameter, in place (see the class docstring for the rule)."""
        lr, mu, tau, wd = self._lr, self.momentum, self.dampening, self.weight_decay
        self.step_count += 1
        for name, p, g in self._params:
            d_p = g + wd * p if wd != 0.0 else g  # a new array: the stored gradient stays as backward wrote it
            if mu != 0.0:
                buf = self.state["momentum_buffer"][name]
                if self.step_count == 1:
                    np.copyto(buf, d_p)  # PyTorch starts the buffer at the gradient itself
                else:
                    buf *= mu
                    buf += (1.0 - tau) * d_p
                d_p = d_p + mu * buf if self.nesterov else buf
            p -= lr * d_p


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015) with L2 weight decay and optional AMSGrad, as ``torch.optim.Adam``.

    With gradient :math:`g_t`, learning rate :math:`\gamma`, betas :math:`\beta_1, \beta_2`,
    :math:`\epsilon` and weight decay :math:`\lambda`, update :math:`t = 1, 2, \dots` is::

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

    Parameters
    ----------
    params : module or iterable of (name, param, grad)
        Anything with ``named_parameters()`` / ``named_grads()``, or ``(name, param, grad)``
        triples of float32/float64 arrays of matching shape and dtype.
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
    _DECOUPLED: ClassVar[bool] = False

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        super().__init__(
            params, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def _validate(self, hyper: Mapping[str, object]) -> dict[str, Any]:
        out = super()._validate(hyper)
        out["beta1"] = _beta("betas[0]", hyper["beta1"])
        out["beta2"] = _beta("betas[1]", hyper["beta2"])
        out["eps"] = _number("eps", hyper["eps"], low=0.0, low_inclusive=False)
        out["weight_decay"] = _number("weight_decay", hyper["weight_decay"], low=0.0)
        out["amsgrad"] = _flag("amsgrad", hyper["amsgrad"])
        return out

    def _buffer_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def _check_same_structure(self, hyper: Mapping[str, Any]) -> None:
        if hyper["amsgrad"] != self.amsgrad:
            raise ValueError(f"state['amsgrad']: the state has {hyper['amsgrad']}, this optimizer {self.amsgrad}")

    def step(self) -> None:
        """One update of every parameter, in place (see the class docstring for the rule)."""
        lr, beta1, beta2, eps, wd = self._lr, self.beta1, self.beta2, self.eps, self.weight_decay
        self.step_count += 1
        t = self.step_count
        step_size = lr / (1.0 - beta1**t)  # gamma / (1 - beta1^t), a Python float
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
        for name, p, g in self._params:
            if wd != 0.0:
                if self._DECOUPLED:
                    p *= 1.0 - lr * wd  # AdamW: shrink the parameter first, the moments never see it
                else:
                    g = g + wd * p  # Adam: L2 term joins the gradient (a new array; the stored grad is kept)
            m = self.state["exp_avg"][name]
            v = self.state["exp_avg_sq"][name]
            m += (1.0 - beta1) * (g - m)  # = beta1 m + (1 - beta1) g, written as a step towards g
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            if self.amsgrad:
                v_hat = self.state["max_exp_avg_sq"][name]
                np.maximum(v_hat, v, out=v_hat)
            else:
                v_hat = v
            denom = np.sqrt(v_hat) / bias_correction2_sqrt + eps  # eps after the bias correction
            p -= step_size * (m / denom)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    The parameter is shrunk by :math:`\gamma \lambda` **before** the Adam update, and the
    decay never enters the moments::

        \theta_{t-1}' = \theta_{t-1} (1 - \gamma \lambda)
        m_t, v_t, \hat v_t  as in Adam, from the raw gradient g_t
        \theta_t = \theta_{t-1}' - \frac{\gamma}{1 - \beta_1^t} \cdot
                   \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    So with a zero gradient an AdamW parameter decays geometrically, while an Adam
    parameter with L2 decay moves by about :math:`\gamma` per step whatever its size (its
    decay term is normalised like any gradient).

    Parameters are those of :class:`Adam`; only the default ``weight_decay=1e-2`` differs.
    """

    _DECOUPLED: ClassVar[bool] = True

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------


def _collect_grads(grads: Any) -> list[np.ndarray]:
    if hasattr(grads, "named_grads"):
        arrays = [g for _, g in grads.named_grads()]
    elif isinstance(grads, np.ndarray):
        arrays = [grads]
    elif isinstance(grads, Mapping):
        arrays = list(grads.values())
    elif isinstance(grads, Iterable) and not isinstance(grads, str):
        arrays = list(grads)
    else:
        raise TypeError(
            "grads: expected an object with named_grads(), a mapping or an iterable of arrays, "
            f"got {type(grads).__name__}"
        )
    for i, g in enumerate(arrays):
        if not isinstance(g, np.ndarray) or g.dtype not in _FLOAT_DTYPES:
            what = g.dtype if isinstance(g, np.ndarray) else type(g).__name__
            raise TypeError(f"grads: item {i} must be a float32 or float64 numpy.ndarray, got {what}")
    return arrays


def clip_grad_norm(grads: Any, max_norm: float, eps: float = 1e-6, error_if_nonfinite: bool = False) -> float:
    r"""Scale all gradients together so that their joint 2-norm is at most about ``max_norm``.

    The same rule as ``torch.nn.utils.clip_grad_norm_`` (2-norm)::

        N = \sqrt{\sum_i \lVert g_i \rVert_2^2}            (one norm over every gradient together)
        c = \min\left(\frac{\text{max\_norm}}{N + \epsilon}, 1\right),  \epsilon = 10^{-6}
        g_i \leftarrow c \, g_i                              (in place)

    Because of :math:`\epsilon`, a clipped norm ends slightly *below* ``max_norm``, and a
    norm exactly at ``max_norm`` is scaled by about :math:`1 - \epsilon / \text{max\_norm}`.
    When :math:`c = 1` the gradients are not touched (bit-identical). Each gradient's norm
    and :math:`c` are computed in the gradients' dtype, as PyTorch does.

    Parameters
    ----------
    grads : module, optimizer, mapping or iterable of arrays
        Anything with ``named_grads()`` (a module or an optimizer), a dict of gradients,
        a list of float32/float64 arrays, or one array. Scaled in place.
    max_norm : float
        Largest allowed total norm, > 0.
    eps : float, default 1e-6
        Added to the total norm in the coefficient's denominator (PyTorch fixes it at 1e-6).
    error_if_nonfinite : bool, default False
        Raise ``ValueError`` when the total norm is NaN or infinite. Otherwise, as in
        PyTorch, a NaN norm makes every gradient NaN and an infinite one multiplies them by 0.

    Returns
    -------
    float
        The total norm :math:`N` before clipping.
    """
    if not (isinstance(max_norm, (int, float, np.floating)) and max_norm == math.inf):
        max_norm = _number("max_norm", max_norm, low=0.0, low_inclusive=False)  # inf: measure only, as in PyTorch
    eps = _number("eps", eps, low=0.0)
    arrays = _collect_grads(grads)
    if not arrays:
        return 0.0
    dtype = np.result_type(*arrays)
    norms = np.array([np.linalg.norm(g.ravel()) for g in arrays], dtype=dtype)  # each in its own dtype first
    total = np.linalg.norm(norms)
    if error_if_nonfinite and not np.isfinite(total):
        raise ValueError(f"grads: the total gradient norm is {float(total)}; clipping would make it meaningless")
    coef = dtype.type(max_norm) / (total + dtype.type(eps))
    if not coef >= 1.0:  # c < 1, or NaN, which PyTorch's clamp lets through too
        with np.errstate(invalid="ignore"):  # inf * 0 = NaN is the defined (PyTorch) result here
            for g in arrays:
                g *= g.dtype.type(coef)
    return float(total)


# ---------------------------------------------------------------------------
# learning-rate schedules (pure functions of the update number)
# ---------------------------------------------------------------------------


def inverse_sqrt_warmup(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    r"""The schedule of "Attention Is All You Need": linear warm-up, then :math:`1/\sqrt{\text{step}}` decay.

    ::

        \text{lr}(s) = \text{factor} \cdot d_{\text{model}}^{-1/2} \cdot
                       \min\left(s^{-1/2},\; s \cdot w^{-3/2}\right),   s = 1, 2, \dots

    with :math:`w` = ``warmup_steps``. The two branches meet at :math:`s = w`, the peak,
    :math:`\text{factor} / \sqrt{d_{\text{model}} w}`. ``step=0`` (before any update)
    gives 0, the limit of the warm-up line.

    Parameters
    ----------
    step : int
        Number of the update about to be made, >= 0: ``optimizer.step_count + 1``. In a
        PyTorch loop with ``LambdaLR`` this is ``last_epoch + 1``, so the equivalent is
        ``LambdaLR(opt, lambda e: inverse_sqrt_warmup(e + 1, ...))`` with base lr 1.
    d_model : int
        Model width, >= 1.
    warmup_steps : int
        :math:`w` >= 1.
    factor : float, default 1.0
        Overall scale, >= 0.

    Returns
    -------
    float
        The learning rate for update ``step``.
    """
    step = _integer("step", step)
    d_model = _integer("d_model", d_model, low=1)
    warmup_steps = _integer("warmup_steps", warmup_steps, low=1)
    factor = _number("factor", factor, low=0.0)
    if step == 0:
        return 0.0
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def linear_warmup_cosine(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    r"""Linear warm-up to ``base_lr``, then half a cosine down to ``min_lr`` at ``total_steps``, then flat.

    ::

        \text{lr}(s) = \text{base\_lr} \cdot s / w                                  0 <= s < w
        \text{lr}(s) = \text{min\_lr} + (\text{base\_lr} - \text{min\_lr})
                       \cdot \tfrac12 \left(1 + \cos\left(\pi \frac{s - w}{T - w}\right)\right)   w <= s <= T
        \text{lr}(s) = \text{min\_lr}                                               s > T

    with :math:`w` = ``warmup_steps`` and :math:`T` = ``total_steps``. The peak
    ``base_lr`` is at :math:`s = w`; update 1 already gets ``base_lr / w``.

    In PyTorch the same rates (for ``w >= 2``, updates 1 to ``T``) come from
    ``SequentialLR(opt, [LinearLR(opt, 1/w, 1.0, total_iters=w-1),
    CosineAnnealingLR(opt, T_max=T-w, eta_min=min_lr)], milestones=[w-1])`` with base lr
    ``base_lr``. After ``T`` PyTorch's cosine rises again (it is periodic); this one stays
    at ``min_lr``.

    Parameters
    ----------
    step : int
        Number of the update about to be made, >= 0: ``optimizer.step_count + 1``
        (PyTorch's ``last_epoch + 1``).
    base_lr : float
        Peak learning rate, >= 0.
    warmup_steps : int
        :math:`w` >= 0; 0 means no warm-up.
    total_steps : int
        :math:`T` >= max(1, w): where the cosine reaches ``min_lr``.
    min_lr : float, default 0.0
        Final learning rate, in [0, base_lr].

    Returns
    -------
    float
        The learning rate for update ``step``.
    """
    step = _integer("step", step)
    base_lr = _number("base_lr", base_lr, low=0.0)
    warmup_steps = _integer("warmup_steps", warmup_steps)
    total_steps = _integer("total_steps", total_steps, low=max(1, warmup_steps))
    min_lr = _number("min_lr", min_lr, low=0.0)
    if min_lr > base_lr:
        raise ValueError(f"min_lr: expected a number <= base_lr={base_lr!r}, got {min_lr!r}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step <= total_steps:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr
