"""Flash-style attention: the standard attention's numbers, tile by tile, in memory linear in T + S.

The registry case ``flash_attention`` (``torch_transformer/parity/cases_flash.py``) runs in the
generated tests against the twin, finite differences and ``F.scaled_dot_product_attention``.
This file checks what those cannot: that the tiled kernel equals our standard attention to
1e-12 in float64 for any tile sizes, masks and windows; what the cache holds; which tiles are
skipped; the memory of forward + backward at T = S = 4096; ``MultiHeadAttention``'s
``attention="flash"``; and attention dropout, the same in both kernels given the same mask.

Shape legend: B batch, H heads, T query length, S key length, D head width, Dv value width,
Bq / Bk the query / key tile sizes.
"""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer as nt
import numpy_transformer.functional as F
from numpy_transformer.functional.flash_attention import FlashAttentionCache
from numpy_transformer.testing import assert_close, numerical_gradients, tolerance
from torch_transformer.parity import MASK_KINDS, draw_mask
from torch_transformer.parity.registry import normal

from .strategies import dtypes, seeds

# Tiling only reorders the sums of the softmax: in float64 the two attentions agree to a few
# ulps (worst seen: about 2e-15), far inside the 1e-10 contract. The issue asks for 1e-12.
FLASH_VS_STANDARD_FLOAT64 = 1e-12


def flash_vs_standard_tolerance(dtype) -> float:
    """1e-12 in float64; the float32 contract (1e-5 relative) in float32."""
    return FLASH_VS_STANDARD_FLOAT64 if np.dtype(dtype) == np.float64 else tolerance("cpu", dtype)


def attention_inputs(rng: np.random.Generator, B: int, H: int, T: int, S: int, D: int, dtype, Dv: int | None = None):
    """q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv), dout (B, H, T, Dv)."""
    Dv = D + 1 if Dv is None else Dv
    shapes = [(B, H, T, D), (B, H, S, D), (B, H, S, Dv), (B, H, T, Dv)]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def standard_with_window(q, k, v, dout, mask, is_causal, window, scale=None):
    """The standard attention with the sliding window as a boolean mask: out, (dq, dk, dv), cache."""
    if window is not None:
        local = F.sliding_window_mask(q.shape[-2], window, k.shape[-2])  # (T, S)
        mask = local if mask is None else mask & local
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
    return out, F.scaled_dot_product_attention_backward(dout, cache), cache


# --------------------------------------------------------------------------- equal to the standard attention


