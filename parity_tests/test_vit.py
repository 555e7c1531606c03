"""The Vision Transformer: patches are tokens, the class token's gradient, positions, inputs, checkpoints.

(The NumPy models vs their twins and vs finite differences, dropout masks replayed, run from the
parity registry in ``test_twin_parity.py`` under the names ``ViT`` and ``ViTForImageClassification``;
Hugging Face's ``transformers.ViTModel`` and ``ViTForImageClassification`` are in ``test_vit_hf.py``.)

Shape legend: B batch, Cin image channels, I image size, P patch size, g = I // P, N = g * g
patches, L = N + 1 positions, C d_model, K classes.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_transformer as nt
from numpy_transformer.functional import layer_norm_backward, layer_norm_forward, linear_backward, linear_forward
from numpy_transformer.models.vit import PatchEmbedding
from numpy_transformer.testing import relative_error
from numpy_transformer.training.checkpoint import CheckpointError, config_from_json, read_checkpoint, save_checkpoint
from torch_transformer.bridge import twin_of

from .helpers import assert_matches

DTYPES = [np.float32, np.float64]


def _config(**overrides) -> nt.ViTConfig:
    fields = dict(image_size=8, patch_size=4, num_channels=2, d_model=16, n_heads=4, n_layers=2, d_ff=32, num_labels=3)
    return nt.ViTConfig(**(fields | overrides))


def _model(cls, cfg: nt.ViTConfig, dtype=np.float64, seed: int = 0, scale: float = 0.5, **kwargs):
    """A model with every parameter redrawn at ``scale`` (LayerNorms and biases away from 1 and 0)."""
    rng = np.random.default_rng(seed)
    model = cls(cfg, dtype, rng, **kwargs)
    for p in model.parameters():
        p[...] = scale * rng.standard_normal(p.shape)
    return model, rng


def patches_of(x: np.ndarray, P: int) -> np.ndarray:
    """(B, Cin, I, I) -> (B, N, Cin P P): patch n = a g + b: grid row a, column b, flattened in (Cin, P, P) order."""
    B, Cin, I, _ = x.shape
    g = I // P
    blocks = x.reshape(B, Cin, g, P, g, P).transpose(0, 2, 4, 1, 3, 5)  # (B, g, g, Cin, P, P)
    return blocks.reshape(B, g * g, Cin * P * P)


def image_of(patches: np.ndarray, Cin: int, P: int) -> np.ndarray:
    """The inverse of :func:`patches_of`: (B, N, Cin P P) -> (B, Cin, I, I)."""
    B, N, _ = patches.shape
    g = round(N**0.5)
    blocks = patches.reshape(B, g, g, Cin, P, P).transpose(0, 3, 1, 4, 2, 5)  # (B, Cin, g, P, g, P)
    return np.ascontiguousarray(blocks.reshape(B, Cin, g * P, g * P))


# --------------------------------------------------------------------------- patches are tokens


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("image", "patch", "channels"), [(8, 4, 2), (6, 3, 3), (4, 4, 1), (5, 1, 2)])
def test_the_patch_embedding_is_reshape_into_patches_then_a_linear_layer(dtype, image, patch, channels):
    """conv2d(x, W, b, stride=P) with a P x P kernel == patches_of(x) @ W.reshape(C, Cin P P)^T + b, both ways."""
    rng = np.random.default_rng(image * 10 + patch)
    embed = PatchEmbedding(channels, 6, patch, dtype=dtype, rng=rng)
    x = rng.standard_normal((3, channels, image, image)).astype(dtype)
    tokens, cache = embed.forward(x)  # (B, N, C)
    w_mat = embed.weight.reshape(6, -1)  # (C, Cin P P), the patch flattened in (Cin, P, P) order
    expected, lin_cache = linear_forward(patches_of(x, patch), w_mat, embed.bias)
    assert tokens.dtype == dtype and tokens.shape == (3, (image // patch) ** 2, 6)
    assert_matches("tokens vs patches @ W^T + b", tokens, expected, dtype)

    dtokens = rng.standard_normal(tokens.shape).astype(dtype)
    dx = embed.backward(dtokens, cache)
    dpatches, dw_mat, dbias = linear_backward(dtokens, lin_cache)
    assert_matches("dpixel_values vs the linear layer's", dx, image_of(dpatches, channels, patch), dtype)
    assert_matches("dweight vs the linear layer's", embed.grads["weight"], dw_mat.reshape(embed.weight.shape), dtype)
    assert_matches("dbias", embed.grads["bias"], dbias, dtype)


def test_patches_of_and_image_of_are_inverse_and_read_the_grid_row_by_row():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    p = patches_of(x, 2)  # (2, 4, 4)
    assert np.array_equal(p[0, 1], x[0, 0, 0:2, 2:4].ravel())  # patch 1: grid row 0, column 1
    assert np.array_equal(p[0, 2], x[0, 0, 2:4, 0:2].ravel())  # patch 2: grid row 1, column 0
    assert np.array_equal(image_of(p, 1, 2), x)


# --------------------------------------------------------------------------- positions and the class token


def test_permuting_patches_with_their_position_embeddings_permutes_the_outputs():
    """Self-attention is permutation equivariant: moving the patches *and* their position rows only
    moves the patch outputs; the class token's output, the pooled vector and every gradient follow."""
    cfg = _config(image_size=12, patch_size=4, n_layers=2)
    model, rng = _model(nt.ViT, cfg)
    N, P, Cin = cfg.num_patches, cfg.patch_size, cfg.num_channels
    x = rng.standard_normal((2, Cin, 12, 12))
    perm = rng.permutation(N)
    while np.array_equal(perm, np.arange(N)):
        perm = rng.permutation(N)
    rows = np.concatenate([[0], 1 + perm])  # the class token stays first

    out, cache = model.forward(x, output_attentions=True)
    d_hidden = rng.standard_normal(out.last_hidden_state.shape)
    d_pooled = rng.standard_normal(out.pooler_output.shape)
    model.backward(d_hidden, d_pooled, cache)
    grads = {k: g.copy() for k, g in model.named_grads()}
    dx = model.backward(d_hidden, d_pooled, cache)  # again, for dpixel_values (the grads now doubled: unused)

    moved, _ = _model(nt.ViT, cfg)
    moved.pos_embed[...] = model.pos_embed[:, rows]
    x_moved = image_of(patches_of(x, P)[:, perm], Cin, P)
    out_m, cache_m = moved.forward(x_moved, output_attentions=True)
    assert_matches("hidden states, patches moved", out_m.last_hidden_state, out.last_hidden_state[:, rows], np.float64)
    assert_matches("pooled output", out_m.pooler_output, out.pooler_output, np.float64)
    for i, (a_m, a) in enumerate(zip(out_m.attentions, out.attentions, strict=True)):
        assert_matches(f"layer {i} attention", a_m, a[:, :, rows][:, :, :, rows], np.float64)

    dx_m = moved.backward(d_hidden[:, rows], d_pooled, cache_m)
    assert_matches("dpos_embed", moved.grads["pos_embed"], grads["pos_embed"][:, rows], np.float64)
    for name in ("cls_token", "patch_embed.weight", "patch_embed.bias", "layers.1.self_attn.q_proj.weight"):
        assert_matches(f"d{name}", dict(moved.named_grads())[name], grads[name], np.float64)
    assert_matches("dpixel_values", dx_m, image_of(patches_of(dx, P)[:, perm], Cin, P), np.float64)

    # The positions are what tells the patches apart: moving the patches alone changes the class token's output.
    out_only, _ = model.forward(x_moved)
    assert relative_error("class token", out_only.last_hidden_state[:, 0], out.last_hidden_state[:, 0]).error > 1e-6


