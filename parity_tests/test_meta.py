"""The suite polices itself: an op or module without its tests fails here.

Every registered parity case must have a twin test and a finite-difference test
(``test_twin_parity.py``), a property test of its own math (``test_properties.PROPERTY_TESTS``)
and, where it declares a PyTorch built-in, a built-in comparison that compares something
(``test_builtins.py``); a case without a built-in must say why (``test_builtins.WITHOUT_BUILTIN``).
The registry itself must keep its shape: named variants, one way in, case files that import
the registry only (``test_layout.py`` checks the whole repository for import cycles).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

import numpy_transformer as nt
import numpy_transformer.functional as F
import torch_transformer
from torch_transformer.parity import CASES, NO_VARIANT, Case, default_dims, register, run_case

from . import test_builtins, test_properties, test_twin_parity

ROOT = Path(__file__).resolve().parents[1]


def _functional_ops() -> list[str]:
    return sorted(name[: -len("_forward")] for name in F.__all__ if name.endswith("_forward"))


def _exported_modules() -> list[str]:
    return sorted(
        name
        for name in nt.__all__
        if inspect.isclass(getattr(nt, name)) and issubclass(getattr(nt, name), nt.Module) and name != "Module"
    )


# --------------------------------------------------------------------------- twin and finite differences


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
    for name, case in CASES.items():
        result = run_case(case, default_dims(case)[0], "float64", 0, finite_differences=False, builtin=False)
        assert result.vs_twin, f"{name}: compares no gradient"


# --------------------------------------------------------------------------- property tests


def _resolve(reference: str):
    """``"test_gru.py::test_x"`` -> that test function of ``parity_tests``, or None."""
    file, _, test = reference.partition("::")
    if not (file.endswith(".py") and test.startswith("test_")):
        return None
    try:
        module = importlib.import_module(f"parity_tests.{file[: -len('.py')]}")
    except ImportError:
        return None
    found = getattr(module, test, None)
    return found if callable(found) else None


def property_test_gaps(cases, property_tests) -> dict[str, list[str]]:
    """What the property-test declarations miss: cases without one, entries naming no case or no test."""
    return {
        "cases without a property test": [name for name in cases if not property_tests.get(name)],
        "entries for no registered case": sorted(set(property_tests) - set(cases)),
        "entries that name no test": sorted(
            {ref for refs in property_tests.values() for ref in refs if _resolve(ref) is None}
        ),
    }


def test_every_registered_case_has_a_property_test_of_its_own_math():
    gaps = property_test_gaps(CASES, test_properties.PROPERTY_TESTS)
    assert not any(gaps.values()), f"property tests: {gaps}"


def test_the_property_check_fails_on_a_case_without_one_and_on_a_test_that_does_not_exist():
    declared = {name: list(refs) for name, refs in test_properties.PROPERTY_TESTS.items()}
    declared.pop("relu", None)
    declared["tanh"] = ["test_properties.py::test_there_is_no_such_test"]
    gaps = property_test_gaps(CASES, declared)
    assert gaps["cases without a property test"] == ["relu"]
    assert gaps["entries that name no test"] == ["test_properties.py::test_there_is_no_such_test"]


# --------------------------------------------------------------------------- built-ins


def builtin_gaps(cases, without_builtin: dict[str, str]) -> dict[str, list[str]]:
    """Cases that neither declare a built-in nor say why, that do both, or say nothing; stale names."""
    declared = {name for name, case in cases.items() if case.builtin is not None}
    return {
        "cases with neither a built-in nor a reason for none": [
            n for n in cases if n not in declared and n not in without_builtin
        ],
        "cases with a built-in and a reason for none": sorted(declared & set(without_builtin)),
        "reasons that say nothing": sorted(n for n, why in without_builtin.items() if not why.strip()),
        "reasons for no registered case": sorted(set(without_builtin) - set(cases)),
    }


def test_every_case_declares_its_pytorch_builtin_or_says_why_it_has_none():
    gaps = builtin_gaps(CASES, test_builtins.WITHOUT_BUILTIN)
    assert not any(gaps.values()), f"built-ins: {gaps}"


def test_the_builtin_check_fails_on_a_case_that_says_nothing_about_a_builtin():
    without = dict(test_builtins.WITHOUT_BUILTIN)
    without.pop("mean_pooling", None)
    without["softmax"] = "   "
    gaps = builtin_gaps(CASES, without)
    assert gaps["cases with neither a built-in nor a reason for none"] == ["mean_pooling"]
    assert gaps["cases with a built-in and a reason for none"] == ["softmax"]
    assert gaps["reasons that say nothing"] == ["softmax"]


def first_builtin_comparison(case: Case):
    """The result of the first default draw the case's built-in takes, or None when it takes none."""
    for dims in default_dims(case):
        result = run_case(case, dims, "float64", 0, finite_differences=False)
        if result.vs_builtin:
            return result
    return None


