"""What does each classic attention score cost? FLOPs counted by formula, time measured in NumPy.

The claim under test: additive (Bahdanau) attention costs more than
multiplicative (Luong) attention. For one decoder step (``T = 1``), batch ``B``,
source length ``S`` and widths ``Dq``, ``Dk``, ``A`` (the sweep sets all of them
to ``d``), counting a multiply-add as 2 FLOPs and an add or a ``tanh`` as 1
(``tanh`` really costs several -- one reason measured times differ from counts):

=========  ===========================================  ==============================
score      FLOPs of the scores                           of which depend on the step
=========  ===========================================  ==============================
additive   2·B·A·Dq + B·S·(2·A·Dk + 4·A)                 2·B·A·Dq + 4·B·S·A
concat     same as additive (W_c = [W_q | W_k])          same as additive
dot        2·B·S·D                                       all
general    2·B·Dq·Dk + 2·B·S·Dk                          all
=========  ===========================================  ==============================

Additive: ``W_q q`` (2·B·A·Dq), ``W_k k_s`` (2·B·S·A·Dk), the add (B·S·A), the
tanh (B·S·A) and the product with ``v_a`` (2·B·S·A). ``W_k k`` does not depend on
the decoder step, so a decoder that caches it pays only the last column per
step: then the additive score costs (2 + d/S) times the dot score (with A = D = d),
not ~A times. ``general``
projects the query (``q^T W``, once per step), not the ``S`` keys. Every score
is followed by the same masked softmax (counted as 4·B·S) and weighted sum
(2·B·S·Dv).

:func:`run_sweep` times the full NumPy ops (scores, softmax, context; forward,
and forward + backward) on one BLAS thread and returns :class:`CostRow`\\ s.
``additive_cached`` is the decoding step with ``W_k k`` computed beforehand
(:func:`~numpy_transformer.functional.additive_attention_scores`), forward only;
:func:`write_report` writes them as a markdown table and a PNG. Run
``python -m numpy_transformer attention-cost --out DIR``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..functional.classic_attention import (
    additive_attention_backward,
    additive_attention_forward,
    additive_attention_scores,
    luong_attention_backward,
    luong_attention_forward,
)
from ..functional.softmax import softmax_forward

SCORES = ("additive", "additive_cached", "concat", "dot", "general")


def score_flops(score: str, B: int, S: int, Dq: int, Dk: int | None = None, A: int | None = None) -> int:
    """FLOPs of the scores of one decoder step (module docstring); ``Dk`` and ``A`` default to ``Dq``."""
    Dk = Dq if Dk is None else Dk
    A = Dq if A is None else A
    if score in ("additive", "concat"):
        return 2 * B * A * Dq + B * S * (2 * A * Dk + 4 * A)
    if score == "additive_cached":
        return step_flops("additive", B, S, Dq, Dk, A)
    if score == "dot":
        if Dk != Dq:
            raise ValueError(f"Dk: the dot score needs Dk == Dq = {Dq}, got {Dk}")
        return 2 * B * S * Dq
    if score == "general":
        return 2 * B * Dq * Dk + 2 * B * S * Dk
    raise ValueError(f"score: expected one of {SCORES}, got {score!r}")


def step_flops(score: str, B: int, S: int, Dq: int, Dk: int | None = None, A: int | None = None) -> int:
    """FLOPs of the scores per decoder step when ``W_k k`` is computed once per source sentence."""
    Dk = Dq if Dk is None else Dk
    A = Dq if A is None else A
    if score in ("additive", "additive_cached", "concat"):
        return 2 * B * A * Dq + 4 * B * S * A
    return score_flops(score, B, S, Dq, Dk, A)


def attend_flops(B: int, S: int, Dv: int) -> int:
    """The part every score shares: masked softmax (4·B·S) and the weighted sum of values (2·B·S·Dv)."""
    return 4 * B * S + 2 * B * S * Dv


@dataclass(frozen=True)
class CostRow:
    score: str
    B: int
    S: int
    d: int  # Dq = Dk = Dv = A
    flops: int  # scores of one step (FLOPs)
    step_flops: int  # the same with W_k k cached
    total_flops: int  # scores + softmax + weighted sum
    forward_ms: float  # median wall time of the forward
    forward_backward_ms: float  # median wall time of forward + backward (NaN for additive_cached: no backward)


def _op(score: str, rng: np.random.Generator, B: int, S: int, d: int, dtype: np.dtype) -> Callable[[bool], None]:
    """A closure running one step of ``score``'s attention (forward, and backward when asked)."""
    q = rng.standard_normal((B, d)).astype(dtype)
    k = rng.standard_normal((B, S, d)).astype(dtype)
    v = rng.standard_normal((B, S, d)).astype(dtype)
    dout = rng.standard_normal((B, d)).astype(dtype)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(dtype)

    if score == "additive":
        w_q, w_k, v_a = weight(d, d), weight(d, d), weight(d)

        def run(backward: bool) -> None:
            _, cache = additive_attention_forward(q, k, v, w_q, w_k, v_a)
            if backward:
                additive_attention_backward(dout, cache)

        return run
    if score == "additive_cached":
        w_q, w_k, v_a = weight(d, d), weight(d, d), weight(d)
        keys_proj = k @ w_k.T  # (B, S, A): once per source sentence, outside the timed step

        def run(backward: bool) -> None:
            if backward:
                raise ValueError("additive_cached: forward only (decoding), there is no backward to time")
            weights, _ = softmax_forward(additive_attention_scores(q, keys_proj, w_q, v_a))  # (B, S)
            _ = weights[:, None, :] @ v  # (B, 1, Dv)

        return run
    weights = {"dot": {}, "general": {"w": weight(d, d)}, "concat": {"w_c": weight(d, 2 * d), "v_c": weight(d)}}
    kwargs = weights[score]

    def run(backward: bool) -> None:
        _, cache = luong_attention_forward(q, k, v, score, **kwargs)
        if backward:
            luong_attention_backward(dout, cache)

    return run


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: first-touch allocations, BLAS initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def run_sweep(
    S_values: Iterable[int] = (16, 64, 256),
    d_values: Iterable[int] = (32, 128, 512),
    B: int = 16,
    repeats: int = 5,
    scores: Iterable[str] = SCORES,
    dtype: np.dtype | type = np.float32,
    seed: int = 0,
) -> list[CostRow]:
    """Time every score at every (S, d) on one BLAS thread; one :class:`CostRow` each.

    The default sweep takes about 10 s on one core. Times are medians of
    ``repeats`` runs after one warm-up run.
    """
    from threadpoolctl import threadpool_limits

    scores = tuple(scores)
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise ValueError(f"scores: expected names from {SCORES}, got {unknown}")
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    rows = []
    with threadpool_limits(1):
        for d in d_values:
            for S in S_values:
                for score in scores:
                    run = _op(score, rng, B, S, d, dtype)
                    rows.append(
                        CostRow(
                            score=score,
                            B=B,
                            S=S,
                            d=d,
                            flops=score_flops(score, B, S, d),
                            step_flops=step_flops(score, B, S, d),
                            total_flops=score_flops(score, B, S, d) + attend_flops(B, S, d),
                            forward_ms=_median_ms(lambda run=run: run(False), repeats),
                            forward_backward_ms=(
                                float("nan")
                                if score == "additive_cached"
                                else _median_ms(lambda run=run: run(True), repeats)
                            ),
                        )
                    )
    return rows


