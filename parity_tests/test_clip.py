"""CLIP on its own terms: QuickGELU, the contrastive loss, and (below) the two encoders and the model.

Twin and finite-difference parity of every case run in ``test_twin_parity.py``; the tests here check
the mathematics each piece claims, with no PyTorch involved unless said.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import expit

import numpy_transformer.functional as F
from numpy_transformer.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from numpy_transformer.functional.clip_loss import (
    clip_loss_dlogits,
    contrastive_logits_backward,
    contrastive_logits_forward,
)
from numpy_transformer.models.clip import LOGIT_SCALE_MAX, CLIPModel, clamp_logit_scale, eot_positions

from .helpers import assert_matches
from .strategies import dtypes, seeds

# ---------------------------------------------------------------------------- quick_gelu


@given(dtype=dtypes, seed=seeds)
def test_quick_gelu_is_x_sigmoid_1702x_close_to_gelu_and_finite_far_out(dtype, seed):
    x = np.random.default_rng(seed).standard_normal(20) * 3
    x = np.concatenate([x, [-1e4, -50.0, 0.0, 50.0, 1e4]]).astype(dtype)
    y, cache = F.quick_gelu_forward(x)
    assert y.dtype == dtype and np.all(np.isfinite(y))
    assert_matches("quick_gelu", y, x.astype(np.float64) * expit(1.702 * x.astype(np.float64)), dtype)
    g, _ = F.gelu_forward(x)
    assert np.abs(y - g).max() < 0.021  # the sigmoid approximation of x Phi(x) is off by at most ~0.02
    dx = F.quick_gelu_backward(np.ones_like(x), cache)
    assert dx.dtype == dtype and np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx[-5:], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)  # 1/2 at 0; 0 and 1 far out


# ---------------------------------------------------------------------------- clip_loss


def _pairs(seed: int, B: int, E: int):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, E)), rng.standard_normal((B, E)), np.asarray(rng.uniform(0.0, np.log(100.0)))


@given(B=st.integers(1, 6), E=st.integers(1, 5), seed=seeds)
def test_clip_loss_is_symmetric_under_swapping_images_and_texts(B, E, seed):
    """Swapping the roles transposes the logit matrix, which swaps the two cross-entropies: same loss."""
    image, text, s = _pairs(seed, B, E)
    loss, cache = F.clip_loss_forward(image, text, s)
    swapped, c_swapped = F.clip_loss_forward(text, image, s)
    assert_matches("swapped loss", swapped, loss, np.float64)
    di, dt, ds = F.clip_loss_backward(1.0, cache)
    dt2, di2, ds2 = F.clip_loss_backward(1.0, c_swapped)
    for name, a, b in (("dimage", di2, di), ("dtext", dt2, dt), ("dlogit_scale", ds2, ds)):
        assert_matches(name, a, b, np.float64)


def test_aligned_orthogonal_pairs_with_a_large_scale_give_a_loss_near_zero():
    """Image i and text i on the same axis, other pairs orthogonal: each row's softmax is one-hot as s grows."""
    B = 4
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    axes = q[:B]  # (B, E) orthonormal rows
    image, text = 3.0 * axes, 0.5 * axes  # the lengths do not matter: both are normalised
    for s, bound in ((np.log(1.0), 1.0), (np.log(100.0), 1e-40)):
        loss, cache = F.clip_loss_forward(image, text, np.asarray(s))
        # logits: e^s on the diagonal, 0 elsewhere, so loss = log(1 + (B-1) e^{-e^s}) exactly
        expected = np.log1p((B - 1) * np.exp(-np.exp(s)))
        assert_matches(f"loss at s={s:.2f}", loss, expected, np.float64)
        assert loss < bound
    _, _, ds = F.clip_loss_backward(1.0, cache)
    assert -1e-30 < ds <= 0  # a larger scale would lower the loss a little more: d loss / ds < 0, vanishing


@given(B=st.integers(1, 6), E=st.integers(1, 5), seed=seeds)
def test_clip_loss_dlogit_scale_is_the_sum_of_dlogits_times_logits(B, E, seed):
    r"""``d loss / d s = sum_ij dL_ij L_ij`` with ``dL = ((P_row - 1) + (P_col - 1)^T) / (2B)``, written out."""
    image, text, s = _pairs(seed, B, E)
    _, cache = F.clip_loss_forward(image, text, s)
    L = cache.logits.logits_per_image
    p_row = np.exp(L - L.max(axis=1, keepdims=True))
    p_row /= p_row.sum(axis=1, keepdims=True)
    p_col = np.exp(L - L.max(axis=0, keepdims=True))
    p_col /= p_col.sum(axis=0, keepdims=True)
    dL = ((p_row - np.eye(B)) + (p_col - np.eye(B))) / (2 * B)
    _, _, ds = F.clip_loss_backward(1.0, cache)
    assert_matches("dlogit_scale", ds, (dL * L).sum(), np.float64)
    # the same through the logits op alone
    _, _, ds_logits = contrastive_logits_backward(dL, cache.logits)
    assert_matches("dlogit_scale (logits op)", ds_logits, (dL * L).sum(), np.float64)


