"""Parity case for the convolutional baseline ``ImageCNN`` (conv stages, ReLU, max-pool, linear head).

Registered on import. Every parameter and the image's own gradient are compared. Variants: one
or two stages, 1x1, 3x3 and 5x5 kernels, one or two image channels. No PyTorch built-in model:
``parity_tests/test_cnn.py`` compares it with a ``torch.nn.Sequential`` of ``Conv2d``, ``ReLU``,
``MaxPool2d`` and ``Linear`` on the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numpy_transformer.config import CNNConfig
from numpy_transformer.models import cnn as ncnn

from .. import cnn as tcnn
from .registry import Case, float_dtype, load_weights, module_grads, normal, register, twin_float_dtype


@dataclass(frozen=True)
class CNNVariant:
    image_size: int
    num_channels: int
    channels: tuple[int, ...]
    kernel_size: int


CNN_VARIANTS = (
    CNNVariant(image_size=8, num_channels=1, channels=(3, 4), kernel_size=3),
    CNNVariant(image_size=4, num_channels=2, channels=(3,), kernel_size=1),
    CNNVariant(image_size=4, num_channels=1, channels=(2, 3), kernel_size=5),
)


def _config(d: dict) -> CNNConfig:
    v = d["variant"]
    return CNNConfig(image_size=v.image_size, num_channels=v.num_channels, channels=v.channels,
                     kernel_size=v.kernel_size, num_labels=max(2, d["V"]))  # fmt: skip


def _draw(rng, dtype, d):
    cfg = _config(d)
    model = ncnn.ImageCNN(cfg, dtype, np.random.default_rng(0))
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    arrays["pixel_values"] = normal(rng, (d["B"], cfg.num_channels, cfg.image_size, cfg.image_size), dtype)
    return arrays


def _numpy(a, d):
    model = load_weights(ncnn.ImageCNN(_config(d), float_dtype(a), np.random.default_rng(0)), a)
    out, cache = model.forward(a["pixel_values"])

    def backward(dout):
        model.zero_grad()
        return module_grads(model, pixel_values=model.backward(dout, cache))

    return out.logits, backward


def _torch(t, d):
    x = t["pixel_values"]
    model = load_weights(tcnn.ImageCNN(_config(d), dtype=twin_float_dtype(t)).to(x.device), t)
    leaves = dict(model.named_parameters())
    leaves["pixel_values"] = x
    return model(x), leaves


register(
    Case(
        name="ImageCNN",
        kind="model",
        draw=_draw,
        differentiable=lambda d: ("pixel_values",),
        all_parameters=True,
        numpy=_numpy,
        torch=_torch,
        variants=CNN_VARIANTS,
        uses=("B", "V"),
    )
)
