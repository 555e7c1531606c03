"""Parity cases for CLIP: the ``quick_gelu`` and ``clip_loss`` ops and ``CLIPModel``. Registered on import.

``clip_loss`` differentiates both embeddings and ``logit_scale``; its draw keeps the log-scale in
``[0, ln 100]``, the range OpenCLIP clamps it to. Neither op has a PyTorch built-in: Hugging Face's
``QuickGELUActivation`` and ``clip_loss`` are compared in ``parity_tests/test_clip_hf.py``.

``CLIPModel``'s one output is ``logits_per_image``, ``text_embeds`` and ``image_embeds`` flattened, then the
loss (with ``return_loss``): a random upstream gradient reaches every one of them at once, and every
parameter (``logit_scale`` and both towers) and the image are compared. Captions end in the
end-of-text token (the largest id) at a random position, padding after it. Variants: depths (no
text or no image block at all), one patch per image, and a batch with one text more than images (no loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import numpy_transformer.functional as F
from numpy_transformer.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from numpy_transformer.models import clip as nclip

from .. import clip as tclip
from .. import functional as TF
from .registry import (
    Case,
    float_dtype,
    layer_dims,
    load_weights,
    module_grads,
    normal,
    register,
    twin_float_dtype,
)

# ---------------------------------------------------------------------------- quick_gelu


def _draw_quick_gelu(rng, dtype, d):
    return {"x": normal(rng, (d["B"], d["T"], d["D"]), dtype, scale=2.0)}


def _np_quick_gelu(a, d):
    y, cache = F.quick_gelu_forward(a["x"])
    return y, lambda dout: {"x": F.quick_gelu_backward(dout, cache)}


register(
    Case(
        name="quick_gelu",
        kind="op",
        draw=_draw_quick_gelu,
        differentiable=lambda d: ("x",),
        numpy=_np_quick_gelu,
        torch=lambda t, d: (TF.quick_gelu(t["x"]), t),
        uses=("B", "T", "D"),
    )
)


# ---------------------------------------------------------------------------- clip_loss


def _draw_clip_loss(rng, dtype, d):
    B, E = d["B"], d["D"]
    return {
        "image_embeds": normal(rng, (B, E), dtype),
        "text_embeds": normal(rng, (B, E), dtype),
        "logit_scale": np.asarray(rng.uniform(0.0, np.log(100.0)), dtype=dtype),
    }


def _np_clip_loss(a, d):
    loss, cache = F.clip_loss_forward(a["image_embeds"], a["text_embeds"], a["logit_scale"])

    def backward(dout):
        dimage, dtext, dscale = F.clip_loss_backward(dout, cache)
        return {"image_embeds": dimage, "text_embeds": dtext, "logit_scale": dscale}

    return loss, backward


register(
    Case(
        name="clip_loss",
        kind="op",
        draw=_draw_clip_loss,
        differentiable=lambda d: ("image_embeds", "text_embeds", "logit_scale"),
        numpy=_np_clip_loss,
        torch=lambda t, d: (TF.clip_loss(t["image_embeds"], t["text_embeds"], t["logit_scale"]), t),
        uses=("B", "D"),
    )
)


# ---------------------------------------------------------------------------- CLIPModel


@dataclass(frozen=True)
class CLIPVariant:
    text_layers: int
    vision_layers: int
    image_size: int
    patch_size: int
    return_loss: bool  # with the loss the batch is square (B texts); without it there is one text more


CLIP_VARIANTS = (
    CLIPVariant(text_layers=1, vision_layers=1, image_size=4, patch_size=2, return_loss=True),
    CLIPVariant(text_layers=0, vision_layers=1, image_size=4, patch_size=4, return_loss=True),
    CLIPVariant(text_layers=1, vision_layers=0, image_size=4, patch_size=2, return_loss=False),
)


def _clip_config(d: dict) -> CLIPConfig:
    H, C, Fw = layer_dims(d)
    v = d["variant"]
    text = CLIPTextConfig(
        vocab_size=max(3, d["V"]), max_len=d["T"], d_model=C, n_heads=H, n_layers=v.text_layers, d_ff=Fw
    )
    vision = CLIPVisionConfig(
        image_size=v.image_size, patch_size=v.patch_size, num_channels=1, d_model=C, n_heads=H,
        n_layers=v.vision_layers, d_ff=Fw,
    )  # fmt: skip
    return CLIPConfig(text=text, vision=vision, projection_dim=3)


def caption_ids(rng: np.random.Generator, Bt: int, T: int, V: int) -> np.ndarray:
    """(Bt, T) ids: words in [1, V-1), the end-of-text token V-1 at a random position, padding 0 after it."""
    ids = rng.integers(1, V - 1, size=(Bt, T)) if V > 2 else np.ones((Bt, T), dtype=np.int64)
    eot = rng.integers(0, T, size=Bt)
    ids[np.arange(Bt), eot] = V - 1
    ids[np.arange(T)[None, :] > eot[:, None]] = 0
    return ids


def _clip_texts(d: dict) -> int:
    return d["B"] if d["variant"].return_loss else d["B"] + 1


def _draw_clip(rng, dtype, d):
    cfg = _clip_config(d)
    model = nclip.CLIPModel(cfg, dtype, np.random.default_rng(0))
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    arrays["logit_scale"] = np.asarray(rng.uniform(0.0, np.log(100.0)), dtype=dtype)
    arrays["input_ids"] = caption_ids(rng, _clip_texts(d), cfg.text.max_len, cfg.text.vocab_size)
    side = cfg.vision.image_size
    arrays["pixel_values"] = normal(rng, (d["B"], 1, side, side), dtype)
    return arrays


def _clip_joined(out: dict, cat):
    """One output array: logits_per_image, text_embeds, image_embeds (flattened), then the loss if any."""
    parts = [out["logits_per_image"], out["text_embeds"], out["image_embeds"]]
    parts = [p.reshape(-1) for p in parts] + ([out["loss"].reshape(1)] if "loss" in out else [])
    return cat(parts)


def _np_clip(a, d):
    model = load_weights(nclip.CLIPModel(_clip_config(d), float_dtype(a), np.random.default_rng(0)), a)
    out, cache = model.forward(a["input_ids"], a["pixel_values"], return_loss=d["variant"].return_loss)
    named = {"logits_per_image": out.logits_per_image, "text_embeds": out.text_embeds, "image_embeds": out.image_embeds}
    if out.loss is not None:
        named["loss"] = out.loss

    def backward(dout):
        pieces, start = {}, 0
        for name, value in named.items():
            pieces[name] = np.ascontiguousarray(dout[start : start + value.size]).reshape(value.shape)
            start += value.size
        model.zero_grad()
        dpixels = model.backward(
            cache, dloss=pieces.get("loss"), d_logits_per_image=pieces["logits_per_image"],
            d_image_embeds=pieces["image_embeds"], d_text_embeds=pieces["text_embeds"],
        )  # fmt: skip
        return module_grads(model, pixel_values=dpixels)

    return _clip_joined(named, np.concatenate), backward


def _torch_clip(t, d):
    x = t["pixel_values"]
    model = tclip.CLIPModel(_clip_config(d), dtype=twin_float_dtype(t)).to(x.device)
    model = load_weights(model, t)
    out = model(t["input_ids"], x, return_loss=d["variant"].return_loss)
    leaves = dict(model.named_parameters())
    leaves["pixel_values"] = x
    return _clip_joined(out, torch.cat), leaves


register(
    Case(
        name="CLIPModel",
        kind="model",
        draw=_draw_clip,
        differentiable=lambda d: ("pixel_values",),
        all_parameters=True,
        numpy=_np_clip,
        torch=_torch_clip,
        variants=CLIP_VARIANTS,
        uses=("B", "T", "H", "V"),
    )
)
