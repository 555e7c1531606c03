"""Detection on generated digit canvases: the data, DETR's training loop in NumPy, COCO AP with pycocotools.

``python -m numpy_transformer train --task detect --model detr`` runs :func:`train`
(``commands/train.py``: its checkpoint, ``--save-every``, Ctrl-C and ``--resume`` as for every task);
``python -m numpy_transformer detect`` draws a trained run (``commands/detect.py``).

Data (:func:`detection_dataset`): scikit-learn's 8 x 8 digits, split once by a seed (the test
canvases are made of digits no training canvas uses), each canvas ``size x size`` (48) grey pixels
holding 1 to 4 digits scaled by a random factor (``scale_range``, bilinear) and pasted at random
positions whose squares do not overlap. A target is the digit's class and its tight box (the
pasted pixels above 0.05), ``cxcywh`` normalised by the canvas size: what DETR predicts.

Training (:func:`train`): AdamW, a linear warm-up then a cosine, gradient-norm clipping, the set
loss of :mod:`numpy_transformer.functional.detr_loss` on every decoder layer's output when
``auxiliary_loss`` (DETR's default) or on the last one. By default the backbone trains from
scratch, and its frozen batch norms are fresh: the identity up to ``1/sqrt(1+eps)``, so the
backbone has neither normalisation nor a single bias (its convs have none), its signal shrinks
layer by layer, and DETR learns the boxes but not the classes (the class cross-entropy stays
near a uniform guess). ``train --backbone-steps N`` (:func:`with_pretrained_backbone`,
:func:`prepare_backbone`) does what the paper does instead -- start from a backbone trained to
classify: the frozen norms get statistics measured on training canvases, the backbone learns
to classify single training digits for ``N`` steps (:func:`pretrain_backbone`), and DETR then
trains it at a tenth of the learning rate.

Evaluation (:func:`coco_evaluate`): every query's box scored by its most likely real class (DETR's
post-processing), handed to ``pycocotools``' ``COCOeval`` in pixel ``xywh``: its AP@[.5:.95] and
AP50, not a home-made AP.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import DetrConfig
from ..functional.detr_loss import MatchCosts, detr_loss_backward, detr_loss_forward
from ..functional.linear import LinearCache
from ..functional.softmax import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward
from ..models.detr import DETR, BackboneCache, ResNetBackbone
from ..modules.base import Module
from ..modules.layers import Linear
from ..optim import AdamW, linear_warmup_cosine
from ..training.loop import NonFiniteError, clip_or_stop, nonfinite_kind, save_due, stop_requested
from .datasets import digits_dataset

# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DetectionData:
    images: np.ndarray  # (N, 1, size, size) in [0, 1]
    labels: list[np.ndarray]  # per canvas (n,) int64 digit classes
    boxes: list[np.ndarray]  # per canvas (n, 4) cxcywh in [0, 1]

    def __len__(self) -> int:
        return len(self.labels)


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    """A bilinear resize of a square (8, 8) image to (side, side) (pixel centres aligned)."""
    n = image.shape[0]
    coords = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = coords - lo
    rows = image[lo] * (1 - f)[:, None] + image[hi] * f[:, None]  # (side, n)
    return rows[:, lo] * (1 - f)[None, :] + rows[:, hi] * f[None, :]  # (side, side)


def make_canvases(
    digits: np.ndarray,
    digit_labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    size: int = 48,
    max_objects: int = 4,
    scale_range: tuple[float, float] = (1.25, 2.5),
) -> DetectionData:
    """``n`` canvases of 1..``max_objects`` digits (drawn from ``digits`` (M, 8, 8) in [0, 1]), no two overlapping."""
    images = np.zeros((n, 1, size, size))
    labels, boxes = [], []
    for i in range(n):
        placed: list[tuple[int, int, int]] = []  # (row, col, side) of each pasted square
        lab, box = [], []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(30):
                side = round(8 * rng.uniform(*scale_range))
                r, c = (int(v) for v in rng.integers(0, size - side + 1, 2))
                if all(r + side <= r2 or r2 + s2 <= r or c + side <= c2 or c2 + s2 <= c for r2, c2, s2 in placed):
                    break
            else:
                continue  # no room left for another digit
            k = int(rng.integers(len(digits)))
            patch = _resize(digits[k], side)
            images[i, 0, r : r + side, c : c + side] = np.maximum(images[i, 0, r : r + side, c : c + side], patch)
            ys, xs = np.nonzero(patch > 0.05)
            y0, y1, x0, x1 = r + ys.min(), r + ys.max() + 1, c + xs.min(), c + xs.max() + 1  # tight, pixel edges
            box.append([(x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size])
            lab.append(int(digit_labels[k]))
            placed.append((r, c, side))
        labels.append(np.array(lab, dtype=np.int64))
        boxes.append(np.array(box, dtype=np.float64).reshape(-1, 4))
    return DetectionData(images, labels, boxes)


CANVAS_SIZE = 48  # the canvases' side in pixels


def detection_dataset(
    seed: int = 0, n_train: int = 2000, n_test: int = 200, size: int = CANVAS_SIZE, dtype: np.dtype | type = np.float32
) -> tuple[DetectionData, DetectionData]:
    """``(train, test)`` canvases: the digits split by ``seed`` (``digits_dataset``), canvases drawn from each part."""
    digits = digits_dataset(seed, dtype=np.float64)
    rng = np.random.default_rng([seed, 12])
    train = make_canvases(digits.x_train[:, 0], digits.y_train, n_train, rng, size)
    test = make_canvases(digits.x_test[:, 0], digits.y_test, n_test, rng, size)

    def cast(d: DetectionData) -> DetectionData:
        return DetectionData(d.images.astype(dtype), d.labels, [b.astype(dtype) for b in d.boxes])

    return cast(train), cast(test)


# ---------------------------------------------------------------------------- backbone pre-training


@dataclass(frozen=True)
class BackboneClassifierCache:
    backbone: BackboneCache
    feature_shape: tuple[int, int, int, int]  # (B, Cb, h, w) before the mean over the cells
    head: LinearCache
    loss: CrossEntropyCache


class BackboneClassifier(Module):
    r"""DETR's backbone with a pooled linear head, to pre-train it on single digits (as DETR's ImageNet ResNet).

    .. math:: \text{logits} = \text{head}\Big(\frac{1}{hw} \sum_{i,j} \text{backbone}(x)_{:, i, j}\Big)

    ``backbone`` is the DETR's own module (not a copy): training this classifier trains the detector's
    backbone in place. The head is thrown away afterwards, as DETR drops ResNet's classifier.
    """

    def __init__(self, backbone: ResNetBackbone, channels: int, num_labels: int, dtype, rng) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = Linear(channels, num_labels, dtype=dtype, rng=rng)

    def forward(self, pixels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, BackboneClassifierCache]:
        """``pixels`` (B, 1, I, I), ``labels`` (B,) -> the mean cross-entropy (0-d), logits (B, K), the cache."""
        f, c_bb = self.backbone.forward(pixels)  # (B, Cb, h, w)
        logits, c_head = self.head.forward(f.mean(axis=(2, 3)))  # (B, K)
        loss, c_loss = cross_entropy_forward(logits, labels)
        return loss, logits, BackboneClassifierCache(c_bb, f.shape, c_head, c_loss)

    def backward(self, cache: BackboneClassifierCache) -> None:
        """Accumulate the head's and the backbone's gradients of the loss."""
        B, Cb, h, w = cache.feature_shape
        dpooled = self.head.backward(
            cross_entropy_backward(np.asarray(1.0, dtype=self.head.weight.dtype), cache.loss), cache.head
        )  # (B, Cb)
        # The mean spreads each pooled value's gradient evenly over the h w cells it averaged.
        df = np.broadcast_to((dpooled / dpooled.dtype.type(h * w))[:, :, None, None], (B, Cb, h, w))
        self.backbone.backward(np.ascontiguousarray(df), cache.backbone)


PRETRAIN_SIZE = 32  # pre-training images: one digit at the canvases' scales on 32 x 32 (a 4 x 4 feature map)


def pretrain_backbone(
    model: DETR,
    digits: np.ndarray,
    digit_labels: np.ndarray,
    steps: int,
    rng: np.random.Generator,
    batch_size: int = 64,
    lr: float = 1e-3,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[dict[str, float]], float | None]:
    """Train ``model.backbone`` in place to classify single digits: each step's loss and batch accuracy, and
    the accuracy on 500 images of the ``held_out`` digits ``(M', 8, 8), (M',)`` (None without them, or when
    ``should_stop`` returned True after a step: then it stops there).

    Each step draws ``batch_size`` fresh images: one of ``digits`` (M, 8, 8) -- the training split's
    only -- scaled and placed as on the detection canvases (:func:`make_canvases` with one object) on
    a ``PRETRAIN_SIZE`` square. AdamW with a 5 % warm-up and a cosine; the frozen batch norms stay
    frozen (the backbone has no normalisation to learn).
    """
    dtype = model.dtype
    clf = BackboneClassifier(model.backbone, model.config.hidden_sizes[-1], 10, dtype, rng)
    opt = AdamW(list(clf.named_trainable()), lr=lr, weight_decay=1e-4)
    rows = []
    for step in range(1, steps + 1):
        batch = make_canvases(digits, digit_labels, batch_size, rng, PRETRAIN_SIZE, max_objects=1)
        labels = np.concatenate(batch.labels)
        clf.zero_grad()
        loss, logits, cache = clf.forward(batch.images.astype(dtype), labels)
        clf.backward(cache)
        clip_or_stop(clf, 1.0, step)
        opt.set_lr_scale(linear_warmup_cosine(step, 1.0, max(1, steps // 20), steps))
        opt.step()
        rows.append({"step": step, "loss": float(loss), "accuracy": float((logits.argmax(-1) == labels).mean())})
        if on_step is not None:
            on_step(step, rows[-1])
        if should_stop is not None and should_stop():
            return rows, None  # stopped (Ctrl-C / SIGTERM): the caller sees fewer rows than steps
    accuracy = None
    if held_out is not None:
        test = make_canvases(*held_out, 500, np.random.default_rng(0), PRETRAIN_SIZE, max_objects=1)
        labels = np.concatenate(test.labels)
        _, logits, _ = clf.forward(test.images.astype(dtype), labels)
        accuracy = float((logits.argmax(-1) == labels).mean())
    return rows, accuracy


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class DetectConfig:
    """The training run; the defaults (from scratch) and ``with_pretrained_backbone`` reach the README's numbers."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3  # AdamW's peak (DETR: 1e-4 at batch 64 with a pre-trained backbone; ours starts from scratch)
    warmup_steps: int = 100
    weight_decay: float = 1e-4  # DETR's
    clip_norm: float = 1.0  # DETR clips at 0.1
    seed: int = 0
    n_train: int = 2000
    n_test: int = 200
    eval_every: int = 500
    model: DetrConfig = field(default_factory=DetrConfig)
    # The backbone before DETR's training starts (see start): its frozen batch norms' statistics measured
    # on 64 training canvases, then ``backbone_steps`` of classifying single training digits (0: none).
    calibrate_norms: bool = False
    backbone_steps: int = 0
    backbone_batch_size: int = 64
    backbone_lr: float = 1e-3  # the pre-training's AdamW peak
    backbone_lr_scale: float = 1.0  # DETR's backbone learns at lr times this (the paper: 1e-5 / 1e-4 = 0.1)

    def __post_init__(self) -> None:
        if not isinstance(self.calibrate_norms, bool):
            raise TypeError(f"calibrate_norms: expected a bool, got {type(self.calibrate_norms).__name__}")
        if isinstance(self.backbone_steps, bool) or not isinstance(self.backbone_steps, int) or self.backbone_steps < 0:
            raise ValueError(f"backbone_steps: expected an int >= 0, got {self.backbone_steps!r}")
        if isinstance(self.backbone_batch_size, bool) or not isinstance(self.backbone_batch_size, int) \
                or self.backbone_batch_size < 1:  # fmt: skip
            raise ValueError(f"backbone_batch_size: expected an int >= 1, got {self.backbone_batch_size!r}")
        for name in ("backbone_lr", "backbone_lr_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")


