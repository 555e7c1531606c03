"""Parity cases for the modules that own parameters: Linear, Embedding, LayerNorm, Dropout, FeedForward,
MultiHeadAttention. Registered on import; every parameter's gradient is compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

import numpy_transformer as nt
from numpy_transformer.functional import causal_mask

from .. import bridge
from .. import builtin as tbuiltin
from .. import modules as tm
from .registry import (
    Builtin,
    draw_mask,
    layer_norm_of_one_feature,
    load_weights,
    module_builtin,
    module_case,
    normal,
    numpy_arrays,
    register,
    spread_rows,
)


def _x_btc(rng, dtype, d):
    return {"x": normal(rng, (d["B"], d["T"], d["D"] * d["H"]), dtype)}


# ---------------------------------------------------------------------------- Linear, Embedding, LayerNorm


@dataclass(frozen=True)
class LinearVariant:
    bias: bool


register(
    module_case(
        name="Linear",
        numpy_module=lambda dt, d: nt.Linear(
            d["D"] * d["H"], d["S"], bias=d["variant"].bias, dtype=dt, rng=np.random.default_rng(0)
        ),
        twin_module=lambda dt, d: tm.Linear(d["D"] * d["H"], d["S"], bias=d["variant"].bias, dtype=dt),
        draw_inputs=_x_btc,
        numpy_forward=lambda m, a, d: m.forward(a["x"]),
        twin_forward=lambda m, t, d: m(t["x"]),
        inputs=("x",),
        variants=(LinearVariant(bias=True), LinearVariant(bias=False)),
        uses=("B", "T", "S", "H", "D"),
        builtin=module_builtin(
            name="nn.Linear",
            make=lambda dt, d: nn.Linear(d["D"] * d["H"], d["S"], bias=d["variant"].bias, dtype=dt),
            forward=lambda m, t, d: m(t["x"]),
            inputs=("x",),
        ),
    )
)


@dataclass(frozen=True)
class EmbeddingVariant:
    padding_idx: int | None


def _zero_padding_row(name: str, numeric: np.ndarray, d: dict) -> np.ndarray:
    padding_idx = d["variant"].padding_idx
    if name == "weight" and padding_idx is not None:
        numeric = numeric.copy()
        numeric[padding_idx] = 0  # torch.nn.Embedding(padding_idx=...) never updates this row
    return numeric


register(
    module_case(
        name="Embedding",
        numpy_module=lambda dt, d: nt.Embedding(
            d["V"], d["D"], padding_idx=d["variant"].padding_idx, dtype=dt, rng=np.random.default_rng(0)
        ),
        twin_module=lambda dt, d: tm.Embedding(d["V"], d["D"], padding_idx=d["variant"].padding_idx, dtype=dt),
        draw_inputs=lambda rng, dt, d: {"ids": rng.integers(0, d["V"], size=(d["B"], d["T"]))},
        numpy_forward=lambda m, a, d: m.forward(a["ids"]),
        twin_forward=lambda m, t, d: m(t["ids"]),
        inputs=(),  # token ids have no gradient
        variants=(EmbeddingVariant(padding_idx=None), EmbeddingVariant(padding_idx=1)),
        uses=("B", "T", "V", "D"),
        conventional_zeros=_zero_padding_row,
        builtin=module_builtin(
            name="nn.Embedding",
            make=lambda dt, d: nn.Embedding(d["V"], d["D"], padding_idx=d["variant"].padding_idx, dtype=dt),
            forward=lambda m, t, d: m(t["ids"]),
            inputs=(),
        ),
    )
)


@dataclass(frozen=True)
class LayerNormVariant:
    eps: float


register(
    module_case(
        name="LayerNorm",
        numpy_module=lambda dt, d: nt.LayerNorm(d["D"] * d["H"], eps=d["variant"].eps, dtype=dt),
        twin_module=lambda dt, d: tm.LayerNorm(d["D"] * d["H"], eps=d["variant"].eps, dtype=dt),
        draw_inputs=lambda rng, dt, d: {"x": spread_rows(_x_btc(rng, dt, d)["x"])},
        numpy_forward=lambda m, a, d: m.forward(a["x"]),
        twin_forward=lambda m, t, d: m(t["x"]),
        inputs=("x",),
        variants=(LayerNormVariant(eps=1e-5), LayerNormVariant(eps=1e-12)),
        uses=("B", "T", "H", "D"),
        builtin=module_builtin(
            name="nn.LayerNorm",
            make=lambda dt, d: nn.LayerNorm(d["D"] * d["H"], eps=d["variant"].eps, dtype=dt),
            forward=lambda m, t, d: m(t["x"]),
            inputs=("x",),
            unsupported=layer_norm_of_one_feature,
        ),
    )
)


# ---------------------------------------------------------------------------- Dropout, FeedForward


@dataclass(frozen=True)
class DropoutVariant:
    training: bool


def _dropout_inputs(rng, dtype, d):
    x = normal(rng, (d["B"], d["T"], d["D"]), dtype)
    return {"x": x, "mask": rng.random(x.shape) >= 0.3}


register(
    module_case(
        name="Dropout",
        numpy_module=lambda dt, d: nt.Dropout(0.3).train(d["variant"].training),
        twin_module=lambda dt, d: tm.Dropout(0.3).train(d["variant"].training),
        draw_inputs=_dropout_inputs,
        numpy_forward=lambda m, a, d: m.forward(a["x"], mask=a["mask"]),
        twin_forward=lambda m, t, d: m(t["x"], mask=t["mask"]),
        inputs=("x",),
        variants=(DropoutVariant(training=True), DropoutVariant(training=False)),
        uses=("B", "T", "D"),
    )
)


@dataclass(frozen=True)
class FeedForwardVariant:
    activation: str
    dropout: float


def _ffn_width(d) -> tuple[int, int]:
    return d["D"] * d["H"], 2 * d["D"] * d["H"] + 1


def _ffn_inputs(rng, dtype, d):
    C, Fw = _ffn_width(d)
    arrays = {"x": normal(rng, (d["B"], d["T"], C), dtype)}
    p = d["variant"].dropout
    if p > 0:
        arrays["dropout_mask"] = rng.random((d["B"], d["T"], Fw)) >= p
    return arrays


register(
    module_case(
        name="FeedForward",
        numpy_module=lambda dt, d: nt.FeedForward(
            *_ffn_width(d), d["variant"].activation, d["variant"].dropout, dtype=dt, rng=np.random.default_rng(0)
        ),
        twin_module=lambda dt, d: tm.FeedForward(
            *_ffn_width(d), d["variant"].activation, d["variant"].dropout, dtype=dt
        ),
        draw_inputs=_ffn_inputs,
        numpy_forward=lambda m, a, d: m.forward(a["x"], dropout_mask=a.get("dropout_mask")),
        twin_forward=lambda m, t, d: m(t["x"], dropout_mask=t.get("dropout_mask")),
        inputs=("x",),
        variants=(
            FeedForwardVariant(activation="relu", dropout=0.0),
            FeedForwardVariant(activation="gelu", dropout=0.0),
            FeedForwardVariant(activation="gelu_tanh", dropout=0.0),
            FeedForwardVariant(activation="quick_gelu", dropout=0.0),
            FeedForwardVariant(activation="relu", dropout=0.3),
        ),
        uses=("B", "T", "H", "D"),
    )
)


# ---------------------------------------------------------------------------- MultiHeadAttention


@dataclass(frozen=True)
class MultiHeadAttentionVariant:
    cross: bool  # False: self-attention (query, key and value are equal copies)
    dropout: float


def _mha_inputs(rng, dtype, d):
    B, H, T, D = d["B"], d["H"], d["T"], d["D"]
    cross, p = d["variant"].cross, d["variant"].dropout
    S = d["S"] if cross else T
    C = H * D
    mask, _ = draw_mask(rng, d["mask"], B, H, T, S)
    x = normal(rng, (B, T, C), dtype)
    # Self-attention: three equal copies, so that finite differences perturb one
    # input at a time and autograd reports three separate gradients, as our
    # backward does. (Passing the very same array is checked in parity_tests.)
    arrays = {"query": x, "key": x.copy(), "value": x.copy()}
    if cross:
        arrays["key"] = normal(rng, (B, S, C), dtype)
        arrays["value"] = normal(rng, (B, S, C), dtype)
    if mask is not None:
        arrays["mask"] = mask
    if p > 0:
        arrays["dropout_mask"] = rng.random((B, H, T, S)) >= p
    return arrays


def _make_mha(dt, d):
    return nt.MultiHeadAttention(
        d["D"] * d["H"], d["H"], dropout=d["variant"].dropout, dtype=dt, rng=np.random.default_rng(0)
    )


def _mha_np_forward(m, a, d):
    return m.forward(
        a["query"],
        a["key"],
        a["value"],
        mask=a.get("mask"),
        is_causal="causal" in d["mask"],
        dropout_mask=a.get("dropout_mask"),
    )


def _mha_t_forward(m, t, d):
    return m(
        t["query"],
        t["key"],
        t["value"],
        mask=t.get("mask"),
        is_causal="causal" in d["mask"],
        dropout_mask=t.get("dropout_mask"),
    )


def _builtin_mha(t, d):
    """``nn.MultiheadAttention`` from ``bridge.mha_to_torch_builtin``, our mask as its ``attn_mask``."""
    query = t["query"]
    a = numpy_arrays(t)
    mha = load_weights(_make_mha(a["query"].dtype, d), a)
    builtin = bridge.mha_to_torch_builtin(mha, device=query.device)
    (B, T, _), S, H = query.shape, t["key"].shape[1], d["H"]
    allowed = a.get("mask")
    if "causal" in d["mask"]:
        allowed = causal_mask(T, S) if allowed is None else allowed & causal_mask(T, S)
    attn_mask = None if allowed is None else bridge.mask_to_attn_mask(allowed, B, H, T, S).to(query.device)
    # need_weights=False: the fused path, whose fully masked rows give zeros as ours do (softmax would give NaN)
    out, _ = builtin(query, t["key"], t["value"], attn_mask=attn_mask, need_weights=False)

    def gradients():
        grads = tbuiltin.builtin_grads_to_numpy_names(builtin, mha)
        grads.update({name: t[name].grad for name in ("query", "key", "value")})
        return grads

    return out, gradients


def _mha_dropout(a, d) -> str | None:
    if d["variant"].dropout > 0:
        return "dropout > 0: nn.MultiheadAttention draws its own dropout mask"
    return None


register(
    module_case(
        name="MultiHeadAttention",
        numpy_module=_make_mha,
        twin_module=lambda dt, d: tm.MultiHeadAttention(
            d["D"] * d["H"], d["H"], dropout=d["variant"].dropout, dtype=dt
        ),
        draw_inputs=_mha_inputs,
        numpy_forward=_mha_np_forward,
        twin_forward=_mha_t_forward,
        inputs=("query", "key", "value"),
        variants=(
            MultiHeadAttentionVariant(cross=False, dropout=0.0),
            MultiHeadAttentionVariant(cross=True, dropout=0.0),
            MultiHeadAttentionVariant(cross=True, dropout=0.2),
        ),
        uses=("B", "H", "T", "S", "D", "mask"),
        builtin=Builtin(name="nn.MultiheadAttention (bridge)", run=_builtin_mha, unsupported=_mha_dropout),
    )
)
