"""Twin of ``numpy_transformer.modules.kv_cache``: the key/value cache and a decoder layer on new positions.

Shape legend: ``B`` rows, ``L`` new positions, ``N`` capacity, ``S`` source length,
``C`` d_model, ``H`` heads, ``D = C // H``. Forward only, in eval mode, under
``torch.no_grad`` (the caller's); the NumPy module's docstring says why it is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import functional as TF
from .modules import MultiHeadAttention
from .transformer_layers import DecoderLayer

__all__ = ["DecoderLayerKV", "KVCache", "cached_attention", "cached_decoder_layer", "merge_heads", "split_heads"]


def split_heads(mha: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, H, L, D), as ``MultiHeadAttention.forward`` splits."""
    B, L, _ = x.shape
    return x.view(B, L, mha.n_heads, mha.head_dim).transpose(1, 2)  # (B, H, L, D)


def merge_heads(heads: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, C)."""
    B, H, L, D = heads.shape
    return heads.transpose(1, 2).reshape(B, L, H * D)  # (B, L, C)


@dataclass(frozen=True)
class KVCache:
    """The keys and values of one attention layer at positions ``0 .. length - 1`` (buffers written in place)."""

    keys: torch.Tensor  # (B, H, N, D) k_proj of positions 0 .. length - 1, split into heads
    values: torch.Tensor  # (B, H, N, D)
    length: int  # positions filled

    @classmethod
    def empty(cls, mha: MultiHeadAttention, batch_size: int, capacity: int) -> KVCache:
        """Zeroed buffers for ``capacity`` positions, on ``mha``'s device and in its dtype."""
        w = mha.q_proj.weight
        shape = (batch_size, mha.n_heads, capacity, mha.head_dim)  # (B, H, N, D)
        return cls(
            keys=torch.zeros(shape, dtype=w.dtype, device=w.device),
            values=torch.zeros(shape, dtype=w.dtype, device=w.device),
            length=0,
        )

    @classmethod
    def of(cls, mha: MultiHeadAttention, x: torch.Tensor) -> KVCache:
        """The keys and values of every position of ``x`` (B, S, C): a cross-attention's memory."""
        return cls(keys=split_heads(mha, mha.k_proj(x)), values=split_heads(mha, mha.v_proj(x)), length=x.shape[1])

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> KVCache:
        """Store ``keys``, ``values`` (B, H, L, D) at positions ``length .. length + L - 1``."""
        t0, t1 = self.length, self.length + keys.shape[2]
        if t1 > self.capacity:
            raise ValueError(f"keys: {keys.shape[2]} more position(s) after {t0} exceed the capacity {self.capacity}")
        self.keys[:, :, t0:t1] = keys
        self.values[:, :, t0:t1] = values
        return replace(self, length=t1)

    def reorder(self, rows: torch.Tensor) -> None:
        """In place: row ``i`` becomes a copy of old row ``rows[i]`` (int tensor (B,) on the cache's device)."""
        t = self.length
        self.keys[:, :, :t] = self.keys[rows, :, :t]  # (B, H, t, D); the right side is a copy
        self.values[:, :, :t] = self.values[rows, :, :t]


def cached_attention(
    mha: MultiHeadAttention, x: torch.Tensor, cache: KVCache, mask: torch.Tensor | None, *, append: bool
) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
    """``mha`` for the new positions ``x`` (B, L, C) against the cache -> (B, L, C), weights (B, H, L, K), cache."""
    q = split_heads(mha, mha.q_proj(x))  # (B, H, L, D)
    if append:
        cache = cache.append(split_heads(mha, mha.k_proj(x)), split_heads(mha, mha.v_proj(x)))
    n = cache.length
    heads, weights = TF.scaled_dot_product_attention(
        q, cache.keys[:, :, :n], cache.values[:, :, :n], mask=mask, return_weights=True
    )  # (B, H, L, D), (B, H, L, K)
    return mha.out_proj(merge_heads(heads)), weights, cache


@dataclass(frozen=True)
class DecoderLayerKV:
    """One decoder layer's two caches."""

    self_attn: KVCache  # (B, H, N, D) the target positions fed so far
    cross_attn: KVCache  # (B, H, S, D) the memory's keys and values, computed once

    @classmethod
    def start(cls, layer: DecoderLayer, memory: torch.Tensor, capacity: int) -> DecoderLayerKV:
        return cls(
            self_attn=KVCache.empty(layer.self_attn, memory.shape[0], capacity),
            cross_attn=KVCache.of(layer.cross_attn, memory),
        )

    def reorder(self, rows: torch.Tensor) -> None:
        self.self_attn.reorder(rows)
        self.cross_attn.reorder(rows)


def cached_decoder_layer(
    layer: DecoderLayer, x: torch.Tensor, cache: DecoderLayerKV, self_mask: torch.Tensor, memory_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, DecoderLayerKV]:
    """``DecoderLayer.forward`` (eval mode) for the new positions ``x`` (B, L, C) -> (B, L, C), weights (B, H, L, S)."""
    sa, ca = cache.self_attn, cache.cross_attn
    if layer.norm_first:
        a, _, sa = cached_attention(layer.self_attn, layer.norm1(x), sa, self_mask, append=True)
        h1 = x + a  # (B, L, C)
        b, weights, _ = cached_attention(layer.cross_attn, layer.norm2(h1), ca, memory_mask, append=False)
        h2 = h1 + b
        y = h2 + layer.ff(layer.norm3(h2))
    else:
        a, _, sa = cached_attention(layer.self_attn, x, sa, self_mask, append=True)
        h1 = layer.norm1(x + a)  # (B, L, C)
        b, weights, _ = cached_attention(layer.cross_attn, h1, ca, memory_mask, append=False)
        h2 = layer.norm2(h1 + b)
        y = layer.norm3(h2 + layer.ff(h2))
    return y, weights, DecoderLayerKV(self_attn=sa, cross_attn=ca)
