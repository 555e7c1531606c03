"""Parity cases for the encoder and decoder layers and the encoder–decoder Transformer. Registered on import.

Layers and model are small (``layer_dims``) so finite differences can probe every
parameter; dropout, where a variant has it, replays the NumPy forward's masks in the
twin. Built-ins: ``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer`` and
``nn.Transformer``, our weights mapped in by ``torch_transformer.builtin``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import numpy_transformer as nt
from numpy_transformer.config import TransformerConfig
from numpy_transformer.functional import causal_mask
from numpy_transformer.modules.dropout_masks import DropoutMasks

from .. import bridge
from .. import builtin as tbuiltin
from .. import transformer as ttransformer
from .. import transformer_layers as tlayers
from ..dropout_masks import DropoutMasks as TwinDropoutMasks
from .registry import (
    Builtin,
    Case,
    draw_mask,
    float_dtype,
    given_masks,
    layer_dims,
    load_weights,
    module_grads,
    normal,
    numpy_arrays,
    record_masks,
    register,
    stored_masks,
    twin_float_dtype,
    twin_leaves,
)


@dataclass(frozen=True)
class LayerVariant:
    norm_first: bool
    activation: str
    dropout: float


LAYER_VARIANTS = (
    LayerVariant(norm_first=False, activation="relu", dropout=0.0),
    LayerVariant(norm_first=True, activation="relu", dropout=0.0),
    LayerVariant(norm_first=False, activation="gelu", dropout=0.0),
    LayerVariant(norm_first=True, activation="gelu", dropout=0.3),
    LayerVariant(norm_first=False, activation="relu", dropout=0.3),
)


def _make_layer(cls, d, dt, rng=None):
    H, C, Fw = layer_dims(d)
    v = d["variant"]
    kwargs = dict(dropout=v.dropout, activation=v.activation, norm_first=v.norm_first, dtype=dt)
    if cls in (nt.EncoderLayer, nt.DecoderLayer):
        kwargs["rng"] = rng or np.random.default_rng(0)
    return cls(C, H, Fw, **kwargs)


def _with_causal(mask: np.ndarray | None, causal: bool, T: int) -> np.ndarray | None:
    if not causal:
        return mask
    return causal_mask(T)[None, None] if mask is None else mask & causal_mask(T)


def _builtin_dropout(a, d) -> str | None:
    if d["variant"].dropout > 0:
        return "dropout > 0: the built-in draws its own dropout masks"
    return None


def _attn_mask(mask: np.ndarray | None, B: int, H: int, T: int, S: int, device):
    """Our mask (True = may attend) as the built-in's ``(B * H, T, S)`` mask, True = blocked."""
    return None if mask is None else bridge.mask_to_attn_mask(mask, B, H, T, S).to(device)


# ---------------------------------------------------------------------------- EncoderLayer


def _draw_encoder_layer(rng, dtype, d):
    layer = _make_layer(nt.EncoderLayer, d, dtype)
    H, C, _ = layer_dims(d)
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in layer.named_parameters()}
    arrays["x"] = normal(rng, (d["B"], d["T"], C), dtype)
    mask, causal = draw_mask(rng, d["mask"], d["B"], H, d["T"], d["T"])
    mask = _with_causal(mask, causal, d["T"])
    if mask is not None:
        arrays["mask"] = mask
    arrays.update(record_masks(lambda m: layer.forward(arrays["x"], mask, m), rng))
    return arrays


def _np_encoder_layer(a, d):
    layer = load_weights(_make_layer(nt.EncoderLayer, d, float_dtype(a)), a)
    y, cache = layer.forward(a["x"], a.get("mask"), DropoutMasks(given=given_masks(a)))

    def backward(dout):
        layer.zero_grad()
        return module_grads(layer, x=layer.backward(dout, cache))

    return y, backward


def _t_encoder_layer(t, d):
    x = t["x"]
    layer = load_weights(_make_layer(tlayers.EncoderLayer, d, x.dtype).to(x.device), t)
    y = layer(x, t.get("mask"), TwinDropoutMasks(given_masks(t)))
    return y, twin_leaves(layer, t, "x")


