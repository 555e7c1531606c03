r"""A Llama-style decoder-only language model, forward and backward by hand, its key/value cache and its HF key map.

Shape legend: ``B`` batch, ``T`` sequence length (``<= max_len``), ``L`` new positions fed at
once, ``N`` the cache's capacity, ``C`` d_model, ``H`` query heads, ``Hkv`` key/value heads,
``D = C // H``, ``F`` SwiGLU width, ``V`` vocabulary size.

The network, read top to bottom::

    x      = tok_embed[ids]                                    (B, T, C)   no position table
    x      = layers.i(x, positions 0..T-1)  for i = 0 .. L-1   pre-RMSNorm blocks (modules/llama_layers.py):
                 h = x + self_attn(norm1(x))                   rotary grouped-query attention, causal
                 x = h + ff(norm2(h))                          SwiGLU feed-forward
    h      = norm(x)                                           (B, T, C)   the final RMSNorm
    logits = h @ W^T                                           (B, T, V)   W = lm_head.weight, or
                                                                           tok_embed.weight when tied

Against :class:`~numpy_transformer.models.gpt.GPT`: positions enter inside attention (RoPE turns
every query and key by its position) instead of through a learned table added to the embeddings,
so nothing in the model limits the length but ``max_len``; RMSNorm for LayerNorm; SwiGLU for
GELU; ``n_kv_heads`` key/value heads shared by groups of query heads; no biases; no dropout.

The key/value cache, and what it costs
--------------------------------------
:class:`LlamaKVCache` keeps, per layer, the rotated keys and the values of every position fed
so far, in :class:`~numpy_transformer.modules.kv_cache.KVCache` buffers of shape
(B, Hkv, N, D): only the ``n_kv_heads`` heads. Its memory is

.. math:: \text{bytes} = 2 \cdot n_\text{layers} \cdot B \cdot H_{kv} \cdot N \cdot D \cdot \text{itemsize},

``H / Hkv`` times less than multi-head attention's (``Hkv = H``). For the default config
(4 layers, C = 128, H = 4, Hkv = 2, D = 32) at ``N = max_len = 128`` in float32, one sequence
costs 2 · 4 · 2 · 128 · 32 · 4 = 262 144 bytes (256 KiB); with ``n_kv_heads = 4`` it would be
512 KiB, with ``n_kv_heads = 1`` (multi-query) 128 KiB. ``LlamaKVCache.nbytes`` reports it, and
``parity_tests/test_llama.py`` checks it. Keys are stored after their rotation: position ``s``'s
key depends on ``ids[:s + 1]`` and on ``s`` only, so it never changes as tokens are appended,
and a step attends one new query over the stored keys (``O(t)`` work, not ``O(t^2)``).

The cache is a :class:`~numpy_transformer.inference.protocol.Stepper` (``batch_size``,
``step(token_ids)``, ``reorder(rows)``), and ``inference.generate`` samples from a Llama (or
decodes it greedily, ``temperature=0``) through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import LlamaConfig
from ..functional.checks import check_float_array, check_int, check_int_array, check_rng, check_token_ids
from ..functional.embedding import EmbeddingCache
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..functional.rms_norm import RMSNormCache
from ..functional.rotary import half_to_interleaved_rows, interleaved_to_half_rows
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.kv_cache import check_rows
from ..modules.layers import Embedding, Linear
from ..modules.llama_layers import LlamaDecoderLayer, LlamaDecoderLayerCache, RMSNorm, cached_llama_layer, normal_init

__all__ = [
    "Llama",
    "LlamaCache",
    "LlamaKVCache",
    "hf_llama_config",
    "hf_llama_key_map",
    "llama_state_from_hf",
    "llama_state_to_hf",
]


@dataclass(frozen=True)
class LlamaCache:
    tok_embed: EmbeddingCache  # ids (B, T)
    layers: tuple[LlamaDecoderLayerCache, ...]  # one per layer, first to last, each over (B, T, C)
    norm: RMSNormCache  # (B, T, C) the final RMSNorm
    head: LinearCache  # logits = h @ W^T; holds h (B, T, C)

    def attention_weights(self, layer: int = -1) -> np.ndarray:
        """(B, H, T, T) self-attention probabilities of one layer; zero above the diagonal."""
        return self.layers[layer].self_attn.weights


class Llama(Module):
    """Llama-style decoder-only language model (see the module docstring for the layout).

    Parameters are named like the twin's state dict: ``tok_embed.weight`` (V, C),
    ``layers.0.norm1.weight``, ``layers.0.self_attn.q_proj.weight`` (C, C),
    ``layers.0.self_attn.k_proj.weight`` (Hkv*D, C), ``...v_proj``, ``...out_proj``,
    ``layers.0.norm2.weight``, ``layers.0.ff.gate_proj.weight`` (F, C), ``...up_proj``,
    ``...down_proj`` (C, F), ``norm.weight``, and ``lm_head.weight`` (V, C) unless
    ``tie_embeddings``. :func:`hf_llama_key_map` gives Hugging Face's name of each.

    Initialised as Hugging Face's Llama: every weight matrix and the embeddings from
    N(0, ``initializer_range``^2), every RMSNorm weight one.
    """

    def __init__(
        self, config: LlamaConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        std = c.initializer_range
        self.tok_embed = Embedding(c.vocab_size, c.d_model, dtype=dtype, rng=rng)
        self.tok_embed.weight[...] = rng.normal(0.0, std, self.tok_embed.weight.shape)
        block = dict(
            rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, rope_layout=c.rope_layout, dtype=dtype,
            attention=c.attention,
        )  # fmt: skip
        self.layers = ModuleList(
            [LlamaDecoderLayer(c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, **block, rng=rng) for _ in range(c.n_layers)]
        )
        self.norm = RMSNorm(c.d_model, c.rms_norm_eps, dtype=dtype)
        self.lm_head = None if c.tie_embeddings else Linear(c.d_model, c.vocab_size, bias=False, dtype=dtype, rng=rng)
        for module in self.modules():
            if isinstance(module, Linear):
                normal_init(module, rng, std)

    @property
    def head_weight(self) -> np.ndarray:
        """(V, C) the matrix of the logits: ``lm_head.weight``, or ``tok_embed.weight`` when tied."""
        return self.tok_embed.weight if self.lm_head is None else self.lm_head.weight

    def check_ids(self, ids: object, name: str = "ids") -> np.ndarray:
        """``ids`` must be (B, T) integer token ids, ``B, T >= 1``, ``T <= max_len``, inside the vocabulary."""
        return check_token_ids(name, ids, self.config.vocab_size, self.config.max_len)

    # -------------------------------------------------------------- forward / backward

    def forward(self, ids: np.ndarray) -> tuple[np.ndarray, LlamaCache]:
        """``ids`` (B, T) integer token ids -> logits (B, T, V); ``logits[:, t]`` scores ``ids[:, t + 1]``."""
        ids = self.check_ids(ids)
        T = ids.shape[1]
        positions = np.arange(T)  # (T,) the same for every row: rows are not left-padded
        x, c_tok = self.tok_embed.forward(ids)  # (B, T, C)
        layer_caches = []
        for layer in self.layers:
            x, c_layer = layer.forward(x, positions, is_causal=True)  # (B, T, C)
            layer_caches.append(c_layer)
        h, c_norm = self.norm.forward(x)  # (B, T, C)
        logits, c_head = linear_forward(h, self.head_weight)  # (B, T, V)
        return logits, LlamaCache(tok_embed=c_tok, layers=tuple(layer_caches), norm=c_norm, head=c_head)

    def backward(self, dlogits: np.ndarray, cache: LlamaCache) -> None:
        r"""Accumulate every parameter gradient from ``dlogits`` (B, T, V); token ids have none.

        .. math::
            \text{logits} = h W^T \Rightarrow dh = d\text{logits}\, W,\quad dW \mathrel{+}= d\text{logits}^T h

            x_0 = E[\text{ids}] \Rightarrow dE[\text{ids}_{bt}] \mathrel{+}= dx_{0,bt}

        With ``tie_embeddings`` :math:`W = E` receives both terms.
        """
        c = cache
        expected = c.head.x.shape[:-1] + (self.config.vocab_size,)  # (B, T, V)
        check_float_array("dlogits", dlogits)
        if dlogits.shape != expected or dlogits.dtype != self.dtype:
            raise ValueError(
                f"dlogits: expected shape {expected} and dtype {self.dtype} (those of the logits), "
                f"got {dlogits.shape} {dlogits.dtype}"
            )
        # logits = h @ W^T
        dh, dweight, _ = linear_backward(dlogits, c.head)  # (B, T, C), (V, C)
        owner = self.tok_embed if self.lm_head is None else self.lm_head
        owner.accumulate_grad("weight", dweight)
        # h = norm(x_L)
        dx = self.norm.backward(dh, c.norm)  # (B, T, C)
        # x_{i+1} = layers.i(x_i)
        for layer, c_layer in zip(reversed(list(self.layers)), reversed(c.layers), strict=True):
            dx = layer.backward(dx, c_layer)
        # x_0 = tok_embed[ids]: added to the head's share when tied
        self.tok_embed.backward(dx, c.tok_embed)


# ---------------------------------------------------------------------------- the key/value cache


class LlamaKVCache:
    """Run a :class:`Llama` a few positions at a time, keeping every layer's rotated keys and values.

    ``feed(ids)`` appends ``ids`` (B, L) at positions ``length .. length + L - 1`` and returns
    their logits (B, L, V): the same numbers as ``model.forward`` on everything fed so far,
    restricted to the new positions. ``step(token_ids)`` feeds one token per row and returns
    ``(logits (B, V), None)``, and ``reorder(rows)`` makes row ``i`` a copy of old row ``rows[i]``:
    the :class:`~numpy_transformer.inference.protocol.Stepper` protocol.

    Memory: ``nbytes = 2 * n_layers * B * n_kv_heads * N * D * itemsize`` (see the module docstring).

    Parameters
    ----------
    model : Llama
        In eval mode (``model.eval()``); a Llama has no dropout, but the cache computes no backward.
    batch_size : int
    capacity : int, optional
        ``N``, the most positions that will be fed, at most ``config.max_len`` (the default).
    """

    def __init__(self, model: Llama, batch_size: int, capacity: int | None = None) -> None:
        if not isinstance(model, Llama):
            raise TypeError(f"model: expected a numpy_transformer Llama, got {type(model).__name__}")
        if any(m.training for m in model.modules()):
            raise ValueError("model: expected eval mode (call model.eval()); the cache runs the forward only")
        c = model.config
        self.model = model
        self.batch_size = check_int("batch_size", batch_size, 1, None)
        self.capacity = check_int("capacity", c.max_len if capacity is None else capacity, 1, c.max_len)
        self.layers = [layer.self_attn.empty_kv_cache(self.batch_size, self.capacity) for layer in model.layers]
        self.length = 0  # positions filled

    @property
    def nbytes(self) -> int:
        """Bytes of every key and value buffer: ``2 * n_layers * B * n_kv_heads * N * D * itemsize``."""
        return sum(kv.keys.nbytes + kv.values.nbytes for kv in self.layers)

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """Append ``ids`` (B, L) and return their logits (B, L, V)."""
        model, t0 = self.model, self.length
        ids = model.check_ids(ids)
        if ids.shape[0] != self.batch_size:
            raise ValueError(f"ids: expected batch size {self.batch_size} (the cache's), got {ids.shape[0]}")
        L = ids.shape[1]
        if t0 + L > self.capacity:
            raise ValueError(
                f"ids: {L} more position(s) after {t0} exceed the cache's capacity {self.capacity} "
                f"(at most max_len={model.config.max_len})"
            )
        self.length = t1 = t0 + L
        positions = np.arange(t0, t1)  # (L,) the new tokens' own positions: RoPE turns them by these
        mask = np.tri(L, t1, k=t0, dtype=bool)  # (L, t1): the causal mask's rows for queries t0 .. t1 - 1
        x, _ = model.tok_embed.forward(ids)  # (B, L, C)
        for i, layer in enumerate(model.layers):
            x, self.layers[i] = cached_llama_layer(layer, x, self.layers[i], positions, mask)  # (B, L, C)
        h, _ = model.norm.forward(x)
        logits, _ = linear_forward(h, model.head_weight)  # (B, L, V)
        return logits

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, None]:
        """Feed ``token_ids`` (B,) at the next position: logits (B, V) for the position after it, no attention."""
        token_ids = check_int_array("token_ids", token_ids)
        if token_ids.shape != (self.batch_size,):
            raise ValueError(f"token_ids: expected shape ({self.batch_size},) (one per row), got {token_ids.shape}")
        check_token_ids("token_ids", token_ids[:, None], self.model.config.vocab_size)
        return self.feed(token_ids[:, None])[:, 0], None

    def reorder(self, rows: np.ndarray) -> None:
        """In place: row ``i`` of every layer's keys and values becomes a copy of old row ``rows[i]``."""
        rows = check_rows(rows, self.batch_size)
        for kv in self.layers:
            kv.reorder(rows)


