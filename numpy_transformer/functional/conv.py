r"""Convolution (2-D and 1-D) and 2-D max-pooling, written as im2col: unfold, one GEMM, fold.

Shape legend: ``N`` batch, ``C`` input channels, ``O`` output channels, ``H, W`` input
height and width, ``Hp, Wp`` the padded input (``H + 2 ph``, ``W + 2 pw``), ``kh, kw`` the
kernel, ``sh, sw`` the stride, ``ph, pw`` the padding, ``Ho, Wo`` the output
(``Ho = (Hp - kh) // sh + 1``), ``K = C kh kw`` the length of one flattened patch,
``P = N Ho Wo`` the number of patches; ``L`` a 1-D length.

Layouts are PyTorch's: ``x (N, C, H, W)`` and ``weight (O, C, kh, kw)`` as ``torch.nn.Conv2d``.

The convolution as one matrix product
-------------------------------------
PyTorch's "convolution" is a cross-correlation (the kernel is not flipped). With ``xp`` the
input padded by zeros,

.. math:: y_{n o a b} = b_o + \sum_{c, i, j} W_{o c i j}\; xp_{n, c, a s_h + i, b s_w + j}.

Unfold every patch into a column (im2col): the matrix ``col`` of shape ``(K, P)`` with

.. math:: \mathrm{col}_{(c i j), (n a b)} = xp_{n, c, a s_h + i, b s_w + j}.

Its rows are ordered ``(c, i, j)``, the order of ``weight.reshape(O, K)``, so the whole
convolution is a single GEMM, the same product as a linear layer over patches:

.. math:: Y = W_{\mathrm{mat}}\,\mathrm{col} \quad (O, K) \cdot (K, P) \to (O, P),
   \qquad y_{n o a b} = Y_{o, (n a b)} + b_o.

Backward. ``Y`` is linear in ``W_mat`` and in ``col``, as in :mod:`.linear`:

.. math:: dW_{\mathrm{mat}} = dY\,\mathrm{col}^T, \qquad
   d\mathrm{col} = W_{\mathrm{mat}}^T\,dY, \qquad db_o = \sum_{n a b} dy_{n o a b}.

``col`` *gathers* entries of ``xp``: an entry sits in every column whose window covers it
(several, when windows overlap; none, when a stride larger than the kernel skips it). The
adjoint of a gather is a scatter-add, the fold (col2im):

.. math:: dxp_{n, c, a s_h + i, b s_w + j} \mathrel{+}= d\mathrm{col}_{(c i j), (n a b)},

and ``dx`` is ``dxp`` with the padding cut off. So ``dx = fold(W^T dY)``. For one kernel
offset ``(i, j)`` the windows' entries land on the strided grid ``xp[:, :, i::sh, j::sw]``
without colliding, so the fold below loops over the ``kh kw`` offsets only: every other
axis is vectorised.

Max-pooling
-----------
``y_{n c a b} = \max_{i j} xp_{n, c, a s_h + i, b s_w + j}`` with ``xp`` padded by
``-inf``, over the same windows, each channel on its own. Away from ties the maximum is
one entry, so ``dy/dxp`` is 1 there and 0 elsewhere: ``dx`` is the fold of ``dout``
placed at each window's argmax.

Ties are a framework fact, not calculus (the max is not differentiable there; every
choice is a subgradient). PyTorch's rule, checked on CPU (torch 2.13, float32 and float64,
contiguous and channels-last inputs; ``parity_tests/test_conv.py`` pins it):

* the gradient of a window goes to its *first* maximal element in row-major order (top
  row first, left to right within a row), counting real positions only, never padding;
* overlapping windows choose independently; an input chosen by several windows receives
  the sum of their upstream gradients;
* a window whose real elements are all ``-inf`` sends its gradient to its first real element;
* a NaN beats every number and the *last* NaN of a window wins (the kernel's test is
  ``val > max or isnan(val)``); that window's output is NaN.

Conv1d is conv2d on ``(N, C, 1, L)`` with a ``(O, C, 1, k)`` kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .checks import (
    check_axis_size,
    check_dout,
    check_float_layout,
    check_int_tuple,
    check_kernel_fits,
    check_pool_padding,
    check_same_dtype,
)
from .intermediates import gradient_at

# ---------------------------------------------------------------------------- unfold and fold


def pad_hw(x: np.ndarray, padding: tuple[int, int], value: float = 0.0) -> np.ndarray:
    """``x (N, C, H, W)`` padded by ``value`` on both sides of H and W -> ``(N, C, Hp, Wp)``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)  # keeps x.dtype


