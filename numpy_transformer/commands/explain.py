"""``explain OP``: one op's backward, intermediate by intermediate, next to autograd's gradient of the same quantity.

Runs the NumPy backward of a registered op or module on a small seeded draw while recording the steps
it declares with ``gradient_at`` (``numpy_transformer.functional.intermediates``), runs the PyTorch twin
with the same quantities exposed, and prints each step with its shape, both norms and the verdict, then
the final gradients against autograd and central finite differences. ``--html FILE`` writes the same as a
self-contained page (formulas, table, heatmaps). Imports the twin, lazily: the commands layer is the one
place of the NumPy package allowed to.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from .common import check_output_file, non_negative_int

SHAPE_SYNTAX = "KEY=VALUE[,KEY=VALUE...], e.g. B=2,T=3 or mask=causal"


def parse_shape(text: str) -> dict[str, int | str]:
    """``"B=2,T=3,mask=causal"`` -> ``{"B": 2, "T": 3, "mask": "causal"}``; sizes are integers, ``mask`` a name.

    Raises ``argparse.ArgumentTypeError`` (exit status 2 with a usage line) on a malformed entry; which keys
    an op accepts is checked once the op is known.
    """
    sizes: dict[str, int | str] = {}
    for entry in text.split(","):
        key, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"expected {SHAPE_SYNTAX}, got {text!r}")
        if key in sizes:
            raise argparse.ArgumentTypeError(f"size {key!r} given twice in {text!r}")
        if key == "mask":
            sizes[key] = value
            continue
        try:
            sizes[key] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}: expected an integer, got {value!r}") from None
    return sizes


def add_parser(sub: argparse._SubParsersAction) -> None:
    explain = sub.add_parser(
        "explain",
        help="one op's backward, step by step, next to autograd's gradient of each intermediate",
        description="Run the NumPy backward of one registered op or module on a small seeded input and print, in "
        "the order the backward computes them, the gradient at each named forward quantity (its shape, the "
        "norm of ours and of the PyTorch twin's autograd value, and the verdict: exact, close with the "
        "relative error, or differs), then the final gradients against autograd and central finite "
        "differences (float64). Exit status 0 when everything is within the parity contract, 1 otherwise.",
    )
    explain.add_argument("op", nargs="?", metavar="OP", help="a registered op or module; see --list")
    explain.add_argument("--list", action="store_true", help="list the ops and modules explain covers, and exit")
    explain.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    explain.add_argument(
        "--shape", type=parse_shape, default={}, metavar="SIZES", help=f"override the draw's sizes: {SHAPE_SYNTAX}"
    )
    explain.add_argument("--seed", type=non_negative_int, default=0, help="seed of the draw and the upstream gradient")
    explain.add_argument(
        "--variant", type=non_negative_int, default=0, metavar="N", help="the case's N-th variant (see --list)"
    )
    explain.add_argument("--html", type=Path, metavar="FILE", help="also write the explanation as a .html page")


def _list(explain_module) -> int:
    cases = explain_module.explainable()
    print(f"{'name':<30} {'kind':<7} {'variants':>8}  intermediates")
    for name, case in cases.items():
        reason = explain_module.NO_INTERMEDIATE.get(name)
        print(f"{name:<30} {case.kind:<7} {len(case.variants):>8}  {'none: ' + reason if reason else 'declared'}")
    print(f"\n{len(cases)} ops and modules; python -m numpy_transformer explain OP")
    return 0


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.html is not None:
        check_output_file(parser, "--html", args.html, ".html")
    try:
        from torch_transformer import explain as explain_module
    except ImportError as exc:
        print(f"explain needs PyTorch (pip install 'numpy-transformer[torch]'): {exc}", file=sys.stderr)
        return 1
    if args.list:
        return _list(explain_module)
    cases = explain_module.explainable()
    if args.op is None:
        parser.error("explain: give an OP (explain --list lists them)")
    if args.op not in cases:
        close = difflib.get_close_matches(args.op, list(cases), n=5, cutoff=0.5)
        lowered = [n for n in cases if n.lower() == args.op.lower() and n not in close]
        hint = f"; did you mean {', '.join(lowered + close)}?" if lowered or close else ""
        parser.error(f"explain: unknown op {args.op!r}{hint} (explain --list lists all {len(cases)})")
    case = cases[args.op]
    try:
        explain_module.check_sizes(case, args.shape)
    except ValueError as exc:
        parser.error(f"--shape: {exc}")
    if args.variant >= len(case.variants):
        parser.error(f"--variant: {args.op} has {len(case.variants)} variant(s), 0 to {len(case.variants) - 1}")

    result = explain_module.explain(args.op, args.dtype, args.shape, args.seed, args.variant)
    print(explain_module.format_text(result))
    if args.html is not None:
        from ..training.atomic import atomic_write

        page = explain_module.explain_html(args.op, fragment=False, explanation=result)
        atomic_write(args.html, lambda f: f.write(page.encode("utf-8")))
        print(f"wrote {args.html}")
    return 1 if result.failures() else 0
