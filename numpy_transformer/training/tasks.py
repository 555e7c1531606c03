"""Built-in toy sequence-to-sequence tasks, generated from a seed (no download).

* ``copy``: the target is the source.
* ``reverse``: the target is the source reversed.
* ``sort``: the target is the source sorted ascending.

Token ids: ``PAD = 0``, ``BOS = 1``, ``EOS = 2``; the task's symbols are
``3 .. 3 + n_symbols - 1``. A batch is three (B, L) int64 arrays:

* ``src``     = symbols + EOS, right-padded with PAD;
* ``tgt_in``  = BOS + target (what the decoder reads, teacher forcing);
* ``tgt_out`` = target + EOS (what it must predict), PAD where ``tgt_in`` is PAD.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3
TASKS = ("copy", "reverse", "sort")


@dataclass(frozen=True)
class Batch:
    src: np.ndarray  # (B, S) int64
    tgt_in: np.ndarray  # (B, T) int64, starts with BOS
    tgt_out: np.ndarray  # (B, T) int64, ends with EOS, PAD elsewhere beyond


@dataclass(frozen=True)
class ToyTask:
    """A task's definition; ``vocab_size`` counts the special tokens too."""

    name: str = "reverse"
    n_symbols: int = 10
    min_len: int = 3
    max_len: int = 10

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {self.name!r}")
        if self.n_symbols < 2:
            raise ValueError(f"n_symbols: expected at least 2, got {self.n_symbols}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"min_len, max_len: expected 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + N_SPECIAL

    @property
    def max_seq_len(self) -> int:
        """The longest src / tgt row, with EOS or BOS added."""
        return self.max_len + 1

    def target(self, source: np.ndarray) -> np.ndarray:
        if self.name == "copy":
            return source.copy()
        if self.name == "reverse":
            return source[::-1].copy()
        return np.sort(source)

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        """``n`` random source sequences of symbol ids (lengths uniform in [min_len, max_len])."""
        lengths = rng.integers(self.min_len, self.max_len + 1, size=n)
        return [rng.integers(N_SPECIAL, self.vocab_size, size=int(L)) for L in lengths]

    def make_batch(self, sources: list[np.ndarray]) -> Batch:
        B = len(sources)
        L = max(len(s) for s in sources) + 1
        src = np.full((B, L), PAD, dtype=np.int64)
        tgt_in = np.full((B, L), PAD, dtype=np.int64)
        tgt_out = np.full((B, L), PAD, dtype=np.int64)
        for i, s in enumerate(sources):
            t = self.target(s)
            n = len(s)
            src[i, :n], src[i, n] = s, EOS
            tgt_in[i, 0], tgt_in[i, 1 : n + 1] = BOS, t
            tgt_out[i, :n], tgt_out[i, n] = t, EOS
        return Batch(src, tgt_in, tgt_out)


@dataclass
class ToyDataset:
    """A fixed train / validation split of one task, drawn from ``seed``.

    Validation sequences never occur in the training set.
    """

    task: ToyTask
    n_train: int = 20000
    n_val: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        val = self.task.sample(self.n_val, rng)
        seen = {tuple(s) for s in val}
        train: list[np.ndarray] = []
        while len(train) < self.n_train:
            for s in self.task.sample(self.n_train - len(train), rng):
                if tuple(s) not in seen:
                    train.append(s)
        self.train, self.val = train, val

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch of shuffled training batches (the last one may be smaller)."""
        order = rng.permutation(len(self.train))
        for start in range(0, len(order), batch_size):
            yield self.task.make_batch([self.train[i] for i in order[start : start + batch_size]])

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self.val), batch_size):
            yield self.task.make_batch(self.val[start : start + batch_size])
