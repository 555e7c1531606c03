"""Parity cases for classic attention (additive / Bahdanau, multiplicative / Luong). Registered on import.

Each variant names a query layout and a source-mask kind (Luong's also its score):

* layout ``"step"``: one decoder step, ``q`` (B, Dq); ``"time"``: ``q`` (B, T, Dq);
* mask ``"none"``; ``"padding"``: a random (B, S) source mask, holes anywhere,
  at least one position kept per row; ``"fully_masked_row"``: the same with one
  row masked completely -- a whole sequence for ``"step"``, and one (b, t) row
  of a (B, T, S) mask for ``"time"``.

The package-wide ``MASK_KINDS`` (causal, ...) do not apply to source attention,
so the mask kind travels in the variant and ``"mask"`` is not in ``uses``.

Sizes from the drawn dims: Dq = D, Dk = D + 1 (D for the dot score), Dv = H,
A = V, so that no two widths are forced equal by accident. PyTorch ships no additive
or Luong attention; Luong's ``dot`` score, though, is ``F.scaled_dot_product_attention``
with ``scale=1``, the built-in the Luong cases declare for their ``dot`` variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
import torch.nn.functional as TorchF

import numpy_transformer as nt
import numpy_transformer.functional as F

from .. import classic_attention as TC
from .registry import Builtin, Case, leaf_gradients, module_case, normal, register

LAYOUTS = ("step", "time")
SOURCE_MASKS = ("none", "padding", "fully_masked_row")


@dataclass(frozen=True)
class AdditiveVariant:
    layout: str  # one of LAYOUTS
    mask: str  # one of SOURCE_MASKS


@dataclass(frozen=True)
class LuongVariant:
    score: str  # "dot", "general" or "concat"
    layout: str
    mask: str


ADDITIVE_VARIANTS = tuple(AdditiveVariant(layout=lo, mask=m) for lo, m in product(LAYOUTS, SOURCE_MASKS))
LUONG_VARIANTS = tuple(
    LuongVariant(score=s, layout=lo, mask=m)
    for s, lo, m in product(("dot", "general", "concat"), LAYOUTS, SOURCE_MASKS)
)


def draw_source_mask(rng: np.random.Generator, kind: str, B: int, T: int, S: int, time: bool) -> np.ndarray | None:
    """A source mask of ``kind`` (True = may attend): (B, S), or (B, T, S) for a fully masked row with a time axis."""
    if kind == "none":
        return None
    shape = (B, T, S) if (time and kind == "fully_masked_row") else (B, S)
    keep = rng.random(shape) < 0.6
    rows = keep.reshape(-1, S)  # a view: every row keeps one random position
    rows[np.arange(rows.shape[0]), rng.integers(0, S, size=rows.shape[0])] = True
    if kind == "padding":
        return keep
    if kind == "fully_masked_row":
        rows[rng.integers(rows.shape[0])] = False
        return keep
    raise ValueError(f"mask: expected one of {SOURCE_MASKS}, got {kind!r}")


def _widths(d: dict, score: str = "additive") -> tuple[int, int, int, int]:
    """Dq, Dk, Dv, A."""
    D = d["D"]
    return D, (D if score == "dot" else D + 1), d["H"], d["V"]


def _draw_qkv(rng, dtype, d, layout, mask_kind, score="additive", names=("q", "k", "v", "mask")):
    B, T, S = d["B"], d["T"], d["S"]
    Dq, Dk, Dv, _ = _widths(d, score)
    time = layout == "time"
    arrays = {
        names[0]: normal(rng, (B, T, Dq) if time else (B, Dq), dtype),
        names[1]: normal(rng, (B, S, Dk), dtype),
        names[2]: normal(rng, (B, S, Dv), dtype),
    }
    mask = draw_source_mask(rng, mask_kind, B, T, S, time)
    if mask is not None:
        arrays[names[3]] = mask
    return arrays


def _score(d: dict) -> str:
    v = d["variant"]
    return v.score if isinstance(v, LuongVariant) else "additive"


def _sdpa_dot(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Luong's dot attention as ``F.scaled_dot_product_attention(scale=1)``: ``q`` (B, Dq) or (B, T, Dq)."""
    step = q.ndim == 2
    if step:
        q = q[:, None]  # (B, 1, Dq)
    if mask is not None and mask.ndim == 2:
        mask = mask[:, None]  # (B, 1, S): one source mask for every query
    out = TorchF.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return out[:, 0] if step else out


def _dot_only(a, d) -> str | None:
    if d["variant"].score != "dot":
        return "general and concat scores: only the dot score is F.scaled_dot_product_attention (scale=1)"
    return None


# ---------------------------------------------------------------------------- functional ops


def _draw_additive(rng, dtype, d):
    v = d["variant"]
    arrays = _draw_qkv(rng, dtype, d, v.layout, v.mask)
    Dq, Dk, _, A = _widths(d)
    arrays["w_q"] = normal(rng, (A, Dq), dtype, scale=0.5)
    arrays["w_k"] = normal(rng, (A, Dk), dtype, scale=0.5)
    arrays["v_a"] = normal(rng, (A,), dtype)
    return arrays


