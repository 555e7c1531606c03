"""Long runs: periodic checkpoints, Ctrl-C / SIGTERM, ``train --resume`` bit for bit, a full disk at the last save.

Every test here runs the real command in a subprocess and sends real signals. The resume tests
compare a 40-step run with one stopped by a signal after step 20 (or the step the signal lands
after: the handler finishes the step it interrupts) and resumed to 40: every array of the two
final checkpoints (weights, Adam's buffers and step count, each step's loss, the generators)
and every evaluation must be identical, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numpy_transformer.commands import main
from numpy_transformer.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
STOP_AT = 20


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "numpy_transformer", "train", *argv, "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _train_until_signal(out: Path, sig: signal.Signals, *argv: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``train`` and send ``sig`` when it prints step STOP_AT; returns (the finished process, its last step)."""
    cmd = [sys.executable, "-m", "numpy_transformer", "train", *argv, "--no-progress", "--log-every", "1"]
    cmd += ["--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step {STOP_AT}/{STEPS} "):
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=600)
    stdout = "".join(seen) + rest
    steps = [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("step ")]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, err), max(steps, default=0)


def _untimed(evals: list[dict]) -> list[dict]:
    """Evaluation rows without the wall-clock seconds (the digits rows carry them; they are not state)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in evals]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files if k != "meta"}


# run -> (the signal that stops it, its options). Every task and model family, both backends; SIGTERM takes
# the same path as SIGINT, so two runs take it. (The Llama's torch path is the GPT's, charlm-torch.)
RUNS = {
    "transformer-numpy": (signal.SIGINT, ("--dropout", "0.1", "--batch-size", "16")),
    "transformer-torch": (signal.SIGINT, ("--dropout", "0.1", "--batch-size", "16", "--backend", "torch")),
    "rnn-numpy": (signal.SIGTERM, ("--model", "rnn-luong-general", "--batch-size", "16")),
    "rnn-torch": (signal.SIGINT, ("--model", "rnn-bahdanau", "--batch-size", "16", "--backend", "torch")),
    "charlm-numpy": (signal.SIGINT, ("--task", "charlm", "--dropout", "0.1", "--batch-size", "8")),
    "charlm-torch": (
        signal.SIGTERM,
        ("--task", "charlm", "--dropout", "0.1", "--batch-size", "8", "--backend", "torch"),
    ),
    "charlm-llama-numpy": (signal.SIGINT, ("--task", "charlm", "--model", "llama", "--batch-size", "8")),
    "digits-vit": (signal.SIGINT, ("--task", "digits", "--model", "vit", "--dropout", "0.1", "--batch-size", "8")),
    "digit-captions-clip": (signal.SIGTERM, ("--task", "digit-captions", "--batch-size", "8")),
    "detect-detr": (signal.SIGINT, ("--task", "detect", "--batch-size", "2")),
    # The backbone's pre-training happens once, before step 1: the resumed run must not repeat it.
    "detect-detr-backbone": (signal.SIGTERM, ("--task", "detect", "--batch-size", "2", "--backbone-steps", "3")),
}


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_run_stopped_by_a_signal_and_resumed_equals_the_uninterrupted_run_bit_for_bit(tmp_path, run):
    if "torch" in run:
        pytest.importorskip("torch")
    sig, options = RUNS[run]
    argv = ("--steps", str(STEPS), *options)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    done = _train(*argv, "--out", str(whole))
    assert done.returncode == 0, done.stderr

    stopped, last = _train_until_signal(parts, sig, *argv)
    assert stopped.returncode == 128 + sig, stopped.stderr
    assert "Traceback" not in stopped.stderr and f"{sig.name}: finishing this step" in stopped.stderr
    assert STOP_AT <= last < STEPS
    assert f"stopped by {sig.name} after step {last} of {STEPS}; wrote {parts / 'checkpoint.npz'}" in stopped.stdout
    assert f"continue with: python -m numpy_transformer train --resume {parts}" in stopped.stdout
    meta = read_checkpoint(parts / "checkpoint.npz").meta
    assert meta["train_state"]["steps_done"] == last

    resumed = _train("--resume", str(parts))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after step {last} from {parts / 'checkpoint.npz'}" in resumed.stdout
    if "--backbone-steps" in options:  # the pre-training ran once, before step 1, and its record was kept
        assert "backbone step 1/" in done.stdout and "backbone step" not in resumed.stdout

    want, got = _arrays(whole), _arrays(parts)
    assert sorted(got) == sorted(want)
    assert any(k.startswith("optim/exp_avg") for k in want) and any(k.startswith("state/losses") for k in want)
    different = [k for k in want if not np.array_equal(want[k], got[k])]
    assert different == [], f"{len(different)} of {len(want)} arrays differ, e.g. {different[:3]}"
    a, b = (read_checkpoint(p / "checkpoint.npz").meta["train_state"] for p in (whole, parts))
    assert _untimed(a["evals"]) == _untimed(b["evals"]) and a["steps_done"] == b["steps_done"] == STEPS
    hist_a, hist_b = (json.loads((p / "history.json").read_text()) for p in (whole, parts))
    assert hist_a["losses"] == hist_b["losses"] and _untimed(hist_a["evals"]) == _untimed(hist_b["evals"])


def test_the_checkpoint_is_written_every_save_every_steps(tmp_path):
    """--save-every 5 on a 12-step run: the file after the run is of step 12, and a stopped run's of its step."""
    out = tmp_path / "run"
    proc = _train("--steps", "12", "--batch-size", "8", "--save-every", "5", "--log-every", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert read_checkpoint(out / "checkpoint.npz").meta["train_state"]["steps_done"] == 12
    # A run that diverges at step 7 keeps the checkpoint of step 5, the last good one, and says so.
    bad = tmp_path / "bad"
    code = (
        "import sys; from numpy_transformer.commands import main\n"
        "import numpy_transformer.training.loop as loop\n"
        "real = loop.NumpyTrainer.train_step\n"
        "def step(self, batch, dropout_masks=None):\n"
        "    r = real(self, batch, dropout_masks)\n"
        "    return r if self.optimizer.step_count < 7 else loop.StepResult(float('nan'), float('nan'), r.lr)\n"
        "loop.NumpyTrainer.train_step = step\n"
        f"sys.exit(main(['train', '--steps', '12', '--batch-size', '8', '--save-every', '5', '--no-progress', "
        f"'--out', {str(bad)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "step 7: loss is nan" in proc.stderr, proc.stderr
    assert f"the last good checkpoint, {bad / 'checkpoint.npz'}, is of step 5" in proc.stderr
    assert read_checkpoint(bad / "checkpoint.npz").meta["train_state"]["steps_done"] == 5


_FULL_DISK_AT_THE_END = """
import os, sys
real_open = os.open
calls = []

def open_on_a_full_disk(path, flags, mode=0o777, **kwargs):
    fd = real_open(path, flags, mode, **kwargs)
    name = os.path.basename(str(path))
    if name.startswith(".checkpoint.npz.") and name.endswith(".tmp"):
        calls.append(name)
        if len(calls) > 1:  # the first save (step 5) works; from then on the disk is full
            full = real_open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
    return fd

os.open = open_on_a_full_disk
from numpy_transformer.commands import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_at_the_final_save_says_so_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--steps", "8", "--batch-size", "8", "--save-every", "5", "--no-progress", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_AT_THE_END, *argv], capture_output=True, text=True,
                          env=_env(), timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "could not write the final checkpoint" in proc.stderr and "No space left on device" in proc.stderr
    assert f"is of step 5 (continue it with: python -m numpy_transformer train --resume {out})" in proc.stderr
    assert read_checkpoint(out / "checkpoint.npz").meta["train_state"]["steps_done"] == 5
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    resumed = _train("--resume", str(out))  # and the run can go on from there
    assert resumed.returncode == 0, resumed.stderr
    assert read_checkpoint(out / "checkpoint.npz").meta["train_state"]["steps_done"] == 8


def _finished_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    proc = _train("--steps", "3", "--batch-size", "8", "--save-every", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    out = _finished_run(tmp_path)
    cases = [
        (["--resume", str(out)], "already made all its 3 steps"),
        (["--resume", str(out), "--steps", "10"], "--resume continues the run as it was configured; --steps"),
        (["--resume", str(out), "--backend", "torch", "--seed", "1"], "--backend, --seed cannot change it"),
        (["--resume", str(tmp_path / "nowhere")], "is not a folder"),
        (["--resume", str(tmp_path)], "no such file"),
    ]
    for argv, message in cases:
        code, err = _exit_code(argv, capsys)
        assert code == 2 and message in err, (argv, err)


def _exit_code(argv: list[str], capsys) -> tuple[int, str]:
    """``train ARGV`` in this process, expected to stop at a usage error: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv, "--no-progress"])
    return exc.value.code, capsys.readouterr().err


