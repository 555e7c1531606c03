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
