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
    history,
    path: str | Path,
    title: str = "",
    loss_label: str = "training loss (label-smoothed)",
    held_out: str = "validation",
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
                         label=f"{backend} {held_out} loss")  # fmt: skip
            if "val_sequence_accuracy" in evals[0]:
                axes[1].plot([e["step"] for e in evals], [e["val_sequence_accuracy"] for e in evals], "s:", color=c,
                             label=f"{backend} val sequence accuracy")  # fmt: skip
    axes[0].set(xlabel="step", ylabel=loss_label, title="training loss", yscale="log")
    axes[1].set(xlabel="step", title=held_out)
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


def plot_confusion_matrix(matrix: np.ndarray, path: str | Path, title: str = "") -> Path:
    """``matrix[i, j]``: images of class ``i`` predicted as ``j``; the diagonal is what is right."""
    plt = pyplot()
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(5.2, 4.6), layout="constrained")
    im = ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                dark = matrix[i, j] > matrix.max() / 2
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path, dpi=110)


def plot_vit_attention(
    image: np.ndarray, cls_attention: np.ndarray, rollout: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """The image, the class token's attention per layer (rows) and head (columns), and the rollout over the image.

    ``image`` (I, I); ``cls_attention`` (layers, H, g, g); ``rollout`` (g, g). Each map is drawn over the
    image's extent, nearest-neighbour, so a patch's weight covers its pixels.
    """
    plt = pyplot()
    n_layers, H = cls_attention.shape[:2]
    fig, axes = plt.subplots(n_layers + 1, H + 1, figsize=(1.6 * (H + 1), 1.6 * (n_layers + 1) + 0.4),
                             squeeze=False, layout="constrained")  # fmt: skip
    extent = (0, image.shape[1], image.shape[0], 0)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].imshow(image, cmap="gray_r", extent=extent)
    axes[0, 0].set_title("image", fontsize=8)
    axes[0, 1].imshow(image, cmap="gray_r", extent=extent)
    axes[0, 1].imshow(rollout, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
    axes[0, 1].set_title("rollout", fontsize=8)
    for ax in axes[0, 2:]:
        ax.axis("off")
    for layer in range(n_layers):
        mean = cls_attention[layer].mean(axis=0)
        axes[layer + 1, 0].imshow(mean, cmap="viridis", extent=extent, interpolation="nearest")
        axes[layer + 1, 0].set_ylabel(f"layer {layer}", fontsize=8)
        axes[layer + 1, 0].set_title("mean of heads" if layer == 0 else "", fontsize=8)
        for h in range(H):
            ax = axes[layer + 1, h + 1]
            ax.imshow(cls_attention[layer, h], cmap="viridis", extent=extent, interpolation="nearest")
            if layer == 0:
                ax.set_title(f"head {h}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)


def plot_position_similarity(similarity: np.ndarray, path: str | Path, title: str = "") -> Path:
    """``similarity`` (g, g, g, g) from ``vit_attention.position_similarity``: a g x g grid of g x g maps."""
    plt = pyplot()
    g = similarity.shape[0]
    fig, axes = plt.subplots(g, g, figsize=(1.0 * g + 1.2, 1.0 * g + 0.5), squeeze=False, layout="constrained")
    for a in range(g):
        for b in range(g):
            ax = axes[a, b]
            im = ax.imshow(similarity[a, b], cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)
