"""Twin of ``numpy_transformer.inference.steppers``: the twin's steppers, for the one greedy and beam search.

The searches live only in the NumPy half; the twin provides what they step.
:func:`stepping` gives a twin model's :class:`~numpy_transformer.inference.search.Steppable`::

    from numpy_transformer.inference import beam_search, greedy_decode
    from torch_transformer.steppers import stepping

    result = greedy_decode(stepping(twin), src, max_len)  # NumPy arrays, computed by the twin

The model computes on its own device (``cuda`` included) under ``torch.no_grad``; token ids
go in and logits come out as NumPy arrays (the protocol's), so the search's arithmetic —
log-softmax, scores, the arg-max — is the NumPy half's on the twin's logits.

Shape legend: ``R`` rows (batch × beams), ``S`` source length, ``C`` d_model, ``H`` heads,
``V`` target vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from numpy_transformer.config import RNNSeq2SeqConfig, TransformerConfig
from numpy_transformer.functional.checks import check_int, check_token_ids
from numpy_transformer.inference.protocol import FullPrefixStepper, Stepper, check_step_ids
from numpy_transformer.modules.kv_cache import check_rows

from .kv_cache import DecoderLayerKV, cached_decoder_layer
from .rnn_seq2seq import RNNSeq2Seq
from .transformer import Transformer

__all__ = [
    "IncrementalDecoder",
    "RNNSeq2SeqStepping",
    "RNNStepper",
    "TransformerStepping",
    "decode_last_position",
    "eval_mode",
    "stepping",
]


def stepping(model: Transformer | RNNSeq2Seq) -> TransformerStepping | RNNSeq2SeqStepping:
    """The Steppable of a twin model, for ``numpy_transformer.inference.search``'s searches."""
    if isinstance(model, Transformer):
        return TransformerStepping(model)
    if isinstance(model, RNNSeq2Seq):
        return RNNSeq2SeqStepping(model)
    raise TypeError(f"model: expected a torch_transformer Transformer or RNNSeq2Seq, got {type(model).__name__}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for a ``with`` block; afterwards every module gets back its own previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def source_ids(src: object, vocab_size: int, max_len: int | None) -> np.ndarray:
    """``src`` (B, S), a NumPy array or an integer tensor, checked as the NumPy half checks it."""
    if isinstance(src, torch.Tensor):
        src = src.detach().cpu().numpy()
    return check_token_ids("src", src, vocab_size, max_len)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def numpy_dtype(model: nn.Module) -> np.dtype:
    """The NumPy dtype of the model's parameters (float32 or float64): its logits' dtype."""
    return torch.empty(0, dtype=next(model.parameters()).dtype).numpy().dtype


def on_device(ids: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(ids, dtype=np.int64), device=device)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


# ---------------------------------------------------------------------------- the Transformer


class IncrementalDecoder:
    """The twin's decoder one target position at a time, with its KV cache: NumPy ids in, NumPy logits out.

    ``step(token_ids)`` returns logits (R, V) equal to ``model.decode(prefix, memory, src)[:, -1]``
    and the last layer's cross-attention (R, H, S) or None. ``model`` must be in eval mode;
    ``memory`` (R, S, C) is ``model.encode(src)`` on the model's device; ``capacity``
    (default ``config.max_len``) bounds the positions fed.
    """

    def __init__(
        self, model: Transformer, memory: torch.Tensor, src: torch.Tensor | np.ndarray, capacity: int | None = None
    ) -> None:
        if not isinstance(model, Transformer):
            raise TypeError(f"model: expected a torch_transformer Transformer, got {type(model).__name__}")
        if any(m.training for m in model.modules()):
            raise ValueError(
                "model: expected eval mode (call model.eval()); the cache computes the forward without dropout"
            )
        config = model.config
        src = source_ids(src, config.src_vocab_size, config.max_len)
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
        self.device = memory.device
        self.memory_mask = model.source_mask(on_device(src, self.device))  # (R, 1, 1, S)
        self.tokens = torch.full((B, self.capacity), config.pad_id, dtype=torch.int64, device=self.device)
        self.length = 0
        with torch.no_grad():
            self.layers = [DecoderLayerKV.start(layer, memory, self.capacity) for layer in model.decoder.layers]

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @torch.no_grad()
    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Feed one token per row (``token_ids`` (R,)); logits (R, V) and cross-attention (R, H, S) or None."""
        model = self.model
        config = model.config
        check_step_ids(token_ids, self.batch_size, config.tgt_vocab_size)
        if self.length == self.capacity:
            raise ValueError(f"capacity: all {self.capacity} positions are fed; build a decoder with a larger capacity")
        t = self.length
        ids = on_device(token_ids, self.device)
        self.tokens[:, t] = ids
        self.length = t + 1

        # The model's target embedding at one position: x = embed(token) * sqrt(C) + PE[t]
        x = model.tgt_embed(ids[:, None]) * model.embed_scale + model.pe[t : t + 1]  # (R, 1, C)
        # The target mask's row t: keys 0..t (causal), padded positions excluded.
        self_mask = (self.tokens[:, : t + 1] != config.pad_id)[:, None, None, :]  # (R, 1, 1, t + 1)
        cross_attention = None
        for i, layer in enumerate(model.decoder.layers):
            x, cross_attention, self.layers[i] = cached_decoder_layer(
                layer, x, self.layers[i], self_mask, self.memory_mask
            )  # (R, 1, C), (R, H, 1, S)
        if model.decoder.norm is not None:
            x = model.decoder.norm(x)
        weight = model.tgt_embed.weight if model.out_proj is None else model.out_proj.weight  # (V, C)
        logits = x @ weight.T  # (R, 1, V)
        return to_numpy(logits[:, 0]), None if cross_attention is None else to_numpy(cross_attention[:, :, 0])

    @torch.no_grad()
    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` a copy of old row ``rows[i]`` (int array (R,), repeats allowed)."""
        rows = on_device(check_rows(rows, self.batch_size), self.device)
        for kv in self.layers:
            kv.reorder(rows)
        t = self.length
        self.tokens[:, :t] = self.tokens[rows, :t]  # (R, t)
        self.memory_mask = self.memory_mask[rows]  # (R, 1, 1, S)


def decode_last_position(
    model: Transformer, prefix: torch.Tensor, memory: torch.Tensor, src: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model.decode`` on the whole prefix (R, t): the last position's logits (R, V) and weights (R, H, S).

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
        logits = model.decode(prefix, memory, src)  # (R, t, V)
    finally:
        handle.remove()
    return logits[:, -1], captured["weights"][:, :, -1]


@dataclass(frozen=True)
class TransformerStepping:
    """The Steppable of a twin :class:`Transformer`."""

    model: Transformer

    @property
    def config(self) -> TransformerConfig:
        return self.model.config

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.model)

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    def check_src(self, src: object) -> np.ndarray:
        return source_ids(src, self.config.src_vocab_size, self.config.max_len)

    def eval_mode(self) -> AbstractContextManager[object]:
        return eval_mode(self.model)

    @torch.no_grad()
    def start(self, src: np.ndarray, copies: int, capacity: int, use_cache: bool) -> Stepper:
        model, device = self.model, self.device
        src_t = on_device(src, device)
        memory = model.encode(src_t)  # (B, S, C)
        if copies > 1:  # row b * copies + k reads source b
            memory, src_t = memory.repeat_interleave(copies, dim=0), src_t.repeat_interleave(copies, dim=0)
        if use_cache:
            return IncrementalDecoder(model, memory, src_t, capacity)

        @torch.no_grad()
        def last_position(prefix: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            r = on_device(rows, device)
            logits, weights = decode_last_position(model, on_device(prefix, device), memory[r], src_t[r])
            return to_numpy(logits), None if weights is None else to_numpy(weights)

        return FullPrefixStepper(
            last_position, src_t.shape[0], capacity, self.config.tgt_vocab_size, self.config.pad_id
        )


# ---------------------------------------------------------------------------- the recurrent model


class RNNStepper:
    """The twin :class:`RNNSeq2Seq`'s decoder state carried from step to step: NumPy ids in, NumPy logits out."""

    def __init__(self, model: RNNSeq2Seq, enc: torch.Tensor, state: torch.Tensor, mask: torch.Tensor) -> None:
        self.model = model
        self.enc, self.state, self.mask = enc, state, mask  # (R, S, H), (R, H), (R, S)

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    @torch.no_grad()
    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (R, V) and the attention weights as one head (R, 1, S)."""
        model = self.model
        check_step_ids(token_ids, self.batch_size, model.config.tgt_vocab_size)
        y = model.tgt_embed(on_device(token_ids, self.state.device))  # (R, E)
        logits, self.state, weights = model.decode_step(y, self.state, self.enc, self.mask)
        return to_numpy(logits), to_numpy(weights[:, None])

    def reorder(self, rows: np.ndarray) -> None:
        r = on_device(check_rows(rows, self.batch_size), self.state.device)
        self.enc, self.state, self.mask = self.enc[r], self.state[r], self.mask[r]


@dataclass(frozen=True)
class RNNSeq2SeqStepping:
    """The Steppable of a twin :class:`RNNSeq2Seq`."""

    model: RNNSeq2Seq

    @property
    def config(self) -> RNNSeq2SeqConfig:
        return self.model.config

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.model)

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    def check_src(self, src: object) -> np.ndarray:
        return source_ids(src, self.config.src_vocab_size, None)

    def eval_mode(self) -> AbstractContextManager[object]:
        return eval_mode(self.model)

    @torch.no_grad()
    def start(self, src: np.ndarray, copies: int, capacity: int, use_cache: bool) -> Stepper:
        model, device = self.model, self.device
        src_t = on_device(np.repeat(src, copies, axis=0) if not use_cache else src, device)
        if not use_cache:

            @torch.no_grad()
            def last_position(prefix: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                logits, weights = model(src_t[on_device(rows, device)], on_device(prefix, device), return_weights=True)
                return to_numpy(logits[:, -1]), to_numpy(weights[:, None, -1])  # (R, V), (R, 1, S)

            return FullPrefixStepper(
                last_position, src_t.shape[0], capacity, self.config.tgt_vocab_size, self.config.pad_id
            )
        enc, state, mask = model.encode(src_t)  # (B, S, H), (B, H), (B, S)
        if copies > 1:  # row b * copies + k reads source b
            enc, state, mask = (a.repeat_interleave(copies, dim=0) for a in (enc, state, mask))
        return RNNStepper(model, enc, state, mask)
