"""``attention-cost``: FLOPs and measured NumPy time of each classic attention score, as a table and a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    cost = sub.add_parser(
        "attention-cost",
        help="time the classic attention scores (additive, dot, general, concat) against their FLOP counts",
        description="Count the FLOPs of one decoder step of each classic attention score by formula, time the NumPy "
        "ops (forward, and forward + backward) on one BLAS thread over a sweep of source lengths and widths, and "
        "write attention_cost.md and attention_cost.png.",
    )
    cost.add_argument("--out", type=Path, default=Path("."), help="folder for attention_cost.md and .png")
    cost.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per point (the median is kept)")
    cost.add_argument("--dtype", choices=("float32", "float64"), default="float32")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..applications.attention_cost import markdown_table, run_sweep, write_report

    rows = run_sweep(repeats=args.repeats, dtype=args.dtype)
    md, png = write_report(rows, args.out)
    print(markdown_table(rows))
    print(f"wrote {md} and {png}")
    return 0
