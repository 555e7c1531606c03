r"""The steppers of the NumPy seq2seq models: what greedy and beam search step, one file for every model.

Shape legend: ``B`` rows, ``S`` source length, ``C`` d_model, ``H`` heads, ``D = C // H``,
``V`` target vocabulary size. :func:`stepping` picks the :class:`~numpy_transformer.inference.protocol.Steppable`
of a model: :class:`TransformerStepping` (:class:`IncrementalDecoder`, a key/value cache, or
the whole prefix at every step) and :class:`RNNSeq2SeqStepping` (the recurrent state,
:class:`RNNStepper`). The twin's models have theirs in ``torch_transformer.steppers``.

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

from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from ..config import RNNSeq2SeqConfig, TransformerConfig
from ..functional.checks import check_float_array, check_int, check_token_ids
from ..functional.linear import linear_forward
from ..models.rnn_seq2seq import RNNSeq2Seq
from ..models.transformer import Transformer
from ..modules.kv_cache import DecoderLayerKV, cached_decoder_layer, check_rows
from .protocol import FullPrefixStepper, Steppable, Stepper, check_step_ids

__all__ = [
    "IncrementalDecoder",
    "RNNSeq2SeqStepping",
    "RNNStepper",
    "TransformerStepping",
    "decode_last_position",
    "stepping",
]


def stepping(model: Transformer | RNNSeq2Seq | Steppable) -> Steppable:
    """The :class:`Steppable` the searches drive for ``model``.

    A NumPy :class:`Transformer` or :class:`RNNSeq2Seq` gets its own; anything that already
    is a Steppable (the twin's, ``torch_transformer.steppers.stepping(twin)``) is used as it is.
    """
    if isinstance(model, Transformer):
        return TransformerStepping(model)
    if isinstance(model, RNNSeq2Seq):
        return RNNSeq2SeqStepping(model)
    if isinstance(model, Steppable):
        return model
    raise TypeError(
        "model: expected a numpy_transformer Transformer or RNNSeq2Seq, or a Steppable "
        f"(for the twin: torch_transformer.steppers.stepping(model)), got {type(model).__name__}"
    )


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
