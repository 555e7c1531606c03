"""Convolution and max-pooling: the identities their math rests on, PyTorch's tie rule, bad input.

The parity registry (``torch_transformer/parity/cases_conv.py``) already compares conv2d,
conv1d and max_pool2d with the twin, with finite differences in float64 and with
``F.conv2d`` / ``F.conv1d`` / ``F.max_pool2d``. This file checks what those comparisons
cannot: identities between our own ops (a conv with kernel = stride is patches + a linear
layer, the identity ViT's patch embedding rests on; conv1d is conv2d with H = 1; a 1x1 conv
is a per-pixel linear), linearity, that unfold and fold are adjoint, where max-pooling
sends each upstream value (one input each; torch's rule on ties, which no finite
difference can see), dtypes, and the error messages.

Shape legend: N batch, C input channels, O output channels, H, W height and width,
P patch size, kh, kw kernel, sh, sw stride, ph, pw padding, Ho, Wo output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as TorchF
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer.functional as F

from .helpers import assert_matches
from .strategies import dtypes, seeds
from .test_properties import PROPERTY_TESTS


def property_of(*cases: str) -> Callable:
    """Declare the decorated test a property test of the parity ``cases`` (see ``test_properties``)."""

    def declare(test: Callable) -> Callable:
        reference = f"test_conv.py::{test.__name__}"
        for case in cases:
            if reference not in PROPERTY_TESTS[case]:
                PROPERTY_TESTS[case].append(reference)
        return test

    return declare


def randn(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def leaf(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy()).requires_grad_(True)


@st.composite
def conv_geometries(draw, max_padding: int = 2) -> dict:
    """Kernel, stride and padding (each per dimension) and an input they fit: N, C, O, H, W."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding))
    H = max(1, kh - 2 * ph) + draw(st.integers(0, 4))
    W = max(1, kw - 2 * pw) + draw(st.integers(0, 4))
    return dict(
        N=draw(st.integers(1, 2)),
        C=draw(st.integers(1, 3)),
        O=draw(st.integers(1, 3)),
        H=H,
        W=W,
        kernel=(kh, kw),
        stride=(sh, sw),
        padding=(ph, pw),
    )


