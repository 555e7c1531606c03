r"""The blocks of a Llama-style decoder: RMSNorm, SwiGLU feed-forward, rotary grouped-query attention, the layer.

Shape legend: ``B`` batch, ``T`` query length, ``S`` key length, ``L`` new positions fed at
once, ``N`` a key/value cache's capacity, ``C`` d_model, ``H`` query heads, ``Hkv`` key/value
heads, ``G = H // Hkv``, ``D = C // H`` head width, ``F`` feed-forward width.

One decoder layer, pre-norm as in Llama (no biases, no dropout)::

    h = x + out_proj(GQA(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),   n1 = norm1(x)
    y = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                      n2 = norm2(h)

Against the GPT's pre-LN block (``transformer_layers.EncoderLayer(norm_first=True)``) four
things change: RMSNorm for LayerNorm, rotary positions inside attention instead of a learned
table added to the embeddings, a gated (SwiGLU) feed-forward for GELU's, and ``Hkv <= H``
key/value heads. Names follow the package (``self_attn.q_proj``, ``out_proj``, ``norm1``, ``ff``);
``models.llama.hf_llama_key_map`` maps them to Hugging Face's.

:func:`cached_llama_layer` runs a layer on new positions only, against a
:class:`~numpy_transformer.modules.kv_cache.KVCache` whose buffers hold ``Hkv`` heads: the
keys are stored already rotated (by their own absolute position), so they never change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.checks import (
    check_float_array,
    check_int_array,
    check_positive_float,
    check_positive_int,
    check_rng,
)
from ..functional.flash_attention import check_attention_kind
from ..functional.grouped_attention import (
    GroupedQueryAttentionCache,
    grouped_query_attention_backward,
    grouped_query_attention_forward,
)
from ..functional.intermediates import gradient_at
from ..functional.linear import LinearCache
from ..functional.rms_norm import RMSNormCache, rms_norm_backward, rms_norm_forward
from ..functional.rotary import RotaryCache, check_rope_layout, rotary_embedding_backward, rotary_embedding_forward
from ..functional.swiglu import SwiGLUCache, swiglu_backward, swiglu_forward
from .base import Module, check_module_dtype
from .kv_cache import KVCache
from .layers import Linear

__all__ = [
    "LlamaAttention",
    "LlamaAttentionCache",
    "LlamaDecoderLayer",
    "LlamaDecoderLayerCache",
    "RMSNorm",
    "SwiGLUFeedForward",
    "SwiGLUFeedForwardCache",
    "cached_llama_layer",
]


def normal_init(module: Linear, rng: np.random.Generator, std: float) -> None:
    """Redraw a Linear's weight from N(0, std^2) and zero its bias: Hugging Face's Llama initialisation."""
    module.weight[...] = rng.normal(0.0, std, module.weight.shape)
    if module.bias is not None:
        module.bias[...] = 0


class RMSNorm(Module):
    """RMSNorm over the last dimension, ``weight`` ones at init (as ``torch.nn.RMSNorm``; no bias).

    ``eps`` defaults to Llama's ``1e-6``; ``torch.nn.RMSNorm``'s default (``None``) is the
    dtype's machine epsilon instead (``functional/rms_norm.py``).
    """

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-6,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        """``rng`` is accepted like every module's, and unused: the initial weight is fixed (ones)."""
        super().__init__()
        self.normalized_shape = check_positive_int("normalized_shape", normalized_shape)
        self.eps = check_positive_float("eps", eps)
        self.dtype = check_module_dtype(dtype)
        self._init_parameters(weight=np.ones(normalized_shape, self.dtype))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, RMSNormCache]:
        return rms_norm_forward(x, self.weight, self.eps)

    def backward(self, dout: np.ndarray, cache: RMSNormCache) -> np.ndarray:
        dx, dweight = rms_norm_backward(dout, cache)
        self.accumulate_grad("weight", dweight)
        return dx


@dataclass(frozen=True)
class SwiGLUFeedForwardCache:
    gate_proj: LinearCache  # holds x (..., C)
    up_proj: LinearCache  # holds x again (the same array, not a copy)
    swiglu: SwiGLUCache  # (..., F) u, silu(g) and sigma(g)
    down_proj: LinearCache  # holds h = silu(g) * u (..., F)


