"""The NumPy optimizers, clipping and schedules vs ``torch.optim`` / ``torch.nn.utils``, step by step.

Each optimizer test builds a few parameters (``(1,)`` always among them), copies them
into ``torch.nn.Parameter``s, feeds both sides the *same* random gradient sequence and
compares every parameter and every state buffer after every step, in float32 and
float64. Hypothesis draws the hyper-parameters, shapes, step count and seed.

What these tests found on torch 2.13 CPU (and what they pin down for any torch >= 2.2):

* Adam adds ``eps`` after the bias-corrected square root,
  ``sqrt(v) / sqrt(1 - beta2^t) + eps``; its ``weight_decay`` is L2 (added to the
  gradient), AdamW's is decoupled (``param *= 1 - lr * wd`` before the Adam step).
* SGD's momentum buffer starts at the first gradient itself, not ``(1 - dampening) g``.
* ``clip_grad_norm_`` takes one norm over all gradients, scales by
  ``min(max_norm / (norm + 1e-6), 1)``, so a norm exactly at ``max_norm`` is still scaled.
* ``LambdaLR`` calls its function with 0 before the first update (the paper's formula
  with step 0 raises ``ZeroDivisionError``); our update ``s`` is its ``last_epoch + 1``.
  ``SequentialLR([LinearLR(1/w, 1, total_iters=w-1), CosineAnnealingLR(T-w)],
  milestones=[w-1])`` gives our warm-up + cosine exactly up to ``T``; the "obvious" chain
  with ``total_iters=w`` and ``milestones=[w]`` peaks one update late; after ``T``,
  ``CosineAnnealingLR`` rises again.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_transformer as nt
from numpy_transformer.optim import (
    SGD,
    Adam,
    AdamW,
    adam_update,
    adamw_update,
    clip_grad_norm,
    inverse_sqrt_warmup,
    linear_warmup_cosine,
    sgd_update,
)
from numpy_transformer.optim.optimizer import SLICE_SIZE
from numpy_transformer.testing import relative_error, tolerance
from torch_transformer.bridge import twin_of

from .helpers import assert_matches, to_numpy
from .strategies import dtypes, seeds

# ---------------------------------------------------------------------------
# the step-by-step runner
# ---------------------------------------------------------------------------

# A few parameter shapes; (1,) is always first, () and other 1s come up too.
shape_lists = st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=3).map(
    lambda shapes: [(1,), *shapes]
)
lrs = st.floats(1e-4, 0.3)
# Adam moves every weight by ~lr per step, whatever the gradient's size. With lr near the size of
# the weights and L2 decay, weights oscillate across 0 and the map p_t -> p_{t+1} amplifies rounding
# (found: lr = 0.3-0.6, beta1 = 0, float32: ours and torch each drift from a float64 run by a factor
# ~3 per step, torch to 1.9e-5 and ours to 5.8e-6 after 20 steps). Practical Adam rates stay below 0.03.
adam_lrs = st.floats(1e-4, 0.03)
log_eps = st.floats(-10.0, -2.0).map(lambda e: 10.0**e)


def adam_betas() -> st.SearchStrategy[tuple[float, float]]:
    """``(beta1, beta2)`` with ``beta2 >= 0.9``, the practical range.

    With a small ``beta2`` Adam is close to sign descent, ``lr * g / (|g| + eps)``, and with L2
    weight decay the gradient ``g + wd * p`` can cancel to ~eps: the update then amplifies
    rounding by orders of magnitude, step after step. Found: beta1 = beta2 = 0 in float32,
    ours and torch each ~5e-5 away from a float64 run, in opposite directions; beta2 = 0 in
    float64, 1.3e-10 apart after 29 steps. Such draws measure conditioning, not the formula.
    """
    return st.tuples(st.floats(0.0, 0.99), st.floats(0.9, 0.9999))


def _run_against_torch(ours_cls, torch_cls, kwargs, shapes, dtype, seed, n_steps, buffers, vary_lr=False):
    """Step ours and torch's optimizer on the same gradients; compare params and ``buffers`` each step.

    ``buffers``: the state names to compare, the same in both (``exp_avg``, ``momentum_buffer``, ...).
    """
    rng = np.random.default_rng(seed)
    params = [np.array(rng.standard_normal(s), dtype=dtype) for s in shapes]
    grads = [np.zeros_like(p) for p in params]
    names = [f"p{i}" for i in range(len(params))]
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    ours = ours_cls(list(zip(names, params, grads, strict=True)), **kwargs)
    theirs = torch_cls(tparams, **kwargs)
    scales = 10.0 ** rng.uniform(-4, 1, len(params))  # gradients from tiny (eps matters) to large
    for t in range(1, n_steps + 1):
        for g, tp, scale in zip(grads, tparams, scales, strict=True):
            g[...] = 0.0 if rng.random() < 0.1 else scale * rng.standard_normal(g.shape)  # sometimes unused
            tp.grad = torch.from_numpy(g.copy())
        if vary_lr:
            ours.lr = theirs.param_groups[0]["lr"] = float(rng.uniform(0.0, 2.0 * kwargs["lr"]))
        ours.step()
        theirs.step()
        for name, p, tp in zip(names, params, tparams, strict=True):
            assert p.dtype == dtype, f"{name} changed dtype to {p.dtype}"
            assert_matches(f"step {t} {name}", p, tp, dtype)
            for buf in buffers:
                assert_matches(f"step {t} {buf}.{name}", ours.state[buf][name], theirs.state[tp][buf], dtype)
            if "step" in theirs.state[tp]:
                assert float(theirs.state[tp]["step"]) == ours.step_count == t
    return ours


# ---------------------------------------------------------------------------
# SGD, Adam, AdamW vs torch.optim
# ---------------------------------------------------------------------------

SGD_VARIANTS = ["plain", "momentum", "dampening", "nesterov", "weight_decay", "momentum_weight_decay"]


@pytest.mark.parametrize("variant", SGD_VARIANTS)
@given(
    shapes=shape_lists,
    dtype=dtypes,
    seed=seeds,
    n_steps=st.integers(20, 40),
    lr=lrs,
    momentum=st.floats(0.1, 0.99),
    dampening=st.floats(0.05, 0.9),
    weight_decay=st.floats(1e-4, 0.2),
    vary_lr=st.booleans(),
)
def test_sgd_matches_torch_step_by_step(
    variant, shapes, dtype, seed, n_steps, lr, momentum, dampening, weight_decay, vary_lr
):
    kwargs = {"lr": lr}
    if variant != "plain" and variant != "weight_decay":
        kwargs["momentum"] = momentum
    if variant == "dampening":
        kwargs["dampening"] = dampening
    if variant == "nesterov":
        kwargs["nesterov"] = True
    if "weight_decay" in variant:
        kwargs["weight_decay"] = weight_decay
    buffers = ["momentum_buffer"] if "momentum" in kwargs else []
    _run_against_torch(SGD, torch.optim.SGD, kwargs, shapes, dtype, seed, n_steps, buffers, vary_lr)


def test_sgd_momentum_buffer_starts_at_the_first_gradient_not_the_dampened_one():
    """Observed: torch.optim.SGD sets ``momentum_buffer = g_1`` on the first step, even with dampening."""
    for dtype in (np.float32, np.float64):
        g = np.array([1.0, -2.0, 3.0], dtype=dtype)
        ours = SGD([("w", np.zeros(3, dtype), g)], lr=0.1, momentum=0.9, dampening=0.5)
        tp = torch.nn.Parameter(torch.zeros(3, dtype=torch.from_numpy(g).dtype))
        tp.grad = torch.from_numpy(g.copy())
        theirs = torch.optim.SGD([tp], lr=0.1, momentum=0.9, dampening=0.5)
        ours.step()
        theirs.step()
        assert_matches("momentum_buffer after step 1", ours.state["momentum_buffer"]["w"], g, dtype)
        assert_matches("torch momentum_buffer after step 1", theirs.state[tp]["momentum_buffer"], g, dtype)
        ours.step()
        theirs.step()
        assert_matches("momentum_buffer after step 2", ours.state["momentum_buffer"]["w"], 0.9 * g + 0.5 * g, dtype)
        assert_matches("param after step 2", ours._param("w"), tp, dtype)


ADAM_VARIANTS = ["plain", "weight_decay", "amsgrad", "amsgrad_weight_decay"]


@pytest.mark.parametrize("variant", ADAM_VARIANTS)
@given(
    shapes=shape_lists,
    dtype=dtypes,
    seed=seeds,
    n_steps=st.integers(20, 40),
    lr=adam_lrs,
    data=st.data(),
    eps=log_eps,
    weight_decay=st.floats(1e-4, 0.2),
    vary_lr=st.booleans(),
)
def test_adam_matches_torch_step_by_step(variant, shapes, dtype, seed, n_steps, lr, data, eps, weight_decay, vary_lr):
    kwargs = {"lr": lr, "betas": data.draw(adam_betas(), label="betas"), "eps": eps, "amsgrad": "amsgrad" in variant}
    if "weight_decay" in variant:
        kwargs["weight_decay"] = weight_decay
    buffers = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if kwargs["amsgrad"] else [])
    _run_against_torch(Adam, torch.optim.Adam, kwargs, shapes, dtype, seed, n_steps, buffers, vary_lr)


ADAMW_VARIANTS = ["default_decay", "weight_decay", "amsgrad", "no_decay"]


@pytest.mark.parametrize("variant", ADAMW_VARIANTS)
@given(
    shapes=shape_lists,
    dtype=dtypes,
    seed=seeds,
    n_steps=st.integers(20, 40),
    lr=adam_lrs,
    data=st.data(),
    eps=log_eps,
    weight_decay=st.floats(1e-4, 1.0),
    vary_lr=st.booleans(),
)
def test_adamw_matches_torch_step_by_step(variant, shapes, dtype, seed, n_steps, lr, data, eps, weight_decay, vary_lr):
    kwargs = {"lr": lr, "betas": data.draw(adam_betas(), label="betas"), "eps": eps, "amsgrad": variant == "amsgrad"}
    if variant in ("weight_decay", "amsgrad"):
        kwargs["weight_decay"] = weight_decay
    elif variant == "no_decay":
        kwargs["weight_decay"] = 0.0
    buffers = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if kwargs["amsgrad"] else [])
    _run_against_torch(AdamW, torch.optim.AdamW, kwargs, shapes, dtype, seed, n_steps, buffers, vary_lr)


# ---------------------------------------------------------------------------
# on real modules: our backward + our optimizer vs the twin's autograd + torch.optim
# ---------------------------------------------------------------------------


def _make_module(kind, dtype, rng):
    if kind == "Linear":
        return nt.Linear(6, 4, dtype=dtype, rng=rng)
    # bias=False: k_proj.bias gets an exactly-zero gradient in any softmax attention (it shifts a whole
    # score row by q.b_k). Adam turns that rounding noise (1e-17 vs 1e-8 in float64 / float32) into steps of
    # size ~lr with random sign, so the two backends' k_proj.bias part ways by O(lr): not a bug in either.
    return nt.MultiHeadAttention(8, 2, bias=False, dtype=dtype, rng=rng)


OPTIMIZERS = {
    "Adam": (Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-2}),
    "AdamW": (AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 1e-1}),
    "SGD": (SGD, torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["Linear", "MultiHeadAttention"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_on_module_matches_torch_optimizer_on_twin(optimizer, kind, dtype):
    """20 steps: our backward + our optimizer vs the twin's autograd + ``torch.optim``; every parameter each step."""
    ours_cls, torch_cls, kwargs = OPTIMIZERS[optimizer]
    rng = np.random.default_rng(7)
    module = _make_module(kind, dtype, rng)
    twin = twin_of(module)
    ours, theirs = ours_cls(module, **kwargs), torch_cls(twin.parameters(), **kwargs)
    twin_params = dict(twin.named_parameters())
    in_features = 6 if kind == "Linear" else 8
    for t in range(1, 21):
        x = rng.standard_normal((2, 3, in_features)).astype(dtype)  # (B, T, C)
        module.zero_grad()
        theirs.zero_grad()
        xt = torch.from_numpy(x)
        if kind == "Linear":
            out, cache = module.forward(x)
            tout = twin(xt)
        else:
            out, cache = module.forward(x, x, x)
            tout = twin(xt, xt, xt)
        dout = rng.standard_normal(out.shape).astype(dtype)  # the loss is sum(out * dout)
        module.backward(dout, cache)
        (tout * torch.from_numpy(dout)).sum().backward()
        ours.step()
        theirs.step()
        for name, p in module.named_parameters():
            assert_matches(f"{kind} step {t} {name}", p, twin_params[name], dtype)


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------


