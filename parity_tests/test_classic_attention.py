"""Classic attention (additive / Bahdanau, Luong's dot / general / concat): its own mathematics.

Twin parity and finite differences come from the registry cases
(``torch_transformer/parity/cases_classic_attention.py``, run by ``test_twin_parity.py``).
Here: the properties of the math, the module API, bad input, and the cost model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer as nt
import numpy_transformer.functional as F
from numpy_transformer.applications import attention_cost
from torch_transformer import classic_attention as TC
from torch_transformer.bridge import copy_numpy_to_torch
from torch_transformer.parity.cases_classic_attention import draw_source_mask

from .helpers import assert_matches
from .strategies import dtypes, seeds

SCORES = ("additive", "dot", "general", "concat")
GRAD_NAMES = {
    "additive": ("q", "k", "v", "w_q", "w_k", "v_a"),
    "dot": ("q", "k", "v"),
    "general": ("q", "k", "v", "w"),
    "concat": ("q", "k", "v", "w_c", "v_c"),
}

sizes = st.fixed_dictionaries(
    {
        "B": st.integers(1, 3),
        "T": st.integers(1, 4),
        "S": st.integers(1, 6),
        "D": st.integers(1, 5),
        "Dv": st.integers(1, 4),
        "A": st.integers(1, 5),
    }
)


def draw(rng, score, dims, dtype=np.float64, time=False, mask_kind="none"):
    """q, k, v, the weights of ``score`` and a source mask; Dk = D + 1 except for the dot score."""
    B, T, S, D, Dv, A = (dims[n] for n in ("B", "T", "S", "D", "Dv", "A"))
    Dk = D if score == "dot" else D + 1

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    a = {"q": normal(B, T, D) if time else normal(B, D), "k": normal(B, S, Dk), "v": normal(B, S, Dv)}
    if score == "additive":
        a.update(w_q=normal(A, D, scale=0.5), w_k=normal(A, Dk, scale=0.5), v_a=normal(A))
    elif score == "general":
        a["w"] = normal(D, Dk, scale=0.5)
    elif score == "concat":
        a.update(w_c=normal(A, D + Dk, scale=0.5), v_c=normal(A))
    return a, draw_source_mask(rng, mask_kind, B, T, S, time)


def run(score, a, mask=None):
    """Forward of ``score`` on the arrays ``a``; returns (context, cache, backward -> dict of gradients)."""
    if score == "additive":
        out, cache = F.additive_attention_forward(a["q"], a["k"], a["v"], a["w_q"], a["w_k"], a["v_a"], mask=mask)
        grads = F.additive_attention_backward
    else:
        weights = {n: a[n] for n in GRAD_NAMES[score][3:]}
        out, cache = F.luong_attention_forward(a["q"], a["k"], a["v"], score, mask=mask, **weights)
        grads = F.luong_attention_backward

    def backward(dout):
        names = GRAD_NAMES["additive"] if score == "additive" else ("q", "k", "v", "w", "w_c", "v_c")
        return {n: g for n, g in zip(names, grads(dout, cache), strict=True) if g is not None}

    return out, cache, backward


def allowed_of(mask, B, T, S, time):
    """The (B, T, S) boolean 'may attend' array a mask means."""
    if mask is None:
        return np.ones((B, T, S), bool)
    return np.broadcast_to(mask[:, None, :] if mask.ndim == 2 else mask, (B, T, S))


def with_time(x, time):
    return x if time else x[:, None]


# --------------------------------------------------------------------------- weights and masks


@given(
    dims=sizes,
    score=st.sampled_from(SCORES),
    time=st.booleans(),
    mask_kind=st.sampled_from(("none", "padding", "fully_masked_row")),
    dtype=dtypes,
    seed=seeds,
)
def test_weights_sum_to_one_over_allowed_keys_and_a_fully_masked_row_is_zero(dims, score, time, mask_kind, dtype, seed):
    rng = np.random.default_rng(seed)
    a, mask = draw(rng, score, dims, dtype, time, mask_kind)
    out, cache, backward = run(score, a, mask)
    B, T, S = dims["B"], (dims["T"] if time else 1), dims["S"]
    allowed = allowed_of(mask, B, T, S, time)
    w = with_time(cache.weights, time)  # (B, T, S)
    assert cache.weights.shape == ((B, T, S) if time else (B, S))
    assert out.dtype == dtype and cache.weights.dtype == dtype
    assert np.all(w[~allowed] == 0), "a masked key received weight"
    assert np.all(w >= 0)
    has_key = allowed.any(axis=-1)  # (B, T)
    assert_matches("row sums", w.sum(axis=-1), np.where(has_key, 1.0, 0.0), dtype)
    assert np.all(with_time(out, time)[~has_key] == 0), "a fully masked row must give a zero context"
    grads = backward(rng.standard_normal(out.shape).astype(dtype))
    assert all(g.dtype == dtype and g.shape == a[n].shape for n, g in grads.items())
    assert np.all(with_time(grads["q"], time)[~has_key] == 0), "a fully masked row passes no gradient to q"


@given(
    dims=sizes, score=st.sampled_from(SCORES), time=st.booleans(), seed=seeds, mask_kind=st.sampled_from(("padding",))
)
def test_masked_keys_get_zero_gradient_and_changing_them_changes_nothing(dims, score, time, seed, mask_kind):
    rng = np.random.default_rng(seed)
    a, mask = draw(rng, score, dims, time=time, mask_kind=mask_kind)
    out, _, backward = run(score, a, mask)
    grads = backward(rng.standard_normal(out.shape))
    hidden = ~mask  # (B, S): masked for every decoder step
    assert np.all(grads["k"][hidden] == 0) and np.all(grads["v"][hidden] == 0)
    # and what they hold changes nothing (as long as it is finite: 0 * NaN is NaN, as in PyTorch)
    b = dict(a, k=a["k"].copy(), v=a["v"].copy())
    b["k"][hidden] = 1e3 * rng.standard_normal(b["k"][hidden].shape)
    b["v"][hidden] = 1e3 * rng.standard_normal(b["v"][hidden].shape)
    out2, _, _ = run(score, b, mask)
    assert np.array_equal(out2, out)


# --------------------------------------------------------------------------- the scores, against each other


@given(dims=sizes, time=st.booleans(), mask_kind=st.sampled_from(("none", "padding")), dtype=dtypes, seed=seeds)
def test_dot_score_equals_general_score_with_identity_weight(dims, time, mask_kind, dtype, seed):
    rng = np.random.default_rng(seed)
    a, mask = draw(rng, "dot", dims, dtype, time, mask_kind)
    D = dims["D"]
    out_dot, cache_dot, back_dot = run("dot", a, mask)
    out_gen, cache_gen, back_gen = run("general", dict(a, w=np.eye(D, dtype=dtype)), mask)
    assert_matches("context", out_gen, out_dot, dtype)
    assert_matches("weights", cache_gen.weights, cache_dot.weights, dtype)
    dout = rng.standard_normal(out_dot.shape).astype(dtype)
    g_dot, g_gen = back_dot(dout), back_gen(dout)
    for name in ("q", "k", "v"):
        assert_matches(f"d{name}", g_gen[name], g_dot[name], dtype)


@given(dims=sizes, time=st.booleans(), mask_kind=st.sampled_from(("none", "fully_masked_row")), seed=seeds)
def test_concat_score_is_the_additive_score_with_split_weights(dims, time, mask_kind, seed):
    rng = np.random.default_rng(seed)
    a, mask = draw(rng, "concat", dims, time=time, mask_kind=mask_kind)
    D = dims["D"]
    add = dict(a, w_q=a["w_c"][:, :D], w_k=a["w_c"][:, D:], v_a=a["v_c"])
    out_c, _, back_c = run("concat", a, mask)
    out_a, _, back_a = run("additive", add, mask)
    assert_matches("context", out_c, out_a, np.float64)
    dout = rng.standard_normal(out_c.shape)
    g_c, g_a = back_c(dout), back_a(dout)
    for name in ("q", "k", "v"):
        assert_matches(f"d{name}", g_c[name], g_a[name], np.float64)
    assert_matches("dw_c", g_c["w_c"], np.concatenate([g_a["w_q"], g_a["w_k"]], axis=1), np.float64)
    assert_matches("dv_c", g_c["v_c"], g_a["v_a"], np.float64)


@given(dims=sizes, time=st.booleans(), dtype=dtypes, seed=seeds)
def test_additive_score_with_precomputed_key_projection_equals_the_direct_formula(dims, time, dtype, seed):
    """v_a^T tanh(W_q q + W_k k_s), written out per (b, t, s), vs W_k k computed once and reused."""
    rng = np.random.default_rng(seed)
    a, _ = draw(rng, "additive", dims, dtype, time)
    keys_proj = a["k"] @ a["w_k"].T  # (B, S, A): once per source sentence
    scores = F.additive_attention_scores(a["q"], keys_proj, a["w_q"], a["v_a"])
    q3 = with_time(a["q"], time)
    B, T, S = q3.shape[0], q3.shape[1], a["k"].shape[1]
    direct = np.empty((B, T, S))
    for b in range(B):
        for t in range(T):
            for s in range(S):
                z = a["w_q"].astype(np.float64) @ q3[b, t] + a["w_k"].astype(np.float64) @ a["k"][b, s]
                direct[b, t, s] = a["v_a"].astype(np.float64) @ np.tanh(z)
    assert scores.dtype == dtype
    assert_matches("scores", with_time(scores, time), direct, dtype)
    _, cache, _ = run("additive", a)
    weights, _ = F.softmax_forward(scores)
    assert_matches("softmax(scores) vs forward weights", weights, cache.weights, dtype)


@given(dims=sizes, score=st.sampled_from(SCORES), seed=seeds)
def test_a_time_axis_equals_one_call_per_decoder_step(dims, score, seed):
    """q (B, T, Dq) in one call == T calls with q[:, t]; step-independent gradients add up over the steps."""
    rng = np.random.default_rng(seed)
    a, mask = draw(rng, score, dims, time=True, mask_kind="padding")
    out, _, backward = run(score, a, mask)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout)
    summed = {n: np.zeros_like(g) for n, g in grads.items() if n != "q"}
    for t in range(dims["T"]):
        out_t, _, back_t = run(score, dict(a, q=a["q"][:, t]), mask)
        assert_matches(f"context at step {t}", out_t, out[:, t], np.float64)
        g_t = back_t(dout[:, t])
        assert_matches(f"dq at step {t}", g_t["q"], grads["q"][:, t], np.float64)
        for n in summed:
            summed[n] += g_t[n]
    for n, g in summed.items():
        assert_matches(f"d{n} summed over steps", grads[n], g, np.float64)


@given(dims=sizes, score=st.sampled_from(SCORES), time=st.booleans(), dtype=dtypes, seed=seeds)
def test_permuting_source_positions_with_their_mask_permutes_weights_and_keeps_the_context(
    dims, score, time, dtype, seed
):
    rng = np.random.default_rng(seed)
    a, mask = draw(rng, score, dims, dtype, time, "padding")
    perm = rng.permutation(dims["S"])
    out, cache, backward = run(score, a, mask)
    out_p, cache_p, backward_p = run(score, dict(a, k=a["k"][:, perm], v=a["v"][:, perm]), mask[:, perm])
    assert_matches("context", out_p, out, dtype)
    assert_matches("weights", cache_p.weights, cache.weights[..., perm], dtype)
    dout = rng.standard_normal(out.shape).astype(dtype)
    g, g_p = backward(dout), backward_p(dout)
    for name in g:
        expected = g[name][:, perm] if name in ("k", "v") else g[name]
        assert_matches(f"d{name}", g_p[name], expected, dtype)


# --------------------------------------------------------------------------- modules


def _module_pairs(dtype=np.float64):
    rng = np.random.default_rng(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    yield nt.AdditiveAttention(4, 3, 5, dtype=dtype, rng=rng), TC.AdditiveAttention(4, 3, 5, dtype=tdtype)
    for score, Dk, A in (("dot", 4, None), ("general", 3, None), ("concat", 3, 6)):
        yield (
            nt.LuongAttention(4, Dk, score, attn_dim=A, dtype=dtype, rng=rng),
            TC.LuongAttention(4, Dk, score, attn_dim=A, dtype=tdtype),
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_modules_share_state_dict_keys_with_the_twin_and_match_it(dtype):
    rng = np.random.default_rng(1)
    expected_keys = [["v_a.weight", "w_k.weight", "w_q.weight"], [], ["w.weight"], ["v_c.weight", "w_c.weight"]]
    for (ours, twin), keys in zip(_module_pairs(dtype), expected_keys, strict=True):
        assert sorted(ours.state_dict()) == sorted(twin.state_dict()) == keys
        for name, p in ours.named_parameters():
            assert p.shape == tuple(twin.state_dict()[name].shape) and p.dtype == dtype
        if keys:
            copy_numpy_to_torch(ours, twin)
        Dk = ours.key_dim
        query, keys_, values = (rng.standard_normal(s).astype(dtype) for s in [(2, 3, 4), (2, 5, Dk), (2, 5, 2)])
        mask = rng.random((2, 5)) < 0.7
        mask[:, 0] = True
        out, cache = ours.forward(query, keys_, values, mask)
        leaves = [torch.from_numpy(x.copy()).requires_grad_(True) for x in (query, keys_, values)]
        out_t, w_t = twin(*leaves, mask=torch.from_numpy(mask), return_weights=True)
        assert_matches("context", out, out_t, dtype)
        assert_matches("weights", cache.weights, w_t, dtype)
        dout = rng.standard_normal(out.shape).astype(dtype)
        dins = ours.backward(dout, cache)
        (out_t * torch.from_numpy(dout)).sum().backward()
        for name, g, leaf in zip(("dquery", "dkeys", "dvalues"), dins, leaves, strict=True):
            assert_matches(name, g, leaf.grad, dtype)
        grads = dict(ours.named_grads())
        for name, p in twin.named_parameters():
            assert_matches(f"d{name}", grads[name], p.grad, dtype)


def test_module_initialisation_follows_torch_linear():
    """Every weight is uniform in ±1/sqrt(in_features), like a bias-free torch.nn.Linear."""
    rng = np.random.default_rng(0)
    m = nt.AdditiveAttention(64, 48, 32, rng=rng)
    luong = nt.LuongAttention(64, 48, "concat", attn_dim=32, rng=rng)
    general = nt.LuongAttention(64, 48, "general", rng=rng)
    for name, p, fan_in in [
        ("w_q.weight", m.w_q.weight, 64),
        ("w_k.weight", m.w_k.weight, 48),
        ("v_a.weight", m.v_a.weight, 32),
        ("w_c.weight", luong.w_c.weight, 112),
        ("v_c.weight", luong.v_c.weight, 32),
        ("w.weight", general.w.weight, 48),
    ]:
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(p).max() <= bound, name
        assert np.abs(p).max() > 0.8 * bound, f"{name}: not spread over ±1/sqrt(in)"
    assert general.w.weight.shape == (64, 48)


def test_module_gradients_accumulate_over_two_backward_calls():
    rng = np.random.default_rng(2)
    for m in (nt.AdditiveAttention(3, 3, 4, rng=rng), nt.LuongAttention(3, 2, "concat", attn_dim=4, rng=rng)):
        q, k, v = rng.standard_normal((2, 3)), rng.standard_normal((2, 5, m.key_dim)), rng.standard_normal((2, 5, 2))
        out, cache = m.forward(q, k, v)
        dout = rng.standard_normal(out.shape)
        m.backward(dout, cache)
        once = {n: g.copy() for n, g in m.named_grads()}
        m.backward(dout, cache)
        for n, g in m.named_grads():
            assert np.allclose(g, 2 * once[n], rtol=0, atol=1e-14), n
        m.zero_grad()
        assert all(np.all(g == 0) for _, g in m.named_grads())


# --------------------------------------------------------------------------- bad input

RNG = np.random.default_rng(0)


def arr(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


Q, K, V = arr(2, 4), arr(2, 5, 3), arr(2, 5, 6)  # (B, Dq), (B, S, Dk), (B, S, Dv)
WQ, WK, VA = arr(7, 4), arr(7, 3), arr(7)  # A = 7
QT = arr(2, 3, 4)  # (B, T, Dq)


def additive(**kw):
    a = dict(q=Q, k=K, v=V, w_q=WQ, w_k=WK, v_a=VA)
    a.update(kw)
    return lambda: F.additive_attention_forward(**a)


def luong(**kw):
    a = dict(q=Q, k=arr(2, 5, 4), v=V, score="dot")
    a.update(kw)
    return lambda: F.luong_attention_forward(**a)


BAD = [
    ("q 1-D", additive(q=arr(4)), ValueError, r"^q:"),
    ("q 4-D", additive(q=arr(2, 1, 3, 4)), ValueError, r"^q:"),
    ("q int", additive(q=np.ones((2, 4), dtype=np.int64)), TypeError, r"^q:"),
    ("q list", additive(q=[[1.0] * 4] * 2), TypeError, r"^q:"),
    ("k batch != q batch", additive(k=arr(3, 5, 3), v=arr(3, 5, 6)), ValueError, r"^k:"),
    ("k 2-D", additive(k=arr(2, 3)), ValueError, r"^k:"),
    ("k empty source", additive(k=arr(2, 0, 3), v=arr(2, 0, 6)), ValueError, r"^k:"),
    ("v length != k length", additive(v=arr(2, 4, 6)), ValueError, r"^v:"),
    ("v float32 with q float64", additive(v=arr(2, 5, 6, dtype=np.float32)), TypeError, r"^v:"),
    ("w_q width != Dq", additive(w_q=arr(7, 3)), ValueError, r"^w_q:"),
    ("w_q rows != A", additive(w_q=arr(6, 4)), ValueError, r"^w_q:"),
    ("w_k width != Dk", additive(w_k=arr(7, 4)), ValueError, r"^w_k:"),
    ("v_a 2-D", additive(v_a=arr(1, 7)), ValueError, r"^v_a:"),
    ("w_k float32", additive(w_k=arr(7, 3, dtype=np.float32)), TypeError, r"^w_k:"),
    ("mask float", additive(mask=np.ones((2, 5))), TypeError, r"^mask:"),
    ("mask int", additive(mask=np.ones((2, 5), dtype=np.int64)), TypeError, r"^mask:"),
    ("mask wrong S", additive(mask=np.ones((2, 4), dtype=bool)), ValueError, r"^mask:"),
    ("mask 1-D", additive(mask=np.ones(5, dtype=bool)), ValueError, r"^mask:"),
    ("mask 3-D without time axis", additive(mask=np.ones((2, 1, 5), dtype=bool)), ValueError, r"^mask:"),
    ("mask (B, T, S) wrong T", additive(q=QT, mask=np.ones((2, 4, 5), dtype=bool)), ValueError, r"^mask:"),
    ("luong unknown score", luong(score="cosine"), ValueError, r"^score:"),
    ("luong dot Dk != Dq", luong(k=K), ValueError, r"^k:"),
    ("luong dot given w", luong(w=arr(4, 4)), ValueError, r"^w:"),
    ("luong general without w", luong(score="general"), ValueError, r"^w:"),
    ("luong general w shape", luong(score="general", k=K, w=arr(3, 4)), ValueError, r"^w:"),
    ("luong general w float32", luong(score="general", k=K, w=arr(4, 3, dtype=np.float32)), TypeError, r"^w:"),
    ("luong concat without v_c", luong(score="concat", w_c=arr(7, 8)), ValueError, r"^v_c:"),
    ("luong concat w_c width", luong(score="concat", w_c=arr(7, 7), v_c=VA), ValueError, r"^w_c:"),
    ("luong concat given w", luong(score="concat", w_c=arr(7, 8), v_c=VA, w=arr(4, 4)), ValueError, r"^w:"),
    ("scores keys_proj width", lambda: F.additive_attention_scores(Q, arr(2, 5, 6), WQ, VA), ValueError, r"^w_q:"),
    ("module query width", lambda: nt.AdditiveAttention(3, 3, 7).forward(Q, K, V), ValueError, r"^query:"),
    (
        "module query dtype",
        lambda: nt.AdditiveAttention(4, 3, 7, dtype=np.float32).forward(Q, K, V),
        TypeError,
        r"^query:",
    ),
    ("module keys width", lambda: nt.LuongAttention(4, 4, "dot").forward(Q, K, V), ValueError, r"^keys:"),
    ("module dot key_dim", lambda: nt.LuongAttention(4, 3, "dot"), ValueError, r"^key_dim:"),
    ("module attn_dim with general", lambda: nt.LuongAttention(4, 3, "general", attn_dim=5), ValueError, r"^attn_dim:"),
    ("module unknown score", lambda: nt.LuongAttention(4, 3, "additive"), ValueError, r"^score:"),
    ("module attn_dim 0", lambda: nt.AdditiveAttention(4, 3, 0), ValueError, r"^attn_dim:"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_rejected_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_backward_rejects_a_wrong_dout_and_a_foreign_cache():
    out, cache = F.additive_attention_forward(Q, K, V, WQ, WK, VA)
    with pytest.raises(ValueError, match=r"^dout:"):
        F.additive_attention_backward(arr(2, 5), cache)
    with pytest.raises(TypeError, match=r"^dout:"):
        F.additive_attention_backward(out.astype(np.float32), cache)
    _, luong_cache = F.luong_attention_forward(Q, arr(2, 5, 4), V)
    with pytest.raises(ValueError, match=r"^cache:"):
        nt.LuongAttention(4, 4, "general").backward(out, luong_cache)


# --------------------------------------------------------------------------- the cost model


@pytest.mark.parametrize("B", [1, 3, 16])
def test_flop_formulas_rank_additive_above_multiplicative_and_grow_linearly_in_s(B):
    for d in (1, 2, 8, 64, 512):
        for S in (1, 2, 16, 256):
            f = {s: attention_cost.score_flops(s, B, S, d) for s in attention_cost.SCORES}
            assert f["additive"] == f["concat"] >= f["general"] >= f["dot"] > 0
            assert f["additive"] > f["additive_cached"] >= f["dot"]
            for s in attention_cost.SCORES:
                # affine in S: equal increments, and a constant part that does not depend on S
                f1, f2, f3 = (attention_cost.score_flops(s, B, n * S, d) for n in (1, 2, 3))
                assert f3 - f2 == f2 - f1 > 0, s
                assert attention_cost.step_flops(s, B, S, d) <= f[s]
    # the closed forms of the module docstring, for B = 2, S = 3, Dq = 4, Dk = 5, A = 6
    assert attention_cost.score_flops("additive", 2, 3, 4, 5, 6) == 2 * 6 * 4 * 2 + 2 * 3 * (2 * 6 * 5 + 4 * 6)
    assert attention_cost.score_flops("general", 2, 3, 4, 5) == 2 * 2 * 4 * 5 + 2 * 2 * 3 * 5
    assert attention_cost.score_flops("dot", 2, 3, 4) == 2 * 2 * 3 * 4
    with pytest.raises(ValueError, match=r"^Dk:"):
        attention_cost.score_flops("dot", 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"^score:"):
        attention_cost.score_flops("cosine", 2, 3, 4)


def test_cost_sweep_runs_and_writes_a_table_and_a_plot(tmp_path):
    rows = attention_cost.run_sweep(S_values=(2, 4), d_values=(3,), B=2, repeats=1, dtype=np.float64)
    assert len(rows) == 2 * len(attention_cost.SCORES)
    assert all(r.forward_ms > 0 for r in rows)
    assert all(np.isnan(r.forward_backward_ms) == (r.score == "additive_cached") for r in rows)
    md, png = attention_cost.write_report(rows, tmp_path)
    text = md.read_text()
    assert text.count("\n| 3 |") == len(rows) and "additive_cached" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"^scores:"):
        attention_cost.run_sweep(scores=("cosine",))
