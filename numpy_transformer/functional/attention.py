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

Memory
------
The op makes one (..., T, S) array, the scores, and turns it in place into the probabilities,
which the cache keeps; with dropout the cache adds the bool keep-mask (1/8 of a float64 array),
not the dropped probabilities (recomputed from the two when needed). Where the array is large
(:data:`ROW_BLOCK_ELEMENTS`), the dropped probabilities and the backward's (..., T, S)
temporaries are formed for one block of query rows at a time (:func:`row_blocks`), so that
forward + backward peak at about 1.5 such arrays (``parity_tests/test_attention_memory.py``);
at training sizes there is one block and the numbers are those of the one-array formulas.
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
from .dropout import DropoutCache, draw_dropout_mask
from .intermediates import gradient_at, is_recording
from .masks import causal_mask


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

    # The (..., T, S) array is made once and then worked on in place: the scores become the
    # probabilities, which the cache keeps. Only what the backward needs stays alive (the
    # probabilities and, with dropout, a bool keep-mask); the dropped probabilities are formed
    # block by block of query rows where the array is large (``row_blocks``).
    scores = q @ np.swapaxes(k, -1, -2)  # (..., T, S)
    scores *= dtype.type(scale)  # in place: the same numbers as (q @ k^T) * scale
    weights = softmax_rows_in_place(scores, allowed)  # (..., T, S), the same array

    # Dropout on the weights (the identity when dropout_p == 0).
    if dropout_mask is not None:
        if not isinstance(dropout_mask, np.ndarray) or dropout_mask.dtype != np.bool_:
            raise TypeError("dropout_mask: expected a bool ndarray (True = keep)")
        check_shape("dropout_mask", dropout_mask, scores_shape)
    keep = None
    if dropout_p > 0:
        keep = draw_dropout_mask(scores_shape, dropout_p, rng) if dropout_mask is None else dropout_mask
    dropout_cache = DropoutCache(keep=keep, scale=1.0 / (1.0 - dropout_p), dtype=dtype, shape=scores_shape)

    # out = attn @ v with attn = dropout(weights)
    blocks = row_blocks(scores_shape)
    out = None if len(blocks) == 1 else np.empty(scores_shape[:-1] + v.shape[-1:], dtype=dtype)  # (..., T, Dv)
    for rows in blocks:
        out_rows = dropped_rows(weights, dropout_cache, rows) @ v  # (..., rows, Dv)
        if out is None:
            out = out_rows
        else:
            out[..., rows, :] = out_rows
    cache = AttentionCache(
        q=q, k=k, v=v, weights=weights, dropout=dropout_cache, dropout_p=dropout_p, scale=float(scale)
    )
    return out, cache


# Above this many elements a (..., T, S) temporary is formed block by block of query rows, in
# ROW_BLOCKS blocks, so that the forward and backward hold the probabilities, the keep-mask and
# about 2/8 of one more such array, not several whole ones. Below it (the usual training sizes)
# there is one block: the same products as without blocks, and no Python loop.
ROW_BLOCK_ELEMENTS = 2**18
ROW_BLOCKS = 8


