"""Images as sequences: a small ViT, and a small CNN beside it, trained in NumPy on the 8 x 8 digits.

``python -m numpy_transformer train --task digits --model vit`` (or ``--model cnn``) trains it
(``numpy_transformer/commands/train.py``).

Data: scikit-learn's 1 797 digits, split once by a seed, stratified, 80 / 20
(``datasets.digits_dataset``); the test images are never seen in training. Each training
image is shifted by up to one pixel in each direction (zero padding) before it is used: the
one augmentation that keeps a digit a digit at this size.

The ViT reads the image as 16 patches of 2 x 2 pixels plus a class token; the CNN as two
``conv 3x3 -> ReLU -> max-pool`` stages. Both train with AdamW (no decay on LayerNorm
parameters, biases, the class token and the position table), a linear warm-up then a cosine,
gradient-norm clipping at 1 and label smoothing, on batches drawn at random each step.

Everything the run's future depends on lives in :class:`DigitsRun`: the model, the optimizer,
the generator of batches and shifts and the one of dropout masks, each step's loss. So ``train
--resume`` continues a stopped digits run bit for bit, like the other tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import CNNConfig, ViTConfig
from ..functional.softmax import cross_entropy_backward, cross_entropy_forward
from ..models.cnn import ImageCNN
from ..models.vit import ViTForImageClassification
from ..optim import AdamW, linear_warmup_cosine
from ..training.loop import NonFiniteError, clip_or_stop, nonfinite_kind, save_due, stop_requested
from .datasets import DigitsData, digits_dataset

DIGIT_MODELS = ("vit", "cnn")
PEAK_LR = {"vit": 3e-3, "cnn": 1e-2}  # the conv net takes (and needs) a larger rate


@dataclass(frozen=True)
class DigitsConfig:
    """Defaults: the ViT at about 96 % test accuracy in under three minutes on one CPU thread (float32)."""

    model: str = "vit"  # "vit" or "cnn"
    steps: int = 3000
    batch_size: int = 64
    peak_lr: float | None = None  # None: the model's own, PEAK_LR
    warmup_steps: int = 100
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    shift: int = 1  # each training image moved by up to this many pixels along each axis
    eval_every: int = 250
    seed: int = 0
    # the ViT: 2 x 2 patches, so 16 patches + the class token
    patch_size: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 128
    dropout: float = 0.0  # on 1 438 images dropout cost the ViT accuracy here (0.947 vs 0.964)
    # the CNN
    cnn_channels: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        if self.model not in DIGIT_MODELS:
            raise ValueError(f"model: expected one of {DIGIT_MODELS}, got {self.model!r}")
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.peak_lr is None:
            object.__setattr__(self, "peak_lr", PEAK_LR[self.model])
        if not isinstance(self.shift, int) or not 0 <= self.shift <= 3:
            raise ValueError(f"shift: expected an int from 0 to 3 (pixels), got {self.shift!r}")

    def model_config(self) -> ViTConfig | CNNConfig:
        if self.model == "cnn":
            return CNNConfig(image_size=8, num_channels=1, channels=self.cnn_channels, num_labels=10)
        return ViTConfig(image_size=8, patch_size=self.patch_size, num_channels=1, d_model=self.d_model,
                         n_heads=self.n_heads, n_layers=self.n_layers, d_ff=self.d_ff, dropout=self.dropout,
                         num_labels=10)  # fmt: skip

    def build_model(self, dtype: np.dtype | type, rng: np.random.Generator) -> ViTForImageClassification | ImageCNN:
        config = self.model_config()
        if isinstance(config, CNNConfig):
            return ImageCNN(config, dtype, rng)
        return ViTForImageClassification(config, dtype, rng)


def no_decay(name: str) -> bool:
    """LayerNorm parameters, biases, the class token and the position table are not decayed."""
    parts = name.split(".")
    owner = parts[-2] if len(parts) > 1 else ""
    return parts[-1] in ("bias", "cls_token", "pos_embed") or owner.startswith("norm")


def shifted(x: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image of ``x`` (B, C, H, W) moved by its own random offset in ``[-shift, shift]`` per axis.

    Pad by ``shift`` zeros, then crop an ``H x W`` window at a random corner: one gather, no loop.
    """
    if shift == 0:
        return x
    B, C, H, W = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (shift, shift), (shift, shift)))
    dy, dx = rng.integers(0, 2 * shift + 1, size=(2, B))
    rows = dy[:, None] + np.arange(H)  # (B, H)
    cols = dx[:, None] + np.arange(W)  # (B, W)
    return padded[np.arange(B)[:, None, None, None], np.arange(C)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]  # fmt: skip