def test_the_pooler_reads_the_class_token_only():
    cfg = _config()
    model, rng = _model(nt.ViT, cfg)
    x = rng.standard_normal((3, cfg.num_channels, 8, 8))
    out, cache = model.forward(x)
    y0 = out.last_hidden_state[:, 0]
    assert_matches("pooled", out.pooler_output, np.tanh(y0 @ model.pooler.weight.T + model.pooler.bias), np.float64)
    # The gradient of the pooled output enters the encoder at row 0 alone:
    # d_pooled is the same as d_hidden = W_p^T (d_pooled * (1 - pooled^2)) at row 0, zeros elsewhere.
    d_pooled = rng.standard_normal(out.pooler_output.shape)
    model.zero_grad()
    dx = model.backward(None, d_pooled, cache)
    via_pooler = {k: g.copy() for k, g in model.named_grads() if not k.startswith("pooler.")}
    d_hidden = np.zeros_like(out.last_hidden_state)
    d_hidden[:, 0] = (d_pooled * (1 - out.pooler_output**2)) @ model.pooler.weight
    model.zero_grad()
    dx_rows = model.backward(d_hidden, None, cache)
    for name, grad in dict(model.named_grads()).items():
        if name in via_pooler:
            assert_matches(f"d{name}", via_pooler[name], grad, np.float64)
    assert_matches("dpixel_values", dx, dx_rows, np.float64)