def sliding_windows(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Every ``kh x kw`` window of ``xp (N, C, Hp, Wp)`` at the given stride, as a read-only view.

    Returns ``windows`` of shape ``(N, C, Ho, Wo, kh, kw)`` with
    ``windows[n, c, a, b, i, j] == xp[n, c, a*sh + i, b*sw + j]``: no copy is made, the
    view re-reads ``xp``'s memory with new strides.
    """
    sh, sw = stride
    windows = sliding_window_view(xp, kernel, axis=(2, 3))  # (N, C, Hp - kh + 1, Wp - kw + 1, kh, kw)
    return windows[:, :, ::sh, ::sw]  # (N, C, Ho, Wo, kh, kw)


def fold_windows(dwindows: np.ndarray, padded_hw: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """The adjoint of :func:`sliding_windows`: add each window's entries back where they came from.

    ``dwindows (N, C, Ho, Wo, kh, kw)`` -> ``dxp (N, C, Hp, Wp)``, where an entry of ``xp``
    covered by several windows receives the sum of their values and one covered by none
    receives 0.
    """
    N, C, Ho, Wo, kh, kw = dwindows.shape
    sh, sw = stride
    dxp = np.zeros((N, C, *padded_hw), dtype=dwindows.dtype)  # (N, C, Hp, Wp)
    for i in range(kh):
        for j in range(kw):
            # Offset (i, j) of window (a, b) sits at row a*sh + i, column b*sw + j: a strided
            # grid of Ho x Wo distinct positions, so += never meets itself within one offset.
            rows = slice(i, i + sh * (Ho - 1) + 1, sh)
            cols = slice(j, j + sw * (Wo - 1) + 1, sw)
            dxp[:, :, rows, cols] += dwindows[:, :, :, :, i, j]  # (N, C, Ho, Wo)
    return dxp


# ---------------------------------------------------------------------------- conv2d


@dataclass(frozen=True)
class Conv2dCache:
    col: np.ndarray  # (K, P) the unfolded patches, stored (kh kw / (sh sw) times the size of x): dW needs them
    weight: np.ndarray  # (O, C, kh, kw) needed for dcol = W^T dY
    x_shape: tuple[int, int, int, int]  # (N, C, H, W)
    out_shape: tuple[int, int, int, int]  # (N, O, Ho, Wo)
    stride: tuple[int, int]  # (sh, sw)
    padding: tuple[int, int]  # (ph, pw)
    has_bias: bool


def conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> tuple[np.ndarray, Conv2dCache]:
    """2-D convolution (cross-correlation) as ``torch.nn.functional.conv2d``: unfold, then one GEMM.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (O, C, kh, kw)
        Same layout as ``torch.nn.Conv2d.weight``.
    bias : ndarray, shape (O,), optional
    stride : int or pair of ints >= 1
    padding : int or pair of ints >= 0
        Zeros added on both sides of H (first) and W (second).

    Returns
    -------
    y : ndarray, shape (N, O, Ho, Wo), ``Ho = (H + 2 ph - kh) // sh + 1``
    cache : Conv2dCache
    """
    check_float_layout("x", x, ("N", "C", "H", "W"), may_be_empty=("N",))
    check_float_layout("weight", weight, ("O", "C", "kh", "kw"))
    check_axis_size("weight", weight, 1, x.shape[1], f"in_channels (the C of x, shape {x.shape})")
    if bias is not None:
        check_float_layout("bias", bias, ("O",))
        check_axis_size("bias", bias, 0, weight.shape[0], f"out_channels (the O of weight, shape {weight.shape})")
    check_same_dtype(x=x, weight=weight, bias=bias)
    stride = check_int_tuple("stride", stride, 2, low=1)
    padding = check_int_tuple("padding", padding, 2, low=0)
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    check_kernel_fits("weight", (kh, kw), (H, W), padding)

    xp = pad_hw(x, padding)  # (N, C, Hp, Wp)
    windows = sliding_windows(xp, (kh, kw), stride)  # (N, C, Ho, Wo, kh, kw), a view
    Ho, Wo = windows.shape[2:4]
    # im2col: one column per patch, rows in (c, i, j) order like weight.reshape(O, K).
    # (A copy as a rule; a 1x1 kernel at stride 1 over one image is already laid out so.)
    col = windows.transpose(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, N * Ho * Wo)  # (K, P)
    Y = weight.reshape(O, C * kh * kw) @ col  # (O, K) @ (K, P) -> (O, P): the one GEMM
    y = Y.reshape(O, N, Ho, Wo).transpose(1, 0, 2, 3)  # (N, O, Ho, Wo)
    if bias is not None:
        y = y + bias[:, None, None]  # (O, 1, 1) broadcasts over (N, O, Ho, Wo)
    cache = Conv2dCache(
        col=col,
        weight=weight,
        x_shape=(N, C, H, W),
        out_shape=(N, O, Ho, Wo),
        stride=stride,
        padding=padding,
        has_bias=bias is not None,
    )
    return np.ascontiguousarray(y), cache


def conv2d_backward(dout: np.ndarray, cache: Conv2dCache) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    r"""Gradients of ``y = conv2d(x, W, b)`` through its im2col form ``Y = W_mat col``.

    Forward: :math:`Y = W_{\mathrm{mat}}\,\mathrm{col} + b` with
    :math:`\mathrm{col} = \mathrm{unfold}(\mathrm{pad}(x))` of shape ``(K, P)``.

    Backward:

    .. math:: dW_{\mathrm{mat}} = dY\,\mathrm{col}^T, \qquad db = \sum_{n a b} dY, \qquad
       dx = \mathrm{crop}(\mathrm{fold}(W_{\mathrm{mat}}^T\,dY)).

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dweight : ndarray, shape (O, C, kh, kw)
    dbias : ndarray, shape (O,) or None when the forward had no bias
    """
    weight, col = cache.weight, cache.col
    check_dout(dout, cache.out_shape, col.dtype)
    N, C, H, W = cache.x_shape
    O, _, kh, kw = weight.shape
    Ho, Wo = cache.out_shape[2:]
    ph, pw = cache.padding

    # In the forward pass this was: y = Y.reshape(O, N, Ho, Wo).transpose(1, 0, 2, 3) + bias
    dY = dout.transpose(1, 0, 2, 3).reshape(O, N * Ho * Wo)  # (O, P)
    dbias = dY.sum(axis=1) if cache.has_bias else None  # (O,)
    # In the forward pass this was: Y = W_mat @ col
    dweight = (dY @ col.T).reshape(weight.shape)  # (O, P) @ (P, K) -> (O, K) -> (O, C, kh, kw)
    dcol = gradient_at("col", weight.reshape(O, C * kh * kw).T @ dY)  # (K, O) @ (O, P) -> (K, P)
    # In the forward pass this was: col = unfold(xp), rows (c, i, j), columns (n, a, b)
    dwindows = dcol.reshape(C, kh, kw, N, Ho, Wo).transpose(3, 0, 4, 5, 1, 2)  # (N, C, Ho, Wo, kh, kw)
    dxp = fold_windows(dwindows, (H + 2 * ph, W + 2 * pw), cache.stride)  # (N, C, Hp, Wp)
    # In the forward pass this was: xp = pad(x)
    dx = dxp[:, :, ph : ph + H, pw : pw + W]  # (N, C, H, W)
    return np.ascontiguousarray(dx), dweight, dbias


# ---------------------------------------------------------------------------- conv1d


@dataclass(frozen=True)
class Conv1dCache:
    conv2d: Conv2dCache  # the cache of the same op run as conv2d on (N, C, 1, L)
    out_shape: tuple[int, int, int]  # (N, O, Lo)


def conv1d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] = 0,
) -> tuple[np.ndarray, Conv1dCache]:
    """1-D convolution as ``torch.nn.functional.conv1d``: conv2d over a height of 1.

    Parameters
    ----------
    x : ndarray, shape (N, C, L)
    weight : ndarray, shape (O, C, k)
        Same layout as ``torch.nn.Conv1d.weight``.
    bias : ndarray, shape (O,), optional
    stride : int (or a 1-tuple) >= 1
    padding : int (or a 1-tuple) >= 0

    Returns
    -------
    y : ndarray, shape (N, O, Lo), ``Lo = (L + 2 p - k) // s + 1``
    cache : Conv1dCache
    """
    check_float_layout("x", x, ("N", "C", "L"), may_be_empty=("N",))
    check_float_layout("weight", weight, ("O", "C", "k"))
    check_axis_size("weight", weight, 1, x.shape[1], f"in_channels (the C of x, shape {x.shape})")
    (s,) = check_int_tuple("stride", stride, 1, low=1)
    (p,) = check_int_tuple("padding", padding, 1, low=0)
    check_kernel_fits("weight", weight.shape[2:], x.shape[2:], (p,))
    # Everything else (bias, dtypes) is checked by conv2d, under the same argument names.
    y, cache = conv2d_forward(x[:, :, None, :], weight[:, :, None, :], bias, stride=(1, s), padding=(0, p))
    return y[:, :, 0, :], Conv1dCache(conv2d=cache, out_shape=(y.shape[0], y.shape[1], y.shape[3]))


def conv1d_backward(dout: np.ndarray, cache: Conv1dCache) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    r"""Gradients of ``y = conv1d(x, W, b)``: those of conv2d on the height-1 views.

    Forward: :math:`y_{n o a} = b_o + \sum_{c, i} W_{o c i}\; xp_{n, c, a s + i}`.

    Backward (conv2d's with ``kh = 1``):
    :math:`dW = dY\,\mathrm{col}^T`, :math:`db = \sum_{n a} dY`,
    :math:`dx = \mathrm{crop}(\mathrm{fold}(W^T dY))`.

    Returns
    -------
    dx : ndarray, shape (N, C, L)
    dweight : ndarray, shape (O, C, k)
    dbias : ndarray, shape (O,) or None when the forward had no bias
    """
    check_dout(dout, cache.out_shape, cache.conv2d.col.dtype)
    dx, dweight, dbias = conv2d_backward(dout[:, :, None, :], cache.conv2d)  # (N, O, 1, Lo) in
    return dx[:, :, 0, :], dweight[:, :, 0, :], dbias  # (N, C, L), (O, C, k), (O,)


# ---------------------------------------------------------------------------- max_pool2d


@dataclass(frozen=True)
class MaxPool2dCache:
    argmax: np.ndarray  # (N, C, Ho, Wo) int: the chosen element of each window, as i*kw + j
    x_shape: tuple[int, int, int, int]  # (N, C, H, W)
    kernel: tuple[int, int]  # (kh, kw)
    stride: tuple[int, int]  # (sh, sw)
    padding: tuple[int, int]  # (ph, pw)
    dtype: np.dtype  # x's dtype: dout must have it too


def torch_window_argmax(windows: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Which element of each flattened window PyTorch's max-pooling passes the gradient to.

    ``windows (N, C, Ho, Wo, kh*kw)`` (padding holds ``-inf``), ``real (Ho, Wo, kh*kw)``
    True where a window reads the input, not padding -> ``(N, C, Ho, Wo)``: the first
    maximal real element in row-major order; the last NaN where a window holds NaN
    (the rule of the module docstring).
    """
    top = windows.max(axis=-1, keepdims=True)  # (N, C, Ho, Wo, 1); NaN where a window holds one
    first_max = np.argmax((windows == top) & real, axis=-1)  # argmax of booleans: the first True
    is_nan = np.isnan(windows)
    last_nan = windows.shape[-1] - 1 - np.argmax(is_nan[..., ::-1], axis=-1)
    return np.where(is_nan.any(axis=-1), last_nan, first_max)


def max_pool2d_forward(
    x: np.ndarray,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> tuple[np.ndarray, MaxPool2dCache]:
    """2-D max-pooling as ``torch.nn.functional.max_pool2d`` (no dilation, floor mode).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or pair of ints >= 1
    stride : int or pair of ints >= 1, optional
        Defaults to ``kernel_size`` (non-overlapping windows), as in PyTorch.
    padding : int or pair of ints >= 0
        ``-inf`` added on both sides; at most half the kernel (PyTorch's rule).

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo), ``Ho = (H + 2 ph - kh) // sh + 1``
    cache : MaxPool2dCache
    """
    check_float_layout("x", x, ("N", "C", "H", "W"), may_be_empty=("N",))
    kernel = check_int_tuple("kernel_size", kernel_size, 2, low=1)
    stride = kernel if stride is None else check_int_tuple("stride", stride, 2, low=1)
    padding = check_int_tuple("padding", padding, 2, low=0)
    check_pool_padding(padding, kernel)
    N, C, H, W = x.shape
    check_kernel_fits("kernel_size", kernel, (H, W), padding)

    xp = pad_hw(x, padding, value=-np.inf)  # (N, C, Hp, Wp), -inf in x's dtype
    windows = sliding_windows(xp, kernel, stride)  # (N, C, Ho, Wo, kh, kw), a view
    Ho, Wo = windows.shape[2:4]
    flat = windows.reshape(N, C, Ho, Wo, kernel[0] * kernel[1])  # (N, C, Ho, Wo, kh*kw), copied where windows overlap
    # Which window positions read the input: the same windows over a padded mask of ones.
    inside = pad_hw(np.ones((1, 1, H, W), dtype=bool), padding, value=False)  # (1, 1, Hp, Wp)
    real = sliding_windows(inside, kernel, stride).reshape(Ho, Wo, -1)  # (Ho, Wo, kh*kw)
    argmax = torch_window_argmax(flat, real)  # (N, C, Ho, Wo)
    y = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]  # (N, C, Ho, Wo)
    cache = MaxPool2dCache(
        argmax=argmax, x_shape=(N, C, H, W), kernel=kernel, stride=stride, padding=padding, dtype=x.dtype
    )
    return y, cache


def max_pool2d_backward(dout: np.ndarray, cache: MaxPool2dCache) -> np.ndarray:
    r"""Gradient of ``y = max_pool2d(x)``: each upstream value goes to its window's argmax.

    Forward: :math:`y_{n c a b} = xp_{n, c, a s_h + i^*, b s_w + j^*}` with
    :math:`(i^*, j^*)` the window's argmax (PyTorch's tie rule, module docstring).

    Backward: :math:`\partial y_{n c a b} / \partial xp = 1` at the argmax, 0 elsewhere, so

    .. math:: dx = \mathrm{crop}(\mathrm{fold}(\mathrm{onehot}(i^*, j^*)\, dy)),

    where the fold sums what overlapping windows send to one input.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    """
    argmax = cache.argmax
    N, C, H, W = cache.x_shape
    (kh, kw), (ph, pw) = cache.kernel, cache.padding
    Ho, Wo = argmax.shape[2:]
    check_dout(dout, (N, C, Ho, Wo), cache.dtype)
    # In the forward pass this was: y = take_along_axis(flat, argmax)
    dflat = np.zeros((N, C, Ho, Wo, kh * kw), dtype=dout.dtype)  # (N, C, Ho, Wo, kh*kw)
    np.put_along_axis(dflat, argmax[..., None], dout[..., None], axis=-1)
    # In the forward pass this was: flat = sliding_windows(pad(x)).reshape(..., kh*kw)
    dflat = gradient_at("windows", dflat)  # (N, C, Ho, Wo, kh*kw) gradient at the flattened windows
    dxp = fold_windows(dflat.reshape(N, C, Ho, Wo, kh, kw), (H + 2 * ph, W + 2 * pw), cache.stride)
    return np.ascontiguousarray(dxp[:, :, ph : ph + H, pw : pw + W])  # (N, C, H, W)
