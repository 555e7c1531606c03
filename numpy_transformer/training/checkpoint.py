"""Save and load a model (and optionally its optimizer) as one ``.npz`` file, and read files you need not trust.

Layout of the archive (plain NumPy, readable with ``np.load``):

* ``model/<parameter name>``: every parameter, exactly as in ``model.state_dict()``;
* ``optim/<key>``: the optimizer's ``state_dict()`` (step count, hyper-parameters, buffers);
* ``state/<key>``: arrays of a run in progress that ``train --resume`` needs (each step's loss, the
  torch generator's state); its JSON part is ``meta["train_state"]`` (``training/resume.py``);
* ``meta``: a JSON string: ``format_version``, ``dtype``, the model's ``config`` and its
  ``config_type`` (the dataclass's name), and anything extra (``train`` adds ``train_config``,
  ``steps``, the charlm ``vocab``).

The round trip is bit-exact. A NumPy checkpoint loads into the PyTorch twin through
``torch_transformer.bridge.state_dict_to_torch(read_checkpoint(path).model_state)``.

**Reading checks everything before it allocates anything.** :func:`read_checkpoint`

1. reads the zip directory and, from each member, only the ``.npy`` header
   (``numpy.lib.format.read_magic`` / ``read_array_header_*``): names (``meta``,
   ``model/<name>``, ``optim/<key>``, each once), dtypes (no objects, no pickles) and shapes,
   and that each member holds exactly as many bytes as its header declares;
2. reads ``meta`` (at most :data:`MAX_META_CHARS` characters), migrates an older
   ``format_version`` (:data:`MIGRATIONS`), and rebuilds the config field by field: an unknown
   field, a wrong type, a value outside :data:`LIMITS` or rejected by the config's own checks is
   an error naming the field; a field the file predates takes its default;
3. compares every ``model/`` header with the shapes the config implies (:func:`expected_shapes`)
   and the dtype with ``meta["dtype"]``, and bounds the optimizer's entries by the model's size;
4. only then reads the arrays, each exactly the size its (checked) header declares.

So a hostile file costs at most what a genuine file of the same config costs. Every failure is a
:class:`CheckpointError` (a ``ValueError``) that names the file and the problem; :func:`load_checkpoint`
also checks the archive against the model (and the optimizer's own checks) before it writes
anything, and leaves both unchanged on error.

**Format versions.** :data:`FORMAT_VERSION` is 2. Version 1 wrote no ``config_type`` when the
config was a ``TransformerConfig`` (then the only model); its migration adds it. A config field
added later must default to the old behaviour, so files written before it load unchanged (a test
checks this); when a new field's default cannot mean the old behaviour, the change bumps
:data:`FORMAT_VERSION` and its migration writes the old value into older files.

Every file is written by :func:`~numpy_transformer.training.atomic.atomic_write`: a fresh
temporary (no symlink followed), ``fsync``, an atomic rename; on error the previous file stays.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import types
import typing
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import (
    BertConfig,
    CLIPConfig,
    CNNConfig,
    DetrConfig,
    GPTConfig,
    LlamaConfig,
    RNNSeq2SeqConfig,
    TransformerConfig,
    ViTConfig,
)
from .atomic import atomic_write

FORMAT_VERSION = 2

# The model configs a checkpoint may hold, by the name ``meta["config_type"]`` gives.
CONFIG_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (TransformerConfig, RNNSeq2SeqConfig, GPTConfig, BertConfig, ViTConfig, LlamaConfig, CNNConfig)
    + (CLIPConfig, DetrConfig)
}

# Upper bounds (inclusive) of integer config fields, by field name, in any config dataclass read
# from a file: far above anything this package trains, far below what would exhaust memory.
_VOCAB, _WIDTH, _LENGTH, _DEPTH = 2**20, 2**16, 2**16, 1024
LIMITS: dict[str, int] = {
    **dict.fromkeys(("src_vocab_size", "tgt_vocab_size", "vocab_size", "n_symbols"), _VOCAB),
    **dict.fromkeys(("d_model", "d_ff", "hidden_size", "intermediate_size", "embed_dim", "attn_dim"), _WIDTH),
    **dict.fromkeys(("rnn_embed_dim", "rnn_hidden", "n_heads"), _WIDTH),
    **dict.fromkeys(("n_kv_heads",), _WIDTH),  # LlamaConfig
    **dict.fromkeys(("max_len", "min_len", "max_position_embeddings", "block_size"), _LENGTH),
    **dict.fromkeys(("n_layers", "n_encoder_layers", "n_decoder_layers", "type_vocab_size"), _DEPTH),
    **dict.fromkeys(("image_size", "patch_size", "num_channels", "num_labels"), _WIDTH),  # ViTConfig
    **dict.fromkeys(("channels", "cnn_channels", "kernel_size"), _WIDTH),  # CNNConfig, DigitsConfig
    # CLIPConfig, CaptionsConfig
    **dict.fromkeys(("projection_dim", "vision_d_model", "vision_d_ff", "vision_heads"), _WIDTH),
    **dict.fromkeys(("text_d_model", "text_d_ff", "text_heads"), _WIDTH),
    **dict.fromkeys(("vision_layers", "text_layers"), _DEPTH),
    **dict.fromkeys(("tokenizer_vocab",), _VOCAB),
    **dict.fromkeys(("n_train", "n_val", "corpus_chars", "eval_windows"), 10**8),
    **dict.fromkeys(("batch_size",), 2**20),
    **dict.fromkeys(("steps", "warmup_steps", "eval_every"), 10**12),
    "seed": 2**63 - 1,
}
# Lower bounds of fields that the configs themselves do not check (the model configs check theirs).
MINIMA: dict[str, int | float] = {
    **dict.fromkeys(("n_train", "n_val", "batch_size", "steps", "rnn_embed_dim", "rnn_hidden"), 1),
    **dict.fromkeys(("d_model", "n_heads", "d_ff", "n_symbols", "min_len", "max_len"), 1),
    **dict.fromkeys(("n_layers", "warmup_steps", "seed"), 0),
    **dict.fromkeys(("peak_lr", "lr_factor", "eps", "clip_norm"), 0.0),
    **dict.fromkeys(("label_smoothing", "dropout", "weight_decay"), 0.0),
}
MAX_TUPLE = 64  # entries of a variable-length tuple field (a CNN's channels per stage)
MAX_ELEMENTS = 2**31  # parameters (and built tables) a config may imply: 8 GiB in float32
MAX_META_CHARS = 2**18  # the JSON metadata: a few kB in practice
MAX_ENTRIES = 100_000
MAX_EXPANSION = 16  # a member's data over its compressed size, when no config bounds it (np.savez stores: 1)
OPTIM_BUDGET = 4  # optimizer entries may hold at most this many times the model's bytes (Adam: 2, AMSGrad: 3) ...
OPTIM_SLACK = 2**20  # ... plus this much for the scalars and names
ARRAY_SECTIONS = ("model", "optim", "state")
STATE_BYTES = 2**28  # the state entries together: 8 bytes of loss per step and backend, a few kB of generator
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MODEL_DTYPES = ("float32", "float64")
_OPTIM_KINDS = "biufU"  # bool, ints, floats and unicode strings (the optimizer's type and group names)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint: its arrays, its (migrated) metadata and its config, rebuilt and validated."""

    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, Any] | None
    meta: dict[str, Any]
    config: (
        TransformerConfig | RNNSeq2SeqConfig | GPTConfig | BertConfig | ViTConfig | LlamaConfig | CNNConfig | None
    ) = None
    state_arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # the ``state/`` section


