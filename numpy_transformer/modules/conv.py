"""Convolution and pooling modules over the ops of ``functional/conv.py``: ``Conv2d``, ``PatchEmbedding``,
``MaxPool2d`` and ``Conv1d`` (Whisper's stem).

Shapes as ``torch.nn.Conv2d`` / ``torch.nn.MaxPool2d``: images ``(N, C, H, W)``, the weight
``(O, C, kh, kw)``. The initialisation is torch's default: weight and bias uniform in
``±1/sqrt(C kh kw)`` (what ``kaiming_uniform_(a=sqrt(5))`` amounts to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.checks import check_positive_int, check_rng
from ..functional.conv import (
    Conv1dCache,
    Conv2dCache,
    MaxPool2dCache,
    conv1d_backward,
    conv1d_forward,
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


@dataclass(frozen=True)
class PatchEmbeddingCache:
    conv: Conv2dCache  # the unfolded patches col (Cin P P, B N): with kernel = stride, a reshaped copy of the image
    grid: tuple[int, int]  # (g, g) patches along H and W


class PatchEmbedding(Module):
    r"""``(B, Cin, I, I) -> (B, N, C)``: a conv2d with kernel = stride = ``P``, its ``g x g`` grid read row by row.

    The patch embedding of the ViT (``bias=True``, HF's ``projection``) and of CLIP's image tower
    (``bias=False``, HF's ``patch_embedding``). ``weight`` (C, Cin, P, P) and ``bias`` (C,) as
    ``torch.nn.Conv2d``. Because the windows do not overlap, token ``n = a g + b`` is

    .. math:: t_{n} = W_{\mathrm{mat}}\, \mathrm{vec}(x[:, aP:(a+1)P,\ bP:(b+1)P]) + b,

    a linear layer over the flattened patch, with ``W_mat = weight.reshape(C, Cin P P)`` and the
    patch flattened in ``(Cin, P, P)`` order.
    """

    def __init__(
        self,
        num_channels: int,
        d_model: int,
        patch_size: int,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.d_model = check_positive_int("d_model", d_model)
        self.patch_size = check_positive_int("patch_size", patch_size)
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected a bool, got {type(bias).__name__} {bias!r}")
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        bound = 1.0 / np.sqrt(num_channels * patch_size * patch_size)  # torch.nn.Conv2d's default initialisation
        weight = rng.uniform(-bound, bound, (d_model, num_channels, patch_size, patch_size)).astype(self.dtype)
        b = rng.uniform(-bound, bound, (d_model,)).astype(self.dtype) if bias else None
        self._init_parameters(weight=weight, bias=b)

    def forward(self, pixel_values: np.ndarray) -> tuple[np.ndarray, PatchEmbeddingCache]:
        y, c_conv = conv2d_forward(pixel_values, self.weight, self.bias, stride=self.patch_size)  # (B, C, g, g)
        B, C, gh, gw = y.shape
        tokens = y.reshape(B, C, gh * gw).transpose(0, 2, 1)  # (B, N, C): the grid row by row
        return np.ascontiguousarray(tokens), PatchEmbeddingCache(conv=c_conv, grid=(gh, gw))

    def backward(self, dtokens: np.ndarray, cache: PatchEmbeddingCache) -> np.ndarray:
        """Return d pixel_values (B, Cin, I, I); accumulate ``weight``'s (and ``bias``'s) gradient."""
        B, _, C = dtokens.shape  # (B, N, C)
        # In the forward pass this was: tokens = y.reshape(B, C, N).transpose(0, 2, 1)
        dy = np.ascontiguousarray(dtokens.transpose(0, 2, 1)).reshape(B, C, *cache.grid)  # (B, C, g, g)
        # In the forward pass this was: y = conv2d(x, weight, bias, stride=P)
        dx, dweight, dbias = conv2d_backward(dy, cache.conv)
        self.accumulate_grad("weight", dweight)
        if self.bias is not None:
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


class Conv1d(Module):
    """``torch.nn.Conv1d``'s parameters ``weight`` (O, Cin, k) and ``bias`` (O,), over (B, Cin, L)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        bound = 1.0 / np.sqrt(in_channels * kernel_size)  # torch.nn.Conv1d's default initialisation
        self._init_parameters(
            weight=rng.uniform(-bound, bound, (out_channels, in_channels, kernel_size)).astype(self.dtype),
            bias=rng.uniform(-bound, bound, (out_channels,)).astype(self.dtype),
        )

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, Conv1dCache]:
        return conv1d_forward(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def backward(self, dout: np.ndarray, cache: Conv1dCache) -> np.ndarray:
        dx, dweight, dbias = conv1d_backward(dout, cache)
        self.accumulate_grad("weight", dweight)
        self.accumulate_grad("bias", dbias)
        return dx