def test_resume_names_what_is_wrong_in_a_tampered_run_state(tmp_path, capsys):
    """Each field of train_state, broken in turn: exit status 2 naming it, never a traceback."""
    out = tmp_path / "run"
    proc = _train("--steps", "6", "--batch-size", "8", "--save-every", "3", "--dropout", "0.1", "--out", str(out))
    assert proc.returncode == 0
    with np.load(out / "checkpoint.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    meta["train_state"]["steps_done"] = 3  # as if stopped at step 3, before any evaluation
    meta["train_state"]["evals"] = []
    meta["train_state"]["position"]["used"] = 3
    arrays["state/losses.numpy"] = arrays["state/losses.numpy"][:3]

    def broken(change, drop=None):
        m = json.loads(json.dumps(meta))
        change(m["train_state"]) if change is not None else m.pop("train_state")
        a = {k: v for k, v in arrays.items() if k != drop}
        a["meta"] = np.asarray(json.dumps(m))
        path = tmp_path / "bad"
        path.mkdir(exist_ok=True)
        np.savez(path / "checkpoint.npz", **a)
        return _exit_code(["--resume", str(path)], capsys)

    def set_(key, value):
        def change(s):
            *parents, last = key.split(".")
            for p in parents:
                s = s[p]
            s[last] = value

        return change

    cases = [
        (set_("steps_done", 0), "train_state.steps_done: expected an integer from 1 to 6"),
        (set_("steps_done", 4), "state/losses.numpy: expected (4,) float64"),
        (set_("version", 99), "train_state.version: expected 1"),
        (set_("task", "poetry"), "train_state.task: expected one of"),
        (set_("backend", "jax"), "train_state.backend: expected 'numpy' or 'torch'"),
        (set_("seconds", -1), "train_state.seconds: expected a non-negative number"),
        (set_("generators", {}), "train_state.generators: expected the states of ['dropout']"),
        (set_("generators.dropout.state.inc", "x"), "generators.dropout.state.inc: expected an integer"),
        (set_("generators.dropout.bit_generator", "MT19937"), "generators.dropout: expected a PCG64"),
        (set_("position", [1, 2]), "train_state.position: expected {epoch, used, epoch_rng_state}"),
        (set_("position.used", -1), "train_state.position.used: expected an integer from 1"),
        (set_("evals", "none"), "train_state.evals: expected a list of objects"),
        (set_("evals", [{"step": 6}]), "train_state.evals[0].step: expected an integer from 0 to 3, got 6"),
        (set_("device", "tpu"), "train_state.device: expected 'cpu' or 'cuda'"),
    ]
    for change, message in cases:
        code, err = broken(change)
        assert code == 2 and message in err, (message, err)
    code, err = broken(lambda s: None, drop="state/losses.numpy")
    assert code == 2 and "state/losses.numpy: expected (3,) float64" in err, err
    code, err = broken(None)
    assert code == 2 and "holds no run state" in err, err


def test_a_compare_run_stopped_by_a_signal_saves_and_says_it_cannot_be_resumed(tmp_path):
    pytest.importorskip("torch")
    stopped, last = _train_until_signal(tmp_path / "cmp", signal.SIGINT, "--steps", str(STEPS), "--compare",
                                        "--batch-size", "8")  # fmt: skip
    assert stopped.returncode == 130, stopped.stderr
    assert STOP_AT <= last < STEPS and "a --compare run cannot be resumed" in stopped.stdout
    assert "train_state" not in read_checkpoint(tmp_path / "cmp" / "checkpoint.npz").meta
