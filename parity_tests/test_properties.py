"""The mathematics of each op, checked on its own (no PyTorch involved).

These catch bugs that a twin written with the same misunderstanding would share.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer as nt
import numpy_transformer.functional as F
from torch_transformer.parity import CASES

from .helpers import assert_matches
from .strategies import dims_for, dtypes, seeds

# --------------------------------------------------------------------------- softmax family


@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 6)),
    dtype=dtypes,
    seed=seeds,
    shift=st.floats(-1e3, 1e3),
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
)
def test_softmax_rows_sum_to_one_and_are_shift_invariant(shape, dtype, seed, shift, magnitude):
    x = (magnitude * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    y, _ = F.softmax_forward(x)
    assert y.dtype == dtype
    assert np.all(np.isfinite(y)) and np.all(y >= 0)
    assert_matches("row sums", y.sum(axis=-1), np.ones(shape[0]), dtype)
    y_shifted, _ = F.softmax_forward(x + dtype(shift))
    # Adding the shift rounds each logit by up to half an ulp of |x| + |shift|;
    # softmax moves by at most twice that. The contract tolerance covers the rest.
    rounding = 2 * np.finfo(dtype).eps * (np.abs(x).max() + abs(shift))
    assert np.abs(y_shifted - y).max() <= rounding + (1e-10 if dtype == np.float64 else 1e-5)


@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 6)), dtype=dtypes, seed=seeds)
def test_log_softmax_is_log_of_softmax_and_stays_finite_for_huge_logits(shape, dtype, seed):
    x = (1e4 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    logp, _ = F.log_softmax_forward(x)
    assert np.all(np.isfinite(logp)), "log_softmax must not produce -inf for very negative logits"
    assert_matches("sum exp(log_softmax)", np.exp(logp).sum(axis=-1), np.ones(shape[0]), dtype)


@given(N=st.integers(1, 8), V=st.integers(2, 9), dtype=dtypes, seed=seeds)
def test_cross_entropy_without_smoothing_equals_nll_of_log_softmax(N, V, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((N, V))).astype(dtype)
    targets = rng.integers(0, V, size=N)
    targets[0] = -100 if N > 1 else targets[0]
    loss, _ = F.cross_entropy_forward(logits, targets)
    logp, _ = F.log_softmax_forward(logits)
    valid = targets != -100
    nll = -logp[np.arange(N)[valid], targets[valid]].mean()
    assert loss.dtype == dtype and loss.shape == ()
    assert_matches("loss", loss, nll, dtype)


@given(N=st.integers(1, 8), V=st.integers(2, 9), eps=st.floats(0.0, 1.0), seed=seeds)
def test_cross_entropy_gradient_rows_sum_to_zero_and_ignored_rows_get_none(N, V, eps, seed):
    """dlogits = (p - q)/N_valid: p and q both sum to 1, so every row of the gradient sums to 0."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, V))
    targets = rng.integers(0, V, size=N)
    targets[rng.random(N) < 0.3] = -100
    _, cache = F.cross_entropy_forward(logits, targets, label_smoothing=eps)
    d = F.cross_entropy_backward(1.0, cache)
    assert np.abs(d.sum(axis=1)).max() < 1e-12
    assert np.all(d[targets == -100] == 0)


def test_cross_entropy_with_every_row_ignored_is_nan_with_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((3, 4))
    loss, cache = F.cross_entropy_forward(logits, np.full(3, -100))
    assert np.isnan(loss)
    assert np.array_equal(F.cross_entropy_backward(1.0, cache), np.zeros((3, 4)))


# --------------------------------------------------------------------------- layer norm


@given(B=st.integers(1, 4), C=st.integers(2, 16), dtype=dtypes, seed=seeds)
def test_layer_norm_rows_have_zero_mean_and_unit_variance_before_the_affine(B, C, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (5 * rng.standard_normal((B, C)) + 3).astype(dtype)
    x = x + np.linspace(-1, 1, C, dtype=dtype)  # keep rows from being nearly constant
    eps = 1e-5
    y, cache = F.layer_norm_forward(x, rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype), eps)
    xhat = cache.xhat
    assert_matches("row mean of xhat", xhat.mean(axis=-1), np.zeros(B), dtype)
    var = x.astype(np.float64).var(axis=-1)
    assert_matches("row variance of xhat", xhat.var(axis=-1), var / (var + eps), dtype)
    # and the affine is applied per feature
    assert y.dtype == dtype