def _ms(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def markdown_table(rows: list[CostRow]) -> str:
    """One line per (d, S, score); times relative to the dot score at the same size."""
    dot = {(r.S, r.d): r for r in rows if r.score == "dot"}
    lines = [
        "| d | S | score | score MFLOP | per step, W_k k cached | total MFLOP | fwd ms | fwd+bwd ms | fwd / dot |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = dot.get((r.S, r.d))
        ratio = f"{r.forward_ms / ref.forward_ms:.1f}x" if ref else "-"
        lines.append(
            f"| {r.d} | {r.S} | {r.score} | {r.flops / 1e6:.3f} | {r.step_flops / 1e6:.3f} | "
            f"{r.total_flops / 1e6:.3f} | {r.forward_ms:.3f} | {_ms(r.forward_backward_ms)} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: list[CostRow], directory: str | Path, name: str = "attention_cost") -> tuple[Path, Path]:
    """Write ``<name>.md`` (the table) and ``<name>.png`` (time vs S and vs d); return both paths."""
    from ..training.atomic import atomic_write_text
    from .plots import pyplot, save_figure

    if not rows:
        raise ValueError("rows: expected at least one CostRow, got none")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    B = rows[0].B
    md = directory / f"{name}.md"
    atomic_write_text(
        md,
        f"# Classic attention: cost per decoder step (B = {B}, Dq = Dk = Dv = A = d)\n\n"
        "FLOPs counted by the formulas of `numpy_transformer.applications.attention_cost`; times are medians "
        "of the NumPy ops on one BLAS thread.\n\n" + markdown_table(rows),
    )
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    d_max = max(r.d for r in rows)
    S_max = max(r.S for r in rows)
    for score in dict.fromkeys(r.score for r in rows):
        by_S = sorted((r.S, r.forward_backward_ms, r.forward_ms) for r in rows if r.score == score and r.d == d_max)
        by_d = sorted((r.d, r.forward_backward_ms, r.forward_ms) for r in rows if r.score == score and S_max == r.S)
        for ax, pts in ((axes[0], by_S), (axes[1], by_d)):
            (line,) = ax.plot([p[0] for p in pts], [p[2] for p in pts], "x--", alpha=0.7, label=f"{score} fwd")
            if not any(np.isnan(p[1]) for p in pts):
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], "o-", color=line.get_color(), label=f"{score} fwd+bwd"
                )
    axes[0].set(xlabel="source length S", ylabel="ms (median)", title=f"time vs S (d = {d_max})")
    axes[1].set(xlabel="hidden size d (= A)", ylabel="ms (median)", title=f"time vs d (S = {S_max})")
    for ax, ticks in ((axes[0], sorted({r.S for r in rows})), (axes[1], sorted({r.d for r in rows}))):
        ax.set(xscale="log", yscale="log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xticks([], minor=True)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"classic attention, one decoder step, B = {B}, NumPy, 1 thread")
    fig.tight_layout()
    png = directory / f"{name}.png"
    save_figure(fig, png, dpi=110)
    return md, png
