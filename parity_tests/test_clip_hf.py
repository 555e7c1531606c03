"""Our CLIP against Hugging Face's ``transformers.CLIPModel``, with mapped weights, in float64.

A small random ``transformers.CLIPConfig`` model (built offline) holds the reference weights;
``numpy_transformer.applications.clip_weights`` renames them to ours. Compared, within the float64
contract: ``text_embeds``, ``image_embeds``, ``logits_per_image``, ``logits_per_text``, the loss of
``return_loss=True``, and, under random upstream gradients on all five at once, the gradient of the
image and of every parameter, ``logit_scale`` included (our hand-written backward against autograd).

The framework fact of ``test_vit_hf.py`` holds for CLIP too: HF's ``"eager"`` attention runs its
softmax in float32 and casts back (``softmax(..., dtype=torch.float32).to(query.dtype)`` in
``modeling_clip.eager_attention_forward``, transformers 5.24), so a float64 model's attention
probabilities are float32 numbers (pinned below). The comparisons therefore run HF's model with

* ``"clip_eager_float64"``: HF's eager attention function registered through the public
  ``transformers.AttentionInterface`` with the softmax left in the input dtype, the one change
  (and, since the text side is causal, ``eager_mask`` registered for it through
  ``transformers.AttentionMaskInterface``: a new implementation name without a mask kind gets a
  boolean mask, which an eager function adds to the scores as 0 / 1, a mismatch of 0.4 here);
* ``"sdpa"``: HF's stock ``scaled_dot_product_attention`` path, untouched.

Pooling: with ``eos_token_id == 2`` transformers pools at ``argmax(input_ids)`` (the rule of the
original checkpoints, ours); with any other id at the first occurrence of that id. Both are run:
with the end-of-text token as the largest id of every caption they agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from numpy_transformer.applications.clip_weights import (
    clip_config_to_hf,
    clip_hf_key_map,
    clip_state_dict_from_hf,
    clip_state_dict_to_hf,
)
from numpy_transformer.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from numpy_transformer.functional.quick_gelu import quick_gelu_backward, quick_gelu_forward
from numpy_transformer.models.clip import CLIPModel
from parity_tests.helpers import assert_matches
from torch_transformer.parity.cases_clip import caption_ids

transformers = pytest.importorskip("transformers")

B, V = 3, 12


def _eager_attention_in_input_dtype(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF's CLIP ``eager_attention_forward`` with the softmax kept in ``query.dtype``."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.nn.functional.softmax(scores, dim=-1)  # HF: softmax(scores, dim=-1, dtype=torch.float32)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


transformers.AttentionInterface.register("clip_eager_float64", _eager_attention_in_input_dtype)
# The causal mask of the text side is built per attention implementation: a new name needs its mask kind too,
# or transformers builds the boolean mask of sdpa, which the eager function would *add* to the scores.
transformers.AttentionMaskInterface.register("clip_eager_float64", transformers.masking_utils.eager_mask)


def _config() -> CLIPConfig:
    text = CLIPTextConfig(vocab_size=V, max_len=7, d_model=8, n_heads=2, n_layers=2, d_ff=12)
    vision = CLIPVisionConfig(image_size=8, patch_size=4, num_channels=3, d_model=12, n_heads=3, n_layers=2, d_ff=16)
    return CLIPConfig(text=text, vision=vision, projection_dim=6)


def _hf_model(cfg: CLIPConfig, attn: str, eos_token_id: int = 2, seed: int = 0):
    kwargs = clip_config_to_hf(cfg)
    kwargs["text_config"]["eos_token_id"] = eos_token_id
    hf_cfg = transformers.CLIPConfig(**kwargs)
    hf_cfg._attn_implementation = attn
    hf_cfg.text_config._attn_implementation = attn
    hf_cfg.vision_config._attn_implementation = attn
    torch.manual_seed(seed)
    hf = transformers.CLIPModel(hf_cfg).double().eval()
    with torch.no_grad():  # HF starts biases and LayerNorms at 0 / 1: move every parameter so each one counts
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return hf


def _ours_from(hf, cfg):
    params = dict(hf.named_parameters())
    model = CLIPModel(cfg, np.float64, np.random.default_rng(0)).eval()
    model.load_state_dict(clip_state_dict_from_hf({k: p.detach().numpy() for k, p in hf.state_dict().items()}, cfg))
    key_map = clip_hf_key_map(cfg.text.n_layers, cfg.vision.n_layers)
    by_ours = {key_map[k]: p for k, p in params.items()}
    assert set(by_ours) == {n for n, _ in model.named_parameters()}, "the key map must cover both sides exactly"
    return model, by_ours


@pytest.mark.parametrize(("attn", "eos"), [("clip_eager_float64", 2), ("sdpa", 2), ("sdpa", V - 1)])
def test_clip_model_is_hf_clip_model_embeddings_logits_loss_and_every_gradient(attn, eos):
    cfg = _config()
    hf = _hf_model(cfg, attn, eos)
    ours, by_ours = _ours_from(hf, cfg)
    rng = np.random.default_rng(1)
    ids = caption_ids(rng, B, cfg.text.max_len, V)
    x = rng.standard_normal((B, 3, 8, 8))
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    out_hf = hf(input_ids=torch.from_numpy(ids), pixel_values=x_t, return_loss=True)
    out, cache = ours.forward(ids, x, return_loss=True)
    worst = {"forward": 0.0, "gradients": 0.0}
    for name in ("text_embeds", "image_embeds", "logits_per_image", "logits_per_text", "loss"):
        cmp = assert_matches(name, getattr(out, name), getattr(out_hf, name), np.float64)
        worst["forward"] = max(worst["forward"], cmp.error)

    # random upstream gradients on all five outputs at once (never all-ones)
    ups = {n: rng.standard_normal(np.shape(getattr(out, n))) for n in ("logits_per_image", "logits_per_text")}
    ups |= {n: rng.standard_normal(getattr(out, n).shape) for n in ("text_embeds", "image_embeds")}
    dloss = float(rng.standard_normal())
    surrogate = dloss * out_hf.loss + sum((getattr(out_hf, n) * torch.from_numpy(g)).sum() for n, g in ups.items())
    surrogate.backward()
    dx = ours.backward(
        cache, dloss=dloss, d_logits_per_image=ups["logits_per_image"], d_logits_per_text=ups["logits_per_text"],
        d_image_embeds=ups["image_embeds"], d_text_embeds=ups["text_embeds"],
    )  # fmt: skip
    worst["gradients"] = assert_matches("dpixel_values (vs HF autograd)", dx, x_t.grad, np.float64).error
    for name, grad in ours.named_grads():
        cmp = assert_matches(f"d{name} (vs HF autograd)", grad, by_ours[name].grad, np.float64)
        worst["gradients"] = max(worst["gradients"], cmp.error)
    print(f"CLIPModel vs HF ({attn}, eos_token_id={eos}): worst {worst}")


def test_hf_eager_clip_attention_is_float32_even_in_float64():
    """The framework fact: HF's stock eager CLIP attention rounds its probabilities to float32."""
    cfg = _config()
    hf = _hf_model(cfg, "eager")
    rng = np.random.default_rng(2)
    ids = torch.from_numpy(caption_ids(rng, B, cfg.text.max_len, V))
    with torch.no_grad():
        out = hf.vision_model(pixel_values=torch.from_numpy(rng.standard_normal((B, 3, 8, 8))), output_attentions=True)
    weights = out.attentions[0]
    assert weights.dtype == torch.float64
    assert torch.equal(weights, weights.float().double()), "every probability is a float32 number"
    with torch.no_grad():
        text = hf.text_model(input_ids=ids, output_attentions=True)
    assert torch.equal(text.attentions[0], text.attentions[0].float().double())


