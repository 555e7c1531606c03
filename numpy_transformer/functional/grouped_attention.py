r"""Grouped-query attention (GQA): query heads in groups, each group sharing one key/value head.

Shape legend: ``B`` batch, ``H`` query heads, ``Hkv`` key/value heads (a divisor of ``H``),
``G = H // Hkv`` query heads per group, ``T`` query length, ``S`` key length, ``D`` query/key
width, ``Dv`` value width.

Why groups
----------
In multi-head attention every query head has its own keys and values. During generation those
are what a key/value cache stores, ``2 * H * D`` numbers per position and layer, and at long
contexts the cache, not the weights, fills the memory. GQA (Ainslie et al., 2023) keeps ``H``
query heads but only ``Hkv`` key/value heads: query head ``h`` reads key/value head ``h // G``,
so heads ``0 .. G-1`` share head 0, heads ``G .. 2G-1`` head 1, and so on (the order of
``torch.repeat_interleave(k, G, dim=1)`` and of Hugging Face's ``repeat_kv``). The cache shrinks
by ``G``. ``Hkv == H`` (G = 1) is ordinary multi-head attention; ``Hkv == 1`` is multi-query
attention (Shazeer, 2019), one key/value head for all.

How it is computed here
-----------------------
No key or value is copied: the queries are viewed as (B, Hkv, G, T, D) and each key/value head
as (B, Hkv, 1, S, D) broadcast over its group (``np.broadcast_to``, a view), then
:func:`~numpy_transformer.functional.attention.scaled_dot_product_attention_forward` runs with
leading dimensions (B, Hkv, G). Its backward returns one key gradient per *query* head,
(B, Hkv, G, S, D); a key head was read by all ``G`` heads of its group, so its gradient is the
sum of theirs, over the group axis. The same holds for values.

Flash attention, natively
-------------------------
``attention="flash"`` runs :func:`~numpy_transformer.functional.flash_attention.flash_attention_forward`
on the very same (B, Hkv, G) views: the tiled kernel slices the broadcast key/value heads tile by
tile, so nothing is repeated in the forward either, and no (T, S) array is ever built. Its
backward returns per-query-head key/value gradients, summed over the group as above. The
numbers are the standard ones up to rounding (``parity_tests/test_attention_option.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attention import AttentionCache, scaled_dot_product_attention_backward, scaled_dot_product_attention_forward
from .checks import check_broadcastable, check_dout, check_float_array, check_same_dtype
from .flash_attention import (
    FlashAttentionCache,
    check_attention_kind,
    flash_attention_backward,
    flash_attention_forward,
)


@dataclass(frozen=True)
class GroupedQueryAttentionCache:
    attention: AttentionCache | FlashAttentionCache  # over (B, Hkv, G, ...): q (.., T, D), k, v broadcast views
    n_heads: int  # H
    n_kv_heads: int  # Hkv

    @property
    def weights(self) -> np.ndarray:
        """Attention probabilities per query head, (B, H, T, S)."""
        w = self.attention.weights  # (B, Hkv, G, T, S)
        return w.reshape(w.shape[0], self.n_heads, *w.shape[3:])


def grouped_query_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    attention: str = "standard",
) -> tuple[np.ndarray, GroupedQueryAttentionCache]:
    r"""Attention of ``H`` query heads over ``Hkv`` shared key/value heads.

    For query head :math:`h` and its key/value head :math:`j = \lfloor h / G \rfloor`:
    :math:`o_h = \mathrm{softmax}(q_h k_j^T \cdot \mathrm{scale} + \text{mask})\, v_j`.

    Parameters
    ----------
    q : ndarray, shape (B, H, T, D)
    k : ndarray, shape (B, Hkv, S, D)
    v : ndarray, shape (B, Hkv, S, Dv)
        ``Hkv`` divides ``H``; ``D >= 1``, ``S >= 1``.
    mask : bool ndarray broadcastable to (B, H, T, S), optional
        ``True`` = this query may attend to this key (the package's one convention).
    is_causal : bool
        Also block keys after the query (top-left aligned when ``T != S``).
    scale : float, optional
        Defaults to :math:`1/\sqrt{D}`.
    attention : {"standard", "flash"}
        The kernel over the (B, Hkv, G) views: the standard attention (keeps the weights) or the
        tiled flash attention (keeps one log-sum-exp per row); the same numbers.

    Returns
    -------
    out : ndarray, shape (B, H, T, Dv)
    cache : GroupedQueryAttentionCache
        ``cache.weights``: (B, H, T, S).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float_array(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name}: expected 4 dimensions (B, heads, length, width), got shape {x.shape}")
    check_same_dtype(q=q, k=k, v=v)
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k: expected shape ({B}, Hkv, S, {D}) to match q {q.shape}, got {k.shape}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"k: expected a number of key/value heads dividing H={H} (q {q.shape}), got shape {k.shape}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v: expected shape {k.shape[:3] + ('Dv',)} to match k {k.shape}, got {v.shape}")
    G = H // Hkv
    attention = check_attention_kind(attention)
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            raise TypeError(
                f"mask: expected a bool ndarray (True = may attend), got {getattr(mask, 'dtype', type(mask).__name__)}"
            )
        check_broadcastable("mask", mask, (B, H, T, S))
        mask = _grouped_mask(mask, Hkv, G)  # broadcastable to (B, Hkv, G, T, S)

    q5 = q.reshape(B, Hkv, G, T, D)  # query head h = j * G + g
    k5 = np.broadcast_to(k[:, :, None], (B, Hkv, G, S, D))  # a view: key head j for every g
    v5 = np.broadcast_to(v[:, :, None], (B, Hkv, G, S, v.shape[3]))
    kernel = flash_attention_forward if attention == "flash" else scaled_dot_product_attention_forward
    out5, c_att = kernel(q5, k5, v5, mask=mask, is_causal=is_causal, scale=scale)  # (B, Hkv, G, T, Dv)
    out = out5.reshape(B, H, T, v.shape[3])  # (B, H, T, Dv)
    return out, GroupedQueryAttentionCache(attention=c_att, n_heads=H, n_kv_heads=Hkv)