def _grads_pair(rng, shapes, dtype, scale):
    grads = [np.array(scale * rng.standard_normal(s), dtype=dtype) for s in shapes]
    tparams = [torch.nn.Parameter(torch.zeros_like(torch.from_numpy(g))) for g in grads]
    for tp, g in zip(tparams, grads, strict=True):
        tp.grad = torch.from_numpy(g.copy())
    return grads, tparams


def test_clip_grad_norm_under_the_max_is_a_no_op():
    """Observed: under ``max_norm``, ``clip_grad_norm_`` leaves every gradient bit-identical (and so do we)."""
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        grads, tparams = _grads_pair(rng, [(3, 4), (1,), (5,)], dtype, 0.1)
        before = [g.copy() for g in grads]
        total = clip_grad_norm(grads, max_norm=10.0)
        ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm=10.0)
        assert_matches("total norm", np.array(total), ttotal, dtype)
        for i, (g, g0, tp) in enumerate(zip(grads, before, tparams, strict=True)):
            assert np.array_equal(g, g0), f"grad {i} changed under the max"
            assert np.array_equal(to_numpy(tp.grad), g0), f"torch grad {i} changed under the max"


@settings(max_examples=25)
@given(shapes=shape_lists, dtype=dtypes, seed=seeds, log_scale=st.floats(-3.0, 3.0), max_norm=st.floats(0.01, 10.0))
def test_clip_grad_norm_matches_torch(shapes, dtype, seed, log_scale, max_norm):
    rng = np.random.default_rng(seed)
    grads, tparams = _grads_pair(rng, shapes, dtype, 10.0**log_scale)
    total = clip_grad_norm({f"g{i}": g for i, g in enumerate(grads)}, max_norm)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    assert_matches("total norm", np.array(total), ttotal, dtype)
    for i, (g, tp) in enumerate(zip(grads, tparams, strict=True)):
        assert g.dtype == dtype
        assert_matches(f"clipped grad {i}", g, tp.grad, dtype)


