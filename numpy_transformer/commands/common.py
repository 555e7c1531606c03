"""What every command shares: argparse types, checks of output paths and optional packages, BLAS threads.

The checks run at the start of a command, before any work: a bad path or a missing package is exit status 2
with a usage line naming the argument, never a traceback after minutes of training.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import signal
import sys
import tempfile
from pathlib import Path


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


def int_in_range(low: int, high: int):
    """An argparse type for an integer in ``[low, high]``; the message names both bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value

    parse.__name__ = f"int_in_{low}_{high}"
    return parse


def finite_float(text: str) -> float:
    """An argparse type for a finite float: ``nan`` and ``inf`` are exit status 2."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def probability(text: str) -> float:
    """An argparse type for a dropout probability in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def _probe_writable(parser: argparse.ArgumentParser, flag: str, path: Path, folder: Path) -> None:
    """Create and remove a file in ``folder``: the only test that holds for root and other users alike."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as exc:
        parser.error(f"{flag}: {path}: cannot write in {folder} ({exc.strerror or exc})")
    os.close(fd)
    os.unlink(probe)


def check_output_dir(parser: argparse.ArgumentParser, flag: str, path: Path) -> Path:
    """Check that ``path`` is, or can be made, a writable folder; exit status 2 naming ``flag`` if not.

    An existing file, a file among its parents or a folder where nothing can be written is an error; missing
    folders are fine (the command creates them). Nothing is created here.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        parser.error(f"{flag}: {path} exists and is not a folder")
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            parser.error(f"{flag}: {path}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        parser.error(f"{flag}: {path}: {existing} is a file, not a folder")
    _probe_writable(parser, flag, path, existing)
    return path


def check_output_file(parser: argparse.ArgumentParser, flag: str, path: Path, suffix: str) -> Path:
    """Check that a file ``path`` ending in ``suffix`` (e.g. ``.png``) can be written into an existing folder.

    Exit status 2 naming ``flag`` for another extension, a folder (or other non-file) at ``path``, a missing
    parent folder or one where nothing can be written. An existing file is overwritten.
    """
    path = Path(path)
    if path.suffix.lower() != suffix.lower():
        parser.error(f"{flag}: expected a {suffix} file, got {str(path)!r}")
    if path.exists() and not path.is_file():
        parser.error(f"{flag}: {path} exists and is not a file")
    folder = path.parent
    if not folder.exists():
        parser.error(f"{flag}: {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        parser.error(f"{flag}: {path}: {folder} is not a folder")
    _probe_writable(parser, flag, path, folder)
    return path


def is_installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (so a start-up check costs nothing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def require_module(parser: argparse.ArgumentParser, module: str, hint: str) -> None:
    """Exit status 2 with the install ``hint`` unless ``module`` is installed: check at start-up, not after the work."""
    if not is_installed(module):
        parser.error(f"{hint} (the package {module!r} is not installed)")


def limit_threads(n: int) -> None:
    """Pin BLAS (and torch, if loaded) to ``n`` threads: on small matrices extra threads only cost."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


class StopOnSignal:
    """While active, the first SIGINT (Ctrl-C) or SIGTERM asks a long run to stop instead of killing it.

    The handler only records the signal; the training loop asks ``stop()`` after each step, saves a
    checkpoint and returns, and the command exits with ``exit_code`` (128 + the signal number: 130 for
    SIGINT, 143 for SIGTERM, what a shell reports for a process the signal killed). A second signal
    while stopping is reported and otherwise ignored, so it cannot cut the checkpoint in half (the
    writer is atomic anyway). On leaving, the previous handlers are put back.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            print(f"\n{name}: finishing this step, then writing a checkpoint", file=sys.stderr, flush=True)
        else:
            print(f"\n{name}: already stopping; the checkpoint is being written", file=sys.stderr, flush=True)

    def stop(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 0 if self.signum is None else 128 + self.signum
