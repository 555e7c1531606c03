"""The encoder–decoder Transformer against ``torch.nn.Transformer`` itself, and its own properties.

(The NumPy model vs its twin, and vs finite differences, run from the parity
registry in ``test_twin_parity.py`` under the names ``Transformer``,
``EncoderLayer`` and ``DecoderLayer``.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer as nt
from torch_transformer.bridge import state_dict_to_torch
from torch_transformer.builtin import BuiltinTransformer, builtin_grads_to_numpy_names, transformer_to_torch_builtin

from .helpers import assert_matches
from .strategies import dtypes, seeds


@st.composite
def configs(draw, dropout=None):
    H = draw(st.sampled_from([1, 2, 4]))
    C = H * draw(st.sampled_from([2, 4]))
    C = max(C, 4)  # LayerNorm over 2 features is ill-conditioned in float32 (see parity/registry.py)
    return nt.TransformerConfig(
        src_vocab_size=draw(st.integers(4, 12)),
        tgt_vocab_size=draw(st.integers(4, 12)),
        d_model=C,
        n_heads=H,
        n_encoder_layers=draw(st.integers(1, 2)),
        n_decoder_layers=draw(st.integers(1, 2)),
        d_ff=draw(st.sampled_from([C, 2 * C + 1])),
        dropout=draw(dropout) if dropout is not None else 0.0,
        activation=draw(st.sampled_from(["relu", "gelu"])),
        norm_first=draw(st.booleans()),
        max_len=16,
        tie_embeddings=draw(st.booleans()),
    )


def _batch(rng, cfg, B, S, T):
    src = rng.integers(1, cfg.src_vocab_size, size=(B, S))
    tgt = rng.integers(1, cfg.tgt_vocab_size, size=(B, T))
    for ids in (src, tgt):  # right padding, each sequence at least one real token
        lengths = rng.integers(1, ids.shape[1] + 1, size=B)
        ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = cfg.pad_id
    return src, tgt


@given(cfg=configs(), dtype=dtypes, seed=seeds, B=st.integers(1, 3), S=st.integers(1, 6), T=st.integers(1, 6))
def test_transformer_matches_torch_nn_transformer_memory_output_and_every_gradient(cfg, dtype, seed, B, S, T):
    """Verifies PyTorch's own module: our weights inside ``nn.Transformer`` give our numbers."""
    rng = np.random.default_rng(seed)
    model = nt.Transformer(cfg, dtype=dtype, rng=rng)
    src, tgt = _batch(rng, cfg, B, S, T)
    logits, cache = model.forward(src, tgt)
    dlogits = rng.standard_normal(logits.shape).astype(dtype)
    model.backward(dlogits, cache)

    builtin = transformer_to_torch_builtin(model)
    src_t, tgt_t = torch.from_numpy(src), torch.from_numpy(tgt)
    memory_t = builtin.encode(src_t)
    logits_t = builtin(src_t, tgt_t)
    (logits_t * torch.from_numpy(dlogits)).sum().backward()

    assert_matches("encoder memory", cache.memory, memory_t, dtype)
    assert_matches("logits", logits, logits_t, dtype)
    theirs = builtin_grads_to_numpy_names(builtin, model)
    for name, grad in model.named_grads():
        assert_matches(f"d{name}", grad, theirs[name], dtype)


@given(cfg=configs(dropout=st.sampled_from([0.1, 0.3])), seed=seeds)
def test_dropout_masks_replayed_in_the_twin_give_identical_outputs_and_gradients(cfg, seed):
    import torch_transformer as tt

    rng = np.random.default_rng(seed)
    model = nt.Transformer(cfg, rng=rng)
    src, tgt = _batch(rng, cfg, 2, 5, 4)
    logits, cache = model.forward(src, tgt, rng=rng)
    # embeddings 2, each encoder layer 4 (attention weights, ff hidden, two residuals), each decoder layer 6
    assert len(cache.dropout_masks) == 2 + 4 * cfg.n_encoder_layers + 6 * cfg.n_decoder_layers
    dlogits = rng.standard_normal(logits.shape)
    model.backward(dlogits, cache)

    twin = tt.Transformer(cfg)
    twin.load_state_dict(state_dict_to_torch(model.state_dict()))
    masks = {k: torch.from_numpy(v) for k, v in cache.dropout_masks.items()}
    logits_t = twin(torch.from_numpy(src), torch.from_numpy(tgt), masks)
    (logits_t * torch.from_numpy(dlogits)).sum().backward()
    assert_matches("logits", logits, logits_t, np.float64)
    grads_t = dict(twin.named_parameters())
    for name, grad in model.named_grads():
        assert_matches(f"d{name}", grad, grads_t[name].grad, np.float64)
    # and the masks really dropped something: without them the outputs differ
    twin_random = twin(torch.from_numpy(src), torch.from_numpy(tgt))
    assert not np.allclose(logits, twin_random.detach().numpy())