@st.composite
def pool_geometries(draw) -> dict:
    """A max-pool geometry torch accepts: padding at most half the kernel in each dimension."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    H = max(1, kh - 2 * ph) + draw(st.integers(0, 4))
    W = max(1, kw - 2 * pw) + draw(st.integers(0, 4))
    return dict(
        N=draw(st.integers(1, 2)), C=draw(st.integers(1, 3)), H=H, W=W, kernel=(kh, kw), stride=stride, padding=(ph, pw)
    )


# --------------------------------------------------------------------------- conv2d


@property_of("conv2d")
@given(
    N=st.integers(1, 2),
    C=st.integers(1, 3),
    O=st.integers(1, 4),
    P=st.integers(1, 3),
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    bias=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_conv2d_with_kernel_equal_to_stride_is_patches_then_a_linear_layer(N, C, O, P, rows, cols, bias, dtype, seed):
    """ViT's patch embedding: conv(kernel = stride = P) == cut into P x P patches, flatten each
    in (C, kh, kw) order, apply a linear layer with ``weight.reshape(O, C*P*P)``. Forward and
    every gradient."""
    rng = np.random.default_rng(seed)
    H, W = rows * P, cols * P
    x, weight = randn(rng, (N, C, H, W), dtype), randn(rng, (O, C, P, P), dtype)
    b = randn(rng, (O,), dtype) if bias else None

    y, cache = F.conv2d_forward(x, weight, b, stride=P)  # (N, O, rows, cols)
    patches = x.reshape(N, C, rows, P, cols, P).transpose(0, 2, 4, 1, 3, 5).reshape(N, rows * cols, C * P * P)
    y_lin, cache_lin = F.linear_forward(patches, weight.reshape(O, C * P * P), b)  # (N, rows*cols, O)
    assert_matches(
        "conv2d(kernel = stride) vs patches + linear", y.transpose(0, 2, 3, 1).reshape(y_lin.shape), y_lin, dtype
    )

    dout = randn(rng, y.shape, dtype)
    dx, dweight, dbias = F.conv2d_backward(dout, cache)
    dpatches, dweight_lin, dbias_lin = F.linear_backward(dout.transpose(0, 2, 3, 1).reshape(y_lin.shape), cache_lin)
    dx_lin = dpatches.reshape(N, rows, cols, C, P, P).transpose(0, 3, 1, 4, 2, 5).reshape(N, C, H, W)
    assert_matches("dx (patches + linear)", dx, dx_lin, dtype)
    assert_matches("dweight (patches + linear)", dweight, dweight_lin.reshape(O, C, P, P), dtype)
    if bias:
        assert_matches("dbias (patches + linear)", dbias, dbias_lin, dtype)
    else:
        assert dbias is None


@property_of("conv2d")
@given(
    N=st.integers(1, 2),
    C=st.integers(1, 4),
    O=st.integers(1, 3),
    H=st.integers(1, 5),
    W=st.integers(1, 5),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dtype=dtypes,
    seed=seeds,
)
def test_a_1x1_conv2d_is_a_per_pixel_linear_layer_over_the_strided_pixels(N, C, O, H, W, stride, dtype, seed):
    rng = np.random.default_rng(seed)
    sh, sw = stride
    x, weight, b = randn(rng, (N, C, H, W), dtype), randn(rng, (O, C, 1, 1), dtype), randn(rng, (O,), dtype)
    y, cache = F.conv2d_forward(x, weight, b, stride=stride)
    pixels = x[:, :, ::sh, ::sw].transpose(0, 2, 3, 1)  # (N, Ho, Wo, C)
    y_lin, cache_lin = F.linear_forward(np.ascontiguousarray(pixels), weight[:, :, 0, 0], b)  # (N, Ho, Wo, O)
    assert_matches("1x1 conv vs per-pixel linear", y, y_lin.transpose(0, 3, 1, 2), dtype)

    dout = randn(rng, y.shape, dtype)
    dx, dweight, dbias = F.conv2d_backward(dout, cache)
    dpixels, dweight_lin, dbias_lin = F.linear_backward(np.ascontiguousarray(dout.transpose(0, 2, 3, 1)), cache_lin)
    expected_dx = np.zeros_like(x)
    expected_dx[:, :, ::sh, ::sw] = dpixels.transpose(0, 3, 1, 2)  # the skipped pixels get nothing
    assert_matches("1x1 conv dx", dx, expected_dx, dtype)
    assert_matches("1x1 conv dweight", dweight[:, :, 0, 0], dweight_lin, dtype)
    assert_matches("1x1 conv dbias", dbias, dbias_lin, dtype)


@property_of("conv2d")
@given(g=conv_geometries(), dtype=dtypes, seed=seeds)
def test_conv2d_is_linear_in_x_and_in_weight_and_so_are_its_gradients(g, dtype, seed):
    rng = np.random.default_rng(seed)
    shape_x, shape_w = (g["N"], g["C"], g["H"], g["W"]), (g["O"], g["C"], *g["kernel"])
    x1, x2, w1, w2 = (
        randn(rng, shape_x, dtype),
        randn(rng, shape_x, dtype),
        randn(rng, shape_w, dtype),
        randn(rng, shape_w, dtype),
    )
    a, b = (dtype(v) for v in rng.standard_normal(2))  # scalars of the array's dtype: no promotion

    def conv(x, w):
        return F.conv2d_forward(x, w, stride=g["stride"], padding=g["padding"])

    (y1, c1), (y2, c2) = conv(x1, w1), conv(x2, w1)
    assert_matches("conv(a x1 + b x2) vs a conv(x1) + b conv(x2)", conv(a * x1 + b * x2, w1)[0], a * y1 + b * y2, dtype)
    assert_matches(
        "conv(a w1 + b w2) vs a conv(w1) + b conv(w2)",
        conv(x1, a * w1 + b * w2)[0],
        a * y1 + b * conv(x1, w2)[0],
        dtype,
    )

    # The gradients: dweight is linear in x, dx does not depend on x at all.
    dout = randn(rng, y1.shape, dtype)
    dx1, dw1, _ = F.conv2d_backward(dout, c1)
    dx2, dw2, _ = F.conv2d_backward(dout, c2)
    _, dw12, _ = F.conv2d_backward(dout, conv(x1 + x2, w1)[1])
    assert_matches("dweight(x1 + x2) vs dweight(x1) + dweight(x2)", dw12, dw1 + dw2, dtype)
    assert np.array_equal(dx1, dx2), "dx of a convolution depends on the weight and dout only"


@property_of("conv2d")
@given(g=conv_geometries(max_padding=0), dtype=dtypes, seed=seeds)
def test_conv2d_shifting_the_input_by_one_stride_shifts_the_output_by_one_row(g, dtype, seed):
    """Translation equivariance: the same kernel is applied at every position."""
    rng = np.random.default_rng(seed)
    sh, kh = g["stride"][0], g["kernel"][0]
    H = max(g["H"], kh + sh)  # at least two output rows
    x, w = randn(rng, (g["N"], g["C"], H, g["W"]), dtype), randn(rng, (g["O"], g["C"], *g["kernel"]), dtype)
    y, _ = F.conv2d_forward(x, w, stride=g["stride"])
    y_shifted, _ = F.conv2d_forward(np.ascontiguousarray(x[:, :, sh:]), w, stride=g["stride"])
    assert_matches("conv(x shifted by sh rows) vs conv(x) shifted by one row", y_shifted, y[:, :, 1:], dtype)


@property_of("conv2d", "max_pool2d")
@given(g=conv_geometries(), dtype=dtypes, seed=seeds)
def test_sliding_windows_and_fold_windows_are_adjoint(g, dtype, seed):
    """<unfold(x), c> == <x, fold(c)> for every x and c: fold is unfold's transpose, which is
    why the backward of "gather the patches" is "scatter-add them back"."""
    rng = np.random.default_rng(seed)
    xp = randn(rng, (g["N"], g["C"], g["H"], g["W"]), dtype)
    kernel = (min(g["kernel"][0], g["H"]), min(g["kernel"][1], g["W"]))
    windows = F.sliding_windows(xp, kernel, g["stride"])  # (N, C, Ho, Wo, kh, kw)
    c = randn(rng, windows.shape, dtype)
    folded = F.fold_windows(c, xp.shape[2:], g["stride"])  # (N, C, H, W)
    assert folded.dtype == dtype and folded.shape == xp.shape
    # The inner products in float64, so that only the fold's own rounding is measured.
    lhs, rhs = np.sum(windows * c.astype(np.float64)), np.sum(xp * folded.astype(np.float64))
    assert_matches("<unfold(x), c> vs <x, fold(c)>", lhs, rhs, dtype)


# --------------------------------------------------------------------------- conv1d


@property_of("conv1d")
@given(
    N=st.integers(1, 2),
    C=st.integers(1, 3),
    O=st.integers(1, 3),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    p=st.integers(0, 2),
    extra=st.integers(0, 5),
    bias=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_conv1d_equals_conv2d_with_height_one(N, C, O, k, s, p, extra, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    L = max(1, k - 2 * p) + extra
    x, w = randn(rng, (N, C, L), dtype), randn(rng, (O, C, k), dtype)
    b = randn(rng, (O,), dtype) if bias else None
    y, cache = F.conv1d_forward(x, w, b, stride=s, padding=p)
    y2, cache2 = F.conv2d_forward(x[:, :, None, :], w[:, :, None, :], b, stride=(1, s), padding=(0, p))
    assert y.dtype == dtype and y.shape == (N, O, (L + 2 * p - k) // s + 1)
    assert_matches("conv1d vs conv2d (H = 1)", y, y2[:, :, 0, :], dtype)

    dout = randn(rng, y.shape, dtype)
    dx, dw, db = F.conv1d_backward(dout, cache)
    dx2, dw2, db2 = F.conv2d_backward(dout[:, :, None, :], cache2)
    assert_matches("conv1d dx vs conv2d (H = 1)", dx, dx2[:, :, 0, :], dtype)
    assert_matches("conv1d dweight vs conv2d (H = 1)", dw, dw2[:, :, 0, :], dtype)
    if bias:
        assert_matches("conv1d dbias vs conv2d (H = 1)", db, db2, dtype)
    else:
        assert db is None and db2 is None


# --------------------------------------------------------------------------- max_pool2d


def _tied_values(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Values from {0, 1, 2}: nearly every window holds a tie."""
    return rng.integers(0, 3, size=shape).astype(dtype)