def _grouped_mask(mask: np.ndarray, Hkv: int, G: int) -> np.ndarray:
    """A mask broadcastable to (B, H, T, S) as one broadcastable to (B, Hkv, G, T, S), without copying."""
    m = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # (b, h, t, s), each 1 or full
    if m.shape[1] == 1:
        return m[:, :, None]  # (b, 1, 1, t, s): the same for every head
    return m.reshape(m.shape[0], Hkv, G, *m.shape[2:])  # (b, Hkv, G, t, s)


def grouped_query_attention_backward(
    dout: np.ndarray, cache: GroupedQueryAttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Return ``(dq, dk, dv)`` of shapes (B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, Dv).

    Per query head :math:`h` this is ordinary attention's backward (see
    ``scaled_dot_product_attention_backward``). A key/value head :math:`j` was read by the
    :math:`G` query heads of its group, so its gradient is the sum of theirs:

    .. math:: dk_j = \sum_{g=0}^{G-1} dk^{(jG + g)},\qquad dv_j = \sum_{g=0}^{G-1} dv^{(jG + g)}

    where :math:`dk^{(h)}` is the key gradient that query head :math:`h`'s attention alone
    would give. With :math:`G = 1` the sums have one term: multi-head attention.
    """
    a = cache.attention
    B, Hkv, G, T, _ = a.q.shape
    Dv = a.v.shape[-1]
    check_dout(dout, (B, cache.n_heads, T, Dv), a.q.dtype)
    # out5 = attention(q5, k5, v5) with k5, v5 key/value head j broadcast over its group
    kernel_backward = (
        flash_attention_backward if isinstance(a, FlashAttentionCache) else scaled_dot_product_attention_backward
    )  # the backward of the kernel that made the cache
    dq5, dk5, dv5 = kernel_backward(dout.reshape(B, Hkv, G, T, Dv), a)
    dq = dq5.reshape(B, cache.n_heads, T, -1)  # (B, H, T, D)
    dk = dk5.sum(axis=2)  # (B, Hkv, S, D): the group's gradients, summed into the shared head
    dv = dv5.sum(axis=2)  # (B, Hkv, S, Dv)
    return dq, dk, dv