def _builtin_encoder_layer(t, d):
    x, a = t["x"], numpy_arrays(t)
    layer = load_weights(_make_layer(nt.EncoderLayer, d, a["x"].dtype), a)
    builtin = tbuiltin.encoder_layer_to_torch_builtin(layer, device=x.device)
    B, T, _ = x.shape
    y = builtin(x, src_mask=_attn_mask(a.get("mask"), B, layer.self_attn.n_heads, T, T, x.device))
    return y, lambda: {**tbuiltin.builtin_grads_to_numpy_names(builtin, layer), "x": x.grad}


register(
    Case(
        name="EncoderLayer",
        kind="model",
        draw=_draw_encoder_layer,
        differentiable=lambda d: ("x",),
        all_parameters=True,
        numpy=_np_encoder_layer,
        torch=_t_encoder_layer,
        variants=LAYER_VARIANTS,
        uses=("B", "T", "H", "D", "mask"),
        builtin=Builtin(name="nn.TransformerEncoderLayer", run=_builtin_encoder_layer, unsupported=_builtin_dropout),
    )
)


# ---------------------------------------------------------------------------- DecoderLayer


def _draw_decoder_layer(rng, dtype, d):
    layer = _make_layer(nt.DecoderLayer, d, dtype)
    H, C, _ = layer_dims(d)
    B, T, S = d["B"], d["T"], d["S"]
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in layer.named_parameters()}
    arrays["x"] = normal(rng, (B, T, C), dtype)
    arrays["memory"] = normal(rng, (B, S, C), dtype)
    tgt_mask, causal = draw_mask(rng, d["mask"], B, H, T, T)
    tgt_mask = _with_causal(tgt_mask, causal, T)
    if tgt_mask is not None:
        arrays["tgt_mask"] = tgt_mask
    memory_mask, _ = draw_mask(rng, "padding", B, H, T, S)
    arrays["memory_mask"] = memory_mask
    arrays.update(record_masks(lambda m: layer.forward(arrays["x"], arrays["memory"], tgt_mask, memory_mask, m), rng))
    return arrays


def _np_decoder_layer(a, d):
    layer = load_weights(_make_layer(nt.DecoderLayer, d, float_dtype(a)), a)
    y, cache = layer.forward(
        a["x"], a["memory"], a.get("tgt_mask"), a["memory_mask"], DropoutMasks(given=given_masks(a))
    )

    def backward(dout):
        layer.zero_grad()
        dx, dmemory = layer.backward(dout, cache)
        return module_grads(layer, x=dx, memory=dmemory)

    return y, backward


def _t_decoder_layer(t, d):
    x = t["x"]
    layer = load_weights(_make_layer(tlayers.DecoderLayer, d, x.dtype).to(x.device), t)
    y = layer(x, t["memory"], t.get("tgt_mask"), t["memory_mask"], TwinDropoutMasks(given_masks(t)))
    return y, twin_leaves(layer, t, "x", "memory")


def _builtin_decoder_layer(t, d):
    x, memory, a = t["x"], t["memory"], numpy_arrays(t)
    layer = load_weights(_make_layer(nt.DecoderLayer, d, a["x"].dtype), a)
    builtin = tbuiltin.decoder_layer_to_torch_builtin(layer, device=x.device)
    (B, T, _), S, H = x.shape, memory.shape[1], layer.self_attn.n_heads
    y = builtin(
        x,
        memory,
        tgt_mask=_attn_mask(a.get("tgt_mask"), B, H, T, T, x.device),
        memory_mask=_attn_mask(a["memory_mask"], B, H, T, S, x.device),
    )
    return y, lambda: {**tbuiltin.builtin_grads_to_numpy_names(builtin, layer), "x": x.grad, "memory": memory.grad}


