r"""Greedy and beam search, written once against a stepping protocol, and the steppers of the seq2seq models.

Shape legend: ``B`` batch, ``K`` beams per source sentence, ``S`` source length,
``L`` decoded length including ``bos``, ``C`` d_model, ``H`` heads, ``D = C // H``,
``V`` target vocabulary size, ``R`` rows a stepper runs (``B`` for greedy, ``B * K`` for beam).

The stepping protocol
---------------------
:func:`greedy_decode` and :func:`beam_search` know nothing of any model. They drive a
:class:`Steppable` — the facts of a model (``config.tgt_vocab_size``, ``config.pad_id``,
``config.max_len``, ``dtype``), its source check, its eval mode, and
``start(src, copies, capacity, use_cache)``, which encodes the source once and returns a
:class:`Stepper` over ``R = B * copies`` rows (row ``b * copies + k`` reads source ``b``).
A stepper has three parts: ``batch_size`` (R), ``step(token_ids)`` — feed one token per
row, get the logits (R, V) of the next position and the attention (R, H, S) for heatmaps
(or ``None``) — and ``reorder(rows)``, which makes row ``i`` a copy of old row ``rows[i]``
(beam search keeps its survivors). Token ids go in and logits come out as NumPy arrays,
whatever the model computes with.

:func:`stepping` picks the Steppable of a model: :class:`TransformerStepping` (a key/value
cache, :class:`IncrementalDecoder`, or the whole prefix at every step) and
:class:`RNNSeq2SeqStepping` (the recurrent state, :class:`RNNStepper`). The PyTorch twin's
models get theirs from ``torch_transformer.search.stepping(twin)``, which the searches take
as it is; so the twin has steppers, not search loops.

Token conventions
-----------------
Every decoded sequence starts with ``bos_id`` and ends with ``eos_id`` or at
``max_len`` generated tokens; after its ``eos`` a sequence holds ``config.pad_id``.
``bos_id`` and ``eos_id`` are arguments (defaults 1 and 2), never hard-coded.

Decisions worth knowing
-----------------------
* **Pad is never generated.** The Transformer masks padded target positions out of
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
* **Eval mode.** Decoding runs with dropout off: the searches switch the model to eval
  mode and restore every module's previous mode afterwards.
  :class:`IncrementalDecoder` refuses a model in training mode.

The key/value cache
-------------------
Calling ``model.decode`` on the whole prefix at step ``t`` recomputes every
earlier position: ``O(t)`` work in every projection and feed-forward, ``O(t^2)``
in self-attention, and the cross-attention keys and values of the memory again.
:class:`IncrementalDecoder` runs the decoder one position at a time instead, with one
:class:`~numpy_transformer.modules.kv_cache.DecoderLayerKV` per layer (the cache the GPT's
generation uses too): the cross-attention keys and values ``k_proj(memory)``,
``v_proj(memory)`` computed once, and each new token's self-attention key and value
appended, so step ``t`` projects one position and attends over ``t + 1`` cached keys:
``O(t)`` work. It calls the model's own modules and functional ops, so its logits equal
``model.decode`` on the whole prefix to rounding (the parity contract).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..config import RNNSeq2SeqConfig, TransformerConfig, check_special_ids
from ..functional.checks import check_float_array, check_int, check_int_array, check_token_ids
from ..functional.linear import linear_forward
from ..functional.softmax import log_softmax_forward
from ..models.rnn_seq2seq import RNNSeq2Seq
from ..models.transformer import Transformer
from ..modules.kv_cache import DecoderLayerKV, cached_decoder_layer, check_rows

__all__ = [
    "BeamSearchResult",
    "DecodeResult",
    "FullPrefixStepper",
    "IncrementalDecoder",
    "RNNSeq2SeqStepping",
    "RNNStepper",
    "Steppable",
    "Stepper",
    "TransformerStepping",
    "beam_search",
    "check_step_ids",
    "decode_last_position",
    "greedy_decode",
    "stepping",
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
        The attention over the source at every step, for heatmaps: the last decoder
        layer's (Transformer), the one attention as ``H = 1`` (recurrent model);
        ``None`` when the decoder has no layers.
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


# ---------------------------------------------------------------------------- the stepping protocol


class Stepper(Protocol):
    """One decoding run over ``R`` rows of prefixes, fed one token per row at a time."""

    @property
    def batch_size(self) -> int:
        """``R``, the rows."""
        ...

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Feed ``token_ids`` (R,) int at the next position.

        Returns the logits (R, V) for the position after it, and the attention over the
        source there (R, H, S), or ``None`` when the model has none to show.
        """
        ...

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` a copy of old row ``rows[i]`` (``rows`` (R,) int, repeats allowed)."""
        ...


@runtime_checkable
class Steppable(Protocol):
    """What :func:`greedy_decode` and :func:`beam_search` decode: a model's facts, and how to start a Stepper."""

    @property
    def config(self) -> TransformerConfig | RNNSeq2SeqConfig:
        """The searches read ``tgt_vocab_size`` (V), ``pad_id`` and ``max_len`` (the most steps)."""
        ...

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the logits."""
        ...

    def check_src(self, src: object) -> np.ndarray:
        """``src`` as a (B, S) NumPy integer array the model accepts; ValueError / TypeError naming ``src``."""
        ...

    def eval_mode(self) -> AbstractContextManager[object]:
        """Eval mode for a ``with`` block, every module's own mode restored afterwards."""
        ...

    def start(self, src: np.ndarray, copies: int, capacity: int, use_cache: bool) -> Stepper:
        """Encode ``src`` (B, S) once; a stepper over ``B * copies`` rows (row ``b * copies + k`` reads source ``b``).

        ``capacity``: the most tokens that will be fed per row. ``use_cache`` False: the
        reference stepper, the model's full forward on the whole prefix at every step.
        """
        ...


def stepping(model: Transformer | RNNSeq2Seq | Steppable) -> Steppable:
    """The :class:`Steppable` the searches drive for ``model``.

    A NumPy :class:`Transformer` or :class:`RNNSeq2Seq` gets its own; anything that already
    is a Steppable (the twin's, ``torch_transformer.search.stepping(twin)``) is used as it is.
    """
    if isinstance(model, Transformer):
        return TransformerStepping(model)
    if isinstance(model, RNNSeq2Seq):
        return RNNSeq2SeqStepping(model)
    if isinstance(model, Steppable):
        return model
    raise TypeError(
        "model: expected a numpy_transformer Transformer or RNNSeq2Seq, or a Steppable "
        f"(for the twin: torch_transformer.search.stepping(model)), got {type(model).__name__}"
    )


def check_step_ids(token_ids: object, batch_size: int, vocab_size: int) -> np.ndarray:
    """``token_ids`` must be an int array of shape (R,) with ids in ``[0, V)``, as :meth:`Stepper.step` takes."""
    token_ids = check_int_array("token_ids", token_ids)
    if token_ids.shape != (batch_size,):
        raise ValueError(f"token_ids: expected shape ({batch_size},), got {token_ids.shape}")
    if token_ids.min() < 0 or token_ids.max() >= vocab_size:
        raise ValueError(
            f"token_ids: expected ids in [0, {vocab_size}), got range [{token_ids.min()}, {token_ids.max()}]"
        )
    return token_ids


class FullPrefixStepper:
    """The reference :class:`Stepper`: every step runs the model's full forward on the whole prefix fed so far.

    ``last_position(prefix, rows)`` receives the prefix (R, t) and, per row, the started row it
    descends from (reorders compose), and returns the last position's logits (R, V) and
    attention (R, H, S) or None. No state but the tokens: nothing cached, nothing to go stale.
    """

    def __init__(
        self,
        last_position: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]],
        batch_size: int,
        capacity: int,
        vocab_size: int,
        pad_id: int,
    ) -> None:
        self.last_position = last_position
        self.vocab_size = vocab_size
        self.tokens = np.full((batch_size, capacity), pad_id, dtype=np.int64)  # (R, capacity) every token fed
        self.rows = np.arange(batch_size)  # (R,) the started row each row descends from
        self.length = 0  # positions fed so far

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        check_step_ids(token_ids, self.batch_size, self.vocab_size)
        if self.length == self.tokens.shape[1]:
            raise ValueError(f"capacity: all {self.tokens.shape[1]} positions are fed; start with a larger capacity")
        t = self.length
        self.tokens[:, t] = token_ids
        self.length = t + 1
        return self.last_position(self.tokens[:, : t + 1], self.rows)

    def reorder(self, rows: np.ndarray) -> None:
        rows = check_rows(rows, self.batch_size)
        self.tokens[:, : self.length] = self.tokens[rows, : self.length]
        self.rows = self.rows[rows]


# ---------------------------------------------------------------------------- the Transformer


class IncrementalDecoder:
    """The :class:`Stepper` of a :class:`Transformer`: its decoder one target position at a time, with a KV cache.

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
        if not isinstance(model, Transformer):
            raise TypeError(f"model: expected a numpy_transformer Transformer, got {type(model).__name__}")
        if any(m.training for m in model.modules()):
            raise ValueError(
                "model: expected eval mode (call model.eval()); the cache computes the forward without dropout"
            )
        config = model.config
        src = TransformerStepping(model).check_src(src)
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
        self.layers = [DecoderLayerKV.start(layer, memory, self.capacity) for layer in model.decoder.layers]

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
        check_step_ids(token_ids, self.batch_size, config.tgt_vocab_size)
        if self.length == self.capacity:
            raise ValueError(f"capacity: all {self.capacity} positions are fed; build a decoder with a larger capacity")
        t = self.length
        self.tokens[:, t] = token_ids
        self.length = t + 1

        # The model's target embedding at one position (dropout is off in eval mode):
        # x = embed(token) * sqrt(C) + PE[t]
        embedded, _ = model.tgt_embed.forward(token_ids[:, None])  # (B, 1, C)
        x = embedded * model.embed_scale + model.pe[t : t + 1]  # (B, 1, C)
        # The target mask's row t: keys 0..t (causal), padded positions excluded.
        self_mask = (self.tokens[:, : t + 1] != config.pad_id)[:, None, None, :]  # (B, 1, 1, t + 1)
        cross_attention = None
        for i, layer in enumerate(model.decoder.layers):
            x, cross_attention, self.layers[i] = cached_decoder_layer(
                layer, x, self.layers[i], self_mask, self.memory_mask
            )  # (B, 1, C), (B, H, 1, S)
        if model.decoder.norm is not None:
            x, _ = model.decoder.norm.forward(x)
        weight = model.tgt_embed.weight if model.out_proj is None else model.out_proj.weight  # (V, C)
        logits, _ = linear_forward(x, weight)  # (B, 1, V)
        return logits[:, 0], None if cross_attention is None else cross_attention[:, :, 0]

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` of the cache a copy of old row ``rows[i]`` (beam search keeps its survivors).

        ``rows``: int array of shape (B,), entries in ``[0, B)``; repeats allowed.
        """
        rows = check_rows(rows, self.batch_size)
        for kv in self.layers:
            kv.reorder(rows)  # (B, H, t, D) and (B, H, S, D), in place
        t = self.length
        self.tokens[:, :t] = self.tokens[rows, :t]  # (B, t)
        self.memory_mask = self.memory_mask[rows]  # (B, 1, 1, S)


def decode_last_position(
    model: Transformer, prefix: np.ndarray, memory: np.ndarray, src: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """``model.decode`` on the whole prefix (B, t); keep the last position's logits (B, V) and weights (B, H, S)."""
    logits, cache = model.decode(prefix, memory, src)  # (B, t, V)
    layer_caches = cache.decoder.layers
    attention = layer_caches[-1].ca.weights[:, :, -1] if layer_caches else None  # (B, H, S)
    return logits[:, -1], attention


