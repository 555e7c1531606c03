"""The GRU against PyTorch's own ``nn.GRUCell`` and ``nn.GRU``, its framework facts, properties and bad input.

The twin and finite-difference checks of ``gru_cell``, ``gru``, ``GRUCell`` and ``GRU``
run from the registry (``torch_transformer/parity/cases_gru.py``, driven by
``test_twin_parity.py``). This file compares with the *built-ins*, whose weights come
through the named converters of ``torch_transformer.bridge`` (identities on names), with
a random upstream gradient on every output (the fake loss ``sum(out * dout)``).

Shape legend: B batch, T time steps, I input size, H hidden size, D directions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import numpy_transformer as nt
from numpy_transformer.functional import gru_backward, gru_cell_backward, gru_cell_forward, gru_forward
from numpy_transformer.testing import numerical_gradient, relative_error, tolerance
from parity_tests.helpers import assert_matches, assert_matches_finite_differences
from torch_transformer import bridge
from torch_transformer import gru as tgru

dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)


def leaf(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy()).requires_grad_(True)


def randn(rng: np.random.Generator, shape, dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(dtype)


def assert_differs(name: str, actual, expected, dtype=np.float64) -> None:
    """The two readings must differ by more than ten times the contract's tolerance."""
    err = relative_error(name, np.asarray(actual), np.asarray(expected)).error
    assert err > 10 * tolerance("cpu", dtype), f"{name}: the two readings differ by only {err:.3e}"


def assert_grads_match_builtin(module: nt.Module, builtin: nn.Module, dtype) -> None:
    """Every parameter gradient, name by name (the names are the same on both sides)."""
    ours = dict(module.named_grads())
    theirs = dict(builtin.named_parameters())
    assert sorted(ours) == sorted(theirs)
    for name, g in ours.items():
        assert_matches(f"d{name}", g, theirs[name].grad, dtype)


# --------------------------------------------------------------------------- vs the built-ins


@given(B=small, I=small, H=small, bias=st.booleans(), dtype=dtypes, seed=seeds, given_h=st.booleans())
def test_gru_cell_matches_nn_grucell_forward_and_every_gradient(B, I, H, bias, dtype, seed, given_h):
    rng = np.random.default_rng(seed)
    cell = nt.GRUCell(I, H, bias=bias, dtype=dtype, rng=rng)
    builtin = bridge.gru_cell_to_torch_builtin(cell)
    x, h = randn(rng, (B, I), dtype), randn(rng, (B, H), dtype)
    dout = randn(rng, (B, H), dtype)

    h_next, cache = cell.forward(x, h if given_h else None)
    dx, dh = cell.backward(dout, cache)

    x_t, h_t = leaf(x), leaf(h if given_h else np.zeros_like(h))
    h_next_t = builtin(x_t, h_t)
    h_next_t.backward(torch.from_numpy(dout))
    assert h_next.dtype == dtype
    assert_matches("h'", h_next, h_next_t, dtype)
    assert_matches("dx", dx, x_t.grad, dtype)
    assert_matches("dh", dh, h_t.grad, dtype)
    assert_grads_match_builtin(cell, builtin, dtype)


