"""Parity cases for the functional ops: linear, embedding, activations, pooling, dropout, softmax family,
cross-entropy, layer norm and scaled dot-product attention. Registered on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TorchF

import numpy_transformer.functional as F

from .. import functional as TF
from .registry import (
    Builtin,
    Case,
    draw_mask,
    layer_norm_of_one_feature,
    leaf_gradients,
    normal,
    register,
    spread_rows,
)

# ---------------------------------------------------------------------------- linear


@dataclass(frozen=True)
class LinearVariant:
    bias: bool


def _draw_linear(rng, dtype, d):
    arrays = {"x": normal(rng, (d["B"], d["T"], d["D"]), dtype), "weight": normal(rng, (d["S"], d["D"]), dtype)}
    if d["variant"].bias:
        arrays["bias"] = normal(rng, (d["S"],), dtype)
    return arrays


def _np_linear(a, d):
    y, cache = F.linear_forward(a["x"], a["weight"], a.get("bias"))

    def backward(dout):
        dx, dw, db = F.linear_backward(dout, cache)
        return {"x": dx, "weight": dw, **({"bias": db} if db is not None else {})}

    return y, backward


register(
    Case(
        name="linear",
        kind="op",
        draw=_draw_linear,
        differentiable=lambda d: ("x", "weight", "bias") if d["variant"].bias else ("x", "weight"),
        numpy=_np_linear,
        torch=lambda t, d: (TF.linear(t["x"], t["weight"], t.get("bias")), t),
        variants=(LinearVariant(bias=True), LinearVariant(bias=False)),
        uses=("B", "T", "S", "D"),
        builtin=Builtin(
            name="F.linear",
            run=lambda t, d: (TorchF.linear(t["x"], t["weight"], t.get("bias")), leaf_gradients(t)),
        ),
    )
)


# ---------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class EmbeddingVariant:
    padding_idx: int | None


def _zero_padding_row(name: str, numeric: np.ndarray, d: dict) -> np.ndarray:
    padding_idx = d["variant"].padding_idx
    if name == "weight" and padding_idx is not None:
        numeric = numeric.copy()
        numeric[padding_idx] = 0  # torch.nn.Embedding(padding_idx=...) never updates this row
    return numeric


def _draw_embedding(rng, dtype, d):
    V = d["V"]
    return {"ids": rng.integers(0, V, size=(d["B"], d["T"])), "weight": normal(rng, (V, d["D"]), dtype)}


def _np_embedding(a, d):
    y, cache = F.embedding_forward(a["ids"], a["weight"], d["variant"].padding_idx)
    return y, lambda dout: {"weight": F.embedding_backward(dout, cache)}


register(
    Case(
        name="embedding",
        kind="op",
        draw=_draw_embedding,
        differentiable=lambda d: ("weight",),
        numpy=_np_embedding,
        torch=lambda t, d: (TF.embedding(t["ids"], t["weight"], d["variant"].padding_idx), t),
        variants=(EmbeddingVariant(padding_idx=None), EmbeddingVariant(padding_idx=0)),
        uses=("B", "T", "V", "D"),
        conventional_zeros=_zero_padding_row,
        builtin=Builtin(
            name="F.embedding",
            run=lambda t, d: (
                TorchF.embedding(t["ids"], t["weight"], padding_idx=d["variant"].padding_idx),
                leaf_gradients(t),
            ),
        ),
    )
)


# ---------------------------------------------------------------------------- pointwise


def _draw_pointwise(rng, dtype, d):
    x = rng.standard_normal((d["B"], d["T"], d["D"]))
    x = np.where(np.abs(x) < 1e-3, 0.5, x)  # keep finite differences away from ReLU's kink
    return {"x": (2.0 * x).astype(dtype)}


def _register_unary(name: str, forward: Callable, backward: Callable, twin: Callable, builtin: Builtin) -> None:
    """A case for an op of one input ``x`` (B, T, D) and no parameters: relu, tanh, l2_normalize."""

    def run(a, d):
        y, cache = forward(a["x"])
        return y, lambda dout: {"x": backward(dout, cache)}

    register(
        Case(
            name=name,
            kind="op",
            draw=_draw_pointwise,
            differentiable=lambda d: ("x",),
            numpy=run,
            torch=lambda t, d: (twin(t["x"]), t),
            uses=("B", "T", "D"),
            builtin=builtin,
        )
    )


def _unary_builtin(name: str, f: Callable[[torch.Tensor], torch.Tensor]) -> Builtin:
    return Builtin(name=name, run=lambda t, d: (f(t["x"]), leaf_gradients(t)))


_register_unary("relu", F.relu_forward, F.relu_backward, TF.relu, _unary_builtin("F.relu", TorchF.relu))
_register_unary("tanh", F.tanh_forward, F.tanh_backward, TF.tanh, _unary_builtin("torch.tanh", torch.tanh))
_register_unary(
    "l2_normalize",
    F.l2_normalize_forward,
    F.l2_normalize_backward,
    TF.l2_normalize,
    _unary_builtin("F.normalize", lambda x: TorchF.normalize(x, p=2.0, dim=-1, eps=1e-12)),
)


def _draw_pooling(rng, dtype, d):
    B, T = d["B"], d["T"]
    lengths = rng.integers(1, T + 1, size=B)  # at least one real token per row
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    return {"hidden": normal(rng, (B, T, d["D"]), dtype), "attention_mask": mask}


def _np_mean_pooling(a, d):
    y, cache = F.mean_pooling_forward(a["hidden"], a["attention_mask"])
    return y, lambda dout: {"hidden": F.mean_pooling_backward(dout, cache)}


register(
    Case(
        name="mean_pooling",
        kind="op",
        draw=_draw_pooling,
        differentiable=lambda d: ("hidden",),
        numpy=_np_mean_pooling,
        torch=lambda t, d: (TF.mean_pooling(t["hidden"], t["attention_mask"]), t),
        uses=("B", "T", "D"),
    )
)


@dataclass(frozen=True)
class GeluVariant:
    approximate: str  # "none" (erf) or "tanh"


def _np_gelu(a, d):
    y, cache = F.gelu_forward(a["x"], d["variant"].approximate)
    return y, lambda dout: {"x": F.gelu_backward(dout, cache)}


register(
    Case(
        name="gelu",
        kind="op",
        draw=_draw_pointwise,
        differentiable=lambda d: ("x",),
        numpy=_np_gelu,
        torch=lambda t, d: (TF.gelu(t["x"], d["variant"].approximate), t),
        variants=(GeluVariant(approximate="none"), GeluVariant(approximate="tanh")),
        uses=("B", "T", "D"),
        builtin=Builtin(
            name="F.gelu",
            run=lambda t, d: (TorchF.gelu(t["x"], approximate=d["variant"].approximate), leaf_gradients(t)),
        ),
    )
)


# ---------------------------------------------------------------------------- dropout


@dataclass(frozen=True)
class DropoutVariant:
    p: float


def _draw_dropout(rng, dtype, d):
    x = normal(rng, (d["B"], d["T"], d["D"]), dtype)
    return {"x": x, "mask": rng.random(x.shape) >= d["variant"].p}


def _np_dropout(a, d):
    y, cache = F.dropout_forward(a["x"], d["variant"].p, mask=a["mask"])
    return y, lambda dout: {"x": F.dropout_backward(dout, cache)}


register(
    Case(
        name="dropout",
        kind="op",
        draw=_draw_dropout,
        differentiable=lambda d: ("x",),
        numpy=_np_dropout,
        torch=lambda t, d: (TF.dropout(t["x"], d["variant"].p, mask=t["mask"]), t),
        variants=(DropoutVariant(p=0.0), DropoutVariant(p=0.25), DropoutVariant(p=0.5)),
        uses=("B", "T", "D"),
    )
)


# ---------------------------------------------------------------------------- softmax family


@dataclass(frozen=True)
class SoftmaxVariant:
    axis: int


_AXES = (SoftmaxVariant(axis=-1), SoftmaxVariant(axis=0), SoftmaxVariant(axis=1))


def _draw_logits(rng, dtype, d):
    return {"x": normal(rng, (d["B"], d["T"], d["V"]), dtype, scale=3.0)}


def _np_softmax(a, d):
    y, cache = F.softmax_forward(a["x"], d["variant"].axis)
    return y, lambda dout: {"x": F.softmax_backward(dout, cache)}


def _np_log_softmax(a, d):
    y, cache = F.log_softmax_forward(a["x"], d["variant"].axis)
    return y, lambda dout: {"x": F.log_softmax_backward(dout, cache)}


register(
    Case(
        name="softmax",
        kind="op",
        draw=_draw_logits,
        differentiable=lambda d: ("x",),
        numpy=_np_softmax,
        torch=lambda t, d: (TF.softmax(t["x"], d["variant"].axis), t),
        variants=_AXES,
        uses=("B", "T", "V"),
        builtin=Builtin(
            name="F.softmax", run=lambda t, d: (TorchF.softmax(t["x"], dim=d["variant"].axis), leaf_gradients(t))
        ),
    )
)
register(
    Case(
        name="log_softmax",
        kind="op",
        draw=_draw_logits,
        differentiable=lambda d: ("x",),
        numpy=_np_log_softmax,
        torch=lambda t, d: (TF.log_softmax(t["x"], d["variant"].axis), t),
        variants=_AXES,
        uses=("B", "T", "V"),
        builtin=Builtin(
            name="F.log_softmax",
            run=lambda t, d: (TorchF.log_softmax(t["x"], dim=d["variant"].axis), leaf_gradients(t)),
        ),
    )
)


@dataclass(frozen=True)
class CrossEntropyVariant:
    layout: str  # "2d": logits (N, V), targets (N,); "3d": logits (B, T, V), targets (B, T)
    label_smoothing: float


def _draw_cross_entropy(rng, dtype, d):
    B, T, V = d["B"], d["T"], d["V"]
    shape = (B, T) if d["variant"].layout == "3d" else (B * T,)
    targets = rng.integers(0, V, size=shape)
    targets[rng.random(shape) < 0.25] = -100  # some ignored positions
    return {"logits": normal(rng, (*shape, V), dtype, scale=2.0), "targets": targets}


def _np_cross_entropy(a, d):
    loss, cache = F.cross_entropy_forward(a["logits"], a["targets"], -100, d["variant"].label_smoothing)
    return loss, lambda dout: {"logits": F.cross_entropy_backward(dout, cache)}


def _builtin_cross_entropy(t, d):
    logits = t["logits"]
    if logits.ndim == 3:
        logits = logits.transpose(1, 2)  # (B, V, T): F.cross_entropy wants the class axis second
    loss = TorchF.cross_entropy(logits, t["targets"], ignore_index=-100, label_smoothing=d["variant"].label_smoothing)
    return loss, leaf_gradients(t)


register(
    Case(
        name="cross_entropy",
        kind="op",
        draw=_draw_cross_entropy,
        differentiable=lambda d: ("logits",),
        numpy=_np_cross_entropy,
        torch=lambda t, d: (TF.cross_entropy(t["logits"], t["targets"], -100, d["variant"].label_smoothing), t),
        variants=(
            CrossEntropyVariant(layout="2d", label_smoothing=0.0),
            CrossEntropyVariant(layout="3d", label_smoothing=0.0),
            CrossEntropyVariant(layout="2d", label_smoothing=0.1),
            CrossEntropyVariant(layout="3d", label_smoothing=0.2),
        ),
        uses=("B", "T", "V"),
        builtin=Builtin(name="F.cross_entropy", run=_builtin_cross_entropy),
    )
)


# ---------------------------------------------------------------------------- layer norm


@dataclass(frozen=True)
class LayerNormVariant:
    eps: float


def _draw_layer_norm(rng, dtype, d):
    C = d["D"] * d["H"]
    return {
        "x": spread_rows(normal(rng, (d["B"], d["T"], C), dtype, scale=2.0)),
        "weight": normal(rng, (C,), dtype),
        "bias": normal(rng, (C,), dtype),
    }


def _np_layer_norm(a, d):
    y, cache = F.layer_norm_forward(a["x"], a["weight"], a["bias"], d["variant"].eps)

    def backward(dout):
        dx, dw, db = F.layer_norm_backward(dout, cache)
        return {"x": dx, "weight": dw, "bias": db}

    return y, backward


def _builtin_layer_norm(t, d):
    x = t["x"]
    return TorchF.layer_norm(x, x.shape[-1:], t["weight"], t["bias"], d["variant"].eps), leaf_gradients(t)


register(
    Case(
        name="layer_norm",
        kind="op",
        draw=_draw_layer_norm,
        differentiable=lambda d: ("x", "weight", "bias"),
        numpy=_np_layer_norm,
        torch=lambda t, d: (TF.layer_norm(t["x"], t["weight"], t["bias"], d["variant"].eps), t),
        variants=(LayerNormVariant(eps=1e-5), LayerNormVariant(eps=1e-12), LayerNormVariant(eps=0.1)),
        uses=("B", "T", "H", "D"),
        builtin=Builtin(name="F.layer_norm", run=_builtin_layer_norm, unsupported=layer_norm_of_one_feature),
    )
)


# ---------------------------------------------------------------------------- attention


@dataclass(frozen=True)
class AttentionVariant:
    scale: float | None  # None: 1/sqrt(D)
    dropout_p: float


def _draw_attention(rng, dtype, d):
    B, H, T, S, D = d["B"], d["H"], d["T"], d["S"], d["D"]
    mask, _ = draw_mask(rng, d["mask"], B, H, T, S)
    arrays = {
        "q": normal(rng, (B, H, T, D), dtype),
        "k": normal(rng, (B, H, S, D), dtype),
        "v": normal(rng, (B, H, S, D + 1), dtype),  # Dv != D on purpose
    }
    if mask is not None:
        arrays["mask"] = mask
    p = d["variant"].dropout_p
    if p > 0:
        arrays["dropout_mask"] = rng.random((B, H, T, S)) >= p
    return arrays


def _attention_kwargs(d):
    v = d["variant"]
    return {"is_causal": "causal" in d["mask"], "scale": v.scale, "dropout_p": v.dropout_p}


def _np_attention(a, d):
    out, cache = F.scaled_dot_product_attention_forward(
        a["q"], a["k"], a["v"], mask=a.get("mask"), dropout_mask=a.get("dropout_mask"), **_attention_kwargs(d)
    )

    def backward(dout):
        dq, dk, dv = F.scaled_dot_product_attention_backward(dout, cache)
        return {"q": dq, "k": dk, "v": dv}

    return out, backward


def _builtin_attention(t, d):
    q, k, v = t["q"], t["k"], t["v"]
    mask, is_causal = t.get("mask"), "causal" in d["mask"]
    if mask is not None and is_causal:  # one boolean mask (True = may attend): both conventions agree
        T, S = q.shape[-2], k.shape[-2]
        mask = mask & torch.ones(T, S, dtype=torch.bool, device=q.device).tril()  # top-left aligned, as ours
        is_causal = False
    out = TorchF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=d["variant"].scale)
    return out, leaf_gradients(t)


def _attention_dropout(a, d) -> str | None:
    if d["variant"].dropout_p > 0:
        return "dropout_p > 0: F.scaled_dot_product_attention draws its own dropout mask"
    return None


register(
    Case(
        name="scaled_dot_product_attention",
        kind="op",
        draw=_draw_attention,
        differentiable=lambda d: ("q", "k", "v"),
        numpy=_np_attention,
        torch=lambda t, d: (
            TF.scaled_dot_product_attention(
                t["q"], t["k"], t["v"], mask=t.get("mask"), dropout_mask=t.get("dropout_mask"), **_attention_kwargs(d)
            ),
            t,
        ),
        variants=(
            AttentionVariant(scale=None, dropout_p=0.0),
            AttentionVariant(scale=0.5, dropout_p=0.0),
            AttentionVariant(scale=None, dropout_p=0.3),
        ),
        uses=("B", "H", "T", "S", "D", "mask"),
        builtin=Builtin(name="F.scaled_dot_product_attention", run=_builtin_attention, unsupported=_attention_dropout),
    )
)
