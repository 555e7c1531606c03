"""Command line: ``python -m numpy_transformer parity`` (also installed as ``numpy-transformer``).

``parity`` runs every op and module of the package on random inputs against its
PyTorch twin and against central finite differences and prints one row per op
and dtype: the worst forward error, the worst gradient error vs the twin and vs
finite differences (float64 only), and pass/fail against the parity contract.
It exits 1 if anything fails, and 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m numpy_transformer",
        description="numpy-transformer: hand-written NumPy backward passes, checked against PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parity = sub.add_parser(
        "parity",
        help="check every op and module against the PyTorch twin and finite differences",
        description="Run every op and module on random inputs against its PyTorch twin (forward and every "
        "gradient) and against central finite differences (float64), and print the errors.",
    )
    parity.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parity.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the twin runs")
    parity.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random inputs")
    return parser


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits with status 2 and a usage message on a bad argument
    if args.command == "parity":
        return _parity(parser, args)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _parity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        import torch

        from torch_transformer import parity
    except ImportError as exc:
        print(
            f"parity needs PyTorch (pip install 'numpy-transformer[torch]'): {exc}",
            file=sys.stderr,
        )
        return 1
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available here")
        parity.enable_exact_cuda_matmul()
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)

    limit = "(limit)"
    header = f"{'op':<30} {'dtype':<8} {'forward':>9} {'vs twin':>9} {limit:>8} {'vs fin.diff':>12} {limit:>8}  result"
    print(f"parity on {args.device} (torch {torch.__version__}), seed {args.seed}")
    print("errors: max|ours - reference| / max(1, max|reference|), worst over every tensor and draw")
    print(header)
    print("-" * len(header))
    failures: list[str] = []
    worst: dict[str, tuple[float, float, float]] = {}
    for name, case in parity.CASES.items():
        for dtype in dtypes:
            fwd = twin = fd = 0.0
            has_fd = False
            bad: list[str] = []
            for dims in parity.default_dims(case):
                result = parity.run_case(case, dims, dtype, args.seed, device=args.device)
                fwd = max(fwd, result.forward.error)
                twin = max(twin, result.worst_twin.error if result.worst_twin else 0.0)
                if result.vs_finite_differences:
                    has_fd = True
                    fd = max(fd, result.worst_finite_differences.error)
                bad += [f"{name} [{dtype}, {dims['variant']}, mask={dims['mask']}]: {f}" for f in result.failures()]
            failures += bad
            w = worst.get(dtype, (0.0, 0.0, 0.0))
            worst[dtype] = (max(w[0], fwd), max(w[1], twin), max(w[2], fd))
            tol = parity.tolerance(args.device, dtype)
            fd_text = (
                f"{fd:12.2e} {parity.tolerance('finite_differences', 'float64'):8.0e}"
                if has_fd
                else f"{'-':>12} {'':8}"
            )
            print(f"{name:<30} {dtype:<8} {fwd:9.2e} {twin:9.2e} {tol:8.0e} {fd_text}  {'FAIL' if bad else 'pass'}")
    print()
    for dtype, (fwd, twin, fd) in worst.items():
        fd_text = f", vs finite differences {fd:.2e}" if dtype == "float64" else ""
        print(f"worst {dtype}: forward {fwd:.2e}, gradients vs twin {twin:.2e}{fd_text}")
    if failures:
        print(f"\n{len(failures)} comparison(s) outside the contract:", file=sys.stderr)
        for line in failures:
            print("  " + line, file=sys.stderr)
        return 1
    print("all within the parity contract")
    return 0


if __name__ == "__main__":
    sys.exit(main())
