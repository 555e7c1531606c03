"""Our BERT heads against Hugging Face's, with mapped weights: the built-in check for the heads.

``transformers.BertForMaskedLM`` and ``transformers.BertForSequenceClassification``, built
from a small random config (eager attention, float64), hold the reference weights; they are
renamed to ours (the encoder through ``numpy_transformer.applications.pretrained.hf_key_map``, the heads
through ``HF_HEADS_TO_OURS``) and both sides run the same padded batch. Compared: the logits,
the loss Hugging Face computes from ``labels``, and the gradient of that loss with respect
to every parameter. (The real all-MiniLM-L6-v2 checkpoint against ``transformers.BertModel``
is in ``test_pretrained.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.applications.pretrained import HF_HEADS_TO_OURS, hf_key_map
from numpy_transformer.functional import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.models.bert import IGNORE_INDEX, mask_tokens
from parity_tests.helpers import assert_matches

transformers = pytest.importorskip("transformers")

V, LAYERS, LABELS = 50, 2, 3


def _configs():
    hf = transformers.BertConfig(
        vocab_size=V, hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=20, type_vocab_size=2, layer_norm_eps=1e-12, num_labels=LABELS,
        attn_implementation="eager",
    )  # fmt: skip
    ours = nt.BertConfig(
        vocab_size=V, hidden_size=16, n_layers=LAYERS, n_heads=4, intermediate_size=32, max_position_embeddings=20,
        type_vocab_size=2, layer_norm_eps=1e-12, dropout=0.1,
    )  # fmt: skip
    return hf, ours


def _our_name(hf_key: str, has_pooler: bool) -> str:
    if hf_key in HF_HEADS_TO_OURS:
        return HF_HEADS_TO_OURS[hf_key]
    return "bert." + hf_key_map(LAYERS, pooler=has_pooler)[hf_key.removeprefix("bert.")]


def _load_from_hf(ours: nt.Module, hf_model) -> dict[str, torch.nn.Parameter]:
    """Copy every HF parameter into ours; return our name -> HF parameter (for the gradients)."""
    params = dict(hf_model.named_parameters())  # tied weights appear once
    has_pooler = any("pooler" in k for k in params)
    by_ours = {_our_name(k, has_pooler): p for k, p in params.items()}
    ours.load_state_dict({n: by_ours[n].detach().numpy().copy() for n, _ in ours.named_parameters()})
    assert set(by_ours) == {n for n, _ in ours.named_parameters()}, "the mapping must cover both sides exactly"
    return by_ours


def _batch(rng):
    ids = rng.integers(5, V, size=(4, 12))
    lengths = np.array([12, 9, 5, 2])
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    types = (np.arange(12)[None, :] >= (lengths // 2)[:, None]).astype(np.int64) * mask
    return ids, mask, types


def _check_gradients(ours: nt.Module, by_ours: dict[str, torch.nn.Parameter], what: str) -> None:
    grads = dict(ours.named_grads())
    for name, p in by_ours.items():
        # Both embedding tables have padding_idx=0: the pad row gets no gradient from the lookup, but
        # in the MLM it is also a row of the tied decoder, and that gradient it gets on both sides.
        assert_matches(f"{what} d{name}", grads[name], p.grad, np.float64)


def test_masked_lm_matches_transformers_logits_loss_and_every_gradient():
    hf_cfg, cfg = _configs()
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(hf_cfg).double().eval()
    ours = nt.BertForMaskedLM(cfg, np.float64, np.random.default_rng(0)).eval()
    by_ours = _load_from_hf(ours, hf)

    rng = np.random.default_rng(1)
    ids, mask, types = _batch(rng)
    corrupted, labels = mask_tokens(ids, rng, 4, V, special_ids=(0, 1, 2, 3, 4), select_prob=0.3)
    labels[mask == 0] = IGNORE_INDEX
    out = hf(
        input_ids=torch.from_numpy(corrupted), attention_mask=torch.from_numpy(mask),
        token_type_ids=torch.from_numpy(types), labels=torch.from_numpy(labels),
    )  # fmt: skip
    out.loss.backward()

    logits, cache = ours.forward(corrupted, mask, types)
    loss, ce = cross_entropy_forward(logits, labels)
    ours.backward(cross_entropy_backward(np.asarray(1.0), ce), cache)

    real = mask.astype(bool)
    assert_matches("MLM logits at real tokens", logits[real], out.logits.detach()[torch.from_numpy(real)], np.float64)
    assert_matches("MLM loss", np.asarray(loss), out.loss.detach(), np.float64)
    _check_gradients(ours, by_ours, "MLM")


def test_sequence_classification_matches_transformers_logits_loss_and_every_gradient():
    hf_cfg, cfg = _configs()
    torch.manual_seed(1)
    hf = transformers.BertForSequenceClassification(hf_cfg).double().eval()
    ours = nt.BertForSequenceClassification(cfg, LABELS, np.float64, np.random.default_rng(0)).eval()
    by_ours = _load_from_hf(ours, hf)

    rng = np.random.default_rng(2)
    ids, mask, types = _batch(rng)
    labels = rng.integers(0, LABELS, size=ids.shape[0])
    out = hf(
        input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), token_type_ids=torch.from_numpy(types),
        labels=torch.from_numpy(labels),
    )  # fmt: skip
    out.loss.backward()

    logits, cache = ours.forward(ids, mask, types)
    loss, ce = cross_entropy_forward(logits, labels)
    ours.backward(cross_entropy_backward(np.asarray(1.0), ce), cache)

    assert_matches("classification logits", logits, out.logits.detach(), np.float64)
    assert_matches("classification loss", np.asarray(loss), out.loss.detach(), np.float64)
    _check_gradients(ours, by_ours, "classification")