# ---------------------------------------------------------------------------- Hugging Face


def hf_llama_config(config: LlamaConfig) -> dict[str, object]:
    """The keyword arguments of ``transformers.LlamaConfig`` for the same architecture.

    ``head_dim`` is ``d_model // n_heads``; no attention or MLP bias; no dropout. Hugging Face
    rotates in the ``"half"`` layout only: an ``"interleaved"`` model maps to it through
    :func:`llama_state_to_hf`, which permutes the query and key rows.
    """
    c = config
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        head_dim=c.d_model // c.n_heads,
        max_position_embeddings=c.max_len,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        tie_word_embeddings=c.tie_embeddings,
        initializer_range=c.initializer_range,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        hidden_act="silu",
    )


def hf_llama_key_map(config: LlamaConfig) -> dict[str, str]:
    """Our parameter name -> ``transformers.LlamaForCausalLM``'s, for every parameter of ``Llama(config)``.

    Same layouts (both store ``nn.Linear``'s (out, in)): only the names differ, e.g.
    ``layers.0.norm1.weight`` is ``model.layers.0.input_layernorm.weight`` and
    ``layers.0.self_attn.out_proj.weight`` is ``model.layers.0.self_attn.o_proj.weight``. A tied
    model has no ``lm_head.weight`` (Hugging Face's ``lm_head.weight`` is then ``embed_tokens``).
    """
    keys = {"tok_embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    renames = {
        "norm1": "input_layernorm",
        "norm2": "post_attention_layernorm",
        "self_attn.q_proj": "self_attn.q_proj",
        "self_attn.k_proj": "self_attn.k_proj",
        "self_attn.v_proj": "self_attn.v_proj",
        "self_attn.out_proj": "self_attn.o_proj",
        "ff.gate_proj": "mlp.gate_proj",
        "ff.up_proj": "mlp.up_proj",
        "ff.down_proj": "mlp.down_proj",
    }
    for i in range(config.n_layers):
        for ours, theirs in renames.items():
            keys[f"layers.{i}.{ours}.weight"] = f"model.layers.{i}.{theirs}.weight"
    if not config.tie_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    return keys


