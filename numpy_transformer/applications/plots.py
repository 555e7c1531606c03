"""Pictures for the CLI and the walkthroughs (matplotlib, imported lazily, Agg backend).

Every picture is written by :func:`save_figure`: atomically, through a fresh temporary in the
target's folder, never through a symlink (``numpy_transformer.training.atomic``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..training.atomic import atomic_write


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, with an install hint when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the train / test extras
        raise ImportError("plots need matplotlib: pip install 'numpy-transformer[train]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG without one) and close it; return ``path``.

    On any error (an unknown format, a full disk) the previous file is unchanged and no temporary is left.
    """
    plt = pyplot()
    path = Path(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower() or "png", dpi=dpi))
    finally:
        plt.close(fig)
    return path


def smooth(values: list[float], window: int = 25) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    v = np.asarray(values, dtype=np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - n]) / n


def plot_loss_curves(
    history, path: str | Path, title: str = "", loss_label: str = "training loss (label-smoothed)"
) -> Path:
    """Training loss per step (raw and smoothed) and validation loss per evaluation, one colour per backend.

    ``history``: ``losses`` (backend -> loss per step) and ``evals`` (rows with ``step``, ``backend``,
    ``val_loss`` and, for the seq2seq tasks, ``val_sequence_accuracy``).
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"numpy": "tab:blue", "torch": "tab:orange"}
    for backend, losses in history.losses.items():
        steps = np.arange(1, len(losses) + 1)
        c = colors.get(backend)
        style = "-" if backend == "numpy" else "--"
        axes[0].plot(steps, losses, color=c, alpha=0.2, linewidth=0.8)
        axes[0].plot(steps, smooth(losses), color=c, linestyle=style, label=f"{backend} (smoothed)")
        evals = [e for e in history.evals if e["backend"] == backend]
        if evals:
            axes[1].plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o" + style, color=c,
                         label=f"{backend} val loss")  # fmt: skip
            if "val_sequence_accuracy" in evals[0]:
                axes[1].plot([e["step"] for e in evals], [e["val_sequence_accuracy"] for e in evals], "s:", color=c,
                             label=f"{backend} val sequence accuracy")  # fmt: skip
    axes[0].set(xlabel="step", ylabel=loss_label, title="training loss", yscale="log")
    axes[1].set(xlabel="step", title="validation")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_attention(
    weights: np.ndarray,
    rows: list[str],
    cols: list[str],
    path: str | Path,
    title: str = "",
    panel_titles: Sequence[str] | None = None,
) -> Path:
    """Heatmaps of attention weights (H, T, S): one panel per head, queries down, keys across.

    ``panel_titles``: one per panel (default ``head 0``, ``head 1``, ...).
    """
    plt = pyplot()
    H = weights.shape[0]
    side = 1.0 + 0.28 * max(len(rows), len(cols))  # square-ish panels, sized by the sequence lengths
    fig, axes = plt.subplots(1, H, figsize=(1.0 + side * H, side + 0.6), squeeze=False, layout="constrained")
    for h in range(H):
        ax = axes[0, h]
        im = ax.imshow(weights[h], vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(panel_titles[h] if panel_titles else f"head {h}", fontsize=9)
        ax.set_xlabel("source (keys)", fontsize=8)
        if h == 0:
            ax.set_ylabel("generated (queries)", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)