@property_of("max_pool2d")
@given(g=pool_geometries(), ties=st.booleans(), dtype=dtypes, seed=seeds)
def test_max_pool2d_sends_each_upstream_value_to_exactly_one_input(g, ties, dtype, seed):
    """Each output reads one input, so sum(dx) == sum(dout) whatever the geometry (padding never
    receives anything). Where the windows do not overlap, the nonzero entries of dx *are* the
    upstream values, one each."""
    rng = np.random.default_rng(seed)
    shape = (g["N"], g["C"], g["H"], g["W"])
    x = _tied_values(rng, shape, dtype) if ties else randn(rng, shape, dtype)
    y, cache = F.max_pool2d_forward(x, g["kernel"], g["stride"], g["padding"])
    dout = (rng.random(y.shape) + 0.5).astype(dtype)  # random, and never 0
    dx = F.max_pool2d_backward(dout, cache)
    assert y.dtype == dtype and dx.dtype == dtype and dx.shape == x.shape
    assert_matches("sum(dx) vs sum(dout)", dx.sum(dtype=np.float64), dout.sum(dtype=np.float64), dtype)

    stride = g["kernel"] if g["stride"] is None else g["stride"]
    if g["padding"] == (0, 0) and all(s >= k for s, k in zip(stride, g["kernel"], strict=True)):
        chosen = dx != 0
        assert np.array_equal(np.sort(dx[chosen]), np.sort(dout.ravel())), "one upstream value per chosen input"
        assert np.array_equal(np.sort(x[chosen]), np.sort(y.ravel())), "each chosen input is its window's maximum"