def test_our_state_dict_goes_to_hf_names_and_back_and_bad_keys_are_named():
    cfg = _config()
    model = CLIPModel(cfg, rng=np.random.default_rng(0))
    hf_state = clip_state_dict_to_hf(model.state_dict(), cfg)
    assert "vision_model.pre_layrnorm.weight" in hf_state and "logit_scale" in hf_state
    back = clip_state_dict_from_hf(hf_state, cfg)
    assert all(np.array_equal(back[k], v) for k, v in model.state_dict().items())
    from numpy_transformer.applications.pretrained import PretrainedLoadError

    with pytest.raises(PretrainedLoadError, match=r"text_model\.encoder\.layers\.5"):
        clip_state_dict_from_hf(hf_state | {"text_model.encoder.layers.5.mlp.fc1.weight": np.zeros(1)}, cfg)
    with pytest.raises(PretrainedLoadError, match="missing 1"):
        clip_state_dict_from_hf({k: v for k, v in hf_state.items() if k != "logit_scale"}, cfg)


def test_quick_gelu_is_transformers_quick_gelu_activation():
    from transformers.activations import QuickGELUActivation

    x = np.random.default_rng(0).standard_normal((4, 7)) * 4
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    y_t = QuickGELUActivation()(x_t)
    dout = np.random.default_rng(1).standard_normal(x.shape)
    y_t.backward(torch.from_numpy(dout))
    y, cache = quick_gelu_forward(x)
    assert_matches("quick_gelu (vs HF)", y, y_t, np.float64)
    assert_matches("dx (vs HF autograd)", quick_gelu_backward(dout, cache), x_t.grad, np.float64)
