"""Our DETR against Hugging Face's ``DetrForObjectDetection`` (ResNet "basic" backbone, random small config).

Float64, eager attention, the weights (frozen batch-norm statistics included) mapped by
``applications/detr_weights.py``: the logits and boxes of *every* decoder layer, and the gradient of
every parameter and of the pixels, within the contract. Two Hugging Face behaviours are pinned on
the way (the key map's docstring says why they matter).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from numpy_transformer.applications.detr_weights import detr_config_to_hf, detr_hf_key_map, detr_state_dict_from_hf
from numpy_transformer.config import DetrConfig
from numpy_transformer.models.detr import DETR, detr_sine_position_embedding

from .helpers import assert_matches

transformers = pytest.importorskip("transformers")

CONFIG = DetrConfig(
    embedding_size=3, hidden_sizes=(3, 4), depths=(2, 1), d_model=8, encoder_layers=2, decoder_layers=3,
    encoder_attention_heads=2, decoder_attention_heads=4, encoder_ffn_dim=12, decoder_ffn_dim=10,
    num_queries=4, num_labels=3,
)  # fmt: skip
IMAGE = 24  # -> a 3 x 3 feature map (stride 8)


def hf_model(config: DetrConfig, auxiliary_loss: bool = False):
    detr, resnet = detr_config_to_hf(config)
    detr["auxiliary_loss"] = auxiliary_loss
    cfg = transformers.DetrConfig(**detr, backbone_config=transformers.ResNetConfig(**resnet))
    cfg._attn_implementation = "eager"
    return transformers.DetrForObjectDetection(cfg).to(torch.float64).eval()


def paired_models(seed: int, config: DetrConfig = CONFIG, auxiliary_loss: bool = False):
    """Hugging Face's model with random weights and random batch-norm statistics, and ours loaded from it."""
    torch.manual_seed(seed)
    theirs = hf_model(config, auxiliary_loss)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in theirs.parameters():  # away from HF's init (LayerNorms at 1 and 0 would hide a double norm)
            p.add_(0.3 * torch.from_numpy(rng.standard_normal(p.shape)))
        for name, buf in theirs.named_buffers():
            if name.endswith(("running_var", "running_mean", "normalization.weight", "normalization.bias")):
                low, high = (0.5, 1.5) if name.endswith(("running_var", "weight")) else (-0.3, 0.3)
                buf.copy_(torch.from_numpy(rng.uniform(low, high, buf.shape)))
    state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    ours = DETR(config, dtype=np.float64)
    ours.load_state_dict(detr_state_dict_from_hf(state, config))
    return ours, theirs


def hf_every_layer(theirs, pixels: torch.Tensor):
    """Every decoder layer's logits and boxes, DETR's way: the heads on ``decoder.layernorm`` of each layer's output."""
    out = theirs(pixel_values=pixels, output_hidden_states=True)
    # decoder_hidden_states: the decoder's input, each layer's output -- and, in the last place, the
    # final *normalised* state (last_hidden_state), not the last layer's raw output.
    assert len(out.decoder_hidden_states) == theirs.config.decoder_layers + 1
    norm = theirs.model.decoder.layernorm
    normed = [norm(h) for h in out.decoder_hidden_states[1:-1]] + [out.last_hidden_state]
    logits = torch.stack([theirs.class_labels_classifier(y) for y in normed])
    boxes = torch.stack([theirs.bbox_predictor(y).sigmoid() for y in normed])
    return logits, boxes, out