def with_pretrained_backbone(cfg: DetectConfig, steps: int) -> DetectConfig:
    """``train --backbone-steps N``: the norms calibrated, ``N`` pre-training steps, the backbone at lr / 10."""
    if steps == 0:
        return cfg
    return replace(cfg, calibrate_norms=True, backbone_steps=steps, backbone_lr_scale=0.1)


LOSS_TERMS = ("loss", "loss_ce", "loss_bbox", "loss_giou")  # each step's total, then the last layer's terms


@dataclass
class DetectRun:
    """A run in progress or finished: what :func:`train` needs to continue (``train --resume``) and what it measured."""

    model: DETR
    optimizer: AdamW
    rng: np.random.Generator  # which canvases each step (DETR here has no dropout)
    losses: list[dict[str, float]] = field(default_factory=list)  # per step: "step" and LOSS_TERMS
    evals: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps_done: int = 0
    stopped: bool = False
    # The backbone's pre-training (empty without): per step "step", "loss", "accuracy" (of the batch),
    # and the accuracy on held-out digits and the seconds it took.
    pretrain: list[dict[str, float]] = field(default_factory=list)
    pretrain_accuracy: float | None = None
    pretrain_seconds: float = 0.0


def start(cfg: DetectConfig, dtype: np.dtype | type = np.float32) -> DetectRun:
    """A fresh run: the DETR, its optimizer and its generators (then :func:`prepare_backbone`, before step 1).

    Weight decay spares biases, norms and the query positions (DETR's recipe). With a
    ``backbone_lr_scale`` other than 1 the backbone gets two groups of its own that learn at
    ``lr`` times it (DETR: 1e-5 for the backbone, 1e-4 for the rest).
    """
    rng = np.random.default_rng(cfg.seed)
    model = DETR(cfg.model, dtype=dtype, rng=rng)

    def decays(name: str, p: np.ndarray) -> bool:
        return p.ndim > 1 and name != "query_position_embeddings"

    trainable = list(model.named_trainable())
    parts = [(trainable, cfg.lr)]
    if cfg.backbone_lr_scale != 1:
        backbone = [t for t in trainable if t[0].startswith("backbone.")]
        rest = [t for t in trainable if not t[0].startswith("backbone.")]
        parts = [(rest, cfg.lr), (backbone, cfg.lr * cfg.backbone_lr_scale)]
    groups = []
    for params, lr in parts:
        groups += [{"params": [t for t in params if decays(*t[:2])], "weight_decay": cfg.weight_decay, "lr": lr},
                   {"params": [t for t in params if not decays(*t[:2])], "weight_decay": 0.0, "lr": lr}]  # fmt: skip
    groups = [g for g in groups if g["params"]]  # the backbone has no biases: its no-decay group is empty
    return DetectRun(model, AdamW(groups, lr=cfg.lr), np.random.default_rng([cfg.seed, 1]))