def test_the_class_token_gradient_is_what_flows_back_through_row_zero():
    """``z_0 = [cls; tokens] + pos_embed``: the class token and position row 0 are added at row 0 only, so
    they get the same gradient; one token shared by every image gets the sum of the per-image gradients."""
    cfg = _config(n_layers=2)
    model, rng = _model(nt.ViTForImageClassification, cfg)
    x = rng.standard_normal((4, cfg.num_channels, 8, 8))
    labels = rng.integers(0, cfg.num_labels, size=4)
    _, cache = model.forward(x, labels=labels)
    model.backward(None, cache)
    grads = {k: g.copy() for k, g in model.named_grads()}
    assert np.abs(grads["vit.cls_token"]).max() > 0
    assert_matches("dcls_token vs dpos_embed[:, 0]", grads["vit.cls_token"], grads["vit.pos_embed"][:, :1], np.float64)

    per_image = np.zeros_like(grads["vit.cls_token"])
    for b in range(4):
        model.zero_grad()
        _, c = model.forward(x[b : b + 1], labels=labels[b : b + 1])
        model.backward(None, c, dloss=0.25)  # the batch loss is the mean: 1/4 of each image's
        per_image += model.vit.grads["cls_token"]
    assert_matches("dcls_token vs the sum over images", grads["vit.cls_token"], per_image, np.float64)


def test_without_layers_only_row_zero_gets_a_gradient():
    """With no layer nothing mixes the positions: the head reads ``norm(cls + pos_0)``, so the patches, the
    image and position rows 1.. get exactly zero, and the class token gets ``sum_b LN^T(W^T dlogits_b)``."""
    cfg = _config(n_layers=0)
    model, rng = _model(nt.ViTForImageClassification, cfg)
    x = rng.standard_normal((3, cfg.num_channels, 8, 8))
    out, cache = model.forward(x)
    dlogits = rng.standard_normal(out.logits.shape)
    dx = model.backward(dlogits, cache)
    g = dict(model.named_grads())
    for name in ("vit.patch_embed.weight", "vit.patch_embed.bias"):
        assert not g[name].any(), f"{name} got a gradient"
    assert not g["vit.pos_embed"][:, 1:].any() and not dx.any()

    vit = model.vit
    z0 = vit.cls_token[0, 0] + vit.pos_embed[0, 0]  # (C,): the same for every image
    rows = np.broadcast_to(z0, (3, cfg.d_model)).copy()  # (B, C)
    y0, ln_cache = layer_norm_forward(rows, vit.norm.weight, vit.norm.bias, cfg.layer_norm_eps)
    assert_matches("logits", out.logits, y0 @ model.classifier.weight.T + model.classifier.bias, np.float64)
    dz0, _, _ = layer_norm_backward(dlogits @ model.classifier.weight, ln_cache)  # (B, C)
    assert_matches("dcls_token", g["vit.cls_token"][0, 0], dz0.sum(axis=0), np.float64)