@given(
    B=small, T=st.integers(1, 6), I=small, H=small, bidirectional=st.booleans(), bias=st.booleans(),
    given_h0=st.booleans(), dtype=dtypes, seed=seeds,
)  # fmt: skip
def test_gru_matches_nn_gru_outputs_h_n_and_every_gradient(B, T, I, H, bidirectional, bias, given_h0, dtype, seed):
    rng = np.random.default_rng(seed)
    gru = nt.GRU(I, H, bidirectional=bidirectional, bias=bias, dtype=dtype, rng=rng)
    builtin = bridge.gru_to_torch_builtin(gru)
    D = 2 if bidirectional else 1
    x = randn(rng, (B, T, I), dtype)
    h0 = randn(rng, (D, B, H), dtype) if given_h0 else None
    doutputs, dh_n = randn(rng, (B, T, D * H), dtype), randn(rng, (D, B, H), dtype)

    (outputs, h_n), cache = gru.forward(x, h0)
    dx, dh0 = gru.backward(doutputs, dh_n, cache)

    x_t = leaf(x)
    h0_t = leaf(h0 if given_h0 else np.zeros((D, B, H), dtype))
    outputs_t, h_n_t = builtin(x_t, h0_t)
    torch.autograd.backward([outputs_t, h_n_t], [torch.from_numpy(doutputs), torch.from_numpy(dh_n)])
    assert outputs.shape == (B, T, D * H) and h_n.shape == (D, B, H) and outputs.dtype == dtype
    assert_matches("outputs", outputs, outputs_t, dtype)
    assert_matches("h_n", h_n, h_n_t, dtype)
    assert_matches("dx", dx, x_t.grad, dtype)
    assert_matches("dh0", dh0, h0_t.grad, dtype)
    assert_grads_match_builtin(gru, builtin, dtype)


@given(
    B=st.integers(1, 4), T=st.integers(1, 6), I=small, H=small, bidirectional=st.booleans(), dtype=dtypes, seed=seeds
)
def test_gru_with_lengths_matches_nn_gru_on_pack_padded_sequence(B, T, I, H, bidirectional, dtype, seed):
    """Unsorted lengths, ``enforce_sorted=False``: outputs (zero past each length), h_n and every gradient."""
    rng = np.random.default_rng(seed)
    gru = nt.GRU(I, H, bidirectional=bidirectional, dtype=dtype, rng=rng)
    builtin = bridge.gru_to_torch_builtin(gru)
    D = 2 if bidirectional else 1
    lengths = rng.integers(1, T + 1, size=B)  # pack_padded_sequence rejects 0
    x, h0 = randn(rng, (B, T, I), dtype), randn(rng, (D, B, H), dtype)
    doutputs, dh_n = randn(rng, (B, T, D * H), dtype), randn(rng, (D, B, H), dtype)

    (outputs, h_n), cache = gru.forward(x, h0, lengths)
    dx, dh0 = gru.backward(doutputs, dh_n, cache)

    x_t, h0_t = leaf(x), leaf(h0)
    packed = pack_padded_sequence(x_t, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False)
    packed_out, h_n_t = builtin(packed, h0_t)  # h0 and h_n in the caller's batch order
    outputs_t, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=T)
    torch.autograd.backward([outputs_t, h_n_t], [torch.from_numpy(doutputs), torch.from_numpy(dh_n)])
    assert_matches("outputs", outputs, outputs_t, dtype)
    assert_matches("h_n", h_n, h_n_t, dtype)
    assert_matches("dx", dx, x_t.grad, dtype)
    assert_matches("dh0", dh0, h0_t.grad, dtype)
    assert_grads_match_builtin(gru, builtin, dtype)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_converters_are_identities_on_names_and_round_trip_bit_for_bit(bidirectional, bias, dtype):
    rng = np.random.default_rng(0)
    gru = nt.GRU(3, 4, bidirectional=bidirectional, bias=bias, dtype=dtype, rng=rng)
    builtin = bridge.gru_to_torch_builtin(gru)
    assert isinstance(builtin, nn.GRU) and builtin.batch_first and builtin.num_layers == 1
    assert [n for n, _ in gru.named_parameters()] == [n for n, _ in builtin.named_parameters()]
    for name, p in gru.named_parameters():
        t = builtin.state_dict()[name].numpy()
        assert t.dtype == p.dtype and np.array_equal(t, p), name
    # and back from a built-in that torch initialised
    torch.manual_seed(1)
    fresh = nn.GRU(3, 4, bias=bias, batch_first=True, bidirectional=bidirectional, dtype=bridge.torch_dtype(dtype))
    ours = bridge.gru_from_torch_builtin(fresh)
    assert ours.bidirectional == bidirectional and ours.dtype == dtype
    for name, p in fresh.state_dict().items():
        assert np.array_equal(dict(ours.named_parameters())[name], p.numpy()), name
    again = bridge.gru_to_torch_builtin(ours)
    for name, p in fresh.state_dict().items():
        assert torch.equal(again.state_dict()[name], p), name


