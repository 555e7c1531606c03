"""Pooling for sentence embeddings: the masked mean over tokens and L2 normalisation.

A sentence-transformers model turns token states into one vector per sentence with
these two steps (``numpy_transformer.applications.pretrained.PretrainedBert.encode``); each has its
hand-written backward here, checked like every op in the parity registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array


@dataclass(frozen=True)
class MeanPoolingCache:
    weights: np.ndarray  # (B, S, 1) mask / count: 1/n_b at real tokens, 0 at padding
    width: int  # C


def mean_pooling_forward(hidden: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, MeanPoolingCache]:
    r"""The mean of the hidden states over the real tokens (sentence-transformers' mean pooling).

    ``hidden`` (B, S, C), ``attention_mask`` (B, S) 1 at tokens, 0 at padding ->
    ``pooled`` (B, C):

    .. math:: p_b = \frac{\sum_s m_{bs} h_{bs}}{\max(\sum_s m_{bs}, 10^{-9})}

    [CLS] and [SEP] are real tokens and count, as in sentence-transformers.
    """
    check_float_array("hidden", hidden, ndim_min=3)
    if hidden.ndim != 3:
        raise ValueError(f"hidden: expected shape (B, S, C), got {hidden.shape}")
    if not isinstance(attention_mask, np.ndarray) or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask: expected an array of shape {hidden.shape[:2]} (that of hidden without C), "
            f"got {getattr(attention_mask, 'shape', type(attention_mask).__name__)}"
        )
    m = attention_mask.astype(hidden.dtype)[..., None]  # (B, S, 1)
    n = np.maximum(m.sum(axis=1, keepdims=True), 1e-9)  # (B, 1, 1)
    weights = m / n  # (B, S, 1)
    return (hidden * weights).sum(axis=1), MeanPoolingCache(weights, hidden.shape[2])


def mean_pooling_backward(dpooled: np.ndarray, cache: MeanPoolingCache) -> np.ndarray:
    r"""``dpooled`` (B, C) -> ``dhidden`` (B, S, C).

    .. math:: \frac{\partial L}{\partial h_{bs}} = \frac{m_{bs}}{n_b}\,\frac{\partial L}{\partial p_b}

    every real token gets an equal share, padding none.
    """
    check_dout(dpooled, (cache.weights.shape[0], cache.width), cache.weights.dtype)
    return cache.weights * dpooled[:, None, :]  # (B, S, 1) * (B, 1, C) -> (B, S, C)


@dataclass(frozen=True)
class L2NormalizeCache:
    y: np.ndarray  # (B, C) the output x / max(|x|, eps)
    norm: np.ndarray  # (B, 1) max(|x|, eps)
    clamped: np.ndarray  # (B, 1) bool: |x| <= eps, where the output is x / eps (linear)


def l2_normalize_forward(x: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, L2NormalizeCache]:
    r"""Each row divided by its Euclidean norm (``torch.nn.functional.normalize``, p = 2).

    .. math:: y = x / \max(\lVert x \rVert_2, \epsilon)
    """
    check_float_array("x", x, ndim_min=1)
    raw = np.sqrt((x * x).sum(axis=-1, keepdims=True))  # (B, 1)
    clamped = raw <= eps
    norm = np.where(clamped, np.asarray(eps, dtype=x.dtype), raw)
    y = x / norm
    return y, L2NormalizeCache(y, norm, clamped)


def l2_normalize_backward(dy: np.ndarray, cache: L2NormalizeCache) -> np.ndarray:
    r"""``dy`` (B, C) -> ``dx`` (B, C).

    With :math:`r = \lVert x\rVert` and :math:`y = x / r`, :math:`\partial r/\partial x = y`, so

    .. math:: dx = \frac{dy - y\,(y \cdot dy)}{r}

    (the component of ``dy`` along ``y`` is removed: scaling ``x`` does not move ``y``).
    Where :math:`r \le \epsilon` the forward is the linear map :math:`x/\epsilon` and
    :math:`dx = dy/\epsilon`.
    """
    check_dout(dy, cache.y.shape, cache.y.dtype)
    along = (cache.y * dy).sum(axis=-1, keepdims=True)  # (B, 1)
    dx = (dy - cache.y * along) / cache.norm
    return np.where(cache.clamped, dy / cache.norm, dx)