@property_of("max_pool2d")
@given(N=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 5), W=st.integers(1, 5), dtype=dtypes, seed=seeds)
def test_max_pool2d_with_a_kernel_of_one_is_the_identity(N, C, H, W, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, (N, C, H, W), dtype)
    y, cache = F.max_pool2d_forward(x, 1)
    dout = randn(rng, y.shape, dtype)
    assert np.array_equal(y, x) and np.array_equal(F.max_pool2d_backward(dout, cache), dout)


@property_of("max_pool2d")
@given(g=pool_geometries(), dtype=dtypes, seed=seeds)
def test_max_pool2d_ties_go_where_torch_sends_them(g, dtype, seed):
    """With values from {0, 1, 2} nearly every window has a tie; output and gradient must equal
    ``F.max_pool2d``'s, overlapping windows and padding included."""
    rng = np.random.default_rng(seed)
    x = _tied_values(rng, (g["N"], g["C"], g["H"], g["W"]), dtype)
    y, cache = F.max_pool2d_forward(x, g["kernel"], g["stride"], g["padding"])
    dout = randn(rng, y.shape, dtype)
    dx = F.max_pool2d_backward(dout, cache)
    xt = leaf(x)
    yt = TorchF.max_pool2d(xt, g["kernel"], g["stride"], g["padding"])
    yt.backward(torch.from_numpy(dout))
    assert np.array_equal(y, yt.detach().numpy())
    assert_matches("max_pool2d dx on ties vs F.max_pool2d", dx, xt.grad, dtype)


