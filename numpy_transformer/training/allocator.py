"""Keep freed arrays' memory in the process, so that the next step does not page-fault it in again.

A training step allocates the same few hundred arrays every time, most of them between 64 KiB and
a few MiB, and frees them by the end of the backward. glibc's ``malloc`` serves a large block with
a fresh ``mmap`` and hands it back to the kernel on ``free`` (above its *mmap threshold*), and it
gives back the free top of its heap (above its *trim threshold*). Either way the next step's array
of that size lands on pages the kernel must find and zero again: one minor page fault per 4 KiB
touched. At the benchmark's size (``python -m numpy_transformer benchmark``) that is about 8 400
faults per float32 step, a quarter of the step's time: the step's median fell from 133 to 91 ms
when they went (``docs/pages/training.md``, Speed).

:func:`keep_freed_memory` raises both thresholds, so blocks up to ``max_block_bytes`` come from the
heap and freed memory stays there for the next step: the resident size stays at the step's peak
instead of falling back between steps, and nothing else changes (the same numbers, bit for bit).
It is a setting of the process, like the number of BLAS threads, so the commands call it, not the
ops; a script of your own may call it once at the start. PyTorch's CPU tensors come from the same
``malloc``, but its step faulted far less to begin with (about 550 times a float32 step for the
twin, 60 with the setting) and gains less.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>: free heap top above this many bytes goes back to the kernel
M_MMAP_THRESHOLD = -3  # <malloc.h>: blocks of at least this many bytes get an mmap of their own
LARGEST_THRESHOLD = 32 * 2**20  # glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
NEVER = 2**31 - 1  # mallopt takes an int


def keep_freed_memory(max_block_bytes: int = LARGEST_THRESHOLD) -> bool:
    """Ask glibc to serve blocks below ``max_block_bytes`` from its heap and never to trim the heap.

    Returns ``True`` when both settings took, ``False`` where there is no glibc ``mallopt`` (macOS,
    Windows, musl) or it refused: then nothing changed, and only speed depends on it.

    Setting the thresholds by hand turns off glibc's own adjustment of them, which raises the mmap
    threshold to the largest mmapped block freed so far and the trim threshold to twice that: with
    it, a step still gave back and faulted in thousands of pages.
    """
    if isinstance(max_block_bytes, bool) or not isinstance(max_block_bytes, int):
        raise TypeError(f"max_block_bytes: expected an int, got {type(max_block_bytes).__name__}")
    if not 0 < max_block_bytes <= LARGEST_THRESHOLD:
        raise ValueError(f"max_block_bytes: expected 1 .. {LARGEST_THRESHOLD} (glibc's limit), got {max_block_bytes}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success and 0 on error. musl's is a stub that returns 0.
    return mallopt(M_MMAP_THRESHOLD, max_block_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER) == 1