@pytest.mark.parametrize("bias", [False, True])
def test_gru_cell_converters_round_trip_bit_for_bit(bias):
    cell = nt.GRUCell(3, 2, bias=bias, dtype=np.float32, rng=np.random.default_rng(0))
    builtin = bridge.gru_cell_to_torch_builtin(cell)
    assert isinstance(builtin, nn.GRUCell)
    back = bridge.gru_cell_from_torch_builtin(builtin)
    for (name, a), (name_b, b) in zip(cell.named_parameters(), back.named_parameters(), strict=True):
        assert name == name_b and a.dtype == b.dtype and np.array_equal(a, b)


def test_gru_from_torch_builtin_rejects_what_one_layer_cannot_hold():
    with pytest.raises(ValueError, match=r"^builtin: expected num_layers=1"):
        bridge.gru_from_torch_builtin(nn.GRU(3, 4, num_layers=2))
    with pytest.raises(TypeError, match=r"^builtin: expected a torch.nn.GRU"):
        bridge.gru_from_torch_builtin(nn.LSTM(3, 4))


# --------------------------------------------------------------------------- framework facts


def test_fact_gru_gate_order_and_b_hn_inside_the_reset_product():
    """Observed on torch 2.13 CPU (the formula ``nn.GRU`` documents since 1.0): the rows of
    ``weight_ih_l0`` / ``weight_hh_l0`` are stacked ``[r; z; n]``; ``b_hn`` sits *inside* the
    reset product, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; and
    ``h' = (1 - z) * n + z * h``. Each other reading -- ``b_hn`` outside the product
    (the form of the original GRU paper with merged biases), the order ``[z; r; n]``, or
    ``z`` weighting the candidate -- gives a measurably different number."""
    torch.manual_seed(0)
    I, H, B = 3, 4, 5
    builtin = nn.GRU(I, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # make b_hn large, so where it sits matters
        builtin.bias_hh_l0[2 * H :] += 1.5
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((B, I)), rng.standard_normal((B, H))
    _, h_next_t = builtin(torch.from_numpy(x[:, None, :]), torch.from_numpy(h[None]))
    h_next_t = h_next_t[0].detach().numpy()  # (B, H)

    W_ih, W_hh = builtin.weight_ih_l0.detach().numpy(), builtin.weight_hh_l0.detach().numpy()
    b_ih, b_hh = builtin.bias_ih_l0.detach().numpy(), builtin.bias_hh_l0.detach().numpy()

    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    def read(order=("r", "z", "n"), b_hn_inside=True, z_keeps_h=True):
        gate = {g: slice(i * H, (i + 1) * H) for i, g in enumerate(order)}
        gi = {g: x @ W_ih[s].T + b_ih[s] for g, s in gate.items()}
        gh = {g: h @ W_hh[s].T + b_hh[s] for g, s in gate.items()}
        r, z = sigmoid(gi["r"] + gh["r"]), sigmoid(gi["z"] + gh["z"])
        if b_hn_inside:
            n = np.tanh(gi["n"] + r * gh["n"])
        else:
            n = np.tanh(gi["n"] + b_hh[gate["n"]] + r * (h @ W_hh[gate["n"]].T))
        return (1 - z) * n + z * h if z_keeps_h else z * n + (1 - z) * h

    assert_matches("nn.GRU vs the documented formula", read(), h_next_t, np.float64)
    assert_differs("b_hn outside the reset product", read(b_hn_inside=False), h_next_t)
    assert_differs("gate order [z; r; n]", read(order=("z", "r", "n")), h_next_t)
    assert_differs("h' = z n + (1 - z) h", read(z_keeps_h=False), h_next_t)
    # and ours, fed the built-in's weights through the converter, gives torch's number
    ours = bridge.gru_from_torch_builtin(builtin)
    (_, h_n), _ = ours.forward(x[:, None, :], h[None])
    assert_matches("ours vs nn.GRU", h_n[0], h_next_t, np.float64)


def test_fact_bidirectional_h_n_is_forward_then_backward_and_backward_final_state_is_output_at_0():
    """Observed on torch 2.13 CPU: a bidirectional ``nn.GRU(batch_first=True)`` returns ``h_n`` as
    ``(2, B, H)`` -- not batch first even with ``batch_first=True`` -- with ``h_n[0]`` the forward
    direction (= ``output[:, -1, :H]``) and ``h_n[1]`` the backward one (= ``output[:, 0, H:]``).
    Ours has the same layout."""
    rng = np.random.default_rng(0)
    gru = nt.GRU(3, 2, bidirectional=True, rng=rng)
    x = rng.standard_normal((4, 5, 3))
    out_t, h_n_t = bridge.gru_to_torch_builtin(gru)(torch.from_numpy(x))
    assert tuple(h_n_t.shape) == (2, 4, 2)
    assert torch.equal(h_n_t[0], out_t[:, -1, :2]) and torch.equal(h_n_t[1], out_t[:, 0, 2:])
    (out, h_n), _ = gru.forward(x)
    assert np.array_equal(h_n[0], out[:, -1, :2]) and np.array_equal(h_n[1], out[:, 0, 2:])


# --------------------------------------------------------------------------- properties


def _weights(rng, I, H, scale=0.5):
    return (
        randn(rng, (3 * H, I), scale=scale),
        randn(rng, (3 * H, H), scale=scale),
        randn(rng, (3 * H,), scale=scale),
        randn(rng, (3 * H,), scale=scale),
    )


@given(seed=seeds)
def test_gru_cell_with_update_gate_one_keeps_h_and_passes_its_gradient_straight(seed):
    """z = 1 (a saturated update gate): h' = h, dh = dout, and nothing reaches x or the weights."""
    rng = np.random.default_rng(seed)
    B, I, H = 3, 4, 2
    W_ih, W_hh, b_ih, b_hh = _weights(rng, I, H)
    b_ih[H : 2 * H] = 50.0  # sigmoid(50 + O(1)) rounds to exactly 1 in float64
    x, h, dout = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    h_next, cache = gru_cell_forward(x, h, W_ih, W_hh, b_ih, b_hh)
    assert np.all(cache.z == 1.0)
    np.testing.assert_allclose(h_next, h, rtol=0, atol=1e-15)  # n + 1 * (h - n): one rounding at most
    dx, dh, dW_ih, dW_hh, db_ih, db_hh = gru_cell_backward(dout, cache)
    assert np.array_equal(dh, dout)
    for name, g in [("dx", dx), ("dweight_ih", dW_ih), ("dweight_hh", dW_hh), ("dbias_ih", db_ih), ("dbias_hh", db_hh)]:
        assert not np.any(g), f"{name} should be zero when z = 1"


@given(seed=seeds, T=st.integers(3, 6))
def test_gru_backprop_through_time_reaches_the_first_input_from_the_last_state(seed, T):
    """Only h_T gets an upstream gradient; the gradient of x_0 is nonzero, equals finite
    differences, and vanishes when the recurrence is cut (W_hh = 0, z = 0)."""
    rng = np.random.default_rng(seed)
    B, I, H = 2, 3, 3
    W_ih, W_hh, b_ih, b_hh = _weights(rng, I, H, scale=0.8)
    x, h0 = rng.standard_normal((B, T, I)), rng.standard_normal((B, H))
    dh_T = rng.standard_normal((B, H))
    _, cache = gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh)
    dx, dh0, *_ = gru_backward(None, dh_T, cache)
    assert np.abs(dx[:, 0]).max() > 1e-6, "no gradient reached the first step"
    assert np.abs(dh0).max() > 1e-6
    numeric = numerical_gradient(lambda z: gru_forward(z, h0, W_ih, W_hh, b_ih, b_hh)[0][1], x, dh_T)
    assert_matches_finite_differences("dx through time", dx, numeric)

    # Cut the recurrence: no hidden weights, update gate shut (z = sigmoid(-50) ~ 2e-22).
    # h_T then depends on x_{T-1} alone, up to that leak.
    cut_hh, cut_b = np.zeros_like(W_hh), b_ih.copy()
    cut_b[H : 2 * H] = -50.0
    (_, _), cache = gru_forward(x, h0, W_ih, cut_hh, cut_b, None)
    dx_cut, *_ = gru_backward(None, dh_T, cache)
    assert np.abs(dx_cut[:, :-1]).max() < 1e-15 < np.abs(dx_cut[:, -1]).max()


