r"""The stepping protocol that greedy and beam search are written against, and its reference stepper.

Shape legend: ``R`` rows a stepper runs (``B`` for greedy, ``B * K`` for beam search), ``S`` source
length, ``H`` heads, ``V`` target vocabulary size.

:func:`~numpy_transformer.inference.search.greedy_decode` and
:func:`~numpy_transformer.inference.search.beam_search` know nothing of any model. They drive a
:class:`Steppable` — the facts of a model (``config.tgt_vocab_size``, ``config.pad_id``,
``config.max_len``, ``dtype``), its source check, its eval mode, and
``start(src, copies, capacity, use_cache)``, which encodes the source once and returns a
:class:`Stepper` over ``R = B * copies`` rows (row ``b * copies + k`` reads source ``b``).
A stepper has three parts: ``batch_size`` (R), ``step(token_ids)`` — feed one token per
row, get the logits (R, V) of the next position and the attention (R, H, S) for heatmaps
(or ``None``) — and ``reorder(rows)``, which makes row ``i`` a copy of old row ``rows[i]``
(beam search keeps its survivors). Token ids go in and logits come out as NumPy arrays,
whatever the model computes with; so the twin's models plug in with steppers of their own
(``torch_transformer.steppers``) and no search loop of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import numpy as np

from ..config import RNNSeq2SeqConfig, TransformerConfig
from ..functional.checks import check_int_array
from ..modules.kv_cache import check_rows

__all__ = ["FullPrefixStepper", "Steppable", "Stepper", "check_step_ids"]


class Stepper(Protocol):
    """One decoding run over ``R`` rows of prefixes, fed one token per row at a time."""

    @property
    def batch_size(self) -> int:
        """``R``, the rows."""
        ...

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Feed ``token_ids`` (R,) int at the next position.

        Returns the logits (R, V) for the position after it, and the attention over the
        source there (R, H, S), or ``None`` when the model has none to show.
        """
        ...

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` a copy of old row ``rows[i]`` (``rows`` (R,) int, repeats allowed)."""
        ...


@runtime_checkable
class Steppable(Protocol):
    """What the searches decode: a model's facts, and how to start a :class:`Stepper`."""

    @property
    def config(self) -> TransformerConfig | RNNSeq2SeqConfig:
        """The searches read ``tgt_vocab_size`` (V), ``pad_id`` and ``max_len`` (the most steps)."""
        ...

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the logits."""
        ...

    def check_src(self, src: object) -> np.ndarray:
        """``src`` as a (B, S) NumPy integer array the model accepts; ValueError / TypeError naming ``src``."""
        ...

    def eval_mode(self) -> AbstractContextManager[object]:
        """Eval mode for a ``with`` block, every module's own mode restored afterwards."""
        ...

    def start(self, src: np.ndarray, copies: int, capacity: int, use_cache: bool) -> Stepper:
        """Encode ``src`` (B, S) once; a stepper over ``B * copies`` rows (row ``b * copies + k`` reads source ``b``).

        ``capacity``: the most tokens that will be fed per row. ``use_cache`` False: the
        reference stepper, the model's full forward on the whole prefix at every step.
        """
        ...


def check_step_ids(token_ids: object, batch_size: int, vocab_size: int) -> np.ndarray:
    """``token_ids`` must be an int array of shape (R,) with ids in ``[0, V)``, as :meth:`Stepper.step` takes."""
    token_ids = check_int_array("token_ids", token_ids)
    if token_ids.shape != (batch_size,):
        raise ValueError(f"token_ids: expected shape ({batch_size},), got {token_ids.shape}")
    if token_ids.min() < 0 or token_ids.max() >= vocab_size:
        raise ValueError(
            f"token_ids: expected ids in [0, {vocab_size}), got range [{token_ids.min()}, {token_ids.max()}]"
        )
    return token_ids


class FullPrefixStepper:
    """The reference :class:`Stepper`: every step runs the model's full forward on the whole prefix fed so far.

    ``last_position(prefix, rows)`` receives the prefix (R, t) and, per row, the started row it
    descends from (reorders compose), and returns the last position's logits (R, V) and
    attention (R, H, S) or None. No state but the tokens: nothing cached, nothing to go stale.
    """

    def __init__(
        self,
        last_position: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]],
        batch_size: int,
        capacity: int,
        vocab_size: int,
        pad_id: int,
    ) -> None:
        self.last_position = last_position
        self.vocab_size = vocab_size
        self.tokens = np.full((batch_size, capacity), pad_id, dtype=np.int64)  # (R, capacity) every token fed
        self.rows = np.arange(batch_size)  # (R,) the started row each row descends from
        self.length = 0  # positions fed so far

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        check_step_ids(token_ids, self.batch_size, self.vocab_size)
        if self.length == self.tokens.shape[1]:
            raise ValueError(f"capacity: all {self.tokens.shape[1]} positions are fed; start with a larger capacity")
        t = self.length
        self.tokens[:, t] = token_ids
        self.length = t + 1
        return self.last_position(self.tokens[:, : t + 1], self.rows)

    def reorder(self, rows: np.ndarray) -> None:
        rows = check_rows(rows, self.batch_size)
        self.tokens[:, : self.length] = self.tokens[rows, : self.length]
        self.rows = self.rows[rows]