# ---------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str | os.PathLike, model, optimizer=None, state_arrays: Mapping[str, np.ndarray] | None = None, **extra: Any
) -> Path:
    """Write ``model`` (and ``optimizer``) to ``path`` (``.npz`` appended if missing); return the path.

    ``extra`` must be JSON-serialisable (e.g. ``step=1000, task="reverse"``); ``state_arrays`` go to
    the ``state/`` section (numbers only). The file is written
    atomically (:func:`~numpy_transformer.training.atomic.atomic_write`): a crash, a full disk or
    an error leaves the previous checkpoint as it was and no temporary behind; a symlink is never
    followed. Errors writing are an ``OSError`` naming ``path``.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays: dict[str, Any] = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays[f"optim/{k}"] = np.asarray(v)
    for k, v in (state_arrays or {}).items():
        arrays[f"state/{k}"] = np.asarray(v)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "dtype": np.dtype(model.dtype).name, **extra}
    if getattr(model, "config", None) is not None:
        meta["config"] = asdict(model.config)
        meta["config_type"] = type(model.config).__name__
    arrays["meta"] = np.asarray(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------- the config, field by field


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _field_value(hint: Any, value: object, where: str) -> Any:
    """``value`` from JSON as the field type ``hint`` wants it, or a CheckpointError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _field_value(inner, value, where)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length, bounded
        if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_TUPLE:
            raise CheckpointError(f"{where}: expected a list of 1 to {MAX_TUPLE} numbers, got {value!r:.80}")
        return tuple(_field_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise CheckpointError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_field_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if dataclasses.is_dataclass(hint):  # a nested config: CLIPConfig's text and vision towers
        return config_from_json(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise CheckpointError(f"{where}: expected true or false, got {_type_name(value)} {value!r}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckpointError(f"{where}: expected an integer, got {_type_name(value)} {value!r}")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise CheckpointError(f"{where}: expected a finite number, got {_type_name(value)} {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or len(value) > 1000:
            raise CheckpointError(f"{where}: expected a short string, got {_type_name(value)} {str(value)[:40]!r}")
        return value
    raise CheckpointError(f"{where}: a field of type {hint} cannot be read from a checkpoint")  # pragma: no cover


def config_from_json(cls: type, data: object, where: str):
    """Rebuild the frozen config dataclass ``cls`` from the JSON object ``data``, checking every field.

    An unknown field, a missing required one, a value of the wrong type, an integer above
    :data:`LIMITS` or below :data:`MINIMA`, or one that ``cls``'s own checks reject raises
    :class:`CheckpointError` naming ``where.<field>``. A field missing from ``data`` that has a
    default takes it (the file was written before the field existed).
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object with {cls.__name__}'s fields, got {_type_name(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"{where}: unknown field(s) {unknown}; {cls.__name__} has {sorted(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise CheckpointError(f"{where}: missing required field(s) {missing} of {cls.__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, raw in data.items():
        value = _field_value(hints[name], raw, f"{where}.{name}")
        items = value if isinstance(value, tuple) and name in LIMITS else (value,)  # channels=(16, 32): each
        for item in items:
            if isinstance(item, int | float) and not isinstance(item, bool):
                high, low = LIMITS.get(name), MINIMA.get(name)
                if high is not None and item > high:
                    raise CheckpointError(f"{where}.{name}: expected at most {high}, got {item}")
                if low is not None and item < low:
                    raise CheckpointError(f"{where}.{name}: expected at least {low}, got {item}")
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------- the shapes a config implies


def _linear(prefix: str, n_out: int, n_in: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n_out, n_in), **({f"{prefix}.bias": (n_out,)} if bias else {})}


def _norm(prefix: str, C: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (C,), f"{prefix}.bias": (C,)}


def _attention(prefix: str, C: int) -> dict[str, tuple[int, ...]]:
    return {k: v for p in ("q", "k", "v", "out") for k, v in _linear(f"{prefix}.{p}_proj", C, C).items()}


def _layer(prefix: str, C: int, F: int, cross: bool) -> dict[str, tuple[int, ...]]:
    shapes = _attention(f"{prefix}.self_attn", C)
    if cross:
        shapes |= _attention(f"{prefix}.cross_attn", C)
    shapes |= _linear(f"{prefix}.ff.linear1", F, C) | _linear(f"{prefix}.ff.linear2", C, F)
    for i in range(1, 4 if cross else 3):
        shapes |= _norm(f"{prefix}.norm{i}", C)
    return shapes


def _gru(prefix: str, n_in: int, H: int, suffix: str = "") -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight_ih{suffix}": (3 * H, n_in),
        f"{prefix}.weight_hh{suffix}": (3 * H, H),
        f"{prefix}.bias_ih{suffix}": (3 * H,),
        f"{prefix}.bias_hh{suffix}": (3 * H,),
    }


def expected_shapes(config) -> dict[str, tuple[int, ...]] | None:
    """The ``state_dict()`` shapes of the model ``config`` builds (without building it); None if not known.

    Written out from the model files (a test compares it with every model's own state dict).
    """
    c = config
    if isinstance(c, TransformerConfig):
        C, F = c.d_model, c.d_ff
        shapes = {"src_embed.weight": (c.src_vocab_size, C), "tgt_embed.weight": (c.tgt_vocab_size, C)}
        for side, n, cross in (("encoder", c.n_encoder_layers, False), ("decoder", c.n_decoder_layers, True)):
            for i in range(n):
                shapes |= _layer(f"{side}.layers.{i}", C, F, cross)
            if c.norm_first:
                shapes |= _norm(f"{side}.norm", C)
        if not c.tie_embeddings:
            shapes["out_proj.weight"] = (c.tgt_vocab_size, C)
        return shapes
    if isinstance(c, GPTConfig):
        C = c.d_model
        shapes = {"tok_embed.weight": (c.vocab_size, C), "pos_embed.weight": (c.max_len, C)}
        for i in range(c.n_layers):
            shapes |= _layer(f"layers.{i}", C, c.d_ff, cross=False)
        return shapes | _norm("norm", C)
    if isinstance(c, LlamaConfig):  # models/llama.py: no biases, RMSNorm weights only, Hkv key/value heads
        C, F, kv = c.d_model, c.d_ff, c.n_kv_heads * (c.d_model // c.n_heads)
        shapes = {"tok_embed.weight": (c.vocab_size, C)}
        for i in range(c.n_layers):
            a, f = f"layers.{i}.self_attn", f"layers.{i}.ff"
            shapes |= {f"layers.{i}.norm1.weight": (C,), f"layers.{i}.norm2.weight": (C,)}
            shapes |= {f"{a}.q_proj.weight": (C, C), f"{a}.k_proj.weight": (kv, C), f"{a}.v_proj.weight": (kv, C)}
            shapes |= {f"{a}.out_proj.weight": (C, C), f"{f}.gate_proj.weight": (F, C), f"{f}.up_proj.weight": (F, C)}
            shapes[f"{f}.down_proj.weight"] = (C, F)
        shapes["norm.weight"] = (C,)
        return shapes if c.tie_embeddings else shapes | {"lm_head.weight": (c.vocab_size, C)}
    if isinstance(c, RNNSeq2SeqConfig):
        E, H, A, V = c.embed_dim, c.hidden_size, c.attn_dim, c.tgt_vocab_size
        shapes = {"src_embed.weight": (c.src_vocab_size, E)}
        shapes |= _gru("encoder", E, H // 2, "_l0") | _gru("encoder", E, H // 2, "_l0_reverse")
        shapes |= _linear("init_proj", H, H) | {"tgt_embed.weight": (V, E)}
        if c.attention == "bahdanau":
            shapes |= _linear("attention.w_q", A, H, bias=False) | _linear("attention.w_k", A, H, bias=False)
            shapes |= _linear("attention.v_a", 1, A, bias=False) | _gru("decoder", E + H, H)
            return shapes | _linear("out_proj", V, 2 * H)
        shapes |= _gru("decoder", E, H, "_l0")
        if c.attention == "luong-general":
            shapes |= _linear("attention.w", H, H, bias=False)
        elif c.attention == "luong-concat":
            shapes |= _linear("attention.w_c", A, 2 * H, bias=False) | _linear("attention.v_c", 1, A, bias=False)
        return shapes | _linear("combine", H, 2 * H, bias=False) | _linear("out_proj", V, H)
    if isinstance(c, ViTConfig):  # a ViTForImageClassification: what training on images saves
        C, P = c.d_model, c.patch_size
        shapes = {"vit.cls_token": (1, 1, C), "vit.pos_embed": (1, c.num_patches + 1, C)}
        shapes |= {"vit.patch_embed.weight": (C, c.num_channels, P, P), "vit.patch_embed.bias": (C,)}
        for i in range(c.n_layers):
            layer = _layer(f"vit.layers.{i}", C, c.d_ff, cross=False)
            if not c.qkv_bias:  # query, key and value without bias; the output projection keeps its
                qkv_biases = ("q_proj.bias", "k_proj.bias", "v_proj.bias")
                layer = {k: v for k, v in layer.items() if not k.endswith(qkv_biases)}
            shapes |= layer
        return shapes | _norm("vit.norm", C) | _linear("classifier", c.num_labels, C)
    if isinstance(c, CNNConfig):  # models/cnn.py
        widths, k = (c.num_channels, *c.channels), c.kernel_size
        shapes = {}
        for s, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            shapes |= {f"stages.{s}.conv.weight": (c_out, c_in, k, k), f"stages.{s}.conv.bias": (c_out,)}
        return shapes | _linear("head", c.num_labels, c.flat_features)
    if isinstance(c, CLIPConfig):  # models/clip.py
        t, v, E = c.text, c.vision, c.projection_dim
        shapes = {"logit_scale": (), "text_model.tok_embed.weight": (t.vocab_size, t.d_model),
                  "text_model.pos_embed.weight": (t.max_len, t.d_model)}  # fmt: skip
        for i in range(t.n_layers):
            shapes |= _layer(f"text_model.layers.{i}", t.d_model, t.d_ff, cross=False)
        shapes |= _norm("text_model.final_norm", t.d_model)
        P, C = v.patch_size, v.d_model
        shapes |= {"vision_model.class_embedding": (C,), "vision_model.patch_embed.weight": (C, v.num_channels, P, P),
                   "vision_model.pos_embed.weight": (v.num_patches + 1, C)}  # fmt: skip
        shapes |= _norm("vision_model.pre_norm", C)
        for i in range(v.n_layers):
            shapes |= _layer(f"vision_model.layers.{i}", C, v.d_ff, cross=False)
        shapes |= _norm("vision_model.post_norm", C)
        return shapes | _linear("text_projection", E, t.d_model, bias=False) | _linear("visual_projection", E, C, False)
    return None


def _built_elements(config, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Elements the model of ``config`` allocates: its parameters, plus tables it builds (positions)."""
    total = sum(math.prod(s) for s in shapes.values())
    if isinstance(config, TransformerConfig):
        total += config.max_len * config.d_model  # the sinusoidal table, (max_len, C)
    return total


# ---------------------------------------------------------------------------- format versions


def _v1_to_v2(meta: dict[str, Any]) -> dict[str, Any]:
    """Version 1 wrote no ``config_type`` for a ``TransformerConfig`` (then the only model)."""
    meta = dict(meta)
    if "config" in meta and "config_type" not in meta:
        meta["config_type"] = TransformerConfig.__name__
    meta["format_version"] = 2
    return meta


# MIGRATIONS[n] turns version n's metadata into version n + 1's; applied in turn up to FORMAT_VERSION.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def migrate(meta: dict[str, Any], where: str = "meta") -> dict[str, Any]:
    """``meta`` of any supported version as :data:`FORMAT_VERSION`'s."""
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"{where}.format_version: expected an integer from 1 to {FORMAT_VERSION}, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}.format_version: {version} was written by a newer numpy-transformer (this one reads up to "
            f"{FORMAT_VERSION}); upgrade it to read the file"
        )
    while version < FORMAT_VERSION:
        meta = MIGRATIONS[version](meta)
        version = meta["format_version"]
    return meta


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Entry:
    key: str  # the name without ".npy", e.g. "model/src_embed.weight"
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int  # of the data, as the header declares


def _scan(path: Path, archive: zipfile.ZipFile) -> dict[str, _Entry]:
    """Every member's name and ``.npy`` header, checked; no array data is read."""
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise CheckpointError(f"checkpoint: {path} has {len(infos)} entries, more than {MAX_ENTRIES}")
    entries: dict[str, _Entry] = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise CheckpointError(f"checkpoint: {path}: entry {name!r} is not a .npy array")
        key = name[: -len(".npy")]
        section, _, rest = key.partition("/")
        if key != "meta" and (section not in ARRAY_SECTIONS or not _NAME.match(rest)):
            raise CheckpointError(
                f"checkpoint: {path}: entry name {name!r} is not 'meta.npy' or one of "
                f"{[s + '/<name>.npy' for s in ARRAY_SECTIONS]} (<name>: letters, digits, '_', '.', '-')"
            )
        if key in entries:
            raise CheckpointError(f"checkpoint: {path}: entry {name!r} appears twice")
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise CheckpointError(
                    f"checkpoint: {path}: entry {name!r} has .npy format {version}, expected 1.0 or 2.0"
                )
            header_len = f.tell()
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise CheckpointError(
                f"checkpoint: {path}: entry {name!r} has dtype {dtype}; object or structured arrays are not allowed"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header_len + nbytes:
            raise CheckpointError(
                f"checkpoint: {path}: entry {name!r}: its header declares {shape} {dtype} ({nbytes} bytes of data), "
                f"the archive holds {info.file_size - header_len}; the file is truncated or corrupt"
            )
        entries[key] = _Entry(key, info, tuple(shape), dtype, nbytes)
    return entries


def _read_meta(path: Path, archive: zipfile.ZipFile, entry: _Entry | None) -> dict[str, Any]:
    if entry is None:
        raise CheckpointError(f"checkpoint: {path} has no 'meta' entry; not a numpy-transformer checkpoint")
    if entry.shape != () or entry.dtype.kind != "U" or entry.dtype.itemsize // 4 > MAX_META_CHARS:
        raise CheckpointError(
            f"checkpoint: {path}: 'meta' must be a JSON string of at most {MAX_META_CHARS} characters, "
            f"its header declares {entry.shape} {entry.dtype}"
        )
    with archive.open(entry.info) as f:
        text = str(np.lib.format.read_array(f, allow_pickle=False)[()])
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSON errors, integers of thousands of digits, deep nesting
        raise CheckpointError(
            f"checkpoint: {path} has an unreadable 'meta' entry ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint: {path}: 'meta' must be a JSON object, got {_type_name(meta)}")
    return meta


def _check_meta(path: Path, meta: dict[str, Any]):
    """Migrate ``meta`` and rebuild its config; returns (meta, config or None)."""
    where = f"checkpoint: {path}: meta"
    meta = migrate(meta, where)
    dtype = meta.get("dtype")
    if dtype not in _MODEL_DTYPES:
        raise CheckpointError(f"{where}.dtype: expected one of {list(_MODEL_DTYPES)}, got {dtype!r}")
    if "config" not in meta and "config_type" not in meta:
        return meta, None
    config_type = meta.get("config_type")
    if not isinstance(config_type, str) or config_type not in CONFIG_TYPES:
        raise CheckpointError(f"{where}.config_type: expected one of {sorted(CONFIG_TYPES)}, got {config_type!r}")
    if "config" not in meta:
        raise CheckpointError(f"{where}.config: missing (config_type is {config_type!r})")
    return meta, config_from_json(CONFIG_TYPES[config_type], meta["config"], f"{where}.config")


def _check_arrays(path: Path, entries: dict[str, _Entry], meta: dict[str, Any], config, fits=None) -> None:
    """Headers against the config's shapes and the meta's dtype (and against ``fits``, the model's), before any read."""
    model = {k[len("model/") :]: e for k, e in entries.items() if k.startswith("model/")}
    optim = [e for k, e in entries.items() if k.startswith("optim/")]
    if not model:
        raise CheckpointError(f"checkpoint: {path} holds no model parameters")
    dtype = np.dtype(meta["dtype"])
    wrong = [f"{k} is {e.dtype}" for k, e in model.items() if e.dtype != dtype]
    if wrong:
        raise CheckpointError(f"checkpoint: {path}: meta.dtype is {dtype}, but {', '.join(wrong[:4])}")
    expected = expected_shapes(config) if config is not None else None
    if expected is not None:
        elements = _built_elements(config, expected)
        if elements > MAX_ELEMENTS:
            raise CheckpointError(
                f"checkpoint: {path}: meta.config implies {elements} elements, more than {MAX_ELEMENTS}; refused"
            )
        _compare(path, model, expected, "does not fit its own config (meta.config)")
    if fits is not None:
        _compare(path, model, fits, "does not fit the model")
    if expected is None and fits is None:
        # Nothing to compare the shapes with (no known config, no model): the data must at least be in the file.
        for e in model.values():
            if e.info.file_size > max(MAX_EXPANSION * e.info.compress_size, 2**20):
                raise CheckpointError(
                    f"checkpoint: {path}: entry {e.key!r} expands from {e.info.compress_size} to {e.info.file_size} "
                    f"bytes, more than {MAX_EXPANSION}x, and no config says what shape it should have; refused"
                )
    budget = OPTIM_BUDGET * sum(e.nbytes for e in model.values()) + OPTIM_SLACK
    held = sum(e.nbytes for e in optim)
    if held > budget:
        raise CheckpointError(
            f"checkpoint: {path}: the optim entries declare {held} bytes, more than {OPTIM_BUDGET}x the model's "
            f"parameters allow ({budget})"
        )
    odd = [f"{e.key} is {e.dtype}" for e in optim if e.dtype.kind not in _OPTIM_KINDS]
    if odd:
        raise CheckpointError(f"checkpoint: {path}: optim entries must be numbers or names, but {', '.join(odd[:4])}")
    state = [e for k, e in entries.items() if k.startswith("state/")]
    held = sum(e.nbytes for e in state)
    if held > STATE_BYTES:
        raise CheckpointError(f"checkpoint: {path}: the state entries declare {held} bytes, more than {STATE_BYTES}")
    odd = [f"{e.key} is {e.dtype}" for e in state if e.dtype.kind not in "biuf"]
    if odd:
        raise CheckpointError(f"checkpoint: {path}: state entries must be numbers, but {', '.join(odd[:4])}")


def _compare(path: Path, model: dict[str, _Entry], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    missing = sorted(set(expected) - set(model))
    unexpected = sorted(set(model) - set(expected))
    shapes = [
        f"{k}: {model[k].shape}, expected {tuple(s)}"
        for k, s in expected.items()
        if k in model and model[k].shape != tuple(s)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} parameter(s) {missing[:4]}")
    if unexpected:
        problems.append(f"unexpected entries {unexpected[:4]}")
    if shapes:
        problems.append(f"wrong shape: {'; '.join(shapes[:4])}")
    if problems:
        raise CheckpointError(f"checkpoint: {path} {what}: {', '.join(problems)}")


def _read_arrays(path: Path, archive: zipfile.ZipFile, entries: list[_Entry]) -> dict[str, np.ndarray]:
    out = {}
    for e in entries:
        with archive.open(e.info) as f:
            out[e.key] = np.lib.format.read_array(f, allow_pickle=False)
    return out


def _read(path: str | os.PathLike, fits: Mapping[str, tuple[int, ...]] | None = None) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = _scan(path, archive)
            meta, config = _check_meta(path, _read_meta(path, archive, entries.pop("meta", None)))
            _check_arrays(path, entries, meta, config, fits)
            arrays = _read_arrays(path, archive, list(entries.values()))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError, NotImplementedError,
            RuntimeError) as exc:  # fmt: skip
        raise CheckpointError(f"checkpoint: {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    model_state = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
    optim = {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
    state = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
    return Checkpoint(model_state, optim or None, meta, config, state)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint file, without touching any model (see the module docstring for the checks)."""
    return _read(path)


def load_checkpoint(path: str | os.PathLike, model, optimizer=None) -> Checkpoint:
    """Load a checkpoint into ``model`` (and ``optimizer``); both are unchanged if anything does not fit.

    The archive's headers are compared with ``model``'s parameter shapes before any data is read.
    """
    ckpt = _read(path, fits={k: v.shape for k, v in model.state_dict().items()})
    if optimizer is not None and ckpt.optimizer_state is None:
        raise CheckpointError(f"checkpoint: {path} holds no optimizer state")
    # load_state_dict checks every key before writing; if the optimizer's state then
    # fails its own checks, the model is put back as it was.
    before = model.state_dict()
    try:
        model.load_state_dict(ckpt.model_state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {path} does not fit the model: {exc}") from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict(ckpt.optimizer_state)
        except (KeyError, TypeError, ValueError) as exc:
            model.load_state_dict(before)  # leave both unchanged
            raise CheckpointError(f"checkpoint: {path} does not fit the optimizer: {exc}") from None
    return ckpt
