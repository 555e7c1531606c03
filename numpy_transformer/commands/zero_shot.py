"""``zero-shot``: classify one image by any prompts with a CLIP trained by ``train --task digit-captions``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import non_negative_int, require_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "zero-shot",
        help="classify a test digit (or a PNG) by text prompts with a CLIP from train --task digit-captions",
        description="Load a checkpoint written by `train --task digit-captions --model clip`, embed one image (a "
        "held-out test digit by --index, or any PNG by --image) and each prompt, and print the softmax over the "
        "prompts of exp(logit_scale) times their cosine similarities. The default prompts are the held-out "
        "'a photo of the digit k' for k = 0..9; '{n}' in a --template is replaced by 0..9 and '{word}' by zero..nine.",
    )
    cmd.add_argument("checkpoint", type=Path, help="a digit-captions CLIP run: its folder or its checkpoint.npz")
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("--index", type=non_negative_int, help="index of a test image (default 0)")
    which.add_argument("--image", type=Path, metavar="PNG", help="a picture of a digit instead (shrunk to 8x8)")
    prompts = cmd.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeat for several)")
    prompts.add_argument("--template", help="one prompt per digit, e.g. 'the number {word}' (default: the held-out "
                         "'a photo of the digit {n}')")  # fmt: skip


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..applications.digit_captions import (
        ZERO_SHOT_TEMPLATE,
        CaptionsConfig,
        caption,
        read_digit_png,
        tokenizer_from_json,
        zero_shot_probabilities,
    )
    from ..config import CLIPConfig
    from ..models.clip import CLIPModel
    from ..training.checkpoint import CheckpointError, config_from_json, read_checkpoint

    if args.checkpoint.is_dir():
        args.checkpoint = args.checkpoint / "checkpoint.npz"
    require_module(parser, "tokenizers", "the captions' tokenizer needs tokenizers: pip install tokenizers")
    try:
        ckpt = read_checkpoint(args.checkpoint)
        if not isinstance(ckpt.config, CLIPConfig) or ckpt.meta.get("train_state", {}).get("task") != "digit-captions":
            raise CheckpointError(
                f"checkpoint: {args.checkpoint} is not a digit-captions CLIP (train --task digit-captions writes one)"
            )
        cfg = config_from_json(CaptionsConfig, ckpt.meta.get("train_config"), f"checkpoint: {args.checkpoint}: meta")
        tokenizer = tokenizer_from_json(ckpt.meta.get("tokenizer"), f"checkpoint: {args.checkpoint}: meta.tokenizer")
    except (CheckpointError, ValueError) as exc:
        parser.error(str(exc))
    dtype = np.dtype(ckpt.meta["dtype"])
    model = CLIPModel(ckpt.config, dtype, np.random.default_rng(0))
    model.load_state_dict(ckpt.model_state)
    model.eval()
    if args.image is not None:
        if not args.image.is_file():
            parser.error(f"--image: {args.image} is not a file")
        try:
            x = read_digit_png(args.image, dtype)[None]  # (1, 1, 8, 8)
        except ValueError as exc:
            parser.error("--image: " + str(exc).removeprefix("path: "))
        heading, label = f"{args.image} (shrunk to 8x8)", None
    else:
        require_module(parser, "sklearn", "the digits come from scikit-learn: pip install 'numpy-transformer[vision]'")
        from ..applications.datasets import digits_dataset

        data = digits_dataset(cfg.seed, dtype=dtype)
        index = args.index or 0
        if index >= len(data.y_test):
            parser.error(f"--index: expected an index below {len(data.y_test)} (the test images), got {index}")
        x, label = data.x_test[index : index + 1], int(data.y_test[index])
        heading = f"test image {index}: a {label} (never seen in training)"
    if args.prompt:
        prompts = args.prompt
    else:
        template = args.template or ZERO_SHOT_TEMPLATE
        if "{n}" not in template and "{word}" not in template:
            parser.error(f"--template: expected '{{n}}' or '{{word}}' in it, got {template!r}")
        try:
            prompts = [caption(template, k) for k in range(10)]
        except (KeyError, IndexError, ValueError) as exc:
            parser.error(f"--template: {template!r} is not a template with only {{n}} and {{word}} ({exc!r})")
    try:
        probs = zero_shot_probabilities(model, tokenizer, x, prompts)[0]
    except ValueError as exc:
        parser.error(f"--prompt: {exc}")
    print(heading)
    width = max(len(p) for p in prompts)
    for i in np.argsort(-probs, kind="stable"):
        print(f"  {prompts[i]:<{width}}  {probs[i]:.4f}  {'#' * round(40 * probs[i])}")
    best = prompts[int(probs.argmax())]
    if label is not None and not args.prompt and len(prompts) == 10:
        verdict = "right" if int(probs.argmax()) == label else "wrong"
        print(f"predicted: {best!r} ({verdict})")
    else:
        print(f"predicted: {best!r}")
    sys.stdout.flush()
    return 0
