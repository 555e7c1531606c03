r"""Attention against sequence length: time and peak memory of forward + backward, standard vs tiled.

``python -m numpy_transformer benchmark --attention`` sweeps ``T = S`` (default 512 ... 8192) at
batch ``B``, ``H`` heads, head width ``D`` (default 1, 1, 64), float32, one BLAS thread, for

* ``standard``: :func:`~numpy_transformer.functional.attention.scaled_dot_product_attention_forward`
  and its backward -- the (B, H, T, S) scores, probabilities and their gradients, all materialised;
* ``flash``: :func:`~numpy_transformer.functional.flash_attention.flash_attention_forward` and its
  backward -- tiles of ``Bq x Bk``, one log-sum-exp per row kept;
* ``window``: the same tiled kernel with a sliding ``window`` (causal local attention, tiles
  outside the window skipped): cost and memory grow as ``T * window``;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` on the CPU, backward by autograd
  (measured by the command layer, the only one that may import torch; see
  :mod:`numpy_transformer.commands.benchmark`).

What is measured, per kernel and length (:func:`measure`):

* **time**: the median over ``repeats`` runs of forward + backward, after ``warmup`` runs;
* **peak** (NumPy kernels): ``tracemalloc``'s peak over one forward + backward, started after the
  inputs ``q, k, v, dout`` exist -- every array the op allocates, its output and the three
  gradients included (NumPy reports its buffers to ``tracemalloc``). For ``sdpa``, which allocates
  in C++ where ``tracemalloc`` cannot see, the peak is the sizes of the tensors autograd saves for
  the backward (``torch.autograd.graph.saved_tensors_hooks``, inputs not counted) plus the output
  and the three gradients: what the backward keeps, not the transients inside the kernels;
* **RSS** (every kernel, the same measure for all): the rise of the process's peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs``) over the first (warm-up) run. It counts
  pages actually touched, so memory the allocator kept from an earlier, larger run is not counted
  again: read it as a lower bound. ``nan`` where ``/proc`` does not allow the reset.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..functional.attention import scaled_dot_product_attention_backward, scaled_dot_product_attention_forward
from ..functional.flash_attention import DEFAULT_BLOCK_SIZE, flash_attention_backward, flash_attention_forward

NUMPY_KERNELS = ("standard", "flash", "window")
KERNELS = (*NUMPY_KERNELS, "sdpa")
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)
MIB = 2**20

# A kernel for the sweep: (q, k, v, dout) -> None, one forward and one backward.
Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class AttentionBenchConfig:
    """One sweep: the lengths ``T = S`` and everything held fixed."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    batch: int = 1  # B
    heads: int = 1  # H
    head_dim: int = 64  # D (= Dv)
    window: int = 256  # W of the sliding-window kernel
    block_size: int = DEFAULT_BLOCK_SIZE  # Bq = Bk of the tiled kernels
    causal: bool = False  # standard, flash and sdpa causal too (the window kernel always is)
    dtype: str = "float32"
    repeats: int = 3  # timed runs; the median is reported
    warmup: int = 1  # untimed runs first (the first one is the RSS measurement)
    threads: int = 1


@dataclass(frozen=True)
class AttentionBenchRow:
    kernel: str  # one of KERNELS
    T: int  # = S
    median_ms: float  # forward + backward
    peak_mib: float  # tracemalloc peak (NumPy); saved-for-backward + output + gradients (sdpa)
    rss_mib: float  # rise of the peak resident set over the first run (all kernels), a lower bound


def attention_inputs(config: AttentionBenchConfig, T: int, seed: int = 0) -> list[np.ndarray]:
    """``q, k, v, dout``, each (B, H, T, D) from a standard normal, in the sweep's dtype."""
    rng = np.random.default_rng(seed)
    shape = (config.batch, config.heads, T, config.head_dim)
    return [rng.standard_normal(shape, dtype=np.float32).astype(config.dtype, copy=False) for _ in range(4)]


def numpy_kernel(kind: str, config: AttentionBenchConfig) -> Kernel:
    """Forward + backward of one of :data:`NUMPY_KERNELS` as a callable on ``(q, k, v, dout)``."""
    if kind == "standard":

        def run(q, k, v, dout):
            _, cache = scaled_dot_product_attention_forward(q, k, v, is_causal=config.causal)
            scaled_dot_product_attention_backward(dout, cache)

        return run
    if kind not in ("flash", "window"):
        raise ValueError(f"kind: expected one of {NUMPY_KERNELS}, got {kind!r}")
    window = config.window if kind == "window" else None
    causal = config.causal if kind == "flash" else False  # the window implies causality

    def run_tiled(q, k, v, dout):
        _, cache = flash_attention_forward(
            q, k, v, is_causal=causal, block_size=config.block_size, window=window
        )  # cache: q, k, v, out and lse (B, H, T) only
        flash_attention_backward(dout, cache)

    return run_tiled


def _proc_kib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")  # pragma: no cover


def peak_rss_rise_mib(fn: Callable[[], object]) -> float:
    """Run ``fn``; return how far the peak resident set rose above the resident set before it, in MiB.

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``); ``nan`` where that fails.
    """
    try:
        before = _proc_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        fn()
        return math.nan
    fn()
    return max(_proc_kib("VmHWM") - before, 0.0) / 1024


