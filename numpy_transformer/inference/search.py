r"""Greedy and beam search, written once against a stepping protocol, and the steppers of the seq2seq models.

Shape legend: ``B`` batch, ``K`` beams per source sentence, ``S`` source length,
``L`` decoded length including ``bos``, ``C`` d_model, ``H`` heads, ``D = C // H``,
``V`` target vocabulary size, ``R`` rows a stepper runs (``B`` for greedy, ``B * K`` for beam).

The searches drive a :class:`~numpy_transformer.inference.protocol.Steppable` (``protocol.py``):
encode a source once, then step a batch of prefixes to logits and reorder rows. A NumPy
model gets its own from :func:`~numpy_transformer.inference.steppers.stepping`; the twin's
from ``torch_transformer.steppers.stepping(twin)``.

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
  ``steppers.IncrementalDecoder`` refuses a model in training mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import check_special_ids
from ..functional.checks import check_bool, check_int
from ..functional.softmax import log_softmax_forward
from ..models.rnn_seq2seq import RNNSeq2Seq
from ..models.transformer import Transformer
from .protocol import Steppable
from .steppers import stepping

__all__ = ["BeamSearchResult", "DecodeResult", "beam_search", "greedy_decode"]


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
        The twin: ``torch_transformer.steppers.stepping(twin)``.
    src : ndarray of int, shape (B, S)
        Source ids, padded with ``config.pad_id`` (the twin's Steppable also takes a tensor).
    max_len : int
        Most tokens generated per row, ``eos`` included; ``1 <= max_len <= config.max_len``.
    bos_id, eos_id : int
        Start and end tokens (not ``config.pad_id``).
    use_cache : bool
        True: the model's stepper (the Transformer's ``IncrementalDecoder``, ``O(t)`` per
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
    check_bool("use_cache", use_cache)
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
        The twin: ``torch_transformer.steppers.stepping(twin)``.
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
    check_bool("use_cache", use_cache)
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
