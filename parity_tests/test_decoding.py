"""Decoding: the key/value cache against full-prefix recompute, NumPy against the twin, beam search's math.

The searches are written once (``numpy_transformer.inference.search``) against a stepping
protocol; the Transformer, the recurrent model and the twin's two models provide steppers
(the twin's: ``torch_transformer.steppers.stepping``). So "the twin" below is the one search
driving the twin's stepper.

* The cache: :class:`IncrementalDecoder`'s logits equal ``model.decode`` on the whole
  prefix at every step (teacher-forced tokens with pads and eos inside, and rows
  reordered mid-way as beam search does), in both halves.
* Greedy and beam search give the same tokens in NumPy and in the twin, with and
  without the cache, and logits / scores within the parity contract.
* ``beam_size=1`` is greedy; with a beam wide enough to prune nothing, beam search
  holds every possible hypothesis with its exhaustively computed score.
* The recurrent model: its stepper's logits are the teacher-forced forward's, it gets beam
  search for free (K = 1 is greedy, a wide beam is exhaustive), the twin's stepper agrees.
* The protocol alone: a hand-written stepper with a known answer.
* Eos handling, eval mode, and bad input.

Random untrained models: the output projection is scaled up so that the logits are
peaky, and an example where two candidates come within 100x the tolerance of each
other (a tie that rounding may break either way) is rejected with ``assume``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import numpy_transformer as nt
import numpy_transformer.inference as nd
import torch_transformer as tt
from numpy_transformer.config import RNN_ATTENTIONS
from numpy_transformer.functional import log_softmax_forward
from numpy_transformer.testing import tolerance
from parity_tests.helpers import assert_matches, to_numpy
from torch_transformer import steppers as ts
from torch_transformer.bridge import state_dict_to_torch, torch_dtype, twin_of

BOS, EOS = 1, 2
BOTH_DTYPES = st.sampled_from([np.float32, np.float64])


@dataclasses.dataclass(frozen=True)
class Case:
    config: nt.TransformerConfig | nt.RNNSeq2SeqConfig
    dtype: type
    seed: int
    batch: int
    src_len: int


@st.composite
def cases(draw, dtype=BOTH_DTYPES) -> Case:
    """A small Transformer (post/pre-LN, tied/untied, relu/gelu, dropout on) and a source batch's shape."""
    d_model, n_heads = draw(st.sampled_from([(4, 1), (4, 2), (8, 2)]))
    config = nt.TransformerConfig(
        src_vocab_size=draw(st.integers(4, 9)),
        tgt_vocab_size=draw(st.integers(4, 9)),  # pad, bos, eos and at least one word
        d_model=d_model,
        n_heads=n_heads,
        n_encoder_layers=draw(st.integers(1, 2)),
        n_decoder_layers=draw(st.integers(1, 2)),
        d_ff=8,
        dropout=0.1,  # decoding must switch it off
        activation=draw(st.sampled_from(["relu", "gelu"])),
        norm_first=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()),
        max_len=12,
    )
    return Case(config, draw(dtype), draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 3)), draw(st.integers(1, 5)))


@st.composite
def rnn_cases(draw, dtype=BOTH_DTYPES) -> Case:
    """A small recurrent encoder–decoder of every attention style and a source batch's shape."""
    config = nt.RNNSeq2SeqConfig(
        src_vocab_size=draw(st.integers(4, 9)),
        tgt_vocab_size=draw(st.integers(4, 9)),
        embed_dim=draw(st.sampled_from([2, 4])),
        hidden_size=draw(st.sampled_from([2, 4, 6])),
        attention=draw(st.sampled_from(RNN_ATTENTIONS)),
        attn_dim=draw(st.integers(2, 5)),
        max_len=12,
    )
    return Case(config, draw(dtype), draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 3)), draw(st.integers(1, 5)))


def build(case: Case, sharpen: float = 3.0) -> tuple[nt.Transformer, tt.Transformer, np.ndarray]:
    """The NumPy model with peaky logits, its twin, and a source batch (B, S) with trailing padding."""
    rng = np.random.default_rng(case.seed)
    if isinstance(case.config, nt.RNNSeq2SeqConfig):
        model = nt.RNNSeq2Seq(case.config, case.dtype, rng=rng)
        model.out_proj.weight *= case.dtype(sharpen)
        twin = twin_of(model)
    else:
        model = nt.Transformer(case.config, case.dtype, rng=rng)
        head = model.tgt_embed.weight if model.out_proj is None else model.out_proj.weight  # (V, C)
        head *= case.dtype(sharpen)
        twin = tt.Transformer(case.config, dtype=torch_dtype(case.dtype))
        twin.load_state_dict(state_dict_to_torch(model.state_dict()))
    pad = case.config.pad_id
    src = rng.integers(1, case.config.src_vocab_size, (case.batch, case.src_len))  # (B, S), no pad yet
    src_lengths = rng.integers(1, case.src_len + 1, case.batch)
    src[np.arange(case.src_len) >= src_lengths[:, None]] = pad
    return model, twin, src


