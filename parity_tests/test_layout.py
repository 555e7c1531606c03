"""The architecture of DESIGN.md, checked on the source itself (``ast``, not a grep of strings).

* The NumPy reference never imports torch or the twin, anywhere in a file (lazy imports
  inside functions included); the one exception is the command-line layer, ``commands/``.
* Each layer of ``numpy_transformer/`` imports only its own layer and the layers below it.
* No file imports an underscore (private) name from another file.
* No import cycle exists in the repository.
* Every folder's ``__init__.py`` opens with a docstring saying what lives there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("numpy_transformer", "torch_transformer")
SCANNED = (*PACKAGES, "parity_tests", "walkthroughs")

# Layers of numpy_transformer/, lowest first: a module may import its own rank or lower.
RANK = {
    "functional": 0,
    "config": 1,
    "testing": 1,
    "modules": 2,
    "models": 3,
    "optim": 3,
    "training": 4,
    "inference": 4,
    "applications": 5,
    "commands": 6,
    "__init__": 7,
    "__main__": 7,
}
TWIN_ALLOWED_IN = "commands"  # the only layer of the reference that may import torch / the twin


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def _known_modules() -> set[str]:
    return {_module_name(p) for p in _files(*SCANNED)}


KNOWN = _known_modules()


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every import in the file as ``(line, absolute module, imported names)``, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if _is_package(path) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [alias.name for alias in node.names]))
    return out


def _targets(module: str, names: list[str]) -> list[str]:
    """The repository modules an import statement loads: ``from pkg import sub`` loads ``pkg.sub``."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in KNOWN]
    if module in KNOWN and len(found) < len(names):
        found.append(module)
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_numpy_reference_never_imports_torch_or_the_twin():
    offenders = []
    for path in _files("numpy_transformer"):
        if _layer(_module_name(path)) == TWIN_ALLOWED_IN:
            continue
        for line, module, _ in _imports(path):
            if _top(module) in ("torch", "torch_transformer"):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "the NumPy reference imports torch:\n" + "\n".join(offenders)


def test_every_layer_imports_only_itself_and_the_layers_below():
    offenders = []
    for path in _files("numpy_transformer"):
        own = _layer(_module_name(path))
        for line, module, names in _imports(path):
            for target in _targets(module, names):
                if _top(target) == "numpy_transformer" and RANK[_layer(target)] > RANK[own]:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: layer {own!r} imports {target} (a layer above)")
    assert not offenders, "\n".join(offenders)


def test_the_layers_cover_every_entry_of_the_package():
    entries = {p.stem if p.is_file() else p.name for p in (ROOT / "numpy_transformer").iterdir()}
    entries -= {"__pycache__"}
    assert entries == set(RANK), f"entries without a layer: {sorted(entries - set(RANK))}"
    assert len(entries - {"__init__", "__main__"}) <= 10, f"the package's top level has {len(entries)} entries"


def test_no_file_imports_a_private_name_from_another_file():
    offenders = []
    for path in _files(*SCANNED):
        for line, module, names in _imports(path):
            if _top(module) not in (*PACKAGES, "parity_tests") and module not in KNOWN:
                continue  # third-party privates (e.g. torch internals) are not ours to police
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            offenders += [f"{path.relative_to(ROOT)}:{line}: from {module} import {n}" for n in private]
    assert not offenders, "private names imported across files:\n" + "\n".join(offenders)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _files(*SCANNED):
        name = _module_name(path)
        graph[name] = set()
        for _, module, names in _imports(path):
            graph[name].update(t for t in _targets(module, names) if t != name)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Depth-first search; returns one cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_repository_has_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(
    "init", [p for p in _files(*PACKAGES) if _is_package(p)], ids=lambda p: str(p.parent.relative_to(ROOT))
)
def test_every_folder_says_what_lives_there(init: Path):
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc.split()) >= 8, f"{init.relative_to(ROOT)}: the folder's __init__ needs a docstring"


TWIN_ONLY = {
    "bridge": "moves weights and masks between the halves and to PyTorch's built-ins",
    "builtin": "our weights inside torch.nn.Transformer",
    "parity": "the registry of cases the tests and the parity command run",
}


def test_the_twin_names_its_files_after_the_numpy_files_they_twin():
    """Every twin file has a NumPy file (or folder) of the same name, except the few that only the twin needs."""
    numpy_names = {p.stem for p in _files("numpy_transformer")} | {
        p.name for p in (ROOT / "numpy_transformer").rglob("*") if p.is_dir() and p.name != "__pycache__"
    }
    unmatched = []
    for entry in sorted((ROOT / "torch_transformer").iterdir()):
        name = entry.stem if entry.is_file() else entry.name
        if entry.suffix not in (".py", "") or name in ("__init__", "__pycache__") or name in TWIN_ONLY:
            continue
        if name not in numpy_names:
            unmatched.append(str(entry.relative_to(ROOT)))
    assert not unmatched, f"twin files with no NumPy counterpart of the same name: {unmatched}"