register(
    Case(
        name="DecoderLayer",
        kind="model",
        draw=_draw_decoder_layer,
        differentiable=lambda d: ("x", "memory"),
        all_parameters=True,
        numpy=_np_decoder_layer,
        torch=_t_decoder_layer,
        variants=LAYER_VARIANTS,
        uses=("B", "T", "S", "H", "D", "mask"),
        builtin=Builtin(name="nn.TransformerDecoderLayer", run=_builtin_decoder_layer, unsupported=_builtin_dropout),
    )
)


# ---------------------------------------------------------------------------- Transformer


@dataclass(frozen=True)
class TransformerVariant:
    norm_first: bool
    activation: str
    dropout: float
    tie_embeddings: bool
    layers: int  # encoder layers = decoder layers


def _transformer_config(d: dict) -> TransformerConfig:
    H, C, Fw = layer_dims(d)
    v = d["variant"]
    return TransformerConfig(
        src_vocab_size=d["V"] + 1, tgt_vocab_size=d["V"] + 2, d_model=C, n_heads=H, d_ff=Fw,
        n_encoder_layers=v.layers, n_decoder_layers=v.layers, dropout=v.dropout, activation=v.activation,
        norm_first=v.norm_first, max_len=8, pad_id=0, tie_embeddings=v.tie_embeddings,
    )  # fmt: skip


def _make_transformer(d: dict, dtype) -> nt.Transformer:
    return nt.Transformer(_transformer_config(d), dtype=dtype, rng=np.random.default_rng(0))


def _draw_transformer(rng, dtype, d):
    cfg = _transformer_config(d)
    model = _make_transformer(d, dtype)
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    B, S, T = d["B"], d["S"], d["T"]
    src = rng.integers(1, cfg.src_vocab_size, size=(B, S))
    tgt = rng.integers(1, cfg.tgt_vocab_size, size=(B, T))
    for ids in (src, tgt):  # right padding of random length; position 0 stays a real token
        lengths = rng.integers(1, ids.shape[1] + 1, size=B)
        ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = cfg.pad_id
    arrays["src"], arrays["tgt"] = src, tgt
    _, cache = model.forward(src, tgt, rng=rng)
    arrays.update(stored_masks(cache.dropout_masks))
    return arrays


def _np_transformer(a, d):
    model = load_weights(_make_transformer(d, float_dtype(a)), a)
    logits, cache = model.forward(a["src"], a["tgt"], dropout_masks=given_masks(a))

    def backward(dout):
        model.zero_grad()
        model.backward(dout, cache)
        return module_grads(model)

    return logits, backward


def _t_transformer(t, d):
    src = t["src"]
    model = ttransformer.Transformer(_transformer_config(d), dtype=twin_float_dtype(t)).to(src.device)
    model = load_weights(model, t)
    logits = model(src, t["tgt"], given_masks(t))
    return logits, dict(model.named_parameters())


def _builtin_transformer(t, d):
    src, a = t["src"], numpy_arrays(t)
    model = load_weights(_make_transformer(d, float_dtype(a)), a)
    builtin = tbuiltin.transformer_to_torch_builtin(model, device=src.device)
    return builtin(src, t["tgt"]), lambda: tbuiltin.builtin_grads_to_numpy_names(builtin, model)


register(
    Case(
        name="Transformer",
        kind="model",
        draw=_draw_transformer,
        differentiable=lambda d: (),
        all_parameters=True,
        numpy=_np_transformer,
        torch=_t_transformer,
        variants=(
            TransformerVariant(norm_first=False, activation="relu", dropout=0.0, tie_embeddings=False, layers=1),
            TransformerVariant(norm_first=True, activation="gelu", dropout=0.0, tie_embeddings=True, layers=1),
            TransformerVariant(norm_first=False, activation="gelu", dropout=0.2, tie_embeddings=True, layers=2),
            TransformerVariant(norm_first=True, activation="relu", dropout=0.2, tie_embeddings=False, layers=2),
        ),
        uses=("B", "T", "S", "H", "D", "V"),
        builtin=Builtin(name="nn.Transformer", run=_builtin_transformer, unsupported=_builtin_dropout),
    )
)