@given(
    B=st.integers(1, 2),
    H=st.integers(1, 2),
    T=st.integers(1, 9),
    S=st.integers(1, 9),
    D=st.integers(1, 4),
    block_q=st.integers(1, 6),
    block_k=st.integers(1, 6),
    mask_kind=st.sampled_from(MASK_KINDS),
    window=st.none() | st.integers(1, 6),
    scale=st.none() | st.sampled_from([0.3, 2.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_flash_attention_equals_standard_attention_for_any_tiles_masks_and_windows(
    B, H, T, S, D, block_q, block_k, mask_kind, window, scale, dtype, seed
):
    """Output, every gradient and the log-sum-exp, with tiles that divide T and S and tiles that do not."""
    rng = np.random.default_rng(seed)
    mask, is_causal = draw_mask(rng, mask_kind, B, H, T, S)
    q, k, v, dout = attention_inputs(rng, B, H, T, S, D, dtype)
    ref_out, ref_grads, ref_cache = standard_with_window(q, k, v, dout, mask, is_causal, window, scale)
    out, cache = F.flash_attention_forward(
        q, k, v, mask=mask, is_causal=is_causal, scale=scale, block_size=(block_q, block_k), window=window
    )
    grads = F.flash_attention_backward(dout, cache)
    tol = flash_vs_standard_tolerance(dtype)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert_close("out (flash vs standard)", out, ref_out, tol)
    for name, g, ref in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(f"{name} (flash vs standard)", g, ref, tol)
    assert_close("weights recomputed from the lse", cache.weights, ref_cache.weights, tol)


def test_flash_attention_at_real_sizes_equals_standard_attention_to_1e_12():
    """Tiles of 128 and a short last block (T = 300, S = 200), causal plus padding, and a window of 50."""
    rng = np.random.default_rng(0)
    q, k, v, dout = attention_inputs(rng, 2, 3, 300, 200, 16, np.float64, Dv=16)
    pad = (np.arange(200) < np.array([200, 130])[:, None])[:, None, None, :]  # (B, 1, 1, S)
    for mask, is_causal, window in [(None, False, None), (pad, True, None), (pad, False, 50)]:
        ref_out, ref_grads, _ = standard_with_window(q, k, v, dout, mask, is_causal, window)
        out, cache = F.flash_attention_forward(q, k, v, mask=mask, is_causal=is_causal, window=window)
        assert (cache.block_q, cache.block_k) == (128, 128)
        assert_close("out", out, ref_out, FLASH_VS_STANDARD_FLOAT64)
        for name, g, ref in zip(("dq", "dk", "dv"), F.flash_attention_backward(dout, cache), ref_grads, strict=True):
            assert_close(name, g, ref, FLASH_VS_STANDARD_FLOAT64)


def test_fully_masked_rows_give_zero_output_and_zero_gradient_as_in_standard_attention():
    rng = np.random.default_rng(1)
    q, k, v, dout = attention_inputs(rng, 1, 1, 6, 5, 4, np.float64)
    mask = np.ones((1, 1, 6, 5), bool)
    mask[..., 1, :] = False  # row 1 may attend to nothing
    out, cache = F.flash_attention_forward(q, k, v, mask=mask, block_size=2)
    assert np.all(out[..., 1, :] == 0) and cache.lse[0, 0, 1] == np.inf
    assert np.all(cache.weights[..., 1, :] == 0)
    dq, dk, dv = F.flash_attention_backward(dout, cache)
    assert np.all(dq[..., 1, :] == 0)
    dout2 = dout.copy()
    dout2[..., 1, :] = 0  # the keys get nothing from row 1: dropping its upstream gradient changes nothing
    _, dk2, dv2 = F.flash_attention_backward(dout2, cache)
    assert np.array_equal(dk, dk2) and np.array_equal(dv, dv2)
    # queries past the last key of a short window see nothing at all: T = 6 > S = 3, window 2
    out, cache = F.flash_attention_forward(q, k[..., :3, :], v[..., :3, :], window=2, block_size=2)
    assert np.all(out[..., 5, :] == 0) and np.all(cache.lse[..., 5] == np.inf)
    assert np.all(np.isfinite(F.flash_attention_backward(dout, cache)[0]))


# --------------------------------------------------------------------------- the cache and the skipped tiles


@given(T=st.integers(1, 12), S=st.integers(1, 12), block=st.integers(1, 5), dtype=dtypes, seed=seeds)
def test_the_cache_keeps_one_log_sum_exp_per_row_and_no_score_sized_array(T, S, block, dtype, seed):
    """The cache's arrays are q, k, v, out and lse (B, H, T); lse is the log-sum-exp of the scaled scores."""
    rng = np.random.default_rng(seed)
    q, k, v, _ = attention_inputs(rng, 2, 2, T, S, 3, dtype)
    out, cache = F.flash_attention_forward(q, k, v, is_causal=True, block_size=block)
    arrays = {f.name: getattr(cache, f.name) for f in dataclasses.fields(cache)}
    arrays = {name: a for name, a in arrays.items() if isinstance(a, np.ndarray)}
    assert sorted(arrays) == ["k", "lse", "out", "q", "v"]
    assert cache.lse.shape == (2, 2, T) and cache.out is out
    scores = (q @ np.swapaxes(k, -1, -2)).astype(np.float64) / math.sqrt(3)  # (B, H, T, S)
    scores = np.where(F.causal_mask(T, S), scores, -np.inf)
    row_max = np.max(scores, axis=-1, keepdims=True)  # every row sees key 0
    expected = (row_max + np.log(np.exp(scores - row_max).sum(axis=-1, keepdims=True)))[..., 0]
    assert_close("lse", cache.lse, expected, tolerance("cpu", dtype))


@pytest.mark.parametrize("block", [1, 3, 4])
def test_causal_and_window_skip_every_tile_no_query_may_attend_and_padding_skips_padded_key_blocks(block):
    T = S = 24
    rng = np.random.default_rng(2)
    q, k, v, _ = attention_inputs(rng, 1, 1, T, S, 2, np.float64)
    n = -(-T // block)  # blocks per axis
    assert F.flash_attention_forward(q, k, v, block_size=block)[1].tiles == n * n
    # causal: the tiles on and below the diagonal, n (n + 1) / 2 when the blocks are square
    assert F.flash_attention_forward(q, k, v, is_causal=True, block_size=block)[1].tiles == n * (n + 1) // 2
    # a window of W touches, per query block, the key blocks from (i0 - W + 1) to i1 - 1
    for window in (1, 5):
        tiles = sum(
            len(range((max(0, i0 - window + 1) // block) * block, min(S, i0 + block), block))
            for i0 in range(0, T, block)
        )
        assert F.flash_attention_forward(q, k, v, window=window, block_size=block)[1].tiles == tiles
    # keys 12 .. 23 padded: their key blocks are skipped wherever a whole block is padding
    keep = (np.arange(S) < 12)[None, None, None, :]  # (1, 1, 1, S)
    assert F.flash_attention_forward(q, k, v, mask=keep, block_size=block)[1].tiles == n * -(-12 // block)


def test_sliding_window_cost_grows_as_t_times_window_not_t_squared():
    """Doubling T doubles the tiles of a window; the tiles of full causal attention grow fourfold."""
    rng = np.random.default_rng(3)

    def tiles(T: int, **kwargs) -> int:
        q, k, v, _ = attention_inputs(rng, 1, 1, T, T, 1, np.float64, Dv=1)
        return F.flash_attention_forward(q, k, v, block_size=16, **kwargs)[1].tiles

    # Each query block of 16 reads its own key block and the two before it (keys t - 31 .. t), but the
    # first reads one block and the second two: 3 n - 3 tiles for n blocks, linear in T.
    assert tiles(256, window=32) == 3 * 16 - 3 and tiles(512, window=32) == 3 * 32 - 3
    assert tiles(512, is_causal=True) == 528 and tiles(256, is_causal=True) == 136  # n (n + 1) / 2


@given(T=st.integers(2, 10), window=st.integers(1, 4), block=st.integers(1, 4), seed=seeds)
def test_keys_outside_the_sliding_window_change_nothing_and_get_no_gradient(T, window, block, seed):
    """Query t reads keys t - window < s <= t only: the last query's output ignores every earlier key."""
    rng = np.random.default_rng(seed)
    q, k, v, _ = attention_inputs(rng, 1, 2, T, T, 3, np.float64)
    out, cache = F.flash_attention_forward(q, k, v, window=window, block_size=block)
    far = slice(0, max(0, T - window))  # the keys the last query cannot see
    dout = np.zeros_like(out)
    dout[..., -1, :] = rng.standard_normal(dout[..., -1, :].shape)  # only the last output matters
    dq, dk, dv = F.flash_attention_backward(dout, cache)
    assert np.all(dk[..., far, :] == 0) and np.all(dv[..., far, :] == 0)
    assert np.all(dq[..., :-1, :] == 0)
    k2, v2 = k.copy(), v.copy()
    k2[..., far, :] += 5.0
    v2[..., far, :] -= 5.0
    out2, _ = F.flash_attention_forward(q, k2, v2, window=window, block_size=block)
    assert np.array_equal(out2[..., -1, :], out[..., -1, :])


def test_sliding_window_mask_is_causal_local_and_a_window_of_t_is_the_causal_mask():
    assert np.array_equal(
        F.sliding_window_mask(4, 2),
        np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool),
    )
    assert np.array_equal(F.sliding_window_mask(5, 1, 7), np.eye(5, 7, dtype=bool))
    assert np.array_equal(F.sliding_window_mask(6, 6, 9), F.causal_mask(6, 9))
    with pytest.raises(ValueError, match="window"):
        F.sliding_window_mask(4, 0)


# --------------------------------------------------------------------------- memory


def test_forward_and_backward_at_4096_keep_memory_linear_in_t_plus_s_far_below_one_score_array():
    """T = S = 4096, D = 64, one head, float64, tiles of 128 x 128, measured with tracemalloc.

    Beyond the inputs: the four results (out, dq, dk, dv: 2 (T + S) D numbers, 8 MiB), two
    per-row vectors (lse and D = rowsum(dout * out), 2 T numbers) and at most a few tiles alive at
    once (the bound allows 16, 2 MiB). Measured: 8.8 MiB. One (T, S) score array alone is 128 MiB;
    the standard attention keeps several.
    """
    T = S = 4096
    D, block = 64, 128
    dtype = np.dtype(np.float64)
    rng = np.random.default_rng(4)
    q, k, v, dout = attention_inputs(rng, 1, 1, T, S, D, dtype, Dv=D)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out, cache = F.flash_attention_forward(q, k, v, block_size=block)
        grads = F.flash_attention_backward(dout, cache)
        extra = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 1, T, D) and all(g.shape == (1, 1, T, D) for g in grads)
    results = 2 * (T + S) * D * dtype.itemsize  # out, dq, dk, dv
    bound = results + 2 * T * dtype.itemsize + 16 * block * block * dtype.itemsize
    one_score_array = T * S * dtype.itemsize
    assert results <= extra <= bound, f"extra memory {extra / 2**20:.2f} MiB, bound {bound / 2**20:.2f} MiB"
    assert extra < one_score_array / 10


# --------------------------------------------------------------------------- MultiHeadAttention


def _mha_pair(C: int, H: int, dtype) -> tuple[nt.MultiHeadAttention, nt.MultiHeadAttention]:
    standard = nt.MultiHeadAttention(C, H, dtype=dtype, rng=np.random.default_rng(5))
    flash = nt.MultiHeadAttention(C, H, dtype=dtype, rng=np.random.default_rng(6), attention="flash")
    # Random weights at the registry's scale (0.5), as in the MultiHeadAttention parity case: the same
    # gradients, k_proj.bias's included (zero in exact arithmetic, rounding in float32), are compared there.
    rng = np.random.default_rng(7)
    weights = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in standard.named_parameters()}
    standard.load_state_dict(weights)
    flash.load_state_dict(weights)
    return standard, flash


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["self, causal", "self, key padding", "cross, 4-D mask"])
def test_multi_head_attention_flash_equals_standard_forward_and_backward(kind, dtype):
    B, T, S, C, H = 2, 7, 5, 8, 2
    standard, flash = _mha_pair(C, H, dtype)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((B, T, C)).astype(dtype)
    memory = rng.standard_normal((B, S, C)).astype(dtype)
    if kind == "self, causal":
        args, kwargs = (x, x, x), {"is_causal": True}
    elif kind == "self, key padding":
        args, kwargs = (x, x, x), {"key_padding_mask": np.arange(T)[None, :] < np.array([[7], [3]])}
    else:
        args, kwargs = (x, memory, memory), {"mask": rng.random((B, 1, T, S)) < 0.7}
    out_s, cache_s = standard.forward(*args, **kwargs)
    out_f, cache_f = flash.forward(*args, **kwargs)
    assert isinstance(cache_f.attention, FlashAttentionCache)
    dout = rng.standard_normal(out_s.shape).astype(dtype)
    tol = flash_vs_standard_tolerance(dtype)
    assert_close("out", out_f, out_s, tol)
    assert_close("weights", cache_f.weights, cache_s.weights, tol)
    for name, g_f, g_s in zip(
        ("dquery", "dkey", "dvalue"), flash.backward(dout, cache_f), standard.backward(dout, cache_s), strict=True
    ):
        assert_close(name, g_f, g_s, tol)
    flash_grads = dict(flash.named_grads())
    for name, g_s in standard.named_grads():
        assert_close(f"grad {name}", flash_grads[name], g_s, tol)
    assert flash.state_dict().keys() == standard.state_dict().keys()


def test_multi_head_attention_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="attention: expected one of"):
        nt.MultiHeadAttention(4, 2, attention="fast")


# --------------------------------------------------------------------------- attention dropout


@given(
    T=st.integers(1, 9),
    S=st.integers(1, 9),
    block_q=st.integers(1, 6),
    block_k=st.integers(1, 6),
    mask_kind=st.sampled_from(MASK_KINDS),
    causal=st.booleans(),
    p=st.sampled_from([0.1, 0.5]),
    seed=seeds,
)
def test_flash_attention_with_dropout_equals_standard_attention_given_the_same_mask(
    T, S, block_q, block_k, mask_kind, causal, p, seed
):
    """float64, dropout on the probabilities with one explicit keep-mask: output and every gradient to 1e-12."""
    rng = np.random.default_rng(seed)
    B, H, D = 2, 2, 3
    q, k, v, dout = attention_inputs(rng, B, H, T, S, D, np.float64)
    mask, mask_is_causal = draw_mask(rng, mask_kind, B, H, T, S)
    keep = rng.random((B, H, T, S)) >= p  # (B, H, T, S) True = kept
    keep.flat[0] = False  # at least one weight dropped, whatever the draw
    args = dict(mask=mask, is_causal=causal or mask_is_causal, dropout_p=p, dropout_mask=keep)
    out_s, cache_s = F.scaled_dot_product_attention_forward(q, k, v, **args)
    out_f, cache_f = F.flash_attention_forward(q, k, v, block_size=(block_q, block_k), **args)
    assert_close("out", out_f, out_s, FLASH_VS_STANDARD_FLOAT64)
    grads_s = F.scaled_dot_product_attention_backward(dout, cache_s)
    grads_f = F.flash_attention_backward(dout, cache_f)
    for name, g_f, g_s in zip(("dq", "dk", "dv"), grads_f, grads_s, strict=True):
        assert_close(name, g_f, g_s, FLASH_VS_STANDARD_FLOAT64)


def test_flash_attention_with_dropout_backward_matches_finite_differences():
    """A fixed keep-mask makes dropout a fixed linear map: the backward is checked against central differences,
    with the mask, a causal pattern and tiles that do not divide T or S."""
    rng = np.random.default_rng(11)
    B, H, T, S, D, p = 1, 2, 5, 6, 3, 0.3
    q, k, v, dout = attention_inputs(rng, B, H, T, S, D, np.float64)
    keep = rng.random((B, H, T, S)) >= p
    assert 0 < keep.mean() < 1
    kwargs = dict(is_causal=True, block_size=(2, 4), dropout_p=p, dropout_mask=keep)
    _, cache = F.flash_attention_forward(q, k, v, **kwargs)
    analytic = dict(zip(("q", "k", "v"), F.flash_attention_backward(dout, cache), strict=True))
    inputs = {"q": q, "k": k, "v": v}
    numeric = numerical_gradients(lambda: F.flash_attention_forward(q, k, v, **kwargs)[0], inputs, dout)
    for name in inputs:
        assert np.any(analytic[name] != 0), f"d{name} is all zero: nothing tested"
        assert_close(f"d{name}", analytic[name], numeric[name], tolerance("finite_differences", np.float64))


def test_flash_attention_draws_the_same_dropout_mask_as_the_standard_attention_from_the_same_generator():
    rng = np.random.default_rng(12)
    q, k, v, _ = attention_inputs(rng, 2, 2, 6, 7, 3, np.float64)
    out_s, cache_s = F.scaled_dot_product_attention_forward(q, k, v, dropout_p=0.4, rng=np.random.default_rng(3))
    out_f, cache_f = F.flash_attention_forward(q, k, v, dropout_p=0.4, rng=np.random.default_rng(3), block_size=4)
    np.testing.assert_array_equal(cache_f.dropout_keep, cache_s.dropout.keep)
    assert not cache_f.dropout_keep.all()
    assert_close("out", out_f, out_s, FLASH_VS_STANDARD_FLOAT64)
    with pytest.raises(TypeError, match="rng"):
        F.flash_attention_forward(q, k, v, dropout_p=0.4)  # dropout needs a generator or a mask
    with pytest.raises(ValueError, match="dropout_mask"):
        F.flash_attention_forward(q, k, v, dropout_p=0.4, dropout_mask=np.ones((2, 2, 6, 6), bool))


@pytest.mark.parametrize("kind", ["self, causal", "cross, 4-D mask"])
def test_multi_head_attention_flash_with_dropout_equals_standard_in_training_mode(kind):
    """Dropout 0.2 on the attention weights, the same keep-mask for both: float64, 1e-12, every gradient."""
    B, T, S, C, H = 2, 7, 5, 8, 2
    dtype = np.float64
    standard, flash = _mha_pair(C, H, dtype)
    standard.dropout = flash.dropout = 0.2
    rng = np.random.default_rng(9)
    x = rng.standard_normal((B, T, C))
    memory = rng.standard_normal((B, S, C))
    if kind == "self, causal":
        args, kwargs = (x, x, x), {"is_causal": True}
    else:
        args, kwargs = (x, memory, memory), {"mask": rng.random((B, 1, T, S)) < 0.7}
    L = args[1].shape[1]
    keep = rng.random((B, H, T, L)) >= 0.2  # (B, H, T, S)
    out_s, cache_s = standard.forward(*args, dropout_mask=keep, **kwargs)
    out_f, cache_f = flash.forward(*args, dropout_mask=keep, **kwargs)
    assert isinstance(cache_f.attention, FlashAttentionCache) and cache_f.attention.dropout_keep is keep
    eval_out, _ = standard.eval().forward(*args, **kwargs)
    assert not np.allclose(eval_out, out_s), "dropout changed nothing: nothing tested"
    dout = rng.standard_normal(out_s.shape)
    assert_close("out", out_f, out_s, FLASH_VS_STANDARD_FLOAT64)
    for name, g_f, g_s in zip(
        ("dquery", "dkey", "dvalue"), flash.backward(dout, cache_f), standard.backward(dout, cache_s), strict=True
    ):
        assert_close(name, g_f, g_s, FLASH_VS_STANDARD_FLOAT64)
    flash_grads = dict(flash.named_grads())
    for name, g_s in standard.named_grads():
        assert_close(f"grad {name}", flash_grads[name], g_s, FLASH_VS_STANDARD_FLOAT64)


# --------------------------------------------------------------------------- bad input


def test_bad_tiles_windows_and_masks_are_named_errors():
    rng = np.random.default_rng(0)
    q, k, v, _ = attention_inputs(rng, 1, 1, 3, 4, 2, np.float64)
    with pytest.raises(ValueError, match="block_size"):
        F.flash_attention_forward(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="block_size"):
        F.flash_attention_forward(q, k, v, block_size=(2, 2, 2))
    with pytest.raises(ValueError, match="window"):
        F.flash_attention_forward(q, k, v, window=0)
    with pytest.raises(TypeError, match="mask"):
        F.flash_attention_forward(q, k, v, mask=np.ones((3, 4)))
    with pytest.raises(ValueError, match="mask"):
        F.flash_attention_forward(q, k, v, mask=np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="is_causal"):
        F.flash_attention_forward(q, k, v, is_causal=1)
    out, cache = F.flash_attention_forward(q, k, v)
    with pytest.raises(TypeError, match="dout"):
        F.flash_attention_backward(out.astype(np.float32), cache)
