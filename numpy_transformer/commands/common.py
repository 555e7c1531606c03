"""What every command shares: argparse types for counts, and pinning BLAS threads."""

from __future__ import annotations

import argparse
import sys


def _int_at_least(low: int, what: str):
    """An argparse type for an integer >= ``low``; argparse turns its error into exit status 2 and a usage line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value

    parse.__name__ = f"{what.replace('-', '_')}_int"  # argparse names the type in its messages
    return parse


positive_int = _int_at_least(1, "positive")
non_negative_int = _int_at_least(0, "non-negative")


def limit_threads(n: int) -> None:
    """Pin BLAS (and torch, if loaded) to ``n`` threads: on small matrices extra threads only cost."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