def test_dropout_sites_are_named_by_their_place_in_the_model():
    cfg = nt.TransformerConfig(7, 7, d_model=8, n_heads=2, d_ff=8, dropout=0.1, n_encoder_layers=1, n_decoder_layers=1)
    rng = np.random.default_rng(0)
    model = nt.Transformer(cfg, rng=rng)
    _, cache = model.forward(np.array([[3, 4, 0]]), np.array([[1, 5]]), rng=rng)
    assert set(cache.dropout_masks) == {
        "src_dropout",
        "tgt_dropout",
        "encoder.layers.0.self_attn",
        "encoder.layers.0.ff",
        "encoder.layers.0.dropout1",
        "encoder.layers.0.dropout2",
        "decoder.layers.0.self_attn",
        "decoder.layers.0.cross_attn",
        "decoder.layers.0.ff",
        "decoder.layers.0.dropout1",
        "decoder.layers.0.dropout2",
        "decoder.layers.0.dropout3",
    }
    assert cache.dropout_masks["decoder.layers.0.cross_attn"].shape == (1, 2, 2, 3)  # (B, H, T, S)
    model.eval()
    _, cache = model.forward(np.array([[3, 4, 0]]), np.array([[1, 5]]))
    assert cache.dropout_masks == {}


def test_fact_nn_transformer_adds_final_norms_even_when_post_ln():
    """Observed on torch 2.13 CPU: ``nn.Transformer(norm_first=False)`` still has ``encoder.norm`` and
    ``decoder.norm`` -- a LayerNorm after the last post-LN layer, which already ends in one. Our post-LN
    stacks have no final norm; the converter removes PyTorch's, and leaving it in changes the output."""
    builtin = torch.nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, batch_first=True)
    keys = builtin.state_dict().keys()
    assert {"encoder.norm.weight", "decoder.norm.weight"} <= set(keys)

    cfg = nt.TransformerConfig(9, 9, d_model=8, n_heads=2, d_ff=16, dropout=0.0, n_encoder_layers=1, n_decoder_layers=1)
    model = nt.Transformer(cfg, rng=np.random.default_rng(0))
    # With norm3 at its init (weight 1, bias 0) an extra LayerNorm is nearly the identity; give it an affine.
    last_norm = model.decoder.layers[-1].norm3
    last_norm.weight[...] = np.random.default_rng(1).uniform(0.5, 2.0, 8)
    last_norm.bias[...] = np.random.default_rng(2).standard_normal(8)
    src, tgt = np.array([[3, 4, 5, 0]]), np.array([[1, 6, 7]])
    ours, _ = model.forward(src, tgt)
    converted = transformer_to_torch_builtin(model)
    assert_matches(
        "logits without the extra norms", ours, converted(torch.from_numpy(src), torch.from_numpy(tgt)), np.float64
    )
    converted.transformer.decoder.norm = torch.nn.LayerNorm(8, dtype=torch.float64)  # put PyTorch's default back
    with_norm = converted(torch.from_numpy(src), torch.from_numpy(tgt)).detach().numpy()
    assert np.abs(with_norm - ours).max() > 1e-3


def test_tied_embeddings_share_one_matrix_and_collect_both_gradients():
    cfg = nt.TransformerConfig(9, 9, d_model=8, n_heads=2, d_ff=16, dropout=0.0, tie_embeddings=True)
    model = nt.Transformer(cfg, rng=np.random.default_rng(0))
    names = [n for n, _ in model.named_parameters()]
    assert "out_proj.weight" not in names and "tgt_embed.weight" in names
    src, tgt = np.array([[3, 4, 5]]), np.array([[1, 6, 7]])
    logits, cache = model.forward(src, tgt)
    dlogits = np.random.default_rng(1).standard_normal(logits.shape)
    model.backward(dlogits, cache)
    # the output projection alone contributes dlogits^T h to every row, even rows never looked up
    unused = sorted(set(range(9)) - set(tgt.ravel()))
    assert np.abs(model.tgt_embed.grads["weight"][unused]).max() > 0


def test_padding_never_changes_the_real_positions():
    """Appending pad tokens to source and target leaves every real position's logits unchanged."""
    cfg = nt.TransformerConfig(9, 9, d_model=8, n_heads=2, d_ff=16, dropout=0.0)
    model = nt.Transformer(cfg, rng=np.random.default_rng(0))
    src, tgt = np.array([[3, 4, 5]]), np.array([[1, 6, 7]])
    short, _ = model.forward(src, tgt)
    long, _ = model.forward(np.array([[3, 4, 5, 0, 0]]), np.array([[1, 6, 7, 0]]))
    assert_matches("real positions", long[:, :3], short, np.float64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 10, "n_heads": 3}, "n_heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"activation": "tanh"}, "activation"),
        ({"pad_id": 50}, "pad_id"),
        ({"d_model": 0}, "d_model"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nt.TransformerConfig(9, 9, **kwargs)


def test_bad_token_ids_and_lengths_are_clear_errors():
    cfg = nt.TransformerConfig(9, 9, d_model=8, n_heads=2, d_ff=16, dropout=0.0, max_len=4)
    model = nt.Transformer(cfg, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="src"):
        model.forward(np.array([[3, 9]]), np.array([[1]]))
    with pytest.raises(ValueError, match="tgt"):
        model.forward(np.array([[3]]), np.array([[1, 2, 3, 4, 5]]))
    with pytest.raises(TypeError, match="tgt"):
        model.forward(np.array([[3]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="batch"):
        model.forward(np.array([[3], [4]]), np.array([[1]]))
    assert isinstance(BuiltinTransformer(cfg), torch.nn.Module)
