"""Parameter groups of the NumPy optimizers vs ``torch.optim`` with the same groups.

Each parity test builds two or three groups with different hyper-parameters (some keys
left out, so the constructor's defaults fill them, as torch does), feeds ours and torch's
optimizer the same random gradients (one parameter's gradient always zero, as if frozen
elsewhere) and compares every parameter and every state buffer after every step, in
float32 and float64. A parameter *not* given to the optimizer sits next to them and must
never change.

What these tests pin down (torch 2.13 CPU, and any torch >= 2.2):

* a group dict takes the constructor's value for every key it leaves out;
* ``LambdaLR`` sets each group's ``lr`` to ``initial_lr * f(last_epoch)``, with
  ``initial_lr`` the group's ``lr`` when the scheduler was built; ``opt.set_lr_scale``
  gives the same rates, bit for bit, and so the same parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer as nt
from numpy_transformer.optim import SGD, Adam, AdamW, linear_warmup_cosine
from numpy_transformer.training.checkpoint import load_checkpoint, save_checkpoint

from .helpers import assert_matches
from .strategies import dtypes, seeds
from .test_optim import adam_betas, adam_lrs, log_eps, lrs

# ---------------------------------------------------------------------------
# the step-by-step runner, with groups
# ---------------------------------------------------------------------------

GROUP_SHAPES = [[(1,), (3, 2)], [(4,), (2, 2, 1)], [(5,)]]  # group i gets GROUP_SHAPES[i]


def _buffers(opt, group):
    """The state buffers a group of ours needs, from its (default-filled) hyper-parameters."""
    if isinstance(opt, SGD):
        return ["momentum_buffer"] if group["momentum"] != 0.0 else []
    return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])


def _run_groups_against_torch(ours_cls, torch_cls, defaults, group_hypers, dtype, seed, n_steps, vary_lr=False):
    """Step ours and torch's optimizer, built with the same groups, on the same random gradients.

    Compares every parameter and every buffer after every step; returns the worst relative error.
    """
    rng = np.random.default_rng(seed)
    ours_groups, torch_groups, pairs = [], [], []  # pairs: (group index, name, param, torch param)
    for i, hyper in enumerate(group_hypers):
        triples, tparams = [], []
        for j, shape in enumerate(GROUP_SHAPES[i]):
            p = np.array(rng.standard_normal(shape), dtype=dtype)
            triples.append((f"g{i}.p{j}", p, np.zeros_like(p)))
            tparams.append(torch.nn.Parameter(torch.from_numpy(p.copy())))
            pairs.append((i, f"g{i}.p{j}", p, tparams[-1]))
        ours_groups.append({"params": triples, **hyper})
        torch_groups.append({"params": tparams, **hyper})
    ours, theirs = ours_cls(ours_groups, **defaults), torch_cls(torch_groups, **defaults)
    outside = np.array(rng.standard_normal((2, 3)), dtype=dtype)  # a parameter the optimizer was not given
    outside_grad = np.array(rng.standard_normal((2, 3)), dtype=dtype)
    outside_before, outside_grad_before = outside.copy(), outside_grad.copy()
    grads = {name: g for name, g in ours.named_grads()}
    scales = {name: 10.0 ** rng.uniform(-4, 1) for name in grads}  # gradients from tiny (eps matters) to large
    worst = 0.0
    for t in range(1, n_steps + 1):
        for _, name, _, tp in pairs:
            g = grads[name]
            frozen = name == "g0.p0" or rng.random() < 0.1  # g0.p0 always 0, as if frozen elsewhere
            g[...] = 0.0 if frozen else scales[name] * rng.standard_normal(g.shape)
            tp.grad = torch.from_numpy(g.copy())
        if vary_lr:
            for ours_group, torch_group in zip(ours.param_groups, theirs.param_groups, strict=True):
                ours_group["lr"] = torch_group["lr"] = float(rng.uniform(0.0, 2.0 * ours_group["initial_lr"]))
        ours.step()
        theirs.step()
        for i, name, p, tp in pairs:
            assert p.dtype == dtype, f"{name} changed dtype to {p.dtype}"
            worst = max(worst, assert_matches(f"step {t} {name}", p, tp, dtype).error)
            needed = _buffers(ours, ours.param_groups[i])
            held = [buf for buf, arrays in ours.state.items() if name in arrays]
            assert held == needed, f"{name} (group {i}) has buffers {held}, its group needs {needed}"
            for buf in needed:
                cmp = assert_matches(f"step {t} {buf}.{name}", ours.state[buf][name], theirs.state[tp][buf], dtype)
                worst = max(worst, cmp.error)
        assert np.array_equal(outside, outside_before), "a parameter not given to the optimizer changed"
    ours.zero_grad()
    assert np.array_equal(outside_grad, outside_grad_before), "zero_grad touched a gradient it was not given"
    assert all(not np.any(g) for g in grads.values())
    return worst


# ---------------------------------------------------------------------------
# SGD, Adam, AdamW with groups vs torch.optim with the same groups
# ---------------------------------------------------------------------------


@given(
    dtype=dtypes,
    seed=seeds,
    n_steps=st.integers(10, 25),
    group_lrs=st.tuples(lrs, lrs, lrs),
    momenta=st.tuples(st.floats(0.1, 0.99), st.floats(0.1, 0.99)),
    dampening=st.floats(0.05, 0.9),
    weight_decays=st.tuples(st.floats(1e-4, 0.2), st.floats(1e-4, 0.2)),
    vary_lr=st.booleans(),
)
def test_sgd_with_groups_matches_torch_step_by_step(
    dtype, seed, n_steps, group_lrs, momenta, dampening, weight_decays, vary_lr
):
    """Group 0: Nesterov; group 1: the default momentum with dampening and L2 decay; group 2: no momentum."""
    defaults = {"lr": group_lrs[0], "momentum": momenta[0]}
    groups = [
        {"momentum": momenta[1], "nesterov": True},  # lr from the defaults
        {"lr": group_lrs[1], "dampening": dampening, "weight_decay": weight_decays[0]},
        {"lr": group_lrs[2], "momentum": 0.0, "weight_decay": weight_decays[1]},
    ]
    _run_groups_against_torch(SGD, torch.optim.SGD, defaults, groups, dtype, seed, n_steps, vary_lr)


@given(
    dtype=dtypes,
    seed=seeds,
    n_steps=st.integers(10, 25),
    group_lrs=st.tuples(adam_lrs, adam_lrs),
    data=st.data(),
    eps=st.tuples(log_eps, log_eps),
    weight_decays=st.tuples(st.floats(1e-4, 0.2), st.floats(1e-4, 0.2)),
    vary_lr=st.booleans(),
)
def test_adam_with_groups_matches_torch_step_by_step(
    dtype, seed, n_steps, group_lrs, data, eps, weight_decays, vary_lr
):
    """Group 0: own lr, betas and L2 decay; group 1: own eps and AMSGrad; group 2: only its own lr."""
    defaults = {"lr": group_lrs[0], "betas": data.draw(adam_betas(), label="betas"), "eps": eps[0]}
    defaults["weight_decay"] = weight_decays[0]
    groups = [
        {"lr": data.draw(adam_lrs, label="lr0"), "betas": data.draw(adam_betas(), label="betas0"), "weight_decay": 0.0},
        {"eps": eps[1], "amsgrad": True},
        {"lr": group_lrs[1], "weight_decay": weight_decays[1]},
    ]
    _run_groups_against_torch(Adam, torch.optim.Adam, defaults, groups, dtype, seed, n_steps, vary_lr)


@given(
    dtype=dtypes,
    seed=seeds,
    n_steps=st.integers(10, 25),
    group_lrs=st.tuples(adam_lrs, adam_lrs),
    data=st.data(),
    eps=log_eps,
    weight_decay=st.floats(1e-4, 1.0),
    vary_lr=st.booleans(),
)
def test_adamw_with_groups_matches_torch_step_by_step(
    dtype, seed, n_steps, group_lrs, data, eps, weight_decay, vary_lr
):
    """Group 0: own lr, betas, decay; group 1: no decay (the usual bias / norm group) and AMSGrad; group 2: defaults.

    The constructor gets no ``weight_decay``, so group 2 takes AdamW's default 1e-2 -- torch's too.
    """
    defaults = {"lr": group_lrs[0], "eps": eps}
    groups = [
        {"lr": group_lrs[1], "betas": data.draw(adam_betas(), label="betas0"), "weight_decay": weight_decay},
        {"weight_decay": 0.0, "amsgrad": True},
        {},
    ]
    _run_groups_against_torch(AdamW, torch.optim.AdamW, defaults, groups, dtype, seed, n_steps, vary_lr)


def test_a_group_left_to_the_defaults_gets_the_constructors_values_as_torch_does():
    w, tw = np.zeros(2), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b, tb = np.zeros(1), torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    groups = [{"params": [("w", w, np.zeros(2))], "lr": 0.5, "betas": (0.5, 0.9)}, {"params": [("b", b, np.zeros(1))]}]
    ours = AdamW(groups, lr=0.1, eps=1e-6)
    theirs = torch.optim.AdamW([{"params": [tw], "lr": 0.5, "betas": (0.5, 0.9)}, {"params": [tb]}], lr=0.1, eps=1e-6)
    for ours_group, torch_group in zip(ours.param_groups, theirs.param_groups, strict=True):
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
            assert ours_group[key] == torch_group[key], f"{key}: ours {ours_group[key]!r}, torch {torch_group[key]!r}"
    assert ours.param_groups[0]["params"] == ("w",) and ours.param_groups[1]["params"] == ("b",)
    assert ours.param_groups[1]["weight_decay"] == 1e-2  # AdamW's default, in both


# ---------------------------------------------------------------------------
# schedules over groups: set_lr_scale vs LambdaLR
# ---------------------------------------------------------------------------


def _layerwise_groups(dtype, rng, lrs_):
    """Three groups with layer-wise decaying rates, for ours and for torch, with the same start values."""
    ours, theirs, pairs = [], [], []
    for i, lr in enumerate(lrs_):
        p = np.array(rng.standard_normal((3, 2)), dtype=dtype)
        tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
        ours.append({"params": [(f"layer{i}.weight", p, np.zeros_like(p))], "lr": lr})
        theirs.append({"params": [tp], "lr": lr})
        pairs.append((p, tp))
    return ours, theirs, pairs


@pytest.mark.parametrize("per_group", [False, True], ids=["one_lambda", "one_lambda_per_group"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_set_lr_scale_matches_lambda_lr_with_groups(per_group, dtype):
    """``LambdaLR`` multiplies each group's ``initial_lr`` by ``f(last_epoch)``; ours by ``f(step_count)``.

    Layer-wise decay (rates 1e-2 * 0.5**k) under a warm-up + cosine: the rates are equal bit
    for bit before every update, and the parameters within the contract, for 15 updates.
    """
    rng = np.random.default_rng(21)
    base = [1e-2 * 0.5**k for k in range(3)]
    ours_groups, torch_groups, pairs = _layerwise_groups(dtype, rng, base)
    ours = Adam(ours_groups, lr=1.0, weight_decay=1e-3)
    theirs = torch.optim.Adam(torch_groups, lr=1.0, weight_decay=1e-3)

    def f(k):
        return lambda e: linear_warmup_cosine(e + 1, 1.0, warmup_steps=3 + k, total_steps=12)

    lambdas = [f(k) for k in range(3)] if per_group else f(0)
    sched = torch.optim.lr_scheduler.LambdaLR(theirs, lambdas)
    for t in range(1, 16):
        if per_group:
            ours.set_lr_scale([fk(ours.step_count) for fk in lambdas])
        else:
            ours.set_lr_scale(lambdas(ours.step_count))
        for i, (ours_group, torch_group) in enumerate(zip(ours.param_groups, theirs.param_groups, strict=True)):
            assert ours_group["initial_lr"] == torch_group["initial_lr"] == base[i]
            assert ours_group["lr"] == torch_group["lr"], f"update {t} group {i}: lr {ours_group['lr']!r} vs torch"
        for (_, tp), (_, _, g) in zip(pairs, (grp["params"][0] for grp in ours_groups), strict=True):
            g[...] = rng.standard_normal(g.shape)
            tp.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        sched.step()
        for i, (p, tp) in enumerate(pairs):
            assert_matches(f"update {t} layer{i}.weight", p, tp, dtype)


def test_set_lr_scale_checks_everything_before_writing():
    opt = SGD(
        [{"params": [("a", np.zeros(2), np.zeros(2))], "lr": 0.1}, {"params": [("b", np.zeros(2), np.zeros(2))]}],
        lr=1e300,
    )
    before = [g["lr"] for g in opt.param_groups]
    for bad, error, message in [
        (-1.0, ValueError, r"^factor: expected a number >= 0"),
        ([1.0], ValueError, r"^factor: expected one factor per parameter group \(2\), got 1"),
        ([1.0, float("nan")], ValueError, r"^factor\[1\]: expected a finite number"),
        (1e10, ValueError, r"^param_groups\[1\]\['lr'\]: expected a finite number"),  # 1e300 * 1e10 = inf
        ("2", TypeError, r"^factor: expected a real number"),
    ]:
        with pytest.raises(error, match=message):
            opt.set_lr_scale(bad)
        assert [g["lr"] for g in opt.param_groups] == before
    opt.param_groups[0]["initial_lr"] = 0.2
    opt.set_lr_scale(0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5e300]


# ---------------------------------------------------------------------------
# one group: the old API, unchanged
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_one_group_dict_is_the_same_optimizer_as_plain_params(cls):
    """``cls([{"params": triples}], ...)`` is ``cls(triples, ...)``: same bits, same flat state dict, ``opt.lr``."""
    kwargs = {"lr": 0.05, "momentum": 0.9} if cls is SGD else {"lr": 0.01, "amsgrad": True}
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((3, 2))
    results = []
    for wrap in (False, True):
        p, g = p0.copy(), np.zeros_like(p0)
        triples = [("w", p, g)]
        opt = cls([{"params": triples}] if wrap else triples, **kwargs)
        assert opt.lr == opt.param_groups[0]["lr"] == kwargs["lr"]
        for step in range(4):
            g[...] = np.random.default_rng(step).standard_normal(g.shape)  # the same gradients in both runs
            opt.lr = opt.param_groups[0]["initial_lr"] * 0.5
            opt.step()
        results.append((p, opt.state_dict()))
    (p_plain, sd_plain), (p_wrapped, sd_wrapped) = results
    assert np.array_equal(p_plain, p_wrapped)
    assert sd_plain.keys() == sd_wrapped.keys() and "lr" in sd_plain and "initial_lr" in sd_plain
    assert not any(k.startswith("param_groups.") for k in sd_plain)
    for key in sd_plain:
        assert np.array_equal(sd_plain[key], sd_wrapped[key]), key


def test_param_group_view_and_attribute_are_the_same_value():
    opt = Adam([("w", np.zeros(2), np.zeros(2))], lr=1e-3, betas=(0.8, 0.99))
    group = opt.param_groups[0]
    group["lr"] = 0.25
    assert opt.lr == 0.25
    opt.lr = 0.5
    assert group["lr"] == 0.5 and group["initial_lr"] == 1e-3
    group["betas"] = (0.5, 0.95)
    assert opt.betas == (0.5, 0.95) and opt.beta1 == 0.5
    assert dict(group) == {
        "params": ("w",),
        "lr": 0.5,
        "betas": (0.5, 0.95),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "initial_lr": 1e-3,
    }


def test_a_state_dict_saved_before_groups_existed_still_loads():
    """The flat one-group format without ``initial_lr`` loads; the optimizer keeps its own ``initial_lr``."""
    p, g = np.zeros(3), np.ones(3)
    opt = Adam([("w", p, g)], lr=1e-2)
    opt.step()
    old = {k: v for k, v in opt.state_dict().items() if k != "initial_lr"}
    old["lr"] = 5e-3
    fresh = Adam([("w", np.zeros(3), np.ones(3))], lr=2e-2)
    fresh.load_state_dict(old)
    assert fresh.lr == 5e-3 and fresh.param_groups[0]["initial_lr"] == 2e-2 and fresh.step_count == 1


# ---------------------------------------------------------------------------
# several groups: opt.lr, assignments and construction errors
# ---------------------------------------------------------------------------


def _two_groups(cls=SGD, **kwargs):
    groups = [
        {"params": [("a", np.zeros(2), np.zeros(2))], "lr": 0.1, **kwargs},
        {"params": [("b", np.zeros(3), np.zeros(3)), ("c", np.zeros(1), np.zeros(1))]},
    ]
    return cls(groups, lr=0.01, **({"momentum": 0.9} if cls is SGD else {}))


def test_opt_lr_with_several_groups_raises_pointing_to_param_groups():
    """With several groups there is no single ``lr``: reading or assigning it raises, and nothing changes."""
    opt = _two_groups()
    with pytest.raises(
        AttributeError, match=r"^lr: this SGD has 2 parameter groups.*param_groups\[i\]\['lr'\].*set_lr_scale"
    ):
        opt.lr = 0.5
    with pytest.raises(AttributeError, match=r"^lr: this SGD has 2 parameter groups"):
        _ = opt.lr
    with pytest.raises(AttributeError, match=r"^momentum: .*param_groups\[i\]\['momentum'\]"):
        _ = opt.momentum
    with pytest.raises(AttributeError, match=r"^hyperparameters: "):
        opt.hyperparameters()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert "param_groups=" in repr(opt)


def test_assigning_a_group_value_is_checked_and_leaves_the_group_unchanged_on_error():
    opt = _two_groups()
    adam = _two_groups(Adam, amsgrad=True)
    group, adam_group = opt.param_groups[1], adam.param_groups[0]
    before, adam_before = dict(group), dict(adam_group)
    cases = [
        (group, "lr", -1.0, ValueError, r"^param_groups\[1\]\['lr'\]: expected a number >= 0"),
        (group, "lr", "0.1", TypeError, r"^param_groups\[1\]\['lr'\]: expected a real number"),
        (group, "lr", float("inf"), ValueError, r"^param_groups\[1\]\['lr'\]: expected a finite number"),
        (group, "initial_lr", -1.0, ValueError, r"^param_groups\[1\]\['initial_lr'\]"),
        (group, "momentum", 0.0, ValueError, r"^param_groups\[1\]\['momentum'\]: .*momentum buffer"),
        (group, "dampening", 2.0, ValueError, r"^param_groups\[1\]\['dampening'\]"),
        (group, "nesterov", 1, TypeError, r"^param_groups\[1\]\['nesterov'\]: expected a bool"),
        (group, "params", [], TypeError, r"^param_groups\[1\]\['params'\]: a group's parameters are fixed"),
        (group, "weight_decy", 0.1, KeyError, r"param_groups\[1\]: no key 'weight_decy'"),
        (adam_group, "amsgrad", False, ValueError, r"^param_groups\[0\]\['amsgrad'\]: False but the group has True"),
        (
            adam_group,
            "betas",
            (0.9, 1.0),
            ValueError,
            r"^param_groups\[0\]\['betas'\]\[1\]: expected a number in \[0, 1\)",
        ),
        (adam_group, "betas", 0.9, TypeError, r"^param_groups\[0\]\['betas'\]: expected a pair"),
        (adam_group, "eps", 0.0, ValueError, r"^param_groups\[0\]\['eps'\]"),
    ]
    for grp, key, value, error, message in cases:
        with pytest.raises(error, match=message):
            grp[key] = value
    with pytest.raises(TypeError, match=r"^param_groups\[1\]: keys cannot be deleted"):
        del group["lr"]
    group["dampening"] = 0.5
    with pytest.raises(ValueError, match=r"^param_groups\[1\]\['nesterov'\]: Nesterov momentum needs"):
        group["nesterov"] = True  # checked together with the group's other values
    assert dict(group) == {**before, "dampening": 0.5}
    assert dict(adam_group) == adam_before


def _triples(*names, dtype=np.float64):
    return [(n, np.zeros(2, dtype), np.zeros(2, dtype)) for n in names]


_SHARED = np.zeros(2)

BAD_GROUPS = [
    (
        ValueError,
        r"^param_groups\[1\]\['params'\]: parameter 'w' is already in param_groups\[0\]; names must be unique",
        lambda: Adam([{"params": _triples("w")}, {"params": _triples("w")}]),
    ),
    (
        ValueError,
        r"^param_groups\[1\]\['params'\]: parameter 'v' is the same array as 'w' in param_groups\[0\]",
        lambda: Adam([{"params": [("w", _SHARED, np.zeros(2))]}, {"params": [("v", _SHARED, np.zeros(2))]}]),
    ),
    (
        ValueError,
        r"^param_groups\[1\]: unknown key 'weight_decy'; a AdamW group takes",
        lambda: AdamW([{"params": _triples("a")}, {"params": _triples("b"), "weight_decy": 0.1}]),
    ),
    (
        ValueError,
        r"^param_groups\[1\]\['lr'\]: expected a number >= 0.0, got -0.1",
        lambda: Adam([{"params": _triples("a")}, {"params": _triples("b"), "lr": -0.1}]),
    ),
    (
        TypeError,
        r"^param_groups\[0\]\['lr'\]: expected a real number",
        lambda: SGD([{"params": _triples("a"), "lr": None}], lr=0.1),
    ),
    (
        ValueError,
        r"^param_groups\[0\]\['betas'\]\[0\]: expected a number in \[0, 1\)",
        lambda: Adam([{"params": _triples("a"), "betas": (1.0, 0.9)}]),
    ),
    (
        ValueError,
        r"^param_groups\[0\]\['nesterov'\]: Nesterov momentum needs momentum > 0",
        lambda: SGD([{"params": _triples("a"), "nesterov": True}], lr=0.1),
    ),
    (
        ValueError,
        r"^param_groups\[1\]\['params'\]: got no parameters to optimize",
        lambda: SGD([{"params": _triples("a")}, {"params": []}], lr=0.1),
    ),
    (
        ValueError,
        r"^param_groups\[0\]: a parameter group needs a 'params' key",
        lambda: SGD([{"lr": 0.1}], lr=0.1),
    ),
    (
        TypeError,
        r"^param_groups\[1\]\['params'\]: parameter 'b' must be float32 or float64, got int64",
        lambda: SGD([{"params": _triples("a")}, {"params": _triples("b", dtype=np.int64)}], lr=0.1),
    ),
    (
        TypeError,
        r"^param_groups\[1\]: no learning rate; give SGD lr=\.\.\., or an 'lr' in every group",
        lambda: SGD([{"params": _triples("a"), "lr": 0.1}, {"params": _triples("b")}]),
    ),
    (TypeError, r"^lr: no learning rate", lambda: SGD(_triples("a"))),
    (
        TypeError,
        r"^params: item 0 is a parameter-group dict, so every item must be one; item 1 is tuple",
        lambda: SGD([{"params": _triples("a")}, *_triples("b")], lr=0.1),
    ),
    (ValueError, r"^lr: expected a number >= 0", lambda: Adam([{"params": _triples("a"), "lr": 0.1}], lr=-1.0)),
]


@pytest.mark.parametrize(("error", "message", "call"), BAD_GROUPS, ids=[f"{i}" for i in range(len(BAD_GROUPS))])
def test_bad_groups_raise_naming_the_group_and_key(error, message, call):
    with pytest.raises(error, match=message):
        call()


def test_sgd_groups_that_all_give_an_lr_need_no_default():
    opt = SGD([{"params": _triples("a"), "lr": 0.1}, {"params": _triples("b"), "lr": 0.2}])
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]


# ---------------------------------------------------------------------------
# only the given parameters are touched
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_a_module_parameter_not_given_to_the_optimizer_is_never_touched(cls):
    """Groups built from part of a module: the rest of it keeps its values and gradients, bit for bit."""
    rng = np.random.default_rng(8)
    module = nt.MultiHeadAttention(4, 2, rng=rng)
    triples = [(n, p, g) for (n, p), (_, g) in zip(module.named_parameters(), module.named_grads(), strict=True)]
    given_ = [t for t in triples if t[0].startswith(("q_proj.", "k_proj."))]
    rest = [t for t in triples if not t[0].startswith(("q_proj.", "k_proj."))]
    opt = cls(
        [{"params": [t for t in given_ if t[0].startswith("q_")], "lr": 0.1}, {"params": given_[2:], "lr": 0.05}],
        lr=0.01,
        weight_decay=0.1,
    )
    assert {n for n, _ in opt.named_parameters()} == {t[0] for t in given_}
    before = {name: (p.copy(), g) for name, p, g in rest}
    for _ in range(5):
        for _, _, g in triples:
            g[...] = rng.standard_normal(g.shape)
        grads_before = {name: g.copy() for name, _, g in rest}
        opt.step()
        opt.zero_grad()
        for name, p, g in rest:
            assert np.array_equal(p, before[name][0]), f"{name} was not given to the optimizer but changed"
            assert np.array_equal(g, grads_before[name]), f"zero_grad zeroed {name}, which it was not given"
    for name, p, _ in given_:
        assert p is dict(module.named_parameters())[name], f"{name}: the optimizer holds a copy"


# ---------------------------------------------------------------------------
# state dict with groups
# ---------------------------------------------------------------------------


def _grouped_adam(dtype, lrs_=(1e-2, 5e-3, 2e-3), amsgrad=(False, True, False)):
    rng = np.random.default_rng(5)
    module = nt.Linear(4, 3, dtype=dtype, rng=rng)
    triples = [(n, p, g) for (n, p), (_, g) in zip(module.named_parameters(), module.named_grads(), strict=True)]
    extra = [("scale", np.array(rng.standard_normal(2), dtype=dtype), np.zeros(2, dtype))]
    groups = [
        {"params": triples[:1], "lr": lrs_[0], "amsgrad": amsgrad[0], "betas": (0.8, 0.99)},
        {"params": triples[1:], "lr": lrs_[1], "amsgrad": amsgrad[1]},
        {"params": extra, "lr": lrs_[2], "amsgrad": amsgrad[2], "weight_decay": 0.1},
    ]
    return module, extra[0], Adam(groups, eps=1e-7)


def _train(opt, grad_seq):
    for step_grads in grad_seq:
        for name, g in opt.named_grads():
            np.copyto(g, step_grads[name])
        opt.set_lr_scale(linear_warmup_cosine(opt.step_count + 1, 1.0, warmup_steps=3, total_steps=10))
        opt.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_with_groups_round_trips_through_npz_bit_exactly(dtype, tmp_path):
    """Save after 5 scheduled steps, load into one built with other rates: the next 5 steps are bit-identical."""
    _, _, opt = _grouped_adam(dtype)
    rng = np.random.default_rng(2)
    grad_seq = [{n: rng.standard_normal(g.shape).astype(dtype) for n, g in opt.named_grads()} for _ in range(10)]
    _train(opt, grad_seq[:5])
    state = opt.state_dict()
    assert state["param_groups.1.params"].tolist() == ["bias"] and state["param_groups.2.weight_decay"] == 0.1
    np.savez(tmp_path / "optim.npz", **state)
    _, _, fresh = _grouped_adam(dtype, lrs_=(1.0, 2.0, 3.0))
    for (_, p), (_, q) in zip(opt.named_parameters(), fresh.named_parameters(), strict=True):
        np.copyto(q, p)
    with np.load(tmp_path / "optim.npz") as f:
        fresh.load_state_dict(dict(f))
    assert [dict(g) for g in fresh.param_groups] == [dict(g) for g in opt.param_groups]
    _train(opt, grad_seq[5:])
    _train(fresh, grad_seq[5:])
    for (name, p), (_, q) in zip(opt.named_parameters(), fresh.named_parameters(), strict=True):
        assert np.array_equal(p, q), f"{name} differs after the round trip"
    a, b = opt.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), f"optimizer state {key!r} differs after the round trip"


def test_checkpoint_with_a_grouped_optimizer_round_trips(tmp_path):
    module, _, opt = _grouped_adam(np.float64, amsgrad=(False, False, False))
    _train(opt, [{n: np.full(g.shape, 0.5) for n, g in opt.named_grads()}] * 3)
    path = save_checkpoint(tmp_path / "ckpt", module, opt)
    fresh_module, _, fresh = _grouped_adam(np.float64, lrs_=(9.0, 9.0, 9.0), amsgrad=(False, False, False))
    load_checkpoint(path, fresh_module, fresh)
    assert [dict(g) for g in fresh.param_groups] == [dict(g) for g in opt.param_groups]
    assert fresh.step_count == 3


def _snapshot(opt):
    return {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}


def test_load_state_dict_with_groups_rejects_bad_states_and_leaves_the_optimizer_unchanged():
    _, _, opt = _grouped_adam(np.float64)
    _train(opt, [{n: np.full(g.shape, 0.3) for n, g in opt.named_grads()}])
    good = opt.state_dict()
    snapshot = _snapshot(opt)
    one_group = Adam([("w", np.zeros(2), np.zeros(2))]).state_dict()
    bad_states = [
        (ValueError, r"^state: saved from an optimizer with 1 parameter group\(s\), this Adam has 3", one_group),
        (KeyError, r"missing \['param_groups.2.lr'\]", {k: v for k, v in good.items() if k != "param_groups.2.lr"}),
        (KeyError, r"unexpected \['param_groups.0.momentum'\]", {**good, "param_groups.0.momentum": 0.9}),
        (ValueError, r"^param_groups\[1\]\['lr'\]: expected a number >= 0", {**good, "param_groups.1.lr": -1.0}),
        (ValueError, r"^param_groups\[2\]\['betas'\]\[1\]", {**good, "param_groups.2.beta2": np.array(1.0)}),
        (
            ValueError,
            r"^state\['param_groups.1.amsgrad'\]: False but the group has True",
            {**good, "param_groups.1.amsgrad": np.array(False)},
        ),
        (
            ValueError,
            r"^state\['param_groups.0.params'\]: the state's group 0 holds \['bias'\], this optimizer's holds",
            {**good, "param_groups.0.params": np.array(["bias"]), "param_groups.1.params": np.array(["weight"])},
        ),
        (TypeError, r"^state\['param_groups.0.params'\]: expected a 1-d array", {**good, "param_groups.0.params": 3}),
        (ValueError, r"^state\['param_groups.2.initial_lr'\]", {**good, "param_groups.2.initial_lr": -1.0}),
        (TypeError, r"expected dtype float64", {**good, "exp_avg.scale": np.zeros(2, np.float32)}),
    ]
    for error, message, state in bad_states:
        with pytest.raises(error, match=message):
            opt.load_state_dict(state)
        now = opt.state_dict()
        assert now.keys() == snapshot.keys()
        for key, value in snapshot.items():
            assert np.array_equal(np.asarray(now[key]), value), f"{key!r} changed by a failed load"
