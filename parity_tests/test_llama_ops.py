"""The mathematics of the Llama ops and blocks, on their own: RMSNorm, RoPE, SiLU / SwiGLU, grouped-query attention.

The registry (``torch_transformer/parity/cases_llama.py``) compares each with the twin, with finite
differences and with ``F.rms_norm`` / ``nn.RMSNorm`` / ``F.silu`` / ``F.scaled_dot_product_attention``.
This file checks what those cannot see: RMSNorm's backward is LayerNorm's without the mean term, its
gradient is orthogonal to its row (scale invariance), and torch's default ``eps``; RoPE's scores
depend on ``m - n`` only, its backward rotates back, and Meta's interleaved weights become Hugging
Face's by a row permutation; a closed SwiGLU gate passes nothing; grouped-query attention is
``repeat_interleave`` + ordinary attention, and its key/value gradients are the sums over each group.

Shape legend: B batch, H query heads, Hkv key/value heads, T / S query / key length, D head width,
C model width, F feed-forward width.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TorchF
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer.functional as F
from numpy_transformer.modules import LlamaAttention, LlamaDecoderLayer, RMSNorm, SwiGLUFeedForward

from .helpers import assert_matches
from .strategies import dtypes, seeds
from .test_properties import PROPERTY_TESTS

HAS_RMS_NORM = hasattr(TorchF, "rms_norm")


def property_of(*cases: str):
    """Declare the decorated test a property test of the parity ``cases`` (see ``test_properties``)."""

    def declare(test):
        reference = f"test_llama_ops.py::{test.__name__}"
        for case in cases:
            if reference not in PROPERTY_TESTS[case]:
                PROPERTY_TESTS[case].append(reference)
        return test

    return declare


def randn(rng, shape, dtype=np.float64) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- RMSNorm


@property_of("rms_norm", "RMSNorm")
@given(C=st.integers(2, 9), dtype=dtypes, seed=seeds, scale=st.floats(0.1, 100.0))
def test_rms_norm_output_has_unit_rms_and_ignores_the_rows_scale(C, dtype, seed, scale):
    rng = np.random.default_rng(seed)
    x = randn(rng, (3, C), dtype) + dtype(1.0)  # rows well away from zero
    eps = 1e-12
    y, _ = F.rms_norm_forward(x, np.ones(C, dtype), eps)
    assert y.dtype == dtype
    assert_matches("mean(y^2)", (y.astype(np.float64) ** 2).mean(axis=-1), np.ones(3), dtype)
    y_scaled, _ = RMSNorm(C, eps, dtype=dtype).forward((x * dtype(scale)).astype(dtype))
    assert_matches("rms_norm(scale * x)", y_scaled, y, dtype)


@property_of("rms_norm")
@given(C=st.integers(2, 9), seed=seeds, eps=st.sampled_from([1e-6, 1e-2, 0.5]))
def test_rms_norm_backward_is_layer_norm_backward_without_the_mean_term(C, seed, eps):
    """On zero-mean rows both norms give the same output; their input gradients differ by ``r * mean(g)``."""
    rng = np.random.default_rng(seed)
    x = randn(rng, (4, C))
    x -= x.mean(axis=-1, keepdims=True)  # zero mean: LayerNorm's centring does nothing
    w, dout = randn(rng, C), randn(rng, (4, C))
    y_rms, c_rms = F.rms_norm_forward(x, w, eps)
    y_ln, c_ln = F.layer_norm_forward(x, w, np.zeros(C), eps)
    assert_matches("forward", y_rms, y_ln, np.float64)
    dx_rms, dw_rms = F.rms_norm_backward(dout, c_rms)
    dx_ln, dw_ln, _ = F.layer_norm_backward(dout, c_ln)
    assert_matches("dweight", dw_rms, dw_ln, np.float64)
    g_mean = (dout * w).mean(axis=-1, keepdims=True)  # the term through the mean, which RMSNorm lacks
    expected = np.broadcast_to(c_rms.rstd * g_mean, dx_rms.shape)
    assert_matches("dx_rms - dx_ln = r * mean(g)", dx_rms - dx_ln, expected, np.float64)


@property_of("rms_norm", "RMSNorm")
@given(C=st.integers(1, 9), seed=seeds, eps=st.sampled_from([1e-6, 0.1, 2.0]))
def test_rms_norm_gradient_is_orthogonal_to_its_row_up_to_eps(C, seed, eps):
    r"""Scaling a row changes RMSNorm only through ``eps``.

    .. math:: \sum_c dx_c x_c = \epsilon\, r^2 \sum_c g_c \hat x_c
    """
    rng = np.random.default_rng(seed)
    x, w, dout = randn(rng, (5, C)), randn(rng, C), randn(rng, (5, C))
    _, cache = F.rms_norm_forward(x, w, eps)
    dx, _ = F.rms_norm_backward(dout, cache)
    g = dout * w
    expected = (g * cache.xhat).sum(axis=-1) * eps * cache.rstd[:, 0] ** 2
    assert_matches("sum(dx * x)", (dx * x).sum(axis=-1), expected, np.float64)


def test_rms_norm_eps_inside_the_root_is_not_the_papers_eps_outside():
    """Llama, HF, torch: ``x / sqrt(ms + eps)``; Zhang & Sennrich's code: ``x / (sqrt(ms) + eps)``: small rows part."""
    eps = 1e-6
    for rms, inside_factor in ((1e-3, 0.7071), (1.0, 1.0)):
        x = np.full((1, 4), rms)
        inside, _ = F.rms_norm_forward(x, np.ones(4), eps)
        outside = x / (np.sqrt((x * x).mean(axis=-1, keepdims=True)) + eps)
        assert inside[0, 0] == pytest.approx(inside_factor, rel=1e-4)
        assert outside[0, 0] == pytest.approx(1.0, rel=2e-3)


