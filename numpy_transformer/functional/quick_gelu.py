r"""QuickGELU: the sigmoid approximation of GELU that OpenAI's CLIP was trained with.

Shape legend: ``...`` any leading dimensions; the op is element-wise, shape and dtype kept.

Hendrycks and Gimpel ("Gaussian Error Linear Units", 2016) note that
:math:`x\,\Phi(x) \approx x\,\sigma(1.702\,x)`: the logistic sigmoid, stretched by 1.702, is
close to the normal CDF. CLIP uses this form (Hugging Face's ``hidden_act="quick_gelu"``), so a
checkpoint trained with it must be run with it: the exact GELU differs by up to about 0.02.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from .checks import check_dout, check_float_array

# A Python float, so float32 inputs stay float32 (NEP 50).
QUICK_GELU_ALPHA = 1.702


@dataclass(frozen=True)
class QuickGeluCache:
    x: np.ndarray  # (...) the input
    sigmoid: np.ndarray  # (...) sigma(1.702 x), computed once: the forward and the backward both use it


def quick_gelu_forward(x: np.ndarray) -> tuple[np.ndarray, QuickGeluCache]:
    r"""QuickGELU :math:`y = x\,\sigma(1.702\,x)`; shape and dtype kept.

    :math:`\sigma` is SciPy's ``expit``, which does not overflow for large ``|x|`` and keeps float32.
    """
    check_float_array("x", x)
    s = expit(QUICK_GELU_ALPHA * x).astype(x.dtype, copy=False)  # (...) sigma(1.702 x)
    return x * s, QuickGeluCache(x=x, sigmoid=s)


def quick_gelu_backward(dout: np.ndarray, cache: QuickGeluCache) -> np.ndarray:
    r"""Derivative of QuickGELU.

    Forward :math:`y = x\,s` with :math:`s = \sigma(a x)`, :math:`a = 1.702`; since
    :math:`\sigma' = \sigma(1 - \sigma)`, :math:`ds/dx = a\,s(1 - s)` and

    .. math:: dx = dy\,\big(s + a\,x\,s\,(1 - s)\big) = dy\,s\,\big(1 + a\,x\,(1 - s)\big).

    (With :math:`a = 1` this is SiLU's derivative.)
    """
    x, s = cache.x, cache.sigmoid
    check_dout(dout, x.shape, x.dtype)
    return dout * (s * (1.0 + QUICK_GELU_ALPHA * x * (1.0 - s)))
