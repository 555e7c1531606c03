"""The detection data, the training step and the COCO evaluation of ``applications/detection.py``; CLI errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import numpy_transformer.functional as F
from numpy_transformer.applications import detection as D
from numpy_transformer.commands import main
from numpy_transformer.config import DetrConfig
from numpy_transformer.training.checkpoint import save_checkpoint

from .helpers import assert_matches

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def canvases():
    return D.detection_dataset(seed=3, n_train=40, n_test=10)


def test_canvases_hold_one_to_four_non_overlapping_digits_with_boxes_inside_the_image(canvases):
    train, test = canvases
    assert train.images.shape == (40, 1, 48, 48) and train.images.dtype == np.float32
    assert train.images.min() >= 0 and train.images.max() <= 1
    for labels, boxes in zip(train.labels + test.labels, train.boxes + test.boxes, strict=True):
        assert 1 <= len(labels) <= 4 and boxes.shape == (len(labels), 4)
        assert labels.min() >= 0 and labels.max() <= 9
        xyxy, _ = F.box_cxcywh_to_xyxy_forward(boxes.astype(np.float64))
        assert xyxy.min() >= -1e-6 and xyxy.max() <= 1 + 1e-6  # float32 boxes: rounding at the edge
        iou, _ = F.box_iou_forward(xyxy, xyxy)
        assert np.allclose(iou, np.eye(len(labels)), atol=1e-6)  # no two digits overlap (float32 rounding aside)
    # Each box holds ink: the pixels inside the first box of the first canvas are not all blank.
    cx, cy, w, h = train.boxes[0][0] * 48
    assert train.images[0, 0, int(cy - h / 2) : int(cy + h / 2), int(cx - w / 2) : int(cx + w / 2)].max() > 0.3


def test_the_same_seed_draws_the_same_canvases():
    a, _ = D.detection_dataset(seed=5, n_train=5, n_test=2)
    b, _ = D.detection_dataset(seed=5, n_train=5, n_test=2)
    c, _ = D.detection_dataset(seed=6, n_train=5, n_test=2)
    assert np.array_equal(a.images, b.images) and all(
        np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True)
    )
    assert not np.array_equal(a.images, c.images)


def test_pycocotools_gives_ap_one_to_the_ground_truth_and_less_to_shifted_boxes(canvases):
    pytest.importorskip("pycocotools")
    _, test = canvases
    perfect = [
        {"scores": np.ones(len(lab)), "labels": lab, "boxes": box}
        for lab, box in zip(test.labels, test.boxes, strict=True)
    ]
    assert D.coco_ap(perfect, test) == pytest.approx({"AP": 1.0, "AP50": 1.0})
    shifted = [dict(p, boxes=p["boxes"] + np.array([0.3, 0, 0, 0]) * p["boxes"][:, 2:3]) for p in perfect]
    ap = D.coco_ap(shifted, test)  # moved by 30 % of their width: IoU ~ 0.54
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP"] < 0.5


def test_a_few_steps_on_one_batch_lower_the_set_loss(canvases):
    train, _ = canvases
    tiny = DetrConfig(embedding_size=4, hidden_sizes=(8, 8), depths=(1, 1), d_model=16, encoder_layers=1,
                      decoder_layers=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5)  # fmt: skip
    cfg = D.DetectConfig(steps=25, batch_size=4, lr=3e-3, warmup_steps=1, model=tiny)
    batch = D.DetectionData(train.images[:4], train.labels[:4], train.boxes[:4])
    run = D.train(cfg, batch)
    losses = [r["loss"] for r in run.losses]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(run.losses[-1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "vit"], "--task detect trains detr"),
        (["--backend", "torch"], "--backend does not apply"),
    ],
)
def test_train_task_detect_refuses_options_that_do_not_apply_with_exit_status_2(extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "detect", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_model_detr_outside_task_detect_is_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "reverse", "--model", "detr"])
    assert exc.value.code == 2 and "for --task detect" in capsys.readouterr().err


def test_the_default_config_round_trips_through_asdict():
    cfg = D.DetectConfig()
    assert dataclasses.asdict(cfg)["model"]["hidden_sizes"] == (16, 32)


def test_detect_without_a_trained_run_or_with_a_bad_threshold_is_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["detect", "--run", str(tmp_path)])
    assert exc.value.code == 2 and "holds no checkpoint.npz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["detect", "--run", str(tmp_path), "--threshold", "1.5"])
    assert exc.value.code == 2 and "--threshold: expected a score in [0, 1)" in capsys.readouterr().err


def test_detect_draws_both_pictures_for_a_saved_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    tiny = DetrConfig(embedding_size=4, hidden_sizes=(8,), depths=(1,), d_model=8, encoder_layers=1,
                      decoder_layers=1, encoder_ffn_dim=8, decoder_ffn_dim=8, num_queries=3)  # fmt: skip
    cfg = D.DetectConfig(steps=1, batch_size=2, n_train=4, n_test=2, model=tiny)
    run = D.start(cfg)
    save_checkpoint(tmp_path / "checkpoint.npz", run.model, run.optimizer, train_config=dataclasses.asdict(cfg),
                    train_state={"task": "detect"})  # fmt: skip
    assert main(["detect", "--run", str(tmp_path), "--images", "2"]) == 0
    assert (tmp_path / "detections.png").stat().st_size > 0 and (tmp_path / "query_attention.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exc:
        main(["detect", "--run", str(tmp_path), "--images", "3"])
    assert exc.value.code == 2 and "--images: expected at most 2" in capsys.readouterr().err


def test_a_digits_checkpoint_is_not_a_detect_run(tmp_path, capsys):
    from numpy_transformer.applications.digits import DigitsConfig, start_digits

    run = start_digits(DigitsConfig(model="cnn", steps=1))
    save_checkpoint(tmp_path / "checkpoint.npz", run.model, train_state={"task": "digits"})
    with pytest.raises(SystemExit) as exc:
        main(["detect", "--run", str(tmp_path)])
    assert exc.value.code == 2 and "is not a detect run" in capsys.readouterr().err


# --------------------------------------------------------------------------- the backbone's preparation
# (train --backbone-steps: frozen statistics measured on canvases, then classifying single digits)

SMALL_BACKBONE = DetrConfig(embedding_size=4, hidden_sizes=(6, 8), depths=(1, 1), d_model=8, encoder_layers=1,
                            decoder_layers=1, encoder_ffn_dim=8, decoder_ffn_dim=8, num_queries=3)  # fmt: skip


def test_the_backbone_classifier_gradients_match_torch_autograd():
    """The pooled head's backward (the mean over the cells, then the backbone's), every parameter, float64."""
    torch = pytest.importorskip("torch")
    from numpy_transformer.models.detr import DETR
    from torch_transformer import detr as twin_detr

    rng = np.random.default_rng(0)
    model = DETR(SMALL_BACKBONE, dtype=np.float64, rng=rng)
    for name, p in model.backbone.named_parameters():  # drawn statistics: the calibrated case, not the identity
        p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("running_var") else rng.standard_normal(p.shape)
    clf = D.BackboneClassifier(model.backbone, 8, 10, np.float64, rng)
    x, labels = rng.random((3, 1, 20, 20)), np.array([1, 7, 7])
    clf.zero_grad()
    loss, _, cache = clf.forward(x, labels)
    clf.backward(cache)

    twin = twin_detr.ResNetBackbone(SMALL_BACKBONE, torch.float64)
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.backbone.state_dict().items()})
    w, b = (torch.tensor(a, requires_grad=True) for a in (clf.head.weight, clf.head.bias))
    z = twin(torch.from_numpy(x)).mean(dim=(2, 3)) @ w.T + b
    want = torch.nn.functional.cross_entropy(z, torch.from_numpy(labels))
    want.backward()
    assert_matches("pre-training loss", loss, want.detach().numpy(), np.float64)
    grads = dict(clf.named_grads())
    assert_matches("head.weight grad", grads["head.weight"], w.grad.numpy(), np.float64)
    assert_matches("head.bias grad", grads["head.bias"], b.grad.numpy(), np.float64)
    compared = 0
    for name, p in twin.named_parameters():
        if p.requires_grad:
            assert_matches(f"backbone.{name} grad", grads[f"backbone.{name}"], p.grad.numpy(), np.float64)
            compared += 1
    assert compared == 7  # the stem, and per block two convs and a shortcut (the width changes: 4 -> 6 -> 8)


def test_calibration_gives_every_frozen_norm_the_statistics_of_its_input():
    from numpy_transformer.models.detr import DETR

    model = DETR(SMALL_BACKBONE, dtype=np.float64, rng=np.random.default_rng(1))
    x = np.random.default_rng(2).random((5, 1, 24, 24))
    before, _ = model.backbone.forward(x)
    out = model.backbone.calibrate_batch_norm(x)
    after, _ = model.backbone.forward(x)
    assert_matches("calibrate returns the calibrated forward", out, after, np.float64)
    assert not np.allclose(before, after)
    # The stem's norm now maps its conv's output on x to mean 0 and variance var / (var + eps) per channel.
    y, _ = model.backbone.stem.conv.forward(x)
    z, _ = model.backbone.stem.norm.forward(y)
    var = y.var(axis=(0, 2, 3))
    assert_matches("mean 0 per channel", z.mean(axis=(0, 2, 3)), np.zeros(4), np.float64)
    assert_matches("variance 1 per channel", z.var(axis=(0, 2, 3)), var / (var + 1e-5), np.float64)
    # A later norm too, whose input is the calibrated layers' output: the last block's conv2.
    from numpy_transformer.functional.conv import max_pool2d_forward

    h, _ = max_pool2d_forward(model.backbone.stem.forward(x)[0], 3, 2, 1)
    first, last = model.backbone.blocks()
    h, _ = last.conv1.forward(first.forward(h)[0])
    y, _ = last.conv2.conv.forward(h)
    z, _ = last.conv2.norm.forward(y)
    var = y.var(axis=(0, 2, 3))
    assert_matches("last norm: mean 0", z.mean(axis=(0, 2, 3)), np.zeros(8), np.float64)
    assert_matches("last norm: variance 1", z.var(axis=(0, 2, 3)), var / (var + 1e-5), np.float64)
    norm = last.conv2.norm
    assert np.array_equal(norm.weight, np.ones(8)) and np.array_equal(norm.bias, np.zeros(8))  # affine untouched


def test_a_short_pre_training_lowers_its_loss_below_the_prior_and_trains_the_detrs_own_backbone():
    """Four training digits (classes 3, 0, 6, 1) at random scales and places: 80 steps take the loss from ~2.1
    to below ln 4 = 1.39, what a head that only learned the four classes' prior would give."""
    from numpy_transformer.applications.datasets import digits_dataset
    from numpy_transformer.models.detr import DETR

    digits = digits_dataset(0, dtype=np.float64)
    x, y = digits.x_train[:4, 0], digits.y_train[:4]
    model = DETR(SMALL_BACKBONE, dtype=np.float32, rng=np.random.default_rng(1))
    model.backbone.calibrate_batch_norm(D.make_canvases(x, y, 16, np.random.default_rng(5)).images.astype(np.float32))
    stem = model.backbone.stem.conv.weight.copy()
    rows, acc = D.pretrain_backbone(model, x, y, 80, np.random.default_rng(1), batch_size=16, lr=1e-2, held_out=(x, y))
    losses = [r["loss"] for r in rows]
    assert len(rows) == 80 and np.all(np.isfinite(losses))
    assert np.mean(losses[:8]) > 2.0 and np.mean(losses[-8:]) < 1.0
    assert acc > 0.5  # 500 fresh placements of the four digits; chance is 0.25
    assert not np.array_equal(model.backbone.stem.conv.weight, stem)  # in place: the detector's backbone learned
    stopped, acc = D.pretrain_backbone(
        model, x, y, 40, np.random.default_rng(1), batch_size=4, should_stop=lambda: True
    )
    assert len(stopped) == 1 and acc is None  # a signal stops it after the step it interrupts