@given(seed=seeds, bidirectional=st.booleans())
def test_gru_state_is_frozen_past_each_length_and_padding_is_ignored(seed, bidirectional):
    """Past its length a row's outputs are zero, its h_n is what the truncated sequence gives,
    its padded inputs get no gradient, and their values change nothing. The backward direction
    starts at the last real token: its output there is one cell step from h0."""
    rng = np.random.default_rng(seed)
    B, T, I, H = 3, 5, 2, 3
    D = 2 if bidirectional else 1
    gru = nt.GRU(I, H, bidirectional=bidirectional, rng=rng)
    lengths = np.array([5, 2, 0])
    x, h0 = rng.standard_normal((B, T, I)), rng.standard_normal((D, B, H))
    (out, h_n), cache = gru.forward(x, h0, lengths)
    pad = np.arange(T)[None, :] >= lengths[:, None]  # (B, T)
    assert not np.any(out[pad])
    assert np.array_equal(h_n[:, 2], h0[:, 2]), "a row of length 0 keeps h0"
    for b in range(2):
        L = lengths[b]
        (out_b, h_n_b), _ = gru.forward(x[b : b + 1, :L], h0[:, b : b + 1])
        np.testing.assert_allclose(out[b, :L], out_b[0], rtol=0, atol=1e-14)
        np.testing.assert_allclose(h_n[:, b], h_n_b[:, 0], rtol=0, atol=1e-14)
    if bidirectional:
        step, _ = gru_cell_forward(
            x[1:2, 1], h0[1, 1:2], gru.weight_ih_l0_reverse, gru.weight_hh_l0_reverse,
            gru.bias_ih_l0_reverse, gru.bias_hh_l0_reverse,
        )  # fmt: skip
        np.testing.assert_allclose(out[1, 1, H:], step[0], rtol=0, atol=1e-15)

    dx, _ = gru.backward(rng.standard_normal(out.shape), rng.standard_normal(h_n.shape), cache)
    assert not np.any(dx[pad]), "padded inputs got a gradient"
    x_noisy = x.copy()
    x_noisy[pad] = 1e3
    (out_noisy, h_n_noisy), _ = gru.forward(x_noisy, h0, lengths)
    assert np.array_equal(out_noisy, out) and np.array_equal(h_n_noisy, h_n)


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_length_zero_rows_match_the_twin(reverse):
    """Length 0 (which pack_padded_sequence rejects) is defined here: zero outputs, h_T = h0, dh0 = dh_T."""
    rng = np.random.default_rng(0)
    W_ih, W_hh, b_ih, b_hh = _weights(rng, 2, 3)
    x, h0 = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 3))
    lengths = np.array([0, 4, 1])
    (out, h_T), cache = gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reverse)
    doutputs, dh_T = rng.standard_normal(out.shape), rng.standard_normal(h_T.shape)
    dx, dh0, *_ = gru_backward(doutputs, dh_T, cache)
    assert np.array_equal(h_T[0], h0[0]) and np.array_equal(dh0[0], dh_T[0]) and not np.any(out[0])
    x_t, h0_t = leaf(x), leaf(h0)
    ts = [torch.from_numpy(a) for a in (W_ih, W_hh, b_ih, b_hh)]
    out_t, h_T_t = tgru.gru(x_t, h0_t, *ts, lengths=torch.from_numpy(lengths), reverse=reverse)
    torch.autograd.backward([out_t, h_T_t], [torch.from_numpy(doutputs), torch.from_numpy(dh_T)])
    for name, ours, twin in [
        ("outputs", out, out_t),
        ("h_T", h_T, h_T_t),
        ("dx", dx, x_t.grad),
        ("dh0", dh0, h0_t.grad),
    ]:
        assert_matches(name, ours, twin, np.float64)


