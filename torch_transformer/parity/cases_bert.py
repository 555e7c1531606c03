"""Parity cases for BERT: the encoder with its pooler, the MLM head, the classification head.

Registered on import. Variants: dropout p and the number of layers; padding, two
segments and (with p > 0) the NumPy model's dropout masks replayed in the twin.
No PyTorch built-in: ``transformers.BertModel`` is compared in ``parity_tests/test_pretrained.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from numpy_transformer.config import BertConfig
from numpy_transformer.models import bert as nbert

from .. import bert as tbert
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
class BertVariant:
    dropout: float
    layers: int


VARIANTS = (BertVariant(dropout=0.0, layers=1), BertVariant(dropout=0.2, layers=2))
_LABELS = 3


def _config(d: dict) -> BertConfig:
    H, C, Fw = layer_dims(d)
    v = d["variant"]
    return BertConfig(
        vocab_size=d["V"] + 2, hidden_size=C, n_layers=v.layers, n_heads=H, intermediate_size=Fw,
        max_position_embeddings=8, type_vocab_size=2, dropout=v.dropout, layer_norm_eps=1e-12, pad_id=0,
    )  # fmt: skip


def _make(kind: str, cfg: BertConfig, dtype, twin: bool = False):
    if twin:
        dt = torch.float32 if dtype == np.float32 else torch.float64
        if kind == "BertModel":
            return tbert.BertModel(cfg, dtype=dt)
        if kind == "BertForMaskedLM":
            return tbert.BertForMaskedLM(cfg, dtype=dt)
        return tbert.BertForSequenceClassification(cfg, _LABELS, dtype=dt)
    rng = np.random.default_rng(0)
    if kind == "BertModel":
        return nbert.BertModel(cfg, dtype, rng)
    if kind == "BertForMaskedLM":
        return nbert.BertForMaskedLM(cfg, dtype, rng)
    return nbert.BertForSequenceClassification(cfg, _LABELS, dtype, rng)


def _drawer(kind: str):
    def draw(rng, dtype, d):
        cfg = _config(d)
        model = _make(kind, cfg, dtype)
        arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
        B, S = d["B"], d["S"]
        ids = rng.integers(1, cfg.vocab_size, size=(B, S))
        lengths = rng.integers(1, S + 1, size=B)  # right padding; position 0 ([CLS]) stays a token
        keep = np.arange(S)[None, :] < lengths[:, None]
        if kind != "BertForMaskedLM":
            ids[~keep] = cfg.pad_id
        # else: the pad row is also a row of the tied MLM decoder, where it has a true
        # gradient; padded positions keep ordinary ids (the attention mask alone hides
        # them) so finite differences see no lookup of the pad row, whose gradient is
        # zero by convention only.
        arrays["input_ids"], arrays["attention_mask"] = ids, keep.astype(np.int64)
        arrays["token_type_ids"] = (np.arange(S)[None, :] >= rng.integers(1, S + 1, size=(B, 1))).astype(np.int64)
        model.load_state_dict({n: arrays[n] for n, _ in model.named_parameters()})
        _, cache = model.forward(ids, keep.astype(np.int64), arrays["token_type_ids"], rng=rng)
        used = cache.dropout_masks if kind == "BertModel" else cache.bert.dropout_masks
        arrays.update(stored_masks(used))
        return arrays

    return draw


def _zero_pad_row(name: str, numeric: np.ndarray, d: dict) -> np.ndarray:
    """The pad row of the word embeddings gets no gradient by convention (``padding_idx``)."""
    if name.endswith("word_embeddings.weight"):
        numeric = numeric.copy()
        numeric[_config(d).pad_id] = 0
    return numeric


def _joined(hidden, pooled):
    """One output array for the case: every hidden state, then the pooled vector."""
    B = hidden.shape[0]
    if isinstance(hidden, torch.Tensor):
        return torch.cat([hidden.reshape(B, -1), pooled], dim=1)
    return np.concatenate([hidden.reshape(B, -1), pooled], axis=1)


def _numpy(kind: str):
    def run(a, d):
        model = load_weights(_make(kind, _config(d), float_dtype(a)), a)
        out, cache = model.forward(
            a["input_ids"], a["attention_mask"], a["token_type_ids"], dropout_masks=given_masks(a)
        )

        def backward(dout):
            model.zero_grad()
            if kind == "BertModel":
                B, S, C = out.last_hidden_state.shape
                model.backward(dout[:, : S * C].reshape(B, S, C), np.ascontiguousarray(dout[:, S * C :]), cache)
            else:
                model.backward(dout, cache)
            return module_grads(model)

        if kind == "BertModel":
            return _joined(out.last_hidden_state, out.pooler_output), backward
        return out, backward

    return run


def _torch(kind: str):
    def run(t, d):
        ids = t["input_ids"]
        model = load_weights(_make(kind, _config(d), numpy_dtype(twin_float_dtype(t)), twin=True), t)
        model = model.to(ids.device)
        out = model(ids, t["attention_mask"], t["token_type_ids"], given_masks(t))
        if kind == "BertModel":
            out = _joined(*out)
        return out, dict(model.named_parameters())

    return run


for _kind in ("BertModel", "BertForMaskedLM", "BertForSequenceClassification"):
    register(
        Case(
            name=_kind,
            kind="model",
            draw=_drawer(_kind),
            differentiable=lambda d: (),
            all_parameters=True,
            numpy=_numpy(_kind),
            torch=_torch(_kind),
            variants=VARIANTS,
            uses=("B", "S", "H", "D", "V"),
            conventional_zeros=None if _kind == "BertForMaskedLM" else _zero_pad_row,
        )
    )
