"""What a pretrained BERT attends to: per-layer, per-head attention maps of one sentence.

Used by ``python -m numpy_transformer attention`` and ``walkthroughs/08_bert_attention.py``::

    from numpy_transformer.applications.pretrained import load_minilm
    from numpy_transformer.applications.inspect_attention import attention_maps, find_token, top_attended

    bert = load_minilm()
    maps = attention_maps(bert, "The animal didn't cross the street because it was too tired")
    it = find_token(maps.tokens, "it")
    top_attended(maps.weights[5].mean(axis=0)[it], maps.tokens, k=3)  # layer 5, mean over heads

Shape legend: ``L`` layers, ``H`` heads, ``S`` tokens of the sentence ([CLS] and [SEP] included).
Row ``t`` of a map holds how query token ``t`` spreads its attention over the keys; it sums to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .plots import pyplot, save_figure


@dataclass(frozen=True)
class AttentionMaps:
    sentence: str
    tokens: list[str]  # (S,) [CLS] ... [SEP]
    weights: np.ndarray  # (L, H, S, S) attention probabilities, queries down, keys across

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]


def attention_maps(pretrained, sentence: str, max_length: int | None = None) -> AttentionMaps:
    """Run one sentence through ``pretrained.model`` and collect every layer's attention probabilities.

    A sentence longer than the model's maximum raises ``ValueError`` (see
    :meth:`~numpy_transformer.applications.pretrained.PretrainedBert.tokenize`).
    """
    if not isinstance(sentence, str) or not sentence.strip():
        raise ValueError(f"sentence: expected a non-empty str, got {sentence!r}")
    ids, mask, types = pretrained.tokenize([sentence], max_length)
    _, cache = pretrained.model.forward(ids, mask, types)
    weights = np.stack([a[0] for a in cache.attentions])  # L x (H, S, S) -> (L, H, S, S)
    return AttentionMaps(sentence, pretrained.tokens(sentence), weights)


def is_special(token: str) -> bool:
    """[CLS], [SEP], [PAD], [UNK], [MASK]: the tokenizer's bracketed tokens."""
    return token.startswith("[") and token.endswith("]")


def find_token(tokens: Sequence[str], token: str, occurrence: int = 1) -> int:
    """Position of the ``occurrence``-th (1-based) ``token`` in ``tokens``, compared case-insensitively.

    The tokens are WordPiece pieces ("didn't" is ``didn ' t``): a word the tokenizer
    splits is found by its first piece. Raises ``ValueError`` listing the tokens when
    there is no such token.
    """
    want = token.strip().lower()
    positions = [i for i, t in enumerate(tokens) if t.lower() == want]
    if not positions:
        raise ValueError(f"token {token!r} is not in the sentence; its tokens are: {' '.join(tokens)}")
    if not 1 <= occurrence <= len(positions):
        raise ValueError(
            f"occurrence: {token!r} occurs {len(positions)} time(s), at positions {positions}; got {occurrence}"
        )
    return positions[occurrence - 1]


def top_attended(row: np.ndarray, tokens: Sequence[str], k: int = 3) -> list[tuple[int, str, float]]:
    """The ``k`` keys with the largest weight in one row (S,): ``(position, token, weight)``, largest first."""
    order = np.argsort(-row, kind="stable")[:k]
    return [(int(s), tokens[s], float(row[s])) for s in order]


def choose_head(
    maps: AttentionMaps, position: int, layer: int | None = None, head: int | None = None
) -> tuple[int, int, int]:
    """The (layer, head) where the token at ``position`` puts the most weight on one *other word*.

    "Other word": not itself, not its two neighbours, not a special token. Some heads
    look only at the previous or the next token and [CLS] / [SEP] collect much of the
    weight in every BERT (see :func:`head_pattern_scores`): those say where a token is,
    not what it relates to. A given ``layer`` or ``head`` is kept fixed; the search runs
    over the rest. Returns ``(layer, head, key position)``.
    """
    words = np.array([not is_special(t) for t in maps.tokens])
    words[max(position - 1, 0) : position + 2] = False
    if not words.any():  # a sentence of one or two words: fall back to any other token
        words = np.arange(len(maps.tokens)) != position
    rows = np.where(words, maps.weights[:, :, position, :], -1.0)  # (L, H, S), non-words out of the race
    if layer is not None:
        rows = np.where(np.arange(maps.n_layers)[:, None, None] == layer, rows, -2.0)
    if head is not None:
        rows = np.where(np.arange(maps.n_heads)[None, :, None] == head, rows, -2.0)
    best_layer, best_head, key = np.unravel_index(int(np.argmax(rows)), rows.shape)
    return int(best_layer), int(best_head), int(key)


# Each pattern: the weight that query t puts on one key, averaged over a sentence's queries.
PATTERNS = ("previous token", "next token", "itself", "[CLS]", "[SEP]")