# --------------------------------------------------------------------------- twin, dtypes, attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_twin_of_a_numpy_vit_has_its_keys_weights_outputs_and_attention(dtype, qkv_bias):
    import torch

    cfg = _config(qkv_bias=qkv_bias)
    for make in (lambda: _model(nt.ViT, cfg, dtype)[0], lambda: _model(nt.ViT, cfg, dtype, add_pooling_layer=False)[0]):
        model = make().eval()
        twin = twin_of(model)
        assert list(twin.state_dict()) == list(model.state_dict())
        assert ("layers.0.self_attn.q_proj.bias" in model.state_dict()) == qkv_bias
        assert "layers.0.self_attn.out_proj.bias" in model.state_dict()  # HF's o_proj always has a bias
        x = np.random.default_rng(1).standard_normal((2, cfg.num_channels, 8, 8)).astype(dtype)
        out, _ = model.forward(x, output_attentions=True)
        with torch.no_grad():
            y, pooled, attentions = twin(x, output_attentions=True)
        assert out.last_hidden_state.dtype == dtype
        assert y.dtype == (torch.float32 if dtype == np.float32 else torch.float64)
        assert_matches("last_hidden_state", out.last_hidden_state, y, dtype)
        assert (pooled is None) == (out.pooler_output is None)
        if pooled is not None:
            assert_matches("pooler_output", out.pooler_output, pooled, dtype)
        for i, (ours, theirs) in enumerate(zip(out.attentions, attentions, strict=True)):
            assert ours.shape == (2, cfg.n_heads, cfg.num_patches + 1, cfg.num_patches + 1)
            assert_matches(f"layer {i} attention rows sum to 1", ours.sum(-1), np.ones(ours.shape[:-1]), dtype)
            assert_matches(f"layer {i} attention", ours, theirs, dtype)
    model = _model(nt.ViTForImageClassification, cfg, dtype)[0]
    twin = twin_of(model)
    assert list(twin.state_dict()) == list(model.state_dict())
    out, _ = model.forward(x)
    assert out.logits.dtype == dtype
    assert_matches("logits", out.logits, twin(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_output_and_gradient_keeps_the_models_dtype_and_gradients_accumulate(dtype):
    cfg = _config()
    model, rng = _model(nt.ViTForImageClassification, cfg, dtype)
    x = rng.standard_normal((2, cfg.num_channels, 8, 8)).astype(dtype)
    out, cache = model.forward(x, labels=np.array([0, 2]), output_attentions=True)
    assert out.logits.dtype == out.loss.dtype == dtype and all(a.dtype == dtype for a in out.attentions)
    dx = model.backward(None, cache)
    assert dx.dtype == dtype and dx.shape == x.shape
    once = {k: g.copy() for k, g in model.named_grads()}
    assert all(g.dtype == dtype for g in once.values())
    model.backward(None, cache)  # a second backward adds (a module may be used twice)
    for name, grad in model.named_grads():
        assert_matches(f"2 d{name}", grad, 2 * once[name], dtype)


def test_initialisation_is_hugging_faces():
    cfg = _config(d_model=64, n_heads=4, d_ff=128, num_channels=3)
    model = nt.ViTForImageClassification(cfg, rng=np.random.default_rng(0))
    for name, p in model.named_parameters():
        if "norm" in name:
            assert np.all(p == (1 if name.endswith("weight") else 0)), name
        elif name.endswith("bias"):
            assert not p.any(), name
        else:  # weights, the class token, the position table: N(0, 0.02^2)
            assert abs(p.std() - cfg.initializer_range) < 0.25 * cfg.initializer_range, (name, p.std())


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("pixel_values", "error", "match"),
    [
        ([[[[0.0]]]], TypeError, r"pixel_values: expected a numpy.ndarray"),
        (np.zeros((2, 2, 8, 8), np.float32), TypeError, r"pixel_values: expected dtype float64 \(the model's dtype\)"),
        (np.zeros((2, 2, 8, 8), np.int64), TypeError, r"pixel_values: expected dtype float64"),
        (np.zeros((2, 8, 8)), ValueError, r"pixel_values: expected shape \(B, C, H, W\) = \(B, 2, 8, 8\)"),
        (np.zeros((0, 2, 8, 8)), ValueError, r"pixel_values: .*B >= 1"),
        (np.zeros((2, 3, 8, 8)), ValueError, r"pixel_values: expected num_channels=2"),
        (np.zeros((2, 2, 12, 12)), ValueError, r"pixel_values: expected H = W = image_size=8.*got H, W = 12, 12"),
        (np.zeros((2, 2, 8, 12)), ValueError, r"pixel_values: expected H = W = image_size=8"),
    ],
)
def test_bad_pixel_values_are_rejected_with_the_argument_named(pixel_values, error, match):
    cfg = _config()
    rng = np.random.default_rng(0)
    for model in (nt.ViT(cfg, rng=rng), nt.ViTForImageClassification(cfg, rng=rng)):
        with pytest.raises(error, match=match):
            model.forward(pixel_values)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        ([0, 1], TypeError, r"labels: expected a numpy.ndarray of integers"),
        (np.array([0.0, 1.0]), TypeError, r"labels: expected an integer dtype"),
        (np.array([[0, 1]]), ValueError, r"labels: expected shape \(2,\)"),
        (np.array([0, 3]), ValueError, r"labels: expected ids in \[0, 3\)"),
        (np.array([-100, 1]), ValueError, r"labels: expected ids in \[0, 3\)"),
    ],
)
def test_bad_labels_are_rejected_with_the_argument_named(labels, error, match):
    model = nt.ViTForImageClassification(_config(), rng=np.random.default_rng(0))
    with pytest.raises(error, match=match):
        model.forward(np.zeros((2, 2, 8, 8)), labels=labels)