@pytest.mark.skipif(not HAS_RMS_NORM, reason="torch < 2.4 has no F.rms_norm / nn.RMSNorm")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_rms_norm_default_eps_is_the_dtypes_machine_epsilon(dtype):
    """A framework fact: ``F.rms_norm`` / ``nn.RMSNorm`` with ``eps=None`` use ``torch.finfo(dtype).eps``, not 1e-6."""
    assert torch.nn.RMSNorm(4).eps is None
    x = np.full((2, 4), 3e-4, dtype)  # a small row, where eps shows
    x[1] = np.linspace(-2, 2, 4)
    w = np.ones(4, dtype)
    theirs = TorchF.rms_norm(torch.from_numpy(x), (4,), torch.from_numpy(w))  # eps=None
    machine, _ = F.rms_norm_forward(x, w, float(np.finfo(dtype).eps))
    llama, _ = F.rms_norm_forward(x, w, 1e-6)
    assert_matches("eps=None is finfo(dtype).eps", machine, theirs, dtype)
    assert np.abs(llama - theirs.numpy()).max() > 0.1  # 1e-6 is not torch's default


# --------------------------------------------------------------------------- rotary embeddings

layouts = st.sampled_from(["half", "interleaved"])


@property_of("rotary_embedding")
@given(layout=layouts, P=st.integers(1, 4), seed=seeds, m=st.integers(0, 60), n=st.integers(0, 60),
       shift=st.integers(-20, 200), theta=st.sampled_from([100.0, 1e4, 5e5]))  # fmt: skip
def test_rotary_query_key_score_depends_only_on_the_relative_position(layout, P, seed, m, n, shift, theta):
    r""":math:`(R_m q)\cdot(R_n k) = q \cdot R_{n-m} k`: moving both positions by the same amount changes nothing."""
    shift = max(shift, -min(m, n))  # positions stay >= 0
    rng = np.random.default_rng(seed)
    q, k = randn(rng, (1, 1, 1, 2 * P)), randn(rng, (1, 1, 1, 2 * P))

    def score(a, b):
        rq, _ = F.rotary_embedding_forward(q, np.array([a]), theta, layout)
        rk, _ = F.rotary_embedding_forward(k, np.array([b]), theta, layout)
        return (rq * rk).sum()

    assert_matches("q_m . k_n", score(m + shift, n + shift), score(m, n), np.float64)
    assert_matches("q_m . k_m", score(m, m), (q * k).sum(), np.float64)  # no relative offset: no rotation


