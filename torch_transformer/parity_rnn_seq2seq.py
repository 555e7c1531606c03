"""Parity case for the recurrent encoder–decoder with classic attention. Registered on import."""

from __future__ import annotations

import numpy as np

import numpy_transformer as nt
from numpy_transformer.config import RNN_ATTENTIONS, RNNSeq2SeqConfig

from .parity import CASES, Case, _load, _module_grads, _normal, _params_and, a_dtype
from .rnn_seq2seq import RNNSeq2Seq as TwinRNNSeq2Seq


def _config(d: dict) -> RNNSeq2SeqConfig:
    return RNNSeq2SeqConfig(
        src_vocab_size=d["V"] + 1, tgt_vocab_size=d["V"] + 2, embed_dim=3, hidden_size=4,
        attention=d["variant"], attn_dim=3,
    )  # fmt: skip


def _draw(rng, dtype, d):
    cfg = _config(d)
    model = nt.RNNSeq2Seq(cfg, dtype=dtype, rng=np.random.default_rng(0))
    arrays = {name: _normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    B, S, T = d["B"], d["S"], d["T"]
    src = rng.integers(1, cfg.src_vocab_size, size=(B, S))
    tgt = rng.integers(1, cfg.tgt_vocab_size, size=(B, T))
    for ids in (src, tgt):  # right padding; position 0 stays a real token
        lengths = rng.integers(1, ids.shape[1] + 1, size=B)
        ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = cfg.pad_id
    arrays["src"], arrays["tgt"] = src, tgt
    return arrays


def _np(a, d):
    model = _load(nt.RNNSeq2Seq(_config(d), dtype=a_dtype(a), rng=np.random.default_rng(0)), a)
    logits, cache = model.forward(a["src"], a["tgt"])

    def backward(dout):
        model.zero_grad()
        model.backward(dout, cache)
        return _module_grads(model)

    return logits, backward


def _torch(t, d):
    src = t["src"]
    dtype = next(v.dtype for v in t.values() if v.is_floating_point())
    model = _load(TwinRNNSeq2Seq(_config(d), dtype=dtype).to(src.device), t)
    return model(src, t["tgt"]), dict(model.named_parameters())


CASES["RNNSeq2Seq"] = Case(
    "RNNSeq2Seq", "model", _draw, _params_and(), _np, _torch, variants=RNN_ATTENTIONS, uses=("B", "T", "S", "V")
)