def test_backward_rejects_missing_or_malformed_upstream_gradients():
    cfg = _config()
    clf = nt.ViTForImageClassification(cfg, rng=np.random.default_rng(0))
    out, cache = clf.forward(np.zeros((2, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"dlogits: expected an array \(the forward had no labels"):
        clf.backward(None, cache)
    with pytest.raises(ValueError, match=r"dlogits: expected float64 of shape \(2, 3\)"):
        clf.backward(np.zeros((2, 4)), cache)
    with pytest.raises(ValueError, match=r"dlogits: expected float64"):
        clf.backward(np.zeros((2, 3), np.float32), cache)
    vit = nt.ViT(cfg, rng=np.random.default_rng(0), add_pooling_layer=False)
    out, cache = vit.forward(np.zeros((2, 2, 8, 8)))
    assert out.pooler_output is None and out.attentions is None
    with pytest.raises(ValueError, match="d_hidden, d_pooled: expected at least one"):
        vit.backward(None, None, cache)
    with pytest.raises(ValueError, match=r"d_hidden: expected float64 of shape \(2, 5, 16\)"):
        vit.backward(np.zeros((2, 4, 16)), None, cache)
    with pytest.raises(ValueError, match="d_pooled: this model has no pooler"):
        vit.backward(None, np.zeros((2, 16)), cache)
    with pytest.raises(TypeError, match="config: expected a ViTConfig"):
        nt.ViT(nt.GPTConfig(vocab_size=5))


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (dict(image_size=10, patch_size=4), ValueError, r"image_size, patch_size: .*image_size=10 and patch_size=4"),
        (dict(image_size=4, patch_size=8), ValueError, r"image_size, patch_size: .*image_size=4 and patch_size=8"),
        (dict(patch_size=0), ValueError, r"patch_size: expected a positive int"),
        (dict(num_channels=0), ValueError, r"num_channels: expected a positive int"),
        (dict(d_model=18), ValueError, r"n_heads: expected a divisor of d_model=18"),
        (dict(n_layers=-1), ValueError, r"n_layers: expected a non-negative int"),
        (dict(num_labels=1), ValueError, r"num_labels: expected an int >= 2"),
        (dict(dropout=1.0), ValueError, r"dropout: expected a probability"),
        (dict(layer_norm_eps=0.0), ValueError, r"layer_norm_eps: expected a positive float"),
        (dict(qkv_bias="yes"), TypeError, r"qkv_bias: expected a bool"),
        (dict(activation="swish"), ValueError, r"activation: expected 'gelu'"),
        (dict(initializer_range=-1.0), ValueError, r"initializer_range: expected a positive float"),
    ],
)
def test_the_config_rejects_bad_values_naming_the_field(overrides, error, match):
    with pytest.raises(error, match=match):
        _config(**overrides)


def test_the_config_counts_patches_and_defaults_to_hugging_faces_vit_base():
    cfg = _config(image_size=12, patch_size=4)
    assert (cfg.grid_size, cfg.num_patches) == (3, 9)
    base = nt.ViTConfig()
    fields = (base.image_size, base.patch_size, base.d_model, base.n_layers, base.layer_norm_eps)
    assert fields == (224, 16, 768, 12, 1e-12)


# --------------------------------------------------------------------------- checkpoints


def test_a_vit_checkpoint_round_trips_and_its_config_is_checked_field_by_field(tmp_path):
    cfg = _config(qkv_bias=False, num_labels=10)
    model, _ = _model(nt.ViTForImageClassification, cfg, np.float32)
    checkpoint = read_checkpoint(save_checkpoint(tmp_path / "vit", model))
    assert checkpoint.config == cfg
    restored = nt.ViTForImageClassification(checkpoint.config, np.float32, np.random.default_rng(1))
    restored.load_state_dict(checkpoint.model_state)
    for name, p in restored.named_parameters():
        assert np.array_equal(p, model.state_dict()[name]), name
    fields = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    with pytest.raises(CheckpointError, match=r"meta.config: image_size, patch_size: .*image_size=10 and patch_size=4"):
        config_from_json(nt.ViTConfig, fields | {"image_size": 10}, "meta.config")
    with pytest.raises(CheckpointError, match=r"meta.config.image_size: expected at most"):
        config_from_json(nt.ViTConfig, fields | {"image_size": 2**20}, "meta.config")
    with pytest.raises(CheckpointError, match=r"meta.config.qkv_bias: expected true or false"):
        config_from_json(nt.ViTConfig, fields | {"qkv_bias": 1}, "meta.config")