def test_clip_grad_norm_takes_one_norm_over_all_gradients_together():
    """Observed: ``clip_grad_norm_`` scales every gradient by the same factor, from the norm of all together.

    Gradients of norms 3 and 4 have a total norm of 5; with ``max_norm=1`` both are scaled by
    ``1 / (5 + 1e-6)``. Clipping each gradient to norm 1 on its own would give something else.
    """
    g1, g2 = np.array([3.0, 0.0]), np.array([[0.0], [4.0]])
    t1, t2 = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(2, 1).double())
    t1.grad, t2.grad = torch.from_numpy(g1.copy()), torch.from_numpy(g2.copy())
    per_tensor = [g1 / 3.0, g2 / 4.0]  # each clipped alone to norm 1
    total = clip_grad_norm([g1, g2], max_norm=1.0)
    ttotal = torch.nn.utils.clip_grad_norm_([t1, t2], max_norm=1.0)
    assert_matches("total norm", np.array(total), np.array(5.0), np.float64)
    assert_matches("total norm vs torch", np.array(total), ttotal, np.float64)
    coef = 1.0 / (5.0 + 1e-6)
    for name, g, tp, g0, alone in (("g1", g1, t1, [3.0, 0.0], per_tensor[0]), ("g2", g2, t2, [[0.0], [4.0]], None)):
        assert_matches(f"{name} vs torch", g, tp.grad, np.float64)
        assert_matches(f"{name} vs one common factor", g, coef * np.array(g0), np.float64)
        if alone is not None:
            assert relative_error(name, g, alone).error > tolerance("cpu", np.float64)