def row_blocks(scores_shape: tuple[int, ...]) -> list[slice]:
    """Slices of the query axis T that split a (..., T, S) array into ROW_BLOCKS blocks of rows.

    One block (``slice(None)``) when the array has at most ROW_BLOCK_ELEMENTS elements, or while
    ``gradient_at`` is recording (so that each named step is recorded once, whole).
    """
    *lead, T, S = scores_shape
    if math.prod(lead) * T * S <= ROW_BLOCK_ELEMENTS or is_recording():
        return [slice(None)]
    rows = -(-T // ROW_BLOCKS)  # ceil(T / ROW_BLOCKS)
    return [slice(start, min(start + rows, T)) for start in range(0, T, rows)]


def dropped_rows(weights: np.ndarray, dropout: DropoutCache, rows: slice) -> np.ndarray:
    """``dropout(weights)[..., rows, :]``, a new array (or ``weights``' own rows when dropout is off)."""
    w = weights[..., rows, :]  # (..., rows, S)
    if dropout.keep is None:
        return w
    attn = w * dropout.keep[..., rows, :]  # the same two steps as dropout_forward: mask, then scale
    attn *= w.dtype.type(dropout.scale)
    return attn


def softmax_rows_in_place(scores: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Overwrite ``scores`` (..., T, S) with its softmax over the last axis and return it.

    ``allowed`` (bool, broadcastable to ``scores``, True = may attend) or None. The steps and the
    numbers are those of ``softmax_forward`` (no mask) and of :func:`masked_softmax`, written into
    the one array instead of a new one per step.
    """
    if allowed is not None:
        np.copyto(scores, -np.inf, where=~allowed)  # masked keys at -inf: exp gives them weight 0
    row_max = scores.max(axis=-1, keepdims=True)  # (..., T, 1), -inf on a fully masked row
    if allowed is not None:
        row_max = np.where(np.isfinite(row_max), row_max, 0)
    scores -= row_max
    np.exp(scores, out=scores)
    denom = scores.sum(axis=-1, keepdims=True)  # (..., T, 1), 0 on a fully masked row
    if allowed is None:
        scores /= denom
    else:  # a fully masked row: 0 / 1 = 0, so its weights, output and gradients are zero
        scores /= np.where(denom > 0, denom, 1).astype(scores.dtype)
    return scores


def masked_softmax(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, over the allowed keys only; a row with no allowed key gets all zeros.

    ``allowed`` is a bool array of ``scores``' shape (True = may attend). Its backward is
    ``softmax_backward`` with these weights: masked keys have weight 0 and get no gradient.

    Equal to ``softmax_forward`` with masked scores set to ``-inf``, except on a
    fully masked row, where that would be ``0/0 = NaN``.
    """
    return softmax_rows_in_place(np.array(scores, copy=True), np.broadcast_to(allowed, scores.shape))


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
    dtype, keep = q.dtype, cache.dropout.keep
    # Block by block of query rows (one block unless the (..., T, S) array is large, see
    # row_blocks): each row's score gradient needs only that row, so the temporaries are
    # (..., rows, S); dq gets its rows, dk and dv add up each block's share.
    blocks = row_blocks(weights.shape)
    dq = None if len(blocks) == 1 else np.empty_like(q)  # (..., T, D)
    dk = dv = None
    for rows in blocks:
        w, do = weights[..., rows, :], dout[..., rows, :]  # (..., rows, S), (..., rows, Dv)
        # in the forward pass this was: attn = dropout(weights); recompute attn from the mask
        attn = dropped_rows(weights, cache.dropout, rows)  # (..., rows, S)
        # out = attn @ v
        dattn = gradient_at("attn", do @ np.swapaxes(v, -1, -2))  # (..., rows, S)
        dv_rows = np.swapaxes(attn, -1, -2) @ do  # (..., S, Dv)
        # attn = dropout(weights): dweights = dattn * m / (1 - p), in place (dattn is not needed again)
        dweights = dattn
        if keep is not None:
            dweights *= keep[..., rows, :]  # the same two steps as dropout_backward
            dweights *= dtype.type(cache.dropout.scale)
        dweights = gradient_at("weights", dweights)  # (..., rows, S)
        # weights = softmax(scores): ds = w * (dw - sum_s dw w), the Jacobian-vector product of
        # softmax_backward written in place; masked keys have weight 0, so their score gradient is 0 too.
        # (dw * w goes into attn's buffer when attn is a temporary of its own: one array fewer.)
        rowdot = np.multiply(dweights, w, out=attn if keep is not None else None).sum(axis=-1, keepdims=True)
        dweights -= rowdot
        dweights *= w
        dscores = gradient_at("scores", dweights)  # (..., rows, S)
        # scores = q @ k^T * scale
        dscores *= dtype.type(cache.scale)
        dscores = gradient_at("qk", dscores)  # (..., rows, S) at q k^T, before the scale
        dq_rows = dscores @ k  # (..., rows, D)
        dk_rows = np.swapaxes(dscores, -1, -2) @ q[..., rows, :]  # (..., S, D)
        if dq is None:
            dq = dq_rows
        else:
            dq[..., rows, :] = dq_rows
        dk = dk_rows if dk is None else np.add(dk, dk_rows, out=dk)
        dv = dv_rows if dv is None else np.add(dv, dv_rows, out=dv)
    return dq, dk, dv