@property_of("rotary_embedding")
@given(layout=layouts, dtype=dtypes, seed=seeds, T=st.integers(1, 6), P=st.integers(1, 4), start=st.integers(0, 99))
def test_rotary_keeps_every_pair_length_and_its_backward_rotates_back(layout, dtype, seed, T, P, start):
    rng = np.random.default_rng(seed)
    x = randn(rng, (2, 3, T, 2 * P), dtype)
    positions = start + np.arange(T)
    y, cache = F.rotary_embedding_forward(x, positions, 1e4, layout)
    assert y.dtype == dtype

    def pair_lengths(a):
        a = a.astype(np.float64)
        first, second = (a[..., :P], a[..., P:]) if layout == "half" else (a[..., 0::2], a[..., 1::2])
        return np.hypot(first, second)

    assert_matches("pair lengths", pair_lengths(y), pair_lengths(x), dtype)
    # R^T R = I: the backward of the rotated vector is the vector itself (a rotation by -theta)
    assert_matches("R(-theta) R(theta) x", F.rotary_embedding_backward(y, cache), x, dtype)
    if start == 0:
        assert_matches("position 0 is not rotated", y[..., 0, :], x[..., 0, :], dtype)


@property_of("rotary_embedding")
@given(P=st.integers(1, 4), H=st.integers(1, 3), seed=seeds, T=st.integers(1, 5), start=st.integers(0, 30))
def test_permuting_query_and_key_rows_turns_metas_interleaved_layout_into_hfs_half_layout(P, H, seed, T, start):
    """``interleaved_to_half_rows`` (HF's convert_llama_weights_to_hf ``permute``) proven on a projection."""
    rng = np.random.default_rng(seed)
    D, C = 2 * P, 5
    wq_meta, wk_meta, x = randn(rng, (H * D, C)), randn(rng, (H * D, C)), randn(rng, (1, T, C))
    wq_hf, wk_hf = F.interleaved_to_half_rows(wq_meta, H), F.interleaved_to_half_rows(wk_meta, H)
    np.testing.assert_array_equal(F.half_to_interleaved_rows(wq_hf, H), wq_meta)  # the inverse
    positions = start + np.arange(T)

    def rotated(w, layout):
        q = (x @ w.T).reshape(1, T, H, D).transpose(0, 2, 1, 3)  # (1, H, T, D)
        return F.rotary_embedding_forward(q, positions, 100.0, layout)[0]

    def scores(wq, wk, layout):
        return rotated(wq, layout) @ np.swapaxes(rotated(wk, layout), -1, -2)  # (1, H, T, T)

    q_meta, q_hf = rotated(wq_meta, "interleaved"), rotated(wq_hf, "half")
    inside_head = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])  # row 2i + j -> j * P + i
    assert_matches("the same vectors, reordered", q_hf, q_meta[..., inside_head], np.float64)
    meta = scores(wq_meta, wk_meta, "interleaved")
    assert_matches("the same scores", scores(wq_hf, wk_hf, "half"), meta, np.float64)
    if P > 1 and T > 1:  # unpermuted, the half layout pairs other coordinates: other scores off the diagonal
        assert np.abs(scores(wq_meta, wk_meta, "half") - meta).max() > 1e-6


