"""Layer normalisation over the last dimension, as ``torch.nn.LayerNorm(C)``.

Shape legend: ``...`` leading dimensions, ``C`` the normalised (feature) dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_positive_float, check_same_dtype, check_shape
from .intermediates import gradient_at


@dataclass(frozen=True)
class LayerNormCache:
    xhat: np.ndarray  # (..., C) normalised input (x - mean) * rstd
    rstd: np.ndarray  # (..., 1) 1 / sqrt(var + eps); the mean is not needed again
    weight: np.ndarray  # (C,)


def layer_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, LayerNormCache]:
    r"""Normalise each row of the last dimension, then scale and shift.

    .. math::
        \mu = \tfrac1C\sum_c x_c,\quad
        \sigma^2 = \tfrac1C\sum_c (x_c-\mu)^2,\quad
        \hat x = (x-\mu)/\sqrt{\sigma^2+\epsilon},\quad
        y = \gamma\,\hat x + \beta

    The variance is the *biased* one (divide by ``C``) and ``eps`` sits inside
    the square root, as in ``torch.nn.LayerNorm``.

    Parameters
    ----------
    x : ndarray, shape (..., C)
    weight, bias : ndarray, shape (C,)
        The scale :math:`\gamma` and the shift :math:`\beta`.
    eps : float
        A finite number > 0 (``inf`` would silently give zeros).

    Returns
    -------
    y : ndarray, shape (..., C)
    cache : LayerNormCache
    """
    check_float_array("x", x, ndim_min=1)
    check_float_array("weight", weight)
    check_float_array("bias", bias)
    C = x.shape[-1]
    check_shape("weight", weight, (C,))
    check_shape("bias", bias, (C,))
    dtype = check_same_dtype(x=x, weight=weight, bias=bias)
    check_positive_float("eps", eps)

    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1) biased variance
    rstd = 1.0 / np.sqrt(var + dtype.type(eps))  # (..., 1)
    # In place from here (the same numbers, two (..., C) arrays fewer): xc becomes xhat,
    # and y is formed in the array of xhat * weight.
    xhat = np.multiply(xc, rstd, out=xc)  # (..., C) xhat = (x - mean) * rstd
    y = xhat * weight  # (..., C)
    y += bias  # y = xhat * weight + bias
    return y, LayerNormCache(xhat=xhat, rstd=rstd, weight=weight)


def layer_norm_backward(dout: np.ndarray, cache: LayerNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients of LayerNorm in the compact three-term form.

    Forward: :math:`y = \gamma\hat x + \beta`, :math:`\hat x = (x-\mu)\,r`,
    :math:`r = (\sigma^2+\epsilon)^{-1/2}`.

    With :math:`g = dy\,\gamma` (the gradient reaching :math:`\hat x`), the
    paths through :math:`\mu` and :math:`\sigma^2` collapse to

    .. math:: dx = r\,\big(g - \mathrm{mean}_c(g) - \hat x\,\mathrm{mean}_c(g\,\hat x)\big)

    and :math:`d\gamma = \sum_n dy\,\hat x`, :math:`d\beta = \sum_n dy`
    (sums over every leading position). ``walkthroughs/02_layer_norm.py``
    derives the three terms step by step.
    """
    xhat, rstd, weight = cache.xhat, cache.rstd, cache.weight
    check_dout(dout, xhat.shape, xhat.dtype)
    lead_axes = tuple(range(dout.ndim - 1))
    tmp = dout * xhat  # (..., C), reused below for g * xhat and xhat * gx_mean
    dweight = tmp.sum(axis=lead_axes)  # (C,)
    dbias = dout.sum(axis=lead_axes)  # (C,)
    g = gradient_at("xhat", dout * weight)  # (..., C) gradient at xhat
    g_mean = g.mean(axis=-1, keepdims=True)  # (..., 1) through the mean
    gx_mean = np.multiply(g, xhat, out=tmp).mean(axis=-1, keepdims=True)  # (..., 1) through the variance
    # dx = rstd * (g - g_mean - xhat * gx_mean), step by step in place in g's array
    # (gradient_at has copied g if it records it; the same numbers as the one-line form).
    dx = np.subtract(g, g_mean, out=g)  # (..., C)
    dx -= np.multiply(xhat, gx_mean, out=tmp)
    dx *= rstd
    return dx, dweight, dbias
