"""Hugging Face's CLIP names and configs <-> ours: the key map of ``transformers.CLIPModel``.

CLIP checkpoints and transformers 5's ``CLIPModel.named_parameters()`` use the same names, so there
is one layout. Every key maps one to one onto ours and no array changes shape: ``nn.Linear`` and
``nn.Conv2d`` store weights as ours do, ``(out, in)`` and ``(C, Cin, P, P)``; the class embedding is
``(C,)`` and both position tables are embedding tables ``(positions, C)`` on both sides; ``logit_scale``
is a 0-d array. The same map renames gradients (``parity_tests/test_clip_hf.py`` compares every one).

No torch here: the functions take and give NumPy arrays and plain dicts (a ``transformers.CLIPConfig``
is built from :func:`clip_config_to_hf`'s dict by the caller).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import CLIPConfig
from .pretrained import PretrainedLoadError

# Per block, Hugging Face's name under ``{tower}.encoder.layers.{i}.`` -> ours under ``{tower}.layers.{i}.``;
# each a prefix of ``.weight`` and ``.bias``.
CLIP_LAYER_NAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj", "self_attn.q_proj"),
    ("self_attn.k_proj", "self_attn.k_proj"),
    ("self_attn.v_proj", "self_attn.v_proj"),
    ("self_attn.out_proj", "self_attn.out_proj"),
    ("layer_norm1", "norm1"),  # pre-LN: before the attention
    ("layer_norm2", "norm2"),  # and before the MLP
    ("mlp.fc1", "ff.linear1"),
    ("mlp.fc2", "ff.linear2"),
)
# Outside the blocks: Hugging Face name -> ours.
CLIP_TEXT_NAMES: tuple[tuple[str, str], ...] = (
    ("text_model.embeddings.token_embedding.weight", "text_model.tok_embed.weight"),
    ("text_model.embeddings.position_embedding.weight", "text_model.pos_embed.weight"),
    ("text_model.final_layer_norm.weight", "text_model.final_norm.weight"),
    ("text_model.final_layer_norm.bias", "text_model.final_norm.bias"),
)
CLIP_VISION_NAMES: tuple[tuple[str, str], ...] = (
    ("vision_model.embeddings.class_embedding", "vision_model.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "vision_model.patch_embed.weight"),  # no bias
    ("vision_model.embeddings.position_embedding.weight", "vision_model.pos_embed.weight"),
    ("vision_model.pre_layrnorm.weight", "vision_model.pre_norm.weight"),  # sic: HF's spelling
    ("vision_model.pre_layrnorm.bias", "vision_model.pre_norm.bias"),
    ("vision_model.post_layernorm.weight", "vision_model.post_norm.weight"),
    ("vision_model.post_layernorm.bias", "vision_model.post_norm.bias"),
)
CLIP_TOP_NAMES: tuple[tuple[str, str], ...] = (
    ("text_projection.weight", "text_projection.weight"),  # no bias
    ("visual_projection.weight", "visual_projection.weight"),
    ("logit_scale", "logit_scale"),
)


def clip_hf_key_map(text_layers: int, vision_layers: int) -> dict[str, str]:
    """Every Hugging Face key of a ``CLIPModel`` with these depths -> our key."""
    mapping = dict(CLIP_TEXT_NAMES) | dict(CLIP_VISION_NAMES)
    for tower, n_layers in (("text_model", text_layers), ("vision_model", vision_layers)):
        for i in range(n_layers):
            for theirs, ours in CLIP_LAYER_NAMES:
                for param in ("weight", "bias"):
                    mapping[f"{tower}.encoder.layers.{i}.{theirs}.{param}"] = f"{tower}.layers.{i}.{ours}.{param}"
    return mapping | dict(CLIP_TOP_NAMES)


def clip_state_dict_from_hf(
    hf_state: Mapping[str, np.ndarray], config: CLIPConfig, *, dtype=np.float64
) -> dict[str, np.ndarray]:
    """Rename a Hugging Face CLIP state dict to ours, checking every key (unknown or missing) and float dtype.

    Shapes are checked by our model's ``load_state_dict``. Buffers HF may store (``position_ids``) are
    not parameters: they are skipped. Arrays are copied to ``dtype``.
    """
    expected = clip_hf_key_map(config.text.n_layers, config.vision.n_layers)
    ours: dict[str, np.ndarray] = {}
    for hf_key, value in hf_state.items():
        if hf_key.endswith("position_ids"):
            continue  # arange(positions): a buffer, not a parameter
        if hf_key not in expected:
            raise PretrainedLoadError(
                f"checkpoint key {hf_key!r}: not a parameter of our CLIPModel with {config.text.n_layers} text and "
                f"{config.vision.n_layers} vision layers (see CLIP_LAYER_NAMES)"
            )
        value = np.asarray(value)
        if value.dtype.kind != "f":
            raise PretrainedLoadError(f"checkpoint key {hf_key!r}: expected a float array, got {value.dtype}")
        # np.array, not np.ascontiguousarray: that one returns at least 1-d, and logit_scale is 0-d
        ours[expected[hf_key]] = np.array(value, dtype=dtype, order="C")
    missing = [hf for hf, key in expected.items() if key not in ours]
    if missing:
        raise PretrainedLoadError(f"checkpoint: missing {len(missing)} parameter(s): {missing[:8]}")
    return ours


def clip_state_dict_to_hf(state: Mapping[str, np.ndarray], config: CLIPConfig) -> dict[str, np.ndarray]:
    """Our CLIP state dict under Hugging Face's names; the arrays are the same."""
    back = {ours: hf for hf, ours in clip_hf_key_map(config.text.n_layers, config.vision.n_layers).items()}
    unknown = sorted(set(state) - set(back))
    if unknown:
        raise KeyError(f"state: keys with no Hugging Face name: {unknown[:8]}")
    return {back[k]: v for k, v in state.items()}


_TO_HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def clip_config_to_hf(config: CLIPConfig) -> dict[str, Any]:
    """The keyword arguments of ``transformers.CLIPConfig`` for the same model (sub-configs as dicts).

    The text side gets ``eos_token_id=2``: transformers then pools at ``argmax(input_ids)``, our rule
    (with any other id it pools at the first occurrence of that id, which agrees when the end-of-text
    token is the largest id, as in CLIP's vocabulary).
    """
    t, v = config.text, config.vision
    text = dict(
        vocab_size=t.vocab_size, max_position_embeddings=t.max_len, hidden_size=t.d_model,
        num_attention_heads=t.n_heads, num_hidden_layers=t.n_layers, intermediate_size=t.d_ff,
        hidden_act=_TO_HF_ACT[t.activation], layer_norm_eps=t.layer_norm_eps, attention_dropout=0.0,
        projection_dim=config.projection_dim, pad_token_id=0, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    vision = dict(
        image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels, hidden_size=v.d_model,
        num_attention_heads=v.n_heads, num_hidden_layers=v.n_layers, intermediate_size=v.d_ff,
        hidden_act=_TO_HF_ACT[v.activation], layer_norm_eps=v.layer_norm_eps, attention_dropout=0.0,
        projection_dim=config.projection_dim,
    )  # fmt: skip
    return dict(
        text_config=text, vision_config=vision, projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init, initializer_range=config.initializer_range,
    )  # fmt: skip
