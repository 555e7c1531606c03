"""Element-wise activations: ReLU, GELU (exact erf and tanh forms) and tanh."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from .checks import check_dout, check_float_array

# Python floats, not NumPy scalars, so float32 inputs stay float32 (NEP 50).
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
# The cubic coefficient of the tanh approximation, as torch.nn.functional.gelu uses it.
_GELU_TANH_COEF = 0.044715


@dataclass(frozen=True)
class ReluCache:
    positive: np.ndarray  # (...) bool, where x > 0
    dtype: np.dtype


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, ReluCache]:
    """``y = max(x, 0)``; shape and dtype kept."""
    check_float_array("x", x)
    positive = x > 0
    return x * positive, ReluCache(positive=positive, dtype=x.dtype)


def relu_backward(dout: np.ndarray, cache: ReluCache) -> np.ndarray:
    r"""Forward ``y = max(x, 0)``; backward :math:`dx = dy \cdot [x > 0]`.

    At exactly ``x = 0`` the derivative is taken as 0, as in PyTorch.
    """
    check_dout(dout, cache.positive.shape, cache.dtype)
    return dout * cache.positive


@dataclass(frozen=True)
class GeluCache:
    x: np.ndarray  # (...) the input
    approximate: str
    cdf: np.ndarray | None  # (...) Phi(x) for the exact form (erf is the costly part: computed once); None for tanh


def gelu_forward(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, GeluCache]:
    r"""Gaussian Error Linear Unit, exactly as ``torch.nn.functional.gelu`` defines it.

    ``approximate="none"``: :math:`y = x\,\Phi(x) = \tfrac12 x\,(1 + \mathrm{erf}(x/\sqrt2))`.

    ``approximate="tanh"``:
    :math:`y = \tfrac12 x\,(1 + \tanh(\sqrt{2/\pi}\,(x + 0.044715\,x^3)))`.
    """
    check_float_array("x", x)
    cdf = None
    if approximate == "none":
        cdf = (0.5 * (1.0 + erf(x / _SQRT_2))).astype(x.dtype, copy=False)  # Phi(x)
        y = x * cdf
    elif approximate == "tanh":
        y = 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_COEF * x**3)))
    else:
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return y.astype(x.dtype, copy=False), GeluCache(x=x, approximate=approximate, cdf=cdf)


def gelu_backward(dout: np.ndarray, cache: GeluCache) -> np.ndarray:
    r"""Derivative of GELU.

    Exact form: :math:`y = x\Phi(x)`, so
    :math:`dy/dx = \Phi(x) + x\,\varphi(x)` with
    :math:`\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}`.

    Tanh form: with :math:`u = \sqrt{2/\pi}(x + c x^3)` and :math:`t = \tanh u`,
    :math:`y = \tfrac12 x (1 + t)`, so
    :math:`dy/dx = \tfrac12 (1 + t) + \tfrac12 x (1 - t^2)\sqrt{2/\pi}(1 + 3 c x^2)`.
    """
    x = cache.x
    check_dout(dout, x.shape, x.dtype)
    if cache.approximate == "none":
        pdf = np.exp(-0.5 * x * x) / _SQRT_2PI
        local = cache.cdf + x * pdf
    else:
        u = _SQRT_2_OVER_PI * (x + _GELU_TANH_COEF * x**3)
        t = np.tanh(u)
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_COEF * x * x)
        local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx
    return (dout * local).astype(dout.dtype, copy=False)


@dataclass(frozen=True)
class TanhCache:
    y: np.ndarray  # (...) the output: the derivative is written in terms of it


def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, TanhCache]:
    """``y = tanh(x)``; shape and dtype kept (BERT's pooler uses it)."""
    check_float_array("x", x)
    y = np.tanh(x)
    return y, TanhCache(y=y)


def tanh_backward(dout: np.ndarray, cache: TanhCache) -> np.ndarray:
    r"""Forward ``y = tanh(x)``; backward :math:`dx = dy\,(1 - y^2)`."""
    check_dout(dout, cache.y.shape, cache.y.dtype)
    return dout * (1.0 - cache.y * cache.y)