@dataclass(frozen=True)
class TransformerStepping:
    """The :class:`Steppable` of a NumPy :class:`Transformer`: the encoder once, then the decoder step by step."""

    model: Transformer

    @property
    def config(self) -> TransformerConfig:
        return self.model.config

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    def check_src(self, src: object) -> np.ndarray:
        """(B, S) integer ids, ``B, S >= 1``, ``S <= max_len``, inside the source vocabulary."""
        return check_token_ids("src", src, self.config.src_vocab_size, self.config.max_len)

    def eval_mode(self) -> AbstractContextManager[object]:
        return self.model.eval_mode()

    def start(self, src: np.ndarray, copies: int, capacity: int, use_cache: bool) -> Stepper:
        """:class:`IncrementalDecoder` (``use_cache``) or ``model.decode`` on the whole prefix every step."""
        model = self.model
        memory, _ = model.encode(src)  # (B, S, C)
        if copies > 1:  # row b * copies + k reads source b
            memory, src = np.repeat(memory, copies, axis=0), np.repeat(src, copies, axis=0)
        if use_cache:
            return IncrementalDecoder(model, memory, src, capacity)
        return FullPrefixStepper(
            lambda prefix, rows: decode_last_position(model, prefix, memory[rows], src[rows]),
            src.shape[0],
            capacity,
            self.config.tgt_vocab_size,
            self.config.pad_id,
        )


