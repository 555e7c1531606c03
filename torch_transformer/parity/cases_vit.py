"""Parity cases for the Vision Transformer: ``ViT`` (encoder + pooler) and ``ViTForImageClassification``.

Registered on import. Every parameter is compared, the class token's and the position table's
included, and so is the gradient of the image itself (``pixel_values``). Variants: image and patch
sizes (one patch only, several channels), depth (none at all: the head then reads the class token
and its position only), dropout (the NumPy model's masks replayed in the twin and in every
finite-difference probe) and query/key/value projections without bias. No PyTorch built-in:
``transformers.ViTModel`` and ``ViTForImageClassification`` are compared in ``parity_tests/test_vit_hf.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from numpy_transformer.config import ViTConfig
from numpy_transformer.models import vit as nvit

from .. import vit as tvit
from .registry import (
    Case,
    float_dtype,
    given_masks,
    layer_dims,
    load_weights,
    module_grads,
    normal,
    numpy_dtype,
    register,
    stored_masks,
    twin_float_dtype,
)


@dataclass(frozen=True)
class ViTVariant:
    image_size: int
    patch_size: int
    num_channels: int
    layers: int
    dropout: float
    qkv_bias: bool
    pooler: bool  # the encoder's pooler (the classifier has none, as Hugging Face's)


VIT_VARIANTS = (
    ViTVariant(image_size=4, patch_size=2, num_channels=1, layers=1, dropout=0.0, qkv_bias=True, pooler=True),
    ViTVariant(image_size=6, patch_size=3, num_channels=2, layers=2, dropout=0.2, qkv_bias=True, pooler=True),
    ViTVariant(image_size=4, patch_size=4, num_channels=3, layers=1, dropout=0.0, qkv_bias=False, pooler=True),
    ViTVariant(image_size=4, patch_size=2, num_channels=1, layers=1, dropout=0.0, qkv_bias=True, pooler=False),
)
CLASSIFIER_VARIANTS = (
    ViTVariant(image_size=4, patch_size=2, num_channels=1, layers=1, dropout=0.0, qkv_bias=True, pooler=False),
    ViTVariant(image_size=4, patch_size=2, num_channels=2, layers=2, dropout=0.2, qkv_bias=False, pooler=False),
    ViTVariant(image_size=4, patch_size=2, num_channels=1, layers=0, dropout=0.0, qkv_bias=True, pooler=False),
)


def _config(d: dict) -> ViTConfig:
    H, C, Fw = layer_dims(d)
    v = d["variant"]
    return ViTConfig(
        image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels, d_model=C, n_heads=H,
        n_layers=v.layers, d_ff=Fw, dropout=v.dropout, num_labels=max(2, d["V"]), qkv_bias=v.qkv_bias,
    )  # fmt: skip


def _make(kind: str, d: dict, dtype, twin: bool = False):
    cfg, pooler = _config(d), d["variant"].pooler
    if twin:
        dt = torch.float32 if dtype == np.float32 else torch.float64
        if kind == "ViT":
            return tvit.ViT(cfg, dtype=dt, add_pooling_layer=pooler)
        return tvit.ViTForImageClassification(cfg, dtype=dt)
    if kind == "ViT":
        return nvit.ViT(cfg, dtype, np.random.default_rng(0), add_pooling_layer=pooler)
    return nvit.ViTForImageClassification(cfg, dtype, np.random.default_rng(0))


def _drawer(kind: str):
    def draw(rng, dtype, d):
        cfg = _config(d)
        model = _make(kind, d, dtype)
        arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
        arrays["pixel_values"] = normal(rng, (d["B"], cfg.num_channels, cfg.image_size, cfg.image_size), dtype)
        model.load_state_dict({n: arrays[n] for n, _ in model.named_parameters()})
        _, cache = model.forward(arrays["pixel_values"], rng=rng)  # training mode: records the dropout masks
        arrays.update(stored_masks(cache.dropout_masks if kind == "ViT" else cache.vit.dropout_masks))
        return arrays

    return draw


def _joined(hidden, pooled):
    """One output array for the case: every hidden state, then (with a pooler) the pooled vector."""
    B = hidden.shape[0]
    if isinstance(hidden, torch.Tensor):
        return hidden.reshape(B, -1) if pooled is None else torch.cat([hidden.reshape(B, -1), pooled], dim=1)
    return hidden.reshape(B, -1) if pooled is None else np.concatenate([hidden.reshape(B, -1), pooled], axis=1)


def _numpy(kind: str):
    def run(a, d):
        model = load_weights(_make(kind, d, float_dtype(a)), a)
        out, cache = model.forward(a["pixel_values"], dropout_masks=given_masks(a))

        def backward(dout):
            model.zero_grad()
            if kind == "ViT":
                B, L, C = out.last_hidden_state.shape
                d_pooled = None if out.pooler_output is None else np.ascontiguousarray(dout[:, L * C :])
                dpixels = model.backward(dout[:, : L * C].reshape(B, L, C), d_pooled, cache)
            else:
                dpixels = model.backward(dout, cache)
            return module_grads(model, pixel_values=dpixels)

        if kind == "ViT":
            return _joined(out.last_hidden_state, out.pooler_output), backward
        return out.logits, backward

    return run


def _torch(kind: str):
    def run(t, d):
        x = t["pixel_values"]
        model = _make(kind, d, numpy_dtype(twin_float_dtype(t)), twin=True).to(x.device)
        model = load_weights(model, t)
        out = model(x, given_masks(t))
        if kind == "ViT":
            out = _joined(*out)
        leaves = dict(model.named_parameters())
        leaves["pixel_values"] = x
        return out, leaves

    return run


for _kind, _variants in (("ViT", VIT_VARIANTS), ("ViTForImageClassification", CLASSIFIER_VARIANTS)):
    register(
        Case(
            name=_kind,
            kind="model",
            draw=_drawer(_kind),
            differentiable=lambda d: ("pixel_values",),
            all_parameters=True,
            numpy=_numpy(_kind),
            torch=_torch(_kind),
            variants=_variants,
            uses=("B", "H", "D", "V"),
        )
    )
