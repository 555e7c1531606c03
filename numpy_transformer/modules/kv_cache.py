r"""The key/value cache: what an attention layer keeps between decoding steps, and the layers run on new positions.

Shape legend: ``B`` rows (batch, or batch × beams), ``L`` new positions fed at once,
``N`` the cache's capacity, ``S`` source length, ``C`` d_model, ``H`` heads, ``D = C // H``.

Why a cache, and why it is exact
--------------------------------
In a causal stack (the GPT's encoder layers under a causal mask, the encoder–decoder's
decoder) position ``t`` reads positions ``0..t`` through self-attention and nothing else:
every other operation (LayerNorm, projections, feed-forward, the head) works on one position
at a time. So the key and value that position ``s`` contributes to a layer depend on the
tokens ``0..s`` only, and they do not change when tokens are appended. :class:`KVCache`
keeps them, pre-allocated, and :func:`cached_attention` runs a layer's
:class:`~numpy_transformer.modules.attention.MultiHeadAttention` for the new positions only:
their queries against every stored key. Step ``t`` costs ``O(t)`` instead of the ``O(t^2)``
attention and ``O(t)`` projections of re-running the prefix, and gives the same numbers —
the same operations on the same inputs; only rounding can differ, because a product over
one row and one over ``t`` rows may add in a different order (~1e-16 relative in float64).

A cross-attention's keys and values are those of the encoder output: computed once
(:meth:`KVCache.of`), never appended to.

Who uses it: ``inference.steppers.IncrementalDecoder`` (the encoder–decoder:
:func:`cached_decoder_layer`, a growing self-attention cache and a fixed cross-attention
one per layer) and ``inference.sampling.GPTKVCache`` (the GPT: :func:`cached_encoder_layer`).
Every function here is forward only, for a model in eval mode (no dropout).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..functional.attention import scaled_dot_product_attention_forward
from ..functional.checks import check_int_array
from .attention import MultiHeadAttention
from .transformer_layers import DecoderLayer, EncoderLayer

__all__ = [
    "DecoderLayerKV",
    "KVCache",
    "cached_attention",
    "cached_decoder_layer",
    "cached_encoder_layer",
    "check_rows",
]


def check_rows(rows: object, batch_size: int) -> np.ndarray:
    """``rows``: an int array of shape (B,), entries in ``[0, B)`` (repeats allowed), as a reorder takes."""
    rows = check_int_array("rows", rows)
    if rows.shape != (batch_size,):
        raise ValueError(f"rows: expected shape ({batch_size},), got {rows.shape}")
    if rows.min() < 0 or rows.max() >= batch_size:
        raise ValueError(f"rows: expected entries in [0, {batch_size}), got range [{rows.min()}, {rows.max()}]")
    return rows


@dataclass(frozen=True)
class KVCache:
    """The keys and values of one attention layer at positions ``0 .. length - 1``.

    The buffers are allocated once and written in place: :meth:`append` stores new
    positions and returns the cache with the longer ``length`` (the same buffers);
    :meth:`reorder` rewrites rows. Only ``keys[:, :, :length]`` holds data.
    """

    keys: np.ndarray  # (B, H, N, D) k_proj of positions 0 .. length - 1, split into heads
    values: np.ndarray  # (B, H, N, D) v_proj of the same positions
    length: int  # positions filled

    @classmethod
    def empty(cls, mha: MultiHeadAttention, batch_size: int, capacity: int) -> KVCache:
        """Zeroed buffers for ``capacity`` positions of ``mha``'s heads, in its dtype; nothing filled."""
        shape = (batch_size, mha.n_heads, capacity, mha.head_dim)  # (B, H, N, D)
        return cls(keys=np.zeros(shape, mha.dtype), values=np.zeros(shape, mha.dtype), length=0)

    @classmethod
    def of(cls, mha: MultiHeadAttention, x: np.ndarray) -> KVCache:
        """The keys and values of every position of ``x`` (B, S, C), full: a cross-attention's memory."""
        keys, _ = mha.k_proj.forward(x)  # (B, S, C)
        values, _ = mha.v_proj.forward(x)  # (B, S, C)
        return cls(keys=mha.split_heads(keys), values=mha.split_heads(values), length=x.shape[1])  # (B, H, S, D)

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def append(self, keys: np.ndarray, values: np.ndarray) -> KVCache:
        """Store ``keys``, ``values`` (B, H, L, D) at positions ``length .. length + L - 1``."""
        t0, t1 = self.length, self.length + keys.shape[2]
        if t1 > self.capacity:
            raise ValueError(f"keys: {keys.shape[2]} more position(s) after {t0} exceed the capacity {self.capacity}")
        self.keys[:, :, t0:t1] = keys
        self.values[:, :, t0:t1] = values
        return replace(self, length=t1)

    def reorder(self, rows: np.ndarray) -> None:
        """In place: row ``i`` becomes a copy of old row ``rows[i]`` (``rows`` (B,), repeats allowed)."""
        rows = check_rows(rows, self.batch_size)
        t = self.length
        self.keys[:, :, :t] = self.keys[rows, :, :t]  # (B, H, t, D); the right side is a copy
        self.values[:, :, :t] = self.values[rows, :, :t]