def measure(
    kind: str, kernel: Kernel, inputs: Sequence[np.ndarray], config: AttentionBenchConfig, T: int, traced: bool
) -> AttentionBenchRow:
    """Time ``kernel(*inputs)`` (median of ``config.repeats``) and its memory (module docstring).

    ``traced``: take the tracemalloc peak (NumPy kernels); otherwise the row's ``peak_mib`` is
    filled in by the caller (torch's saved tensors) and left ``nan`` here.
    """
    rss = peak_rss_rise_mib(lambda: kernel(*inputs))  # the first (warm-up) run
    for _ in range(config.warmup - 1):
        kernel(*inputs)
    times = []
    for _ in range(config.repeats):
        start = time.perf_counter()
        kernel(*inputs)
        times.append(time.perf_counter() - start)
    peak = math.nan
    if traced:
        tracemalloc.start()
        try:
            kernel(*inputs)
            peak = tracemalloc.get_traced_memory()[1] / MIB
        finally:
            tracemalloc.stop()
    return AttentionBenchRow(kind, T, float(np.median(times) * 1000), peak, rss)


def run_sweep(
    config: AttentionBenchConfig,
    extra: dict[str, Callable[[Sequence[np.ndarray], int], AttentionBenchRow]] | None = None,
    kernels: Sequence[str] = NUMPY_KERNELS,
) -> list[AttentionBenchRow]:
    """Every kernel at every length, shortest first; ``extra`` adds measured kernels by name (``sdpa``).

    An ``extra`` entry takes ``(inputs, T)`` and returns its row. The caller pins the threads.
    """
    rows = []
    for T in config.lengths:
        inputs = attention_inputs(config, T)
        for kind in kernels:
            rows.append(measure(kind, numpy_kernel(kind, config), inputs, config, T, traced=True))
        for run in (extra or {}).values():
            rows.append(run(inputs, T))
        del inputs
    return rows


def score_array_mib(config: AttentionBenchConfig, T: int) -> float:
    """The size of one (B, H, T, T) score array in the sweep's dtype, in MiB."""
    return config.batch * config.heads * T * T * np.dtype(config.dtype).itemsize / MIB


def markdown_table(rows: Sequence[AttentionBenchRow], config: AttentionBenchConfig) -> str:
    """One line per length: the time and the memory of each kernel, and one score array for scale."""
    kernels = list(dict.fromkeys(r.kernel for r in rows))
    by = {(r.kernel, r.T): r for r in rows}
    head = (
        ["T = S", "one T x S array (MiB)"]
        + [f"{k} (ms)" for k in kernels]
        + [f"{k} peak (MiB)" for k in kernels]
        + [f"{k} RSS (MiB)" for k in kernels]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for T in dict.fromkeys(r.T for r in rows):
        cells = [str(T), f"{score_array_mib(config, T):.1f}"]
        cells += [f"{by[(k, T)].median_ms:.1f}" for k in kernels]
        cells += [f"{by[(k, T)].peak_mib:.2f}" for k in kernels]
        cells += [f"{by[(k, T)].rss_mib:.1f}" for k in kernels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(config: AttentionBenchConfig) -> str:
    """The sweep's fixed settings, one line."""
    c = config
    return (
        f"attention forward + backward, B {c.batch}, H {c.heads}, D {c.head_dim}, {c.dtype}, "
        f"{'causal' if c.causal else 'full (non-causal)'}, tiles {c.block_size}, window {c.window}, "
        f"{c.threads} thread(s), median of {c.repeats}"
    )


def plot(rows: Sequence[AttentionBenchRow], config: AttentionBenchConfig, path: str | Path) -> Path:
    """Write the log-log picture: time against T (left), peak memory against T (right).

    The RSS column stays in the table only: a lower bound, often 0 for the small buffers the allocator reuses.
    """
    from .plots import pyplot, save_figure

    if not rows:
        raise ValueError("rows: expected at least one AttentionBenchRow, got none")
    plt = pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    lengths = sorted({r.T for r in rows})
    for kernel in dict.fromkeys(r.kernel for r in rows):
        pts = sorted((r.T, r.median_ms, r.peak_mib) for r in rows if r.kernel == kernel)
        xs = [p[0] for p in pts]
        (line,) = ax_t.plot(xs, [p[1] for p in pts], "o-", label=kernel)
        label = f"{kernel} (saved for backward)" if kernel == "sdpa" else f"{kernel} (tracemalloc)"
        ax_m.plot(xs, [p[2] for p in pts], "o-", color=line.get_color(), label=label)
    ax_m.plot(lengths, [score_array_mib(config, T) for T in lengths], "k--", alpha=0.5, label="one T x S array")
    ax_t.set(xlabel="T = S", ylabel="ms (median)", title="time of forward + backward")
    ax_m.set(xlabel="T = S", ylabel="MiB", title="peak memory of forward + backward")
    for ax in (ax_t, ax_m):
        ax.set(xscale="log", yscale="log")
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.set_xticks([], minor=True)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(describe(config), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
