"""The suite polices itself: an op or module without parity tests fails here."""

from __future__ import annotations

import inspect

import numpy_transformer as nt
import numpy_transformer.functional as F
import torch_transformer
from torch_transformer.parity import CASES

from . import test_twin_parity


def _functional_ops() -> list[str]:
    return sorted(name[: -len("_forward")] for name in F.__all__ if name.endswith("_forward"))


def _exported_modules() -> list[str]:
    return sorted(
        name
        for name in nt.__all__
        if inspect.isclass(getattr(nt, name)) and issubclass(getattr(nt, name), nt.Module) and name != "Module"
    )


def test_every_functional_forward_has_a_backward():
    missing = [op for op in _functional_ops() if f"{op}_backward" not in F.__all__]
    assert not missing, f"ops without a *_backward: {missing}"


def test_every_functional_op_has_a_twin_test_and_a_finite_difference_test():
    ops = _functional_ops()
    assert ops, "found no *_forward in numpy_transformer.functional"
    no_case = [op for op in ops if op not in CASES or CASES[op].kind != "op"]
    no_twin = [op for op in ops if op not in test_twin_parity.TWIN_CASES]
    no_fd = [op for op in ops if op not in test_twin_parity.FINITE_DIFFERENCE_CASES]
    assert not (no_case or no_twin or no_fd), (
        f"ops without a parity case: {no_case}; without a twin test: {no_twin}; "
        f"without a finite-difference test: {no_fd}"
    )


def test_every_module_has_a_twin_test_a_finite_difference_test_and_a_twin_class():
    mods = _exported_modules()
    assert "MultiHeadAttention" in mods
    no_case = [m for m in mods if m not in CASES or CASES[m].kind not in ("module", "model")]
    no_twin = [m for m in mods if m not in test_twin_parity.TWIN_CASES]
    fd_cases = test_twin_parity.FINITE_DIFFERENCE_CASES + test_twin_parity.MODEL_FINITE_DIFFERENCE_CASES
    no_fd = [m for m in mods if m not in fd_cases]
    no_class = [m for m in mods if not hasattr(torch_transformer, m)]
    assert not (no_case or no_twin or no_fd or no_class), (
        f"modules without a parity case: {no_case}; twin test: {no_twin}; finite differences: {no_fd}; "
        f"twin class: {no_class}"
    )


def test_every_registered_case_compares_at_least_one_gradient():
    from torch_transformer.parity import default_dims, run_case

    for name, case in CASES.items():
        result = run_case(case, default_dims(case)[0], "float64", 0, finite_differences=False)
        assert result.vs_twin, f"{name}: compares no gradient"
