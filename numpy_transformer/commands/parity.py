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
        help="check every op and module against the PyTorch twin, finite differences and PyTorch's built-ins",
        description="Run every op and module on random inputs against its PyTorch twin (forward and every "
        "gradient), against central finite differences (float64) and, where the case names one, against the "
        "PyTorch built-in it matches (F.softmax, nn.LayerNorm, nn.MultiheadAttention, nn.GRU ...), and print "
        "the errors.",
    )
    parity.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parity.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the twin and built-ins run")
    parity.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random inputs")
    parity.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="run only these ops or modules: --only A B, or --only A --only B",
    )
    parity.add_argument(
        "--variants",
        action="store_true",
        help="under each row, one row per draw: its variant's fields and mask kind",
    )


def _errors(value: float | None, limit: float, width: int) -> str:
    """``value`` and its limit, or a dash where nothing was compared."""
    return f"{value:{width}.2e} {limit:8.0e}" if value is not None else f"{'-':>{width}} {'':8}"


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
    unknown = sorted(set(args.only or ()) - set(parity.CASES))
    if unknown:
        parser.error(f"--only: unknown name(s) {unknown}; known: {sorted(parity.CASES)}")

    limit = "(limit)"
    header = (
        f"{'op':<30} {'dtype':<8} {'forward':>9} {'vs twin':>9} {limit:>8} {'vs fin.diff':>12} {limit:>8} "
        f"{'vs built-in':>12} {limit:>8}  result"
    )
    print(f"parity on {args.device} (torch {torch.__version__}), seed {args.seed}")
    print("errors: max|ours - reference| / max(1, max|reference|), worst over every tensor and draw")
    print(header)
    print("-" * len(header))
    fd_limit = parity.tolerance("finite_differences", "float64")
    failures: list[str] = []
    worst: dict[str, dict[str, float]] = {}
    builtin_draws: dict[str, list] = {}  # name -> [compared, drawn, reasons for the others]
    for name, case in parity.CASES.items():
        if args.only and name not in args.only:
            continue
        for dtype in dtypes:
            tol = parity.tolerance(args.device, dtype)
            fwd = twin = 0.0
            fd = bi = None
            bad: list[str] = []
            lines: list[str] = []
            for dims in parity.default_dims(case):
                r = parity.run_case(case, dims, dtype, args.seed, device=args.device)
                fwd = max(fwd, r.forward.error)
                twin = max(twin, r.worst_twin.error if r.worst_twin else 0.0)
                if r.vs_finite_differences:
                    fd = max(fd or 0.0, r.worst_finite_differences.error)
                if r.vs_builtin:
                    bi = max(bi or 0.0, r.worst_builtin.error)
                if case.builtin is not None:
                    count = builtin_draws.setdefault(name, [0, 0, set()])
                    count[0] += bool(r.vs_builtin)
                    count[1] += 1
                    if r.builtin_skipped:
                        count[2].add(r.builtin_skipped)
                variant = parity.describe_variant(dims["variant"])
                label = ", ".join(part for part in (variant, f"mask={dims['mask']}") if part)
                bad += [f"{name} [{dtype}, {label}]: {f}" for f in r.failures()]
                if args.variants:
                    worst_fd, worst_bi = r.worst_finite_differences, r.worst_builtin
                    lines.append(
                        f"{'':<30} {'':<8} {r.forward.error:9.2e} "
                        f"{r.worst_twin.error if r.worst_twin else 0.0:9.2e} {'':8} "
                        f"{_errors(worst_fd and worst_fd.error, fd_limit, 12)} "
                        f"{_errors(worst_bi and worst_bi.error, tol, 12)}  "
                        f"{'FAIL' if r.failures() else 'pass'}  {label}"
                    )
            failures += bad
            w = worst.setdefault(dtype, {"forward": 0.0, "twin": 0.0, "fd": 0.0, "builtin": 0.0})
            w["forward"], w["twin"] = max(w["forward"], fwd), max(w["twin"], twin)
            w["fd"], w["builtin"] = max(w["fd"], fd or 0.0), max(w["builtin"], bi or 0.0)
            print(
                f"{name:<30} {dtype:<8} {fwd:9.2e} {twin:9.2e} {tol:8.0e} {_errors(fd, fd_limit, 12)} "
                f"{_errors(bi, tol, 12)}  {'FAIL' if bad else 'pass'}"
            )
            for line in lines:
                print(line)
    print()
    for dtype, w in worst.items():
        fd_text = f", vs finite differences {w['fd']:.2e}" if dtype == "float64" else ""
        print(
            f"worst {dtype}: forward {w['forward']:.2e}, gradients vs twin {w['twin']:.2e}{fd_text}, "
            f"vs built-ins {w['builtin']:.2e}"
        )
    if builtin_draws:
        print("\nvs built-in: the PyTorch built-in each row also ran in, our weights mapped in (draws compared/drawn)")
        for name, (compared, drawn, reasons) in builtin_draws.items():
            why = f"  skipped: {'; '.join(sorted(reasons))}" if reasons else ""
            print(f"  {name:<30} {parity.CASES[name].builtin.name:<32} {compared:>3}/{drawn:<3}{why}".rstrip())
    shown = [n for n in parity.CASES if not args.only or n in args.only]
    without = [n for n in shown if parity.CASES[n].builtin is None]
    if without:
        print(f"no built-in (reasons: parity_tests/test_builtins.py): {', '.join(without)}")
    if failures:
        print(f"\n{len(failures)} comparison(s) outside the contract:", file=sys.stderr)
        for line in failures:
            print("  " + line, file=sys.stderr)
        return 1
    print("all within the parity contract")
    return 0
