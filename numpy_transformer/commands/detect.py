"""``detect``: a DETR trained by ``train --task detect`` on held-out canvases, and what each query looks at."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_output_dir, positive_int, require_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "detect",
        help="draw a trained DETR's boxes next to the ground truth, and each object query's cross-attention",
        description="Load the run `train --task detect --model detr` wrote (its checkpoint.npz), redraw its "
        "held-out canvases and write detections.png (the ground truth and the predictions above --threshold) and "
        "query_attention.png (each object query's last-layer cross-attention over the first canvas, DETR's figure).",
    )
    cmd.add_argument("--run", type=Path, default=Path("runs") / "detect-detr", help="default runs/detect-detr")
    cmd.add_argument("--images", type=positive_int, default=4, help="held-out canvases to draw (default 4)")
    cmd.add_argument("--threshold", type=float, default=0.5, help="score above which a query counts (default 0.5)")
    cmd.add_argument("--out", type=Path, help="output folder (default: the run's folder)")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..applications import detection

    if not 0.0 <= args.threshold < 1.0:
        parser.error(f"--threshold: expected a score in [0, 1), got {args.threshold}")
    require_module(parser, "matplotlib", "detect draws with matplotlib: pip install 'numpy-transformer[detection]'")
    require_module(parser, "sklearn", "the digits come from scikit-learn: pip install 'numpy-transformer[detection]'")
    cfg, model = _load_run(parser, args.run)
    out = args.out or args.run
    check_output_dir(parser, "--out", out)
    if args.images > cfg.n_test:
        parser.error(f"--images: expected at most {cfg.n_test} (the run's held-out canvases), got {args.images}")
    _, test = detection.detection_dataset(cfg.seed, cfg.n_train, cfg.n_test)
    detection.draw_detections(model, test, out / "detections.png", args.images, args.threshold)
    detection.draw_query_attention(model, test.images[0], out / "query_attention.png")
    print(f"wrote {out / 'detections.png'} and {out / 'query_attention.png'}")
    return 0


def _load_run(parser: argparse.ArgumentParser, folder: Path):
    """(the run's DetectConfig, its trained DETR in eval mode) from ``folder/checkpoint.npz``; else exit status 2."""
    import numpy as np

    from ..applications.detection import DetectConfig
    from ..config import DetrConfig
    from ..models.detr import DETR
    from ..training.checkpoint import CheckpointError, config_from_json, read_checkpoint

    path = folder / "checkpoint.npz"
    if not path.is_file():
        parser.error(f"--run: {folder} holds no checkpoint.npz (train --task detect --model detr writes one)")
    try:
        ckpt = read_checkpoint(path)
        if not isinstance(ckpt.config, DetrConfig) or ckpt.meta.get("train_state", {}).get("task") != "detect":
            raise CheckpointError(f"checkpoint: {path} is not a detect run (train --task detect writes one)")
        cfg = config_from_json(DetectConfig, ckpt.meta.get("train_config"), f"checkpoint: {path}: meta.train_config")
    except CheckpointError as exc:
        parser.error(f"--run: {exc}")
    model = DETR(ckpt.config, dtype=np.dtype(ckpt.meta["dtype"]), rng=np.random.default_rng(0))
    model.load_state_dict(ckpt.model_state)
    model.eval()
    return cfg, model
