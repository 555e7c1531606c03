"""``benchmark --attention``: the length sweep runs at tiny T, its memory figures say what they claim, bad
arguments exit 2 with a message.

The full sweep (T = 512 ... 8192) takes minutes; its table is in the README. Here T stays small.
"""

from __future__ import annotations

import math

import pytest

from numpy_transformer.applications.attention_benchmark import (
    AttentionBenchConfig,
    markdown_table,
    run_sweep,
    score_array_mib,
)
from numpy_transformer.commands import main


def test_the_sweep_at_tiny_lengths_prints_every_kernel_and_writes_the_png(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    argv = ["benchmark", "--attention", "--lengths", "32", "64", "--steps", "1", "--warmup", "1", "--out", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| T = S"))
    for kernel in ("standard", "flash", "window", "sdpa"):
        assert f"{kernel} (ms)" in header and f"{kernel} peak (MiB)" in header and f"{kernel} RSS (MiB)" in header
    rows = [line for line in out.splitlines() if line.startswith(("| 32 |", "| 64 |"))]
    assert len(rows) == 2
    assert png.stat().st_size > 10_000  # a real picture, not an empty file


def test_flash_peak_memory_stays_far_below_the_standard_one_and_below_one_score_array():
    """At T = 1024 one score array is 4 MiB; the standard op holds more than one, the tiled ones a fraction of one
    (mostly the output and the three gradients, 4 (T, D) arrays = 1 MiB)."""
    config = AttentionBenchConfig(lengths=(1024,), repeats=1, warmup=1, window=64, block_size=64)
    rows = {r.kernel: r for r in run_sweep(config)}
    one = score_array_mib(config, 1024)
    # the probabilities materialised (and kept), plus blocks of rows of the backward's temporaries: ~1.75
    assert rows["standard"].peak_mib > 1.0 * one
    assert rows["flash"].peak_mib < 0.4 * one
    assert rows["window"].peak_mib < 0.4 * one
    assert all(r.median_ms > 0 and not math.isnan(r.peak_mib) for r in rows.values())
    table = markdown_table(list(rows.values()), config)
    assert table.splitlines()[2].startswith("| 1024 | 4.0 |")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["benchmark", "--lengths", "64"], "--lengths: only used with --attention"),
        (["benchmark", "--causal"], "--causal: only used with --attention"),
        (["benchmark", "--attention", "--dtype", "both"], "--attention sweeps one dtype"),
        (["benchmark", "--attention", "--out", "sweep.jpg"], "--out: expected a .png file"),
        (["benchmark", "--attention", "--lengths", "0"], "expected a positive integer"),
        (["benchmark", "--attention", "--lengths", "10000000"], "more than this machine has available"),
        (["benchmark", "--attention", "--model", "minilm"], "--model: not used with --attention"),
    ],
)
def test_bad_sweep_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
