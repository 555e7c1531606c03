"""Parity case for the GPT-style decoder (``numpy_transformer.GPT``). Registered on import.

Every parameter is compared (the tied ``tok_embed.weight`` collects the head's and the
lookup's gradient in both halves), with dropout switched on in some variants: the masks
are drawn once by a throwaway NumPy forward and replayed everywhere, so the NumPy run,
the twin and each finite-difference probe drop the same units. No PyTorch built-in:
``transformers.GPT2LMHeadModel`` is compared in ``parity_tests/test_gpt_hf.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import numpy_transformer as nt
from numpy_transformer.config import GPTConfig

from .. import gpt as tgpt
from .registry import (
    Case,
    float_dtype,
    given_masks,
    layer_dims,
    load_weights,
    module_grads,
    normal,
    register,
    stored_masks,
    twin_float_dtype,
)


@dataclass(frozen=True)
class GPTVariant:
    activation: str
    dropout: float
    layers: int
    # None: no padding. 0: pad tokens anywhere, position 0 included, so some queries
    # see no key at all (their attention weights are defined as zeros).
    pad_id: int | None


VARIANTS = (
    GPTVariant(activation="gelu", dropout=0.0, layers=1, pad_id=None),
    GPTVariant(activation="gelu_tanh", dropout=0.0, layers=2, pad_id=None),
    GPTVariant(activation="gelu", dropout=0.3, layers=2, pad_id=None),
    GPTVariant(activation="gelu", dropout=0.2, layers=1, pad_id=0),
)


def _config(d: dict) -> GPTConfig:
    H, C, Fw = layer_dims(d)
    v = d["variant"]
    return GPTConfig(
        vocab_size=d["V"] + 1, max_len=max(8, d["T"]), d_model=C, n_heads=H, n_layers=v.layers, d_ff=Fw,
        dropout=v.dropout, activation=v.activation, pad_id=v.pad_id,
    )  # fmt: skip


def _draw(rng, dtype, d):
    cfg = _config(d)
    model = nt.GPT(cfg, dtype=dtype, rng=np.random.default_rng(0))
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    ids = rng.integers(0, cfg.vocab_size, size=(d["B"], d["T"]))
    if cfg.pad_id is not None:
        ids[rng.random(ids.shape) < 0.25] = cfg.pad_id
    arrays["ids"] = ids
    _, cache = model.forward(ids, rng=rng)  # training mode: records the dropout masks to replay
    arrays.update(stored_masks(cache.dropout_masks))
    return arrays


def _np(a, d):
    model = load_weights(nt.GPT(_config(d), dtype=float_dtype(a), rng=np.random.default_rng(0)), a)
    logits, cache = model.forward(a["ids"], dropout_masks=given_masks(a))

    def backward(dout):
        model.zero_grad()
        model.backward(dout, cache)
        return module_grads(model)

    return logits, backward


def _torch(t, d):
    ids = t["ids"]
    model = load_weights(tgpt.GPT(_config(d), dtype=twin_float_dtype(t)).to(ids.device), t)
    return model(ids, given_masks(t)), dict(model.named_parameters())


register(
    Case(
        name="GPT",
        kind="model",
        draw=_draw,
        differentiable=lambda d: (),
        all_parameters=True,
        numpy=_np,
        torch=_torch,
        variants=VARIANTS,
        uses=("B", "T", "H", "D", "V"),
    )
)
