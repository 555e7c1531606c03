"""Parity cases of the Llama-style decoder: its ops, its blocks and the model. Registered on import.

Ops: ``rms_norm`` (vs ``F.rms_norm``), ``rotary_embedding`` (both layouts), ``silu`` (vs ``F.silu``),
``swiglu`` and ``grouped_query_attention`` (vs ``F.scaled_dot_product_attention(enable_gqa=True)``).
Blocks: ``RMSNorm`` (vs ``nn.RMSNorm``), ``SwiGLUFeedForward``, ``LlamaAttention``,
``LlamaDecoderLayer``; the model ``Llama`` (every parameter, tied and untied heads). Built-ins that
the installed torch lacks (``F.rms_norm`` / ``nn.RMSNorm`` before 2.4, ``enable_gqa`` before 2.5)
are not declared; ``parity_tests/test_builtins.py`` then lists the case with that reason.
``transformers.LlamaForCausalLM`` is compared in ``parity_tests/test_llama_hf.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TorchF
from torch import nn
from torch.torch_version import TorchVersion

import numpy_transformer as nt
import numpy_transformer.functional as F
from numpy_transformer.config import LlamaConfig
from numpy_transformer.modules import LlamaAttention, LlamaDecoderLayer, RMSNorm, SwiGLUFeedForward

from .. import functional as TF
from .. import llama as tllama
from .. import llama_layers as tll
from .registry import (
    Builtin,
    Case,
    draw_mask,
    float_dtype,
    leaf_gradients,
    load_weights,
    module_builtin,
    module_case,
    module_grads,
    normal,
    register,
    twin_float_dtype,
)

# Which built-ins the installed torch has: F.rms_norm and nn.RMSNorm from 2.4, enable_gqa from 2.5.
HAS_RMS_NORM = hasattr(TorchF, "rms_norm") and hasattr(nn, "RMSNorm")
HAS_ENABLE_GQA = TorchVersion(torch.__version__) >= (2, 5)


def _away_from_zero(x: np.ndarray) -> np.ndarray:
    """Shift every row of RMS below 0.5 by one: RMSNorm amplifies rounding by 1/RMS (see spread_rows)."""
    rms = np.sqrt((x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True))
    return (x + (rms < 0.5)).astype(x.dtype)


# ---------------------------------------------------------------------------- rms_norm


@dataclass(frozen=True)
class RMSNormVariant:
    eps: float


RMS_NORM_VARIANTS = (RMSNormVariant(eps=1e-6), RMSNormVariant(eps=1e-5), RMSNormVariant(eps=0.1))


def _draw_rms_norm(rng, dtype, d):
    C = d["D"] * d["H"]
    x = _away_from_zero(normal(rng, (d["B"], d["T"], C), dtype, scale=2.0))
    return {"x": x, "weight": normal(rng, (C,), dtype)}


def _np_rms_norm(a, d):
    y, cache = F.rms_norm_forward(a["x"], a["weight"], d["variant"].eps)

    def backward(dout):
        dx, dw = F.rms_norm_backward(dout, cache)
        return {"x": dx, "weight": dw}

    return y, backward


def _builtin_rms_norm(t, d):
    x = t["x"]
    return TorchF.rms_norm(x, x.shape[-1:], t["weight"], eps=d["variant"].eps), leaf_gradients(t)


register(
    Case(
        name="rms_norm",
        kind="op",
        draw=_draw_rms_norm,
        differentiable=lambda d: ("x", "weight"),
        numpy=_np_rms_norm,
        torch=lambda t, d: (TF.rms_norm(t["x"], t["weight"], d["variant"].eps), t),
        variants=RMS_NORM_VARIANTS,
        uses=("B", "T", "H", "D"),
        builtin=Builtin(name="F.rms_norm", run=_builtin_rms_norm) if HAS_RMS_NORM else None,
    )
)


# ---------------------------------------------------------------------------- rotary_embedding


@dataclass(frozen=True)
class RotaryVariant:
    layout: str  # "half" (Hugging Face) or "interleaved" (Meta)
    theta: float
    start: int  # the first position: behind a key/value cache it is not 0


def _draw_rotary(rng, dtype, d):
    B, H, T, D = d["B"], d["H"], d["T"], 2 * d["D"]  # the head width is even
    return {
        "x": normal(rng, (B, H, T, D), dtype),
        "positions": d["variant"].start + np.arange(T),
    }


def _np_rotary(a, d):
    v = d["variant"]
    y, cache = F.rotary_embedding_forward(a["x"], a["positions"], v.theta, v.layout)
    return y, lambda dout: {"x": F.rotary_embedding_backward(dout, cache)}


register(
    Case(
        name="rotary_embedding",
        kind="op",
        draw=_draw_rotary,
        differentiable=lambda d: ("x",),
        numpy=_np_rotary,
        torch=lambda t, d: (
            TF.rotary_embedding(t["x"], t["positions"], d["variant"].theta, d["variant"].layout),
            t,
        ),
        variants=(
            RotaryVariant(layout="half", theta=10000.0, start=0),
            RotaryVariant(layout="interleaved", theta=10000.0, start=0),
            RotaryVariant(layout="half", theta=500000.0, start=37),
            RotaryVariant(layout="interleaved", theta=100.0, start=1000),
        ),
        uses=("B", "T", "H", "D"),
    )
)


# ---------------------------------------------------------------------------- silu, swiglu


def _draw_silu(rng, dtype, d):
    return {"x": normal(rng, (d["B"], d["T"], d["D"]), dtype, scale=3.0)}


def _np_silu(a, d):
    y, cache = F.silu_forward(a["x"])
    return y, lambda dout: {"x": F.silu_backward(dout, cache)}


register(
    Case(
        name="silu",
        kind="op",
        draw=_draw_silu,
        differentiable=lambda d: ("x",),
        numpy=_np_silu,
        torch=lambda t, d: (TF.silu(t["x"]), t),
        uses=("B", "T", "D"),
        builtin=Builtin(name="F.silu", run=lambda t, d: (TorchF.silu(t["x"]), leaf_gradients(t))),
    )
)


def _draw_swiglu(rng, dtype, d):
    shape = (d["B"], d["T"], d["D"] * d["H"])
    return {"gate": normal(rng, shape, dtype, scale=2.0), "up": normal(rng, shape, dtype)}


def _np_swiglu(a, d):
    h, cache = F.swiglu_forward(a["gate"], a["up"])

    def backward(dout):
        dgate, dup = F.swiglu_backward(dout, cache)
        return {"gate": dgate, "up": dup}

    return h, backward


register(
    Case(
        name="swiglu",
        kind="op",
        draw=_draw_swiglu,
        differentiable=lambda d: ("gate", "up"),
        numpy=_np_swiglu,
        torch=lambda t, d: (TF.swiglu(t["gate"], t["up"]), t),
        uses=("B", "T", "H", "D"),
    )
)


# ---------------------------------------------------------------------------- grouped_query_attention


@dataclass(frozen=True)
class GroupedQueryVariant:
    n_heads: int  # H
    n_kv_heads: int  # Hkv: H is multi-head attention, 1 multi-query


GQA_VARIANTS = (
    GroupedQueryVariant(n_heads=4, n_kv_heads=2),
    GroupedQueryVariant(n_heads=3, n_kv_heads=1),
    GroupedQueryVariant(n_heads=2, n_kv_heads=2),
)


def _draw_gqa(rng, dtype, d):
    v = d["variant"]
    B, H, Hkv, T, S, D = d["B"], v.n_heads, v.n_kv_heads, d["T"], d["S"], d["D"]
    mask, _ = draw_mask(rng, d["mask"], B, H, T, S)
    arrays = {
        "q": normal(rng, (B, H, T, D), dtype),
        "k": normal(rng, (B, Hkv, S, D), dtype),
        "v": normal(rng, (B, Hkv, S, D + 1), dtype),  # Dv != D on purpose
    }
    if mask is not None:
        arrays["mask"] = mask
    return arrays


def _np_gqa(a, d):
    out, cache = F.grouped_query_attention_forward(
        a["q"], a["k"], a["v"], mask=a.get("mask"), is_causal="causal" in d["mask"]
    )

    def backward(dout):
        dq, dk, dv = F.grouped_query_attention_backward(dout, cache)
        return {"q": dq, "k": dk, "v": dv}

    return out, backward


def _builtin_gqa(t, d):
    q, k, v = t["q"], t["k"], t["v"]
    mask, is_causal = t.get("mask"), "causal" in d["mask"]
    if mask is not None and is_causal:  # one boolean mask, True = may attend, in both conventions
        mask = mask & torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        is_causal = False
    out = TorchF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
    return out, leaf_gradients(t)


register(
    Case(
        name="grouped_query_attention",
        kind="op",
        draw=_draw_gqa,
        differentiable=lambda d: ("q", "k", "v"),
        numpy=_np_gqa,
        torch=lambda t, d: (
            TF.grouped_query_attention(t["q"], t["k"], t["v"], mask=t.get("mask"), is_causal="causal" in d["mask"]),
            t,
        ),
        variants=GQA_VARIANTS,
        uses=("B", "T", "S", "D", "mask"),
        builtin=(
            Builtin(name="F.scaled_dot_product_attention(enable_gqa=True)", run=_builtin_gqa)
            if HAS_ENABLE_GQA
            else None
        ),
    )
)


# ---------------------------------------------------------------------------- RMSNorm, SwiGLUFeedForward


def _x(rng, dtype, d, C):
    return {"x": _away_from_zero(normal(rng, (d["B"], d["T"], C), dtype, scale=2.0))}


register(
    module_case(
        name="RMSNorm",
        numpy_module=lambda dt, d: RMSNorm(d["D"] * d["H"], eps=d["variant"].eps, dtype=dt),
        twin_module=lambda dt, d: tll.RMSNorm(d["D"] * d["H"], eps=d["variant"].eps, dtype=dt),
        draw_inputs=lambda rng, dt, d: _x(rng, dt, d, d["D"] * d["H"]),
        numpy_forward=lambda m, a, d: m.forward(a["x"]),
        twin_forward=lambda m, t, d: m(t["x"]),
        inputs=("x",),
        variants=RMS_NORM_VARIANTS[:2],
        uses=("B", "T", "H", "D"),
        builtin=(
            module_builtin(
                name="nn.RMSNorm",
                make=lambda dt, d: nn.RMSNorm(d["D"] * d["H"], eps=d["variant"].eps, dtype=dt),
                forward=lambda m, t, d: m(t["x"]),
                inputs=("x",),
            )
            if HAS_RMS_NORM
            else None
        ),
    )
)


def _swiglu_widths(d) -> tuple[int, int]:
    return d["D"] * d["H"], d["D"] + 2


register(
    module_case(
        name="SwiGLUFeedForward",
        numpy_module=lambda dt, d: SwiGLUFeedForward(*_swiglu_widths(d), dtype=dt, rng=np.random.default_rng(0)),
        twin_module=lambda dt, d: tll.SwiGLUFeedForward(*_swiglu_widths(d), dtype=dt),
        draw_inputs=lambda rng, dt, d: {"x": normal(rng, (d["B"], d["T"], _swiglu_widths(d)[0]), dt)},
        numpy_forward=lambda m, a, d: m.forward(a["x"]),
        twin_forward=lambda m, t, d: m(t["x"]),
        inputs=("x",),
        uses=("B", "T", "H", "D"),
    )
)


# ---------------------------------------------------------------------------- LlamaAttention, LlamaDecoderLayer


@dataclass(frozen=True)
class LlamaBlockVariant:
    n_heads: int  # H
    n_kv_heads: int
    rope_layout: str
    start: int  # the first position
    d_model: int  # C: 8 gives head width 2 with 4 heads and 4 (two rotation pairs) with 2; 4 with 2 heads, width 2


BLOCK_VARIANTS = (
    LlamaBlockVariant(n_heads=4, n_kv_heads=2, rope_layout="half", start=0, d_model=8),
    LlamaBlockVariant(n_heads=2, n_kv_heads=1, rope_layout="interleaved", start=5, d_model=8),
    LlamaBlockVariant(n_heads=2, n_kv_heads=2, rope_layout="half", start=3, d_model=4),
)
THETA = 100.0  # a small base, so that every pair turns visibly over a few positions


def _attention_inputs(rng, dtype, d):
    v = d["variant"]
    B, T = d["B"], d["T"]
    mask, _ = draw_mask(rng, d["mask"], B, v.n_heads, T, T)
    arrays = {"x": normal(rng, (B, T, v.d_model), dtype), "positions": v.start + np.arange(T)}
    if mask is not None:
        arrays["mask"] = mask
    return arrays


def _make_attention(dt, d):
    v = d["variant"]
    return LlamaAttention(
        v.d_model, v.n_heads, v.n_kv_heads, THETA, v.rope_layout, dtype=dt, rng=np.random.default_rng(0)
    )


def _make_twin_attention(dt, d):
    v = d["variant"]
    return tll.LlamaAttention(v.d_model, v.n_heads, v.n_kv_heads, THETA, v.rope_layout, dtype=dt)


register(
    module_case(
        name="LlamaAttention",
        numpy_module=_make_attention,
        twin_module=_make_twin_attention,
        draw_inputs=_attention_inputs,
        numpy_forward=lambda m, a, d: m.forward(a["x"], a["positions"], a.get("mask"), "causal" in d["mask"]),
        twin_forward=lambda m, t, d: m(t["x"], t["positions"], t.get("mask"), "causal" in d["mask"]),
        inputs=("x",),
        variants=BLOCK_VARIANTS,
        uses=("B", "T", "mask"),
    )
)


def _layer_args(d) -> tuple:
    v = d["variant"]
    return v.d_model, v.n_heads, v.n_kv_heads, 5, 1e-6, THETA, v.rope_layout


# Layers composed, like EncoderLayer: a "model" case (fewer finite-difference draws, each probing every parameter).
register(
    dataclasses.replace(
        module_case(
            name="LlamaDecoderLayer",
            numpy_module=lambda dt, d: LlamaDecoderLayer(*_layer_args(d), dtype=dt, rng=np.random.default_rng(0)),
            twin_module=lambda dt, d: tll.LlamaDecoderLayer(*_layer_args(d), dtype=dt),
            draw_inputs=lambda rng, dt, d: {
                "x": normal(rng, (d["B"], d["T"], d["variant"].d_model), dt),
                "positions": d["variant"].start + np.arange(d["T"]),
            },
            numpy_forward=lambda m, a, d: m.forward(a["x"], a["positions"]),
            twin_forward=lambda m, t, d: m(t["x"], t["positions"]),
            inputs=("x",),
            variants=BLOCK_VARIANTS,
            uses=("B", "T"),
        ),
        kind="model",
    )
)


# ---------------------------------------------------------------------------- Llama


@dataclass(frozen=True)
class LlamaVariant:
    n_heads: int
    n_kv_heads: int  # n_heads: MHA; 1: multi-query; between: grouped
    rope_layout: str
    tie_embeddings: bool
    layers: int
    d_model: int


LLAMA_VARIANTS = (
    LlamaVariant(n_heads=4, n_kv_heads=2, rope_layout="half", tie_embeddings=False, layers=1, d_model=8),
    LlamaVariant(n_heads=2, n_kv_heads=1, rope_layout="interleaved", tie_embeddings=True, layers=1, d_model=8),
    LlamaVariant(n_heads=2, n_kv_heads=2, rope_layout="half", tie_embeddings=False, layers=2, d_model=4),
)


def _llama_config(d: dict) -> LlamaConfig:
    v = d["variant"]
    return LlamaConfig(
        vocab_size=d["V"] + 1, max_len=max(8, d["T"]), d_model=v.d_model, n_heads=v.n_heads, n_kv_heads=v.n_kv_heads,
        n_layers=v.layers, d_ff=4, rope_theta=THETA, rope_layout=v.rope_layout, tie_embeddings=v.tie_embeddings,
    )  # fmt: skip


def _draw_llama(rng, dtype, d):
    model = nt.Llama(_llama_config(d), dtype=dtype, rng=np.random.default_rng(0))
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    arrays["ids"] = rng.integers(0, model.config.vocab_size, size=(d["B"], d["T"]))
    return arrays


def _np_llama(a, d):
    model = load_weights(nt.Llama(_llama_config(d), dtype=float_dtype(a), rng=np.random.default_rng(0)), a)
    logits, cache = model.forward(a["ids"])

    def backward(dout):
        model.zero_grad()
        model.backward(dout, cache)
        return module_grads(model)

    return logits, backward


def _torch_llama(t, d):
    ids = t["ids"]
    model = load_weights(tllama.Llama(_llama_config(d), dtype=twin_float_dtype(t)).to(ids.device), t)
    return model(ids), dict(model.named_parameters())


register(
    Case(
        name="Llama",
        kind="model",
        draw=_draw_llama,
        differentiable=lambda d: (),
        all_parameters=True,
        numpy=_np_llama,
        torch=_torch_llama,
        variants=LLAMA_VARIANTS,
        uses=("B", "T", "V"),
    )
)
