"""Convolution and pooling modules over the ops of ``functional/conv.py``: ``Conv2d`` and ``MaxPool2d``.

Shapes as ``torch.nn.Conv2d`` / ``torch.nn.MaxPool2d``: images ``(N, C, H, W)``, the weight
``(O, C, kh, kw)``. The initialisation is torch's default: weight and bias uniform in
``±1/sqrt(C kh kw)`` (what ``kaiming_uniform_(a=sqrt(5))`` amounts to).
"""

from __future__ import annotations

import numpy as np

from ..functional.checks import check_positive_int, check_rng
from ..functional.conv import (
    Conv2dCache,
    MaxPool2dCache,
    conv2d_backward,
    conv2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from .base import Module, check_module_dtype


class Conv2d(Module):
    """``y = conv2d(x, weight, bias, stride, padding)``; parameters ``weight`` (O, C, k, k) and ``bias`` (O,)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.stride, self.padding = stride, padding  # checked by the op
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        bound = 1.0 / np.sqrt(in_channels * kernel_size * kernel_size)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        weight = rng.uniform(-bound, bound, shape).astype(self.dtype)
        b = rng.uniform(-bound, bound, (out_channels,)).astype(self.dtype) if bias else None
        self._init_parameters(weight=weight, bias=b)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, Conv2dCache]:
        return conv2d_forward(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def backward(self, dout: np.ndarray, cache: Conv2dCache) -> np.ndarray:
        dx, dweight, dbias = conv2d_backward(dout, cache)
        self.accumulate_grad("weight", dweight)
        self.accumulate_grad("bias", dbias)
        return dx


class MaxPool2d(Module):
    """Max over ``kernel_size`` windows (stride = kernel by default); no parameters."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self._init_parameters()

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, MaxPool2dCache]:
        return max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dout: np.ndarray, cache: MaxPool2dCache) -> np.ndarray:
        return max_pool2d_backward(dout, cache)
