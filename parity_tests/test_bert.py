"""BERT beyond the registry: padding invariance, the MLM corruption, freezing, input errors.

The forward/backward of ``BertModel``, ``BertForMaskedLM`` and
``BertForSequenceClassification`` against the twin and finite differences is in the
parity registry (``torch_transformer/parity/cases_bert.py``); real weights against Hugging
Face are in ``test_pretrained.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer import optim
from numpy_transformer.functional import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.models.bert import IGNORE_INDEX, mask_tokens
from parity_tests.helpers import assert_matches
from torch_transformer import bridge

CFG = nt.BertConfig(
    vocab_size=40, hidden_size=8, n_layers=2, n_heads=2, intermediate_size=16, max_position_embeddings=12, dropout=0.0
)
CLS, SEP, MASK = 1, 2, 3


def _batch(rng, B=3, S=7):
    ids = rng.integers(4, CFG.vocab_size, size=(B, S))
    ids[:, 0] = CLS
    lengths = rng.integers(2, S + 1, size=B)
    keep = np.arange(S)[None, :] < lengths[:, None]
    ids[~keep] = CFG.pad_id
    return ids, keep.astype(np.int64)


# ---------------------------------------------------------------------------- padding


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padding_does_not_change_real_tokens_and_gets_zero_attention(dtype):
    rng = np.random.default_rng(0)
    model = nt.BertModel(CFG, dtype, rng).eval()
    ids = rng.integers(4, CFG.vocab_size, size=(1, 5))
    out, cache = model.forward(ids)
    padded = np.concatenate([ids, np.zeros((1, 4), dtype=ids.dtype)], axis=1)
    mask = np.array([[1] * 5 + [0] * 4])
    out_p, cache_p = model.forward(padded, mask)

    assert_matches("hidden of real tokens", out_p.last_hidden_state[:, :5], out.last_hidden_state, dtype)
    assert_matches("pooled", out_p.pooler_output, out.pooler_output, dtype)
    for layer, (a, a_p) in enumerate(zip(cache.attentions, cache_p.attentions, strict=True)):
        assert np.all(a_p[..., 5:] == 0), f"layer {layer}: a padded key received attention"
        np.testing.assert_allclose(a_p.sum(-1), 1.0, rtol=1e-6)
        assert_matches(f"layer {layer} attention", a_p[:, :, :5, :5], a, dtype)


def test_token_types_change_the_output_and_default_to_segment_zero():
    rng = np.random.default_rng(1)
    model = nt.BertModel(CFG, np.float64, rng).eval()
    ids, mask = _batch(rng)
    default, _ = model.forward(ids, mask)
    zeros, _ = model.forward(ids, mask, np.zeros_like(ids))
    ones, _ = model.forward(ids, mask, np.ones_like(ids))
    np.testing.assert_array_equal(default.last_hidden_state, zeros.last_hidden_state)
    assert np.abs(ones.last_hidden_state - zeros.last_hidden_state).max() > 1e-3


def test_pooler_reads_the_first_position_only():
    rng = np.random.default_rng(2)
    model = nt.BertModel(CFG, np.float64, rng).eval()
    ids, _ = _batch(rng, B=1)
    out, cache = model.forward(ids)
    d_pooled = rng.standard_normal(out.pooler_output.shape)
    model.zero_grad()
    model.backward(None, d_pooled, cache)
    dz = d_pooled * (1 - out.pooler_output**2)  # through tanh
    expected = dz.T @ out.last_hidden_state[:, 0]  # (C, C): only the [CLS] row feeds the pooler
    np.testing.assert_allclose(model.pooler.grads["weight"], expected, rtol=1e-12)


# ---------------------------------------------------------------------------- MLM corruption


def test_mask_tokens_follows_bert_proportions_and_never_touches_special_tokens():
    rng = np.random.default_rng(3)
    ids = rng.integers(4, 1000, size=(400, 250))
    ids[:, 0], ids[:, -1] = CLS, SEP
    corrupted, labels = mask_tokens(ids, np.random.default_rng(4), MASK, 1000, special_ids=(0, CLS, SEP, MASK))
    selected = labels != IGNORE_INDEX
    n = selected.sum()
    ordinary = ids.size - 2 * ids.shape[0]
    # 100 000 ordinary tokens: 15 % selected, within 5 standard deviations
    assert abs(n / ordinary - 0.15) < 5 * np.sqrt(0.15 * 0.85 / ordinary)
    assert not selected[:, 0].any() and not selected[:, -1].any()
    np.testing.assert_array_equal(labels[selected], ids[selected])
    np.testing.assert_array_equal(corrupted[~selected], ids[~selected])
    became_mask = corrupted[selected] == MASK
    unchanged = corrupted[selected] == ids[selected]
    random = ~became_mask & ~unchanged
    sd = np.sqrt(0.1 * 0.9 / n)
    assert abs(became_mask.mean() - 0.8) < 5 * np.sqrt(0.8 * 0.2 / n)
    # a random replacement can hit the original token (1 in 996), counted as unchanged
    assert abs(unchanged.mean() - (0.1 + 0.1 / 996)) < 5 * sd
    assert abs(random.mean() - (0.1 - 0.1 / 996)) < 5 * sd
    assert not np.isin(corrupted[selected][random], (0, CLS, SEP, MASK)).any()


def test_mask_tokens_is_reproducible_from_the_seed():
    ids = np.random.default_rng(5).integers(4, 50, size=(8, 30))
    a = mask_tokens(ids, np.random.default_rng(6), MASK, 50, (0, CLS, SEP, MASK))
    b = mask_tokens(ids, np.random.default_rng(6), MASK, 50, (0, CLS, SEP, MASK))
    c = mask_tokens(ids, np.random.default_rng(7), MASK, 50, (0, CLS, SEP, MASK))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_mlm_loss_and_gradient_live_on_selected_positions_only():
    rng = np.random.default_rng(8)
    model = nt.BertForMaskedLM(CFG, np.float64, rng).eval()
    ids, mask = _batch(rng, B=4, S=10)
    corrupted, labels = mask_tokens(ids, rng, MASK, CFG.vocab_size, (0, CLS, SEP, MASK), select_prob=0.4)
    assert (labels != IGNORE_INDEX).any()
    logits, _ = model.forward(corrupted, mask)
    loss, ce = cross_entropy_forward(logits, labels)
    dlogits = cross_entropy_backward(np.asarray(rng.standard_normal(), dtype=np.float64), ce)
    unselected = labels == IGNORE_INDEX
    assert np.all(dlogits[unselected] == 0)
    # changing the logits where nothing was selected leaves the loss as it is
    noisy = logits + unselected[..., None] * rng.standard_normal(logits.shape)
    assert cross_entropy_forward(noisy, labels)[0] == loss
    # and it equals torch's loss over the selected positions
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits[~unselected]), torch.from_numpy(ids[~unselected])
    )
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-13)


def test_mask_tokens_rejects_bad_arguments():
    ids = np.ones((2, 3), dtype=np.int64)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="select_prob"):
        mask_tokens(ids, rng, MASK, 10, select_prob=1.5)
    with pytest.raises(ValueError, match="mask_id"):
        mask_tokens(ids, rng, 10, 10)
    with pytest.raises(TypeError, match="rng"):
        mask_tokens(ids, 0, MASK, 10)
    with pytest.raises(TypeError, match="input_ids"):
        mask_tokens(ids.astype(float), rng, MASK, 10)


# ---------------------------------------------------------------------------- freezing


def test_frozen_layers_get_no_gradient_and_the_backward_stops_below_the_lowest_trainable_one():
    rng = np.random.default_rng(9)
    model = nt.BertForSequenceClassification(CFG, 3, np.float64, rng)
    ids, mask = _batch(rng)
    logits, cache = model.forward(ids, mask)
    dlogits = rng.standard_normal(logits.shape)
    model.backward(dlogits, cache)
    full = {n: g.copy() for n, g in model.named_grads()}

    model.zero_grad()
    model.bert.embeddings.requires_grad_(False)
    model.bert.layers[0].requires_grad_(False)
    assert model.bert.backward(None, rng.standard_normal((3, CFG.hidden_size)), cache.bert) is None  # stopped early
    model.zero_grad()
    model.backward(dlogits, cache)
    for name, g in model.named_grads():
        if name.startswith(("bert.embeddings.", "bert.layers.0.")):
            assert not g.any(), f"{name}: a frozen parameter received a gradient"
        else:
            np.testing.assert_allclose(g, full[name], rtol=1e-12, atol=0, err_msg=name)
    trainable = {n for n, _, _ in model.named_trainable()}
    assert trainable == {n for n in full if not n.startswith(("bert.embeddings.", "bert.layers.0."))}


def test_freezing_everything_below_the_head_skips_the_encoder_backward():
    rng = np.random.default_rng(10)
    model = nt.BertForSequenceClassification(CFG, 2, np.float64, rng)
    model.bert.requires_grad_(False)
    ids, mask = _batch(rng)
    logits, cache = model.forward(ids, mask)
    model.backward(rng.standard_normal(logits.shape), cache)
    assert all(not g.any() for n, g in model.named_grads() if n.startswith("bert."))
    assert model.classifier.grads["weight"].any()
    with pytest.raises(TypeError, match="requires_grad"):
        model.requires_grad_(1)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_optimizer_skips_frozen_modules_like_torch_skips_parameters_without_grad(kind):
    """Freeze the encoder for 3 steps, then unfreeze it: PyTorch starts its Adam moments
    (and bias correction) at the first step with a gradient; so do we (``param_steps``)."""
    rng = np.random.default_rng(11)
    model = nt.BertForSequenceClassification(CFG, 3, np.float64, rng)
    twin = bridge.twin_of(model)
    make = {
        "adam": (lambda p: optim.Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
        "adamw": (lambda p: optim.AdamW(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2)),
        "sgd": (
            lambda p: optim.SGD(p, lr=1e-2, momentum=0.9),
            lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
        ),
    }[kind]
    opt, topt = make[0](model), make[1](twin.parameters())
    ids, mask = _batch(rng)
    labels = rng.integers(0, 3, size=ids.shape[0])
    frozen_before = None
    for step in range(6):
        frozen = step < 3
        model.bert.requires_grad_(not frozen)
        twin.bert.requires_grad_(not frozen)
        if step == 0:
            frozen_before = {n: p.copy() for n, p in model.named_parameters() if n.startswith("bert.")}
        opt.zero_grad()
        logits, cache = model.forward(ids, mask)
        _, ce = cross_entropy_forward(logits, labels)
        model.backward(cross_entropy_backward(np.asarray(1.0), ce), cache)
        opt.step()
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(
            twin(torch.from_numpy(ids), torch.from_numpy(mask)), torch.from_numpy(labels)
        ).backward()
        if frozen:
            assert all(p.grad is None for p in twin.bert.parameters())
        topt.step()
        if step == 2:  # three frozen steps: the encoder has not moved at all
            for n, p in model.named_parameters():
                if n.startswith("bert."):
                    np.testing.assert_array_equal(p, frozen_before[n], err_msg=n)
        for n, p in twin.named_parameters():
            assert_matches(f"step {step} {n}", dict(model.named_parameters())[n], p, np.float64)
    assert opt.param_steps["bert.pooler.weight"] == 3 and opt.param_steps["classifier.weight"] == 6


def test_optimizer_state_keeps_per_parameter_update_counts():
    rng = np.random.default_rng(12)
    model = nt.BertForSequenceClassification(CFG, 2, np.float64, rng)
    opt = optim.Adam(model, lr=1e-3)
    model.bert.requires_grad_(False)
    for g in (g for _, g in model.named_grads()):
        g[...] = rng.standard_normal(g.shape)
    opt.step()
    model.bert.requires_grad_(True)
    opt.step()
    state = opt.state_dict()
    assert state["step"] == 2 and state["param_step.bert.pooler.weight"] == 1
    assert "param_step.classifier.weight" not in state  # equal to "step": not stored
    fresh = optim.Adam(model, lr=1e-3)
    fresh.load_state_dict(state)
    assert fresh.param_steps == opt.param_steps
    state["param_step.bert.pooler.weight"] = 5
    with pytest.raises(ValueError, match="at most"):
        fresh.load_state_dict(state)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_ids": np.ones((2, 3))}, TypeError, "input_ids"),
        ({"input_ids": np.ones(3, dtype=np.int64)}, ValueError, r"input_ids: expected token ids of shape \(B, L\)"),
        ({"input_ids": np.ones((1, 13), dtype=np.int64)}, ValueError, "max_position_embeddings=12"),
        ({"input_ids": np.full((1, 3), 40)}, ValueError, r"input_ids: expected token ids in \[0, 40\)"),
        ({"attention_mask": np.ones((2, 4), dtype=np.int64)}, ValueError, r"attention_mask: expected shape \(2, 3\)"),
        ({"attention_mask": np.full((2, 3), 2)}, ValueError, "attention_mask: expected only 0"),
        ({"attention_mask": np.ones((2, 3))}, TypeError, "attention_mask"),
        ({"token_type_ids": np.full((2, 3), 2)}, ValueError, r"token_type_ids: expected ids in \[0, 2\)"),
        ({"token_type_ids": np.zeros((2, 2), dtype=np.int64)}, ValueError, "token_type_ids: expected shape"),
    ],
)
def test_bad_inputs_are_rejected_with_the_argument_named(kwargs, error, match):
    model = nt.BertModel(CFG, np.float64, np.random.default_rng(0))
    args = {"input_ids": np.ones((2, 3), dtype=np.int64), **kwargs}
    with pytest.raises(error, match=match):
        model.forward(**args)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n_heads", 5, "n_heads: expected a divisor"),
        ("dropout", 1.0, "dropout"),
        ("activation", "swish", "activation"),
        ("pad_id", 40, "pad_id"),
        ("layer_norm_eps", 0.0, "layer_norm_eps"),
        ("hidden_size", 0, "hidden_size"),
    ],
)
def test_bert_config_rejects_bad_values(field, value, match):
    kwargs = {**CFG.__dict__, field: value}
    with pytest.raises(ValueError, match=match):
        nt.BertConfig(**kwargs)


def test_backward_rejects_missing_or_malformed_upstream_gradients():
    rng = np.random.default_rng(13)
    model = nt.BertModel(CFG, np.float64, rng)
    ids, mask = _batch(rng)
    _, cache = model.forward(ids, mask)
    with pytest.raises(ValueError, match="at least one"):
        model.backward(None, None, cache)
    with pytest.raises(ValueError, match="d_hidden"):
        model.backward(np.zeros((3, 7, 4)), None, cache)
    with pytest.raises(TypeError, match="d_hidden"):
        model.backward([[0.0]], None, cache)
    with pytest.raises(ValueError, match="d_pooled"):
        model.backward(None, np.zeros((3, 8), dtype=np.float32), cache)
    no_pooler = nt.BertModel(CFG, np.float64, rng, add_pooler=False)
    _, c2 = no_pooler.forward(ids, mask)
    with pytest.raises(ValueError, match="no pooler"):
        no_pooler.backward(None, np.zeros((3, 8)), c2)


def test_initialisation_is_berts_and_an_untrained_mlm_starts_near_uniform():
    cfg = nt.BertConfig(vocab_size=500, hidden_size=64, n_layers=2, n_heads=4, intermediate_size=128, dropout=0.0)
    model = nt.BertForMaskedLM(cfg, np.float64, np.random.default_rng(0))
    params = dict(model.named_parameters())
    word = params["bert.embeddings.word_embeddings.weight"]
    assert not word[cfg.pad_id].any()
    for name, p in params.items():
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
            assert np.all(p == 1), name
        elif name.endswith("bias"):
            assert not p.any(), name
        else:
            assert abs(p[p != 0].std() - cfg.initializer_range) < 0.1 * cfg.initializer_range, name
    ids = np.random.default_rng(1).integers(1, 500, size=(4, 16))
    logits, _ = model.forward(ids)
    labels = np.random.default_rng(2).integers(1, 500, size=ids.shape)
    loss, _ = cross_entropy_forward(logits, labels)
    assert abs(float(loss) - np.log(500)) < 0.1  # small logits: the uniform distribution's loss