def _np_additive(a, d):
    out, cache = F.additive_attention_forward(a["q"], a["k"], a["v"], a["w_q"], a["w_k"], a["v_a"], mask=a.get("mask"))

    def backward(dout):
        grads = F.additive_attention_backward(dout, cache)
        return dict(zip(("q", "k", "v", "w_q", "w_k", "v_a"), grads, strict=True))

    return out, backward


register(
    Case(
        name="additive_attention",
        kind="op",
        draw=_draw_additive,
        differentiable=lambda d: ("q", "k", "v", "w_q", "w_k", "v_a"),
        numpy=_np_additive,
        torch=lambda t, d: (
            TC.additive_attention(t["q"], t["k"], t["v"], t["w_q"], t["w_k"], t["v_a"], t.get("mask")),
            t,
        ),
        variants=ADDITIVE_VARIANTS,
        uses=("B", "T", "S", "H", "D", "V"),
    )
)

_LUONG_WEIGHTS = {"dot": (), "general": ("w",), "concat": ("w_c", "v_c")}


def _draw_luong(rng, dtype, d):
    v = d["variant"]
    arrays = _draw_qkv(rng, dtype, d, v.layout, v.mask, v.score)
    Dq, Dk, _, A = _widths(d, v.score)
    if v.score == "general":
        arrays["w"] = normal(rng, (Dq, Dk), dtype, scale=0.5)
    elif v.score == "concat":
        arrays["w_c"] = normal(rng, (A, Dq + Dk), dtype, scale=0.5)
        arrays["v_c"] = normal(rng, (A,), dtype)
    return arrays


def _np_luong(a, d):
    score = d["variant"].score
    weights = {n: a[n] for n in _LUONG_WEIGHTS[score]}
    out, cache = F.luong_attention_forward(a["q"], a["k"], a["v"], score, mask=a.get("mask"), **weights)

    def backward(dout):
        grads = dict(zip(("q", "k", "v", "w", "w_c", "v_c"), F.luong_attention_backward(dout, cache), strict=True))
        return {n: g for n, g in grads.items() if g is not None}

    return out, backward


def _t_luong(t, d):
    score = d["variant"].score
    weights = {n: t[n] for n in _LUONG_WEIGHTS[score]}
    return TC.luong_attention(t["q"], t["k"], t["v"], score, mask=t.get("mask"), **weights), t


register(
    Case(
        name="luong_attention",
        kind="op",
        draw=_draw_luong,
        differentiable=lambda d: ("q", "k", "v", *_LUONG_WEIGHTS[d["variant"].score]),
        numpy=_np_luong,
        torch=_t_luong,
        variants=LUONG_VARIANTS,
        uses=("B", "T", "S", "H", "D", "V"),
        builtin=Builtin(
            name="F.scaled_dot_product_attention",
            run=lambda t, d: (_sdpa_dot(t["q"], t["k"], t["v"], t.get("mask")), leaf_gradients(t)),
            unsupported=_dot_only,
        ),
    )
)


# ---------------------------------------------------------------------------- modules


def _module_inputs(rng, dtype, d):
    v = d["variant"]
    return _draw_qkv(rng, dtype, d, v.layout, v.mask, _score(d), names=("query", "keys", "values", "mask"))


def _np_forward(m, a, d):
    return m.forward(a["query"], a["keys"], a["values"], mask=a.get("mask"))


def _t_forward(m, t, d):
    return m(t["query"], t["keys"], t["values"], mask=t.get("mask"))


register(
    module_case(
        name="AdditiveAttention",
        numpy_module=lambda dt, d: nt.AdditiveAttention(
            *_widths(d)[:2], _widths(d)[3], dtype=dt, rng=np.random.default_rng(0)
        ),
        twin_module=lambda dt, d: TC.AdditiveAttention(*_widths(d)[:2], _widths(d)[3], dtype=dt),
        draw_inputs=_module_inputs,
        numpy_forward=_np_forward,
        twin_forward=_t_forward,
        inputs=("query", "keys", "values"),
        variants=ADDITIVE_VARIANTS,
        uses=("B", "T", "S", "H", "D", "V"),
    )
)


def _luong_module(cls, dt, d, **kwargs):
    score = d["variant"].score
    Dq, Dk, _, A = _widths(d, score)
    return cls(Dq, Dk, score, attn_dim=A if score == "concat" else None, dtype=dt, **kwargs)


register(
    module_case(
        name="LuongAttention",
        numpy_module=lambda dt, d: _luong_module(nt.LuongAttention, dt, d, rng=np.random.default_rng(0)),
        twin_module=lambda dt, d: _luong_module(TC.LuongAttention, dt, d),
        draw_inputs=_module_inputs,
        numpy_forward=_np_forward,
        twin_forward=_t_forward,
        inputs=("query", "keys", "values"),
        variants=LUONG_VARIANTS,
        uses=("B", "T", "S", "H", "D", "V"),
        builtin=Builtin(
            name="F.scaled_dot_product_attention",
            run=lambda t, d: (_sdpa_dot(t["query"], t["keys"], t["values"], t.get("mask")), leaf_gradients(t)),
            unsupported=_dot_only,
        ),
    )
)
