r"""Decoding for the encoder–decoder Transformer: greedy, beam search, and a key/value cache.

Shape legend: ``B`` batch, ``K`` beams per source sentence, ``S`` source length,
``L`` decoded length including ``bos``, ``C`` d_model, ``H`` heads, ``D = C // H``,
``V`` target vocabulary size.

Token conventions
-----------------
Every decoded sequence starts with ``bos_id`` and ends with ``eos_id`` or at
``max_len`` generated tokens; after its ``eos`` a sequence holds ``config.pad_id``.
``bos_id`` and ``eos_id`` are arguments (defaults 1 and 2), never hard-coded.

Decisions worth knowing
-----------------------
* **Pad is never generated.** The model masks padded target positions out of
  self-attention, so a generated pad would be invisible to the later steps and
  indistinguishable from the padding after ``eos``. Greedy and beam search
  therefore choose among every token except ``pad_id``; the log-probabilities
  they add up are still the model's own (log-softmax over the whole vocabulary).
* **Length** of a hypothesis is its number of generated tokens, ``eos`` included
  and ``bos`` not: ``tokens[b, 1 : 1 + lengths[b]]``. A hypothesis that never
  emits ``eos`` has length ``max_len``.
* **Beam score** is length-normalised:
  :math:`\text{score} = \sum_i \log p(y_i \mid y_{<i}, x) / \text{length}^{\alpha}`
  with :math:`\alpha` = ``length_penalty`` (0: raw log-probability; 1: mean log-probability).
* **Eval mode.** Decoding runs with dropout off: the public functions switch the
  model to eval mode and restore every module's previous mode afterwards.
  :class:`IncrementalDecoder` refuses a model in training mode.

The key/value cache
-------------------
Calling ``model.decode`` on the whole prefix at step ``t`` recomputes every
earlier position: ``O(t)`` work in every projection and feed-forward, ``O(t^2)``
in self-attention, and the cross-attention keys and values of the memory again.
:class:`IncrementalDecoder` runs the decoder one position at a time instead. Per
decoder layer, it computes the cross-attention keys and values ``k_proj(memory)``,
``v_proj(memory)`` once, and appends each new token's self-attention key and value
to a buffer, so step ``t`` projects one position and attends over ``t + 1`` cached
keys: ``O(t)`` work. It calls the model's own
modules and functional ops (``q_proj.forward``, ``norm1.forward``,
``ff.forward``, ``scaled_dot_product_attention_forward``), so its logits equal
``model.decode`` on the whole prefix to rounding (the parity contract).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import check_special_ids
from ..functional.attention import scaled_dot_product_attention_forward
from ..functional.checks import check_float_array, check_int, check_int_array, check_token_ids
from ..functional.linear import linear_forward
from ..functional.softmax import log_softmax_forward
from ..models.transformer import Transformer
from ..modules.attention import MultiHeadAttention
from ..modules.transformer_layers import DecoderLayer

__all__ = [
    "BeamSearchResult",
    "DecodeResult",
    "IncrementalDecoder",
    "LayerKVCache",
    "beam_search",
    "greedy_decode",
]


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DecodeResult:
    """What :func:`greedy_decode` returns.

    Attributes
    ----------
    tokens : ndarray of int64, shape (B, L)
        ``bos_id`` first, then the generated tokens; ``pad_id`` after a row's ``eos``.
    logits : ndarray, shape (B, L - 1, V), the model's dtype
        ``logits[:, t]`` are the logits from which ``tokens[:, t + 1]`` was chosen.
        After a row's ``eos`` they are the model's logits for its pad inputs (computed,
        but meaningless).
    cross_attention : ndarray, shape (B, H, L - 1, S), or None
        Cross-attention probabilities of the last decoder layer at every step, for
        heatmaps; ``None`` when the decoder has no layers.
    lengths : ndarray of int64, shape (B,)
        Generated tokens per row, ``eos`` included: ``tokens[b, 1 : 1 + lengths[b]]``.
    """

    tokens: np.ndarray  # (B, L) int64
    logits: np.ndarray  # (B, L - 1, V)
    cross_attention: np.ndarray | None  # (B, H, L - 1, S)
    lengths: np.ndarray  # (B,) int64


@dataclass(frozen=True)
class BeamSearchResult:
    """What :func:`beam_search` returns: the best hypothesis per source, and every beam.

    Attributes
    ----------
    tokens : ndarray of int64, shape (B, 1 + max(lengths))
        The best hypothesis per source: ``bos_id`` first, ``pad_id`` after ``eos``;
        as long as the longest of them (the layout of :class:`DecodeResult`).
    scores : ndarray, shape (B,)
        Its length-normalised score, ``log_probs / lengths ** length_penalty``.
    log_probs : ndarray, shape (B,)
        Its summed log-probability (``eos`` included).
    lengths : ndarray of int64, shape (B,)
        Its generated tokens, ``eos`` included.
    beam_tokens : ndarray of int64, shape (B, K, L)
        Every final beam, best first; ``L - 1`` is the number of steps taken.
    beam_scores : ndarray, shape (B, K)
        Their scores, descending. ``-inf`` marks a beam that holds no hypothesis
        (when fewer than ``K`` sequences of length ``<= max_len`` exist).
    """

    tokens: np.ndarray  # (B, L) int64
    scores: np.ndarray  # (B,)
    log_probs: np.ndarray  # (B,)
    lengths: np.ndarray  # (B,) int64
    beam_tokens: np.ndarray  # (B, K, L) int64
    beam_scores: np.ndarray  # (B, K)

    def sequences(self) -> list[np.ndarray]:
        """The best hypothesis per source without padding: ``bos``, generated tokens, ``eos`` if any."""
        return [row[: 1 + n] for row, n in zip(self.tokens, self.lengths, strict=True)]


# ---------------------------------------------------------------------------- the key/value cache


@dataclass(frozen=True)
class LayerKVCache:
    """The keys and values one decoder layer keeps between steps.

    The arrays are fixed; :class:`IncrementalDecoder` writes into them. Only the
    first ``length`` positions of the self-attention buffers are filled.
    """

    self_keys: np.ndarray  # (B, H, capacity, D) k_proj of every target position so far
    self_values: np.ndarray  # (B, H, capacity, D) v_proj of every target position so far
    cross_keys: np.ndarray  # (B, H, S, D) k_proj(memory), computed once
    cross_values: np.ndarray  # (B, H, S, D) v_proj(memory), computed once


class IncrementalDecoder:
    """Run a :class:`Transformer`'s decoder one target position at a time, with a key/value cache.

    ``step(token_ids)`` feeds the token at the next position and returns the logits
    for the position after it; they equal ``model.decode(prefix, memory, src)[:, -1]``
    on the whole prefix fed so far.

    Parameters
    ----------
    model : Transformer
        In eval mode (``model.eval()``): the cache computes the dropout-free forward.
    memory : ndarray, shape (B, S, C)
        The encoder output, ``model.encode(src)[0]``.
    src : ndarray of int, shape (B, S)
        The source ids, for the source padding mask.
    capacity : int, optional
        Most positions that will be fed, at most ``config.max_len`` (the default).

    Notes
    -----
    Self-attention at the new position ``t`` uses the model's target mask restricted
    to one query row: keys ``0..t`` (causal), except positions holding ``pad_id``.
    """

    def __init__(self, model: Transformer, memory: np.ndarray, src: np.ndarray, capacity: int | None = None) -> None:
        _check_model(model)
        if any(m.training for m in model.modules()):
            raise ValueError(
                "model: expected eval mode (call model.eval()); the cache computes the forward without dropout"
            )
        config = model.config
        src = _check_src(model, src)
        B, S = src.shape
        check_float_array("memory", memory)
        if memory.shape != (B, S, config.d_model):
            raise ValueError(f"memory: expected shape ({B}, {S}, {config.d_model}) to match src, got {memory.shape}")
        if memory.dtype != model.dtype:
            raise TypeError(f"memory: expected dtype {model.dtype} (the model's), got {memory.dtype}")
        capacity = config.max_len if capacity is None else capacity
        self.capacity = check_int("capacity", capacity, 1, config.max_len)
        self.model = model
        self.memory_mask = model.source_mask(src)  # (B, 1, 1, S)
        self.tokens = np.full((B, self.capacity), config.pad_id, dtype=np.int64)  # every token fed, by position
        self.length = 0  # positions fed so far
        H, D = config.n_heads, config.d_model // config.n_heads
        self.layers: list[LayerKVCache] = []
        for layer in model.decoder.layers:
            mha = layer.cross_attn
            cross_keys, _ = mha.k_proj.forward(memory)  # (B, S, C)
            cross_values, _ = mha.v_proj.forward(memory)  # (B, S, C)
            self.layers.append(
                LayerKVCache(
                    self_keys=np.zeros((B, H, self.capacity, D), dtype=model.dtype),
                    self_values=np.zeros((B, H, self.capacity, D), dtype=model.dtype),
                    cross_keys=mha.split_heads(cross_keys),  # (B, H, S, D)
                    cross_values=mha.split_heads(cross_values),  # (B, H, S, D)
                )
            )

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Feed one token per row at position ``self.length``.

        Parameters
        ----------
        token_ids : ndarray of int, shape (B,)

        Returns
        -------
        logits : ndarray, shape (B, V)
            Logits for the next position.
        cross_attention : ndarray, shape (B, H, S), or None
            The last decoder layer's cross-attention probabilities at this position
            (``None`` without decoder layers).
        """
        model = self.model
        config = model.config
        check_int_array("token_ids", token_ids)
        if token_ids.shape != (self.batch_size,):
            raise ValueError(f"token_ids: expected shape ({self.batch_size},), got {token_ids.shape}")
        if token_ids.min() < 0 or token_ids.max() >= config.tgt_vocab_size:
            raise ValueError(
                f"token_ids: expected ids in [0, {config.tgt_vocab_size}), "
                f"got range [{token_ids.min()}, {token_ids.max()}]"
            )
        if self.length == self.capacity:
            raise ValueError(f"capacity: all {self.capacity} positions are fed; build a decoder with a larger capacity")
        t = self.length
        self.tokens[:, t] = token_ids
        self.length = t + 1

        # The model's target embedding at one position (dropout is off in eval mode):
        # x = embed(token) * sqrt(C) + PE[t]
        embedded, _ = model.tgt_embed.forward(token_ids[:, None])  # (B, 1, C)
        x = embedded * model._embed_scale + model._pe[t : t + 1]  # (B, 1, C)
        # The target mask's row t: keys 0..t (causal), padded positions excluded.
        self_mask = (self.tokens[:, : t + 1] != config.pad_id)[:, None, None, :]  # (B, 1, 1, t + 1)
        cross_attention = None
        for layer, kv in zip(model.decoder.layers, self.layers, strict=True):
            x, cross_attention = self._layer_step(layer, kv, x, self_mask)
        if model.decoder.norm is not None:
            x, _ = model.decoder.norm.forward(x)
        weight = model.tgt_embed.weight if model.out_proj is None else model.out_proj.weight  # (V, C)
        logits, _ = linear_forward(x, weight)  # (B, 1, V)
        return logits[:, 0], None if cross_attention is None else cross_attention[:, :, 0]

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` of the cache a copy of old row ``rows[i]`` (beam search keeps its survivors).

        ``rows``: int array of shape (B,), entries in ``[0, B)``; repeats allowed.
        """
        check_int_array("rows", rows)
        B, t = self.batch_size, self.length
        if rows.shape != (B,):
            raise ValueError(f"rows: expected shape ({B},), got {rows.shape}")
        if rows.min() < 0 or rows.max() >= B:
            raise ValueError(f"rows: expected entries in [0, {B}), got range [{rows.min()}, {rows.max()}]")
        for kv in self.layers:
            kv.self_keys[:, :, :t] = kv.self_keys[rows, :, :t]  # (B, H, t, D)
            kv.self_values[:, :, :t] = kv.self_values[rows, :, :t]
            kv.cross_keys[...] = kv.cross_keys[rows]  # (B, H, S, D)
            kv.cross_values[...] = kv.cross_values[rows]
        self.tokens[:, :t] = self.tokens[rows, :t]  # (B, t)
        self.memory_mask = self.memory_mask[rows]  # (B, 1, 1, S)

    # ------------------------------------------------------------ one layer, one position

    def _layer_step(
        self, layer: DecoderLayer, kv: LayerKVCache, x: np.ndarray, self_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``DecoderLayer.forward`` for the new position only: ``x`` (B, 1, C) -> (B, 1, C), weights (B, H, 1, S)."""
        if layer.norm_first:
            n1, _ = layer.norm1.forward(x)
            h1 = x + self._self_attention(layer.self_attn, kv, n1, self_mask)  # (B, 1, C)
            n2, _ = layer.norm2.forward(h1)
            b, weights = self._cross_attention(layer.cross_attn, kv, n2)
            h2 = h1 + b
            n3, _ = layer.norm3.forward(h2)
            f, _ = layer.ff.forward(n3)
            return h2 + f, weights
        h1, _ = layer.norm1.forward(x + self._self_attention(layer.self_attn, kv, x, self_mask))  # (B, 1, C)
        b, weights = self._cross_attention(layer.cross_attn, kv, h1)
        h2, _ = layer.norm2.forward(h1 + b)
        f, _ = layer.ff.forward(h2)
        y, _ = layer.norm3.forward(h2 + f)
        return y, weights

    def _self_attention(
        self, mha: MultiHeadAttention, kv: LayerKVCache, x: np.ndarray, self_mask: np.ndarray
    ) -> np.ndarray:
        """Append the new position's key and value, then attend over every cached position."""
        t = self.length - 1
        q, _ = mha.q_proj.forward(x)  # (B, 1, C)
        k, _ = mha.k_proj.forward(x)  # (B, 1, C)
        v, _ = mha.v_proj.forward(x)  # (B, 1, C)
        kv.self_keys[:, :, t : t + 1] = mha.split_heads(k)  # (B, H, 1, D) stored at position t
        kv.self_values[:, :, t : t + 1] = mha.split_heads(v)
        heads, _ = scaled_dot_product_attention_forward(
            mha.split_heads(q),  # (B, H, 1, D)
            kv.self_keys[:, :, : t + 1],  # (B, H, t + 1, D)
            kv.self_values[:, :, : t + 1],
            mask=self_mask,
        )  # (B, H, 1, D)
        out, _ = mha.out_proj.forward(mha.merge_heads(heads))  # (B, 1, C)
        return out

    def _cross_attention(
        self, mha: MultiHeadAttention, kv: LayerKVCache, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Attend over the memory's cached keys and values."""
        q, _ = mha.q_proj.forward(x)  # (B, 1, C)
        heads, attention = scaled_dot_product_attention_forward(
            mha.split_heads(q), kv.cross_keys, kv.cross_values, mask=self.memory_mask
        )  # (B, H, 1, D)
        out, _ = mha.out_proj.forward(mha.merge_heads(heads))  # (B, 1, C)
        return out, attention.weights  # (B, 1, C), (B, H, 1, S)


# ---------------------------------------------------------------------------- greedy


def greedy_decode(
    model: Transformer,
    src: np.ndarray,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    use_cache: bool = True,
) -> DecodeResult:
    """Decode the whole batch together, choosing the most likely token at every step.

    Parameters
    ----------
    model : Transformer
        Switched to eval mode for the call; every module's mode is restored afterwards.
    src : ndarray of int, shape (B, S)
        Source ids, padded with ``config.pad_id``.
    max_len : int
        Most tokens generated per row, ``eos`` included; ``1 <= max_len <= config.max_len``.
    bos_id, eos_id : int
        Start and end tokens (not ``config.pad_id``).
    use_cache : bool
        True: an :class:`IncrementalDecoder` (``O(t)`` per step). False: ``model.decode``
        on the whole prefix at every step (the reference; same tokens and logits).

    Returns
    -------
    DecodeResult
        ``tokens`` (B, L), ``logits`` (B, L - 1, V), ``cross_attention`` (B, H, L - 1, S),
        ``lengths`` (B,). Decoding stops when every row has emitted ``eos`` or after
        ``max_len`` steps, so ``L = 1 + max(lengths)``. A finished row emits ``pad_id``.
        ``pad_id`` itself is never chosen (see the module docstring).
    """
    _check_model(model)
    src = _check_src(model, src)
    max_len = check_int("max_len", max_len, 1, model.config.max_len)
    check_special_ids(model.config, bos_id, eos_id)
    if not isinstance(use_cache, (bool, np.bool_)):
        raise TypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    pad_id = model.config.pad_id
    B = src.shape[0]
    tokens = np.full((B, 1 + max_len), pad_id, dtype=np.int64)  # (B, 1 + max_len), trimmed at the end
    tokens[:, 0] = bos_id
    lengths = np.full(B, max_len, dtype=np.int64)
    finished = np.zeros(B, dtype=bool)
    step_logits, step_attention = [], []
    with model.eval_mode():
        memory, _ = model.encode(src)  # (B, S, C)
        decoder = IncrementalDecoder(model, memory, src, capacity=max_len) if use_cache else None
        for t in range(1, max_len + 1):
            # logits for position t, from the t tokens so far
            if decoder is not None:
                logits, attention = decoder.step(tokens[:, t - 1])  # (B, V), (B, H, S)
            else:
                logits, attention = _decode_last_position(model, tokens[:, :t], memory, src)
            step_logits.append(logits)
            step_attention.append(attention)
            chosen = _without_pad(logits, pad_id).argmax(axis=-1)  # (B,)
            tokens[:, t] = np.where(finished, pad_id, chosen)  # a finished row keeps emitting pad
            ends_now = ~finished & (tokens[:, t] == eos_id)
            lengths[ends_now] = t
            finished |= ends_now
            if finished.all():
                break
    L = 1 + len(step_logits)
    cross_attention = None if step_attention[0] is None else np.stack(step_attention, axis=2)  # (B, H, L - 1, S)
    return DecodeResult(
        tokens=tokens[:, :L],
        logits=np.stack(step_logits, axis=1),  # (B, L - 1, V)
        cross_attention=cross_attention,
        lengths=lengths,
    )


def _decode_last_position(
    model: Transformer, prefix: np.ndarray, memory: np.ndarray, src: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """``model.decode`` on the whole prefix (B, t); keep the last position's logits (B, V) and weights (B, H, S)."""
    logits, (_, _, (layer_caches, _), _) = model.decode(prefix, memory, src)  # (B, t, V)
    attention = layer_caches[-1].ca.weights[:, :, -1] if layer_caches else None  # (B, H, S)
    return logits[:, -1], attention


# ---------------------------------------------------------------------------- beam search


def beam_search(
    model: Transformer,
    src: np.ndarray,
    beam_size: int,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    length_penalty: float = 1.0,
) -> BeamSearchResult:
    r"""Beam search with length-normalised scores, vectorised over batch × beam.

    Every step extends each of the ``K`` beams of every source by every token but
    pad (a beam that has emitted ``eos`` only by pad, at log-probability 0, so its
    score stays as it is), scores all ``K * V`` candidates, and keeps the best ``K``
    per source (ties: the lower beam, then the lower token id, wins).

    .. math::
        \text{score}(y) = \frac{\sum_{i=1}^{n} \log p(y_i \mid y_{<i}, x)}{n^{\alpha}}

    where ``n`` is the number of generated tokens, ``eos`` included (``max_len``
    for a hypothesis still running at the end) and :math:`\alpha` = ``length_penalty``.
    Candidates are ranked by this score throughout, finished beams stay in the beam,
    and the search stops when every beam has finished or after ``max_len`` steps.

    Parameters
    ----------
    model : Transformer
        Switched to eval mode for the call; every module's mode is restored afterwards.
    src : ndarray of int, shape (B, S)
    beam_size : int
        ``K >= 1``. ``K = 1`` gives exactly :func:`greedy_decode`'s tokens.
    max_len : int
        Most tokens generated, ``eos`` included; ``1 <= max_len <= config.max_len``.
    bos_id, eos_id : int
    length_penalty : float
        :math:`\alpha` (finite).

    Returns
    -------
    BeamSearchResult
        The best hypothesis per source (``tokens`` (B, L), ``scores``, ``log_probs``,
        ``lengths``; ``sequences()`` as a list) and every final beam, best first.
    """
    _check_model(model)
    src = _check_src(model, src)
    K = check_int("beam_size", beam_size, 1, None)
    max_len = check_int("max_len", max_len, 1, model.config.max_len)
    check_special_ids(model.config, bos_id, eos_id)
    if not isinstance(length_penalty, (int, float, np.integer, np.floating)) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty: expected a finite number, got {length_penalty!r}")
    pad_id, V, dtype = model.config.pad_id, model.config.tgt_vocab_size, model.dtype
    alpha = dtype.type(length_penalty)
    B = src.shape[0]

    tokens = np.full((B, K, 1 + max_len), pad_id, dtype=np.int64)  # (B, K, 1 + max_len)
    tokens[:, :, 0] = bos_id
    # Only beam 0 is alive at first, so the K beams do not start as K copies of one hypothesis.
    log_probs = np.full((B, K), -np.inf, dtype=dtype)  # (B, K) summed log-probability
    log_probs[:, 0] = 0
    scores = log_probs.copy()  # (B, K) length-normalised
    lengths = np.zeros((B, K), dtype=np.int64)  # generated tokens, eos included
    finished = np.zeros((B, K), dtype=bool)
    # The one continuation of a finished beam: pad, at log-probability 0.
    pad_only = np.full(V, -np.inf, dtype=dtype)  # (V,)
    pad_only[pad_id] = 0

    with model.eval_mode():
        memory, _ = model.encode(src)  # (B, S, C)
        # Row b * K + k of the decoder is beam k of source b; every beam reads its source's memory.
        decoder = IncrementalDecoder(model, np.repeat(memory, K, axis=0), np.repeat(src, K, axis=0), max_len)
        logits, _ = decoder.step(tokens[:, :, 0].reshape(B * K))  # (B * K, V)
        for t in range(1, max_len + 1):
            step_log_probs, _ = log_softmax_forward(logits.reshape(B, K, V))  # (B, K, V)
            step_log_probs = np.where(finished[..., None], pad_only, _without_pad(step_log_probs, pad_id))
            cand_log_probs = log_probs[..., None] + step_log_probs  # (B, K, V)
            cand_lengths = np.broadcast_to(np.where(finished, lengths, t)[..., None], (B, K, V))  # (B, K, V)
            cand_scores = cand_log_probs / cand_lengths.astype(dtype) ** alpha  # (B, K, V)
            # the best K of the K * V candidates of every source; stable, so ties keep the lower index
            best = np.argsort(-cand_scores.reshape(B, K * V), axis=1, kind="stable")[:, :K]  # (B, K)
            parent, token = best // V, best % V  # (B, K): the beam extended, and by which token
            tokens = np.take_along_axis(tokens, parent[..., None], axis=1)  # (B, K, 1 + max_len)
            tokens[:, :, t] = token
            log_probs = np.take_along_axis(cand_log_probs.reshape(B, K * V), best, axis=1)  # (B, K)
            scores = np.take_along_axis(cand_scores.reshape(B, K * V), best, axis=1)  # (B, K)
            lengths = np.take_along_axis(cand_lengths.reshape(B, K * V), best, axis=1)  # (B, K)
            finished = np.take_along_axis(finished, parent, axis=1) | (token == eos_id)  # (B, K)
            # -inf: an empty beam (fewer than K hypotheses exist); nothing can revive it
            if t == max_len or np.all(finished | (log_probs == -np.inf)):
                break
            decoder.reorder((np.arange(B)[:, None] * K + parent).reshape(B * K))  # rows b * K + parent
            logits, _ = decoder.step(token.reshape(B * K))  # (B * K, V)
    L = 1 + t
    return BeamSearchResult(
        tokens=tokens[:, 0, : 1 + lengths[:, 0].max()],  # (B, 1 + longest best hypothesis)
        scores=scores[:, 0],
        log_probs=log_probs[:, 0],
        lengths=lengths[:, 0],
        beam_tokens=tokens[:, :, :L],
        beam_scores=scores,
    )


# ---------------------------------------------------------------------------- helpers


def _without_pad(scores: np.ndarray, pad_id: int) -> np.ndarray:
    """A copy of ``scores`` (..., V) with the pad column at ``-inf``: decoding never chooses pad."""
    out = scores.copy()
    out[..., pad_id] = -np.inf
    return out


def _check_model(model: object) -> None:
    if not isinstance(model, Transformer):
        raise TypeError(f"model: expected a numpy_transformer Transformer, got {type(model).__name__}")


def _check_src(model: Transformer, src: object) -> np.ndarray:
    """``src`` must be (B, S) integer ids, ``B, S >= 1``, ``S <= max_len``, inside the source vocabulary."""
    return check_token_ids("src", src, model.config.src_vocab_size, model.config.max_len)
