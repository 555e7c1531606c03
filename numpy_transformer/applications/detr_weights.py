"""Hugging Face's DETR names and config <-> ours: the key map of ``DetrForObjectDetection``.

Our :class:`~numpy_transformer.models.detr.DETR` is Hugging Face's ``DetrForObjectDetection`` built with
``use_timm_backbone=False`` and ``backbone_config=ResNetConfig(layer_type="basic", ...)`` (its
``ResNetBackbone``, batch norms replaced by ``DetrFrozenBatchNorm2d``, the last stage's map used),
``dropout=0``. Every array maps one to one with no change of layout (``nn.Linear`` ``(out, in)``,
``nn.Conv2d`` ``(O, C, k, k)``, ``nn.Embedding`` ``(Q, C)`` as our ``query_position_embeddings``);
only the names differ (:func:`detr_hf_key_map`). The frozen batch norms' four arrays are buffers
there and frozen parameters here.

Things the map does *not* cover, pinned in ``parity_tests/test_detr_hf.py``:

* with ``auxiliary_loss=True`` transformers 5 feeds each decoder layer the *normalised* output of
  the one before and normalises the last one twice (DETR normalises a copy for the auxiliary heads
  only); we follow DETR, and compare with Hugging Face's ``auxiliary_loss=False`` model, reading
  every decoder layer's output from ``output_hidden_states``;
* Hugging Face freezes the backbone's parameters whose names lack ``"stage.1"``, ``"stage.2"`` or
  ``"stage.3"`` -- and its ResNet's names say ``stages.1``, so the whole backbone is frozen there.

No torch here: plain dicts and NumPy arrays (the caller builds the ``transformers`` configs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import DetrConfig

_PREFIX_BACKBONE = "model.backbone.model."
_BN = ("weight", "bias", "running_mean", "running_var")

# Per encoder / decoder layer: Hugging Face's module name -> ours (each a prefix of .weight / .bias).
DETR_ENCODER_LAYER_NAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj", "self_attn.q_proj"),
    ("self_attn.k_proj", "self_attn.k_proj"),
    ("self_attn.v_proj", "self_attn.v_proj"),
    ("self_attn.o_proj", "self_attn.out_proj"),
    ("self_attn_layer_norm", "norm1"),
    ("mlp.fc1", "ff.linear1"),
    ("mlp.fc2", "ff.linear2"),
    ("final_layer_norm", "norm2"),
)
DETR_DECODER_LAYER_NAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj", "self_attn.q_proj"),
    ("self_attn.k_proj", "self_attn.k_proj"),
    ("self_attn.v_proj", "self_attn.v_proj"),
    ("self_attn.o_proj", "self_attn.out_proj"),
    ("self_attn_layer_norm", "norm1"),
    ("encoder_attn.q_proj", "cross_attn.q_proj"),
    ("encoder_attn.k_proj", "cross_attn.k_proj"),
    ("encoder_attn.v_proj", "cross_attn.v_proj"),
    ("encoder_attn.o_proj", "cross_attn.out_proj"),
    ("encoder_attn_layer_norm", "norm2"),
    ("mlp.fc1", "ff.linear1"),
    ("mlp.fc2", "ff.linear2"),
    ("final_layer_norm", "norm3"),
)


def _conv_norm(theirs: str, ours: str) -> dict[str, str]:
    """A ResNet ``ResNetConvLayer`` / ``ResNetShortCut`` (convolution + normalization) -> our ConvNorm."""
    out = {f"{_PREFIX_BACKBONE}{theirs}.convolution.weight": f"backbone.{ours}.conv.weight"}
    out |= {f"{_PREFIX_BACKBONE}{theirs}.normalization.{b}": f"backbone.{ours}.norm.{b}" for b in _BN}
    return out


def detr_hf_key_map(config: DetrConfig) -> dict[str, str]:
    """Every key of Hugging Face's ``DetrForObjectDetection.state_dict()`` (the config's counterpart) -> ours."""
    c = config
    mapping = _conv_norm("embedder.embedder", "stem")
    widths = (c.embedding_size, *c.hidden_sizes)
    for s, depth in enumerate(c.depths):
        for j in range(depth):
            theirs, ours = f"encoder.stages.{s}.layers.{j}", f"stages.{s}.{j}"
            if j == 0 and (widths[s] != widths[s + 1] or s > 0):
                mapping |= _conv_norm(f"{theirs}.shortcut", f"{ours}.shortcut")
            mapping |= _conv_norm(f"{theirs}.layer.0", f"{ours}.conv1")
            mapping |= _conv_norm(f"{theirs}.layer.1", f"{ours}.conv2")
    mapping["model.query_position_embeddings.weight"] = "query_position_embeddings"
    for p in ("weight", "bias"):
        mapping[f"model.input_projection.{p}"] = f"input_projection.{p}"
        for i in range(c.encoder_layers):
            for theirs, ours in DETR_ENCODER_LAYER_NAMES:
                mapping[f"model.encoder.layers.{i}.{theirs}.{p}"] = f"encoder.{i}.{ours}.{p}"
        for i in range(c.decoder_layers):
            for theirs, ours in DETR_DECODER_LAYER_NAMES:
                mapping[f"model.decoder.layers.{i}.{theirs}.{p}"] = f"decoder.{i}.{ours}.{p}"
        mapping[f"model.decoder.layernorm.{p}"] = f"decoder_norm.{p}"
        mapping[f"class_labels_classifier.{p}"] = f"class_head.{p}"
        for i in range(3):
            mapping[f"bbox_predictor.layers.{i}.{p}"] = f"box_head.{i}.{p}"
    return mapping


def detr_config_to_hf(config: DetrConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(detr_kwargs, resnet_kwargs)``: ``transformers.DetrConfig(**detr_kwargs, backbone_config=
    transformers.ResNetConfig(**resnet_kwargs))`` is the same network (``use_timm_backbone=False``, no dropout)."""
    c = config
    resnet = dict(
        num_channels=c.num_channels, embedding_size=c.embedding_size, hidden_sizes=list(c.hidden_sizes),
        depths=list(c.depths), layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
        out_features=[f"stage{len(c.depths)}"],
    )  # fmt: skip
    detr = dict(
        use_timm_backbone=False, num_channels=c.num_channels, d_model=c.d_model, encoder_layers=c.encoder_layers,
        decoder_layers=c.decoder_layers, encoder_attention_heads=c.encoder_attention_heads,
        decoder_attention_heads=c.decoder_attention_heads, encoder_ffn_dim=c.encoder_ffn_dim,
        decoder_ffn_dim=c.decoder_ffn_dim, num_queries=c.num_queries, num_labels=c.num_labels, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, activation_function="relu", position_embedding_type="sine",
        auxiliary_loss=False, eos_coefficient=c.eos_coefficient,
    )  # fmt: skip
    for name in ("class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient"):
        value = float(getattr(c, name))
        detr[name] = int(value) if value.is_integer() else value  # transformers 5 declares these int
    return detr, resnet


def detr_state_dict_from_hf(state: Mapping[str, np.ndarray], config: DetrConfig) -> dict[str, np.ndarray]:
    """Hugging Face's state dict (as NumPy arrays) -> ours; a missing or unexpected key is a ``KeyError``."""
    mapping = detr_hf_key_map(config)
    missing = sorted(set(mapping) - set(state))
    extra = sorted(k for k in set(state) - set(mapping) if not k.endswith("num_batches_tracked"))
    if missing or extra:
        raise KeyError(f"state: keys do not match DETR's: missing {missing[:5]}, unexpected {extra[:5]}")
    return {ours: np.asarray(state[theirs]) for theirs, ours in mapping.items()}