def test_the_recipe_calibrates_pre_trains_and_gives_the_backbone_a_tenth_of_the_learning_rate():
    cfg = D.with_pretrained_backbone(D.DetectConfig(lr=2e-3, model=SMALL_BACKBONE), 3)
    assert (cfg.calibrate_norms, cfg.backbone_steps, cfg.backbone_lr_scale) == (True, 3, 0.1)
    assert D.with_pretrained_backbone(D.DetectConfig(), 0) == D.DetectConfig()  # 0: from scratch, as before
    run = D.start(cfg)
    for group in run.optimizer.param_groups:
        in_backbone = {n.startswith("backbone.") for n in group["params"]}
        assert len(in_backbone) == 1  # a group is all backbone or none of it
        assert group["lr"] == pytest.approx(2e-4 if in_backbone == {True} else 2e-3)
    assert len(D.start(D.DetectConfig(model=SMALL_BACKBONE)).optimizer.param_groups) == 2  # as before the option

    def means():
        return [p.copy() for n, p in run.model.named_parameters() if n.endswith("running_mean")]

    fresh = means()
    assert D.prepare_backbone(run, cfg) and len(run.pretrain) == 3 and run.pretrain_seconds > 0
    assert all(not np.array_equal(a, b) for a, b in zip(fresh, means(), strict=True))  # every norm calibrated
    assert not D.prepare_backbone(D.start(cfg), cfg, should_stop=lambda: True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("backbone_steps", -1, "backbone_steps: expected an int >= 0"),
        ("calibrate_norms", 1, "calibrate_norms: expected a bool"),
        ("backbone_lr_scale", float("nan"), "backbone_lr_scale: expected a finite number >= 0"),
        ("backbone_batch_size", 0, "backbone_batch_size: expected an int >= 1"),
    ],
)
def test_bad_backbone_settings_name_the_field(field, value, message):
    with pytest.raises((TypeError, ValueError), match=message):
        D.DetectConfig(**{field: value})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--task", "digits", "--backbone-steps", "5"],
            "--backbone-steps: pre-trains DETR's backbone, for --task detect",
        ),
        (["--task", "detect", "--backbone-steps", "-1"], "--backbone-steps: expected a non-negative integer, got -1"),
        (["--resume", "nowhere", "--backbone-steps", "5"], "--backbone-steps cannot change it"),
    ],
)
def test_backbone_steps_errors_are_exit_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