class SwiGLUFeedForward(Module):
    r"""Llama's feed-forward, :math:`\mathrm{down}(\mathrm{silu}(\mathrm{gate}(x)) \odot \mathrm{up}(x))`.

    Shapes: ``x`` (..., C) -> gate, up (..., F) -> out (..., C). Three matrices instead of the
    classic block's two, so for the same parameter count ``F`` is about 2/3 of ``4C``.
    ``bias=False`` as in Llama. Initialised as ``torch.nn.Linear``; :class:`~numpy_transformer.models.llama.Llama`
    redraws every weight from N(0, ``initializer_range``^2).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        bias: bool = False,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        self.gate_proj = Linear(d_model, d_ff, bias=bias, dtype=dtype, rng=rng)
        self.up_proj = Linear(d_model, d_ff, bias=bias, dtype=dtype, rng=rng)
        self.down_proj = Linear(d_ff, d_model, bias=bias, dtype=dtype, rng=rng)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, SwiGLUFeedForwardCache]:
        g, c_gate = self.gate_proj.forward(x)  # (..., F)
        u, c_up = self.up_proj.forward(x)  # (..., F)
        h, c_swiglu = swiglu_forward(g, u)  # (..., F) silu(g) * u
        y, c_down = self.down_proj.forward(h)  # (..., C)
        return y, SwiGLUFeedForwardCache(gate_proj=c_gate, up_proj=c_up, swiglu=c_swiglu, down_proj=c_down)

    def backward(self, dout: np.ndarray, cache: SwiGLUFeedForwardCache) -> np.ndarray:
        """Return dx: ``x`` fed both projections, so its gradient is the sum of the two paths."""
        # y = down_proj(h)
        dh = self.down_proj.backward(dout, cache.down_proj)  # (..., F)
        # h = silu(g) * u
        dg, du = swiglu_backward(dh, cache.swiglu)  # (..., F) each
        # g = gate_proj(x), u = up_proj(x)
        return self.gate_proj.backward(dg, cache.gate_proj) + self.up_proj.backward(du, cache.up_proj)  # (..., C)


@dataclass(frozen=True)
class LlamaAttentionCache:
    q_proj: LinearCache  # holds x (B, T, C)
    k_proj: LinearCache
    v_proj: LinearCache
    q_rope: RotaryCache  # (T, D/2) cosines and sines of the query positions
    k_rope: RotaryCache  # the same for the keys (self-attention: the same positions)
    attention: GroupedQueryAttentionCache  # (B, H, T, S) weights over Hkv shared key/value heads
    out_proj: LinearCache

    @property
    def weights(self) -> np.ndarray:
        """Per-query-head attention probabilities, (B, H, T, S)."""
        return self.attention.weights


class LlamaAttention(Module):
    r"""Self-attention with rotary positions and ``n_kv_heads`` shared key/value heads.

    ``q_proj`` (H*D, C), ``k_proj`` and ``v_proj`` (Hkv*D, C), ``out_proj`` (C, H*D), no biases
    by default. Query head ``h`` reads key/value head ``h // (H // Hkv)``; queries and keys are
    rotated (``rope_layout``, ``rope_theta``) before the scores, values are not.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        rope_theta: float = 10000.0,
        rope_layout: str = "half",
        bias: bool = False,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        attention: str = "standard",
    ) -> None:
        """``n_kv_heads`` None: ``n_heads`` (multi-head attention). ``attention``: ``"standard"`` or
        ``"flash"``, the grouped-query kernel (flash natively over the shared heads; the same numbers).
        """
        super().__init__()
        self.attention = check_attention_kind(attention)
        self.d_model = check_positive_int("d_model", d_model)
        self.n_heads = check_positive_int("n_heads", n_heads)
        self.n_kv_heads = check_positive_int("n_kv_heads", n_heads if n_kv_heads is None else n_kv_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={d_model}, got {n_heads}")
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads: expected a divisor of n_heads={n_heads}, got {self.n_kv_heads}")
        self.head_dim = d_model // n_heads
        if self.head_dim % 2:
            raise ValueError(
                f"n_heads: expected a head width d_model // n_heads that is even (RoPE turns pairs), "
                f"got {d_model} // {n_heads} = {self.head_dim}"
            )
        self.rope_theta = check_positive_float("rope_theta", rope_theta)
        self.rope_layout = check_rope_layout(rope_layout)
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        kv_width = self.n_kv_heads * self.head_dim
        self.q_proj = Linear(d_model, d_model, bias=bias, dtype=dtype, rng=rng)
        self.k_proj = Linear(d_model, kv_width, bias=bias, dtype=dtype, rng=rng)
        self.v_proj = Linear(d_model, kv_width, bias=bias, dtype=dtype, rng=rng)
        self.out_proj = Linear(d_model, d_model, bias=bias, dtype=dtype, rng=rng)

    @staticmethod
    def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
        """(B, L, n*D) -> (B, n, L, D): head h owns features h*D .. (h+1)*D - 1. Its backward is merge_heads."""
        B, L, W = x.shape
        return x.reshape(B, L, n_heads, W // n_heads).transpose(0, 2, 1, 3)  # (B, n, L, D)

    @staticmethod
    def merge_heads(x: np.ndarray) -> np.ndarray:
        """(B, n, L, D) -> (B, L, n*D), the inverse of split_heads (and its backward)."""
        B, n, L, D = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, L, n * D)  # (B, L, n*D)

    def check_input(self, x: object, positions: object) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (B, L, C) in the module's dtype; ``positions`` (L,) ints (``arange(L)`` when None)."""
        check_float_array("x", x)
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected dtype {self.dtype} (the module's dtype), got {x.dtype}")
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected shape (B, L, {self.d_model}), got {x.shape}")
        if positions is None:
            return x, np.arange(x.shape[1])
        positions = check_int_array("positions", positions)
        if positions.shape != (x.shape[1],):
            raise ValueError(f"positions: expected shape ({x.shape[1]},), one per position of x, got {positions.shape}")
        if positions.size and positions.min() < 0:
            raise ValueError(f"positions: expected positions >= 0, got {positions.min()}")
        return x, positions

    def project(self, x: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
        """Rotated queries (B, H, L, D), rotated keys and values (B, Hkv, L, D), and the five caches."""
        q, c_q = self.q_proj.forward(x)  # (B, L, H*D)
        k, c_k = self.k_proj.forward(x)  # (B, L, Hkv*D)
        v, c_v = self.v_proj.forward(x)  # (B, L, Hkv*D)
        theta, layout = self.rope_theta, self.rope_layout
        q, c_qr = rotary_embedding_forward(self.split_heads(q, self.n_heads), positions, theta, layout)  # (B, H, L, D)
        k, c_kr = rotary_embedding_forward(self.split_heads(k, self.n_kv_heads), positions, theta, layout)
        return q, k, self.split_heads(v, self.n_kv_heads), (c_q, c_k, c_v, c_qr, c_kr)

    def forward(
        self,
        x: np.ndarray,
        positions: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        is_causal: bool = False,
    ) -> tuple[np.ndarray, LlamaAttentionCache]:
        """``x`` (B, T, C) -> (B, T, C); ``positions`` (T,) default ``arange(T)``.

        ``mask``: bool, ``True`` = may attend, broadcastable to (B, H, T, T); ``is_causal`` adds
        the causal pattern (a Llama passes ``is_causal=True``).
        """
        x, positions = self.check_input(x, positions)
        q, k, v, (c_q, c_k, c_v, c_qr, c_kr) = self.project(x, positions)
        heads, c_att = grouped_query_attention_forward(
            q, k, v, mask=mask, is_causal=is_causal, attention=self.attention
        )  # (B, H, T, D)
        out, c_o = self.out_proj.forward(self.merge_heads(heads))  # (B, T, C)
        cache = LlamaAttentionCache(
            q_proj=c_q, k_proj=c_k, v_proj=c_v, q_rope=c_qr, k_rope=c_kr, attention=c_att, out_proj=c_o
        )
        return out, cache

    def backward(self, dout: np.ndarray, cache: LlamaAttentionCache) -> np.ndarray:
        """Return dx (B, T, C): ``x`` fed the query, key and value projections, so the three paths add."""
        c = cache
        # out = out_proj(merge_heads(heads))
        dheads = self.split_heads(self.out_proj.backward(dout, c.out_proj), self.n_heads)  # (B, H, T, D)
        dheads = gradient_at("heads", dheads)
        # heads = GQA(q, k, v): the key/value gradients come back summed over each group
        dq, dk, dv = grouped_query_attention_backward(dheads, c.attention)  # (B, H|Hkv, T, D)
        # q = rope(split(q_proj(x))), k = rope(split(k_proj(x))): rotate the gradients back
        dq = rotary_embedding_backward(gradient_at("q_rotated", dq), c.q_rope)  # (B, H, T, D)
        dk = rotary_embedding_backward(gradient_at("k_rotated", dk), c.k_rope)  # (B, Hkv, T, D)
        dx = self.q_proj.backward(self.merge_heads(dq), c.q_proj)  # (B, T, C)
        dx = dx + self.k_proj.backward(self.merge_heads(dk), c.k_proj)
        return dx + self.v_proj.backward(self.merge_heads(dv), c.v_proj)

    def empty_kv_cache(self, batch_size: int, capacity: int) -> KVCache:
        """Zeroed (B, Hkv, N, D) key and value buffers for ``capacity`` positions, in the module's dtype.

        They hold ``2 * B * Hkv * N * D`` numbers: ``H / Hkv`` times fewer than multi-head attention's.
        """
        shape = (batch_size, self.n_kv_heads, capacity, self.head_dim)  # (B, Hkv, N, D)
        return KVCache(keys=np.zeros(shape, self.dtype), values=np.zeros(shape, self.dtype), length=0)


@dataclass(frozen=True)
class LlamaDecoderLayerCache:
    norm1: RMSNormCache  # (B, T, C) of x
    self_attn: LlamaAttentionCache  # (B, H, T, T) weights
    norm2: RMSNormCache  # (B, T, C) of h = x + attention
    ff: SwiGLUFeedForwardCache  # (B, T, F) gate and up


class LlamaDecoderLayer(Module):
    """Pre-RMSNorm self-attention (rotary, grouped-query) and SwiGLU feed-forward, each in a residual branch."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        d_ff: int,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        rope_layout: str = "half",
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        attention: str = "standard",
    ) -> None:
        super().__init__()
        rng = check_rng(rng)
        self.dtype = check_module_dtype(dtype)
        self.norm1 = RMSNorm(d_model, rms_norm_eps, dtype=dtype)
        self.self_attn = LlamaAttention(
            d_model, n_heads, n_kv_heads, rope_theta, rope_layout, dtype=dtype, rng=rng, attention=attention
        )
        self.norm2 = RMSNorm(d_model, rms_norm_eps, dtype=dtype)
        self.ff = SwiGLUFeedForward(d_model, d_ff, dtype=dtype, rng=rng)

    def forward(
        self,
        x: np.ndarray,
        positions: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        is_causal: bool = True,
    ) -> tuple[np.ndarray, LlamaDecoderLayerCache]:
        """``x`` (B, T, C) -> (B, T, C); causal by default, ``mask`` (True = may attend) on top."""
        n1, c_n1 = self.norm1.forward(x)  # (B, T, C)
        a, c_sa = self.self_attn.forward(n1, positions, mask, is_causal)
        h = x + a  # (B, T, C)
        n2, c_n2 = self.norm2.forward(h)
        f, c_ff = self.ff.forward(n2)
        return h + f, LlamaDecoderLayerCache(norm1=c_n1, self_attn=c_sa, norm2=c_n2, ff=c_ff)

    def backward(self, dy: np.ndarray, cache: LlamaDecoderLayerCache) -> np.ndarray:
        """Return dx; the forward read bottom-up."""
        c = cache
        # y = h + ff(norm2(h)): the residual passes dy straight through, the branch adds its own
        dh = dy + self.norm2.backward(self.ff.backward(dy, c.ff), c.norm2)  # (B, T, C)
        # h = x + self_attn(norm1(x))
        return dh + self.norm1.backward(self.self_attn.backward(dh, c.self_attn), c.norm1)


def cached_llama_layer(
    layer: LlamaDecoderLayer, x: np.ndarray, cache: KVCache, positions: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, KVCache]:
    """:meth:`LlamaDecoderLayer.forward` for the new positions ``x`` (B, L, C) only, against ``cache``.

    ``positions`` (L,) are the new positions' own (``cache.length ..``); their rotated keys and
    their values are appended to ``cache`` (B, Hkv, N, D), then their queries attend over every
    stored position. ``mask`` broadcastable to (B, H, L, K), ``K`` the stored positions after the
    append: the rows of the causal mask for the new queries. Forward only (no backward).
    Returns (B, L, C) and the cache.
    """
    attn = layer.self_attn
    n1, _ = layer.norm1.forward(x)  # (B, L, C)
    q, k, v, _ = attn.project(n1, positions)  # (B, H, L, D), (B, Hkv, L, D) x 2
    cache = cache.append(k, v)  # keys stored rotated: position s's key never changes again
    n = cache.length
    keys, values = cache.keys[:, :, :n], cache.values[:, :, :n]  # (B, Hkv, K, D) each
    heads, _ = grouped_query_attention_forward(q, keys, values, mask=mask, attention=attn.attention)
    a, _ = attn.out_proj.forward(attn.merge_heads(heads))  # (B, L, C)
    h = x + a
    n2, _ = layer.norm2.forward(h)
    f, _ = layer.ff.forward(n2)
    return h + f, cache
