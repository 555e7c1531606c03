"""Scaled dot-product attention with a boolean mask, causal masking and dropout.

Shape legend: ``...`` leading dimensions (usually ``(B, H)``), ``T`` query
length, ``S`` key length, ``D`` query/key width, ``Dv`` value width.

Fully masked query rows
-----------------------
A query row whose every key is masked out has no softmax (``0/0``). This package
defines its attention weights as all zeros, so its output row is zero and no
gradient flows through it (to ``q``, ``k`` or ``v``). That is also what
``torch.nn.functional.scaled_dot_product_attention`` returns in recent PyTorch
(seen on 2.5 and later); ``torch.nn.MultiheadAttention`` returns NaN for the same
situation. ``parity_tests`` pins both behaviours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import (
    check_bool,
    check_broadcastable,
    check_dout,
    check_dropout_p,
    check_float_array,
    check_real,
    check_same_dtype,
    check_shape,
)
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .masks import causal_mask
from .softmax import SoftmaxCache, softmax_backward, softmax_forward


@dataclass(frozen=True)
class AttentionCache:
    q: np.ndarray  # (..., T, D)
    k: np.ndarray  # (..., S, D)
    v: np.ndarray  # (..., S, Dv)
    weights: np.ndarray  # (..., T, S) softmax probabilities before dropout, for inspection
    dropout: DropoutCache  # the (..., T, S) keep-mask; attn = dropout(weights) is recomputed
    dropout_p: float
    scale: float


def check_attention_inputs(q: object, k: object, v: object, mask: object) -> tuple[np.dtype, tuple[int, ...], int]:
    """Check the arguments of an attention op; return (their dtype, the scores' shape (..., T, S), D).

    ``q`` (..., T, D), ``k`` (..., S, D), ``v`` (..., S, Dv) float arrays of one dtype with the same
    leading axes, and ``mask`` None or a bool array broadcastable to (..., T, S); errors name the argument.
    """
    check_float_array("q", q, ndim_min=2)
    check_float_array("k", k, ndim_min=2)
    check_float_array("v", v, ndim_min=2)
    dtype = check_same_dtype(q=q, k=k, v=v)
    *lead, T, D = q.shape
    if k.shape[:-2] != tuple(lead) or k.shape[-1] != D:
        raise ValueError(f"k: expected shape {tuple(lead) + ('S', D)} to match q {q.shape}, got {k.shape}")
    S = k.shape[-2]
    if D < 1:
        raise ValueError(f"q: expected a query/key width D >= 1, got shape {q.shape}")
    if S < 1:
        raise ValueError(f"k: expected at least one key (S >= 1), got shape {k.shape}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v: expected shape {k.shape[:-1] + ('Dv',)} to match k {k.shape}, got {v.shape}")
    scores_shape = (*lead, T, S)
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            raise TypeError(
                f"mask: expected a bool ndarray (True = may attend), got {getattr(mask, 'dtype', type(mask).__name__)}"
            )
        check_broadcastable("mask", mask, scores_shape)
    return dtype, scores_shape, D


def scaled_dot_product_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    rng: np.random.Generator | None = None,
    dropout_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, AttentionCache]:
    r"""Attention :math:`\mathrm{softmax}(q k^T \cdot \mathrm{scale} + \text{mask})\, v`.

    Parameters
    ----------
    q : ndarray, shape (..., T, D)
    k : ndarray, shape (..., S, D)
    v : ndarray, shape (..., S, Dv)
        ``q``, ``k`` and ``v`` must have identical leading dimensions; ``D >= 1`` and
        ``S >= 1`` (a softmax over no key is undefined; a fully masked row is the way to
        give a query nothing to attend to). ``T``, ``Dv`` and leading sizes may be 0.
    mask : bool ndarray broadcastable to (..., T, S), optional
        ``True`` = this query may attend to this key.
    is_causal : bool
        Also block keys after the query, aligned at the top-left when ``T != S``
        (as in PyTorch). Unlike PyTorch, it may be combined with ``mask``: both apply.
        A bool (Python or NumPy): ``"no"`` or ``1`` is a ``TypeError``, never truthy.
    scale : float, optional
        Defaults to :math:`1/\sqrt{D}`; otherwise a finite number > 0.
    dropout_p : float in [0, 1)
        Dropout on the attention weights (applied whenever ``dropout_p > 0``,
        like ``F.scaled_dot_product_attention``; modules pass 0 in eval mode).
    rng : numpy.random.Generator, optional
        Draws the dropout keep-mask.
    dropout_mask : bool ndarray, shape (..., T, S), optional
        Explicit keep-mask (True = kept), so a twin can drop the same weights.

    Returns
    -------
    out : ndarray, shape (..., T, Dv)
    cache : AttentionCache
        ``cache.weights`` holds the attention probabilities.
    """
    dtype, scores_shape, D = check_attention_inputs(q, k, v, mask)
    T, S = scores_shape[-2:]
    dropout_p = check_dropout_p(dropout_p, "dropout_p")
    is_causal = check_bool("is_causal", is_causal)
    scale = 1.0 / math.sqrt(D) if scale is None else check_real("scale", scale, low=0, low_inclusive=False)

    allowed = None  # (..., T, S) or broadcastable; None = everything allowed
    if mask is not None:
        allowed = mask
    if is_causal:
        causal = causal_mask(T, S)  # (T, S)
        allowed = causal if allowed is None else (allowed & causal)

    scores = (q @ np.swapaxes(k, -1, -2)) * dtype.type(scale)  # (..., T, S)
    if allowed is None:
        weights, _ = softmax_forward(scores, axis=-1)  # (..., T, S)
    else:
        weights = masked_softmax(scores, np.broadcast_to(allowed, scores_shape))

    # Dropout on the weights (the identity when dropout_p == 0).
    if dropout_mask is not None:
        if not isinstance(dropout_mask, np.ndarray) or dropout_mask.dtype != np.bool_:
            raise TypeError("dropout_mask: expected a bool ndarray (True = keep)")
        check_shape("dropout_mask", dropout_mask, scores_shape)
    attn, dropout_cache = dropout_forward(weights, dropout_p, rng=rng, mask=dropout_mask)  # (..., T, S)

    out = attn @ v  # (..., T, Dv)
    cache = AttentionCache(
        q=q, k=k, v=v, weights=weights, dropout=dropout_cache, dropout_p=dropout_p, scale=float(scale)
    )
    return out, cache


def masked_softmax(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, over the allowed keys only; a row with no allowed key gets all zeros.

    ``allowed`` is a bool array of ``scores``' shape (True = may attend). Its backward is
    ``softmax_backward`` with these weights: masked keys have weight 0 and get no gradient.

    Equal to ``softmax_forward`` with masked scores set to ``-inf``, except on a
    fully masked row, where that would be ``0/0 = NaN``.
    """
    dtype = scores.dtype
    masked = np.where(allowed, scores, -np.inf)  # (..., T, S)
    row_max = masked.max(axis=-1, keepdims=True)  # (..., T, 1), -inf on a fully masked row
    row_max = np.where(np.isfinite(row_max), row_max, 0)
    e = np.exp(masked - row_max)  # exp(-inf) = 0 at masked keys
    denom = e.sum(axis=-1, keepdims=True)  # (..., T, 1), 0 on a fully masked row
    # A fully masked row: 0 / 1 = 0, so its weights, output and gradients are zero.
    return e / np.where(denom > 0, denom, 1).astype(dtype)


def scaled_dot_product_attention_backward(
    dout: np.ndarray, cache: AttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Backward of attention, the forward in reverse.

    Forward (per leading index): :math:`s = q k^T c`, :math:`w = \mathrm{softmax}(s)`
    (masked keys at :math:`-\infty`), :math:`a = w \odot m/(1-p)` (dropout),
    :math:`o = a v`.

    Backward:

    .. math::
        da = do\,v^T,\quad dv = a^T do,\quad
        dw = da \odot m/(1-p),\quad
        ds = w \odot (dw - \textstyle\sum_s dw\,w),\quad
        dq = c\,ds\,k,\quad dk = c\,ds^T q

    Masked keys have :math:`w = 0`, so :math:`ds = 0` there: no gradient reaches
    a key a query could not see. A fully masked row has :math:`w = 0`
    everywhere and contributes nothing.
    """
    q, k, v, weights = cache.q, cache.k, cache.v, cache.weights
    check_dout(dout, weights.shape[:-1] + v.shape[-1:], q.dtype)
    # in the forward pass this was: attn = dropout(weights); recompute attn from the mask
    keep = cache.dropout.keep
    attn = weights if keep is None else dropout_forward(weights, cache.dropout_p, mask=keep)[0]
    # out = attn @ v
    dattn = dout @ np.swapaxes(v, -1, -2)  # (..., T, S)
    dv = np.swapaxes(attn, -1, -2) @ dout  # (..., S, Dv)
    # attn = dropout(weights)
    dweights = dropout_backward(dattn, cache.dropout)  # (..., T, S)
    # weights = softmax(scores): the same Jacobian-vector product as softmax_backward;
    # masked keys have weight 0, so their score gradient is 0 too.
    dscores = softmax_backward(dweights, SoftmaxCache(y=weights, axis=-1))
    # scores = q @ k^T * scale
    dscores = dscores * q.dtype.type(cache.scale)  # (..., T, S)
    dq = dscores @ k  # (..., T, D)
    dk = np.swapaxes(dscores, -1, -2) @ q  # (..., S, D)
    return dq, dk, dv
