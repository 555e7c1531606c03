r"""Frozen batch norm: batch normalisation with fixed statistics, an affine map per channel.

Shape legend: ``N`` batch, ``C`` channels, ``H, W`` height and width.

DETR trains its ResNet backbone with every ``BatchNorm2d`` frozen: the running mean and variance
(and the affine weight and bias) stay what the backbone was pre-trained with, so the layer is

.. math:: y_{nchw} = \gamma_c\,\frac{x_{nchw} - \mu_c}{\sqrt{\sigma^2_c + \varepsilon}} + \beta_c
   = s_c\, x_{nchw} + t_c, \qquad s_c = \frac{\gamma_c}{\sqrt{\sigma^2_c + \varepsilon}},\ t_c = \beta_c - \mu_c s_c,

the same as ``torch.nn.functional.batch_norm(x, mean, var, weight, bias, training=False, eps)``.
Nothing of it is learned, so its backward returns the input's gradient only: ``dx = s_c dy``.
(Hugging Face's ``DetrFrozenBatchNorm2d`` keeps the four arrays as buffers with ``eps = 1e-5``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_positive_float, check_same_dtype


@dataclass(frozen=True)
class FrozenBatchNormCache:
    scale: np.ndarray  # (1, C, 1, 1) s = weight / sqrt(running_var + eps): all the backward needs
    shape: tuple[int, int, int, int]  # (N, C, H, W)


def frozen_batch_norm_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, FrozenBatchNormCache]:
    """``x (N, C, H, W) -> s_c x + t_c`` with ``s = weight / sqrt(var + eps)`` and ``t = bias - mean s``."""
    check_float_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"x: expected shape (N, C, H, W), got {x.shape}")
    C = x.shape[1]
    for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        check_float_array(name, a)
        if a.shape != (C,):
            raise ValueError(f"{name}: expected shape ({C},) (one value per channel of x), got {a.shape}")
    check_same_dtype(x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    if np.any(running_var < 0):
        raise ValueError(f"running_var: expected variances >= 0, got min {running_var.min()}")
    eps = x.dtype.type(check_positive_float("eps", eps))
    scale = (weight / np.sqrt(running_var + eps)).reshape(1, C, 1, 1)  # (1, C, 1, 1)
    shift = bias.reshape(1, C, 1, 1) - running_mean.reshape(1, C, 1, 1) * scale
    return x * scale + shift, FrozenBatchNormCache(scale, x.shape)


def frozen_batch_norm_backward(dout: np.ndarray, cache: FrozenBatchNormCache) -> np.ndarray:
    r"""Gradient of ``x``: :math:`y = s_c x + t_c \Rightarrow dx = s_c\, dy` (the statistics are constants)."""
    check_dout(dout, cache.shape, cache.scale.dtype)
    return dout * cache.scale