def test_gru_reverse_reads_each_row_backwards_within_its_length():
    """reverse=True equals a forward run over each row's real tokens in reversed order."""
    rng = np.random.default_rng(1)
    W_ih, W_hh, b_ih, b_hh = _weights(rng, 2, 3)
    x, h0 = rng.standard_normal((2, 5, 2)), rng.standard_normal((2, 3))
    lengths = np.array([3, 5])
    (out, h_T), _ = gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reverse=True)
    for b, L in enumerate(lengths):
        (out_f, h_f), _ = gru_forward(x[b : b + 1, :L][:, ::-1], h0[b : b + 1], W_ih, W_hh, b_ih, b_hh)
        np.testing.assert_allclose(out[b, :L], out_f[0, ::-1], rtol=0, atol=1e-14)
        np.testing.assert_allclose(h_T[b], h_f[0], rtol=0, atol=1e-14)
        assert not np.any(out[b, L:])


def test_gru_module_accumulates_gradients_over_two_calls_and_inits_like_torch():
    rng = np.random.default_rng(0)
    gru = nt.GRU(3, 4, bidirectional=True, dtype=np.float32, rng=rng)
    bound = 1 / np.sqrt(4)
    for name, p in gru.named_parameters():
        assert p.dtype == np.float32 and np.abs(p).max() <= bound, name
    x = rng.standard_normal((2, 3, 3)).astype(np.float32)
    (out, _), cache = gru.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    gru.backward(dout, None, cache)
    once = {n: g.copy() for n, g in gru.named_grads()}
    gru.backward(dout, None, cache)
    for name, g in gru.named_grads():
        assert np.array_equal(g, 2 * once[name]), name  # 0 + g + g: doubling is exact


