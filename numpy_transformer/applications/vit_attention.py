"""What a trained ViT looks at: the class token's attention, attention rollout, the position embeddings.

Three views, each a few lines of NumPy over arrays the model already has:

* **The class token's attention.** Only the class token's final state reaches the classifier, so
  row 0 of each layer's attention (B, H, L, L) says which patches it gathers from, per layer and
  head: :func:`class_token_attention` returns it as a ``g x g`` map per layer and head.
* **Attention rollout** (Abnar & Zuidema, 2020). Layer ``l`` mixes tokens by its head-averaged
  attention ``Ā_l``, and the residual connection carries every token on unchanged, so one layer
  maps token states roughly by ``Â_l = rownorm(Ā_l + I)``. Chaining the layers,
  ``R = Â_L ··· Â_2 Â_1``, estimates how much each input patch contributes to each output token;
  row 0 of ``R`` (without the class token's own column) is drawn over the image
  (:func:`attention_rollout`). It is a heuristic: it ignores the values, the feed-forward blocks and
  the LayerNorms.
* **What the position embeddings learned.** The cosine similarity of patch ``p``'s position
  embedding with every other patch's, shown as a ``g x g`` map at ``p``'s place in a ``g x g`` grid
  of maps (figure 7 of the ViT paper): learned from data alone, nearby patches end up similar
  (:func:`position_similarity`).
"""

from __future__ import annotations

import math

import numpy as np


def _grid(n_patches: int) -> int:
    g = math.isqrt(n_patches)
    if g * g != n_patches:
        raise ValueError(f"attentions: expected a square grid of patches, got {n_patches} patches")
    return g


def _check_attentions(attentions: tuple[np.ndarray, ...] | list[np.ndarray], image: int) -> list[np.ndarray]:
    if not attentions:
        raise ValueError("attentions: expected one (B, H, L, L) array per layer, got none (a model without layers)")
    for i, a in enumerate(attentions):
        if not isinstance(a, np.ndarray) or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attentions[{i}]: expected an array (B, H, L, L), got {getattr(a, 'shape', a)!r}")
    B = attentions[0].shape[0]
    if not isinstance(image, int) or not 0 <= image < B:
        raise ValueError(f"image: expected an index in [0, {B}), got {image!r}")
    return [np.asarray(a[image], dtype=np.float64) for a in attentions]  # (H, L, L) each


def class_token_attention(attentions, image: int = 0) -> np.ndarray:
    """(layers, H, g, g): how much the class token attends to each patch, per layer and head (row 0, keys 1..N)."""
    per_layer = _check_attentions(attentions, image)
    g = _grid(per_layer[0].shape[-1] - 1)
    return np.stack([a[:, 0, 1:].reshape(-1, g, g) for a in per_layer])


def rollout_matrix(attentions, image: int = 0) -> np.ndarray:
    """``R = Â_L ··· Â_1`` (L, L), ``Â_l = rownorm(mean_heads(A_l) + I)``: each row a distribution over inputs."""
    per_layer = _check_attentions(attentions, image)
    n = per_layer[0].shape[-1]
    R = np.eye(n)
    for a in per_layer:
        mixed = a.mean(axis=0) + np.eye(n)  # the residual path carries each token on as it is
        R = (mixed / mixed.sum(axis=-1, keepdims=True)) @ R  # a later layer's mixing applies after the earlier
    return R


def attention_rollout(attentions, image: int = 0) -> np.ndarray:
    """(g, g): row 0 of :func:`rollout_matrix` over the patches, rescaled to sum to 1."""
    R = rollout_matrix(attentions, image)
    g = _grid(R.shape[0] - 1)
    row = R[0, 1:]
    return (row / row.sum()).reshape(g, g)


def position_similarity(pos_embed: np.ndarray) -> np.ndarray:
    """(g, g, g, g): ``s[a, b]`` is the (g, g) map of cosine similarities of patch (a, b)'s position embedding
    with every patch's. ``pos_embed``: (1, N + 1, C) or (N + 1, C), the class token's row first."""
    p = np.asarray(pos_embed, dtype=np.float64)
    p = p[0] if p.ndim == 3 else p
    if p.ndim != 2 or p.shape[0] < 2:
        raise ValueError(f"pos_embed: expected (1, N + 1, C) or (N + 1, C), got {np.shape(pos_embed)}")
    patches = p[1:]
    g = _grid(len(patches))
    unit = patches / np.linalg.norm(patches, axis=1, keepdims=True)
    return (unit @ unit.T).reshape(g, g, g, g)