def cached_attention(
    mha: MultiHeadAttention, x: np.ndarray, cache: KVCache, mask: np.ndarray | None, *, append: bool
) -> tuple[np.ndarray, np.ndarray, KVCache]:
    """``mha.forward`` (eval mode) for the new positions ``x`` (B, L, C) only, against the cache.

    ``append=True`` (self-attention): ``x``'s own keys and values are stored first, at
    ``cache.length ..``, and its queries attend over every stored position. ``append=False``
    (cross-attention): the queries attend over the cache as it is. ``mask`` (True = may
    attend) must broadcast to (B, H, L, K), ``K`` the stored positions after the append.

    Returns the output (B, L, C), the attention weights (B, H, L, K) and the cache.
    """
    q, _ = mha.q_proj.forward(x)  # (B, L, C)
    if append:
        k, _ = mha.k_proj.forward(x)  # (B, L, C)
        v, _ = mha.v_proj.forward(x)
        cache = cache.append(mha.split_heads(k), mha.split_heads(v))  # (B, H, L, D) each
    n = cache.length
    heads, attention = scaled_dot_product_attention_forward(
        mha.split_heads(q),  # (B, H, L, D)
        cache.keys[:, :, :n],  # (B, H, K, D)
        cache.values[:, :, :n],
        mask=mask,
    )  # (B, H, L, D)
    out, _ = mha.out_proj.forward(mha.merge_heads(heads))  # (B, L, C)
    return out, attention.weights, cache


def cached_encoder_layer(
    layer: EncoderLayer, x: np.ndarray, cache: KVCache, mask: np.ndarray | None
) -> tuple[np.ndarray, KVCache]:
    """:meth:`EncoderLayer.forward` (eval mode) for the new positions ``x`` (B, L, C) -> (B, L, C) and the cache.

    ``mask`` broadcastable to (B, H, L, K): the rows of the layer's mask for the new queries.
    """
    if layer.norm_first:
        n1, _ = layer.norm1.forward(x)
        a, _, cache = cached_attention(layer.self_attn, n1, cache, mask, append=True)
        h = x + a  # (B, L, C)
        n2, _ = layer.norm2.forward(h)
        f, _ = layer.ff.forward(n2)
        return h + f, cache
    a, _, cache = cached_attention(layer.self_attn, x, cache, mask, append=True)
    h, _ = layer.norm1.forward(x + a)  # (B, L, C)
    f, _ = layer.ff.forward(h)
    y, _ = layer.norm2.forward(h + f)
    return y, cache


@dataclass(frozen=True)
class DecoderLayerKV:
    """One decoder layer's two caches."""

    self_attn: KVCache  # (B, H, N, D) the target positions fed so far
    cross_attn: KVCache  # (B, H, S, D) the memory's keys and values, computed once

    @classmethod
    def start(cls, layer: DecoderLayer, memory: np.ndarray, capacity: int) -> DecoderLayerKV:
        """An empty self-attention cache for ``capacity`` positions; the cross-attention one of ``memory`` (B, S, C)."""
        return cls(
            self_attn=KVCache.empty(layer.self_attn, memory.shape[0], capacity),
            cross_attn=KVCache.of(layer.cross_attn, memory),
        )

    def reorder(self, rows: np.ndarray) -> None:
        """In place, both caches: row ``i`` becomes a copy of old row ``rows[i]``."""
        self.self_attn.reorder(rows)
        self.cross_attn.reorder(rows)


def cached_decoder_layer(
    layer: DecoderLayer, x: np.ndarray, cache: DecoderLayerKV, self_mask: np.ndarray, memory_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, DecoderLayerKV]:
    """:meth:`DecoderLayer.forward` (eval mode) for the new positions ``x`` (B, L, C) only.

    ``self_mask`` broadcastable to (B, H, L, K) (the target mask's rows for the new queries),
    ``memory_mask`` to (B, H, L, S). Returns (B, L, C), the cross-attention weights
    (B, H, L, S) and the caches.
    """
    sa, ca = cache.self_attn, cache.cross_attn
    if layer.norm_first:
        n1, _ = layer.norm1.forward(x)
        a, _, sa = cached_attention(layer.self_attn, n1, sa, self_mask, append=True)
        h1 = x + a  # (B, L, C)
        n2, _ = layer.norm2.forward(h1)
        b, weights, _ = cached_attention(layer.cross_attn, n2, ca, memory_mask, append=False)
        h2 = h1 + b
        n3, _ = layer.norm3.forward(h2)
        f, _ = layer.ff.forward(n3)
        y = h2 + f
    else:
        a, _, sa = cached_attention(layer.self_attn, x, sa, self_mask, append=True)
        h1, _ = layer.norm1.forward(x + a)  # (B, L, C)
        b, weights, _ = cached_attention(layer.cross_attn, h1, ca, memory_mask, append=False)
        h2, _ = layer.norm2.forward(h1 + b)
        f, _ = layer.ff.forward(h2)
        y, _ = layer.norm3.forward(h2 + f)
    return y, weights, DecoderLayerKV(self_attn=sa, cross_attn=ca)