def _qk_heads(name: str, config: LlamaConfig) -> int | None:
    """The heads a projection's rows are split into, for the rotated ones (q, k); None for the others."""
    if name.endswith("self_attn.q_proj.weight"):
        return config.n_heads
    if name.endswith("self_attn.k_proj.weight"):
        return config.n_kv_heads
    return None


def llama_state_to_hf(state: dict[str, np.ndarray], config: LlamaConfig) -> dict[str, np.ndarray]:
    """Our state dict (or our gradients) under Hugging Face's names.

    With ``rope_layout="interleaved"`` the query and key rows are permuted to the half layout
    Hugging Face rotates in (:func:`~numpy_transformer.functional.rotary.interleaved_to_half_rows`):
    the result then computes the same function in ``LlamaForCausalLM``. A permutation is
    orthogonal, so gradients map the same way as weights.
    """
    out = {}
    for ours, theirs in hf_llama_key_map(config).items():
        w, heads = state[ours], _qk_heads(ours, config)
        if heads is not None and config.rope_layout == "interleaved":
            w = interleaved_to_half_rows(w, heads)
        out[theirs] = np.ascontiguousarray(w)
    return out


def llama_state_from_hf(hf_state: dict[str, np.ndarray], config: LlamaConfig) -> dict[str, np.ndarray]:
    """Hugging Face's ``LlamaForCausalLM`` state dict (arrays) -> ours, the inverse of :func:`llama_state_to_hf`.

    Extra entries of ``hf_state`` (a tied ``lm_head.weight``, buffers) are ignored.
    """
    out = {}
    for ours, theirs in hf_llama_key_map(config).items():
        w, heads = hf_state[theirs], _qk_heads(ours, config)
        if heads is not None and config.rope_layout == "interleaved":
            w = half_to_interleaved_rows(w, heads)
        out[ours] = np.ascontiguousarray(w)
    return out