@given(B=st.integers(1, 5), E=st.integers(2, 5), seed=seeds)
def test_clip_loss_ignores_each_embeddings_length_so_its_gradient_is_orthogonal_to_it(B, E, seed):
    image, text, s = _pairs(seed, B, E)
    loss, cache = F.clip_loss_forward(image, text, s)
    lengths = np.random.default_rng(seed + 1).uniform(0.1, 10.0, (B, 1))
    rescaled, _ = F.clip_loss_forward(image * lengths, text / lengths, s)
    assert_matches("loss of rescaled rows", rescaled, loss, np.float64)
    di, dt, _ = F.clip_loss_backward(1.0, cache)
    scale = max(1.0, np.abs(di).max() * np.abs(image).max())
    assert np.abs((di * image).sum(axis=1)).max() <= 1e-12 * scale
    assert np.abs((dt * text).sum(axis=1)).max() <= 1e-12 * max(1.0, np.abs(dt).max() * np.abs(text).max())


def test_contrastive_logits_take_different_batch_sizes_and_per_text_is_the_transpose():
    image, text, s = np.random.default_rng(1).standard_normal((3, 4)), np.ones((2, 4)), np.asarray(0.5)
    logits, cache = contrastive_logits_forward(image, text, s)
    assert logits.shape == (3, 2)
    u = image / np.linalg.norm(image, axis=1, keepdims=True)
    assert_matches("logits_per_image", logits, np.exp(0.5) * u @ (text / 2).T, np.float64)
    di, dt, ds = contrastive_logits_backward(np.ones((3, 2)), cache)
    assert di.shape == (3, 4) and dt.shape == (2, 4) and ds.shape == ()


# ---------------------------------------------------------------------------- the model


