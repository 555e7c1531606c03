"""The ViT pictures: the class token's attention, attention rollout, position-embedding similarity, the command."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_transformer.applications.vit_attention import (
    attention_rollout,
    class_token_attention,
    position_similarity,
    rollout_matrix,
)
from numpy_transformer.config import ViTConfig
from numpy_transformer.models.vit import ViTForImageClassification


def _attentions(layers: int = 3, B: int = 2, H: int = 2, L: int = 17, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        s = rng.standard_normal((B, H, L, L))
        e = np.exp(s - s.max(-1, keepdims=True))
        out.append(e / e.sum(-1, keepdims=True))
    return out


def test_class_token_attention_is_row_zero_over_the_patches_on_the_grid():
    att = _attentions()
    cls = class_token_attention(att, image=1)
    assert cls.shape == (3, 2, 4, 4)
    np.testing.assert_array_equal(cls[2, 1].ravel(), att[2][1, 1, 0, 1:])  # layer 2, head 1, patches row by row


def test_rollout_is_the_product_of_residual_augmented_head_means_and_stays_a_distribution():
    att = _attentions()
    R = rollout_matrix(att, image=0)
    np.testing.assert_allclose(R.sum(-1), 1.0, rtol=0, atol=1e-12)  # products of row-stochastic matrices
    assert (R >= 0).all()
    steps = [(a[0].mean(0) + np.eye(17)) / (a[0].mean(0) + np.eye(17)).sum(-1, keepdims=True) for a in att]
    np.testing.assert_allclose(R, steps[2] @ steps[1] @ steps[0], rtol=1e-12, atol=0)  # the last layer applies last
    assert attention_rollout(att).sum() == pytest.approx(1.0)


def test_rollout_of_attention_that_stays_home_is_the_identity():
    """A token attending only to itself is left alone by the layer: the rollout stays the identity."""
    eye = np.broadcast_to(np.eye(5), (1, 2, 5, 5)).copy()
    np.testing.assert_array_equal(rollout_matrix([eye, eye]), np.eye(5))


def test_position_similarity_is_cosine_with_ones_on_the_diagonal_and_symmetric():
    rng = np.random.default_rng(2)
    pos = rng.standard_normal((1, 17, 8))
    s = position_similarity(pos)
    assert s.shape == (4, 4, 4, 4)
    flat = s.reshape(16, 16)
    np.testing.assert_allclose(np.diag(flat), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(flat, flat.T, rtol=0, atol=1e-15)
    a, b = pos[0, 1 + 5], pos[0, 1 + 9]  # patch (1, 1) against patch (2, 1)
    assert s[1, 1, 2, 1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-12)


def test_the_pictures_take_the_models_own_attentions():
    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                    num_labels=10)  # fmt: skip
    model = ViTForImageClassification(cfg, np.float64, np.random.default_rng(0))
    out, _ = model.forward(np.random.default_rng(1).random((3, 1, 8, 8)), output_attentions=True)
    assert class_token_attention(out.attentions, 2).shape == (2, 2, 4, 4)
    assert attention_rollout(out.attentions, 2).shape == (4, 4)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"attentions: expected one \(B, H, L, L\) array per layer, got none"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"image: expected an index in \[0, 2\), got 2"):
        class_token_attention(_attentions(), image=2)
    with pytest.raises(ValueError, match=r"attentions: expected a square grid of patches, got 15 patches"):
        attention_rollout(_attentions(L=16))
    with pytest.raises(ValueError, match=r"pos_embed: expected \(1, N \+ 1, C\) or \(N \+ 1, C\)"):
        position_similarity(np.zeros(5))


def test_vit_attention_command_writes_both_pictures_and_refuses_other_checkpoints(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from numpy_transformer.commands import main

    run = tmp_path / "vit"
    assert main(["train", "--task", "digits", "--steps", "5", "--batch-size", "8", "--no-progress",
                 "--out", str(run)]) == 0  # fmt: skip
    assert main(["vit-attention", str(run / "checkpoint.npz"), "--image", "3"]) == 0
    out = capsys.readouterr().out
    assert "test image 3: digit" in out and "rollout's three largest patches" in out
    for name in ("vit_attention.png", "position_similarity.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    cnn = tmp_path / "cnn"
    assert main(["train", "--task", "digits", "--model", "cnn", "--steps", "2", "--no-progress",
                 "--out", str(cnn)]) == 0  # fmt: skip
    for argv, message in [
        ([str(cnn / "checkpoint.npz")], "is not a digits ViT"),
        ([str(run / "checkpoint.npz"), "--image", "359"], "--image: expected an index below 359"),
        ([str(tmp_path / "none.npz")], "no such file"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["vit-attention", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err