@property_of("LlamaAttention", "LlamaDecoderLayer")
@given(seed=seeds, shift=st.integers(1, 50), kv=st.sampled_from([(4, 2), (2, 1), (2, 2)]), layout=layouts)
def test_llama_attention_output_is_the_same_when_every_position_moves_by_the_same_amount(seed, shift, kv, layout):
    """RoPE at the module level: only relative positions matter, so positions ``s + arange(T)`` give one output."""
    rng = np.random.default_rng(seed)
    H, Hkv = kv
    attn = LlamaAttention(8, H, Hkv, 100.0, layout, rng=rng)
    layer = LlamaDecoderLayer(8, H, Hkv, 6, 1e-6, 100.0, layout, rng=rng)
    x = randn(rng, (2, 5, 8))
    out, _ = attn.forward(x, np.arange(5), is_causal=True)
    shifted, _ = attn.forward(x, shift + np.arange(5), is_causal=True)
    assert_matches("attention at shifted positions", shifted, out, np.float64)
    y, _ = layer.forward(x, np.arange(5))
    assert_matches("layer at shifted positions", layer.forward(x, shift + np.arange(5))[0], y, np.float64)


@property_of("LlamaDecoderLayer", "LlamaAttention")
@given(seed=seeds, t=st.integers(0, 4))
def test_a_causal_llama_layer_never_reads_the_future(seed, t):
    rng = np.random.default_rng(seed)
    layer = LlamaDecoderLayer(8, 4, 2, 6, rng=rng)
    x = randn(rng, (2, 6, 8))
    y, _ = layer.forward(x)
    x2 = x.copy()
    x2[:, t + 1 :] += randn(rng, x2[:, t + 1 :].shape)  # change every position after t
    y2, _ = layer.forward(x2)
    np.testing.assert_array_equal(y2[:, : t + 1], y[:, : t + 1])


# --------------------------------------------------------------------------- SiLU and SwiGLU


@property_of("silu")
@given(dtype=dtypes, seed=seeds)
def test_silu_is_x_sigmoid_x_and_stays_finite_and_exact_far_out(dtype, seed):
    x = np.concatenate([randn(np.random.default_rng(seed), 7, dtype), np.array([-1e4, -80.0, 0.0, 80.0, 1e4], dtype)])
    y, cache = F.silu_forward(x)
    assert y.dtype == dtype and np.isfinite(y).all()
    expected = x.astype(np.float64) / (1.0 + np.exp(-np.clip(x.astype(np.float64), -700, 700)))
    assert_matches("silu", y, expected, dtype)
    dx = F.silu_backward(np.ones_like(x), cache)
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dx[-5:], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)  # silu'(0) = 1/2, -> 0 and 1 far out


@property_of("swiglu", "SwiGLUFeedForward")
@given(dtype=dtypes, seed=seeds)
def test_a_closed_swiglu_gate_passes_nothing_and_an_open_one_passes_up_times_gate(dtype, seed):
    """``silu(g) ~ 0`` for very negative ``g``: no output, no gradient to ``up``; ``silu(g) ~ g`` for large ``g``."""
    rng = np.random.default_rng(seed)
    up, dout = randn(rng, (3, 4), dtype), randn(rng, (3, 4), dtype)
    closed, c_closed = F.swiglu_forward(np.full((3, 4), -60.0, dtype), up)
    dgate, dup = F.swiglu_backward(dout, c_closed)
    assert np.abs(closed).max() < 1e-20 and np.abs(dup).max() < 1e-20 and np.abs(dgate).max() < 1e-20
    gate = np.full((3, 4), 40.0, dtype)
    opened, c_open = F.swiglu_forward(gate, up)
    assert_matches("open gate", opened, gate * up, dtype)
    dgate, dup = F.swiglu_backward(dout, c_open)
    assert_matches("dup = dout * gate", dup, dout * gate, dtype)
    assert_matches("dgate = dout * up", dgate, dout * up, dtype)


@property_of("SwiGLUFeedForward")
@given(seed=seeds, T=st.integers(2, 5))
def test_swiglu_feed_forward_is_down_of_the_gated_product_one_position_at_a_time(seed, T):
    rng = np.random.default_rng(seed)
    ff = SwiGLUFeedForward(6, 5, rng=rng)
    x = randn(rng, (2, T, 6))
    y, cache = ff.forward(x)
    g, u = x @ ff.gate_proj.weight.T, x @ ff.up_proj.weight.T
    assert_matches("down(silu(g) * u)", y, (g / (1 + np.exp(-g)) * u) @ ff.down_proj.weight.T, np.float64)
    perm = rng.permutation(T)
    assert_matches("position-wise", ff.forward(x[:, perm])[0], y[:, perm], np.float64)
    ff.zero_grad()
    dx = ff.backward(np.ones_like(y), cache)
    assert dx.shape == x.shape and sorted(dict(ff.named_grads())) == [
        "down_proj.weight",
        "gate_proj.weight",
        "up_proj.weight",
    ]


