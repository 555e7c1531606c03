"""Training: toy data, step-for-step parity of the two backends, checkpoints, and the commands."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.training import NumpyTrainer, TrainConfig, fit
from numpy_transformer.training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from numpy_transformer.training.tasks import BOS, EOS, PAD, ToyDataset, ToyTask
from torch_transformer.bridge import state_dict_to_numpy, state_dict_to_torch, twin_of
from torch_transformer.training import TorchTrainer

from .helpers import assert_matches

# A small configuration whose 200-step float64 run takes seconds; dropout on, so masks are replayed.
SMALL = TrainConfig(
    d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.1, norm_first=False,
    n_train=640, n_val=40, batch_size=16, warmup_steps=100, max_len=6,
)  # fmt: skip


# --------------------------------------------------------------------------- toy data


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_toy_task_batches_have_bos_eos_and_padding_in_place(name):
    task = ToyTask(name, n_symbols=5, min_len=2, max_len=6)
    sources = task.sample(8, np.random.default_rng(0))
    batch = task.make_batch(sources)
    for i, s in enumerate(sources):
        n = len(s)
        expected = {"copy": s, "reverse": s[::-1], "sort": np.sort(s)}[name]
        assert np.array_equal(batch.src[i, :n], s) and batch.src[i, n] == EOS and np.all(batch.src[i, n + 1 :] == PAD)
        assert batch.tgt_in[i, 0] == BOS and np.array_equal(batch.tgt_in[i, 1 : n + 1], expected)
        assert np.array_equal(batch.tgt_out[i, :n], expected) and batch.tgt_out[i, n] == EOS
        assert np.all(batch.tgt_out[i, n + 1 :] == PAD) and np.all(batch.tgt_in[i, n + 1 :] == PAD)
    assert batch.src.min() >= 0 and batch.src.max() < task.vocab_size


def test_toy_dataset_is_reproducible_and_validation_never_appears_in_training():
    task = ToyTask("reverse", 4, 2, 4)
    a, b = ToyDataset(task, 300, 40, seed=3), ToyDataset(task, 300, 40, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.train, b.train, strict=True))
    seen = {tuple(s) for s in a.train}
    assert not any(tuple(s) in seen for s in a.val)
    c = ToyDataset(task, 300, 40, seed=4)
    assert not all(np.array_equal(x, y) for x, y in zip(a.val, c.val, strict=True))


def test_bad_task_definitions_name_the_argument():
    with pytest.raises(ValueError, match="task"):
        ToyTask("rotate")
    with pytest.raises(ValueError, match="min_len"):
        ToyTask("copy", min_len=5, max_len=2)


# --------------------------------------------------------------------------- step-for-step parity


def _pair(cfg: TrainConfig, dtype=np.float64):
    rng = np.random.default_rng(cfg.seed)
    model = nt.Transformer(cfg.model_config(), dtype=dtype, rng=rng)
    twin = twin_of(model)
    return NumpyTrainer(model, cfg, rng), TorchTrainer(twin, cfg)


def test_numpy_and_torch_training_give_the_same_loss_at_every_step_and_the_same_final_weights():
    """float64, same initial weights, batches and dropout masks; Adam + clipping + warm-up, both backends.

    The CLI's ``train --compare --dtype float64`` runs the long version (200 steps on the default model).
    """
    cfg = TrainConfig(**{**SMALL.__dict__, "steps": 60})
    np_trainer, torch_trainer = _pair(cfg)
    dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
    history = fit([np_trainer, torch_trainer], dataset, cfg, cfg.steps, eval_every=10**9)
    ours, theirs = np.array(history.losses["numpy"]), np.array(history.losses["torch"])
    assert len(ours) == cfg.steps
    assert ours[-1] < ours[0], "the loss did not go down"
    rel = np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))
    assert rel.max() <= 1e-9, f"step {rel.argmax() + 1}: loss {ours[rel.argmax()]} vs {theirs[rel.argmax()]}"
    twin_state = state_dict_to_numpy(torch_trainer.model.state_dict())
    for name, p in np_trainer.model.named_parameters():
        if name.endswith("k_proj.bias"):
            # Adding b to every key adds q.b to every score of a row, which softmax ignores: this bias has
            # no effect and its true gradient is exactly 0. Each backend computes rounding noise (~1e-17)
            # instead, and Adam divides that by sqrt(v) + eps, so the bias drifts by up to lr * 1e-8 per
            # step, differently in each backend. It is checked to stay that small, not to match.
            assert np.abs(p - twin_state[name]).max() < 1e-8, name
            continue
        assert_matches(f"final {name}", p, twin_state[name], np.float64)
    # and the final evaluation agrees too
    evals = {e["backend"]: e for e in history.evals}
    assert evals["numpy"]["val_sequence_accuracy"] == evals["torch"]["val_sequence_accuracy"]
    assert abs(evals["numpy"]["val_loss"] - evals["torch"]["val_loss"]) <= 1e-9


def test_learning_rate_follows_warm_up_then_inverse_square_root():
    cfg = TrainConfig(d_model=64, warmup_steps=100, lr_factor=1.0, schedule="inverse_sqrt")
    lrs = np.array([cfg.learning_rate(s) for s in range(1, 400)])
    assert lrs.argmax() + 1 == 100
    assert np.all(np.diff(lrs[:99]) > 0) and np.all(np.diff(lrs[100:]) < 0)
    assert lrs[99] == pytest.approx(64**-0.5 * 100**-0.5)


def test_default_learning_rate_warms_up_then_follows_a_cosine_to_zero_at_the_last_step():
    cfg = TrainConfig(warmup_steps=100, steps=1000, peak_lr=5e-3)
    lrs = np.array([cfg.learning_rate(s) for s in range(1, 1001)])
    assert lrs.argmax() + 1 == 100 and lrs.max() == pytest.approx(5e-3)
    assert lrs[549] == pytest.approx(2.5e-3)  # half-way down the cosine
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")


# --------------------------------------------------------------------------- checkpoints


def _trained(cfg, steps=3):
    np_trainer, _ = _pair(cfg)
    dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
    batches = list(dataset.val_batches(8))
    for b in batches[:steps]:
        np_trainer.train_step(b)
    return np_trainer, batches


def test_checkpoint_round_trip_is_bit_exact_and_training_continues_identically(tmp_path):
    cfg = TrainConfig(**{**SMALL.__dict__, "dropout": 0.0})  # no dropout: both continuations draw nothing
    trainer, batches = _trained(cfg)
    path = save_checkpoint(tmp_path / "ckpt", trainer.model, trainer.optimizer, step=3)
    assert path.suffix == ".npz"

    fresh, _ = _pair(cfg)
    ckpt = load_checkpoint(path, fresh.model, fresh.optimizer)
    assert ckpt.meta["step"] == 3 and ckpt.config == cfg.model_config()
    assert fresh.optimizer.step_count == trainer.optimizer.step_count == 3
    for (name, a), (_, b) in zip(trainer.model.named_parameters(), fresh.model.named_parameters(), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    for b in batches[3:5]:
        assert trainer.train_step(b).loss == fresh.train_step(b).loss
    for (name, a), (_, b) in zip(trainer.model.named_parameters(), fresh.model.named_parameters(), strict=True):
        assert np.array_equal(a, b), name


def test_numpy_checkpoint_loads_into_the_twin_and_back(tmp_path):
    trainer, _ = _trained(SMALL)
    path = save_checkpoint(tmp_path / "c.npz", trainer.model)
    import torch_transformer as tt

    twin = tt.Transformer(SMALL.model_config())
    twin.load_state_dict(state_dict_to_torch(read_checkpoint(path).model_state))
    back = state_dict_to_numpy(twin.state_dict())
    for name, p in trainer.model.named_parameters():
        assert np.array_equal(back[name], p), name


def _corrupt(path, tmp_path, how):
    data = path.read_bytes()
    bad = tmp_path / f"{how}.npz"
    if how == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        bad.write_bytes(b"not a zip file at all" * 10)
    elif how == "no_meta":
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bad, "w") as zout:
            for item in zin.namelist():
                if item != "meta.npy":
                    zout.writestr(item, zin.read(item))
    return bad


@pytest.mark.parametrize("how", ["truncated", "garbage", "no_meta"])
def test_corrupt_checkpoint_is_a_clear_error_and_leaves_the_model_unchanged(tmp_path, how):
    trainer, _ = _trained(SMALL)
    path = save_checkpoint(tmp_path / "good.npz", trainer.model, trainer.optimizer)
    other, _ = _pair(SMALL)
    before = other.model.state_dict()
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_checkpoint(_corrupt(path, tmp_path, how), other.model, other.optimizer)
    for name, p in other.model.named_parameters():
        assert np.array_equal(p, before[name]), name


def test_mismatched_checkpoint_is_a_clear_error_and_leaves_model_and_optimizer_unchanged(tmp_path):
    trainer, _ = _trained(SMALL)
    path = save_checkpoint(tmp_path / "small.npz", trainer.model, trainer.optimizer)
    bigger = TrainConfig(**{**SMALL.__dict__, "d_model": 32})
    other, _ = _pair(bigger)
    before = other.model.state_dict()
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path, other.model, other.optimizer)
    assert all(np.array_equal(p, before[n]) for n, p in other.model.named_parameters())
    assert other.optimizer.step_count == 0
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.npz", other.model)


# --------------------------------------------------------------------------- commands


def _run(*argv, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "numpy_transformer", *argv], capture_output=True, text=True, cwd=cwd,
        env={"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", **_python_env()},
    )  # fmt: skip


def _python_env():
    import os

    return {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "HOME", "VIRTUAL_ENV"))}


def test_train_and_decode_commands_write_checkpoint_history_plot_and_heatmap(tmp_path):
    out = tmp_path / "run"
    proc = _run("train", "--steps", "4", "--no-progress", "--out", str(out), "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "sequence acc" in proc.stdout and "final [numpy]" in proc.stdout
    for name in ("checkpoint.npz", "history.json", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    proc = _run("decode", str(out / "checkpoint.npz"), "--input", "3 1 4 1 5", "--beam", "2")
    assert proc.returncode == 0, proc.stderr
    assert "input:    3 1 4 1 5" in proc.stdout and "expected: 5 1 4 1 3" in proc.stdout
    assert (out / "cross_attention.png").read_bytes()[:4] == b"\x89PNG"


def test_train_compare_prints_the_largest_per_step_loss_difference(tmp_path):
    proc = _run("train", "--compare", "--dtype", "float64", "--steps", "3", "--no-progress", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "largest per-step loss difference" in ln)
    assert float(line.split(":")[1].split()[0]) <= 1e-9


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--steps", "0"],
        ["train", "--task", "rotate"],
        ["train", "--steps", "3", "--epochs", "1"],
        ["train", "--device", "cuda", "--backend", "numpy"],
        ["decode", "/nonexistent/checkpoint.npz", "--input", "1 2"],
        ["decode"],
    ],
)
def test_bad_command_arguments_exit_2_without_traceback(argv):
    proc = _run(*argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr


def test_decode_rejects_a_corrupt_checkpoint_and_bad_input_with_exit_2(tmp_path):
    trainer, _ = _trained(SMALL)
    good = save_checkpoint(tmp_path / "c.npz", trainer.model, trainer.optimizer, train_config=SMALL.__dict__)
    bad = _corrupt(good, tmp_path, "truncated")
    for argv in (["decode", str(bad), "--input", "1 2"], ["decode", str(good), "--input", "1 99"]):
        proc = _run(*argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_reverse_task_reaches_99_percent_exact_sequence_accuracy_with_the_default_config():
    """The documented default run (``python -m numpy_transformer train``), NumPy backend, float32."""
    cfg = TrainConfig()
    rng = np.random.default_rng(cfg.seed)
    model = nt.Transformer(cfg.model_config(), dtype=np.float32, rng=rng)
    dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
    history = fit([NumpyTrainer(model, cfg, rng)], dataset, cfg, cfg.steps, eval_every=10**9)
    final = history.evals[-1]
    assert final["val_sequence_accuracy"] >= 0.99, final
    assert torch.get_num_threads() == 1  # the suite pins threads (conftest.py)


# --------------------------------------------------------------------------- the recurrent models


@pytest.mark.parametrize("model", ["rnn-bahdanau", "rnn-luong-dot", "rnn-luong-general", "rnn-luong-concat"])
def test_rnn_models_train_step_for_step_like_their_twins(model):
    cfg = TrainConfig(
        model=model, rnn_embed_dim=8, rnn_hidden=8, n_train=320, n_val=20, batch_size=16, max_len=6,
        warmup_steps=10, steps=25,
    )  # fmt: skip
    rng = np.random.default_rng(cfg.seed)
    np_model = cfg.build_model(np.float64, rng)
    assert isinstance(np_model, nt.RNNSeq2Seq) and np_model.config.attention == model[4:]
    np_trainer, torch_trainer = NumpyTrainer(np_model, cfg, rng), TorchTrainer(twin_of(np_model), cfg)
    dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
    history = fit([np_trainer, torch_trainer], dataset, cfg, cfg.steps)
    ours, theirs = np.array(history.losses["numpy"]), np.array(history.losses["torch"])
    assert ours[-1] < ours[0]
    rel = np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))
    assert rel.max() <= 1e-9, f"step {rel.argmax() + 1}"
    twin_state = state_dict_to_numpy(torch_trainer.model.state_dict())
    for name, p in np_model.named_parameters():
        assert_matches(f"final {name}", p, twin_state[name], np.float64)
    evals = {e["backend"]: e for e in history.evals}
    assert evals["numpy"]["val_sequence_accuracy"] == evals["torch"]["val_sequence_accuracy"]


def test_rnn_train_and_decode_commands(tmp_path):
    out = tmp_path / "rnn"
    proc = _run("train", "--model", "rnn-luong-concat", "--steps", "3", "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "rnn-luong-concat" in proc.stdout
    ckpt = read_checkpoint(out / "checkpoint.npz")
    assert isinstance(ckpt.config, nt.RNNSeq2SeqConfig) and ckpt.config.attention == "luong-concat"
    proc = _run("decode", str(out / "checkpoint.npz"), "--input", "1 2 3")
    assert proc.returncode == 0, proc.stderr
    assert (out / "cross_attention.png").read_bytes()[:4] == b"\x89PNG"
    proc = _run("decode", str(out / "checkpoint.npz"), "--input", "1 2 3", "--beam", "3")  # beam search, as any model
    assert proc.returncode == 0, proc.stderr
    assert "input:    1 2 3" in proc.stdout and "expected: 3 2 1" in proc.stdout and "output:" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", ["rnn-bahdanau", "rnn-luong-general"])
def test_rnn_models_learn_the_reverse_task(model):
    cfg = TrainConfig(model=model, steps=400)
    rng = np.random.default_rng(cfg.seed)
    m = cfg.build_model(np.float32, rng)
    dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
    history = fit([NumpyTrainer(m, cfg, rng)], dataset, cfg, cfg.steps, eval_every=10**9)
    assert history.evals[-1]["val_sequence_accuracy"] >= 0.99, history.evals[-1]
