"""DETR's own math: frozen batch norm, the sine positions, the set of queries, every gradient against the twin.

(The registry case ``DETR`` compares three seeded entries of the gradient of every trainable parameter
tensor, and eight of the image's, with the twin and with finite differences; every entry of every gradient
is compared with the twin here, and Hugging Face's model is in ``test_detr_hf.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer.functional as F
from numpy_transformer.config import DetrConfig
from numpy_transformer.models.detr import DETR
from torch_transformer import detr as twin_detr
from torch_transformer.parity.cases_detr import DETR_CONFIG, DETR_IMAGE, draw_detr

from .helpers import assert_matches
from .strategies import dtypes, seeds

# --------------------------------------------------------------------------- frozen batch norm


@given(dtype=dtypes, seed=seeds, C=st.integers(1, 4))
def test_frozen_batch_norm_is_one_affine_map_per_channel_and_its_gradient_ignores_x(dtype, seed, C):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, C, 3, 2)).astype(dtype)
    w, b, mean = (rng.standard_normal(C).astype(dtype) for _ in range(3))
    var = rng.uniform(0.1, 2.0, C).astype(dtype)
    y, cache = F.frozen_batch_norm_forward(x, w, b, mean, var)
    s = (w / np.sqrt(var + dtype(1e-5)))[None, :, None, None]
    assert y.dtype == dtype
    assert_matches("frozen BN = s x + t", y, s * x + (b[None, :, None, None] - mean[None, :, None, None] * s), dtype)
    dout = rng.standard_normal(y.shape).astype(dtype)
    _, cache2 = F.frozen_batch_norm_forward(3 * x + 1, w, b, mean, var)
    # Linear in x: the gradient is s * dout whatever x was.
    assert_matches("dx = s dout", F.frozen_batch_norm_backward(dout, cache), s * dout, dtype)
    assert_matches("dx does not depend on x", F.frozen_batch_norm_backward(dout, cache2), s * dout, dtype)


def test_fresh_frozen_batch_norm_statistics_give_x_over_sqrt_1_plus_eps():
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 2))
    y, _ = F.frozen_batch_norm_forward(x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2))
    assert_matches("fresh BN", y, x / np.sqrt(1 + 1e-5), np.float64)
    with pytest.raises(ValueError, match=r"running_var: expected shape \(2,\)"):
        F.frozen_batch_norm_forward(x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(3))


# --------------------------------------------------------------------------- the set of queries


def _model_and_image(seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    arrays = draw_detr(rng, dtype, {"B": 1})
    model = DETR(DETR_CONFIG, dtype=dtype)
    model.load_state_dict({n: arrays[n] for n, _ in model.named_parameters()})
    x = rng.standard_normal((2, 1, DETR_IMAGE, DETR_IMAGE)).astype(dtype)
    return model, x


def test_permuting_the_query_position_embeddings_permutes_every_output_the_queries_form_a_set():
    model, x = _model_and_image(0)
    out, _ = model.forward(x)
    perm = np.array([1, 0])
    model.query_position_embeddings[...] = model.query_position_embeddings[perm]
    out_p, _ = model.forward(x)
    assert_matches("logits of permuted queries", out_p.logits, out.logits[:, :, perm], np.float64)
    assert_matches("boxes of permuted queries", out_p.pred_boxes, out.pred_boxes[:, :, perm], np.float64)
    assert np.all((out.pred_boxes > 0) & (out.pred_boxes < 1))
    assert out.cross_attentions[0].shape == (2, 2, 2, 4)  # (B, H, Q, S = 2 x 2 cells)
    assert_matches("cross-attention rows sum to 1", out.cross_attentions[1].sum(-1), np.ones((2, 2, 2)), np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_parameter_gradient_and_every_layers_output_match_the_twin(dtype):
    model, x = _model_and_image(1, dtype)
    out, cache = model.forward(x)
    rng = np.random.default_rng(2)
    dz = rng.standard_normal(out.logits.shape).astype(dtype)
    db = rng.standard_normal(out.pred_boxes.shape).astype(dtype)
    model.zero_grad()
    dx = model.backward(dz, db, cache)
    twin = twin_detr.DETR(DETR_CONFIG, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(torch.from_numpy(dict(model.named_parameters())[name]))
            p.requires_grad_(True)
    pixels = torch.tensor(x, requires_grad=True)
    logits, boxes = twin(pixels)
    ((logits * torch.from_numpy(dz)).sum() + (boxes * torch.from_numpy(db)).sum()).backward()
    assert_matches("logits", out.logits, logits, dtype)
    assert_matches("boxes", out.pred_boxes, boxes, dtype)
    assert_matches("d pixel_values", dx, pixels.grad, dtype)
    params = dict(twin.named_parameters())
    assert set(params) == {n for n, _ in model.named_parameters()}
    for name, g in model.named_grads():
        if name.startswith("backbone.") and ".norm." in name:
            assert not g.any(), f"{name}: frozen, no gradient"
            continue
        assert_matches(f"d {name}", g, params[name].grad, dtype)


def test_only_the_supervised_layers_are_read_without_auxiliary_loss():
    import dataclasses

    model, x = _model_and_image(3)
    out, _ = model.forward(x)
    logits, _ = model.supervised(out)
    assert logits.shape[0] == DETR_CONFIG.decoder_layers
    plain = DETR(dataclasses.replace(DETR_CONFIG, auxiliary_loss=False))
    last_z, last_b = plain.supervised(out)
    assert last_z.shape[0] == 1 and np.array_equal(last_z[0], out.logits[-1])
    dz, db = plain.full_gradients(np.ones_like(last_z), np.ones_like(last_b))
    assert dz.shape == out.logits.shape and not dz[:-1].any() and dz[-1].all() and db[-1].all()


def test_bad_images_and_configs_are_refused_with_the_argument_named():
    model, x = _model_and_image(4)
    with pytest.raises(TypeError, match="pixel_values: expected dtype float64"):
        model.forward(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"pixel_values: expected shape \(B, 1, H, W\)"):
        model.forward(x[:, 0])
    with pytest.raises(ValueError, match="pixel_values: expected H, W >= 4"):
        model.forward(x[:, :, :3, :3])
    with pytest.raises(ValueError, match="depths: expected one depth per stage"):
        DetrConfig(hidden_sizes=(4, 8), depths=(1,))
    with pytest.raises(ValueError, match="decoder_attention_heads: expected a divisor of d_model=8"):
        DetrConfig(d_model=8, decoder_attention_heads=3)
    with pytest.raises(TypeError, match="config: expected a DetrConfig"):
        DETR(object())


def test_the_registry_case_probes_every_trainable_parameter_tensor_and_the_image():
    """Finite differences in the registry see seeded entries of *every* gradient, not a hand-picked few."""
    from torch_transformer.parity import CASES
    from torch_transformer.parity.cases_detr import DETR_IMAGE_PROBES, DETR_PROBES

    model = DETR(DETR_CONFIG)
    trainable = [name for name, _, _ in model.named_trainable()]
    assert len(trainable) == 85 and not any(n.endswith(("running_mean", "running_var")) for n in trainable)
    case = CASES["DETR"]
    assert case.differentiable({}) == tuple(f"probe:{n}" for n in ("pixel_values", *trainable))
    arrays = draw_detr(np.random.default_rng(0), np.float64, {})
    params = dict(model.named_parameters())
    for name in ("pixel_values", *trainable):
        index = arrays[f"index:{name}"]
        size = arrays[name].size if name == "pixel_values" else params[name].size
        want = min(DETR_IMAGE_PROBES if name == "pixel_values" else DETR_PROBES, size)
        assert len(np.unique(index)) == len(index) == want and index.min() >= 0 and index.max() < size
        assert np.array_equal(arrays[f"probe:{name}"], np.zeros(want))  # P = P_0 + 0 at the draw
    other = draw_detr(np.random.default_rng(1), np.float64, {})
    assert any(not np.array_equal(arrays[k], other[k]) for k in arrays if k.startswith("index:"))  # seeded