def _tiny_model(seed: int = 0, text_layers: int = 1, vision_layers: int = 1) -> CLIPModel:
    text = CLIPTextConfig(vocab_size=9, max_len=6, d_model=4, n_heads=2, n_layers=text_layers, d_ff=5)
    vision = CLIPVisionConfig(
        image_size=4, patch_size=2, num_channels=1, d_model=6, n_heads=2, n_layers=vision_layers, d_ff=5
    )
    model = CLIPModel(CLIPConfig(text=text, vision=vision, projection_dim=3), rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    model.load_state_dict({n: np.asarray(0.5 * rng.standard_normal(p.shape)) for n, p in model.named_parameters()})
    return model


def test_the_text_is_pooled_at_its_largest_id_and_nothing_after_it_matters():
    model = _tiny_model()
    ids = np.array([[3, 8, 0, 0, 0], [2, 5, 4, 8, 0], [1, 2, 3, 4, 8]])  # 8 = V - 1, the end-of-text token
    np.testing.assert_array_equal(eot_positions(ids), [1, 3, 4])
    np.testing.assert_array_equal(eot_positions(np.array([[8, 1, 8]])), [0])  # repeated: the first one
    out, cache = model.text_model.forward(ids)
    np.testing.assert_array_equal(out.pooler_output, out.last_hidden_state[np.arange(3), [1, 3, 4]])
    changed = ids.copy()
    changed[0, 2:] = [7, 6, 5]  # tokens after the end-of-text token: the causal mask hides them from it
    changed[1, 4] = 1
    out2, _ = model.text_model.forward(changed)
    assert_matches("pooled, later tokens changed", out2.pooler_output, out.pooler_output, np.float64)
    # the gradient of the pooled output reaches no embedding of a token after the end-of-text token
    model.zero_grad()
    model.text_model.backward(None, np.ones_like(out.pooler_output), cache)
    dpos = model.text_model.pos_embed.grads["weight"]
    assert np.all(dpos[5:] == 0) and np.abs(dpos[4]).max() > 0  # position 4 is read by row 2's eot only


def test_the_loss_gradient_meets_both_towers_only_through_the_logits_and_logit_scale():
    """With one image and one text the softmaxes are over one entry: the loss is 0 and nothing gets a gradient;
    swapping captions between two images changes the logits only by the same permutation."""
    model = _tiny_model()
    rng = np.random.default_rng(5)
    ids = np.array([[3, 8, 0], [2, 5, 8]])
    pixels = rng.standard_normal((2, 1, 4, 4))
    out, cache = model.forward(ids, pixels, return_loss=True)
    assert_matches("logits_per_text", out.logits_per_text, out.logits_per_image.T, np.float64)
    assert_matches("embeds are unit rows", np.linalg.norm(out.image_embeds, axis=1), np.ones(2), np.float64)
    swapped, _ = model.forward(ids[::-1].copy(), pixels, return_loss=True)
    assert_matches("swapped captions", swapped.logits_per_image, out.logits_per_image[:, ::-1], np.float64)
    one, c_one = model.forward(ids[:1], pixels[:1], return_loss=True)
    assert one.loss == 0.0
    model.zero_grad()
    model.backward(c_one, dloss=1.0)
    assert all(np.all(g == 0) for _, g in model.named_grads())
    # the logit_scale gradient is sum(dL * L) of the full batch
    model.zero_grad()
    model.backward(cache, dloss=1.0)
    dL = clip_loss_dlogits(1.0, cache.loss)
    assert_matches("dlogit_scale", model.grads["logit_scale"], (dL * out.logits_per_image).sum(), np.float64)


def test_a_post_step_clamp_lets_a_saturated_scale_come_back_a_clamp_in_the_forward_does_not():
    """Captions that match the wrong images want a *smaller* scale (d loss / d s > 0).

    OpenCLIP's rule: a plain forward, then clamp the parameter after the step. A scale pushed past
    ln 100 is put back at ln 100 and its true gradient moves it down the next step. A clamp inside
    the forward, ``exp(clip(s, 0, ln 100))``, has derivative 0 while ``s > ln 100``: s never moves.
    """
    rng = np.random.default_rng(0)
    image, text = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    lr = 0.5
    # post-step clamp
    s = np.asarray(LOGIT_SCALE_MAX + 0.5)
    model = _tiny_model()
    model.logit_scale[...] = s
    clamp_logit_scale(model)
    assert model.logit_scale == LOGIT_SCALE_MAX
    for _ in range(3):
        _, cache = F.clip_loss_forward(image, text, model.logit_scale)
        _, _, ds = F.clip_loss_backward(1.0, cache)
        assert ds > 0  # the loss wants a smaller scale
        model.logit_scale[...] -= lr * ds  # the optimizer step
        clamp_logit_scale(model)
    assert model.logit_scale < LOGIT_SCALE_MAX - 1e-3  # it came back inside the range
    # clamp inside the forward: s_eff = clip(s, 0, ln 100), ds = ds_eff * [0 <= s <= ln 100]
    s = float(LOGIT_SCALE_MAX + 0.5)
    for _ in range(3):
        s_eff = np.asarray(np.clip(s, 0.0, LOGIT_SCALE_MAX))
        _, cache = F.clip_loss_forward(image, text, s_eff)
        _, _, ds_eff = F.clip_loss_backward(1.0, cache)
        ds = float(ds_eff) * (0.0 <= s <= LOGIT_SCALE_MAX)
        assert ds_eff > 0 and ds == 0.0  # the same signal, blocked by the clamp
        s -= lr * ds
    assert s == LOGIT_SCALE_MAX + 0.5  # stuck outside the range
    with pytest.raises(ValueError, match="low <= high"):
        clamp_logit_scale(model, 1.0, 0.0)


def test_clip_logit_scale_starts_at_ln_1_over_0_07_and_bad_input_is_named():
    model = _tiny_model()
    assert CLIPModel(model.config).logit_scale == np.log(1 / 0.07)
    with pytest.raises(ValueError, match="input_ids"):
        model.forward(np.array([[9, 1]]), np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="pixel_values"):
        model.forward(np.array([[8, 1]]), np.zeros((1, 2, 4, 4)))
    out, cache = model.forward(np.array([[8, 1]]), np.zeros((2, 1, 4, 4)))  # 2 images, 1 text: logits only
    assert out.logits_per_image.shape == (2, 1) and out.loss is None
    with pytest.raises(ValueError, match="dloss"):
        model.backward(cache, dloss=1.0)
    with pytest.raises(ValueError, match="B = 2 rows"):
        model.forward(np.array([[8, 1]]), np.zeros((2, 1, 4, 4)), return_loss=True)


def test_twin_of_a_clip_model_has_its_weights_and_gives_its_logits_and_loss():
    import torch

    from torch_transformer.bridge import twin_of

    model = _tiny_model()
    ids = np.array([[3, 8, 0], [2, 5, 8]])
    pixels = np.random.default_rng(3).standard_normal((2, 1, 4, 4))
    out, _ = model.forward(ids, pixels, return_loss=True)
    twin = twin_of(model)
    theirs = twin(torch.from_numpy(ids), torch.from_numpy(pixels), return_loss=True)
    assert_matches("logits_per_image (twin_of)", out.logits_per_image, theirs["logits_per_image"], np.float64)
    assert_matches("loss (twin_of)", out.loss, theirs["loss"], np.float64)


def test_numpy_ascontiguousarray_makes_a_0d_array_1d_so_the_clip_loader_copies_with_np_array():
    """A NumPy fact the key map met: ``logit_scale`` is 0-d, and ``np.ascontiguousarray`` returns at least 1-d."""
    scale = np.asarray(2.5)
    assert np.ascontiguousarray(scale).shape == (1,)
    assert np.array(scale, order="C").shape == ()