@property_of("max_pool2d")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_tie_rule_is_torchs_first_maximum_in_row_major_order(dtype):
    """The framework fact, spelled out on windows of equal values (numbers observed on torch 2.13 CPU).

    One 3x3 window of ones: the gradient goes to its top-left element. 2x2 windows at stride 1
    over ones: each window's top-left, so inputs shared by windows sum their upstream values.
    A window of all ``-inf`` gives to its first real (not padding) element; a NaN beats every
    number and the last NaN of a window wins.
    """
    ones = np.ones((1, 1, 3, 3), dtype)

    def pool(x, kernel, stride=None, padding=0):
        y, cache = F.max_pool2d_forward(x, kernel, stride, padding)
        dout = np.arange(1, y.size + 1, dtype=dtype).reshape(y.shape)  # 1, 2, 3, ...: who got what
        dx = F.max_pool2d_backward(dout, cache)
        xt = leaf(x)
        yt = TorchF.max_pool2d(xt, kernel, stride, padding)
        yt.backward(torch.from_numpy(dout))
        assert np.array_equal(y, yt.detach().numpy(), equal_nan=True), "output differs from F.max_pool2d"
        assert np.array_equal(dx, xt.grad.numpy()), "gradient routing differs from F.max_pool2d"
        return dx[0, 0]

    assert np.array_equal(pool(ones, 3), [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert np.array_equal(pool(ones, 2, 1), [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    # padded, overlapping: windows (0,0),(0,1),(1,0),(1,1) all choose input (0,0), and so on
    assert np.array_equal(pool(ones, 3, 1, 1), [[12, 9, 0], [15, 9, 0], [0, 0, 0]])
    assert np.array_equal(pool(np.full((1, 1, 3, 3), -np.inf, dtype), 3, 1, 1), [[12, 9, 0], [15, 9, 0], [0, 0, 0]])
    nans = np.array([[[[np.nan, 1, np.nan], [2, 3, 4], [5, 6, 7]]]], dtype)
    assert np.array_equal(pool(nans, 3), [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


# --------------------------------------------------------------------------- dtypes


@property_of("conv2d", "conv1d", "max_pool2d")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_output_and_gradient_keeps_the_input_dtype(dtype):
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, (2, 3, 5, 4), dtype), randn(rng, (2, 3, 3, 2), dtype), randn(rng, (2,), dtype)
    y, cache = F.conv2d_forward(x, w, b, stride=(2, 1), padding=1)
    grads = F.conv2d_backward(randn(rng, y.shape, dtype), cache)
    y1, cache1 = F.conv1d_forward(x[:, :, 0], w[:, :, 0], b, stride=2, padding=1)
    grads1 = F.conv1d_backward(randn(rng, y1.shape, dtype), cache1)
    yp, cachep = F.max_pool2d_forward(x, 2, 1, 1)
    dxp = F.max_pool2d_backward(randn(rng, yp.shape, dtype), cachep)
    outputs = {"conv2d y": y, "conv1d y": y1, "max_pool2d y": yp, "max_pool2d dx": dxp}
    outputs.update({f"conv2d {n}": g for n, g in zip(("dx", "dweight", "dbias"), grads, strict=True)})
    outputs.update({f"conv1d {n}": g for n, g in zip(("dx", "dweight", "dbias"), grads1, strict=True)})
    wrong = {name: a.dtype for name, a in outputs.items() if a.dtype != dtype}
    assert not wrong, f"expected {np.dtype(dtype)} everywhere, got {wrong}"


# --------------------------------------------------------------------------- bad input

RNG = np.random.default_rng(0)


def arr(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


X, WEIGHT = arr(2, 3, 5, 5), arr(4, 3, 3, 3)
X1, WEIGHT1 = arr(2, 3, 6), arr(4, 3, 3)
_, CONV_CACHE = F.conv2d_forward(X, WEIGHT)  # output (2, 4, 3, 3)
_, CONV1_CACHE = F.conv1d_forward(X1, WEIGHT1)  # output (2, 4, 4)
_, POOL_CACHE = F.max_pool2d_forward(X, 2)  # output (2, 3, 2, 2)

# (id, zero-argument call, error type, regex the message must match)
BAD_INPUT = [
    ("conv2d x 3-D", lambda: F.conv2d_forward(arr(3, 5, 5), WEIGHT), ValueError,
     r"^x: expected shape \(N, C, H, W\) \(4 dimensions\), got shape \(3, 5, 5\)"),
    ("conv2d x of ints", lambda: F.conv2d_forward(np.ones((2, 3, 5, 5), int), WEIGHT), TypeError,
     r"^x: expected dtype float32 or float64, got int64"),
    ("conv2d weight 2-D", lambda: F.conv2d_forward(X, arr(4, 27)), ValueError,
     r"^weight: expected shape \(O, C, kh, kw\) \(4 dimensions\), got shape \(4, 27\)"),
    ("conv2d weight with an empty kernel", lambda: F.conv2d_forward(X, arr(4, 3, 0, 3)), ValueError,
     r"^weight: expected shape \(O, C, kh, kw\) with kh >= 1, got shape \(4, 3, 0, 3\)"),
    ("conv2d channel mismatch", lambda: F.conv2d_forward(X, arr(4, 2, 3, 3)), ValueError,
     r"^weight: expected in_channels \(the C of x, shape \(2, 3, 5, 5\)\) = 3 at axis 1, got shape \(4, 2, 3, 3\)"),
    ("conv2d bias shape", lambda: F.conv2d_forward(X, WEIGHT, arr(3)), ValueError,
     r"^bias: expected out_channels \(the O of weight, shape \(4, 3, 3, 3\)\) = 4 at axis 0, got shape \(3,\)"),
    ("conv2d kernel larger than the padded input", lambda: F.conv2d_forward(X, arr(4, 3, 8, 3), padding=1),
     ValueError, r"^weight: expected a kernel no larger than the padded input \(7, 7\) \(x's \(5, 5\) plus padding "
     r"\(1, 1\) on each side\), got kernel \(8, 3\)"),
    ("conv2d stride 0", lambda: F.conv2d_forward(X, WEIGHT, stride=0), ValueError,
     r"^stride: expected an int or a tuple of 2 ints >= 1, got 0"),
    ("conv2d stride (1, -2)", lambda: F.conv2d_forward(X, WEIGHT, stride=(1, -2)), ValueError,
     r"^stride: expected an int or a tuple of 2 ints >= 1, got \(1, -2\)"),
    ("conv2d negative padding", lambda: F.conv2d_forward(X, WEIGHT, padding=-1), ValueError,
     r"^padding: expected an int or a tuple of 2 ints >= 0, got -1"),
    ("conv2d float stride", lambda: F.conv2d_forward(X, WEIGHT, stride=1.5), TypeError,
     r"^stride: expected an int or a tuple of 2 ints \(not bools\), got float 1.5"),
    ("conv2d bool stride", lambda: F.conv2d_forward(X, WEIGHT, stride=True), TypeError,
     r"^stride: expected an int or a tuple of 2 ints \(not bools\), got bool True"),
    ("conv2d bool in a padding pair", lambda: F.conv2d_forward(X, WEIGHT, padding=(1, False)), TypeError,
     r"^padding: expected an int or a tuple of 2 ints \(not bools\), got tuple \(1, False\)"),
    ("conv2d stride of 3 values", lambda: F.conv2d_forward(X, WEIGHT, stride=(1, 2, 3)), ValueError,
     r"^stride: expected an int or a tuple of 2 ints, got 3 values \(1, 2, 3\)"),
    ("conv2d float32 x, float64 weight", lambda: F.conv2d_forward(X.astype(np.float32), WEIGHT), TypeError,
     r"^weight: expected dtype float32 \(the dtype of x\), got float64"),
    ("conv2d float32 bias", lambda: F.conv2d_forward(X, WEIGHT, arr(4, dtype=np.float32)), TypeError,
     r"^bias: expected dtype float64 \(the dtype of x\), got float32"),
    ("conv2d_backward dout shape", lambda: F.conv2d_backward(arr(2, 4, 3, 2), CONV_CACHE), ValueError,
     r"^dout: expected shape \(2, 4, 3, 3\), got \(2, 4, 3, 2\)"),
    ("conv2d_backward dout dtype", lambda: F.conv2d_backward(arr(2, 4, 3, 3, dtype=np.float32), CONV_CACHE),
     TypeError, r"^dout: expected dtype float64"),
    ("conv1d x 4-D", lambda: F.conv1d_forward(X, WEIGHT1), ValueError,
     r"^x: expected shape \(N, C, L\) \(3 dimensions\), got shape \(2, 3, 5, 5\)"),
    ("conv1d weight 4-D", lambda: F.conv1d_forward(X1, WEIGHT), ValueError,
     r"^weight: expected shape \(O, C, k\) \(3 dimensions\), got shape \(4, 3, 3, 3\)"),
    ("conv1d channel mismatch", lambda: F.conv1d_forward(X1, arr(4, 2, 3)), ValueError,
     r"^weight: expected in_channels \(the C of x, shape \(2, 3, 6\)\) = 3 at axis 1"),
    ("conv1d stride pair", lambda: F.conv1d_forward(X1, WEIGHT1, stride=(2, 2)), ValueError,
     r"^stride: expected an int or a tuple of 1 int, got 2 values \(2, 2\)"),
    ("conv1d kernel longer than the padded input", lambda: F.conv1d_forward(X1, arr(4, 3, 9), padding=1),
     ValueError, r"^weight: expected a kernel no larger than the padded input \(8,\).*got kernel \(9,\)"),
    ("conv1d_backward dout shape", lambda: F.conv1d_backward(arr(2, 4, 3), CONV1_CACHE), ValueError,
     r"^dout: expected shape \(2, 4, 4\), got \(2, 4, 3\)"),
    ("max_pool2d x 3-D", lambda: F.max_pool2d_forward(X1, 2), ValueError, r"^x: expected shape \(N, C, H, W\)"),
    ("max_pool2d kernel_size 0", lambda: F.max_pool2d_forward(X, 0), ValueError,
     r"^kernel_size: expected an int or a tuple of 2 ints >= 1, got 0"),
    ("max_pool2d padding over half the kernel", lambda: F.max_pool2d_forward(X, 3, padding=2), ValueError,
     r"^padding: expected at most half of kernel_size in each dimension \(torch requires padding <= kernel_size / 2\)"
     r", got padding \(2, 2\) for kernel_size \(3, 3\)"),
    ("max_pool2d kernel larger than the padded input", lambda: F.max_pool2d_forward(X, (2, 6)), ValueError,
     r"^kernel_size: expected a kernel no larger than the padded input \(5, 5\)"),
    ("max_pool2d float stride", lambda: F.max_pool2d_forward(X, 2, stride=2.0), TypeError,
     r"^stride: expected an int or a tuple of 2 ints \(not bools\), got float 2.0"),
    ("max_pool2d negative padding", lambda: F.max_pool2d_forward(X, 2, padding=(0, -1)), ValueError,
     r"^padding: expected an int or a tuple of 2 ints >= 0"),
    ("max_pool2d_backward dout dtype", lambda: F.max_pool2d_backward(arr(2, 3, 2, 2, dtype=np.float32), POOL_CACHE),
     TypeError, r"^dout: expected dtype float64 \(the dtype of the forward pass\), got float32"),
    ("max_pool2d_backward dout shape", lambda: F.max_pool2d_backward(arr(2, 3, 2), POOL_CACHE), ValueError,
     r"^dout: expected shape \(2, 3, 2, 2\)"),
]  # fmt: skip


@property_of("conv2d", "conv1d", "max_pool2d")
@pytest.mark.parametrize(("call", "error", "pattern"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_an_error_naming_the_argument_what_was_expected_and_what_was_given(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