def prepare_backbone(
    run: DetectRun,
    cfg: DetectConfig,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Get a fresh run's backbone ready, as its configuration says; ``False`` if ``should_stop`` cut it short.

    1. ``calibrate_norms``: every frozen batch norm gets the statistics of its input on 64 training
       canvases (:meth:`~numpy_transformer.models.detr.ResNetBackbone.calibrate_batch_norm`);
    2. ``backbone_steps`` > 0: the backbone learns to classify single training digits
       (:func:`pretrain_backbone`), as DETR starts from a ResNet trained on ImageNet classes.

    Both use generators of their own, so the DETR's other initial weights and the order of its
    batches are those of a run without them. A resumed run skips this: its weights (the frozen
    statistics included) come from the checkpoint.
    """
    if not (cfg.calibrate_norms or cfg.backbone_steps):
        return True
    t0 = time.perf_counter()
    model, dtype = run.model, run.model.dtype
    digits = digits_dataset(cfg.seed, dtype=np.float64)
    if cfg.calibrate_norms:
        rng = np.random.default_rng([cfg.seed, 4])
        canvases = make_canvases(digits.x_train[:, 0], digits.y_train, 64, rng, CANVAS_SIZE)
        model.backbone.calibrate_batch_norm(canvases.images.astype(dtype))
    done = True
    if cfg.backbone_steps:
        run.pretrain, run.pretrain_accuracy = pretrain_backbone(
            model, digits.x_train[:, 0], digits.y_train, cfg.backbone_steps, np.random.default_rng([cfg.seed, 3]),
            cfg.backbone_batch_size, cfg.backbone_lr, on_step, held_out=(digits.x_test[:, 0], digits.y_test),
            should_stop=should_stop,
        )  # fmt: skip
        done = len(run.pretrain) == cfg.backbone_steps
    run.pretrain_seconds = time.perf_counter() - t0
    return done


def loss_and_backward(model: DETR, images, labels, boxes) -> tuple[float, dict[str, float]]:
    """One batch: forward, DETR's set loss on the supervised layers, backward (gradients accumulate)."""
    c = model.config
    out, cache = model.forward(images)
    logits, pred = model.supervised(out)
    costs = MatchCosts(c.class_cost, c.bbox_cost, c.giou_cost)
    loss, lc = detr_loss_forward(
        logits, pred, labels, boxes, eos_coef=c.eos_coefficient, costs=costs,
        bbox_loss_coefficient=c.bbox_loss_coefficient, giou_loss_coefficient=c.giou_loss_coefficient,
    )  # fmt: skip
    dz, db = detr_loss_backward(model.dtype.type(1), lc)
    model.backward(*model.full_gradients(dz, db), cache)
    return float(loss), lc.terms


def train(
    cfg: DetectConfig,
    data: DetectionData,
    test: DetectionData | None = None,
    dtype: np.dtype | type = np.float32,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    *,
    run: DetectRun | None = None,
    save_every: int | None = None,
    on_save: Callable[[DetectRun], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DetectRun:
    """Train DETR on ``data``; evaluate on ``test`` every ``eval_every`` steps and at the end.

    ``run`` continues a run at ``run.steps_done + 1``; ``on_save`` / ``should_stop`` as in
    :func:`~numpy_transformer.applications.digits.train_digits`.
    """
    if run is None:
        run = start(cfg, dtype)
        prepare_backbone(run, cfg)
    model, opt = run.model, run.optimizer
    t0 = time.perf_counter() - run.seconds
    for step in range(run.steps_done + 1, cfg.steps + 1):
        idx = run.rng.choice(len(data), size=cfg.batch_size, replace=False)
        model.zero_grad()
        loss, terms = loss_and_backward(model, data.images[idx], [data.labels[i] for i in idx],
                                        [data.boxes[i] for i in idx])  # fmt: skip
        if not np.isfinite(loss):
            raise NonFiniteError(step, "loss", nonfinite_kind(loss), "numpy")
        clip_or_stop(model, cfg.clip_norm, step)  # NonFiniteError naming the first bad gradient
        opt.set_lr_scale(linear_warmup_cosine(step, 1.0, min(cfg.warmup_steps, cfg.steps), cfg.steps))
        opt.step()
        row = {"step": step, "loss": loss, **{k: terms[k] for k in LOSS_TERMS[1:]}}
        run.losses.append(row)
        run.steps_done = step
        if on_step is not None:
            on_step(step, row)
        if test is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            ap = coco_evaluate(model, test)
            run.evals.append({"step": step, "seconds": time.perf_counter() - t0, **ap})
            if on_eval is not None:
                on_eval(run.evals[-1])
        run.stopped = stop_requested(step, cfg.steps, should_stop)
        run.seconds = time.perf_counter() - t0
        if on_save is not None and save_due(step, cfg.steps, save_every, run.stopped):
            on_save(run)
        if run.stopped:
            break
    run.seconds = time.perf_counter() - t0
    return run


# ---------------------------------------------------------------------------- evaluation


def predict(model: DETR, images: np.ndarray, batch_size: int = 64) -> list[dict[str, np.ndarray]]:
    """Per image, every query's ``scores`` (Q,), ``labels`` (Q,) and ``boxes`` (Q, 4) cxcywh from the last layer.

    DETR's post-processing: the softmax over the classes, the best *real* class (the no-object
    column dropped) and its probability as the score.
    """
    out = []
    for start_ in range(0, len(images), batch_size):
        o, _ = model.forward(images[start_ : start_ + batch_size])
        z = o.logits[-1].astype(np.float64)  # (b, Q, V)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        real = p[..., :-1]
        for b in range(z.shape[0]):
            out.append({"scores": real[b].max(-1), "labels": real[b].argmax(-1), "boxes": o.pred_boxes[-1][b]})
    return out


def coco_evaluate(model: DETR, data: DetectionData) -> dict[str, float]:
    """pycocotools' bbox AP@[.5:.95] (``AP``) and AP at IoU 0.5 (``AP50``) of the model on ``data``."""
    return coco_ap(predict(model, data.images), data)


def coco_ap(predictions: list[dict[str, np.ndarray]], data: DetectionData) -> dict[str, float]:
    """pycocotools' ``AP`` and ``AP50`` of per-image ``scores`` / ``labels`` / ``boxes`` (cxcywh) against ``data``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    size = data.images.shape[-1]

    def xywh(b: np.ndarray) -> list[float]:
        cx, cy, w, h = (float(v) * size for v in b)
        return [cx - w / 2, cy - h / 2, w, h]

    images, annotations, detections = [], [], []
    for i, (lab, box) in enumerate(zip(data.labels, data.boxes, strict=True)):
        images.append({"id": i, "width": size, "height": size})
        for k, (c, b) in enumerate(zip(lab, box, strict=True)):
            r = xywh(b)
            annotations.append({"id": 10 * i + k + 1, "image_id": i, "category_id": int(c), "bbox": r,
                                "area": r[2] * r[3], "iscrowd": 0})  # fmt: skip
    for i, p in enumerate(predictions):
        for s, c, b in zip(p["scores"], p["labels"], p["boxes"], strict=True):
            detections.append({"image_id": i, "category_id": int(c), "bbox": xywh(b), "score": float(s)})
    gt = {"images": images, "annotations": annotations, "categories": [{"id": k} for k in range(10)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1])}


# ---------------------------------------------------------------------------- the command's work


def plot_losses(losses: list[dict[str, float]], path: Path, title: str) -> None:
    """Each term of the last layer's loss and the total, smoothed over 50 steps, on a log scale."""
    from .plots import pyplot, save_figure

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.array([r["step"] for r in losses])
    for key, label in (("loss", "total (all layers)"), ("loss_ce", "class CE"), ("loss_bbox", "L1"),
                       ("loss_giou", "1 - GIoU")):  # fmt: skip
        v = np.array([r[key] for r in losses])
        k = min(50, len(v))
        ax.plot(steps[k - 1 :], np.convolve(v, np.ones(k) / k, mode="valid"), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (last layer's terms)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------------------- pictures (the detect command)


def draw_detections(model: DETR, data: DetectionData, path: Path, n: int, threshold: float = 0.5) -> None:
    """``n`` held-out canvases: the ground truth (green) and the queries scoring above ``threshold`` (red)."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    from matplotlib.patches import Rectangle

    size = data.images.shape[-1]
    preds = predict(model, data.images[:n])
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5), squeeze=False)
    for i in range(n):
        for row, (title, items, color) in enumerate(
            (("truth", list(zip(data.labels[i], data.boxes[i], [None] * len(data.labels[i]), strict=True)), "lime"),
             ("DETR", [(c, b, s) for c, b, s in zip(preds[i]["labels"], preds[i]["boxes"], preds[i]["scores"],
                                                    strict=True) if s > threshold], "red"))
        ):  # fmt: skip
            ax = axes[row, i]
            ax.imshow(data.images[i, 0], cmap="gray", vmin=0, vmax=1)
            for c, b, s in items:
                cx, cy, w, h = (float(v) * size for v in b)
                ax.add_patch(Rectangle((cx - w / 2 - 0.5, cy - h / 2 - 0.5), w, h, fill=False, color=color, lw=1.5))
                text = f"{int(c)}" if s is None else f"{int(c)} {s:.2f}"
                ax.text(cx - w / 2, cy - h / 2 - 1, text, color=color, fontsize=8)
            ax.set_title(f"{title} #{i}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def draw_query_attention(model: DETR, image: np.ndarray, path: Path) -> None:
    """Each object query's last-layer cross-attention over the feature map (mean over heads), over the image."""
    from .plots import pyplot, save_figure

    plt = pyplot()

    out, _ = model.forward(image[None])
    h, w = out.feature_size
    attn = out.cross_attentions[-1][0].mean(axis=0)  # (Q, S)
    pred = predict(model, image[None])[0]
    Q = attn.shape[0]
    cols = min(Q, 5)
    rows = -(-Q // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.7 * rows), squeeze=False)
    size = image.shape[-1]
    for q in range(rows * cols):
        ax = axes[q // cols, q % cols]
        ax.axis("off")
        if q >= Q:
            continue
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
        ax.imshow(attn[q].reshape(h, w), cmap="magma", alpha=0.6, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        ax.set_title(f"query {q}: {int(pred['labels'][q])} ({pred['scores'][q]:.2f})", fontsize=8)
    fig.suptitle("each query's cross-attention (last decoder layer, mean over heads)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