# ---------------------------------------------------------------------------- the recurrent model


class RNNStepper:
    """The :class:`Stepper` of an :class:`RNNSeq2Seq`: the decoder state (B, H) is all it carries from step to step.

    ``enc`` (B, S, H), ``state`` (B, H) and ``mask`` (B, S) as :meth:`RNNSeq2Seq.encode` gives them.
    """

    def __init__(self, model: RNNSeq2Seq, enc: np.ndarray, state: np.ndarray, mask: np.ndarray) -> None:
        self.model = model
        self.enc, self.state, self.mask = enc, state, mask

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, V) and the attention weights as one head (B, 1, S)."""
        model = self.model
        check_step_ids(token_ids, self.batch_size, model.config.tgt_vocab_size)
        y, _ = model.tgt_embed.forward(token_ids)  # (B, E)
        logits, self.state, weights = model.decode_step(y, self.state, self.enc, self.mask)  # (B, V), (B, H), (B, S)
        return logits, weights[:, None]

    def reorder(self, rows: np.ndarray) -> None:
        rows = check_rows(rows, self.batch_size)
        self.enc, self.state, self.mask = self.enc[rows], self.state[rows], self.mask[rows]


@dataclass(frozen=True)
class RNNSeq2SeqStepping:
    """The :class:`Steppable` of a NumPy :class:`RNNSeq2Seq`."""

    model: RNNSeq2Seq

    @property
    def config(self) -> RNNSeq2SeqConfig:
        return self.model.config

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    def check_src(self, src: object) -> np.ndarray:
        """(B, S) integer ids inside the source vocabulary; no length limit (no position table)."""
        return check_token_ids("src", src, self.config.src_vocab_size)

    def eval_mode(self) -> AbstractContextManager[object]:
        return self.model.eval_mode()

    def start(self, src: np.ndarray, copies: int, capacity: int, use_cache: bool) -> Stepper:
        """:class:`RNNStepper` (``use_cache``) or the teacher-forced ``model.forward`` on the whole prefix."""
        model = self.model
        if not use_cache:
            src = np.repeat(src, copies, axis=0)
            return FullPrefixStepper(
                lambda prefix, rows: _last_forward_position(model, src[rows], prefix),
                src.shape[0],
                capacity,
                self.config.tgt_vocab_size,
                self.config.pad_id,
            )
        enc, state, mask, _ = model.encode(src)  # (B, S, H), (B, H), (B, S)
        if copies > 1:  # row b * copies + k reads source b
            enc, state, mask = (np.repeat(a, copies, axis=0) for a in (enc, state, mask))
        return RNNStepper(model, enc, state, mask)


def _last_forward_position(model: RNNSeq2Seq, src: np.ndarray, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced ``model.forward(src, prefix)``: the last position's logits (B, V) and weights (B, 1, S)."""
    logits, cache = model.forward(src, prefix)  # (B, t, V)
    return logits[:, -1], cache.weights[:, None, -1]