def test_every_declared_builtin_has_a_generated_test_that_compares_the_output_and_every_gradient():
    declared = sorted(name for name, case in CASES.items() if case.builtin is not None)
    assert declared == test_builtins.BUILTIN_CASES, "a declared built-in without its generated test"
    for name in declared:
        result = first_builtin_comparison(CASES[name])
        assert result is not None, f"{name}: {CASES[name].builtin.name} takes none of the default draws"
        assert len(result.vs_builtin) == 1 + len(result.vs_twin) == 1 + len(result.gradients), (
            f"{name}: not every gradient is compared"
        )


def test_the_builtin_comparison_check_fails_on_a_builtin_that_takes_no_draw():
    softmax = CASES["softmax"]
    never = dataclasses.replace(
        softmax,
        name="softmax (a built-in that takes no draw)",
        builtin=dataclasses.replace(softmax.builtin, unsupported=lambda a, d: "never"),
    )
    assert first_builtin_comparison(never) is None
    assert first_builtin_comparison(softmax) is not None


# --------------------------------------------------------------------------- the registry's shape


def test_every_variant_is_a_frozen_record_with_named_fields():
    for name, case in CASES.items():
        (kind,) = {type(v) for v in case.variants}
        assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen, f"{name}: {kind}"
        assert case.variants == (NO_VARIANT,) or dataclasses.fields(kind), f"{name}: a variant without fields"


def test_registration_is_the_one_way_in_and_rejects_positional_variants():
    linear = CASES["linear"]
    with pytest.raises(TypeError):
        CASES["linear2"] = linear  # read-only: cases enter through register()
    with pytest.raises(ValueError, match="registered twice"):
        register(linear)
    with pytest.raises(TypeError, match="frozen dataclass"):
        register(dataclasses.replace(linear, name="linear with tuple variants", variants=(("bias",), ("no_bias",))))
    with pytest.raises(TypeError):
        Case("positional", "op", None, None, None, None)  # keywords only
    assert "linear with tuple variants" not in CASES


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports anywhere in its file (an ``ast`` scan, nothing is run)."""
    paths = {_module_name(p): p for pkg in packages for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        imports = (
            n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Import | ast.ImportFrom)
        )
        for node in imports:
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in paths}
                continue
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in paths:
                    edges.add(target)  # `from package import submodule`
                elif base in paths:
                    edges.add(base)
        graph[name] = edges - {name}
    return graph


def test_parity_case_files_import_only_the_registry_of_their_package():
    graph = import_graph(("torch_transformer",))
    package = "torch_transformer.parity"
    inside = {m for m in graph if m.startswith(package + ".")}
    case_files = sorted(m for m in inside if m.rsplit(".", 1)[-1].startswith("cases_"))
    assert len(case_files) >= 8, case_files
    for module in case_files:
        wrong = sorted(m for m in graph[module] if m == package or (m in inside and m != f"{package}.registry"))
        assert not wrong, f"{module} imports {wrong}: a case file imports the registry only"
    registry_imports = sorted(m for m in graph[f"{package}.registry"] if m == package or m in inside)
    assert not registry_imports, f"the registry imports {registry_imports}: it holds no case"