def test_every_decoder_layers_logits_and_boxes_and_every_gradient_match_transformers_in_float64():
    ours, theirs = paired_models(0)
    for p in theirs.parameters():
        p.requires_grad_(True)  # Hugging Face freezes its backbone (see the next test): unfreeze to compare
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, IMAGE, IMAGE))
    out, cache = ours.forward(x)
    pixels = torch.tensor(x, requires_grad=True)
    logits, boxes, hf_out = hf_every_layer(theirs, pixels)
    assert_matches("logits, every layer", out.logits, logits, np.float64)
    assert_matches("boxes, every layer", out.pred_boxes, boxes, np.float64)
    assert_matches("last layer's logits = HF's logits", out.logits[-1], hf_out.logits, np.float64)
    assert_matches("last layer's boxes = HF's pred_boxes", out.pred_boxes[-1], hf_out.pred_boxes, np.float64)
    dz, db = rng.standard_normal(out.logits.shape), rng.standard_normal(out.pred_boxes.shape)
    ours.zero_grad()
    dx = ours.backward(dz, db, cache)
    ((logits * torch.from_numpy(dz)).sum() + (boxes * torch.from_numpy(db)).sum()).backward()
    assert_matches("d pixel_values", dx, pixels.grad, np.float64)
    grads = dict(ours.named_grads())
    hf_params = dict(theirs.named_parameters())
    compared = 0
    for hf_name, our_name in detr_hf_key_map(CONFIG).items():
        if hf_name in hf_params:
            assert_matches(f"d {our_name}", grads[our_name], hf_params[hf_name].grad, np.float64)
            compared += 1
    assert compared == len(hf_params) > 100
    frozen = [n for n, _ in ours.named_parameters() if "norm." in n and n.startswith("backbone.")]
    assert frozen and all(not grads[n].any() for n in frozen)  # frozen statistics: no gradient


def test_transformers_freezes_its_whole_resnet_backbone_because_the_names_say_stages_not_stage():
    """A framework fact: DetrConvEncoder keeps ``stage.1/2/3`` trainable -- names that ResNetBackbone never has."""
    theirs = hf_model(CONFIG)
    backbone = [(n, p) for n, p in theirs.named_parameters() if n.startswith("model.backbone.")]
    assert backbone and all(not p.requires_grad for _, p in backbone)
    assert any("stages.1" in n for n, _ in backbone) and not any("stage.1" in n for n, _ in backbone)


def test_transformers_auxiliary_loss_feeds_normalised_outputs_forward_and_normalises_the_last_twice():
    """A framework fact (transformers 5): ``auxiliary_loss=True`` changes the network, not only the loss."""
    _, plain = paired_models(2)
    _, aux = paired_models(2, auxiliary_loss=True)
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 1, IMAGE, IMAGE)))
    with torch.no_grad():
        a, b = plain(pixel_values=x), aux(pixel_values=x)
        norm = aux.model.decoder.layernorm
        inter = aux.model(pixel_values=x).intermediate_hidden_states  # (L, B, Q, C)
    assert not torch.allclose(a.logits, b.logits)  # the same weights, different logits
    assert_matches("last = layernorm(last intermediate)", b.last_hidden_state, norm(inter[-1]), np.float64)


def test_the_key_map_rejects_a_state_dict_with_a_missing_or_unknown_key():
    _, theirs = paired_models(4)
    state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    state.pop("model.input_projection.bias")
    with pytest.raises(KeyError, match=r"missing \['model.input_projection.bias'\]"):
        detr_state_dict_from_hf(state, CONFIG)
    state["model.input_projection.bias"] = np.zeros(8)
    state["model.extra.weight"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"unexpected \['model.extra.weight'\]"):
        detr_state_dict_from_hf(state, CONFIG)


def test_sine_positions_equal_transformers_detr_sine_position_embedding():
    modeling = transformers.models.detr.modeling_detr
    h, w, C = 3, 5, 16
    ours = detr_sine_position_embedding(h, w, C, np.float64)  # (h w, C)
    emb = modeling.DetrSinePositionEmbedding(C // 2, normalize=True)
    mask = torch.ones(1, h, w, dtype=torch.bool)
    theirs = emb(shape=torch.Size([1, C, h, w]), device="cpu", dtype=torch.float64, mask=mask)  # (1, C, h, w)
    assert_matches("sine positions", ours, theirs.flatten(2).transpose(1, 2)[0], np.float64)
    # The y half first: its features are constant along a row (the same y for every x).
    grid = ours.reshape(h, w, C)
    assert np.allclose(grid[:, :, : C // 2], grid[:, :1, : C // 2]) and np.allclose(
        grid[:, :, C // 2 :], grid[:1, :, C // 2 :]
    )