def min_relative_gap(logits: np.ndarray, pad_id: int) -> float:
    """Smallest gap between the two largest non-pad logits of any row, relative to max(1, max|logits|)."""
    logits = np.array(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
    logits[:, pad_id] = -np.inf
    top2 = np.sort(logits, axis=-1)[:, -2:]  # (N, 2)
    scale = max(1.0, float(np.abs(logits[np.isfinite(logits)]).max()))
    return float((top2[:, 1] - top2[:, 0]).min()) / scale


def live_steps(logits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The logits (N, V) of the steps before each row's eos: the ones whose argmax was taken."""
    steps = np.arange(logits.shape[1])
    return logits[steps[None, :] < lengths[:, None]]


def reject_near_ties(logits: np.ndarray, lengths: np.ndarray, pad_id: int, dtype) -> None:
    assume(min_relative_gap(live_steps(logits, lengths), pad_id) > 100 * tolerance("cpu", dtype))


def sequence_log_probs(model, src_row: np.ndarray, sequences: np.ndarray, bos_id: int) -> np.ndarray:
    """Teacher-forced summed log-probability of each generated sequence (N, n) given one source (S,)."""
    N = sequences.shape[0]
    inputs = np.concatenate([np.full((N, 1), bos_id), sequences[:, :-1]], axis=1)  # (N, n)
    src = np.repeat(src_row[None], N, axis=0)  # (N, S)
    if isinstance(model, nt.Transformer):
        memory, _ = model.encode(src)
        logits, _ = model.decode(inputs, memory, src)  # (N, n, V)
    else:
        logits, _ = model.forward(src, inputs)  # (N, n, V)
    log_probs, _ = log_softmax_forward(logits)
    return np.take_along_axis(log_probs, sequences[..., None], axis=-1)[..., 0].sum(axis=1)  # (N,)


def check_eos_layout(tokens: np.ndarray, lengths: np.ndarray, max_len: int, pad_id: int, eos_id: int, bos_id: int):
    """bos first; no pad before eos; eos at ``lengths`` (or none, and length max_len); pad after."""
    assert (tokens[:, 0] == bos_id).all()
    assert tokens.shape[1] == 1 + lengths.max()
    for row, n in zip(tokens, lengths, strict=True):
        generated = row[1:]
        eos_at = np.flatnonzero(generated == eos_id)
        if eos_at.size:
            assert n == eos_at[0] + 1, f"length {n}, first eos at generated position {eos_at[0]}"
        else:
            assert n == max_len
        assert (generated[:n] != pad_id).all(), "pad generated before eos"
        assert (generated[n:] == pad_id).all(), "a finished row holds something other than pad"


# ---------------------------------------------------------------------------- the key/value cache


@given(case=cases(), data=st.data())
def test_kv_cache_matches_full_prefix_recompute_at_every_step(case, data):
    model, twin, src = build(case)
    model.eval()
    twin.eval()
    dtype, config = case.dtype, case.config
    rng = np.random.default_rng(case.seed + 1)
    T = data.draw(st.integers(1, 6), label="T")
    reorder_at = data.draw(st.integers(1, T), label="reorder_at")  # T: never
    # Teacher-forced targets: bos, then anything (pads and eos in the middle included).
    tgt = rng.integers(0, config.tgt_vocab_size, (case.batch, T))  # (B, T)
    tgt[:, 0] = BOS
    rows = rng.integers(0, case.batch, case.batch)  # beam-search-like: repeats allowed

    memory, _ = model.encode(src)  # (B, S, C)
    cached = nd.IncrementalDecoder(model, memory, src, capacity=T)
    with torch.no_grad():
        twin_src = torch.from_numpy(src)
        twin_memory = twin.encode(twin_src)
        twin_tgt = torch.from_numpy(tgt)
    twin_cached = ts.IncrementalDecoder(twin, twin_memory, twin_src, capacity=T)
    for t in range(T):
        if t == reorder_at:
            cached.reorder(rows)
            twin_cached.reorder(rows)
            tgt, src, memory = tgt[rows], src[rows], memory[rows]
            twin_tgt, twin_src, twin_memory = twin_tgt[rows], twin_src[rows], twin_memory[rows]
        logits, weights = cached.step(tgt[:, t])  # (B, V), (B, H, S)
        full_logits, full_cache = model.decode(tgt[:, : t + 1], memory, src)
        layer_caches = full_cache.decoder.layers
        assert_matches(f"numpy step {t} logits", logits, full_logits[:, -1], dtype)
        assert_matches(f"numpy step {t} cross-attention", weights, layer_caches[-1].ca.weights[:, :, -1], dtype)

        twin_logits, twin_weights = twin_cached.step(tgt[:, t])  # NumPy in, NumPy out
        with torch.no_grad():
            twin_full = twin.decode(twin_tgt[:, : t + 1], twin_memory, twin_src)
        assert_matches(f"twin step {t} logits", twin_logits, twin_full[:, -1], dtype)
        assert_matches(f"twin step {t} logits vs numpy", twin_logits, logits, dtype)
        assert_matches(f"twin step {t} cross-attention vs numpy", twin_weights, weights, dtype)


def test_kv_cache_rejects_training_mode_and_overflow():
    config = nt.TransformerConfig(src_vocab_size=6, tgt_vocab_size=6, d_model=4, n_heads=2, d_ff=8, max_len=4)
    model = nt.Transformer(config, rng=np.random.default_rng(0))
    src = np.array([[3, 4]])
    memory, _ = model.eval().encode(src)
    model.decoder.layers[0].ff.train()  # one module left in training mode is enough to refuse
    with pytest.raises(ValueError, match=r"^model: expected eval mode"):
        nd.IncrementalDecoder(model, memory, src)
    model.eval()
    cached = nd.IncrementalDecoder(model, memory, src, capacity=1)
    cached.step(np.array([BOS]))
    with pytest.raises(ValueError, match=r"^capacity"):
        cached.step(np.array([3]))
    with pytest.raises(ValueError, match=r"^capacity"):
        nd.IncrementalDecoder(model, memory, src, capacity=5)


def test_decoder_without_layers_has_no_cross_attention():
    config = nt.TransformerConfig(
        src_vocab_size=6, tgt_vocab_size=6, d_model=4, n_heads=2, d_ff=8, n_decoder_layers=0, max_len=6
    )
    model = nt.Transformer(config, rng=np.random.default_rng(0))
    twin = tt.Transformer(config)
    twin.load_state_dict(state_dict_to_torch(model.state_dict()))
    src = np.array([[3, 4, 5], [4, 0, 0]])
    for use_cache in (True, False):
        ours = nd.greedy_decode(model, src, 5, use_cache=use_cache)
        theirs = nd.greedy_decode(ts.stepping(twin), src, 5, use_cache=use_cache)
        assert ours.cross_attention is None and theirs.cross_attention is None
        assert np.array_equal(ours.tokens, to_numpy(theirs.tokens))
        assert_matches("logits", theirs.logits, ours.logits, np.float64)


# ---------------------------------------------------------------------------- greedy


@given(case=cases(), max_len=st.integers(1, 8))
def test_greedy_matches_twin_with_and_without_cache(case, max_len):
    model, twin, src = build(case)
    ours = nd.greedy_decode(model, src, max_len)
    reject_near_ties(ours.logits, ours.lengths, case.config.pad_id, case.dtype)
    results = {
        "numpy without cache": nd.greedy_decode(model, src, max_len, use_cache=False),
        "twin with cache": nd.greedy_decode(ts.stepping(twin), src, max_len),
        "twin without cache": nd.greedy_decode(ts.stepping(twin), torch.from_numpy(src), max_len, use_cache=False),
    }
    for name, other in results.items():
        np.testing.assert_array_equal(to_numpy(other.tokens), ours.tokens, err_msg=f"{name} tokens")
        np.testing.assert_array_equal(to_numpy(other.lengths), ours.lengths, err_msg=f"{name} lengths")
        assert_matches(f"{name} logits", other.logits, ours.logits, case.dtype)
        assert_matches(f"{name} cross-attention", other.cross_attention, ours.cross_attention, case.dtype)
    L = ours.tokens.shape[1]
    H, S, V = case.config.n_heads, case.src_len, case.config.tgt_vocab_size
    assert ours.tokens.dtype == np.int64 and ours.logits.dtype == case.dtype
    assert ours.logits.shape == (case.batch, L - 1, V)
    assert ours.cross_attention.shape == (case.batch, H, L - 1, S)
    check_eos_layout(ours.tokens, ours.lengths, max_len, case.config.pad_id, EOS, BOS)


def test_greedy_pads_rows_that_end_early_while_others_continue():
    config = nt.TransformerConfig(src_vocab_size=8, tgt_vocab_size=6, d_model=8, n_heads=2, d_ff=8, max_len=12)
    model = nt.Transformer(config, rng=np.random.default_rng(208))  # a seed whose rows end at 3, 4 and never
    model.out_proj.weight *= 3.0
    src = np.array([[3, 3, 4, 0], [6, 7, 5, 4], [7, 6, 3, 0]])
    result = nd.greedy_decode(model, src, 6)
    # one row runs to max_len while others end mid-way, and every finished row is padded
    assert result.lengths.max() == 6 and 1 < result.lengths.min() < 6
    check_eos_layout(result.tokens, result.lengths, 6, config.pad_id, EOS, BOS)
    # the same with other special ids: bos and eos are arguments, never hard-coded
    other = nd.greedy_decode(model, src, 6, bos_id=4, eos_id=5)
    check_eos_layout(other.tokens, other.lengths, 6, config.pad_id, 5, 4)
    twin = tt.Transformer(config)
    twin.load_state_dict(state_dict_to_torch(model.state_dict()))
    assert np.array_equal(nd.greedy_decode(ts.stepping(twin), src, 6, bos_id=4, eos_id=5).tokens, other.tokens)


# ---------------------------------------------------------------------------- beam search


@given(
    case=cases(),
    beam_size=st.integers(1, 4),
    max_len=st.integers(1, 6),
    length_penalty=st.sampled_from([0.0, 0.6, 1.0, 2.0]),
)
def test_beam_search_matches_twin(case, beam_size, max_len, length_penalty):
    model, twin, src = build(case)
    ours = nd.beam_search(model, src, beam_size, max_len, length_penalty=length_penalty)
    theirs = nd.beam_search(ts.stepping(twin), src, beam_size, max_len, length_penalty=length_penalty)
    recomputed = nd.beam_search(model, src, beam_size, max_len, length_penalty=length_penalty, use_cache=False)
    finite = np.isfinite(ours.beam_scores)  # (B, K) empty beams hold no hypothesis to compare
    # Near ties among the kept candidates could be broken either way by rounding.
    sorted_scores = np.sort(ours.beam_scores, axis=1)
    gaps = np.diff(sorted_scores, axis=1)[np.isfinite(sorted_scores[:, :-1])]
    scale = max(1.0, float(np.abs(ours.beam_scores[finite]).max()))
    assume(gaps.size == 0 or gaps.min() / scale > 100 * tolerance("cpu", case.dtype))

    np.testing.assert_array_equal(to_numpy(theirs.tokens), ours.tokens, err_msg="best tokens")
    np.testing.assert_array_equal(to_numpy(theirs.lengths), ours.lengths, err_msg="best lengths")
    np.testing.assert_array_equal(to_numpy(theirs.beam_tokens)[finite], ours.beam_tokens[finite], err_msg="beams")
    np.testing.assert_array_equal(recomputed.beam_tokens[finite], ours.beam_tokens[finite], err_msg="uncached beams")
    assert_matches("uncached beam_scores", recomputed.beam_scores, ours.beam_scores, case.dtype)
    assert_matches("scores", theirs.scores, ours.scores, case.dtype)
    assert_matches("log_probs", theirs.log_probs, ours.log_probs, case.dtype)
    assert_matches("beam_scores", theirs.beam_scores, ours.beam_scores, case.dtype)

    # every beam: the eos layout; scores descending; the score is log_prob / length ** alpha
    assert ours.beam_tokens.shape[:2] == (case.batch, beam_size)
    assert (np.diff(ours.beam_scores, axis=1) <= 0).all()
    check_eos_layout(ours.tokens, ours.lengths, max_len, case.config.pad_id, EOS, BOS)
    expected = ours.log_probs / ours.lengths.astype(case.dtype) ** case.dtype(length_penalty)
    assert_matches("score = log_prob / length ** alpha", ours.scores, expected, case.dtype)
    assert [s.tolist() for s in ours.sequences()] == [
        row[: 1 + n].tolist() for row, n in zip(ours.tokens, ours.lengths, strict=True)
    ]


@given(case=cases(), max_len=st.integers(1, 8), length_penalty=st.sampled_from([0.0, 1.0, 2.0]))
def test_beam_size_one_equals_greedy(case, max_len, length_penalty):
    model, twin, src = build(case)
    greedy = nd.greedy_decode(model, src, max_len)
    reject_near_ties(greedy.logits, greedy.lengths, case.config.pad_id, case.dtype)
    beam = nd.beam_search(model, src, 1, max_len, length_penalty=length_penalty)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    # the beam's log-probability is the greedy path's, summed up to eos
    step_log_probs, _ = log_softmax_forward(greedy.logits)  # (B, L - 1, V)
    chosen = np.take_along_axis(step_log_probs, greedy.tokens[:, 1:, None], axis=-1)[..., 0]  # (B, L - 1)
    live = np.arange(chosen.shape[1])[None, :] < greedy.lengths[:, None]
    assert_matches("beam log_prob vs greedy path", beam.log_probs, np.where(live, chosen, 0).sum(axis=1), case.dtype)

    twin_beam = nd.beam_search(ts.stepping(twin), src, 1, max_len, length_penalty=length_penalty)
    twin_greedy = nd.greedy_decode(ts.stepping(twin), src, max_len)
    np.testing.assert_array_equal(to_numpy(twin_beam.tokens), to_numpy(twin_greedy.tokens))
    np.testing.assert_array_equal(to_numpy(twin_beam.tokens), greedy.tokens)


def check_wide_beam_is_exhaustive(case: Case, length_penalty: float) -> None:
    """V = 5 (pad, bos, eos, 3, 4), max_len 3: 40 hypotheses, and a beam of 40 prunes none.

    The beam then holds every hypothesis with its exhaustive score, best first, so its best
    score is also at least greedy's (which a narrower beam does not promise: it can prune
    the greedy path and end below it).
    """
    config = dataclasses.replace(case.config, tgt_vocab_size=5)
    model, _, src = build(Case(config, np.float64, case.seed, case.batch, case.src_len))
    max_len, pad = 3, config.pad_id
    words = [v for v in range(config.tgt_vocab_size) if v not in (pad, EOS)]  # may continue a hypothesis
    hypotheses = [  # every sequence of <= max_len non-pad tokens that ends in eos or at max_len
        prefix + last
        for n in range(1, max_len + 1)
        for prefix in itertools.product(words, repeat=n - 1)
        for last in ([(EOS,)] if n < max_len else [(EOS,), *[(w,) for w in words]])
    ]
    assert len(hypotheses) == 40
    beam = nd.beam_search(model, src, len(hypotheses), max_len, length_penalty=length_penalty)
    greedy = nd.greedy_decode(model, src, max_len)
    model.eval()  # for the teacher-forced scores
    for b in range(case.batch):
        scores = []
        for n in range(1, max_len + 1):
            group = np.array([h for h in hypotheses if len(h) == n])  # (N, n)
            scores.extend(sequence_log_probs(model, src[b], group, BOS) / n**length_penalty)
        order = np.argsort(scores)[::-1]
        exhaustive = np.array(scores)[order]
        assume(exhaustive[0] - exhaustive[1] > 1e-8 * max(1.0, abs(exhaustive[0])))
        best = hypotheses[order[0]]
        assert beam.sequences()[b].tolist() == [BOS, *best], f"source {b}"
        # nothing pruned: the beam holds every hypothesis, with its exhaustive score
        assert_matches(f"source {b} every beam score", beam.beam_scores[b], exhaustive, np.float64)
        n = greedy.lengths[b]
        greedy_path = greedy.tokens[b : b + 1, 1 : 1 + n]  # (1, n)
        greedy_score = sequence_log_probs(model, src[b], greedy_path, BOS)[0] / n**length_penalty
        assert beam.scores[b] >= greedy_score - 1e-12 * max(1.0, abs(greedy_score)), f"source {b}"


@given(
    case=cases(dtype=st.just(np.float64)),
    length_penalty=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
def test_beam_search_wide_enough_finds_the_exhaustive_best(case, length_penalty):
    check_wide_beam_is_exhaustive(case, length_penalty)


# ---------------------------------------------------------------------------- the recurrent model


@given(case=rnn_cases(), max_len=st.integers(1, 8))
def test_rnn_greedy_matches_the_teacher_forced_forward_and_the_twin(case, max_len):
    """The recurrent stepper's logits are the model's own forward on the decoded tokens, at every step."""
    model, twin, src = build(case)
    ours = nd.greedy_decode(model, src, max_len)
    reject_near_ties(ours.logits, ours.lengths, case.config.pad_id, case.dtype)
    full, cache = model.forward(src, ours.tokens[:, :-1])  # teacher forcing on what greedy chose
    assert_matches("logits vs teacher-forced forward", ours.logits, full, case.dtype)
    assert_matches("attention vs teacher-forced forward", ours.cross_attention, cache.weights[:, None], case.dtype)
    results = {
        "numpy without cache": nd.greedy_decode(model, src, max_len, use_cache=False),
        "twin": nd.greedy_decode(ts.stepping(twin), src, max_len),
        "twin without cache": nd.greedy_decode(ts.stepping(twin), torch.from_numpy(src), max_len, use_cache=False),
    }
    for name, other in results.items():
        np.testing.assert_array_equal(other.tokens, ours.tokens, err_msg=f"{name} tokens")
        np.testing.assert_array_equal(other.lengths, ours.lengths, err_msg=f"{name} lengths")
        assert_matches(f"{name} logits", other.logits, ours.logits, case.dtype)
        assert_matches(f"{name} attention", other.cross_attention, ours.cross_attention, case.dtype)
    L = ours.tokens.shape[1]
    assert ours.logits.shape == (case.batch, L - 1, case.config.tgt_vocab_size) and ours.logits.dtype == case.dtype
    assert ours.cross_attention.shape == (case.batch, 1, L - 1, case.src_len)
    check_eos_layout(ours.tokens, ours.lengths, max_len, case.config.pad_id, EOS, BOS)


@given(case=rnn_cases(), max_len=st.integers(1, 6), length_penalty=st.sampled_from([0.0, 1.0, 2.0]))
def test_rnn_beam_size_one_equals_greedy(case, max_len, length_penalty):
    model, _, src = build(case)
    greedy = nd.greedy_decode(model, src, max_len)
    reject_near_ties(greedy.logits, greedy.lengths, case.config.pad_id, case.dtype)
    beam = nd.beam_search(model, src, 1, max_len, length_penalty=length_penalty)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    step_log_probs, _ = log_softmax_forward(greedy.logits)  # (B, L - 1, V)
    chosen = np.take_along_axis(step_log_probs, greedy.tokens[:, 1:, None], axis=-1)[..., 0]  # (B, L - 1)
    live = np.arange(chosen.shape[1])[None, :] < greedy.lengths[:, None]
    assert_matches("beam log_prob vs greedy path", beam.log_probs, np.where(live, chosen, 0).sum(axis=1), case.dtype)


@given(
    case=rnn_cases(dtype=st.just(np.float64)),
    length_penalty=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
def test_rnn_beam_search_wide_enough_finds_the_exhaustive_best(case, length_penalty):
    check_wide_beam_is_exhaustive(case, length_penalty)


@given(
    case=rnn_cases(),
    beam_size=st.integers(2, 4),
    max_len=st.integers(1, 6),
    length_penalty=st.sampled_from([0.0, 0.6, 1.0]),
)
def test_rnn_beam_search_matches_twin_and_the_uncached_reference(case, beam_size, max_len, length_penalty):
    """The twin's stepper, and the full forward on every prefix (which reorders nothing but token rows)."""
    model, twin, src = build(case)
    ours = nd.beam_search(model, src, beam_size, max_len, length_penalty=length_penalty)
    finite = np.isfinite(ours.beam_scores)
    sorted_scores = np.sort(ours.beam_scores, axis=1)
    gaps = np.diff(sorted_scores, axis=1)[np.isfinite(sorted_scores[:, :-1])]
    scale = max(1.0, float(np.abs(ours.beam_scores[finite]).max()))
    assume(gaps.size == 0 or gaps.min() / scale > 100 * tolerance("cpu", case.dtype))
    others = {
        "twin": nd.beam_search(ts.stepping(twin), src, beam_size, max_len, length_penalty=length_penalty),
        "numpy without cache": nd.beam_search(
            model, src, beam_size, max_len, length_penalty=length_penalty, use_cache=False
        ),
    }
    for name, other in others.items():
        np.testing.assert_array_equal(other.tokens, ours.tokens, err_msg=f"{name} best tokens")
        np.testing.assert_array_equal(other.beam_tokens[finite], ours.beam_tokens[finite], err_msg=f"{name} beams")
        assert_matches(f"{name} beam_scores", other.beam_scores, ours.beam_scores, case.dtype)
    check_eos_layout(ours.tokens, ours.lengths, max_len, case.config.pad_id, EOS, BOS)


# ---------------------------------------------------------------------------- the protocol alone


@dataclasses.dataclass(frozen=True)
class BigramSteppable:
    """A model that is only a table: the logits of the next token depend on the last token alone."""

    table: np.ndarray  # (V, V) logits[next | last]
    config: nt.TransformerConfig

    @property
    def dtype(self) -> np.dtype:
        return self.table.dtype

    def check_src(self, src):
        return src

    def eval_mode(self):
        return contextlib.nullcontext()

    def start(self, src, copies, capacity, use_cache):
        return BigramStepper(self.table, src.shape[0] * copies)


class BigramStepper:
    def __init__(self, table: np.ndarray, rows: int) -> None:
        self.table, self.batch_size, self.reorders = table, rows, 0

    def step(self, token_ids):
        return self.table[token_ids], None

    def reorder(self, rows):
        self.reorders += 1  # nothing to move: the state is the token itself


def test_the_searches_drive_any_steppable():
    """Greedy follows the table's arg-max chain; a beam of V^2 is exhaustive over two steps."""
    rng = np.random.default_rng(0)
    V = 6
    config = nt.TransformerConfig(src_vocab_size=3, tgt_vocab_size=V, d_model=4, n_heads=1, d_ff=4, max_len=4)
    table = rng.standard_normal((V, V)) * 3
    steppable = BigramSteppable(table, config)
    assert isinstance(steppable, nd.Steppable) and nd.stepping(steppable) is steppable
    src = np.zeros((2, 1), dtype=np.int64)
    greedy = nd.greedy_decode(steppable, src, 2, bos_id=1, eos_id=2)
    expected, last = [1], 1
    for _ in range(2):
        last = int(np.argmax(np.where(np.arange(V) == config.pad_id, -np.inf, table[last])))
        expected.append(last)
        if last == 2:
            break
    assert greedy.tokens[0].tolist() == expected and greedy.cross_attention is None
    log_p, _ = log_softmax_forward(table)  # (V, V)
    beam = nd.beam_search(steppable, src, V * V, 2, bos_id=1, eos_id=2, length_penalty=0.0)
    words = [v for v in range(V) if v not in (config.pad_id, 2)]
    candidates = {(2,): log_p[1, 2]} | {(w, x): log_p[1, w] + log_p[w, x] for w in words for x in [2, *words]}
    best = max(candidates, key=candidates.get)
    assert beam.sequences()[0].tolist() == [1, *best]
    assert_matches("best score", beam.scores[0], candidates[best], np.float64)


def test_stepping_names_the_twins_stepping_when_given_a_twin():
    twin = tt.Transformer(nt.TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=4, n_heads=1, d_ff=4))
    with pytest.raises(TypeError, match=r"^model: .*torch_transformer\.steppers\.stepping\(model\)"):
        nd.greedy_decode(twin, np.array([[3]]), 2)
    with pytest.raises(TypeError, match=r"^model: expected a torch_transformer Transformer or RNNSeq2Seq"):
        ts.stepping(nt.Linear(2, 2))


# ---------------------------------------------------------------------------- modes and bad input


def test_decoding_runs_in_eval_mode_and_restores_every_module_mode():
    config = nt.TransformerConfig(src_vocab_size=7, tgt_vocab_size=7, d_model=8, n_heads=2, d_ff=8, dropout=0.5)
    model = nt.Transformer(config, rng=np.random.default_rng(0))
    src = np.array([[3, 4, 5], [6, 0, 0]])
    expected = nd.greedy_decode(model.eval(), src, 5)
    model.train()
    model.decoder.layers[0].ff.eval()  # a mixed state must come back as it was
    for decode in (lambda: nd.greedy_decode(model, src, 5), lambda: nd.beam_search(model, src, 1, 5)):
        assert np.array_equal(decode().tokens, expected.tokens)  # dropout 0.5 was off
        assert model.training and model.decoder.layers[0].self_attn.training
        assert not model.decoder.layers[0].ff.training and not model.decoder.layers[0].ff.linear1.training

    twin = tt.Transformer(config)
    twin.load_state_dict(state_dict_to_torch(model.state_dict()))
    twin.train()
    twin.decoder.layers[0].ff.eval()
    result = nd.greedy_decode(ts.stepping(twin), src, 5)
    assert np.array_equal(result.tokens, expected.tokens)
    assert twin.training and not twin.decoder.layers[0].ff.training


def bad_input_models() -> dict[str, object]:
    """What the searches take, by backend: the NumPy models, and the twins' Steppables."""
    config = nt.TransformerConfig(src_vocab_size=6, tgt_vocab_size=6, d_model=4, n_heads=2, d_ff=8, max_len=5)
    model = nt.Transformer(config, rng=np.random.default_rng(0))
    twin = tt.Transformer(config)
    twin.load_state_dict(state_dict_to_torch(model.state_dict()))
    rnn = nt.RNNSeq2Seq(nt.RNNSeq2SeqConfig(6, 6, embed_dim=4, hidden_size=4, attn_dim=4, max_len=5))
    return {"numpy": model, "twin": ts.stepping(twin), "rnn": rnn, "twin rnn": ts.stepping(twin_of(rnn))}


GOOD_SRC = np.array([[3, 4], [5, 0]])
BAD_CALLS = {
    "beam_size 0": ("beam_size", lambda m: nd.beam_search(m, GOOD_SRC, 0, 3)),
    "beam_size 2.0": ("beam_size", lambda m: nd.beam_search(m, GOOD_SRC, 2.0, 3)),
    "max_len 0 greedy": ("max_len", lambda m: nd.greedy_decode(m, GOOD_SRC, 0)),
    "max_len 0 beam": ("max_len", lambda m: nd.beam_search(m, GOOD_SRC, 2, 0)),
    "max_len > config.max_len": ("max_len", lambda m: nd.greedy_decode(m, GOOD_SRC, 6)),
    "src id too large": ("src", lambda m: nd.greedy_decode(m, np.array([[3, 6]]), 3)),
    "src id negative": ("src", lambda m: nd.beam_search(m, np.array([[-1, 3]]), 2, 3)),
    "src 1-D": ("src", lambda m: nd.greedy_decode(m, np.array([3, 4]), 3)),
    "src longer than max_len": ("src", lambda m: nd.greedy_decode(m, np.full((1, 6), 3), 3)),
    "bos_id is pad": ("bos_id", lambda m: nd.greedy_decode(m, GOOD_SRC, 3, bos_id=0)),
    "eos_id outside the vocabulary": ("eos_id", lambda m: nd.beam_search(m, GOOD_SRC, 2, 3, eos_id=6)),
    "length_penalty nan": ("length_penalty", lambda m: nd.beam_search(m, GOOD_SRC, 2, 3, length_penalty=math.nan)),
}
BACKENDS = ["numpy", "twin", "rnn", "twin rnn"]
NO_LENGTH_LIMIT = {"rnn", "twin rnn"}  # a recurrent model has no position table, so any source length goes


@pytest.mark.parametrize(
    ("backend", "call"),
    [
        (b, c)
        for b in BACKENDS
        for c in sorted(BAD_CALLS)
        if not (b in NO_LENGTH_LIMIT and c == "src longer than max_len")
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(backend, call):
    model = bad_input_models()[backend]
    name, bad_call = BAD_CALLS[call]
    with pytest.raises(ValueError, match=rf"^{name}: "):
        bad_call(model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_source_ids_raise_type_error(backend):
    model = bad_input_models()[backend]
    with pytest.raises(TypeError, match=r"^src: "):
        nd.greedy_decode(model, GOOD_SRC.astype(np.float64), 3)
    with pytest.raises(TypeError, match=r"^src: "):
        nd.greedy_decode(model, torch.from_numpy(GOOD_SRC.astype(np.float64)), 3)


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_twin_decoding_on_cuda_matches_numpy(dtype):
    from torch_transformer.parity import enable_exact_cuda_matmul

    enable_exact_cuda_matmul()
    config = nt.TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=16, n_heads=4, d_ff=32, max_len=16)
    rnn_config = nt.RNNSeq2SeqConfig(9, 9, embed_dim=8, hidden_size=16, attention="luong-general", max_len=16)
    for cfg in (config, rnn_config):
        case = Case(cfg, dtype, seed=5, batch=4, src_len=6)
        model, twin, src = build(case)
        theirs = ts.stepping(twin.to("cuda"))
        assert theirs.device.type == "cuda"  # the twin's stepper computes there; the search reads NumPy logits
        greedy = nd.greedy_decode(model, src, 10)
        twin_greedy = nd.greedy_decode(theirs, src, 10)
        np.testing.assert_array_equal(twin_greedy.tokens, greedy.tokens)
        assert_matches("cuda greedy logits", twin_greedy.logits, greedy.logits, dtype, device="cuda")
        beam = nd.beam_search(model, src, 3, 10)
        twin_beam = nd.beam_search(theirs, torch.from_numpy(src).cuda(), 3, 10)
        np.testing.assert_array_equal(twin_beam.tokens, beam.tokens)
        assert_matches("cuda beam scores", twin_beam.beam_scores, beam.beam_scores, dtype, device="cuda")
