"""``vit-attention``: what a ViT trained by ``train --task digits`` looks at, for one test image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import check_output_dir, non_negative_int, require_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "vit-attention",
        help="draw a digits ViT's class-token attention, attention rollout and position-embedding similarity",
        description="Load a checkpoint written by `train --task digits --model vit`, run one test image and write "
        "vit_attention.png (the class token's attention over the patches per layer and head, and attention "
        "rollout over the image) and position_similarity.png (each patch's position embedding against every "
        "other's, as in the ViT paper's figure 7).",
    )
    cmd.add_argument("checkpoint", type=Path, help="checkpoint.npz of a digits ViT run")
    cmd.add_argument("--image", type=non_negative_int, default=0, help="index of the test image (default 0)")
    cmd.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..applications.datasets import digits_dataset
    from ..applications.digits import DigitsConfig
    from ..applications.vit_attention import attention_rollout, class_token_attention, position_similarity
    from ..config import ViTConfig
    from ..models.vit import ViTForImageClassification
    from ..training.checkpoint import CheckpointError, config_from_json, read_checkpoint

    out = args.out or args.checkpoint.parent
    check_output_dir(parser, "--out", out)
    require_module(parser, "matplotlib", "vit-attention draws with matplotlib: pip install 'numpy-transformer[vision]'")
    require_module(parser, "sklearn", "the digits come from scikit-learn: pip install 'numpy-transformer[vision]'")
    try:
        ckpt = read_checkpoint(args.checkpoint)
        if not isinstance(ckpt.config, ViTConfig) or ckpt.meta.get("train_state", {}).get("task") != "digits":
            raise CheckpointError(
                f"checkpoint: {args.checkpoint} is not a digits ViT (train --task digits --model vit writes one)"
            )
        cfg = config_from_json(DigitsConfig, ckpt.meta.get("train_config"), f"checkpoint: {args.checkpoint}: meta")
    except CheckpointError as exc:
        parser.error(str(exc))
    dtype = np.dtype(ckpt.meta["dtype"])
    model = ViTForImageClassification(ckpt.config, dtype, np.random.default_rng(0))
    model.load_state_dict(ckpt.model_state)
    model.eval()
    data = digits_dataset(cfg.seed, dtype=dtype)
    if args.image >= len(data.y_test):
        parser.error(f"--image: expected an index below {len(data.y_test)} (the test images), got {args.image}")
    x = data.x_test[args.image : args.image + 1]
    output, _ = model.forward(x, output_attentions=True)
    predicted, label = int(output.logits[0].argmax()), int(data.y_test[args.image])
    cls = class_token_attention(output.attentions)
    rollout = attention_rollout(output.attentions)
    from ..applications.plots import plot_position_similarity, plot_vit_attention

    out.mkdir(parents=True, exist_ok=True)
    verdict = "right" if predicted == label else "wrong"
    heading = f"test image {args.image}: digit {label}, predicted {predicted} ({verdict})"
    a = plot_vit_attention(x[0, 0], cls, rollout, out / "vit_attention.png", title=heading)
    b = plot_position_similarity(position_similarity(model.vit.pos_embed), out / "position_similarity.png",
                                 title="position embeddings: cosine similarity of each patch with all")  # fmt: skip
    g = rollout.shape[0]
    print(heading)
    top = np.argsort(rollout.ravel())[::-1][:3]
    print("rollout's three largest patches (row, column of the " + f"{g}x{g} grid): "
          + ", ".join(f"({p // g}, {p % g}) {rollout.ravel()[p]:.3f}" for p in top))  # fmt: skip
    print(f"wrote {a} and {b}")
    sys.stdout.flush()
    return 0
