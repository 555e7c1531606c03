"""Parity case for the GPT-style decoder (``numpy_transformer.GPT``). Registered on import.

Every parameter is compared (the tied ``tok_embed.weight`` collects the head's and the
lookup's gradient in both halves), with dropout switched on in some variants: the masks
are drawn once by a throwaway NumPy forward and replayed everywhere, so the NumPy run,
the twin and each finite-difference probe drop the same units.
"""

from __future__ import annotations

import numpy as np

import numpy_transformer as nt
from numpy_transformer.config import GPTConfig

from . import gpt as tgpt
from .parity import _DROP, CASES, Case, _given_masks, _layer_dims, _load, _module_grads, _normal, _params_and, a_dtype

# (activation, dropout, layers, pad_id): the pad variant puts pad tokens anywhere, position 0
# included, so some queries see no key at all (their attention weights are defined as zeros).
VARIANTS = (
    ("gelu", 0.0, 1, None),
    ("gelu_tanh", 0.0, 2, None),
    ("gelu", 0.3, 2, None),
    ("gelu", 0.2, 1, 0),
)


def _config(d: dict) -> GPTConfig:
    H, C, Fw = _layer_dims(d)
    activation, p, layers, pad_id = d["variant"]
    return GPTConfig(
        vocab_size=d["V"] + 1, max_len=max(8, d["T"]), d_model=C, n_heads=H, n_layers=layers, d_ff=Fw,
        dropout=p, activation=activation, pad_id=pad_id,
    )  # fmt: skip


def _draw(rng, dtype, d):
    cfg = _config(d)
    model = nt.GPT(cfg, dtype=dtype, rng=np.random.default_rng(0))
    arrays = {name: _normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    ids = rng.integers(0, cfg.vocab_size, size=(d["B"], d["T"]))
    if cfg.pad_id is not None:
        ids[rng.random(ids.shape) < 0.25] = cfg.pad_id
    arrays["ids"] = ids
    _, cache = model.forward(ids, rng=rng)  # training mode: records the dropout masks to replay
    arrays.update({_DROP + k: v for k, v in cache.dropout_masks.items()})
    return arrays


def _np(a, d):
    model = _load(nt.GPT(_config(d), dtype=a_dtype(a), rng=np.random.default_rng(0)), a)
    logits, cache = model.forward(a["ids"], dropout_masks=_given_masks(a))

    def backward(dout):
        model.zero_grad()
        model.backward(dout, cache)
        return _module_grads(model)

    return logits, backward


def _torch(t, d):
    ids = t["ids"]
    dtype = next(v.dtype for v in t.values() if v.is_floating_point())
    model = _load(tgpt.GPT(_config(d), dtype=dtype).to(ids.device), t)
    return model(ids, _given_masks(t)), dict(model.named_parameters())


CASES["GPT"] = Case(
    "GPT", "model", _draw, _params_and(), _np, _torch, variants=VARIANTS, uses=("B", "T", "H", "D", "V")
)