@dataclass
class DigitsRun:
    """A run in progress or finished: what :func:`train_digits` needs to continue and what it measured."""

    model: ViTForImageClassification | ImageCNN
    optimizer: AdamW
    rng: np.random.Generator = field(repr=False)  # dropout masks
    batch_rng: np.random.Generator = field(repr=False)  # which images, and their shifts
    losses: dict[str, list[float]] = field(default_factory=lambda: {"numpy": []})
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", "backend", "train_loss", "test_*"}
    seconds: float = 0.0
    steps_done: int = 0
    stopped: bool = False


def start_digits(cfg: DigitsConfig, dtype: np.dtype | type = np.float32) -> DigitsRun:
    """A fresh run: the model drawn from ``cfg.seed``, AdamW with two groups, the generators."""
    rng = np.random.default_rng(cfg.seed)
    model = cfg.build_model(dtype, rng)
    triples = [(n, p, g) for (n, p), (_, g) in zip(model.named_parameters(), model.named_grads(), strict=True)]
    groups = [
        {"params": [t for t in triples if not no_decay(t[0])], "weight_decay": cfg.weight_decay},
        {"params": [t for t in triples if no_decay(t[0])], "weight_decay": 0.0},
    ]
    return DigitsRun(model, AdamW(groups, lr=0.0), rng, np.random.default_rng([cfg.seed, 1]))


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, 10) of ``x`` in eval mode, in batches."""
    was_training = model.training
    model.eval()
    out = np.concatenate([model.forward(x[i : i + batch_size])[0].logits for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n: int = 10) -> np.ndarray:
    """``m[i, j]``: images of class ``i`` predicted as ``j``."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def evaluate(model, data: DigitsData) -> dict[str, float]:
    """Test loss (no smoothing) and accuracy."""
    logits = predict(model, data.x_test)
    loss, _ = cross_entropy_forward(logits, data.y_test)
    return {"test_loss": float(loss), "test_accuracy": float(np.mean(logits.argmax(1) == data.y_test))}


def train_digits(
    cfg: DigitsConfig,
    dtype: np.dtype | type = np.float32,
    on_step: Callable[[int, float], None] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    *,
    run: DigitsRun | None = None,
    data: DigitsData | None = None,
    save_every: int | None = None,
    on_save: Callable[[DigitsRun], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DigitsRun:
    """Train ``cfg.model`` on the digits; evaluate every ``eval_every`` steps and at the end.

    ``run`` continues a run at ``run.steps_done + 1``; ``on_save`` / ``should_stop`` as in
    :func:`~numpy_transformer.applications.charlm.train_charlm`.
    """
    data = data if data is not None else digits_dataset(cfg.seed, dtype=dtype)
    run = run if run is not None else start_digits(cfg, dtype)
    model, opt = run.model, run.optimizer
    start = time.perf_counter() - run.seconds
    model.train()
    for step in range(run.steps_done + 1, cfg.steps + 1):
        picked = run.batch_rng.choice(len(data.x_train), size=min(cfg.batch_size, len(data.x_train)), replace=False)
        x = shifted(data.x_train[picked], cfg.shift, run.batch_rng)
        y = data.y_train[picked]
        out, cache = model.forward(x, rng=run.rng)
        loss, loss_cache = cross_entropy_forward(out.logits, y, label_smoothing=cfg.label_smoothing)
        if not np.isfinite(loss):
            raise NonFiniteError(step, "loss", nonfinite_kind(loss), "numpy")
        model.zero_grad()
        model.backward(cross_entropy_backward(np.asarray(1.0, out.logits.dtype), loss_cache), cache)
        clip_or_stop(model, cfg.clip_norm, step)  # NonFiniteError naming the first bad gradient
        lr = linear_warmup_cosine(step, cfg.peak_lr, min(cfg.warmup_steps, cfg.steps), cfg.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        run.losses["numpy"].append(float(loss))
        run.steps_done = step
        if on_step is not None:
            on_step(step, float(loss))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            before = run.evals[-1]["step"] if run.evals else 0
            row = {"step": step, "backend": "numpy", "train_loss": float(np.mean(run.losses["numpy"][before:]))}
            row.update(evaluate(model, data))
            row["seconds"] = time.perf_counter() - start
            run.evals.append(row)
            if on_eval is not None:
                on_eval(row)
        run.stopped = stop_requested(step, cfg.steps, should_stop)
        run.seconds = time.perf_counter() - start
        if on_save is not None and save_due(step, cfg.steps, save_every, run.stopped):
            on_save(run)
        if run.stopped:
            break
    run.seconds = time.perf_counter() - start
    return run
