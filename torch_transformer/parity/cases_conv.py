"""Parity cases for the convolution ops: conv2d, conv1d and max_pool2d. Registered on import.

Sizes: B is the batch N, D the input channels C, H the output channels O, and T, S the
output height and width (the output length for conv1d). The input is sized backwards
from them: ``H_in = kh - 2 ph + (T - 1) sh + r``, with ``r`` in ``[0, sh)`` rows the last
window does not reach (floor mode drops them: they get a zero gradient). ``T = 1`` with
``r = 0`` is a kernel exactly as large as the padded input; the ``fills_input`` variants
always draw that. The geometry itself (kernel, stride, padding, bias) is the variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.nn.functional as TorchF

import numpy_transformer.functional as F

from .. import functional as TF
from .registry import Builtin, Case, leaf_gradients, normal, register


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


def _input_size(rng: np.random.Generator, out: int, k: int, s: int, p: int, fills_input: bool) -> int:
    """An input extent whose output extent is ``out`` (or 1 with ``fills_input``: kernel = padded input)."""
    if fills_input:
        return k - 2 * p
    leftover = int(rng.integers(0, s))  # rows past the last window
    return max(1, k - 2 * p + (out - 1) * s + leftover)


# ---------------------------------------------------------------------------- conv2d


@dataclass(frozen=True)
class Conv2dVariant:
    bias: bool
    kernel: tuple[int, int]  # (kh, kw)
    stride: int | tuple[int, int]  # passed to the op as given: an int or a pair
    padding: int | tuple[int, int]
    fills_input: bool = False  # the kernel exactly covers the padded input: a 1 x 1 output


_CONV2D_VARIANTS = (
    Conv2dVariant(bias=True, kernel=(3, 3), stride=1, padding=0),
    Conv2dVariant(bias=False, kernel=(1, 1), stride=1, padding=0),  # a per-pixel linear
    Conv2dVariant(bias=True, kernel=(2, 2), stride=3, padding=0),  # stride > kernel: some inputs unread
    Conv2dVariant(bias=True, kernel=(3, 2), stride=(2, 1), padding=(1, 0)),  # nothing square
    Conv2dVariant(bias=False, kernel=(2, 2), stride=2, padding=0),  # a patch embedding
    Conv2dVariant(bias=True, kernel=(1, 3), stride=(1, 2), padding=(2, 1)),  # padding wider than the kernel
    Conv2dVariant(bias=True, kernel=(3, 4), stride=1, padding=(1, 1), fills_input=True),
)


def _draw_conv2d(rng, dtype, d):
    v = d["variant"]
    (kh, kw), (sh, sw), (ph, pw) = v.kernel, _pair(v.stride), _pair(v.padding)
    H = _input_size(rng, d["T"], kh, sh, ph, v.fills_input)
    W = _input_size(rng, d["S"], kw, sw, pw, v.fills_input)
    C, O = d["D"], d["H"]
    arrays = {"x": normal(rng, (d["B"], C, H, W), dtype), "weight": normal(rng, (O, C, kh, kw), dtype)}
    if v.bias:
        arrays["bias"] = normal(rng, (O,), dtype)
    return arrays


def _np_conv(forward, backward):
    def run(a, d):
        v = d["variant"]
        y, cache = forward(a["x"], a["weight"], a.get("bias"), stride=v.stride, padding=v.padding)

        def grads(dout):
            dx, dw, db = backward(dout, cache)
            return {"x": dx, "weight": dw, **({"bias": db} if db is not None else {})}

        return y, grads

    return run


def _conv_differentiable(d):
    return ("x", "weight", "bias") if d["variant"].bias else ("x", "weight")


def _twin_conv(twin):
    def run(t, d):
        v = d["variant"]
        return twin(t["x"], t["weight"], t.get("bias"), stride=v.stride, padding=v.padding), t

    return run


def _builtin_conv(name, builtin):
    def run(t, d):
        v = d["variant"]
        return builtin(t["x"], t["weight"], t.get("bias"), stride=v.stride, padding=v.padding), leaf_gradients(t)

    return Builtin(name=name, run=run)


register(
    Case(
        name="conv2d",
        kind="op",
        draw=_draw_conv2d,
        differentiable=_conv_differentiable,
        numpy=_np_conv(F.conv2d_forward, F.conv2d_backward),
        torch=_twin_conv(TF.conv2d),
        variants=_CONV2D_VARIANTS,
        uses=("B", "T", "S", "H", "D"),
        builtin=_builtin_conv("F.conv2d", TorchF.conv2d),
    )
)


# ---------------------------------------------------------------------------- conv1d


@dataclass(frozen=True)
class Conv1dVariant:
    bias: bool
    kernel: int
    stride: int
    padding: int
    fills_input: bool = False


_CONV1D_VARIANTS = (
    Conv1dVariant(bias=True, kernel=3, stride=1, padding=0),
    Conv1dVariant(bias=False, kernel=1, stride=1, padding=0),
    Conv1dVariant(bias=True, kernel=2, stride=3, padding=0),
    Conv1dVariant(bias=True, kernel=3, stride=2, padding=1),
    Conv1dVariant(bias=False, kernel=4, stride=1, padding=1, fills_input=True),
)


def _draw_conv1d(rng, dtype, d):
    v = d["variant"]
    L = _input_size(rng, d["T"], v.kernel, v.stride, v.padding, v.fills_input)
    C, O = d["D"], d["H"]
    arrays = {"x": normal(rng, (d["B"], C, L), dtype), "weight": normal(rng, (O, C, v.kernel), dtype)}
    if v.bias:
        arrays["bias"] = normal(rng, (O,), dtype)
    return arrays


register(
    Case(
        name="conv1d",
        kind="op",
        draw=_draw_conv1d,
        differentiable=_conv_differentiable,
        numpy=_np_conv(F.conv1d_forward, F.conv1d_backward),
        torch=_twin_conv(TF.conv1d),
        variants=_CONV1D_VARIANTS,
        uses=("B", "T", "H", "D"),
        builtin=_builtin_conv("F.conv1d", TorchF.conv1d),
    )
)


# ---------------------------------------------------------------------------- max_pool2d


@dataclass(frozen=True)
class MaxPool2dVariant:
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None  # None: the kernel size
    padding: int | tuple[int, int]
    fills_input: bool = False


_MAX_POOL2D_VARIANTS = (
    MaxPool2dVariant(kernel_size=2, stride=None, padding=0),  # windows tile the input
    MaxPool2dVariant(kernel_size=3, stride=1, padding=1),  # overlapping windows, padded
    MaxPool2dVariant(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1)),
    MaxPool2dVariant(kernel_size=1, stride=None, padding=0),  # the identity
    MaxPool2dVariant(kernel_size=2, stride=3, padding=0),  # stride > kernel: some inputs unread
    MaxPool2dVariant(kernel_size=(3, 3), stride=None, padding=(1, 0), fills_input=True),
)


def _draw_max_pool2d(rng, dtype, d):
    """Distinct values 4/n apart: no ties (finite differences across a tie measure nothing)."""
    v = d["variant"]
    (kh, kw), (ph, pw) = _pair(v.kernel_size), _pair(v.padding)
    sh, sw = (kh, kw) if v.stride is None else _pair(v.stride)
    H = _input_size(rng, d["T"], kh, sh, ph, v.fills_input)
    W = _input_size(rng, d["S"], kw, sw, pw, v.fills_input)
    shape = (d["B"], d["D"], H, W)
    n = int(np.prod(shape))
    values = np.linspace(-2.0, 2.0, n)[rng.permutation(n)]
    return {"x": values.reshape(shape).astype(dtype)}


def _np_max_pool2d(a, d):
    v = d["variant"]
    y, cache = F.max_pool2d_forward(a["x"], v.kernel_size, v.stride, v.padding)
    return y, lambda dout: {"x": F.max_pool2d_backward(dout, cache)}


def _pool_args(d):
    v = d["variant"]
    return v.kernel_size, v.stride, v.padding


register(
    Case(
        name="max_pool2d",
        kind="op",
        draw=_draw_max_pool2d,
        differentiable=lambda d: ("x",),
        numpy=_np_max_pool2d,
        torch=lambda t, d: (TF.max_pool2d(t["x"], *_pool_args(d)), t),
        variants=_MAX_POOL2D_VARIANTS,
        uses=("B", "T", "S", "D"),
        builtin=Builtin(
            name="F.max_pool2d", run=lambda t, d: (TorchF.max_pool2d(t["x"], *_pool_args(d)), leaf_gradients(t))
        ),
    )
)
