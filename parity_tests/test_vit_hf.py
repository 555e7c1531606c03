"""Our ViT against Hugging Face's ``ViTModel`` and ``ViTForImageClassification``, with mapped weights.

Small random ``transformers.ViTConfig`` models (float64, built offline) hold the reference weights;
``numpy_transformer.applications.vit_weights`` renames them to ours. Compared, within the float64
contract: ``last_hidden_state``, the pooler output, every layer's attention probabilities, the logits,
the loss Hugging Face computes from ``labels``, the gradient of the image and the gradient of every
parameter (our hand-written backward against HF's autograd), under random upstream gradients.

A framework fact decides how HF's attention runs here. HF's ``"eager"`` ViT attention computes its
softmax in float32 and casts back (``softmax(..., dtype=torch.float32).to(query.dtype)``, seen in
transformers 5.24): in a float64 model its probabilities are float32 numbers, about 1e-8 away from
the float64 ones, which no float64 comparison can pass (``test_hf_eager_vit_attention_is_float32_even_in_float64``
pins this). So the comparisons run HF's model with

* ``"eager_float64"``: HF's eager attention function, registered through the public
  ``transformers.AttentionInterface``, with the softmax left in the input dtype -- the one change;
  it returns the attention probabilities, so they are compared too;
* ``"sdpa"``: HF's stock ``scaled_dot_product_attention`` path, untouched (float64 throughout on
  CPU), for the hidden states, pooler, logits, loss and every gradient: no replaced code at all.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.applications.pretrained import PretrainedLoadError
from numpy_transformer.applications.vit_weights import (
    vit_config_from_hf,
    vit_config_to_hf,
    vit_hf_key_map,
    vit_state_dict_from_hf,
    vit_state_dict_to_hf,
)
from numpy_transformer.testing import relative_error, tolerance
from parity_tests.helpers import assert_matches

transformers = pytest.importorskip("transformers")

B, LABELS = 3, 5


def _eager_attention_in_input_dtype(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF's ``eager_attention_forward`` (modeling_vit.py) with the softmax kept in ``query.dtype``."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.nn.functional.softmax(scores, dim=-1)  # HF: softmax(scores, dim=-1, dtype=torch.float32)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


transformers.AttentionInterface.register("eager_float64", _eager_attention_in_input_dtype)


def _configs(qkv_bias=True, attn="eager_float64"):
    ours = nt.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, d_model=16, n_heads=4, n_layers=2, d_ff=32, num_labels=LABELS,
        layer_norm_eps=1e-12, qkv_bias=qkv_bias,
    )  # fmt: skip
    return ours, transformers.ViTConfig(**vit_config_to_hf(ours), attn_implementation=attn)


def _hf_model(cls, hf_cfg, seed=0, **kwargs):
    torch.manual_seed(seed)
    hf = cls(hf_cfg, **kwargs).double().eval()
    with torch.no_grad():  # HF starts biases and LayerNorms at 0 / 1: move every parameter so each one counts
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return hf


def _ours_from(hf, ours_cls, cfg, classifier=False, **kwargs):
    """Our model with HF's weights; return it and our name -> HF parameter (for the gradients)."""
    params = dict(hf.named_parameters())
    model = ours_cls(cfg, np.float64, np.random.default_rng(0), **kwargs).eval()
    model.load_state_dict(
        vit_state_dict_from_hf({k: p.detach().numpy() for k, p in params.items()}, cfg, classifier=classifier)
    )
    pooler = any(k.startswith("pooler.") for k in params)
    key_map = vit_hf_key_map(
        cfg.n_layers, layout="module", pooler=pooler and not classifier, qkv_bias=cfg.qkv_bias, classifier=classifier
    )
    by_ours = {key_map[k]: p for k, p in params.items()}
    assert set(by_ours) == {n for n, _ in model.named_parameters()}, "the key map must cover both sides exactly"
    return model, by_ours


def _assert_every_gradient(model, by_ours, worst):
    for name, grad in model.named_grads():
        cmp = assert_matches(f"d{name} (vs HF autograd)", grad, by_ours[name].grad, np.float64)
        worst["gradients"] = max(worst["gradients"], cmp.error)


