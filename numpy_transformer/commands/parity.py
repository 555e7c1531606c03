"""``parity``: every registered op and module against its PyTorch twin, finite differences and built-ins.

Imports the twin, lazily: the commands layer is the one place of the NumPy package allowed to.
"""

from __future__ import annotations

import argparse
import sys

from .common import non_negative_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    parity = sub.add_parser(
        "parity",
        help="check every op and module against the PyTorch twin and finite differences",
        description="Run every op and module on random inputs against its PyTorch twin (forward and every "
        "gradient) and against central finite differences (float64), and print the errors.",
    )
    parity.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parity.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the twin runs")
    parity.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random inputs")
    parity.add_argument("--only", action="append", metavar="NAME", help="run only this op or module (repeatable)")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
    unknown = sorted(set(args.only or ()) - set(parity.CASES))
    if unknown:
        parser.error(f"--only: unknown name(s) {unknown}; known: {sorted(parity.CASES)}")
    for name, case in parity.CASES.items():
        if args.only and name not in args.only:
            continue
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
