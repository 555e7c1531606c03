"""Parity case for the recurrent encoder–decoder with classic attention. Registered on import.

No PyTorch built-in: PyTorch ships no attention-based RNN encoder–decoder (its GRUs are
compared with ``nn.GRU`` in ``cases_gru``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import numpy_transformer as nt
from numpy_transformer.config import RNN_ATTENTIONS, RNNSeq2SeqConfig

from ..rnn_seq2seq import RNNSeq2Seq as TwinRNNSeq2Seq
from .registry import (
    Case,
    float_dtype,
    load_weights,
    module_grads,
    normal,
    register,
    twin_float_dtype,
)


@dataclass(frozen=True)
class RNNSeq2SeqVariant:
    attention: str  # one of RNN_ATTENTIONS


def _config(d: dict) -> RNNSeq2SeqConfig:
    return RNNSeq2SeqConfig(
        src_vocab_size=d["V"] + 1, tgt_vocab_size=d["V"] + 2, embed_dim=3, hidden_size=4,
        attention=d["variant"].attention, attn_dim=3,
    )  # fmt: skip


def _draw(rng, dtype, d):
    cfg = _config(d)
    model = nt.RNNSeq2Seq(cfg, dtype=dtype, rng=np.random.default_rng(0))
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    B, S, T = d["B"], d["S"], d["T"]
    src = rng.integers(1, cfg.src_vocab_size, size=(B, S))
    tgt = rng.integers(1, cfg.tgt_vocab_size, size=(B, T))
    for ids in (src, tgt):  # right padding; position 0 stays a real token
        lengths = rng.integers(1, ids.shape[1] + 1, size=B)
        ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = cfg.pad_id
    arrays["src"], arrays["tgt"] = src, tgt
    return arrays


def _np(a, d):
    model = load_weights(nt.RNNSeq2Seq(_config(d), dtype=float_dtype(a), rng=np.random.default_rng(0)), a)
    logits, cache = model.forward(a["src"], a["tgt"])

    def backward(dout):
        model.zero_grad()
        model.backward(dout, cache)
        return module_grads(model)

    return logits, backward


def _torch(t, d):
    src = t["src"]
    model = load_weights(TwinRNNSeq2Seq(_config(d), dtype=twin_float_dtype(t)).to(src.device), t)
    return model(src, t["tgt"]), dict(model.named_parameters())


register(
    Case(
        name="RNNSeq2Seq",
        kind="model",
        draw=_draw,
        differentiable=lambda d: (),
        all_parameters=True,
        numpy=_np,
        torch=_torch,
        variants=tuple(RNNSeq2SeqVariant(attention=a) for a in RNN_ATTENTIONS),
        uses=("B", "T", "S", "V"),
    )
)