# --------------------------------------------------------------------------- grouped-query attention


@st.composite
def gqa_shapes(draw):
    Hkv = draw(st.integers(1, 3))
    return dict(
        B=draw(st.integers(1, 2)), H=Hkv * draw(st.integers(1, 3)), Hkv=Hkv, T=draw(st.integers(1, 4)),
        S=draw(st.integers(1, 4)), D=draw(st.integers(1, 3)),
    )  # fmt: skip


@property_of("grouped_query_attention")
@given(s=gqa_shapes(), dtype=dtypes, seed=seeds, causal=st.booleans())
def test_grouped_query_attention_is_repeat_interleave_then_attention_with_group_summed_gradients(
    s, dtype, seed, causal
):
    rng = np.random.default_rng(seed)
    B, H, Hkv, T, S, D = s["B"], s["H"], s["Hkv"], s["T"], s["S"], s["D"]
    G = H // Hkv
    q, k, v = randn(rng, (B, H, T, D), dtype), randn(rng, (B, Hkv, S, D), dtype), randn(rng, (B, Hkv, S, D), dtype)
    mask = rng.random((B, 1, T, S)) < 0.8
    dout = randn(rng, (B, H, T, D), dtype)
    out, cache = F.grouped_query_attention_forward(q, k, v, mask=mask, is_causal=causal)
    dq, dk, dv = F.grouped_query_attention_backward(dout, cache)

    k_rep, v_rep = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)  # head h reads key head h // G
    np.testing.assert_array_equal(k_rep, torch.from_numpy(k).repeat_interleave(G, dim=1).numpy())
    ref, ref_cache = F.scaled_dot_product_attention_forward(q, k_rep, v_rep, mask=mask, is_causal=causal)
    dq_ref, dk_rep, dv_rep = F.scaled_dot_product_attention_backward(dout, ref_cache)
    assert out.dtype == dtype
    assert_matches("out", out, ref, dtype)
    assert_matches("weights", cache.weights, ref_cache.weights, dtype)
    assert_matches("dq", dq, dq_ref, dtype)
    assert_matches("dk = sum over the group", dk, dk_rep.reshape(B, Hkv, G, S, D).sum(axis=2), dtype)
    assert_matches("dv = sum over the group", dv, dv_rep.reshape(B, Hkv, G, S, D).sum(axis=2), dtype)


@property_of("grouped_query_attention")
@given(seed=seeds, H=st.integers(1, 4))
def test_as_many_kv_heads_as_heads_is_multi_head_and_one_kv_head_is_multi_query(seed, H):
    rng = np.random.default_rng(seed)
    q, k, v = randn(rng, (2, H, 3, 4)), randn(rng, (2, H, 5, 4)), randn(rng, (2, H, 5, 4))
    out, _ = F.grouped_query_attention_forward(q, k, v)
    assert_matches("Hkv = H: MHA", out, F.scaled_dot_product_attention_forward(q, k, v)[0], np.float64)
    k1, v1 = k[:, :1], v[:, :1]  # one key/value head for every query head
    out1, cache1 = F.grouped_query_attention_forward(q, k1, v1)
    for h in range(H):
        head, _ = F.scaled_dot_product_attention_forward(q[:, h], k1[:, 0], v1[:, 0])
        assert_matches(f"Hkv = 1: MQA head {h}", out1[:, h], head, np.float64)
    _, dk, dv = F.grouped_query_attention_backward(np.ones_like(out1), cache1)
    assert dk.shape == k1.shape and dv.shape == v1.shape