@pytest.mark.parametrize("attn", ["eager_float64", "sdpa"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_vit_model_is_hf_vit_model_hidden_states_pooler_attentions_and_every_gradient(attn, qkv_bias):
    cfg, hf_cfg = _configs(qkv_bias, attn)
    hf = _hf_model(transformers.ViTModel, hf_cfg)
    ours, by_ours = _ours_from(hf, nt.ViT, cfg)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, 3, 8, 8))
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    out_hf = hf(pixel_values=x_t, output_attentions=attn != "sdpa")
    out, cache = ours.forward(x, output_attentions=True)
    worst = {"forward": 0.0, "gradients": 0.0}
    for name, a, b in (("last_hidden_state", out.last_hidden_state, out_hf.last_hidden_state),
                       ("pooler_output", out.pooler_output, out_hf.pooler_output)):  # fmt: skip
        worst["forward"] = max(worst["forward"], assert_matches(name, a, b, np.float64).error)
    if attn != "sdpa":  # HF's sdpa path returns no probabilities
        assert len(out_hf.attentions) == cfg.n_layers
        for i, (a, b) in enumerate(zip(out.attentions, out_hf.attentions, strict=True)):
            worst["forward"] = max(worst["forward"], assert_matches(f"layer {i} attention", a, b, np.float64).error)

    d_hidden = rng.standard_normal(out.last_hidden_state.shape)  # random upstream gradients, never all-ones
    d_pooled = rng.standard_normal(out.pooler_output.shape)
    surrogate = (out_hf.last_hidden_state * torch.from_numpy(d_hidden)).sum()
    (surrogate + (out_hf.pooler_output * torch.from_numpy(d_pooled)).sum()).backward()
    dx = ours.backward(d_hidden, d_pooled, cache)
    cmp = assert_matches("dpixel_values (vs HF autograd)", dx, x_t.grad, np.float64)
    worst["gradients"] = max(worst["gradients"], cmp.error)
    _assert_every_gradient(ours, by_ours, worst)
    print(f"ViTModel vs HF ({attn}, qkv_bias={qkv_bias}): worst {worst}")


@pytest.mark.parametrize("attn", ["eager_float64", "sdpa"])
def test_vit_classifier_is_hf_logits_loss_from_labels_attentions_and_every_gradient(attn):
    cfg, hf_cfg = _configs(True, attn)
    hf = _hf_model(transformers.ViTForImageClassification, hf_cfg, seed=1)
    ours, by_ours = _ours_from(hf, nt.ViTForImageClassification, cfg, classifier=True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, 3, 8, 8))
    labels = rng.integers(0, LABELS, size=B)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    out_hf = hf(pixel_values=x_t, labels=torch.from_numpy(labels), output_attentions=attn != "sdpa")
    out, cache = ours.forward(x, labels=labels, output_attentions=True)
    worst = {"forward": 0.0, "gradients": 0.0}
    for name, a, b in (("logits", out.logits, out_hf.logits), ("loss", out.loss, out_hf.loss)):
        worst["forward"] = max(worst["forward"], assert_matches(name, a, b, np.float64).error)
    if attn != "sdpa":
        for i, (a, b) in enumerate(zip(out.attentions, out_hf.attentions, strict=True)):
            worst["forward"] = max(worst["forward"], assert_matches(f"layer {i} attention", a, b, np.float64).error)

    dloss = float(rng.uniform(0.5, 2.0))  # a random upstream gradient of the scalar loss
    out_hf.loss.backward(torch.tensor(dloss, dtype=torch.float64))
    dx = ours.backward(None, cache, dloss=dloss)
    worst["gradients"] = assert_matches("dpixel_values (vs HF autograd)", dx, x_t.grad, np.float64).error
    _assert_every_gradient(ours, by_ours, worst)
    assert np.abs(ours.vit.grads["cls_token"]).max() > 0 and np.abs(ours.vit.grads["pos_embed"]).max() > 0
    print(f"ViTForImageClassification vs HF ({attn}): worst {worst}")


def test_hf_eager_vit_attention_is_float32_even_in_float64():
    """The framework fact behind ``eager_float64``: HF's stock eager ViT attention rounds its softmax to float32."""
    cfg, hf_cfg = _configs(True, "eager")
    hf = _hf_model(transformers.ViTModel, hf_cfg)
    ours, _ = _ours_from(hf, nt.ViT, cfg)
    x = np.random.default_rng(1).standard_normal((B, 3, 8, 8))
    with torch.no_grad():
        out_hf = hf(pixel_values=torch.from_numpy(x), output_attentions=True)
    out, _ = ours.forward(x, output_attentions=True)
    probs = out_hf.attentions[0]
    assert probs.dtype == torch.float64
    assert torch.equal(probs, probs.float().double()), "expected float32 numbers in a float64 tensor"
    error = relative_error("layer 0 attention vs HF eager", out.attentions[0], probs.numpy()).error
    assert 1e-10 < error <= tolerance("cpu", np.float32), error  # float32 rounding: beyond the float64 contract
    hidden = relative_error("hidden vs HF eager", out.last_hidden_state, out_hf.last_hidden_state.numpy()).error
    assert hidden > 1e-10, hidden