# ---------------------------------------------------------------------------- greedy


def greedy_decode(
    model: Transformer | RNNSeq2Seq | Steppable,
    src: np.ndarray,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    use_cache: bool = True,
) -> DecodeResult:
    """Decode the whole batch together, choosing the most likely token at every step.

    Parameters
    ----------
    model : Transformer, RNNSeq2Seq or Steppable
        Switched to eval mode for the call; every module's mode is restored afterwards.
        The twin: ``torch_transformer.search.stepping(twin)``.
    src : ndarray of int, shape (B, S)
        Source ids, padded with ``config.pad_id`` (the twin's Steppable also takes a tensor).
    max_len : int
        Most tokens generated per row, ``eos`` included; ``1 <= max_len <= config.max_len``.
    bos_id, eos_id : int
        Start and end tokens (not ``config.pad_id``).
    use_cache : bool
        True: the model's stepper (the Transformer's :class:`IncrementalDecoder`, ``O(t)`` per
        step; the recurrent state). False: the model's full forward on the whole prefix at
        every step (the reference; same tokens and logits).

    Returns
    -------
    DecodeResult
        ``tokens`` (B, L), ``logits`` (B, L - 1, V), ``cross_attention`` (B, H, L - 1, S),
        ``lengths`` (B,). Decoding stops when every row has emitted ``eos`` or after
        ``max_len`` steps, so ``L = 1 + max(lengths)``. A finished row emits ``pad_id``.
        ``pad_id`` itself is never chosen (see the module docstring).
    """
    steps = stepping(model)
    src = steps.check_src(src)
    max_len = check_int("max_len", max_len, 1, steps.config.max_len)
    check_special_ids(steps.config, bos_id, eos_id)
    if not isinstance(use_cache, (bool, np.bool_)):
        raise TypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    pad_id = steps.config.pad_id
    B = src.shape[0]
    tokens = np.full((B, 1 + max_len), pad_id, dtype=np.int64)  # (B, 1 + max_len), trimmed at the end
    tokens[:, 0] = bos_id
    lengths = np.full(B, max_len, dtype=np.int64)
    finished = np.zeros(B, dtype=bool)
    step_logits, step_attention = [], []
    with steps.eval_mode():
        stepper = steps.start(src, 1, max_len, bool(use_cache))
        for t in range(1, max_len + 1):
            # logits for position t, from the t tokens so far
            logits, attention = stepper.step(tokens[:, t - 1])  # (B, V), (B, H, S)
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