def test_layer_norm_gradient_is_orthogonal_to_constant_shifts():
    """LayerNorm ignores adding c to a row, so dx is orthogonal to the all-ones vector (sums to 0)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 7))
    _, cache = F.layer_norm_forward(x, rng.standard_normal(7), rng.standard_normal(7))
    dx, _, _ = F.layer_norm_backward(rng.standard_normal((4, 7)), cache)
    assert np.abs(dx.sum(axis=-1)).max() < 1e-12


# --------------------------------------------------------------------------- attention


@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_attention_weights_are_distributions_over_allowed_keys(data, dtype, seed):
    dims = data.draw(dims_for(CASES["scaled_dot_product_attention"]))
    B, H, T, S, D = dims["B"], dims["H"], dims["T"], dims["S"], dims["D"]
    rng = np.random.default_rng(seed)
    from torch_transformer.parity import draw_mask

    mask, is_causal = draw_mask(rng, dims["mask"], B, H, T, S)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in [(B, H, T, D), (B, H, S, D), (B, H, S, D)])
    _, cache = F.scaled_dot_product_attention_forward(q, k, v, mask=mask, is_causal=is_causal)
    allowed = np.ones((B, H, T, S), bool)
    if mask is not None:
        allowed &= mask
    if is_causal:
        allowed &= F.causal_mask(T, S)
    w = cache.weights
    assert np.all(w[~allowed] == 0), "a masked key received weight"
    row_has_key = allowed.any(axis=-1)
    expected = np.where(row_has_key, 1.0, 0.0)  # fully masked rows: all-zero weights (documented)
    assert_matches("row sums", w.sum(axis=-1), expected, dtype)


@given(B=st.integers(1, 2), T=st.integers(2, 6), H=st.sampled_from([1, 2]), seed=seeds, t=st.integers(0, 5))
def test_causal_output_never_depends_on_later_positions(B, T, H, seed, t):
    """Under a causal mask the gradient of output t with respect to inputs after t is exactly zero."""
    t = t % T
    rng = np.random.default_rng(seed)
    C = 4 * H
    mha = nt.MultiHeadAttention(C, H, rng=rng)
    x = rng.standard_normal((B, T, C))
    out, cache = mha.forward(x, x, x, is_causal=True)
    dout = np.zeros_like(out)
    dout[:, t] = rng.standard_normal((B, C))  # only output position t matters
    dq, dk, dv = mha.backward(dout, cache)
    dx = dq + dk + dv
    assert np.all(dx[:, t + 1 :] == 0), "gradient leaked to future positions"
    assert np.abs(dx[:, : t + 1]).max() > 0
    # and changing the future changes nothing at or before t
    x2 = x.copy()
    x2[:, t + 1 :] += rng.standard_normal(x2[:, t + 1 :].shape)
    out2, _ = mha.forward(x2, x2, x2, is_causal=True)
    assert np.array_equal(out2[:, : t + 1], out[:, : t + 1])


@given(B=st.integers(1, 2), T=st.integers(1, 6), H=st.sampled_from([1, 2, 4]), dtype=dtypes, seed=seeds)
def test_self_attention_without_positions_is_permutation_equivariant(B, T, H, dtype, seed):
    rng = np.random.default_rng(seed)
    C = 8
    mha = nt.MultiHeadAttention(C, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((B, T, C)).astype(dtype)
    perm = rng.permutation(T)
    out, _ = mha.forward(x, x, x)
    out_p, _ = mha.forward(x[:, perm], x[:, perm], x[:, perm])
    assert_matches("attention(x[perm]) vs attention(x)[perm]", out_p, out[:, perm], dtype)


def test_fully_masked_query_row_gives_zero_output_and_zero_gradient():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 1, 3, 4)), rng.standard_normal((1, 1, 5, 4)), rng.standard_normal((1, 1, 5, 2))
    mask = np.ones((3, 5), bool)
    mask[1] = False
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, mask=mask)
    assert np.all(out[..., 1, :] == 0) and np.all(cache.weights[..., 1, :] == 0)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(dout, cache)
    assert np.all(dq[..., 1, :] == 0)
    # keys receive gradient only from the rows that could see them: dropping row 1's dout changes nothing
    dout2 = dout.copy()
    dout2[..., 1, :] = 0
    _, dk2, dv2 = F.scaled_dot_product_attention_backward(dout2, cache)
    assert np.array_equal(dk, dk2) and np.array_equal(dv, dv2)


# --------------------------------------------------------------------------- positional encoding


@given(
    d_model=st.integers(1, 32), k=st.integers(0, 50), length=st.integers(1, 64), base=st.sampled_from([10000.0, 100.0])
)
def test_positional_encoding_shift_is_a_fixed_rotation_per_frequency(d_model, k, length, base):
    """PE(pos + k) = R_k PE(pos) with R_k block-diagonal, one 2x2 rotation per frequency, for every pos."""
    pe = F.sinusoidal_positional_encoding(length + k, d_model, base=base)
    R = np.zeros((d_model, d_model))
    for i in range(0, d_model, 2):
        phi = k / base ** (i / d_model)
        if i + 1 < d_model:
            # [sin(a+phi), cos(a+phi)] = [[cos, sin], [-sin, cos]] @ [sin a, cos a]
            R[i : i + 2, i : i + 2] = [[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]]
        else:
            break  # odd d_model: the last sine column has no cosine partner
    even = d_model - (d_model % 2)
    shifted = pe[:length, :even] @ R[:even, :even].T
    assert_matches(f"PE(pos + {k})", shifted, pe[k : k + length, :even], np.float64)


def test_positional_encoding_matches_the_formula_at_sample_points():
    pe = F.sinusoidal_positional_encoding(10, 6)
    for pos, i in [(0, 0), (3, 1), (9, 2)]:
        angle = pos / 10000 ** (2 * i / 6)
        assert pe[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-15)
        assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-15)


# --------------------------------------------------------------------------- the rest


@given(dtype=dtypes, seed=seeds, p=st.sampled_from([0.1, 0.5, 0.9]))
def test_dropout_keeps_about_one_minus_p_and_preserves_the_mean(dtype, seed, p):
    rng = np.random.default_rng(seed)
    x = np.ones((200, 200), dtype)
    y, cache = F.dropout_forward(x, p, rng=rng)
    kept = cache.keep.mean()
    n = x.size
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # 5 standard deviations
    assert set(np.unique(y)) <= {0.0, dtype(1 / (1 - p))}
    y_eval, _ = F.dropout_forward(x, p, rng=rng, training=False)
    assert y_eval is x


def test_dropout_with_the_same_seed_drops_the_same_units():
    x = np.random.default_rng(0).standard_normal((5, 7))
    a, _ = F.dropout_forward(x, 0.5, rng=np.random.default_rng(42))
    b, _ = F.dropout_forward(x, 0.5, rng=np.random.default_rng(42))
    assert np.array_equal(a, b)


def test_embedding_gradient_accumulates_repeated_ids():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 3))
    ids = np.array([[1, 1, 4], [1, 0, 4]])
    _, cache = F.embedding_forward(ids, W)
    dout = rng.standard_normal((2, 3, 3))
    dW = F.embedding_backward(dout, cache)
    assert_matches("dW[1]", dW[1], dout[0, 0] + dout[0, 1] + dout[1, 0], np.float64)
    assert_matches("dW[4]", dW[4], dout[0, 2] + dout[1, 2], np.float64)
    assert np.all(dW[[2, 3]] == 0)


@given(seed=seeds)
def test_gelu_limits_and_tanh_approximation_is_close_to_exact(seed):
    x = np.random.default_rng(seed).uniform(-6, 6, 50)
    exact, _ = F.gelu_forward(x)
    approx, _ = F.gelu_forward(x, "tanh")
    assert np.abs(exact - approx).max() < 1e-3
    big, _ = F.gelu_forward(np.array([30.0, -30.0]))
    assert big[0] == 30.0 and abs(big[1]) < 1e-30


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_and_module_keeps_the_input_dtype(name, dtype):
    case = CASES[name]
    dims = {"B": 2, "T": 3, "S": 4, "H": 2, "D": 3, "V": 5, "mask": "padding", "variant": case.variants[-1]}
    arrays = case.draw(np.random.default_rng(0), np.dtype(dtype), dims)
    out, backward = case.numpy(arrays, dims)
    assert out.dtype == dtype, f"{name}: output dtype {out.dtype}"
    grads = backward(np.random.default_rng(1).standard_normal(np.shape(out)).astype(dtype))
    for g_name, g in grads.items():
        assert g.dtype == dtype, f"{name}: d{g_name} has dtype {g.dtype}"


def test_module_gradients_accumulate_and_zero_grad_resets_them():
    rng = np.random.default_rng(0)
    lin = nt.Linear(3, 2, rng=rng)
    x = rng.standard_normal((4, 3))
    dout = rng.standard_normal((4, 2))
    for _ in range(2):
        _, cache = lin.forward(x)
        lin.backward(dout, cache)
    assert_matches("grad after two calls", lin.grads["weight"], 2 * (dout.T @ x), np.float64)
    lin.zero_grad()
    assert all(np.all(g == 0) for _, g in lin.named_grads())


def test_named_parameters_and_named_grads_share_the_state_dict_keys():
    mha = nt.MultiHeadAttention(8, 2, rng=np.random.default_rng(0))
    keys = list(mha.state_dict())
    assert keys == [n for n, _ in mha.named_parameters()] == [n for n, _ in mha.named_grads()]
    assert keys == [
        "q_proj.weight",
        "q_proj.bias",
        "k_proj.weight",
        "k_proj.bias",
        "v_proj.weight",
        "v_proj.bias",
        "out_proj.weight",
        "out_proj.bias",
    ]


def test_train_and_eval_switch_every_submodule():
    ff = nt.FeedForward(4, 8, dropout=0.5, rng=np.random.default_rng(0))
    ff.eval()
    assert not ff.training and not ff.dropout.training and not ff.linear1.training
    x = np.random.default_rng(1).standard_normal((2, 4))
    a, _ = ff.forward(x)  # eval: dropout is the identity, no rng needed
    b, _ = ff.forward(x)
    assert np.array_equal(a, b)
    ff.train()
    assert ff.dropout.training


def test_key_projection_bias_has_no_effect_and_a_zero_gradient_up_to_rounding():
    """softmax(q (k + b)^T) = softmax(q k^T + q.b): the same shift for every key of a row, which softmax ignores."""
    rng = np.random.default_rng(0)
    mha = nt.MultiHeadAttention(8, 2, rng=rng)
    x = rng.standard_normal((2, 5, 8))
    out, cache = mha.forward(x, x, x, is_causal=True)
    mha.backward(rng.standard_normal(out.shape), cache)
    assert np.abs(mha.k_proj.grads["bias"]).max() < 1e-14
    assert np.abs(mha.q_proj.grads["bias"]).max() > 1e-3  # the other biases do matter
    mha.k_proj.bias[...] = rng.standard_normal(8)
    out2, _ = mha.forward(x, x, x, is_causal=True)
    assert_matches("output with another key bias", out2, out, np.float64)


def test_dropout_module_draws_from_its_own_generator_unless_given_one():
    x = np.ones((4, 50))
    a, _ = nt.Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    b, _ = nt.Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    c, _ = nt.Dropout(0.5, rng=np.random.default_rng(7)).forward(x, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(TypeError, match="rng"):
        nt.Dropout(0.5).forward(x)  # training mode, p > 0, no generator anywhere
    with pytest.raises(TypeError, match="rng"):
        nt.Dropout(0.5, rng=7)