# --------------------------------------------------------------------------- bad input

RNG = np.random.default_rng(0)
I_, H_ = 3, 2
X2, HH = RNG.standard_normal((4, I_)), RNG.standard_normal((4, H_))
X3, H0 = RNG.standard_normal((4, 5, I_)), RNG.standard_normal((4, H_))
WI, WH = RNG.standard_normal((3 * H_, I_)), RNG.standard_normal((3 * H_, H_))
BI, BH = RNG.standard_normal(3 * H_), RNG.standard_normal(3 * H_)


def _cell_cache():
    return gru_cell_forward(X2, HH, WI, WH, BI, BH)[1]


def _gru_cache():
    return gru_forward(X3, H0, WI, WH, BI, BH)[1]


def _module_cache():
    return nt.GRU(I_, H_, rng=np.random.default_rng(0)).forward(X3)[1]


cell, run, VE, TE = gru_cell_forward, gru_forward, ValueError, TypeError
F32 = np.float32
BAD_INPUT = [
    ("cell x 3-D", lambda: cell(X3, HH, WI, WH), VE, r"^x: expected shape \(B, I\)"),
    ("cell x wrong I", lambda: cell(X2[:, :2], HH, WI, WH), VE, r"^x: expected shape \(B, I\) with I=3"),
    ("cell h wrong H", lambda: cell(X2, X2, WI, WH), VE, r"^h: expected shape \(4, 2\)"),
    ("cell x int", lambda: cell(X2.astype(int), HH, WI, WH), TE, r"^x: expected dtype"),
    ("cell x list", lambda: cell(X2.tolist(), HH, WI, WH), TE, r"^x: expected a numpy"),
    ("cell mixed dtypes", lambda: cell(X2.astype(F32), HH, WI, WH), TE, r"^h: expected dtype float32"),
    ("weight_hh not (3H, H)", lambda: cell(X2, HH, WI, WH[:5]), VE, r"^weight_hh: expected shape \(3H, H\)"),
    ("weight_ih rows", lambda: cell(X2, HH, WI[:4], WH), VE, r"^weight_ih: expected shape \(3H, I\)"),
    ("bias_hh shape", lambda: cell(X2, HH, WI, WH, BI, BH[:3]), VE, r"^bias_hh: expected shape \(6,\)"),
    ("bias_ih dtype", lambda: cell(X2, HH, WI, WH, BI.astype(F32)), TE, r"^bias_ih: expected dtype float64"),
    ("cell dout shape", lambda: gru_cell_backward(np.zeros((4, 3)), _cell_cache()), VE, r"^dout: expected shape"),
    ("cell dout dtype", lambda: gru_cell_backward(np.zeros((4, 2), F32), _cell_cache()), TE, r"^dout: expected dtype"),
    ("gru x 2-D", lambda: run(X2, H0, WI, WH), VE, r"^x: expected shape \(B, T, I\)"),
    ("gru h0 shape", lambda: run(X3, H0[:3], WI, WH), VE, r"^h0: expected shape \(4, 2\)"),
    ("lengths float", lambda: run(X3, H0, WI, WH, lengths=np.ones(4)), TE, r"^lengths: expected an integer dtype"),
    ("lengths list", lambda: run(X3, H0, WI, WH, lengths=[1, 2, 3, 4]), TE, r"^lengths: expected a numpy"),
    ("lengths shape", lambda: run(X3, H0, WI, WH, lengths=np.ones(3, int)), VE, r"^lengths: expected shape \(4,\)"),
    ("lengths > T", lambda: run(X3, H0, WI, WH, lengths=np.array([1, 2, 6, 4])), VE, r"^lengths: expected values in"),
    ("lengths < 0", lambda: run(X3, H0, WI, WH, lengths=np.array([1, -1, 2, 4])), VE, r"^lengths: expected values in"),
    ("reverse not bool", lambda: run(X3, H0, WI, WH, reverse="yes"), TE, r"^reverse: expected a bool"),
    ("doutputs shape", lambda: gru_backward(np.zeros((4, 5, 3)), None, _gru_cache()), VE, r"^doutputs: expected shape"),
    (
        "dh_T dtype",
        lambda: gru_backward(None, np.zeros((4, 2), F32), _gru_cache()),
        TE,
        r"^dh_T: expected dtype float64",
    ),
    ("GRU h0 (B, H)", lambda: nt.GRU(I_, H_).forward(X3, H0), VE, r"^h0: expected shape \(1, 4, 2\)"),
    ("GRU x 2-D", lambda: nt.GRU(I_, H_).forward(X2), VE, r"^x: expected shape \(B, T, I\)"),
    ("GRU dh_n shape", lambda: nt.GRU(I_, H_).backward(None, H0, _module_cache()), VE, r"^dh_n: expected shape"),
    (
        "GRU doutputs dtype",
        lambda: nt.GRU(I_, H_).backward(X3[..., :2].astype(F32), None, _module_cache()),
        TE,
        r"^doutputs: expected dtype float64",
    ),
    ("GRU hidden_size 0", lambda: nt.GRU(I_, 0), VE, r"^hidden_size: expected a positive int"),
    ("GRU bidirectional 'yes'", lambda: nt.GRU(I_, H_, bidirectional="yes"), TE, r"^bidirectional: expected a bool"),
    ("GRUCell dtype int", lambda: nt.GRUCell(I_, H_, dtype=np.int64), TE, r"^dtype: expected float32 or float64"),
]


@pytest.mark.parametrize(("call", "error", "pattern"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_gru_bad_input_raises_a_clear_error_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
