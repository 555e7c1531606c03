"""Training: the loop and its trainers, the toy seq2seq tasks it learns, and checkpoints.

``loop`` (TrainConfig, NumpyTrainer, fit, History), ``tasks`` (copy, reverse, sort),
``checkpoint`` (save, read, load; files need not be trusted), ``atomic`` (the one writer of files),
``resume`` (what a checkpoint holds so that a stopped run continues bit for bit), ``allocator``
(``keep_freed_memory``: freed arrays stay in the heap between steps).
"""

from .allocator import keep_freed_memory
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .loop import (
    MODELS,
    BatchStream,
    History,
    NonFiniteError,
    NumpyTrainer,
    StepResult,
    TrainConfig,
    Trainer,
    fit,
    max_loss_difference,
    sequence_metrics,
)
from .tasks import BOS, EOS, N_SPECIAL, PAD, TASKS, Batch, ToyDataset, ToyTask

__all__ = [
    "BOS",
    "EOS",
    "MODELS",
    "N_SPECIAL",
    "PAD",
    "TASKS",
    "Batch",
    "BatchStream",
    "Checkpoint",
    "CheckpointError",
    "History",
    "NonFiniteError",
    "NumpyTrainer",
    "StepResult",
    "ToyDataset",
    "ToyTask",
    "TrainConfig",
    "Trainer",
    "fit",
    "keep_freed_memory",
    "load_checkpoint",
    "max_loss_difference",
    "read_checkpoint",
    "save_checkpoint",
    "sequence_metrics",
]