def head_pattern_scores(maps_list: Sequence[AttentionMaps]) -> dict[str, np.ndarray]:
    """For each pattern of :data:`PATTERNS`, an (L, H) array: the mean weight on that key.

    Averaged over every query token of every sentence (for "previous token" the queries
    from position 1 on, for "next token" up to S - 2). A score near 1 means the head does
    that and nothing else.
    """
    sums = {name: [] for name in PATTERNS}
    for maps in maps_list:
        w = maps.weights  # (L, H, S, S)
        S = w.shape[-1]
        t = np.arange(S)
        sums["previous token"].append(w[:, :, t[1:], t[1:] - 1].mean(axis=-1))  # (L, H)
        sums["next token"].append(w[:, :, t[:-1], t[:-1] + 1].mean(axis=-1))
        sums["itself"].append(w[:, :, t, t].mean(axis=-1))
        sums["[CLS]"].append(w[:, :, :, 0].mean(axis=-1))
        sums["[SEP]"].append(w[:, :, :, S - 1].mean(axis=-1))
    return {name: np.mean(values, axis=0) for name, values in sums.items()}


# ---------------------------------------------------------------------------- pictures


def plot_attention_grid(maps: AttentionMaps, position: int, path: str | Path) -> Path:
    """Every layer x head full attention map (L rows, H columns); the row of ``position`` outlined."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    L, H, S = maps.n_layers, maps.n_heads, len(maps.tokens)
    fig, axes = plt.subplots(L, H, figsize=(1.25 * H + 1.5, 1.25 * L + 1.2), squeeze=False, layout="constrained")
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            im = ax.imshow(maps.weights[layer, head], vmin=0.0, vmax=1.0, cmap="viridis")
            ax.add_patch(Rectangle((-0.5, position - 0.5), S, 1, fill=False, edgecolor="red", linewidth=0.8))
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    fig.suptitle(
        f"{maps.sentence!r}: every head (queries down, keys across; red: the row of {maps.tokens[position]!r})",
        fontsize=10,
    )
    return save_figure(fig, path, dpi=90)


def plot_attention_focus(maps: AttentionMaps, position: int, layer: int, head: int, path: str | Path) -> Path:
    """Three panels: the full map of (layer, head) with token labels, that head's row for
    ``position`` as bars, and the row averaged over heads for every layer."""
    plt = pyplot()
    tokens, S = maps.tokens, len(maps.tokens)
    who = f"{tokens[position]!r} (position {position})"
    side = 2.0 + 0.32 * S
    fig, axes = plt.subplots(1, 3, figsize=(3 * side + 1.5, side), layout="constrained")
    ax = axes[0]
    im = ax.imshow(maps.weights[layer, head], vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(S), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(S), tokens, fontsize=8)
    ax.axhline(position - 0.5, color="red", linewidth=0.8)
    ax.axhline(position + 0.5, color="red", linewidth=0.8)
    ax.set(title=f"layer {layer}, head {head}", xlabel="key", ylabel="query")
    fig.colorbar(im, ax=ax, shrink=0.7)

    ax = axes[1]
    row = maps.weights[layer, head, position]
    ax.bar(range(S), row, color=["tab:red" if s == np.argmax(row) else "tab:blue" for s in range(S)])
    ax.set_xticks(range(S), tokens, rotation=90, fontsize=8)
    ax.set(ylim=(0, 1), ylabel="attention weight", title=f"{who}, layer {layer}, head {head}")

    ax = axes[2]
    mean_rows = maps.weights[:, :, position, :].mean(axis=1)  # (L, S)
    im = ax.imshow(mean_rows, vmin=0.0, vmax=max(float(mean_rows.max()), 1e-9), cmap="magma", aspect="auto")
    ax.set_xticks(range(S), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(maps.n_layers), [f"layer {i}" for i in range(maps.n_layers)], fontsize=8)
    ax.set_title(f"{who}, mean over the {maps.n_heads} heads")
    fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(repr(maps.sentence), fontsize=10)
    return save_figure(fig, path, dpi=100)


def format_report(maps: AttentionMaps, position: int, k: int = 3) -> list[str]:
    """The lines the CLI prints: the top-``k`` keys of ``position``, per layer (mean over heads), then per head."""
    tokens = maps.tokens
    who = tokens[position]

    def cells(row: np.ndarray) -> str:
        return "  ".join(f"{tok} {w:.2f}" for _, tok, w in top_attended(row, tokens, k))

    lines = [f"attention from {who!r} (position {position}), top {k} keys, averaged over the {maps.n_heads} heads:"]
    for layer in range(maps.n_layers):
        lines.append(f"  layer {layer}:  {cells(maps.weights[layer, :, position].mean(axis=0))}")
    lines.append(f"per head (top {k}):")
    for layer in range(maps.n_layers):
        for head in range(maps.n_heads):
            lines.append(f"  layer {layer} head {head:>2}:  {cells(maps.weights[layer, head, position])}")
    return lines
