r"""Root-mean-square normalisation over the last dimension, as ``torch.nn.RMSNorm(C)`` and Llama's ``RMSNorm``.

Shape legend: ``...`` leading dimensions, ``C`` the normalised (feature) dimension.

RMSNorm is LayerNorm without the mean: it rescales each row to unit root mean square and
multiplies by a learned gain, with no centring and no bias,

.. math:: y = \gamma \odot x \,/\, \sqrt{\mathrm{mean}_c(x_c^2) + \epsilon}.

Where ``eps`` goes
------------------
Meta's Llama code, Hugging Face's ``LlamaRMSNorm`` and ``torch.nn.functional.rms_norm`` all
put ``eps`` *inside* the square root, as here. The paper's reference code (Zhang & Sennrich,
2019) divides by :math:`\sqrt{\mathrm{mean}(x^2)} + \epsilon`, outside the root. The two agree
when the row's RMS is large against :math:`\sqrt\epsilon`, and part on small rows: for a row of
RMS :math:`\rho`, inside gives :math:`x/\sqrt{\rho^2+\epsilon}`, outside :math:`x/(\rho+\epsilon)`
(with :math:`\epsilon = 10^{-6}` and :math:`\rho = 10^{-3}`: a factor 0.707 against 0.999).
``parity_tests/test_llama_ops.py`` shows the difference.

The default ``eps`` here is Llama's ``1e-6``. PyTorch's ``F.rms_norm`` / ``nn.RMSNorm`` default
to ``eps=None``, which means the machine epsilon of the input's dtype (``1.19e-7`` in float32,
``2.2e-16`` in float64): pass ``eps`` explicitly when porting weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_positive_float, check_same_dtype, check_shape
from .intermediates import gradient_at


@dataclass(frozen=True)
class RMSNormCache:
    xhat: np.ndarray  # (..., C) the normalised input x * rstd
    rstd: np.ndarray  # (..., 1) 1 / sqrt(mean(x^2) + eps); x itself is xhat / rstd, not stored
    weight: np.ndarray  # (C,)


def rms_norm_forward(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, RMSNormCache]:
    r"""Normalise each row of the last dimension by its root mean square, then scale.

    .. math::
        r = \big(\tfrac1C\textstyle\sum_c x_c^2 + \epsilon\big)^{-1/2},\quad
        \hat x = x\,r,\quad y = \gamma\,\hat x

    Parameters
    ----------
    x : ndarray, shape (..., C)
    weight : ndarray, shape (C,)
        The gain :math:`\gamma` (ones at initialisation; there is no bias).
    eps : float
        A finite number > 0, added inside the square root (see the module docstring).

    Returns
    -------
    y : ndarray, shape (..., C)
    cache : RMSNormCache
    """
    check_float_array("x", x, ndim_min=1)
    check_float_array("weight", weight)
    check_shape("weight", weight, (x.shape[-1],))
    dtype = check_same_dtype(x=x, weight=weight)
    check_positive_float("eps", eps)

    mean_square = (x * x).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(mean_square + dtype.type(eps))  # (..., 1)
    xhat = x * rstd  # (..., C)
    y = xhat * weight  # (..., C)
    return y, RMSNormCache(xhat=xhat, rstd=rstd, weight=weight)


def rms_norm_backward(dout: np.ndarray, cache: RMSNormCache) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients of RMSNorm: LayerNorm's backward with one term fewer.

    Forward: :math:`y = \gamma\hat x`, :math:`\hat x = x\,r`,
    :math:`r = (\mathrm{mean}_c(x^2)+\epsilon)^{-1/2}`.

    With :math:`g = dy\,\gamma` (the gradient reaching :math:`\hat x`) and
    :math:`\partial r/\partial x_j = -r^3 x_j / C`,

    .. math::
        dx_j = r\,g_j - \frac{r^3 x_j}{C}\sum_c g_c x_c
             = r\,\big(g_j - \hat x_j\,\mathrm{mean}_c(g\,\hat x)\big)

    and :math:`d\gamma = \sum_n dy\,\hat x` (summed over every leading position).
    LayerNorm's :math:`dx = r\,(g - \mathrm{mean}_c(g) - \hat x\,\mathrm{mean}_c(g\hat x))`
    has one more term, :math:`-\mathrm{mean}_c(g)`, the path through the mean that RMSNorm
    never subtracts. So the gradient of an RMSNorm row is orthogonal to :math:`\hat x`
    only up to ``eps`` (scaling a row changes nothing), but not to the all-ones direction.
    """
    xhat, rstd, weight = cache.xhat, cache.rstd, cache.weight
    check_dout(dout, xhat.shape, xhat.dtype)
    lead_axes = tuple(range(dout.ndim - 1))
    # in the forward pass this was: y = xhat * weight
    dweight = (dout * xhat).sum(axis=lead_axes)  # (C,)
    g = gradient_at("xhat", dout * weight)  # (..., C) gradient at xhat
    # xhat = x * rstd, rstd a function of mean(x^2): the direct path and the one through rstd
    gx_mean = (g * xhat).mean(axis=-1, keepdims=True)  # (..., 1)
    dx = rstd * (g - xhat * gx_mean)  # (..., C)
    return dx, dweight
