"""What a checkpoint must hold so that ``train --resume`` continues a run bit for bit.

A run is a deterministic function of its configuration and of the state it has reached. That
state is more than the weights:

* the **optimizer**: Adam's two moment buffers and its step count (``optim/`` in the file);
* the **schedule position**: the learning rate of update ``s`` is a function of ``s``, and
  ``s`` is the optimizer's step count, so it comes with the optimizer;
* the **data order**: which batch comes next (:meth:`~numpy_transformer.training.loop.BatchStream.position`
  for the seq2seq tasks, the window generator for the charlm);
* **every random generator**: the NumPy generator that draws the dropout masks and, for the
  torch backend, torch's generator(s) (``torch.get_rng_state()``);
* the **history** so far (each step's loss, the evaluations, the seconds spent), so that the
  resumed run prints and saves what the uninterrupted one would.

The JSON part goes to ``meta["train_state"]``, the arrays (losses, torch generator bytes) to the
checkpoint's ``state/`` section. :func:`check_train_state` checks a file's ``train_state`` field
by field before anything uses it, like the rest of a checkpoint (a file need not be trusted).

A NumPy generator's state is ``rng.bit_generator.state``: for PCG64 a dict holding two 128-bit
integers, which JSON keeps exactly (Python's ``json`` writes integers of any size).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .checkpoint import CheckpointError

TRAIN_STATE_VERSION = 1
_PCG64_KEYS = {"bit_generator", "state", "has_uint32", "uinteger"}


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """``rng``'s full state as JSON-ready values (PCG64, the generator ``default_rng`` makes)."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise TypeError(f"rng: only PCG64 generators (np.random.default_rng) are saved, got {state['bit_generator']}")
    return state


def _int(value: object, where: str, low: int = 0, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"from {low}" + ("" if high is None else f" to {high}")
        raise CheckpointError(f"{where}: expected an integer {bound}, got {value!r:.80}")
    return value


def check_generator_state(state: object, where: str) -> dict[str, Any]:
    """A PCG64 state read from a file, checked; a :class:`CheckpointError` naming ``where`` if it is not one."""
    if not isinstance(state, dict) or set(state) != _PCG64_KEYS or state["bit_generator"] != "PCG64":
        raise CheckpointError(
            f"{where}: expected a PCG64 generator state {{bit_generator, state, has_uint32, uinteger}}, "
            f"got {state!r:.120}"
        )
    inner = state["state"]
    if not isinstance(inner, dict) or set(inner) != {"state", "inc"}:
        raise CheckpointError(f"{where}.state: expected {{state, inc}}, got {inner!r:.120}")
    for key in ("state", "inc"):
        _int(inner[key], f"{where}.state.{key}", 0, 2**128 - 1)
    _int(state["has_uint32"], f"{where}.has_uint32", 0, 1)
    _int(state["uinteger"], f"{where}.uinteger", 0, 2**32 - 1)
    try:  # the bit generator's own checks (e.g. an even increment)
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: not a valid PCG64 state ({exc})") from None
    return state


def restore_generator(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Put ``rng`` in ``state`` (checked by :func:`check_generator_state`)."""
    rng.bit_generator.state = state


def check_train_state(
    train_state: object,
    state_arrays: dict[str, np.ndarray],
    total_steps: int,
    where: str,
    generators: tuple[str, ...],
    backends: tuple[str, ...],
    position: bool,
) -> dict[str, Any]:
    """Check ``meta["train_state"]`` and the ``state/`` arrays of a resumable checkpoint.

    ``generators``: the NumPy generators it must hold (by name); ``backends``: whose losses;
    ``position``: whether it must hold a :class:`~numpy_transformer.training.loop.BatchStream` position.
    Returns ``train_state``, unchanged, once every field is known good.
    """
    if not isinstance(train_state, dict):
        raise CheckpointError(f"{where}: expected an object, got {train_state!r:.80}")
    version = train_state.get("version")
    if version != TRAIN_STATE_VERSION:
        raise CheckpointError(f"{where}.version: expected {TRAIN_STATE_VERSION}, got {version!r}")
    done = _int(train_state.get("steps_done"), f"{where}.steps_done", 1, total_steps)
    seconds = train_state.get("seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise CheckpointError(f"{where}.seconds: expected a non-negative number, got {seconds!r:.80}")
    saved = train_state.get("generators")
    if not isinstance(saved, dict) or sorted(saved) != sorted(generators):
        raise CheckpointError(f"{where}.generators: expected the states of {sorted(generators)}, got {saved!r:.120}")
    for name in generators:
        check_generator_state(saved[name], f"{where}.generators.{name}")
    evals = train_state.get("evals")
    if not isinstance(evals, list) or not all(isinstance(e, dict) for e in evals):
        raise CheckpointError(f"{where}.evals: expected a list of objects, got {evals!r:.80}")
    for i, row in enumerate(evals):
        _int(row.get("step"), f"{where}.evals[{i}].step", 0, done)
    if position:
        pos = train_state.get("position")
        if not isinstance(pos, dict) or set(pos) != {"epoch", "used", "epoch_rng_state"}:
            raise CheckpointError(f"{where}.position: expected {{epoch, used, epoch_rng_state}}, got {pos!r:.120}")
        _int(pos["epoch"], f"{where}.position.epoch", 1, done)
        _int(pos["used"], f"{where}.position.used", 1, done)
        check_generator_state(pos["epoch_rng_state"], f"{where}.position.epoch_rng_state")
    for backend in backends:
        losses = state_arrays.get(f"losses.{backend}")
        if losses is None or losses.shape != (done,) or losses.dtype != np.float64:
            got = None if losses is None else f"{losses.shape} {losses.dtype}"
            raise CheckpointError(f"state/losses.{backend}: expected ({done},) float64 (one loss a step), got {got}")
    return train_state
