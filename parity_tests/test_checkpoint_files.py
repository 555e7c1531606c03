"""Checkpoint files you need not trust: every kind ``train`` writes loads and decodes, every malformed
file is a ``CheckpointError`` naming the problem (``decode``: exit status 2, never a traceback),
old formats migrate, a hostile archive cannot make the reader allocate more than a genuine one
of the same config, and every file is written atomically without following symlinks.

The memory and disk-full checks run real subprocesses (``-s`` prints the peak memory figures).
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import numpy_transformer as nt
from numpy_transformer.commands import main
from numpy_transformer.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, CNNConfig
from numpy_transformer.models.clip import CLIPModel
from numpy_transformer.models.cnn import ImageCNN
from numpy_transformer.training import atomic, checkpoint
from numpy_transformer.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from numpy_transformer.training.loop import NumpyTrainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# Small enough that writing and decoding take milliseconds.
TINY = TrainConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, n_train=64, n_val=8, batch_size=8, max_len=6)


def _env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "HOME", "VIRTUAL_ENV", "PATH"))}
    return {**keep, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "numpy_transformer", *argv], capture_output=True, text=True, cwd=cwd, env=_env()
    )


def _seq2seq_checkpoint(path: Path, cfg: TrainConfig = TINY, dtype=np.float32) -> Path:
    """What ``train`` writes for a seq2seq task: model, Adam state, ``train_config``, ``steps``."""
    rng = np.random.default_rng(0)
    model = cfg.build_model(np.dtype(dtype), rng)
    trainer = NumpyTrainer(model, cfg, rng)
    return save_checkpoint(path, model, trainer.optimizer, train_config=asdict(cfg), steps=0)


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory) -> Path:
    return _seq2seq_checkpoint(tmp_path_factory.mktemp("seq2seq") / "checkpoint.npz")


@pytest.fixture(scope="module")
def charlm(tmp_path_factory) -> Path:
    """A checkpoint written by the real command, ``train --task charlm`` (one step)."""
    out = tmp_path_factory.mktemp("charlm")
    proc = _cli("train", "--task", "charlm", "--steps", "1", "--samples", "1", "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out / "checkpoint.npz"


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _meta(path: Path) -> dict:
    return json.loads(str(np.load(io.BytesIO(_members(path)["meta.npy"]))[()]))


def _with_meta(src: Path, dst: Path, meta: dict | str) -> Path:
    members = _members(src)
    members["meta.npy"] = _npy(meta if isinstance(meta, str) else json.dumps(meta))
    return _write_zip(dst, members)


def _decode_exit(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``decode`` in this process: its exit status and stderr (an escaping exception fails the test)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- every kind train writes


def test_charlm_checkpoint_written_by_train_loads_and_decode_continues_its_text(charlm, tmp_path, capsys):
    ckpt = read_checkpoint(charlm)
    assert isinstance(ckpt.config, nt.GPTConfig) and ckpt.meta["format_version"] == FORMAT_VERSION
    heatmap = tmp_path / "self_attention.png"
    proc = _cli("decode", str(charlm), "--input", "The ", "--heatmap", str(heatmap))
    assert proc.returncode == 0, proc.stderr
    assert "task:     charlm" in proc.stdout and "output:   'The " in proc.stdout
    assert heatmap.read_bytes()[:4] == b"\x89PNG"
    code, err = _decode_exit(["decode", str(charlm), "--input", "The ", "--beam", "3"], capsys)
    assert code == 2 and "--beam" in err, err
    code, err = _decode_exit(["decode", str(charlm), "--input", "\u00e9t\u00e9"], capsys)
    assert code == 2 and "--input" in err and "unknown" in err, err
    code, err = _decode_exit(["decode", str(charlm), "--input", "e" * ckpt.config.max_len], capsys)
    assert code == 2 and "--input" in err, err


@pytest.mark.parametrize(
    "model", ["transformer", "rnn-bahdanau", "rnn-luong-dot", "rnn-luong-general", "rnn-luong-concat"]
)
def test_every_seq2seq_checkpoint_kind_loads_and_decodes(model, tmp_path, capsys):
    cfg = TrainConfig(**{**asdict(TINY), "model": model, "rnn_embed_dim": 6, "rnn_hidden": 8, "betas": (0.9, 0.98)})
    path = _seq2seq_checkpoint(tmp_path / "checkpoint.npz", cfg)
    assert read_checkpoint(path).config == cfg.model_config()
    code, err = _decode_exit(["decode", str(path), "--input", "1 2 3", "--heatmap", str(tmp_path / "h.png")], capsys)
    assert code == 0, err


def test_decode_names_the_command_for_a_checkpoint_that_train_did_not_write(tmp_path, capsys):
    gpt = nt.GPT(nt.GPTConfig(vocab_size=7, max_len=8, d_model=8, n_heads=2, n_layers=1, d_ff=16))
    path = save_checkpoint(tmp_path / "gpt.npz", gpt)
    assert read_checkpoint(path).config == gpt.config
    code, err = _decode_exit(["decode", str(path), "--input", "1 2"], capsys)
    assert code == 2 and "was not written by `train`" in err, err


@pytest.mark.parametrize(
    "config",
    [
        nt.TransformerConfig(src_vocab_size=7, tgt_vocab_size=9, d_model=12, n_heads=3, n_encoder_layers=2,
                             n_decoder_layers=1, d_ff=20, norm_first=True),
        nt.TransformerConfig(src_vocab_size=7, tgt_vocab_size=9, d_model=12, n_heads=2, n_encoder_layers=0,
                             n_decoder_layers=2, d_ff=20, tie_embeddings=True),
        *(nt.RNNSeq2SeqConfig(src_vocab_size=7, tgt_vocab_size=9, embed_dim=5, hidden_size=10, attention=a, attn_dim=3)
          for a in ("bahdanau", "luong-dot", "luong-general", "luong-concat")),
        nt.GPTConfig(vocab_size=9, max_len=11, d_model=12, n_heads=3, n_layers=2, d_ff=20),
        nt.LlamaConfig(vocab_size=9, max_len=11, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=20),
        nt.LlamaConfig(vocab_size=9, d_model=12, n_heads=3, n_kv_heads=1, n_layers=1, d_ff=7, tie_embeddings=True),
        nt.ViTConfig(image_size=8, patch_size=4, num_channels=1, d_model=12, n_heads=3, n_layers=2, d_ff=20,
                     num_labels=10),
        nt.ViTConfig(image_size=6, patch_size=2, num_channels=3, d_model=8, n_heads=2, n_layers=1, d_ff=16,
                     qkv_bias=False),
        CNNConfig(),
        CNNConfig(image_size=4, num_channels=3, channels=(5,), kernel_size=1, num_labels=3),
        CLIPConfig(text=CLIPTextConfig(vocab_size=9, max_len=5, d_model=8, n_heads=2, n_layers=2, d_ff=12),
                   vision=CLIPVisionConfig(image_size=4, patch_size=2, num_channels=3, d_model=6, n_heads=2,
                                           n_layers=1, d_ff=10), projection_dim=7),
    ],
    ids=lambda c: type(c).__name__ + "-" + getattr(c, "attention", ""),
)  # fmt: skip
def test_the_shapes_a_config_implies_are_the_models_own(config):
    """The reader checks the archive against ``expected_shapes(config)`` before reading data: it must be exact."""
    model = {
        nt.TransformerConfig: nt.Transformer,
        nt.RNNSeq2SeqConfig: nt.RNNSeq2Seq,
        nt.GPTConfig: nt.GPT,
        nt.LlamaConfig: nt.Llama,
        nt.ViTConfig: nt.ViTForImageClassification,  # a ViTConfig checkpoint holds the classifier
        CNNConfig: ImageCNN,
        CLIPConfig: CLIPModel,
    }[type(config)](config, rng=np.random.default_rng(0))
    assert checkpoint.expected_shapes(config) == {k: v.shape for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- malformed metadata

DELETE = object()


def _set(meta: dict, where: str, value) -> dict:
    meta = json.loads(json.dumps(meta))
    *parents, last = where.split(".")
    node = meta
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return meta


# (id, field to change, new value, a word the message must contain)
SEQ2SEQ_VARIANTS = [
    ("no-format-version", "format_version", DELETE, "format_version"),
    ("format-version-str", "format_version", "2", "format_version"),
    ("format-version-float", "format_version", 2.5, "format_version"),
    ("format-version-bool", "format_version", True, "format_version"),
    ("format-version-0", "format_version", 0, "format_version"),
    ("format-version-negative", "format_version", -1, "format_version"),
    ("format-version-newer", "format_version", 99, "newer"),
    ("format-version-null", "format_version", None, "format_version"),
    ("format-version-list", "format_version", [2], "format_version"),
    ("no-dtype", "dtype", DELETE, "dtype"),
    ("dtype-float16", "dtype", "float16", "dtype"),
    ("dtype-int64", "dtype", "int64", "dtype"),
    ("dtype-number", "dtype", 3, "dtype"),
    ("dtype-null", "dtype", None, "dtype"),
    ("dtype-object", "dtype", "object", "dtype"),
    ("dtype-not-the-arrays", "dtype", "float64", "dtype"),
    ("config-type-other-model", "config_type", "GPTConfig", "config"),
    ("config-type-unknown", "config_type", "NopeConfig", "config_type"),
    ("config-type-number", "config_type", 5, "config_type"),
    ("config-type-null", "config_type", None, "config_type"),
    ("config-type-list", "config_type", ["TransformerConfig"], "config_type"),
    ("no-config-type", "config_type", DELETE, "config_type"),
    ("config-list", "config", [1, 2], "config"),
    ("config-str", "config", "x", "config"),
    ("config-null", "config", None, "config"),
    ("config-number", "config", 5, "config"),
    ("config-empty", "config", {}, "src_vocab_size"),
    ("no-config", "config", DELETE, "config"),
    ("config-unknown-key", "config.rope", True, "rope"),
    ("config-missing-required", "config.src_vocab_size", DELETE, "src_vocab_size"),
    ("d-model-str", "config.d_model", "16", "d_model"),
    ("d-model-float", "config.d_model", 16.5, "d_model"),
    ("d-model-bool", "config.d_model", True, "d_model"),
    ("d-model-null", "config.d_model", None, "d_model"),
    ("d-model-list", "config.d_model", [16], "d_model"),
    ("d-model-dict", "config.d_model", {"a": 1}, "d_model"),
    ("d-model-0", "config.d_model", 0, "d_model"),
    ("d-model-negative", "config.d_model", -1, "d_model"),
    ("d-model-huge", "config.d_model", 10**9, "d_model"),
    ("d-model-not-divisible", "config.d_model", 15, "n_heads"),
    ("d-model-other-size", "config.d_model", 32, "shape"),
    ("n-heads-0", "config.n_heads", 0, "n_heads"),
    ("n-heads-huge", "config.n_heads", 10**6, "n_heads"),
    ("max-len-1e9", "config.max_len", 10**9, "max_len"),
    ("max-len-0", "config.max_len", 0, "max_len"),
    ("max-len-negative", "config.max_len", -5, "max_len"),
    ("max-len-float", "config.max_len", 1e300, "max_len"),
    ("max-len-str", "config.max_len", "inf", "max_len"),
    ("max-len-2-63", "config.max_len", 2**63, "max_len"),
    ("dropout-str", "config.dropout", "0.1", "dropout"),
    ("dropout-2", "config.dropout", 2.0, "dropout"),
    ("dropout-negative", "config.dropout", -0.1, "dropout"),
    ("dropout-nan", "config.dropout", float("nan"), "dropout"),
    ("activation-number", "config.activation", 5, "activation"),
    ("activation-unknown", "config.activation", "tanh", "activation"),
    ("norm-first-str", "config.norm_first", "yes", "norm_first"),
    ("norm-first-int", "config.norm_first", 1, "norm_first"),
    ("norm-first-flipped", "config.norm_first", False, "norm"),
    ("pad-id-outside", "config.pad_id", 99, "pad_id"),
    ("pad-id-float", "config.pad_id", 1.5, "pad_id"),
    ("tie-embeddings-flipped", "config.tie_embeddings", True, "out_proj"),
    ("eps-0", "config.layer_norm_eps", 0, "layer_norm_eps"),
    ("eps-str", "config.layer_norm_eps", "x", "layer_norm_eps"),
    ("eps-inf", "config.layer_norm_eps", float("inf"), "layer_norm_eps"),
    ("vocab-huge", "config.src_vocab_size", 10**12, "src_vocab_size"),
    ("vocab-0", "config.src_vocab_size", 0, "src_vocab_size"),
    ("vocab-other-size", "config.src_vocab_size", 2**20, "shape"),
    ("layers-huge", "config.n_encoder_layers", 10**6, "n_encoder_layers"),
    ("layers-negative", "config.n_encoder_layers", -1, "n_encoder_layers"),
    ("layers-more", "config.n_encoder_layers", 3, "missing"),
    ("d-ff-huge", "config.d_ff", 10**9, "d_ff"),
    ("no-train-config", "train_config", DELETE, "train"),
    ("train-config-list", "train_config", [1], "train_config"),
    ("train-config-str", "train_config", "x", "train_config"),
    ("train-config-null", "train_config", None, "train_config"),
    ("train-config-unknown-key", "train_config.foo", 1, "foo"),
    ("task-unknown", "train_config.task", "rotate", "task"),
    ("task-number", "train_config.task", 5, "task"),
    ("betas-short", "train_config.betas", [0.9], "betas"),
    ("betas-str", "train_config.betas", "x", "betas"),
    ("betas-bad-item", "train_config.betas", [0.9, "a"], "betas"),
    ("betas-long", "train_config.betas", [0.9, 0.98, 0.1], "betas"),
    ("n-symbols-str", "train_config.n_symbols", "10", "n_symbols"),
    ("n-symbols-huge", "train_config.n_symbols", 10**9, "n_symbols"),
    ("n-symbols-1", "train_config.n_symbols", 1, "n_symbols"),
    ("n-symbols-other", "train_config.n_symbols", 20, "config"),
    ("task-max-len-huge", "train_config.max_len", 10**9, "max_len"),
    ("task-max-len-0", "train_config.max_len", 0, "max_len"),
    ("task-min-len-above-max", "train_config.min_len", 50, "min_len"),
    ("model-unknown", "train_config.model", "rnn-x", "model"),
    ("model-other", "train_config.model", "rnn-bahdanau", "config"),
    ("train-d-model-other", "train_config.d_model", 32, "config"),
    ("schedule-unknown", "train_config.schedule", "x", "schedule"),
    ("batch-size-negative", "train_config.batch_size", -1, "batch_size"),
    ("seed-str", "train_config.seed", "x", "seed"),
    ("peak-lr-nan", "train_config.peak_lr", float("nan"), "peak_lr"),
]

RAW_META = [
    ("meta-not-json", "{not json", "meta"),
    ("meta-list", "[1, 2]", "meta"),
    ("meta-string", '"x"', "meta"),
    ("meta-null", "null", "meta"),
    ("meta-deeply-nested", "[" * 100_000 + "]" * 100_000, "meta"),
    ("meta-huge-int", '{"format_version": 1' + "0" * 5000 + "}", "meta"),
]


@pytest.mark.parametrize(
    ("where", "value", "word"), [v[1:] for v in SEQ2SEQ_VARIANTS], ids=[v[0] for v in SEQ2SEQ_VARIANTS]
)
def test_decode_rejects_every_corrupted_metadata_variant_with_exit_2(seq2seq, tmp_path, capsys, where, value, word):
    bad = _with_meta(seq2seq, tmp_path / "bad.npz", _set(_meta(seq2seq), where, value))
    code, err = _decode_exit(["decode", str(bad), "--input", "1 2 3", "--heatmap", str(tmp_path / "h.png")], capsys)
    assert code == 2, err
    assert str(bad) in err and word in err.replace(str(bad), ""), err
    if not where.startswith("train_config"):
        with pytest.raises(CheckpointError, match=str(bad)):
            read_checkpoint(bad)


@pytest.mark.parametrize(("text", "word"), [v[1:] for v in RAW_META], ids=[v[0] for v in RAW_META])
def test_unreadable_metadata_is_a_checkpoint_error(seq2seq, tmp_path, capsys, text, word):
    bad = _with_meta(seq2seq, tmp_path / "bad.npz", text)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(bad)
    assert word in str(info.value).replace(str(bad), ""), str(info.value)
    code, err = _decode_exit(["decode", str(bad), "--input", "1 2 3"], capsys)
    assert code == 2 and str(bad) in err, err


CHARLM_VARIANTS = [
    ("no-vocab", "vocab", DELETE, "vocab"),
    ("vocab-number", "vocab", 5, "vocab"),
    ("vocab-empty", "vocab", "", "vocab"),
    ("vocab-short", "vocab", "abc", "vocab"),
    ("vocab-duplicates", "vocab", None, "vocab"),  # filled in below: the right length, one character twice
    ("train-config-unknown-key", "train_config.foo", 1, "foo"),
    ("block-size-other", "train_config.block_size", 32, "config"),
    ("block-size-str", "train_config.block_size", "64", "block_size"),
    ("corpus-huge", "train_config.corpus_chars", 10**12, "corpus_chars"),
    ("config-type-seq2seq", "config_type", "TransformerConfig", "config"),
    ("config-vocab-other", "config.vocab_size", 999, "shape"),
    ("config-max-len-1e9", "config.max_len", 10**9, "max_len"),
    ("config-pad-id-str", "config.pad_id", "0", "pad_id"),
]


@pytest.mark.parametrize(
    ("where", "value", "word"), [v[1:] for v in CHARLM_VARIANTS], ids=[v[0] for v in CHARLM_VARIANTS]
)
def test_decode_rejects_corrupted_charlm_metadata_with_exit_2(charlm, tmp_path, capsys, where, value, word):
    meta = _meta(charlm)
    if where == "vocab" and value is None:
        value = meta["vocab"][:-1] + meta["vocab"][0]
    bad = _with_meta(charlm, tmp_path / "bad.npz", _set(meta, where, value))
    code, err = _decode_exit(["decode", str(bad), "--input", "The "], capsys)
    assert code == 2, err
    assert str(bad) in err and word in err.replace(str(bad), ""), err


# --------------------------------------------------------------------------- format versions


def test_a_version_1_checkpoint_loads_through_the_migration(seq2seq, tmp_path, capsys):
    """What version 1 wrote: no ``config_type`` (it meant the Transformer), and a config from before a field existed."""
    meta = _meta(seq2seq)
    meta["format_version"] = 1
    del meta["config_type"]
    del meta["config"]["layer_norm_eps"]  # as if the field had been added after the file was written
    old = _with_meta(seq2seq, tmp_path / "v1.npz", meta)
    ckpt = read_checkpoint(old)
    assert ckpt.config == TINY.model_config()
    assert ckpt.meta["format_version"] == FORMAT_VERSION == 2 and ckpt.meta["config_type"] == "TransformerConfig"
    assert checkpoint.MIGRATIONS[1](meta)["format_version"] == 2
    code, err = _decode_exit(["decode", str(old), "--input", "1 2 3", "--heatmap", str(tmp_path / "h.png")], capsys)
    assert code == 0, err


def test_a_checkpoint_from_a_newer_version_names_the_version(seq2seq, tmp_path):
    newer = _with_meta(seq2seq, tmp_path / "v3.npz", {**_meta(seq2seq), "format_version": FORMAT_VERSION + 1})
    with pytest.raises(CheckpointError, match="written by a newer numpy-transformer"):
        read_checkpoint(newer)


# --------------------------------------------------------------------------- hostile archives


def _replace_member(src: Path, dst: Path, name: str, data: bytes | None) -> Path:
    members = _members(src)
    if data is None:
        del members[name]
    else:
        members[name] = data
    return _write_zip(dst, members)


def _header_only(shape, dtype="<f4") -> bytes:
    """A .npy header declaring ``shape``, with no data behind it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def test_hostile_archive_entries_are_rejected_from_their_headers(seq2seq, tmp_path):
    members = _members(seq2seq)
    weight = np.load(io.BytesIO(members["model/src_embed.weight.npy"]))
    cases = {
        "unexpected": ("model/evil.npy", _npy(np.zeros(3, np.float32))),
        "wrong shape": ("model/src_embed.weight.npy", _npy(np.zeros((3, 3), np.float32))),
        "declares": ("model/src_embed.weight.npy", _header_only((10**9,))),
        "truncated": ("model/src_embed.weight.npy", _npy(weight)[:-8]),
        "dtype": ("model/src_embed.weight.npy", _npy(weight.astype(np.float64))),
        "object": ("model/src_embed.weight.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, "
                   b"'shape': (13, 16), }" + b" " * 58 + b"\n"),
        "optim": ("optim/exp_avg.big.npy", _npy(np.zeros(2**19))),
        "name": ("model/../../etc.npy", _npy(weight)),
        "not a .npy": ("model/readme.txt", b"hello"),
        "meta": ("meta.npy", _npy("x" * (checkpoint.MAX_META_CHARS + 1))),
    }  # fmt: skip
    for word, (name, data) in cases.items():
        bad = _replace_member(seq2seq, tmp_path / f"{word.replace(' ', '_')}.npz", name, data)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(bad)
        assert str(bad) in str(info.value) and word in str(info.value).replace(str(bad), ""), str(info.value)
    twice = tmp_path / "twice.npz"
    with zipfile.ZipFile(twice, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate"):
            z.writestr("model/src_embed.weight.npy", members["model/src_embed.weight.npy"])
    with pytest.raises(CheckpointError, match="twice"):
        read_checkpoint(twice)
    # Without a config there is no shape to compare with: a member must not expand far beyond its bytes.
    meta = {k: v for k, v in _meta(seq2seq).items() if k not in ("config", "config_type")}
    bare = _with_meta(seq2seq, tmp_path / "bare.npz", meta)
    assert read_checkpoint(bare).config is None
    with pytest.raises(CheckpointError, match="expands"):
        read_checkpoint(_zip_bomb(bare, tmp_path / "bare_bomb.npz", size=64 * 2**20))


BOMB_BYTES = 256 * 2**20  # uncompressed; about 256 kB on disk


def _zip_bomb(src: Path, dst: Path, name: str = "model/src_embed.weight.npy", size: int = BOMB_BYTES) -> Path:
    """``src`` with one member replaced by a deflated ``size``-byte array of zeros, streamed (never in memory)."""
    members = _members(src)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            if member != name:
                z.writestr(member, data)
        with z.open(name, "w", force_zip64=True) as f:
            f.write(_header_only((size // 4,)))
            chunk = bytes(2**20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return dst


_PEAK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # a bug fails fast instead of swapping
from numpy_transformer.commands import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
# VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited across exec).
with open("/proc/self/status") as f:
    print("peak_rss_kib", next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")), file=sys.stderr)
sys.exit(code)
"""


def _peak_rss(*argv: str) -> tuple[int, int, str]:
    """(exit status, peak resident set in bytes, stderr) of ``decode ARGV`` in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, *argv], capture_output=True, text=True, env=_env())
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("peak_rss_kib")]
    assert lines, proc.stderr
    return proc.returncode, int(lines[-1].split()[1]) * 1024, proc.stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_a_zip_bomb_or_a_crafted_max_len_stays_within_the_memory_of_a_genuine_load(seq2seq, tmp_path):
    """Real subprocesses: peak RSS of ``decode`` on a genuine checkpoint vs on hostile ones of the same config."""
    bombs = {
        "bomb in a parameter": _zip_bomb(seq2seq, tmp_path / "bomb.npz"),
        "bomb in the optimizer": _zip_bomb(seq2seq, tmp_path / "optim.npz", "optim/exp_avg.src_embed.weight.npy"),
        "max_len 10**9": _with_meta(seq2seq, tmp_path / "max_len.npz", _set(_meta(seq2seq), "config.max_len", 10**9)),
    }
    assert all(p.stat().st_size < 2**20 for p in bombs.values())
    # The genuine load stops where the hostile ones do (bad --input after the checkpoint is read).
    code, genuine, err = _peak_rss("decode", str(seq2seq), "--input", "1 99")
    assert code == 2 and "--input" in err, err
    print(f"\n  peak RSS, genuine checkpoint: {genuine / 2**20:.1f} MiB")
    for what, path in bombs.items():
        code, peak, err = _peak_rss("decode", str(path), "--input", "1 99")
        print(f"  peak RSS, {what} ({path.stat().st_size / 1024:.0f} kB file): {peak / 2**20:.1f} MiB")
        assert code == 2 and "Traceback" not in err and str(path) in err, err
        assert peak <= genuine + 32 * 2**20, f"{what}: {peak / 2**20:.0f} MiB vs {genuine / 2**20:.0f} MiB genuine"


# --------------------------------------------------------------------------- atomic writes


def _plant(folder: Path, name: str, victim: Path) -> None:
    (folder / name).symlink_to(victim)


def test_save_does_not_follow_a_symlink_at_the_old_temporary_name_or_at_the_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    _plant(run, "checkpoint.npz.tmp", victim)
    _seq2seq_checkpoint(run / "checkpoint.npz")
    assert victim.read_text() == "precious"
    assert (run / "checkpoint.npz").is_file() and not (run / "checkpoint.npz").is_symlink()
    (run / "checkpoint.npz").unlink()
    _plant(run, "checkpoint.npz", victim)
    _seq2seq_checkpoint(run / "checkpoint.npz")
    assert victim.read_text() == "precious" and not (run / "checkpoint.npz").is_symlink()
    assert read_checkpoint(run / "checkpoint.npz").config == TINY.model_config()


def test_a_symlink_at_the_temporary_name_the_writer_draws_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "history.json"
    planted = target.with_name(".history.json.planted.tmp")
    planted.symlink_to(victim)
    names = iter([planted, planted, target.with_name(".history.json.fresh.tmp")])
    monkeypatch.setattr(atomic, "temporary_name", lambda path: next(names))
    atomic.atomic_write_text(target, "{}")
    assert victim.read_text() == "precious" and target.read_text() == "{}"
    assert planted.is_symlink()  # left alone: not ours
    assert sorted(p.name for p in tmp_path.iterdir()) == [".history.json.planted.tmp", "history.json", "victim.txt"]


def test_a_failing_save_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = _seq2seq_checkpoint(tmp_path / "checkpoint.npz")
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        _seq2seq_checkpoint(path)
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("the writer failed half way")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(RuntimeError, match="half way"):
        _seq2seq_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


_FULL_DISK = """
import os, sys
from numpy_transformer.training import atomic
real_open = os.open

def open_on_a_full_disk(path, flags, mode=0o777, **kwargs):
    fd = real_open(path, flags, mode, **kwargs)
    if str(path).endswith(".tmp"):  # the temporary: every byte written to it goes to /dev/full
        full = real_open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
    return fd

os.open = open_on_a_full_disk
import numpy as np
from numpy_transformer.training.checkpoint import save_checkpoint
from numpy_transformer.training.loop import TrainConfig
cfg = TrainConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32)
try:
    save_checkpoint(sys.argv[1], cfg.build_model(np.float32, np.random.default_rng(1)))
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_save_onto_a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path):
    """A real subprocess whose temporary is /dev/full: the kernel answers ENOSPC."""
    path = _seq2seq_checkpoint(tmp_path / "checkpoint.npz")
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True, env=_env())
    assert proc.returncode == 1, proc.stderr
    assert "No space left on device" in proc.stderr and str(path) in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]
    assert read_checkpoint(path).config == TINY.model_config()


def test_train_and_decode_never_write_through_symlinks(tmp_path):
    """``train`` (checkpoint, history.json, loss_curves.png) and ``decode`` (the heatmap) with links planted."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    names = ("checkpoint.npz", "checkpoint.npz.tmp", "history.json", "loss_curves.png", "cross_attention.png")
    for name in names:
        _plant(run, name, victim)
    proc = _cli("train", "--steps", "2", "--no-progress", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    proc = _cli("decode", str(run / "checkpoint.npz"), "--input", "1 2 3")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious"
    for name in ("checkpoint.npz", "history.json", "loss_curves.png", "cross_attention.png"):
        assert (run / name).is_file() and not (run / name).is_symlink(), name
    assert not any(p.name.endswith(".tmp") and not p.is_symlink() for p in run.iterdir())


def test_the_picture_and_report_writers_never_write_through_symlinks(tmp_path):
    from numpy_transformer.applications.attention_cost import CostRow, write_report
    from numpy_transformer.applications.inspect_attention import (
        AttentionMaps,
        plot_attention_focus,
        plot_attention_grid,
    )
    from numpy_transformer.applications.plots import plot_attention

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    names = ("grid.png", "focus.png", "heat.png", "attention_cost.png", "attention_cost.md")
    for name in names:
        _plant(tmp_path, name, victim)
    weights = np.random.default_rng(0).dirichlet(np.ones(4), size=(2, 2, 4))  # (L, H, S, S)
    maps = AttentionMaps("a b", ["[CLS]", "a", "b", "[SEP]"], weights)
    plot_attention_grid(maps, 1, tmp_path / "grid.png")
    plot_attention_focus(maps, 1, 0, 1, tmp_path / "focus.png")
    plot_attention(weights[0], ["x"] * 4, ["y"] * 4, tmp_path / "heat.png")
    rows = [CostRow("dot", 2, S, 8, 1, 1, 1, 0.1, 0.2) for S in (4, 8)]
    write_report(rows, tmp_path)
    assert victim.read_text() == "precious"
    for name in names:
        assert (tmp_path / name).is_file() and not (tmp_path / name).is_symlink(), name
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"


def test_load_checkpoint_still_checks_the_model_before_reading(seq2seq):
    """A file of another config never reaches the model (the existing contract, through the new reader)."""
    other = TrainConfig(**{**asdict(TINY), "d_model": 32, "betas": (0.9, 0.98)})
    model = other.build_model(np.float32, np.random.default_rng(0))
    before = model.state_dict()
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(seq2seq, model)
    assert all(np.array_equal(p, before[n]) for n, p in model.named_parameters())


def test_the_atomic_writer_is_the_only_writer():
    """No module writes a result file by hand (``write_text``, ``write_bytes``, ``savefig``) around the helper."""
    offenders = []
    for path in sorted((ROOT / "numpy_transformer").rglob("*.py")):
        if path.name in ("atomic.py", "plots.py"):  # the helper, and save_figure, which uses it
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if any(call in code for call in (".write_text(", ".write_bytes(", ".savefig(")):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "write these through numpy_transformer.training.atomic:\n" + "\n".join(offenders)