def test_clip_grad_norm_epsilon_1e6_is_observable():
    """Observed: the coefficient is ``max_norm / (total_norm + 1e-6)``, so the 1e-6 shows in float64.

    * A total norm exactly at ``max_norm`` is still scaled, by ``2 / (2 + 1e-6)``: a rule
      without the 1e-6 (or one that clips only when ``norm > max_norm``) would leave it alone.
    * A norm just above the max is clipped to ``max_norm - ~1e-6``, not to ``max_norm``.
    """
    for total_norm in (2.0, 2.0 * (1.0 + 1e-9)):
        g = np.array([0.6, 0.8]) * total_norm  # norm exactly total_norm (0.6, 0.8 make a 3-4-5 triangle)
        tp = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        tp.grad = torch.from_numpy(g.copy())
        without_eps = g * min(2.0 / total_norm, 1.0)
        returned = clip_grad_norm([g], max_norm=2.0)
        torch.nn.utils.clip_grad_norm_([tp], max_norm=2.0)
        assert_matches("returned norm", np.array(returned), np.array(total_norm), np.float64)
        assert_matches("clipped grad vs torch", g, tp.grad, np.float64)
        with_eps = np.array([0.6, 0.8]) * total_norm * 2.0 / (total_norm + 1e-6)
        assert_matches("clipped grad vs formula", g, with_eps, np.float64)
        err = relative_error("without the 1e-6", without_eps, to_numpy(tp.grad)).error
        assert err > tolerance("cpu", np.float64), f"the 1e-6 was not observable (error {err:.1e})"


