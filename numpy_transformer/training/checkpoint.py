"""Save and load a model (and optionally its optimizer) as one ``.npz`` file.

Layout of the archive (plain NumPy, readable with ``np.load``):

* ``model/<parameter name>``: every parameter, exactly as in ``model.state_dict()``;
* ``optim/<key>``: the optimizer's ``state_dict()`` (step count, hyper-parameters, buffers);
* ``meta``: a JSON string with the format version, the model config and anything extra.

The round trip is bit-exact. A NumPy checkpoint loads into the PyTorch twin through
``torch_transformer.bridge.state_dict_to_torch(read_checkpoint(path).model_state)``.
Loading checks everything before writing anything: a truncated or corrupt file, a
missing or extra key, a wrong shape or dtype raise a ``CheckpointError`` (a
``ValueError``) naming the problem, and leave the model and optimizer unchanged.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RNNSeq2SeqConfig, TransformerConfig

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class Checkpoint:
    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, Any] | None
    meta: dict[str, Any]

    @property
    def config(self) -> TransformerConfig | RNNSeq2SeqConfig | None:
        cfg = self.meta.get("config")
        if cfg is None:
            return None
        kind = {"TransformerConfig": TransformerConfig, "RNNSeq2SeqConfig": RNNSeq2SeqConfig}
        return kind[self.meta.get("config_type", "TransformerConfig")](**cfg)


def save_checkpoint(path: str | os.PathLike, model, optimizer=None, **extra: Any) -> Path:
    """Write ``model`` (and ``optimizer``) to ``path`` (``.npz`` appended if missing); return the path.

    ``extra`` must be JSON-serialisable (e.g. ``step=1000, task="reverse"``).
    The file is written to a temporary name and renamed, so a crash never leaves half a checkpoint.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays: dict[str, Any] = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays[f"optim/{k}"] = np.asarray(v)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "dtype": np.dtype(model.dtype).name, **extra}
    if getattr(model, "config", None) is not None:
        meta["config"] = asdict(model.config)
        meta["config_type"] = type(model.config).__name__
    arrays["meta"] = np.asarray(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check the structure of a checkpoint file, without touching any model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint: {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if "meta" not in contents:
        raise CheckpointError(f"checkpoint: {path} has no 'meta' entry; not a numpy-transformer checkpoint")
    try:
        meta = json.loads(str(contents.pop("meta")[()]))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint: {path} has an unreadable 'meta' entry ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint: {path} has format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    model_state = {k[len("model/") :]: v for k, v in contents.items() if k.startswith("model/")}
    optim = {k[len("optim/") :]: v for k, v in contents.items() if k.startswith("optim/")}
    unknown = sorted(k for k in contents if not k.startswith(("model/", "optim/")))
    if unknown:
        raise CheckpointError(f"checkpoint: {path} has unexpected entries {unknown}")
    if not model_state:
        raise CheckpointError(f"checkpoint: {path} holds no model parameters")
    return Checkpoint(model_state, optim or None, meta)


def load_checkpoint(path: str | os.PathLike, model, optimizer=None) -> Checkpoint:
    """Load a checkpoint into ``model`` (and ``optimizer``); both are unchanged if anything does not fit."""
    ckpt = read_checkpoint(path)
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
