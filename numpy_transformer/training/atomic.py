"""Writing a file so that a reader sees either the old file or the complete new one, never half of one.

Every file the package writes (checkpoints, ``history.json``, the PNGs and reports) goes through
:func:`atomic_write`:

1. a *fresh* temporary is created in the target's folder with ``O_CREAT | O_EXCL | O_NOFOLLOW``
   and mode 0600, under a random name (``.<name>.<16 hex>.tmp``): a file or symlink planted at any
   name makes the open fail and another name is drawn, so nothing is ever written through a link;
2. the content is written, flushed and ``fsync``-ed;
3. the temporary gets the usual permissions (``0666 & ~umask``) and ``os.replace`` puts it in
   place atomically: a symlink at the target itself is replaced, never followed;
4. the folder is ``fsync``-ed, so the rename survives a crash.

On any error (a full disk, a failing writer, Ctrl-C) the temporary is removed, the previous file
is left untouched, and the error is an ``OSError`` naming the target (a writer's own exception
is re-raised as it is).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
ATTEMPTS = 100  # random names tried before giving up (each clash means someone planted a file there)


def temporary_name(path: Path) -> Path:
    """A random sibling of ``path`` for its temporary: ``.<name>.<16 hex digits>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _umask() -> int:
    # The only portable way to read the umask is to set it and put it back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_fresh(path: Path) -> tuple[int, Path]:
    for _ in range(ATTEMPTS):
        tmp = temporary_name(path)
        try:
            return os.open(tmp, _FLAGS, 0o600), tmp
        except FileExistsError:
            continue  # something is already there (perhaps a planted symlink): never reuse it
    raise FileExistsError(f"{path}: could not create a fresh temporary next to it after {ATTEMPTS} attempts")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a fresh temporary, which then replaces ``path``.

    Returns ``path``. The folder must exist. Raises ``OSError`` naming ``path`` when the
    temporary cannot be created, written, synced or renamed (e.g. ``ENOSPC``, a read-only
    folder, ``path`` is a folder); the previous file, if any, is unchanged and no temporary is left.
    """
    path = Path(path)
    try:
        fd, tmp = _open_fresh(path)
    except OSError as exc:
        why = exc.strerror or exc
        raise OSError(exc.errno, f"{path}: cannot create a temporary file in {path.parent} ({why})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # OSError(errno, ...) is again the errno's subclass (PermissionError, ...)
            why = f"{path}: could not write it ({exc.strerror or exc}); the previous file, if any, is unchanged"
            raise OSError(exc.errno, why) from exc
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; folders that cannot be opened or synced (some file systems) are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text`` in ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))
