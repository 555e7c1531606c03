"""Hugging Face's ViT names and configs <-> ours: the key map of ``ViTModel`` / ``ViTForImageClassification``.

Hugging Face's ViT has two sets of names for the same parameters:

* ``"checkpoint"``: the names in ``model.safetensors`` files, on the Hub and as
  ``save_pretrained`` writes them (and the module names of transformers 4):
  ``encoder.layer.{i}.attention.attention.query.weight``, ``...intermediate.dense...``;
* ``"module"``: the module names of transformers 5 (``model.named_parameters()``), which
  renames the checkpoint's keys as it loads them: ``layers.{i}.attention.q_proj.weight``,
  ``...mlp.fc1...``.

Both map one to one onto ours (:data:`VIT_LAYER_NAMES`); the arrays need no change at all:
``nn.Linear`` and ``nn.Conv2d`` store their weights as ours do, ``(out, in)`` and
``(O, Cin, P, P)``, and the class token ``(1, 1, C)`` and the position table ``(1, N + 1, C)``
have our shapes. The same map renames gradients (``parity_tests/test_vit_hf.py`` compares every
one). The classifier adds ``vit.`` in front of the encoder's names on both sides and
``classifier.weight`` / ``classifier.bias``.

No torch here: the functions take and give NumPy arrays and plain dicts (a
``transformers.ViTConfig`` is built from :func:`vit_config_to_hf`'s dict by the caller).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..config import ViTConfig
from ..training.checkpoint import expected_shapes
from .pretrained import PretrainedLoadError

LAYOUTS = ("module", "checkpoint")

# Per layer: (transformers 5 module name, checkpoint / transformers 4 name, ours), each a prefix of
# ``.weight`` and ``.bias``, below ``layers.{i}.`` (module), ``encoder.layer.{i}.`` (checkpoint)
# and ``layers.{i}.`` (ours).
VIT_LAYER_NAMES: tuple[tuple[str, str, str], ...] = (
    ("attention.q_proj", "attention.attention.query", "self_attn.q_proj"),
    ("attention.k_proj", "attention.attention.key", "self_attn.k_proj"),
    ("attention.v_proj", "attention.attention.value", "self_attn.v_proj"),
    ("attention.o_proj", "attention.output.dense", "self_attn.out_proj"),
    ("layernorm_before", "layernorm_before", "norm1"),  # pre-LN: before the attention
    ("layernorm_after", "layernorm_after", "norm2"),  # and before the MLP
    ("mlp.fc1", "intermediate.dense", "ff.linear1"),
    ("mlp.fc2", "output.dense", "ff.linear2"),
)
_LAYER_PREFIX = {"module": "layers.{i}.", "checkpoint": "encoder.layer.{i}."}

# Outside the layers the two layouts agree: Hugging Face name -> ours.
VIT_EMBEDDING_NAMES: tuple[tuple[str, str], ...] = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.weight", "patch_embed.weight"),
    ("embeddings.patch_embeddings.projection.bias", "patch_embed.bias"),
)
VIT_TOP_NAMES: tuple[tuple[str, str], ...] = (
    ("layernorm.weight", "norm.weight"),  # the final LayerNorm
    ("layernorm.bias", "norm.bias"),
)
VIT_POOLER_NAMES: tuple[tuple[str, str], ...] = (
    ("pooler.dense.weight", "pooler.weight"),  # tanh(dense(class token))
    ("pooler.dense.bias", "pooler.bias"),
)
VIT_CLASSIFIER_NAMES: tuple[tuple[str, str], ...] = (
    ("classifier.weight", "classifier.weight"),
    ("classifier.bias", "classifier.bias"),
)


def _check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def vit_hf_key_map(
    n_layers: int, *, layout: str = "module", pooler: bool = True, qkv_bias: bool = True, classifier: bool = False
) -> dict[str, str]:
    """Every Hugging Face key of a ViT -> our key.

    ``layout``: ``"module"`` (transformers 5's ``named_parameters()``) or ``"checkpoint"``
    (``model.safetensors``). ``pooler``: the encoder has ``pooler.dense`` (``ViTModel``'s
    ``add_pooling_layer``). ``qkv_bias=False``: no query, key, value biases. ``classifier``:
    ``ViTForImageClassification`` (``vit.`` + the encoder without pooler, and ``classifier.*``).
    """
    _check_layout(layout)
    if classifier and pooler:
        raise ValueError("pooler, classifier: ViTForImageClassification has no pooler; pass pooler=False")
    no_bias = () if qkv_bias else ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    mapping = dict(VIT_EMBEDDING_NAMES)
    for i in range(n_layers):
        theirs_prefix, ours_prefix = _LAYER_PREFIX[layout].format(i=i), f"layers.{i}."
        for module_name, checkpoint_name, ours in VIT_LAYER_NAMES:
            theirs = module_name if layout == "module" else checkpoint_name
            for param in ("weight",) if ours in no_bias else ("weight", "bias"):
                mapping[f"{theirs_prefix}{theirs}.{param}"] = f"{ours_prefix}{ours}.{param}"
    mapping.update(VIT_TOP_NAMES)
    if pooler:
        mapping.update(VIT_POOLER_NAMES)
    if classifier:
        mapping = {f"vit.{k}": f"vit.{v}" for k, v in mapping.items()} | dict(VIT_CLASSIFIER_NAMES)
    return mapping


def vit_hf_layout(keys: Iterable[str]) -> str:
    """``"checkpoint"`` when the keys hold ``encoder.layer.``, else ``"module"`` (a model without layers is both)."""
    return "checkpoint" if any("encoder.layer." in k for k in keys) else "module"


def vit_parameter_shapes(config: ViTConfig, *, pooler: bool = True, classifier: bool = False) -> dict[str, tuple]:
    """Our parameter shapes for ``config`` without building the model."""
    shapes = expected_shapes(config)  # those of ViTForImageClassification
    if classifier:
        return shapes
    encoder = {k.removeprefix("vit."): v for k, v in shapes.items() if k.startswith("vit.")}
    if pooler:
        encoder |= {"pooler.weight": (config.d_model, config.d_model), "pooler.bias": (config.d_model,)}
    return encoder


def vit_state_dict_from_hf(
    hf_state: Mapping[str, np.ndarray], config: ViTConfig, *, classifier: bool = False, dtype=np.float64
) -> dict[str, np.ndarray]:
    """Rename a Hugging Face ViT state dict (either layout, found from its keys) to ours, checking every key and shape.

    The pooler is loaded when ``pooler.dense.*`` is present. Errors (:class:`PretrainedLoadError`)
    name the key: one we cannot map, one of another depth, a missing parameter, a wrong shape,
    a non-float array. Arrays are copied to ``dtype``.
    """
    dtype = np.dtype(dtype)
    layout = vit_hf_layout(hf_state)
    pooler = not classifier and any(k.startswith("pooler.") for k in hf_state)
    expected = vit_hf_key_map(
        config.n_layers, layout=layout, pooler=pooler, qkv_bias=config.qkv_bias, classifier=classifier
    )
    shapes = vit_parameter_shapes(config, pooler=pooler, classifier=classifier)
    ours: dict[str, np.ndarray] = {}
    for hf_key, value in hf_state.items():
        if hf_key not in expected:
            raise PretrainedLoadError(
                f"checkpoint key {hf_key!r}: not a parameter of our {config.n_layers}-layer "
                f"{'ViTForImageClassification' if classifier else 'ViT'} (qkv_bias={config.qkv_bias}, "
                f"{layout} layout; see VIT_LAYER_NAMES)"
            )
        key, value = expected[hf_key], np.asarray(value)
        if value.dtype.kind != "f":
            raise PretrainedLoadError(f"checkpoint key {hf_key!r}: expected a float array, got {value.dtype}")
        if value.shape != shapes[key]:
            raise PretrainedLoadError(
                f"checkpoint key {hf_key!r} (ours {key!r}): expected shape {shapes[key]}, got {value.shape}"
            )
        ours[key] = np.ascontiguousarray(value, dtype=dtype)
    missing = [hf for hf, key in expected.items() if key not in ours]
    if missing:
        raise PretrainedLoadError(f"checkpoint: missing {len(missing)} parameter(s): {missing[:8]}")
    return ours


def vit_state_dict_to_hf(
    state: Mapping[str, np.ndarray], config: ViTConfig, *, layout: str = "checkpoint", classifier: bool = False
) -> dict[str, np.ndarray]:
    """Our ViT (or classifier) state dict under Hugging Face's names, in ``layout``; the arrays are the same."""
    pooler = not classifier and "pooler.weight" in state
    mapping = vit_hf_key_map(
        config.n_layers, layout=layout, pooler=pooler, qkv_bias=config.qkv_bias, classifier=classifier
    )
    back = {ours: hf for hf, ours in mapping.items()}
    unknown = sorted(set(state) - set(back))
    if unknown:
        raise KeyError(f"state: keys with no Hugging Face name: {unknown[:8]}")
    return {back[k]: v for k, v in state.items()}


# ---------------------------------------------------------------------------- configs

_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_FROM_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def vit_config_to_hf(config: ViTConfig) -> dict[str, Any]:
    """The keyword arguments of ``transformers.ViTConfig`` for the same model."""
    c = config
    return dict(
        image_size=c.image_size, patch_size=c.patch_size, num_channels=c.num_channels, hidden_size=c.d_model,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, intermediate_size=c.d_ff,
        hidden_act=_TO_HF_ACT[c.activation], hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
        layer_norm_eps=c.layer_norm_eps, qkv_bias=c.qkv_bias, num_labels=c.num_labels,
        initializer_range=c.initializer_range,
    )  # fmt: skip


def _square(hf: Mapping[str, Any], name: str, default: int) -> object:
    """``image_size`` / ``patch_size``: an int, or a pair of equal ints (ours is square)."""
    value = hf.get(name, default)
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise PretrainedLoadError(f"config.json: {name}={value!r} cannot be represented; expected a square size")
        value = value[0]
    return value


def vit_config_from_hf(hf: Mapping[str, Any]) -> ViTConfig:
    """A :class:`ViTConfig` from a Hugging Face ViT ``config.json`` (as a dict); missing fields take HF's defaults.

    Rejects, with :class:`PretrainedLoadError` naming the field, what our model cannot represent:
    another model type, a non-square image or patch, different hidden and attention dropout
    probabilities (ours has one), a pooler other than ``tanh`` of width ``hidden_size``, an unknown
    activation.
    """
    if not isinstance(hf, Mapping):
        raise PretrainedLoadError(f"config.json: expected a JSON object, got {type(hf).__name__}")

    def reject(field: str, expected: str) -> PretrainedLoadError:
        return PretrainedLoadError(f"config.json: {field}={hf[field]!r} cannot be represented; expected {expected}")

    if hf.get("model_type", "vit") != "vit":
        raise reject("model_type", "'vit'")
    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _FROM_HF_ACT:
        raise reject("hidden_act", f"one of {sorted(_FROM_HF_ACT)}")
    hidden_p, attn_p = hf.get("hidden_dropout_prob", 0.0), hf.get("attention_probs_dropout_prob", 0.0)
    if hidden_p != attn_p:
        raise reject("attention_probs_dropout_prob", f"equal to hidden_dropout_prob={hidden_p!r} (one dropout)")
    if hf.get("pooler_act", "tanh") != "tanh":
        raise reject("pooler_act", "'tanh'")
    width = hf.get("hidden_size", 768)
    if hf.get("pooler_output_size") not in (None, width):
        raise reject("pooler_output_size", f"None or hidden_size={width}")
    labels = hf.get("num_labels", len(hf["id2label"]) if isinstance(hf.get("id2label"), Mapping) else 2)
    try:
        return ViTConfig(
            image_size=_square(hf, "image_size", 224),
            patch_size=_square(hf, "patch_size", 16),
            num_channels=hf.get("num_channels", 3),
            d_model=width,
            n_heads=hf.get("num_attention_heads", 12),
            n_layers=hf.get("num_hidden_layers", 12),
            d_ff=hf.get("intermediate_size", 3072),
            dropout=float(hidden_p),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            num_labels=labels,
            qkv_bias=hf.get("qkv_bias", True),
            activation=_FROM_HF_ACT[act],
            initializer_range=float(hf.get("initializer_range", 0.02)),
        )
    except (TypeError, ValueError) as exc:
        raise PretrainedLoadError(f"config.json: {exc}") from exc
