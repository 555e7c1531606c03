"""The command line, one file per command: ``python -m numpy_transformer COMMAND`` (also ``numpy-transformer``).

The only layer of the NumPy package that may import the twin (``torch_transformer``), lazily, for the
commands that compare both halves (``parity``, ``train --backend torch`` / ``--compare``, ``benchmark``).

Every command exits 0 on success, 1 when what it checks fails (or a needed package is missing), and 2
with a usage message on a bad argument, never with a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import (
    attention,
    attention_cost,
    benchmark,
    decode,
    detect,
    explain,
    finetune,
    parity,
    train,
    transcribe,
    vit_attention,
    zero_shot,
)

COMMANDS = {"parity": parity, "train": train, "decode": decode, "benchmark": benchmark, "attention": attention,
            "finetune": finetune, "attention-cost": attention_cost, "vit-attention": vit_attention}  # fmt: skip
COMMANDS["zero-shot"] = zero_shot
COMMANDS["transcribe"] = transcribe
COMMANDS["detect"] = detect
COMMANDS["explain"] = explain

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m numpy_transformer",
        description="numpy-transformer: hand-written NumPy backward passes, checked against PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 and a usage message on a bad argument
    return COMMANDS[args.command].run(parser, args)


if __name__ == "__main__":
    sys.exit(main())