def test_clip_grad_norm_of_non_finite_gradients_matches_torch():
    """As PyTorch (``error_if_nonfinite=False``): a NaN norm makes every gradient NaN; ``error_if_nonfinite`` raises."""
    for bad in (np.nan, np.inf):
        g = np.array([1.0, bad, 2.0])
        other = np.array([3.0])
        t1, t2 = torch.nn.Parameter(torch.zeros(3).double()), torch.nn.Parameter(torch.zeros(1).double())
        t1.grad, t2.grad = torch.from_numpy(g.copy()), torch.from_numpy(other.copy())
        total = clip_grad_norm([g, other], 1.0)
        ttotal = torch.nn.utils.clip_grad_norm_([t1, t2], 1.0)
        assert_matches("non-finite total norm", np.array(total), ttotal, np.float64)
        assert_matches("grad with the non-finite entry", g, t1.grad, np.float64)
        assert_matches("finite grad", other, t2.grad, np.float64)
        with pytest.raises(ValueError, match=r"^grads: the total gradient norm"):
            clip_grad_norm([np.array([bad])], 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_accepts_a_module_and_an_optimizer():
    rng = np.random.default_rng(1)
    module = nt.Linear(3, 2, rng=rng)
    for _, g in module.named_grads():
        g[...] = rng.standard_normal(g.shape) * 10
    expected = math.sqrt(sum(float((g**2).sum()) for _, g in module.named_grads()))
    assert_matches("norm of a module", np.array(clip_grad_norm(module, 1.0)), np.array(expected), np.float64)
    opt = SGD(module, lr=0.1)
    clipped = expected / (expected + 1e-6)  # the norm after the first clip
    assert_matches("norm of an optimizer", np.array(clip_grad_norm(opt, 1.0)), np.array(clipped), np.float64)


# ---------------------------------------------------------------------------
# Adam / AdamW framework facts
# ---------------------------------------------------------------------------


def test_adam_adds_eps_after_the_bias_corrected_sqrt():
    """Observed: ``torch.optim.Adam`` divides by ``sqrt(v_t) / sqrt(1 - beta2^t) + eps``.

    That is Algorithm 1 of Kingma & Ba (``m_hat / (sqrt(v_hat) + eps)``). The paper's
    "more efficient" ordering, ``lr_t * m_t / (sqrt(v_t) + eps)`` with
    ``lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)``, adds eps *before* the bias
    correction: at step 1 with beta2 = 0.999 its eps is effectively ~32x larger, and with
    gradients of size ~eps the first update is ~16x smaller. Measurably different.
    """
    dtype = np.float64
    lr, beta1, beta2, eps = 1e-2, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(5)
    grads = [1e-8 * rng.standard_normal(5) for _ in range(5)]  # as small as eps
    p, g = p0.copy(), np.zeros(5)
    ours = Adam([("w", p, g)], lr=lr, betas=(beta1, beta2), eps=eps)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    theirs = torch.optim.Adam([tp], lr=lr, betas=(beta1, beta2), eps=eps)
    algorithm_1, eps_first = p0.copy(), p0.copy()
    m, v = np.zeros(5), np.zeros(5)
    for t, gt in enumerate(grads, start=1):
        g[...] = gt
        tp.grad = torch.from_numpy(gt.copy())
        ours.step()
        theirs.step()
        m = beta1 * m + (1 - beta1) * gt
        v = beta2 * v + (1 - beta2) * gt**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        algorithm_1 -= lr * m_hat / (np.sqrt(v_hat) + eps)
        lr_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        eps_first -= lr_t * m / (np.sqrt(v) + eps)
        assert_matches(f"step {t}: ours vs torch", p, tp, dtype)
        assert_matches(f"step {t}: torch vs Algorithm 1", tp, algorithm_1, dtype)
        err = relative_error(f"step {t}: eps before the correction", eps_first, to_numpy(tp)).error
        assert err > tolerance("cpu", dtype), f"eps placement was not observable at step {t} ({err:.1e})"


def test_adam_weight_decay_is_l2_and_adamw_weight_decay_is_decoupled():
    """Observed: with a zero gradient, Adam(weight_decay) moves every parameter by ~lr toward 0
    whatever its size (the L2 term ``wd * p`` is normalised like a gradient), while
    AdamW(weight_decay) only shrinks it: ``p * (1 - lr * wd)``, its moments stay zero.
    """
    dtype = np.float64
    lr, wd, eps = 1e-2, 0.1, 1e-8
    p0 = np.array([1e-3, -0.5, 2.0, -100.0])
    expected = {
        "Adam": p0 - lr * (wd * p0) / (np.abs(wd * p0) + eps),  # step 1: m_hat = wd p, sqrt(v_hat) = |wd p|
        "AdamW": p0 * (1 - lr * wd),
    }
    results = {}
    for name, ours_cls, torch_cls in (("Adam", Adam, torch.optim.Adam), ("AdamW", AdamW, torch.optim.AdamW)):
        p, g = p0.copy(), np.zeros(4)
        ours = ours_cls([("w", p, g)], lr=lr, eps=eps, weight_decay=wd)
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        tp.grad = torch.zeros(4, dtype=torch.float64)
        theirs = torch_cls([tp], lr=lr, eps=eps, weight_decay=wd)
        ours.step()
        theirs.step()
        assert_matches(f"{name}: ours vs torch", p, tp, dtype)
        assert_matches(f"{name}: torch vs formula", tp, expected[name], dtype)
        assert_matches(f"{name}: exp_avg", ours.state["exp_avg"]["w"], theirs.state[tp]["exp_avg"], dtype)
        results[name] = p
    assert not np.any(ours.state["exp_avg"]["w"]), "AdamW's decay leaked into its moments"
    assert relative_error("Adam vs AdamW", results["Adam"], results["AdamW"]).error > tolerance("cpu", dtype)


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------


def _torch_lrs(make_scheduler, n_updates):
    """The lr each of ``n_updates`` torch updates used, in the usual ``opt.step(); sched.step()`` loop."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SequentialLR calls step(0), which warns on some versions
        sched = make_scheduler(opt)
        lrs = []
        for _ in range(n_updates):
            lrs.append(opt.param_groups[0]["lr"])
            p.grad = torch.ones(1, dtype=torch.float64)
            opt.step()
            sched.step()
    return np.array(lrs)


def _our_lrs(schedule, n_updates):
    """The lr each of ``n_updates`` of our updates used, set from ``opt.step_count + 1`` before each step."""
    p, g = np.zeros(1), np.ones(1)
    opt = SGD([("p", p, g)], lr=0.0)
    lrs = []
    for _ in range(n_updates):
        opt.lr = schedule(opt.step_count + 1)
        lrs.append(opt.lr)
        opt.step()
    assert_matches("parameter after the schedule", p, -np.cumsum(lrs)[-1:], np.float64)
    return np.array(lrs)


@pytest.mark.parametrize("warmup", [1, 4, 10])
def test_inverse_sqrt_warmup_matches_lambda_lr(warmup):
    """Observed: ``LambdaLR`` evaluates its function at ``last_epoch = 0`` for the first update.

    The paper's ``d^-0.5 min(s^-0.5, s w^-1.5)`` at ``s = 0`` raises ``ZeroDivisionError``, so
    in PyTorch the formula needs ``s = last_epoch + 1``; ours numbers updates from 1, so update
    ``s`` here is ``last_epoch = s - 1`` there. The peak is at update ``warmup``.
    """
    d_model, factor, n = 16, 2.0, 3 * warmup + 5

    def paper(s):
        return factor * d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)

    theirs = _torch_lrs(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: paper(e + 1)), n)
    ours = _our_lrs(lambda s: inverse_sqrt_warmup(s, d_model, warmup, factor), n)
    assert_matches("lr per update", ours, theirs, np.float64)
    assert int(np.argmax(ours)) + 1 == warmup
    assert_matches("peak", np.array(ours.max()), np.array(factor / math.sqrt(d_model * warmup)), np.float64)
    assert inverse_sqrt_warmup(0, d_model, warmup) == 0.0
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), paper)


@pytest.mark.parametrize(("warmup", "total", "min_lr"), [(2, 3, 0.0), (4, 10, 0.1), (5, 23, 0.0), (3, 4, 0.05)])
def test_linear_warmup_cosine_matches_linear_lr_then_cosine_annealing_lr(warmup, total, min_lr):
    """Observed: ``SequentialLR([LinearLR(1/w, 1, total_iters=w-1), CosineAnnealingLR(T-w, eta_min)],
    milestones=[w-1])`` reproduces ours for updates 1..T (peak ``base_lr`` at update ``w``).

    Two surprises: the "obvious" chain ``LinearLR(..., total_iters=w)`` with ``milestones=[w]``
    reaches the peak at update ``w + 1``, one late; and ``CosineAnnealingLR`` is periodic, so
    after ``T`` its rate rises again where ours stays at ``min_lr``.
    """
    base_lr, n = 0.5, total + 3
    sched = torch.optim.lr_scheduler

    def chain(opt, total_iters, milestone):
        opt.param_groups[0]["lr"] = base_lr
        linear = sched.LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=total_iters)
        cosine = sched.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
        return sched.SequentialLR(opt, [linear, cosine], milestones=[milestone])

    theirs = _torch_lrs(lambda opt: chain(opt, warmup - 1, warmup - 1), n)
    ours = _our_lrs(lambda s: linear_warmup_cosine(s, base_lr, warmup, total, min_lr), n)
    assert_matches("lr per update 1..T", ours[:total], theirs[:total], np.float64)
    assert int(np.argmax(ours)) + 1 == warmup
    assert ours[warmup - 1] == base_lr
    assert np.all(ours[total:] == min_lr)
    assert np.any(theirs[total:] > min_lr + 1e-3), "torch's cosine no longer rises after T_max"
    naive = _torch_lrs(lambda opt: chain(opt, warmup, warmup), n)
    assert int(np.argmax(naive)) + 1 == warmup + 1


def test_linear_warmup_cosine_matches_hand_formula_without_and_with_one_warmup_step():
    base, total, lo = 0.3, 9, 0.01
    for warmup in (0, 1):
        for s in range(0, total + 3):
            if s < warmup:
                expected = base * s / warmup
            elif s <= total:
                expected = lo + (base - lo) * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2
            else:
                expected = lo
            got = linear_warmup_cosine(s, base, warmup, total, lo)
            assert_matches(f"warmup {warmup}, step {s}", np.array(got), np.array(expected), np.float64)


# ---------------------------------------------------------------------------
# state dict round trip
# ---------------------------------------------------------------------------

ROUND_TRIP = {
    "SGD": (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3}, {"lr": 9.0, "momentum": 0.5}),
    "Adam": (Adam, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 1e-3, "amsgrad": True}, {"amsgrad": True}),
    "AdamW": (AdamW, {"lr": 3e-2, "eps": 1e-6}, {}),
}


@pytest.mark.parametrize("optimizer", sorted(ROUND_TRIP))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_through_npz_continues_bit_exactly(optimizer, dtype, tmp_path):
    """Save module + optimizer to ``.npz`` after 5 steps, load into fresh objects: the next 5 steps are bit-identical.

    The fresh optimizer is built with other hyper-parameters; loading restores them. The
    learning rate follows a schedule of ``step_count + 1``, so the restored step count
    must put the schedule where it was.
    """
    cls, kwargs, fresh_kwargs = ROUND_TRIP[optimizer]
    rng = np.random.default_rng(11)
    grad_seq = [
        {"weight": rng.standard_normal((3, 4)).astype(dtype), "bias": rng.standard_normal(3).astype(dtype)}
        for _ in range(10)
    ]

    def train(module, opt, grads):
        for step_grads in grads:
            for name, g in module.named_grads():
                np.copyto(g, step_grads[name])
            opt.lr = linear_warmup_cosine(opt.step_count + 1, kwargs["lr"], warmup_steps=3, total_steps=10)
            opt.step()

    module = nt.Linear(4, 3, dtype=dtype, rng=rng)
    opt = cls(module, **kwargs)
    train(module, opt, grad_seq[:5])
    path = tmp_path / "checkpoint.npz"
    np.savez(
        path,
        **{f"model.{k}": v for k, v in module.state_dict().items()},
        **{f"optim.{k}": v for k, v in opt.state_dict().items()},
    )

    fresh = nt.Linear(4, 3, dtype=dtype, rng=np.random.default_rng(99))
    fresh_opt = cls(fresh, **fresh_kwargs)
    with np.load(path) as f:
        saved = dict(f)
    fresh.load_state_dict({k[len("model.") :]: v for k, v in saved.items() if k.startswith("model.")})
    fresh_opt.load_state_dict({k[len("optim.") :]: v for k, v in saved.items() if k.startswith("optim.")})
    assert fresh_opt.hyperparameters() == opt.hyperparameters()
    assert fresh_opt.step_count == opt.step_count == 5

    train(module, opt, grad_seq[5:])
    train(fresh, fresh_opt, grad_seq[5:])
    for name, p in module.named_parameters():
        assert np.array_equal(p, dict(fresh.named_parameters())[name]), f"{name} differs after the round trip"
    a, b = opt.state_dict(), fresh_opt.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), f"optimizer state {key!r} differs after the round trip"


def _snapshot(opt):
    return {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}


def _assert_unchanged(opt, snapshot):
    now = opt.state_dict()
    assert now.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert np.array_equal(np.asarray(now[key]), value), f"{key!r} changed by a failed load"


def test_load_state_dict_rejects_bad_states_and_leaves_the_optimizer_unchanged():
    module = nt.Linear(4, 3, rng=np.random.default_rng(0))
    opt = Adam(module, lr=1e-2)
    for _, g in module.named_grads():
        g[...] = 1.0
    opt.step()
    good = opt.state_dict()
    snapshot = _snapshot(opt)
    bad_states = [
        (KeyError, "keys do not match", {k: v for k, v in good.items() if k != "exp_avg.bias"}),
        (KeyError, "unexpected", {**good, "max_exp_avg_sq.bias": np.zeros(3)}),
        (ValueError, r"expected shape \(3,\)", {**good, "exp_avg_sq.bias": np.zeros(4)}),
        (TypeError, "expected dtype float64", {**good, "exp_avg.weight": np.zeros((3, 4), np.float32)}),
        (ValueError, "^lr:", {**good, "lr": -1.0}),
        (ValueError, r"^betas\[1\]:", {**good, "beta2": np.array(1.0)}),
        (ValueError, "^eps:", {**good, "eps": 0.0}),
        (ValueError, "from a AdamW", {**good, "type": "AdamW"}),
        (TypeError, r"^state\['step'\]", {**good, "step": 2.5}),
    ]
    for error, message, state in bad_states:
        with pytest.raises(error, match=message):
            opt.load_state_dict(state)
        _assert_unchanged(opt, snapshot)
    sgd = SGD(module, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"^state\['momentum'\]"):
        sgd.load_state_dict({**sgd.state_dict(), "momentum": 0.0})


# ---------------------------------------------------------------------------
# bad input, dtype, in-place
# ---------------------------------------------------------------------------


def _triples(dtype=np.float64):
    return [("w", np.zeros((2, 2), dtype), np.zeros((2, 2), dtype))]


BAD_ARGUMENTS = [
    ("lr", lambda: SGD(_triples(), lr=-0.1)),
    ("lr", lambda: Adam(_triples(), lr=-1e-3)),
    ("lr", lambda: AdamW(_triples(), lr=float("nan"))),
    (r"betas\[0\]", lambda: Adam(_triples(), betas=(1.0, 0.999))),
    (r"betas\[0\]", lambda: AdamW(_triples(), betas=(-0.1, 0.999))),
    (r"betas\[1\]", lambda: Adam(_triples(), betas=(0.9, 1.0))),
    ("eps", lambda: Adam(_triples(), eps=0.0)),
    ("eps", lambda: AdamW(_triples(), eps=-1e-8)),
    ("weight_decay", lambda: Adam(_triples(), weight_decay=-0.1)),
    ("weight_decay", lambda: SGD(_triples(), lr=0.1, weight_decay=-0.1)),
    ("momentum", lambda: SGD(_triples(), lr=0.1, momentum=-0.5)),
    ("dampening", lambda: SGD(_triples(), lr=0.1, momentum=0.5, dampening=1.5)),
    ("nesterov", lambda: SGD(_triples(), lr=0.1, nesterov=True)),
    ("nesterov", lambda: SGD(_triples(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    ("max_norm", lambda: clip_grad_norm([np.ones(2)], max_norm=0.0)),
    ("max_norm", lambda: clip_grad_norm([np.ones(2)], max_norm=-1.0)),
    ("step", lambda: inverse_sqrt_warmup(-1, 16, 4)),
    ("warmup_steps", lambda: inverse_sqrt_warmup(1, 16, 0)),
    ("total_steps", lambda: linear_warmup_cosine(1, 0.1, warmup_steps=5, total_steps=4)),
    ("min_lr", lambda: linear_warmup_cosine(1, 0.1, warmup_steps=1, total_steps=4, min_lr=0.2)),
    ("params", lambda: SGD([("w", np.zeros(2), np.zeros(3))], lr=0.1)),
    ("params", lambda: SGD([("w", np.zeros(2), np.zeros(2)), ("w", np.zeros(2), np.zeros(2))], lr=0.1)),
    ("params", lambda: SGD([], lr=0.1)),
]


@pytest.mark.parametrize(
    ("argument", "call"), BAD_ARGUMENTS, ids=[f"{i}-{a}" for i, (a, _) in enumerate(BAD_ARGUMENTS)]
)
def test_bad_arguments_raise_value_error_naming_the_argument(argument, call):
    with pytest.raises(ValueError, match=rf"^{argument}:"):
        call()


def test_setting_a_negative_lr_raises_and_wrong_types_raise_type_error():
    opt = SGD(_triples(), lr=0.1)
    with pytest.raises(ValueError, match=r"^lr:"):
        opt.lr = -1.0
    assert opt.lr == 0.1
    with pytest.raises(TypeError, match=r"^params:"):
        SGD([("w", np.zeros(2, np.int64), np.zeros(2, np.int64))], lr=0.1)
    with pytest.raises(TypeError, match=r"^lr:"):
        SGD(_triples(), lr="0.1")
    with pytest.raises(TypeError, match=r"^grads:"):
        clip_grad_norm([[1.0, 2.0]], 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_updates_the_module_arrays_in_place_in_their_own_dtype(dtype):
    """The module's own arrays change (no copies), float32 stays float32, and an ``lr`` given as a
    NumPy float64 scalar gives the same bits as a Python float (no silent upcast)."""
    results = []
    for lr in (1e-2, np.float64(1e-2)):
        module = nt.MultiHeadAttention(4, 2, dtype=dtype, rng=np.random.default_rng(5))
        ids = {name: id(p) for name, p in module.named_parameters()}
        opt = AdamW(module, lr=lr)
        for _, g in module.named_grads():
            g[...] = 0.5
        opt.step()
        opt.zero_grad()
        for name, p in module.named_parameters():
            assert id(p) == ids[name] and p.dtype == dtype
            assert not np.any(dict(module.named_grads())[name]), "zero_grad left a gradient"
        results.append(module.state_dict())
    for name in results[0]:
        assert np.array_equal(results[0][name], results[1][name]), f"{name}: lr as np.float64 changed the bits"


def test_clip_grad_norm_with_infinite_max_norm_measures_without_clipping_like_torch():
    grads = [np.array([3.0, 4.0]), np.array([[12.0]])]
    before = [g.copy() for g in grads]
    assert clip_grad_norm(grads, math.inf) == 13.0
    assert all(np.array_equal(a, b) for a, b in zip(grads, before, strict=True))
    t = torch.zeros(2, requires_grad=True)
    t.grad = torch.tensor([3.0, 4.0])
    assert float(torch.nn.utils.clip_grad_norm_([t], math.inf)) == 5.0


# ---------------------------------------------------------------------------
# the update rules as functions: what the classes apply, bit for bit
# ---------------------------------------------------------------------------

# (class, its rule, the rule's buffers in order, class kwargs, the same hyper-parameters as rule kwargs)
RULES = {
    "SGD momentum nesterov wd": (
        SGD,
        sgd_update,
        ("momentum_buffer",),
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.05, "nesterov": True},
        {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.05, "nesterov": True},
    ),
    "SGD dampening": (
        SGD,
        sgd_update,
        ("momentum_buffer",),
        {"lr": 0.1, "momentum": 0.8, "dampening": 0.3},
        {"momentum": 0.8, "dampening": 0.3},
    ),
    "Adam L2": (
        Adam,
        adam_update,
        ("exp_avg", "exp_avg_sq"),
        {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
        {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1},
    ),
    "Adam AMSGrad": (
        Adam,
        adam_update,
        ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        {"lr": 1e-2, "betas": (0.5, 0.9), "amsgrad": True},
        {"beta1": 0.5, "beta2": 0.9},
    ),
    "AdamW": (
        AdamW,
        adamw_update,
        ("exp_avg", "exp_avg_sq"),
        {"lr": 1e-2, "betas": (0.7, 0.95), "weight_decay": 0.2},
        {"beta1": 0.7, "beta2": 0.95, "weight_decay": 0.2},
    ),
    "AdamW AMSGrad": (
        AdamW,
        adamw_update,
        ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        {"lr": 1e-2, "amsgrad": True},
        {"weight_decay": 1e-2},
    ),
}


def _call_rule(rule, p, g, buffers, t, lr, rule_kwargs):
    if rule is sgd_update:
        return rule(p, g, buffers[0], t, lr, **rule_kwargs)
    return rule(p, g, buffers[0], buffers[1], t, lr, **rule_kwargs, max_exp_avg_sq=(buffers[2:] or [None])[0])


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_rule_by_hand_equals_its_class_step_bit_for_bit(rule_name, dtype):
    """Each rule applied by hand to whole arrays gives the class's parameters and buffers bit for bit, step
    after step with a changing lr, for a (1,) parameter, one the class updates slice by slice (more than
    ``SLICE_SIZE`` elements) and one that is not C-contiguous (updated whole)."""
    cls, rule, buffer_names, class_kwargs, rule_kwargs = RULES[rule_name]
    rng = np.random.default_rng(7)
    shapes = [(1,), (3, SLICE_SIZE // 3 + 5), (6, 5)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params[2] = np.asfortranarray(params[2])
    grads = [np.zeros_like(p) for p in params]
    names = [f"p{i}" for i in range(len(params))]
    opt = cls(list(zip(names, params, grads, strict=True)), **class_kwargs)
    by_hand = [p.copy(order="K") for p in params]
    hand_buffers = [[np.zeros_like(p) for _ in buffer_names] for p in by_hand]
    for t in range(1, 5):
        for g in grads:
            g[...] = rng.standard_normal(g.shape) * 10.0 ** rng.uniform(-3, 1)
        lr = class_kwargs["lr"] * (1.0 + 0.5 * t)
        opt.lr = lr
        opt.step()
        for p, g, buffers in zip(by_hand, grads, hand_buffers, strict=True):
            _call_rule(rule, p, g, buffers, t, lr, rule_kwargs)
        for name, p, ours, buffers in zip(names, params, by_hand, hand_buffers, strict=True):
            assert ours.dtype == dtype and np.array_equal(ours, p), f"step {t} {name}: by hand != {cls.__name__}"
            for buf, b in zip(buffer_names, buffers, strict=True):
                assert np.array_equal(b, opt.state[buf][name]), f"step {t} {buf}.{name}: by hand != {cls.__name__}"


def test_update_rules_check_their_arguments_before_writing_anything():
    w = np.full(3, 2.0)
    g, m, v = np.ones(3), np.zeros(3), np.zeros(3)
    bad_calls = [
        (ValueError, r"^step:", lambda: adam_update(w, g, m, v, 0)),
        (ValueError, r"^beta1:", lambda: adamw_update(w, g, m, v, 1, beta1=1.0)),
        (ValueError, r"^eps:", lambda: adam_update(w, g, m, v, 1, eps=0.0)),
        (ValueError, r"^lr:", lambda: sgd_update(w, g, None, 1, lr=-0.1)),
        (ValueError, r"^nesterov:", lambda: sgd_update(w, g, m, 1, 0.1, momentum=0.9, dampening=0.1, nesterov=True)),
        (ValueError, r"^momentum_buffer:", lambda: sgd_update(w, g, None, 1, 0.1, momentum=0.9)),
        (ValueError, r"^momentum_buffer:", lambda: sgd_update(w, g, m, 1, 0.1)),
        (ValueError, r"^exp_avg_sq:", lambda: adamw_update(w, g, m, np.zeros(4), 1)),
        (TypeError, r"^grad:", lambda: adam_update(w, g.astype(np.float32), m, v, 1)),
        (TypeError, r"^max_exp_avg_sq:", lambda: adam_update(w, g, m, v, 1, max_exp_avg_sq=[0.0, 0.0, 0.0])),
    ]
    for error, message, call in bad_calls:
        with pytest.raises(error, match=message):
            call()
    assert np.array_equal(w, np.full(3, 2.0)) and not m.any() and not v.any(), "a rejected call wrote an array"
    read_only = np.zeros(3)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"^param:"):
        adam_update(read_only, g, m, v, 1)


def test_clip_grad_norm_infinite_coefficient_warns_nothing_and_matches_torch():
    """Found: with ``eps=0`` and all-zero gradients, or a float32 gradient and a ``max_norm`` beyond float32,
    the coefficient ``c`` is inf (no clipping, as in PyTorch) but NumPy warned (divide by zero / overflow)."""
    for grad, max_norm, eps in ((np.zeros(3), 1.0, 0.0), (np.ones(3, np.float32), 1e39, 1e-6)):
        t = torch.zeros(3, dtype=torch.from_numpy(grad).dtype, requires_grad=True)
        t.grad = torch.from_numpy(grad.copy())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            total = clip_grad_norm([grad], max_norm, eps=eps)
        ttotal = torch.nn.utils.clip_grad_norm_([t], max_norm)
        assert total == float(ttotal)
        assert np.array_equal(grad, t.grad.numpy())


def test_clip_grad_norm_error_if_nonfinite_must_be_a_bool():
    """Found: ``error_if_nonfinite`` was not checked, so ``"no"`` meant True."""
    with pytest.raises(TypeError, match=r"^error_if_nonfinite:"):
        clip_grad_norm([np.array([np.inf])], 1.0, error_if_nonfinite="no")
