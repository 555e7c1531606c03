"""Parity case for flash-style attention: tiles of every size, causal, masked and sliding-window.

The NumPy side is the tiled kernel (``flash_attention_forward`` / ``_backward``); the twin is the
plain attention formula (``torch_transformer.functional.flash_attention``) and the built-in is
``F.scaled_dot_product_attention`` with the same boolean mask. The variants choose the tile
sizes: with the sizes the tests draw (T and S from 1 to 5) they divide T and S in some draws and
leave a shorter last block in others. Registered on import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as TorchF

import numpy_transformer.functional as F

from .. import functional as TF
from .registry import Builtin, Case, draw_mask, leaf_gradients, normal, register


@dataclass(frozen=True)
class FlashVariant:
    block_q: int  # queries per tile
    block_k: int  # keys per tile
    window: int | None  # sliding window (causal local attention), None: none
    scale: float | None  # None: 1/sqrt(D)


def _draw_flash(rng, dtype, d):
    B, H, T, S, D = d["B"], d["H"], d["T"], d["S"], d["D"]
    mask, _ = draw_mask(rng, d["mask"], B, H, T, S)
    arrays = {
        "q": normal(rng, (B, H, T, D), dtype),
        "k": normal(rng, (B, H, S, D), dtype),
        "v": normal(rng, (B, H, S, D + 1), dtype),  # Dv != D on purpose
    }
    if mask is not None:
        arrays["mask"] = mask
    return arrays


def _np_flash(a, d):
    v = d["variant"]
    out, cache = F.flash_attention_forward(
        a["q"],
        a["k"],
        a["v"],
        mask=a.get("mask"),
        is_causal="causal" in d["mask"],
        scale=v.scale,
        block_size=(v.block_q, v.block_k),
        window=v.window,
    )

    def backward(dout):
        dq, dk, dv = F.flash_attention_backward(dout, cache)
        return {"q": dq, "k": dk, "v": dv}

    return out, backward


def _twin_flash(t, d):
    v = d["variant"]
    out = TF.flash_attention(
        t["q"], t["k"], t["v"], mask=t.get("mask"), is_causal="causal" in d["mask"], scale=v.scale, window=v.window
    )
    return out, t


def _builtin_flash(t, d):
    """``F.scaled_dot_product_attention`` with one boolean mask: the draw's, causal and window folded in."""
    q, k, v = t["q"], t["k"], t["v"]
    T, S = q.shape[-2], k.shape[-2]
    variant = d["variant"]
    mask = t.get("mask")
    positional = None
    if variant.window is not None:
        positional = TF.sliding_window_mask(T, variant.window, S, device=q.device)
    elif "causal" in d["mask"]:
        positional = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()  # top-left aligned, as ours
    if positional is not None:
        mask = positional if mask is None else mask & positional
    out = TorchF.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=variant.scale)
    return out, leaf_gradients(t)


register(
    Case(
        name="flash_attention",
        kind="op",
        draw=_draw_flash,
        differentiable=lambda d: ("q", "k", "v"),
        numpy=_np_flash,
        torch=_twin_flash,
        variants=(
            FlashVariant(block_q=1, block_k=1, window=None, scale=None),  # every tile one score
            FlashVariant(block_q=2, block_k=2, window=None, scale=None),
            FlashVariant(block_q=3, block_k=2, window=None, scale=0.5),
            FlashVariant(block_q=64, block_k=64, window=None, scale=None),  # one tile holds everything
            FlashVariant(block_q=1, block_k=2, window=1, scale=None),  # each query sees itself only
            FlashVariant(block_q=2, block_k=3, window=2, scale=None),
            FlashVariant(block_q=3, block_k=1, window=3, scale=None),
        ),
        uses=("B", "H", "T", "S", "D", "mask"),
        builtin=Builtin(name="F.scaled_dot_product_attention", run=_builtin_flash),
    )
)
