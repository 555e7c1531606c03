"""Affine map ``y = x W^T + b`` with PyTorch's weight layout ``(out, in)``.

Shape legend: ``...`` any leading dimensions (batch, time, ...),
``I`` in_features, ``O`` out_features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_same_dtype, check_shape


@dataclass(frozen=True)
class LinearCache:
    x: np.ndarray  # (..., I) the input, needed for dweight
    weight: np.ndarray  # (O, I) needed for dx
    has_bias: bool


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> tuple[np.ndarray, LinearCache]:
    """Apply ``y = x @ weight.T + bias``.

    Parameters
    ----------
    x : ndarray, shape (..., I)
    weight : ndarray, shape (O, I)
        Same layout as ``torch.nn.Linear.weight``.
    bias : ndarray, shape (O,), optional

    Returns
    -------
    y : ndarray, shape (..., O)
    cache : LinearCache
    """
    check_float_array("x", x, ndim_min=1)
    check_float_array("weight", weight, ndim_min=2)
    if weight.ndim != 2:
        raise ValueError(f"weight: expected shape (out, in), got {weight.shape}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x: expected last dimension {weight.shape[1]} (weight is {weight.shape}), got shape {x.shape}"
        )
    if bias is not None:
        check_float_array("bias", bias)
        check_shape("bias", bias, (weight.shape[0],))
    check_same_dtype(x=x, weight=weight, bias=bias)

    # One (N, I) @ (I, O) matmul over every leading position: a single BLAS call,
    # where a stacked (B, T, I) @ (I, O) would make one call per batch element.
    x_2d = x.reshape(-1, x.shape[-1])  # (N, I)
    y = (x_2d @ weight.T).reshape(x.shape[:-1] + (weight.shape[0],))  # (..., O)
    if bias is not None:
        y += bias
    return y, LinearCache(x=x, weight=weight, has_bias=bias is not None)


def linear_backward(dout: np.ndarray, cache: LinearCache) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    r"""Gradients of ``y = x W^T + b``.

    Forward: :math:`y_{n o} = \sum_i x_{n i} W_{o i} + b_o` (``n`` runs over all
    leading dimensions flattened).

    Backward:
    :math:`dx = dy\,W`, :math:`dW = dy^T x`, :math:`db = \sum_n dy_{n}`.

    Returns
    -------
    dx : ndarray, shape (..., I)
    dweight : ndarray, shape (O, I)
    dbias : ndarray, shape (O,) or None when the forward had no bias
    """
    x, weight = cache.x, cache.weight
    check_dout(dout, x.shape[:-1] + (weight.shape[0],), x.dtype)
    # Flatten the leading dimensions so each product is a single BLAS matmul.
    dout_2d = dout.reshape(-1, weight.shape[0])  # (N, O)
    x_2d = x.reshape(-1, weight.shape[1])  # (N, I)
    dx = (dout_2d @ weight).reshape(x.shape)  # (..., I)
    dweight = dout_2d.T @ x_2d  # (O, I)
    dbias = dout_2d.sum(axis=0) if cache.has_bias else None  # (O,)
    return dx, dweight, dbias