# ---------------------------------------------------------------------------- beam search


def beam_search(
    model: Transformer | RNNSeq2Seq | Steppable,
    src: np.ndarray,
    beam_size: int,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
    length_penalty: float = 1.0,
    use_cache: bool = True,
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
    model : Transformer, RNNSeq2Seq or Steppable
        Switched to eval mode for the call; every module's mode is restored afterwards.
        The twin: ``torch_transformer.search.stepping(twin)``.
    src : ndarray of int, shape (B, S)
    beam_size : int
        ``K >= 1``. ``K = 1`` gives exactly :func:`greedy_decode`'s tokens.
    max_len : int
        Most tokens generated, ``eos`` included; ``1 <= max_len <= config.max_len``.
    bos_id, eos_id : int
    length_penalty : float
        :math:`\alpha` (finite).
    use_cache : bool
        As for :func:`greedy_decode`.

    Returns
    -------
    BeamSearchResult
        The best hypothesis per source (``tokens`` (B, L), ``scores``, ``log_probs``,
        ``lengths``; ``sequences()`` as a list) and every final beam, best first.
    """
    steps = stepping(model)
    src = steps.check_src(src)
    K = check_int("beam_size", beam_size, 1, None)
    max_len = check_int("max_len", max_len, 1, steps.config.max_len)
    check_special_ids(steps.config, bos_id, eos_id)
    if not isinstance(length_penalty, (int, float, np.integer, np.floating)) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty: expected a finite number, got {length_penalty!r}")
    if not isinstance(use_cache, (bool, np.bool_)):
        raise TypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    pad_id, V, dtype = steps.config.pad_id, steps.config.tgt_vocab_size, steps.dtype
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

    with steps.eval_mode():
        # Row b * K + k of the stepper is beam k of source b; every beam reads its source.
        stepper = steps.start(src, K, max_len, bool(use_cache))
        logits, _ = stepper.step(tokens[:, :, 0].reshape(B * K))  # (B * K, V)
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
            stepper.reorder((np.arange(B)[:, None] * K + parent).reshape(B * K))  # rows b * K + parent
            logits, _ = stepper.step(token.reshape(B * K))  # (B * K, V)
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
