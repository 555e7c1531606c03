"""``Module``'s public tree methods: ``modules()``, ``eval_mode()`` and ``accumulate_grad()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from torch_transformer.bridge import twin_of

CONFIG = nt.TransformerConfig(src_vocab_size=11, tgt_vocab_size=13, d_model=8, n_heads=2, d_ff=16, max_len=10)


def _model() -> nt.Transformer:
    return nt.Transformer(CONFIG, rng=np.random.default_rng(0))


def test_modules_yields_self_first_then_every_sub_module_once_depth_first():
    model = _model()
    mods = list(model.modules())
    assert mods[0] is model
    assert len({id(m) for m in mods}) == len(mods)
    # depth first: a layer's own sub-modules come right after it, before the next layer
    layers = list(model.encoder.layers)
    first, second = mods.index(layers[0]), mods.index(layers[1])
    assert mods.index(layers[0].self_attn) in range(first + 1, second)
    assert mods.index(layers[0].self_attn.q_proj) in range(first + 1, second)


def test_modules_reaches_every_parameter_owner_the_twin_has():
    model = _model()
    twin = twin_of(model)
    ours = {type(m).__name__ for m in model.modules() if m._param_names}
    # the twin's parameter owners, by class name (its own leaf modules, e.g. Linear, LayerNorm, Embedding)
    theirs = {type(m).__name__ for m in twin.modules() if any(True for _ in m.parameters(recurse=False))}
    assert ours == theirs
    n_params = sum(len(m._param_names) for m in model.modules())
    assert n_params == len(dict(model.named_parameters())) == len(list(twin.parameters()))


def test_eval_mode_switches_everything_off_and_restores_each_module_as_it_was():
    model = _model()
    model.decoder.layers[1].train(False)  # a mixed tree: one layer already in eval mode
    before = [m.training for m in model.modules()]
    assert not all(before) and any(before)
    with model.eval_mode() as same:
        assert same is model
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before


def test_eval_mode_restores_the_modes_when_the_block_raises():
    model = _model()
    with pytest.raises(RuntimeError, match="inside"), model.eval_mode():
        raise RuntimeError("inside")
    assert all(m.training for m in model.modules())


def test_accumulate_grad_adds_and_a_frozen_module_adds_nothing():
    rng = np.random.default_rng(1)
    lin = nt.Linear(3, 2, rng=rng)
    g1, g2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    lin.accumulate_grad("weight", g1)
    lin.accumulate_grad("weight", g2)
    np.testing.assert_array_equal(lin.grads["weight"], g1 + g2)  # accumulated, not assigned
    lin.accumulate_grad("weight", None)  # no gradient reached it: unchanged
    np.testing.assert_array_equal(lin.grads["weight"], g1 + g2)
    lin.requires_grad_(False)
    lin.accumulate_grad("weight", g1)
    np.testing.assert_array_equal(lin.grads["weight"], g1 + g2)


def test_a_tied_embedding_accumulates_both_uses_as_torch_does():
    """The tied target embedding gets the lookup's gradient plus the output projection's, like autograd's sum."""
    config = nt.TransformerConfig(
        src_vocab_size=11, tgt_vocab_size=13, d_model=8, n_heads=2, d_ff=16, max_len=10, dropout=0.0,
        tie_embeddings=True,
    )  # fmt: skip
    rng = np.random.default_rng(2)
    model = nt.Transformer(config, rng=rng)
    twin = twin_of(model)
    src, tgt = rng.integers(1, 11, (2, 5)), rng.integers(1, 13, (2, 4))
    logits, cache = model.forward(src, tgt)
    dlogits = rng.standard_normal(logits.shape)
    model.backward(dlogits, cache)
    out = twin(torch.from_numpy(src), torch.from_numpy(tgt))
    out.backward(torch.from_numpy(dlogits))
    ours = dict(model.named_grads())["tgt_embed.weight"]
    theirs = dict(twin.named_parameters())["tgt_embed.weight"].grad.numpy()
    assert nt.testing.relative_error("tgt_embed.weight", ours, theirs).error <= 1e-10
