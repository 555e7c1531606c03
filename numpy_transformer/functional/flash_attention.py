r"""Flash-style attention: the numbers of standard attention without ever holding a (T, S) array.

Shape legend: ``...`` leading dimensions (usually ``(B, H)``), ``T`` query length, ``S`` key
length, ``D`` query/key width, ``Dv`` value width, ``Bq`` / ``Bk`` the query / key block sizes.

Why tiles
---------
:func:`~numpy_transformer.functional.attention.scaled_dot_product_attention_forward` builds the
scores ``(..., T, S)``, their softmax, and keeps the probabilities for the backward: memory grows
as ``T * S``. FlashAttention (Dao et al., 2022; FlashAttention-2, Dao, 2023) computes the same
output one tile of ``Bq`` queries by ``Bk`` keys at a time and keeps, per query row, only two
numbers between tiles. The backward recomputes each tile's probabilities instead of storing them.
Memory grows as ``(T + S) * D`` plus one tile; the arithmetic is the same as the standard one
plus one more score product in the backward. On a GPU the point is to keep the tile in fast
on-chip memory; here the Python loop over tiles shows the algorithm itself, and every tile is
one matrix product over all leading dimensions at once.

The online softmax (forward)
----------------------------
Take one query row, its scaled scores :math:`s_1 .. s_S` split into key blocks
:math:`J_1, J_2, \dots`. After block :math:`j` we hold a running maximum, sum and output:

.. math::
    m_j = \max(m_{j-1}, \max_{s \in J_j} s), \qquad
    l_j = e^{m_{j-1} - m_j}\, l_{j-1} + \sum_{s \in J_j} e^{s - m_j}, \qquad
    a_j = e^{m_{j-1} - m_j}\, a_{j-1} + \sum_{s \in J_j} e^{s - m_j}\, v_s,

starting from :math:`m_0 = -\infty`, :math:`l_0 = 0`, :math:`a_0 = 0`. The invariant is
:math:`l_j = \sum_{s \in J_1 \cup \dots \cup J_j} e^{s - m_j}` and the same for :math:`a_j` with
:math:`v_s`. It holds by induction, and exactly: multiplying each term :math:`e^{s - m_{j-1}}`
of the old sum by :math:`e^{m_{j-1} - m_j}` gives :math:`e^{s - m_j}`, the term the new sum
needs. No approximation enters; the rescaling only moves the reference point of the
exponentials to the new maximum, so that none of them overflows (:math:`e^{s - m_j} \le 1`).
After the last block, :math:`o = a / l = \sum_s \mathrm{softmax}(s)_s v_s`, and the row's
log-sum-exp :math:`L = m + \log l` is all the backward needs of the softmax.

The backward, from the log-sum-exp
----------------------------------
With :math:`L_t` stored, the probabilities of any tile come back as :math:`P_{ts} = e^{s_{ts} - L_t}`
(one score product and one ``exp``). Then, as in the standard backward
(:math:`O = P V`, :math:`s = c\, Q K^T`),

.. math::
    dV = P^T dO, \qquad dP = dO\, V^T, \qquad dS = P \odot (dP - D), \qquad
    dQ = c\, dS\, K, \qquad dK = c\, dS^T Q,

where the softmax's Jacobian needs, per row, :math:`D_t = \sum_s P_{ts}\, dP_{ts}`. That sum
runs over *all* keys, which a tile does not see; but

.. math::
    D_t = \sum_s P_{ts}\, (dO_t \cdot v_s) = dO_t \cdot \sum_s P_{ts} v_s = dO_t \cdot O_t,

so :math:`D = \mathrm{rowsum}(dO \odot O)` is known before the loop from ``dout`` and ``out``
alone, a ``(..., T)`` vector. Every gradient of a tile then needs that tile only; ``dV`` and
``dK`` add up the contributions of every query block, ``dQ`` those of every key block.

Dropout on the probabilities
----------------------------
With attention dropout the output is :math:`O = \tilde P V`, :math:`\tilde P = P \odot M / (1 - p)`
for a bool keep-mask :math:`M` (the one the standard attention would use, given or drawn whole
before the loop, so that both kernels drop the same weights). The forward drops each tile's
unnormalised :math:`e^{s - m}` before its product with :math:`V`, and sums the *undropped* ones
into :math:`l`: dropout acts after the softmax, whose normalisation sees every key. The
backward recomputes :math:`P` from :math:`L`, forms :math:`\tilde P` with the tile of :math:`M`,
and goes back through the mask: :math:`dV = \tilde P^T dO`, :math:`d\tilde P = dO\, V^T`,
:math:`dP = d\tilde P \odot M / (1 - p)`, :math:`dS = P \odot (dP - D)`. The row term still needs
no (T, S) array:

.. math::
    D_t = \sum_s P_{ts}\, dP_{ts} = \sum_s P_{ts} \tfrac{M_{ts}}{1-p}\, d\tilde P_{ts}
        = \sum_s \tilde P_{ts}\, d\tilde P_{ts} = dO_t \cdot \sum_s \tilde P_{ts} v_s = dO_t \cdot O_t,

so :math:`D = \mathrm{rowsum}(dP \odot P) = \mathrm{rowsum}(d\tilde P \odot \tilde P) = \mathrm{rowsum}(dO \odot O)`,
because :math:`O` is computed from the *dropped* probabilities. The mask itself is the one
(..., T, S) array the cache then holds, as bools (an eighth of a float64 score array); a kernel on
a GPU would regenerate it tile by tile from the random generator's state instead.

Masks and the tiles that are skipped
------------------------------------
One convention, as in the standard attention: ``mask`` is bool, ``True`` = may attend,
broadcastable to ``(..., T, S)``. Inside a tile a masked score is :math:`-\infty`, so its
:math:`e^{s - m} = 0`: it adds nothing to :math:`l` or :math:`a` and gets no gradient.
A tile in which no pair may attend is never computed: with ``is_causal`` the tiles entirely
above the diagonal (key ``s > t`` for every pair; top-left aligned when ``T != S``), with a
sliding ``window`` also the tiles entirely behind it, and tiles where ``mask`` is all ``False``
(a block of padded keys). With a window, the keys a query block may see span ``Bq + window - 1``
positions, so at most ``ceil((Bq + window - 1) / Bk) + 1`` key blocks per query block remain:
time and memory grow as ``T * window``, not ``T * S``.

``window = W`` is causal local attention: query ``t`` may attend to key ``s`` when
``t - W < s <= t``, the last ``W`` positions, itself included (``W = 1``: only itself;
``W >= T``: plain causal). It is :func:`~numpy_transformer.functional.masks.sliding_window_mask`
as a boolean mask, and FlashAttention's ``window_size=(W - 1, 0)``. ``mask`` and ``is_causal``
combine with it (all apply).

Fully masked query rows
-----------------------
A row with no allowed key keeps :math:`m = -\infty`, :math:`l = 0`: its output is zero, as in the
standard attention. Its log-sum-exp, :math:`\log 0 = -\infty`, is stored as :math:`+\infty`
instead (FlashAttention-2 does the same): then the backward's :math:`e^{s - L} = 0` for every key
of the row, so the row gets zero probabilities and passes no gradient, with no ``0/0`` anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .attention import check_attention_inputs
from .checks import (
    check_bool,
    check_dout,
    check_dropout_p,
    check_positive_int,
    check_real,
    check_shape,
)
from .dropout import draw_dropout_mask
from .masks import causal_mask, sliding_window_mask

DEFAULT_BLOCK_SIZE = 128  # queries and keys per tile; large enough that Python's loop costs little next to BLAS

# The two attention kernels a module, or a model's config (``attention=``), may choose; the same numbers.
ATTENTION_KINDS = ("standard", "flash")


def check_attention_kind(attention: object, name: str = "attention") -> str:
    """``attention`` must be one of :data:`ATTENTION_KINDS`: ``"standard"`` (the (T, S) weights kept) or ``"flash"``."""
    if not isinstance(attention, str) or attention not in ATTENTION_KINDS:
        raise ValueError(f"{name}: expected one of {ATTENTION_KINDS}, got {attention!r}")
    return attention


@dataclass(frozen=True)
class FlashAttentionCache:
    """What the backward needs: the inputs, the output and one number per query row -- no (T, S) array.

    The probabilities are recomputed tile by tile from ``lse`` in the backward (and, only if
    asked for, all at once by :attr:`weights`).
    """

    q: np.ndarray  # (..., T, D)
    k: np.ndarray  # (..., S, D)
    v: np.ndarray  # (..., S, Dv)
    out: np.ndarray  # (..., T, Dv), for D = rowsum(dout * out)
    lse: np.ndarray  # (..., T) log-sum-exp of each row's scaled, allowed scores; +inf on a fully masked row
    mask: np.ndarray | None  # the caller's mask, a view with every axis (each of size 1, T or S), never expanded
    is_causal: bool
    window: int | None
    scale: float
    block_q: int  # Bq
    block_k: int  # Bk
    tiles: int  # tiles the forward computed, of ceil(T / Bq) * ceil(S / Bk); the backward computes the same
    dropout_keep: np.ndarray | None = None  # (..., T, S) bool keep-mask on the probabilities; None without dropout
    dropout_p: float = 0.0

    @property
    def weights(self) -> np.ndarray:
        """The (..., T, S) attention probabilities, recomputed from ``lse`` for inspection.

        This builds the very array the tiled kernel avoids; the backward never calls it. As
        ``AttentionCache.weights``: the probabilities before dropout.
        """
        q, k = self.q, self.k
        T, S = q.shape[-2], k.shape[-2]
        scores = (q @ np.swapaxes(k, -1, -2)) * q.dtype.type(self.scale)  # (..., T, S)
        allowed = _allowed_everywhere(self.mask, self.is_causal, self.window, T, S)
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        return np.exp(scores - self.lse[..., None])  # (..., T, S); 0 at masked keys and on fully masked rows


def _allowed_everywhere(
    mask: np.ndarray | None, is_causal: bool, window: int | None, T: int, S: int
) -> np.ndarray | None:
    """The whole (..., T, S)-broadcastable allowed pattern (for :attr:`FlashAttentionCache.weights` only)."""
    allowed = mask
    positional = None
    if window is not None:
        positional = sliding_window_mask(T, window, S)  # (T, S)
    elif is_causal:
        positional = causal_mask(T, S)  # (T, S)
    if positional is not None:
        allowed = positional if allowed is None else allowed & positional
    return allowed


def _block_sizes(block_size: object) -> tuple[int, int]:
    """An int (the same for queries and keys) or a pair ``(Bq, Bk)``, each >= 1."""
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2:
            raise ValueError(f"block_size: expected an int or a pair (block_q, block_k), got {block_size!r}")
        return check_positive_int("block_size[0]", block_size[0]), check_positive_int("block_size[1]", block_size[1])
    size = check_positive_int("block_size", block_size)
    return size, size


def _key_blocks(
    rows: tuple[int, int],
    S: int,
    block_k: int,
    mask: np.ndarray | None,
    is_causal: bool,
    window: int | None,
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """The key blocks ``(j0, j1, allowed)`` that query rows ``i0 .. i1 - 1`` may attend to at all.

    ``allowed`` is the tile's bool mask, broadcastable to (..., i1 - i0, j1 - j0), or None when
    every pair of the tile may attend. Key blocks keep their fixed grid ``0, Bk, 2 Bk, ...``;
    the forward and the backward visit exactly the same tiles.
    """
    i0, i1 = rows
    causal = is_causal or window is not None
    # By position query t may attend to keys lo(t) <= s < hi(t); the rows of the block together to keys [lo, hi).
    hi = min(S, i1) if causal else S  # hi(t) = t + 1 under causality
    lo = max(0, i0 - window + 1) if window is not None else 0  # lo(t) = t - window + 1
    t = np.arange(i0, i1)[:, None]  # (Bq, 1) query positions
    for j0 in range(lo - lo % block_k, hi, block_k):
        j1 = min(j0 + block_k, S)
        allowed = None
        # Positions: a partial tile (on the diagonal, or on the window's edge) needs its pattern.
        on_diagonal = causal and j1 - 1 > i0  # some key after some query
        on_window_edge = window is not None and j0 < i1 - window  # some key too far behind some query
        if on_diagonal or on_window_edge:
            s = np.arange(j0, j1)[None, :]  # (1, Bk) key positions
            allowed = s <= t  # (Bq, Bk)
            if window is not None:
                allowed &= s > t - window
        if mask is not None:
            # A size-1 axis of the mask broadcasts: slice only the axes that have T or S entries.
            tile_rows = slice(i0, i1) if mask.shape[-2] != 1 else slice(None)
            tile_keys = slice(j0, j1) if mask.shape[-1] != 1 else slice(None)
            given = mask[..., tile_rows, tile_keys]  # (..., Bq | 1, Bk | 1)
            allowed = given if allowed is None else given & allowed
        if allowed is not None and not allowed.any():
            continue  # nothing in this tile may attend: skip its products altogether
        yield j0, j1, allowed


def flash_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    window: int | None = None,
    dropout_p: float = 0.0,
    rng: np.random.Generator | None = None,
    dropout_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, FlashAttentionCache]:
    r"""Attention :math:`\mathrm{softmax}(q k^T \cdot \mathrm{scale} + \text{mask})\, v`, tile by tile.

    The output equals :func:`~numpy_transformer.functional.attention.scaled_dot_product_attention_forward`
    (with the same dropout mask) up to rounding; the online softmax of the module docstring computes it.

    Parameters
    ----------
    q : ndarray, shape (..., T, D)
    k : ndarray, shape (..., S, D)
    v : ndarray, shape (..., S, Dv)
        Identical leading dimensions; ``D >= 1``, ``S >= 1``; ``T``, ``Dv`` and leading sizes may be 0.
    mask : bool ndarray broadcastable to (..., T, S), optional
        ``True`` = this query may attend to this key. Used as given, a tile at a time.
    is_causal : bool
        Also block keys after the query, aligned at the top-left when ``T != S``; may be combined
        with ``mask``. Tiles entirely above the diagonal are skipped.
    scale : float, optional
        Defaults to :math:`1/\sqrt{D}`; otherwise a finite number > 0.
    block_size : int or (int, int)
        Queries and keys per tile, ``Bq`` and ``Bk`` (one int: both). Any sizes >= 1, dividing
        ``T`` and ``S`` or not (the last block is shorter); the numbers do not depend on them
        beyond rounding.
    window : int >= 1, optional
        Sliding-window (causal local) attention: query ``t`` attends to keys ``t - window < s <= t``
        (see :func:`~numpy_transformer.functional.masks.sliding_window_mask`). Implies causality;
        tiles outside the window are skipped.
    dropout_p : float in [0, 1)
        Dropout on the attention probabilities, as in the standard attention (applied whenever
        ``dropout_p > 0``; modules pass 0 in eval mode).
    rng : numpy.random.Generator, optional
        Draws the (..., T, S) keep-mask, the same way as the standard attention.
    dropout_mask : bool ndarray, shape (..., T, S), optional
        Explicit keep-mask (True = kept): the standard attention given the same mask gives the same numbers.

    Returns
    -------
    out : ndarray, shape (..., T, Dv)
    cache : FlashAttentionCache
        ``q, k, v, out`` and the row log-sum-exp ``lse`` (..., T).
    """
    dtype, scores_shape, D = check_attention_inputs(q, k, v, mask)  # the standard op's checks, word for word
    *lead, T, S = scores_shape
    if mask is not None:
        mask = mask.reshape((1,) * (len(scores_shape) - mask.ndim) + mask.shape)  # a view with every axis
    is_causal = check_bool("is_causal", is_causal)
    scale = 1.0 / math.sqrt(D) if scale is None else check_real("scale", scale, low=0, low_inclusive=False)
    block_q, block_k = _block_sizes(block_size)
    window = None if window is None else check_positive_int("window", window)
    dropout_p = check_dropout_p(dropout_p, "dropout_p")
    if dropout_mask is not None:
        if not isinstance(dropout_mask, np.ndarray) or dropout_mask.dtype != np.bool_:
            raise TypeError("dropout_mask: expected a bool ndarray (True = keep)")
        check_shape("dropout_mask", dropout_mask, scores_shape)
    keep = None  # (..., T, S) bool, or None without dropout
    if dropout_p > 0:
        keep = draw_dropout_mask(scores_shape, dropout_p, rng) if dropout_mask is None else dropout_mask
    drop_scale = dtype.type(1.0 / (1.0 - dropout_p))

    c = dtype.type(scale)
    out = np.empty((*lead, T, v.shape[-1]), dtype)  # (..., T, Dv)
    lse = np.empty((*lead, T), dtype)  # (..., T)
    tiles = 0
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        qi = q[..., i0:i1, :]  # (..., Bq, D)
        m = np.full((*lead, i1 - i0, 1), -np.inf, dtype)  # running maximum, (..., Bq, 1)
        l = np.zeros((*lead, i1 - i0, 1), dtype)  # running sum of exp(s - m), (..., Bq, 1)
        acc = np.zeros((*lead, i1 - i0, v.shape[-1]), dtype)  # running sum of exp(s - m) v, (..., Bq, Dv)
        for j0, j1, allowed in _key_blocks((i0, i1), S, block_k, mask, is_causal, window):
            s = (qi @ np.swapaxes(k[..., j0:j1, :], -1, -2)) * c  # (..., Bq, Bk)
            if allowed is not None:
                s = np.where(allowed, s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))  # (..., Bq, 1)
            # A row with no allowed key so far has m_new = -inf; shifting it by 0 keeps exp(-inf) = 0, not NaN.
            shift = np.where(np.isfinite(m_new), m_new, 0)  # (..., Bq, 1)
            p = np.exp(s - shift)  # (..., Bq, Bk), 0 at masked keys
            rescale = np.exp(m - shift)  # exp(m_old - m_new) <= 1; 0 while m_old = -inf
            l = rescale * l + p.sum(axis=-1, keepdims=True)  # the softmax's sum: every key, dropped or not
            if keep is not None:  # dropout on the probabilities, applied to their numerators e^(s - m)
                p = p * keep[..., i0:i1, j0:j1]
                p *= drop_scale
            acc = rescale * acc + p @ v[..., j0:j1, :]  # (..., Bq, Dv)
            m = m_new
            tiles += 1
        seen = l > 0  # (..., Bq, 1), False on a fully masked row
        out[..., i0:i1, :] = acc / np.where(seen, l, 1)  # a fully masked row: 0 / 1 = 0
        lse[..., i0:i1] = np.where(seen, m + np.log(np.where(seen, l, 1)), np.inf)[..., 0]
    cache = FlashAttentionCache(
        q=q,
        k=k,
        v=v,
        out=out,
        lse=lse,
        mask=mask,
        is_causal=is_causal,
        window=window,
        scale=float(scale),
        block_q=block_q,
        block_k=block_k,
        tiles=tiles,
        dropout_keep=keep,
        dropout_p=dropout_p,
    )
    return out, cache


def flash_attention_backward(dout: np.ndarray, cache: FlashAttentionCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Backward of flash attention: each tile's probabilities recomputed from the log-sum-exp.

    Forward (per leading index): :math:`s = c\, q k^T` (masked keys at :math:`-\infty`),
    :math:`P = \mathrm{softmax}(s)`, :math:`\tilde P = P \odot M / (1 - p)` (dropout; :math:`\tilde P = P`
    without), :math:`o = \tilde P v`, with :math:`L = \log \sum_s e^{s}` per row.

    Backward, per tile of rows :math:`i` and keys :math:`j`, with :math:`D = \mathrm{rowsum}(do \odot o)`
    (equal to :math:`\mathrm{rowsum}(dP \odot P)`, dropout or not: see the module docstring):

    .. math::
        P_{ij} = e^{s_{ij} - L_i},\quad
        dv_j \mathrel{+}= \tilde P_{ij}^T do_i,\quad
        dP_{ij} = (do_i v_j^T) \odot M_{ij} / (1 - p),\quad
        ds_{ij} = P_{ij} \odot (dP_{ij} - D_i),\quad
        dq_i \mathrel{+}= c\, ds_{ij} k_j,\quad
        dk_j \mathrel{+}= c\, ds_{ij}^T q_i

    Masked keys and skipped tiles have :math:`P = 0`, so no gradient reaches a key a query
    could not see; a fully masked row has :math:`L = +\infty`, hence :math:`P = 0` and zero gradients.
    """
    q, k, v, out, lse = cache.q, cache.k, cache.v, cache.out, cache.lse
    check_dout(dout, out.shape, q.dtype)
    T, S = q.shape[-2], k.shape[-2]
    c = q.dtype.type(cache.scale)
    keep, drop_scale = cache.dropout_keep, q.dtype.type(1.0 / (1.0 - cache.dropout_p))
    # D = rowsum(dP * P) = rowsum(dout * out): the softmax's row term, known before any tile
    row_dot = (dout * out).sum(axis=-1, keepdims=True)  # (..., T, 1)
    dq = np.zeros_like(q)  # (..., T, D)
    dk = np.zeros_like(k)  # (..., S, D)
    dv = np.zeros_like(v)  # (..., S, Dv)
    for i0 in range(0, T, cache.block_q):
        i1 = min(i0 + cache.block_q, T)
        qi, doi = q[..., i0:i1, :], dout[..., i0:i1, :]  # (..., Bq, D), (..., Bq, Dv)
        lse_i, d_i = lse[..., i0:i1, None], row_dot[..., i0:i1, :]  # (..., Bq, 1) each
        for j0, j1, allowed in _key_blocks((i0, i1), S, cache.block_k, cache.mask, cache.is_causal, cache.window):
            kj, vj = k[..., j0:j1, :], v[..., j0:j1, :]  # (..., Bk, D), (..., Bk, Dv)
            # in the forward pass this was: s = q k^T c, masked; P = exp(s - L) recomputes the softmax
            s = (qi @ np.swapaxes(kj, -1, -2)) * c  # (..., Bq, Bk)
            if allowed is not None:
                s = np.where(allowed, s, -np.inf)
            p = np.exp(s - lse_i)  # (..., Bq, Bk); 0 at masked keys and on fully masked rows (L = +inf)
            # P~ = dropout(P) with the forward's mask (P~ = P without dropout)
            keep_ij = None if keep is None else keep[..., i0:i1, j0:j1]  # (..., Bq, Bk)
            p_kept = p if keep_ij is None else p * keep_ij * drop_scale
            # out = P~ v
            dv[..., j0:j1, :] += np.swapaxes(p_kept, -1, -2) @ doi  # (..., Bk, Dv)
            dp = doi @ np.swapaxes(vj, -1, -2)  # (..., Bq, Bk) gradient at P~
            if keep_ij is not None:  # P~ = P * M / (1 - p): back through the mask to the gradient at P
                dp *= keep_ij
                dp *= drop_scale
            # P = softmax(s): ds = P * (dP - rowsum(dP * P)), the row sum being D
            ds = p * (dp - d_i)  # (..., Bq, Bk)
            # s = q k^T * c
            ds = ds * c
            dq[..., i0:i1, :] += ds @ kj  # (..., Bq, D)
            dk[..., j0:j1, :] += np.swapaxes(ds, -1, -2) @ qi  # (..., Bk, D)
    return dq, dk, dv
