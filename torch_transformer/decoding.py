r"""The twin of ``numpy_transformer.inference.search``: greedy, beam search and a key/value cache in PyTorch.

Same signatures and semantics as the NumPy half (read its module docstring for the
token conventions, the score and the cache), on any device, under ``torch.no_grad``.
``src`` may be an integer tensor or a NumPy integer array; results are tensors on
the model's device.

Shape legend: ``B`` batch, ``K`` beams per source, ``S`` source length, ``L`` decoded
length including ``bos``, ``C`` d_model, ``H`` heads, ``D = C // H``, ``V`` target vocabulary.

In short: pad is never generated; a hypothesis's length counts its generated
tokens, ``eos`` included; the beam score is
:math:`\sum_i \log p(y_i \mid y_{<i}, x) / \text{length}^{\alpha}`; decoding
runs in eval mode and restores every module's mode afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from numpy_transformer.config import check_special_ids
from numpy_transformer.functional.checks import check_int

from . import functional as TF
from .modules import MultiHeadAttention
from .transformer import Transformer
from .transformer_layers import DecoderLayer

__all__ = [
    "BeamSearchResult",
    "DecodeResult",
    "IncrementalDecoder",
    "LayerKVCache",
    "beam_search",
    "greedy_decode",
]


@dataclass(frozen=True)
class DecodeResult:
    """What :func:`greedy_decode` returns; fields as in ``numpy_transformer.inference.search.DecodeResult``."""

    tokens: torch.Tensor  # (B, L) int64: bos, generated tokens, pad after eos
    logits: torch.Tensor  # (B, L - 1, V): logits[:, t] chose tokens[:, t + 1]
    cross_attention: torch.Tensor | None  # (B, H, L - 1, S) last decoder layer; None without decoder layers
    lengths: torch.Tensor  # (B,) int64 generated tokens, eos included


@dataclass(frozen=True)
class BeamSearchResult:
    """What :func:`beam_search` returns; fields as in ``numpy_transformer.inference.search.BeamSearchResult``."""

    tokens: torch.Tensor  # (B, 1 + max(lengths)) int64 the best hypothesis per source
    scores: torch.Tensor  # (B,) log_probs / lengths ** length_penalty
    log_probs: torch.Tensor  # (B,) summed log-probability, eos included
    lengths: torch.Tensor  # (B,) int64 generated tokens, eos included
    beam_tokens: torch.Tensor  # (B, K, L) every final beam, best first; L - 1 steps taken
    beam_scores: torch.Tensor  # (B, K) descending; -inf for an empty beam

    def sequences(self) -> list[torch.Tensor]:
        """The best hypothesis per source without padding: ``bos``, generated tokens, ``eos`` if any."""
        return [row[: 1 + int(n)] for row, n in zip(self.tokens, self.lengths, strict=True)]


# ---------------------------------------------------------------------------- the key/value cache


@dataclass(frozen=True)
class LayerKVCache:
    """The keys and values one decoder layer keeps between steps (written in place)."""

    self_keys: torch.Tensor  # (B, H, capacity, D) k_proj of every target position so far
    self_values: torch.Tensor  # (B, H, capacity, D)
    cross_keys: torch.Tensor  # (B, H, S, D) k_proj(memory), computed once
    cross_values: torch.Tensor  # (B, H, S, D) v_proj(memory), computed once


def merge_heads(heads: torch.Tensor) -> torch.Tensor:
    B, H, T, D = heads.shape
    return heads.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


class IncrementalDecoder:
    """Run the twin's decoder one target position at a time, with a key/value cache.

    ``step(token_ids)`` returns logits equal to ``model.decode(prefix, memory, src)[:, -1]``.
    ``model`` must be in eval mode; ``memory`` (B, S, C) is ``model.encode(src)``;
    ``capacity`` (default ``config.max_len``) bounds the positions fed.
    """

    def __init__(
        self, model: Transformer, memory: torch.Tensor, src: torch.Tensor | np.ndarray, capacity: int | None = None
    ) -> None:
        _check_model(model)
        if any(m.training for m in model.modules()):
            raise ValueError(
                "model: expected eval mode (call model.eval()); the cache computes the forward without dropout"
            )
        config = model.config
        src = _check_src(model, src)
        B, S = src.shape
        if not isinstance(memory, torch.Tensor) or not memory.is_floating_point():
            raise TypeError(f"memory: expected a floating-point torch.Tensor, got {type(memory).__name__}")
        if tuple(memory.shape) != (B, S, config.d_model):
            raise ValueError(
                f"memory: expected shape ({B}, {S}, {config.d_model}) to match src, got {tuple(memory.shape)}"
            )
        capacity = config.max_len if capacity is None else capacity
        self.capacity = check_int("capacity", capacity, 1, config.max_len)
        self.model = model
        device, dtype = memory.device, memory.dtype
        self.memory_mask = model.source_mask(src.to(device))  # (B, 1, 1, S)
        self.tokens = torch.full((B, self.capacity), config.pad_id, dtype=torch.int64, device=device)
        self.length = 0
        H, D = config.n_heads, config.d_model // config.n_heads
        self.layers: list[LayerKVCache] = []
        with torch.no_grad():
            for layer in model.decoder.layers:
                mha = layer.cross_attn
                self.layers.append(
                    LayerKVCache(
                        self_keys=torch.zeros((B, H, self.capacity, D), dtype=dtype, device=device),
                        self_values=torch.zeros((B, H, self.capacity, D), dtype=dtype, device=device),
                        cross_keys=mha._split(mha.k_proj(memory)),  # (B, H, S, D)
                        cross_values=mha._split(mha.v_proj(memory)),  # (B, H, S, D)
                    )
                )

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed one token per row (``token_ids`` (B,)); return logits (B, V) and cross-attention (B, H, S) or None."""
        model = self.model
        config = model.config
        if not isinstance(token_ids, torch.Tensor) or token_ids.is_floating_point() or token_ids.is_complex():
            raise TypeError(f"token_ids: expected an integer torch.Tensor, got {type(token_ids).__name__}")
        if tuple(token_ids.shape) != (self.batch_size,):
            raise ValueError(f"token_ids: expected shape ({self.batch_size},), got {tuple(token_ids.shape)}")
        low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= config.tgt_vocab_size:
            raise ValueError(f"token_ids: expected ids in [0, {config.tgt_vocab_size}), got range [{low}, {high}]")
        if self.length == self.capacity:
            raise ValueError(f"capacity: all {self.capacity} positions are fed; build a decoder with a larger capacity")
        t = self.length
        token_ids = token_ids.to(self.tokens.device)
        self.tokens[:, t] = token_ids
        self.length = t + 1

        # The model's target embedding at one position: x = embed(token) * sqrt(C) + PE[t]
        x = model.tgt_embed(token_ids[:, None]) * model.embed_scale + model.pe[t : t + 1]  # (B, 1, C)
        # The target mask's row t: keys 0..t (causal), padded positions excluded.
        self_mask = (self.tokens[:, : t + 1] != config.pad_id)[:, None, None, :]  # (B, 1, 1, t + 1)
        cross_attention = None
        for layer, kv in zip(model.decoder.layers, self.layers, strict=True):
            x, cross_attention = self._layer_step(layer, kv, x, self_mask)
        if model.decoder.norm is not None:
            x = model.decoder.norm(x)
        weight = model.tgt_embed.weight if model.out_proj is None else model.out_proj.weight  # (V, C)
        logits = x @ weight.T  # (B, 1, V)
        return logits[:, 0], None if cross_attention is None else cross_attention[:, :, 0]

    @torch.no_grad()
    def reorder(self, rows: torch.Tensor) -> None:
        """Make row ``i`` of the cache a copy of old row ``rows[i]`` (int tensor (B,), repeats allowed)."""
        B, t = self.batch_size, self.length
        rows = torch.as_tensor(rows, device=self.tokens.device)
        if rows.is_floating_point() or tuple(rows.shape) != (B,):
            raise ValueError(f"rows: expected an integer tensor of shape ({B},), got {rows.dtype} {tuple(rows.shape)}")
        if int(rows.min()) < 0 or int(rows.max()) >= B:
            raise ValueError(f"rows: expected entries in [0, {B}), got range [{int(rows.min())}, {int(rows.max())}]")
        for kv in self.layers:
            kv.self_keys[:, :, :t] = kv.self_keys[rows, :, :t]  # (B, H, t, D)
            kv.self_values[:, :, :t] = kv.self_values[rows, :, :t]
            kv.cross_keys[...] = kv.cross_keys[rows]  # (B, H, S, D)
            kv.cross_values[...] = kv.cross_values[rows]
        self.tokens[:, :t] = self.tokens[rows, :t]  # (B, t)
        self.memory_mask = self.memory_mask[rows]  # (B, 1, 1, S)

    def _layer_step(
        self, layer: DecoderLayer, kv: LayerKVCache, x: torch.Tensor, self_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``DecoderLayer.forward`` for the new position only: ``x`` (B, 1, C) -> (B, 1, C), weights (B, H, 1, S)."""
        if layer.norm_first:
            h1 = x + self._self_attention(layer.self_attn, kv, layer.norm1(x), self_mask)  # (B, 1, C)
            b, weights = self._cross_attention(layer.cross_attn, kv, layer.norm2(h1))
            h2 = h1 + b
            return h2 + layer.ff(layer.norm3(h2)), weights
        h1 = layer.norm1(x + self._self_attention(layer.self_attn, kv, x, self_mask))  # (B, 1, C)
        b, weights = self._cross_attention(layer.cross_attn, kv, h1)
        h2 = layer.norm2(h1 + b)
        return layer.norm3(h2 + layer.ff(h2)), weights

    def _self_attention(
        self, mha: MultiHeadAttention, kv: LayerKVCache, x: torch.Tensor, self_mask: torch.Tensor
    ) -> torch.Tensor:
        """Append the new position's key and value, then attend over every cached position."""
        t = self.length - 1
        kv.self_keys[:, :, t : t + 1] = mha._split(mha.k_proj(x))  # (B, H, 1, D) stored at position t
        kv.self_values[:, :, t : t + 1] = mha._split(mha.v_proj(x))
        heads = TF.scaled_dot_product_attention(
            mha._split(mha.q_proj(x)),  # (B, H, 1, D)
            kv.self_keys[:, :, : t + 1],  # (B, H, t + 1, D)
            kv.self_values[:, :, : t + 1],
            mask=self_mask,
        )  # (B, H, 1, D)
        return mha.out_proj(merge_heads(heads))  # (B, 1, C)

    def _cross_attention(
        self, mha: MultiHeadAttention, kv: LayerKVCache, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend over the memory's cached keys and values."""
        heads, weights = TF.scaled_dot_product_attention(
            mha._split(mha.q_proj(x)), kv.cross_keys, kv.cross_values, mask=self.memory_mask, return_weights=True
        )  # (B, H, 1, D), (B, H, 1, S)
        return mha.out_proj(merge_heads(heads)), weights  # (B, 1, C), (B, H, 1, S)


# ---------------------------------------------------------------------------- greedy


@torch.no_grad()
def greedy_decode(
    model: Transformer,
    src: torch.Tensor | np.ndarray,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    use_cache: bool = True,
) -> DecodeResult:
    """Greedy decoding of the whole batch; see ``numpy_transformer.inference.search.greedy_decode``.

    Parameters
    ----------
    model : Transformer
        The twin; switched to eval mode for the call, every module's mode restored after.
    src : int tensor or ndarray, shape (B, S)
    max_len : int
        Most tokens generated per row, ``eos`` included; ``1 <= max_len <= config.max_len``.
    bos_id, eos_id : int
    use_cache : bool
        True: :class:`IncrementalDecoder`; False: ``model.decode`` on the whole prefix every step.

    Returns
    -------
    DecodeResult
        ``tokens`` (B, L), ``logits`` (B, L - 1, V), ``cross_attention`` (B, H, L - 1, S), ``lengths`` (B,).
    """
    _check_model(model)
    src = _check_src(model, src)
    max_len = check_int("max_len", max_len, 1, model.config.max_len)
    check_special_ids(model.config, bos_id, eos_id)
    if not isinstance(use_cache, (bool, np.bool_)):
        raise TypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    pad_id = model.config.pad_id
    device = _device_of(model)
    src = src.to(device)
    B = src.shape[0]
    tokens = torch.full((B, 1 + max_len), pad_id, dtype=torch.int64, device=device)  # trimmed at the end
    tokens[:, 0] = bos_id
    lengths = torch.full((B,), max_len, dtype=torch.int64, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    step_logits, step_attention = [], []
    with _eval_mode(model):
        memory = model.encode(src)  # (B, S, C)
        decoder = IncrementalDecoder(model, memory, src, capacity=max_len) if use_cache else None
        for t in range(1, max_len + 1):
            if decoder is not None:
                logits, attention = decoder.step(tokens[:, t - 1])  # (B, V), (B, H, S)
            else:
                logits, attention = _decode_last_position(model, tokens[:, :t], memory, src)
            step_logits.append(logits)
            step_attention.append(attention)
            chosen = _without_pad(logits, pad_id).argmax(dim=-1)  # (B,)
            tokens[:, t] = torch.where(finished, torch.full_like(chosen, pad_id), chosen)  # finished rows emit pad
            ends_now = ~finished & (tokens[:, t] == eos_id)
            lengths[ends_now] = t
            finished |= ends_now
            if bool(finished.all()):
                break
    L = 1 + len(step_logits)
    cross_attention = None if step_attention[0] is None else torch.stack(step_attention, dim=2)  # (B, H, L - 1, S)
    return DecodeResult(
        tokens=tokens[:, :L],
        logits=torch.stack(step_logits, dim=1),  # (B, L - 1, V)
        cross_attention=cross_attention,
        lengths=lengths,
    )


def _decode_last_position(
    model: Transformer, prefix: torch.Tensor, memory: torch.Tensor, src: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model.decode`` on the whole prefix (B, t): the last position's logits (B, V) and weights (B, H, S).

    The twin's ``decode`` returns logits only, so a forward hook on the last layer's
    cross-attention recomputes that call's weights from the same inputs.
    """
    if len(model.decoder.layers) == 0:
        return model.decode(prefix, memory, src)[:, -1], None
    captured: dict[str, torch.Tensor] = {}

    def keep_weights(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        # module.forward (not module(...)) so the hook does not call itself
        _, captured["weights"] = module.forward(*args, **{**kwargs, "return_weights": True})

    handle = model.decoder.layers[-1].cross_attn.register_forward_hook(keep_weights, with_kwargs=True)
    try:
        logits = model.decode(prefix, memory, src)  # (B, t, V)
    finally:
        handle.remove()
    return logits[:, -1], captured["weights"][:, :, -1]


# ---------------------------------------------------------------------------- beam search


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: torch.Tensor | np.ndarray,
    beam_size: int,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    length_penalty: float = 1.0,
) -> BeamSearchResult:
    r"""Beam search, vectorised over batch × beam; see ``numpy_transformer.inference.search.beam_search``.

    Score of a hypothesis: :math:`\sum_{i=1}^{n} \log p(y_i \mid y_{<i}, x) / n^{\alpha}`,
    ``n`` its generated tokens with ``eos`` (``max_len`` if it never ends),
    :math:`\alpha` = ``length_penalty``. Ties: the lower beam, then the lower token id, wins.
    """
    _check_model(model)
    src = _check_src(model, src)
    K = check_int("beam_size", beam_size, 1, None)
    max_len = check_int("max_len", max_len, 1, model.config.max_len)
    check_special_ids(model.config, bos_id, eos_id)
    if not isinstance(length_penalty, (int, float, np.integer, np.floating)) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty: expected a finite number, got {length_penalty!r}")
    pad_id, V = model.config.pad_id, model.config.tgt_vocab_size
    device, dtype = _device_of(model), _dtype_of(model)
    src = src.to(device)
    B = src.shape[0]

    tokens = torch.full((B, K, 1 + max_len), pad_id, dtype=torch.int64, device=device)  # (B, K, 1 + max_len)
    tokens[:, :, 0] = bos_id
    # Only beam 0 is alive at first, so the K beams do not start as K copies of one hypothesis.
    log_probs = torch.full((B, K), -math.inf, dtype=dtype, device=device)  # (B, K)
    log_probs[:, 0] = 0
    scores = log_probs.clone()
    lengths = torch.zeros((B, K), dtype=torch.int64, device=device)
    finished = torch.zeros((B, K), dtype=torch.bool, device=device)
    pad_only = torch.full((V,), -math.inf, dtype=dtype, device=device)  # a finished beam's one continuation
    pad_only[pad_id] = 0

    with _eval_mode(model):
        memory = model.encode(src)  # (B, S, C)
        # Row b * K + k of the decoder is beam k of source b.
        decoder = IncrementalDecoder(
            model, memory.repeat_interleave(K, dim=0), src.repeat_interleave(K, dim=0), max_len
        )
        logits, _ = decoder.step(tokens[:, :, 0].reshape(B * K))  # (B * K, V)
        for t in range(1, max_len + 1):
            step_log_probs = TF.log_softmax(logits.reshape(B, K, V), axis=-1)  # (B, K, V)
            step_log_probs = torch.where(finished[..., None], pad_only, _without_pad(step_log_probs, pad_id))
            cand_log_probs = log_probs[..., None] + step_log_probs  # (B, K, V)
            cand_lengths = torch.where(finished, lengths, t)[..., None].expand(B, K, V)  # (B, K, V)
            cand_scores = cand_log_probs / cand_lengths.to(dtype) ** length_penalty  # (B, K, V)
            # the best K of the K * V candidates of every source; stable, so ties keep the lower index
            best = torch.sort(cand_scores.reshape(B, K * V), dim=1, descending=True, stable=True).indices[:, :K]
            parent, token = best // V, best % V  # (B, K)
            tokens = torch.take_along_dim(tokens, parent[..., None], dim=1)  # (B, K, 1 + max_len)
            tokens[:, :, t] = token
            log_probs = torch.take_along_dim(cand_log_probs.reshape(B, K * V), best, dim=1)  # (B, K)
            scores = torch.take_along_dim(cand_scores.reshape(B, K * V), best, dim=1)  # (B, K)
            lengths = torch.take_along_dim(cand_lengths.reshape(B, K * V), best, dim=1)  # (B, K)
            finished = torch.take_along_dim(finished, parent, dim=1) | (token == eos_id)  # (B, K)
            if t == max_len or bool(torch.all(finished | (log_probs == -math.inf))):
                break
            rows = (torch.arange(B, device=device)[:, None] * K + parent).reshape(B * K)  # rows b * K + parent
            decoder.reorder(rows)
            logits, _ = decoder.step(token.reshape(B * K))  # (B * K, V)
    L = 1 + t
    return BeamSearchResult(
        tokens=tokens[:, 0, : 1 + int(lengths[:, 0].max())],  # (B, 1 + longest best hypothesis)
        scores=scores[:, 0],
        log_probs=log_probs[:, 0],
        lengths=lengths[:, 0],
        beam_tokens=tokens[:, :, :L],
        beam_scores=scores,
    )


# ---------------------------------------------------------------------------- helpers


def _without_pad(scores: torch.Tensor, pad_id: int) -> torch.Tensor:
    """A copy of ``scores`` (..., V) with the pad column at ``-inf``: decoding never chooses pad."""
    out = scores.clone()
    out[..., pad_id] = -math.inf
    return out


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch ``model`` to eval mode; afterwards give every module back its own previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _device_of(model: Transformer) -> torch.device:
    return model.tgt_embed.weight.device


def _dtype_of(model: Transformer) -> torch.dtype:
    return model.tgt_embed.weight.dtype


def _check_model(model: object) -> None:
    if not isinstance(model, Transformer):
        raise TypeError(f"model: expected a torch_transformer Transformer, got {type(model).__name__}")


def _check_src(model: Transformer, src: object) -> torch.Tensor:
    """``src`` must be (B, S) integer ids, ``B, S >= 1``, ``S <= max_len``, inside the source vocabulary."""
    if isinstance(src, np.ndarray):
        if not np.issubdtype(src.dtype, np.integer):
            raise TypeError(f"src: expected an integer dtype, got {src.dtype}")
        src = torch.from_numpy(src.astype(np.int64))
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"src: expected a torch.Tensor or numpy.ndarray of integers, got {type(src).__name__}")
    if src.is_floating_point() or src.is_complex() or src.dtype == torch.bool:
        raise TypeError(f"src: expected an integer dtype, got {src.dtype}")
    config = model.config
    if src.ndim != 2 or src.shape[0] < 1 or src.shape[1] < 1:
        raise ValueError(f"src: expected token ids of shape (B, S) with B, S >= 1, got {tuple(src.shape)}")
    if src.shape[1] > config.max_len:
        raise ValueError(f"src: expected length <= max_len={config.max_len}, got {src.shape[1]}")
    low, high = int(src.min()), int(src.max())
    if low < 0 or high >= config.src_vocab_size:
        raise ValueError(f"src: expected token ids in [0, {config.src_vocab_size}), got range [{low}, {high}]")
    return src.long()
