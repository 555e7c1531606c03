"""Training stops at the first non-finite loss or gradient, names it, and saves nothing diverged.

Also: ``train --model rnn-luong-general --compare`` (a README example) ends cleanly although the
RNN has no ``k_proj.bias`` for the final-weight note.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from numpy_transformer.applications.charlm import CharLMConfig, train_charlm
from numpy_transformer.training import NumpyTrainer, TrainConfig, fit
from numpy_transformer.training.loop import NonFiniteError
from numpy_transformer.training.tasks import ToyDataset
from torch_transformer.bridge import twin_of
from torch_transformer.training import TorchTrainer

# tiny, and a learning rate that blows the weights up at the first update
TINY = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, n_train=64, n_val=8, batch_size=8, max_len=5, steps=6)
DIVERGING = TrainConfig(**TINY, peak_lr=1e36, warmup_steps=1)
BAD = "decoder.layers.0.ff.linear1.weight"

pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")


def _trainer(cfg: TrainConfig, backend: str, dtype=np.float64):
    rng = np.random.default_rng(cfg.seed)
    model = cfg.build_model(dtype, rng)
    if backend == "numpy":
        return NumpyTrainer(model, cfg, rng)
    return TorchTrainer(twin_of(model), cfg)


def _dataset(cfg: TrainConfig) -> ToyDataset:
    return ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)


def _weights(trainer) -> dict[str, np.ndarray]:
    if trainer.backend == "numpy":
        return {n: p.copy() for n, p in trainer.model.named_parameters()}
    return {n: p.detach().numpy().copy() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_learning_rate_of_1e36_stops_fit_at_step_2_on_the_nan_loss(backend):
    trainer = _trainer(DIVERGING, backend, np.float32)  # the command's default dtype
    seen = []
    with pytest.raises(NonFiniteError, match=r"^step 2: loss is nan") as info:
        fit([trainer], _dataset(DIVERGING), DIVERGING, DIVERGING.steps, on_step=lambda s, r: seen.append(s))
    err = info.value
    assert (err.step, err.tensor, err.value, err.backend) == (2, "loss", "nan", backend)
    assert seen == [1]  # no callback, no evaluation, no later step
    assert len(err.history.losses[backend]) == 2 and math.isfinite(err.history.losses[backend][0])
    assert err.history.evals == []


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_an_infinite_gradient_is_named_and_no_update_is_made_at_that_step(backend):
    cfg = TrainConfig(**TINY)
    trainer = _trainer(cfg, backend)
    calls = {"n": 0}
    if backend == "numpy":
        model, original = trainer.model, trainer.model.backward

        def backward(*args, **kwargs):
            out = original(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 3:
                dict(model.named_grads())[BAD][0, 0] = np.inf
            return out

        model.backward = backward
    else:

        def hook(grad):
            calls["n"] += 1
            if calls["n"] == 3:
                grad = grad.clone()
                grad[0, 0] = math.inf
            return grad

        dict(trainer.model.named_parameters())[BAD].register_hook(hook)
    before = {}
    on_step = lambda s, r: before.update(_weights(trainer))  # noqa: E731
    with pytest.raises(NonFiniteError, match=rf"^step 3: gradient of {BAD} has inf") as info:
        fit([trainer], _dataset(cfg), cfg, cfg.steps, on_step=on_step)
    assert (info.value.step, info.value.tensor, info.value.value) == (3, BAD, "inf")
    after = _weights(trainer)
    assert all(np.array_equal(before[n], after[n]) for n in before)  # the weights of step 2, not touched


def test_a_gradient_norm_that_overflows_although_every_gradient_is_finite_is_named():
    trainer = _trainer(DIVERGING, "numpy", np.float64)  # float64: the loss stays finite, the norm overflows
    with pytest.raises(NonFiniteError, match=r"^step 2: gradient norm is inf") as info:
        fit([trainer], _dataset(DIVERGING), DIVERGING, DIVERGING.steps)
    assert info.value.tensor == "gradient norm"


def test_compare_mode_stops_at_the_first_backend_that_diverges():
    rng = np.random.default_rng(DIVERGING.seed)
    model = DIVERGING.build_model(np.float32, rng)
    trainers = [NumpyTrainer(model, DIVERGING, rng), TorchTrainer(twin_of(model), DIVERGING)]
    with pytest.raises(NonFiniteError, match=r"^step 2: loss is nan \(numpy backend\)"):
        fit(trainers, _dataset(DIVERGING), DIVERGING, DIVERGING.steps)


def test_charlm_training_stops_at_the_first_nan_loss():
    cfg = CharLMConfig(
        corpus_chars=4000, block_size=8, batch_size=4, d_model=16, n_heads=2, n_layers=1, d_ff=32,
        steps=6, warmup_steps=1, peak_lr=1e36, eval_windows=4,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"^step 2: loss is nan"):
        train_charlm(cfg, np.float32)


_DIVERGING_TRAIN = """
import dataclasses, sys
import numpy_transformer.commands.train as train
from numpy_transformer.commands import main

@dataclasses.dataclass(frozen=True)
class Diverging(train.TrainConfig):
    d_model: int = 16
    n_heads: int = 2
    n_layers: int = 1
    d_ff: int = 32
    n_train: int = 64
    n_val: int = 8
    max_len: int = 5
    peak_lr: float = 1e36
    warmup_steps: int = 1

train.TrainConfig = Diverging
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_train_command_exits_1_naming_the_step_and_writes_no_nan_checkpoint(tmp_path, backend):
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", textwrap.dedent(_DIVERGING_TRAIN), "train", "--backend", backend]
    cmd += ["--steps", "5", "--batch-size", "8", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"step 2: loss is nan ({backend} backend)" in proc.stderr
    assert "the run diverged at step 2; no checkpoint was written before it" in proc.stderr
    for npz in tmp_path.rglob("*.npz"):  # nothing is written today; whatever is must be finite
        with np.load(npz) as archive:
            for name in archive.files:
                values = archive[name]
                if values.dtype.kind == "f":
                    assert np.isfinite(values).all(), (npz, name)
    assert not (out / "history.json").exists()


def test_readme_rnn_compare_example_ends_cleanly(tmp_path):
    """README: ``train --model rnn-luong-general --compare --dtype float64 --steps 100`` (fewer steps here)."""
    cmd = [sys.executable, "-m", "numpy_transformer", "train", "--model", "rnn-luong-general", "--compare"]
    cmd += ["--dtype", "float64", "--steps", "3", "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "largest final-weight difference" in proc.stdout and "k_proj.bias" not in proc.stdout
    assert (tmp_path / "checkpoint.npz").exists()


assert torch  # the twin is needed by every torch test here