# --------------------------------------------------------------------------- files and configs


@pytest.mark.parametrize("classifier", [False, True])
def test_a_saved_hf_checkpoint_loads_through_the_checkpoint_layout(tmp_path, classifier):
    """``save_pretrained`` writes the Hub's names (``encoder.layer.{i}.attention.attention.query...``)."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    cfg, hf_cfg = _configs(qkv_bias=False)
    cls = transformers.ViTForImageClassification if classifier else transformers.ViTModel
    hf = _hf_model(cls, hf_cfg)
    hf.save_pretrained(tmp_path)
    files = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
    prefix = "vit." if classifier else ""
    assert f"{prefix}encoder.layer.1.attention.attention.query.weight" in files
    assert f"{prefix}encoder.layer.1.attention.attention.query.bias" not in files  # qkv_bias=False
    assert vit_config_from_hf(json.loads((tmp_path / "config.json").read_text())) == cfg

    from_file = vit_state_dict_from_hf(files, cfg, classifier=classifier)
    from_modules = vit_state_dict_from_hf(
        {k: p.detach().numpy() for k, p in hf.named_parameters()}, cfg, classifier=classifier
    )
    assert from_file.keys() == from_modules.keys()
    for key, value in from_file.items():
        assert np.array_equal(value, from_modules[key]), key
    back = vit_state_dict_to_hf(from_file, cfg, layout="checkpoint", classifier=classifier)
    assert back.keys() == files.keys()


def test_the_key_map_rejects_unknown_missing_and_misshapen_weights():
    cfg, hf_cfg = _configs()
    hf = _hf_model(transformers.ViTModel, hf_cfg)
    state = {k: p.detach().numpy() for k, p in hf.named_parameters()}
    with pytest.raises(PretrainedLoadError, match=r"'layers.2.mlp.fc1.weight': not a parameter of our 2-layer ViT"):
        vit_state_dict_from_hf(state | {"layers.2.mlp.fc1.weight": state["layers.1.mlp.fc1.weight"]}, cfg)
    with pytest.raises(PretrainedLoadError, match=r"missing 1 parameter\(s\): \['layernorm.bias'\]"):
        vit_state_dict_from_hf({k: v for k, v in state.items() if k != "layernorm.bias"}, cfg)
    shape = r"'embeddings.position_embeddings' \(ours 'pos_embed'\): expected shape \(1, 5, 16\)"
    with pytest.raises(PretrainedLoadError, match=shape):
        vit_state_dict_from_hf(state | {"embeddings.position_embeddings": np.zeros((1, 17, 16))}, cfg)
    no_bias = r"'layers.0.attention.q_proj.bias': not a parameter .*qkv_bias=False"
    with pytest.raises(PretrainedLoadError, match=no_bias):
        vit_state_dict_from_hf(state, _configs(qkv_bias=False)[0])
    with pytest.raises(ValueError, match="ViTForImageClassification has no pooler"):
        vit_hf_key_map(2, pooler=True, classifier=True)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("model_type", "deit", r"model_type='deit' cannot be represented"),
        ("image_size", [8, 12], r"image_size=\[8, 12\] cannot be represented; expected a square size"),
        ("attention_probs_dropout_prob", 0.1, r"attention_probs_dropout_prob=0.1 .* \(one dropout\)"),
        ("pooler_act", "relu", r"pooler_act='relu' cannot be represented"),
        ("pooler_output_size", 8, r"pooler_output_size=8 cannot be represented"),
        ("hidden_act", "swish", r"hidden_act='swish' cannot be represented"),
        ("patch_size", 3, r"config.json: image_size, patch_size: .*image_size=8 and patch_size=3"),
    ],
)
def test_hf_configs_we_cannot_represent_are_rejected_naming_the_field(field, value, match):
    hf = transformers.ViTConfig(**vit_config_to_hf(_configs()[0])).to_dict() | {field: value}
    with pytest.raises(PretrainedLoadError, match=match):
        vit_config_from_hf(hf)
