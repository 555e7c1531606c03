"""Training the encoder–decoder Transformer on a toy task: the NumPy trainer and the loop.

The loop (:func:`fit`) is backend-agnostic: it drives any object with the
:class:`Trainer` methods, so the NumPy trainer here and the PyTorch one in
``torch_transformer.training`` run the same batches in the same order. In compare
mode each step's dropout masks, drawn by the NumPy model, are replayed in the twin,
and with the same initial weights the two loss curves agree to rounding.

One training step: forward, cross-entropy with label smoothing (pad positions
ignored), backward, clip the global gradient norm, set the learning rate from the
schedule (linear warm-up then a cosine, or the paper's inverse square root), Adam update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import RNN_ATTENTIONS, RNNSeq2SeqConfig, TransformerConfig
from ..functional.softmax import cross_entropy_backward, cross_entropy_forward
from ..models.rnn_seq2seq import RNNSeq2Seq
from ..models.transformer import Transformer
from ..optim import Adam, clip_grad_norm, inverse_sqrt_warmup, linear_warmup_cosine
from .tasks import BOS, EOS, PAD, Batch, ToyDataset, ToyTask

MODELS = ("transformer", *(f"rnn-{a}" for a in RNN_ATTENTIONS))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the backend. Defaults: the reverse task, learned in minutes."""

    task: str = "reverse"
    n_symbols: int = 10  # task alphabet; the vocabulary adds PAD, BOS, EOS
    min_len: int = 3
    max_len: int = 10
    n_train: int = 20000
    n_val: int = 500
    # model: "transformer", or a recurrent encoder-decoder "rnn-bahdanau", "rnn-luong-dot" | -general | -concat
    model: str = "transformer"
    rnn_embed_dim: int = 32  # rnn-*: token embedding width
    rnn_hidden: int = 64  # rnn-*: decoder state = encoder output width (two directions of 32)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2  # encoder layers = decoder layers
    d_ff: int = 256
    dropout: float = 0.0  # this task has no noise to overfit: dropout only slows it down
    norm_first: bool = True  # pre-LN learns the reverse task about twice as fast as post-LN here
    tie_embeddings: bool = False
    # optimisation
    batch_size: int = 64
    steps: int = 1500
    schedule: str = "cosine"  # "cosine": linear warm-up, cosine to 0; "inverse_sqrt": the paper's
    warmup_steps: int = 200  # the learning rate rises linearly for this many updates
    peak_lr: float = 5e-3  # the cosine schedule's rate at the end of the warm-up
    lr_factor: float = 1.0  # inverse_sqrt only: multiplies d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    seed: int = 0

    def task_spec(self) -> ToyTask:
        return ToyTask(self.task, self.n_symbols, self.min_len, self.max_len)

    def model_config(self) -> TransformerConfig | RNNSeq2SeqConfig:
        task = self.task_spec()
        if self.model != "transformer":
            return RNNSeq2SeqConfig(
                src_vocab_size=task.vocab_size,
                tgt_vocab_size=task.vocab_size,
                embed_dim=self.rnn_embed_dim,
                hidden_size=self.rnn_hidden,
                attention=self.model[len("rnn-") :],
                attn_dim=self.rnn_hidden,
                pad_id=PAD,
                max_len=task.max_seq_len,
            )
        return TransformerConfig(
            src_vocab_size=task.vocab_size,
            tgt_vocab_size=task.vocab_size,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_encoder_layers=self.n_layers,
            n_decoder_layers=self.n_layers,
            d_ff=self.d_ff,
            dropout=self.dropout,
            norm_first=self.norm_first,
            max_len=task.max_seq_len,
            pad_id=PAD,
            tie_embeddings=self.tie_embeddings,
        )

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {self.model!r}")
        if self.schedule not in ("cosine", "inverse_sqrt"):
            raise ValueError(f"schedule: expected 'cosine' or 'inverse_sqrt', got {self.schedule!r}")

    def build_model(self, dtype: np.dtype | type, rng: np.random.Generator) -> Transformer | RNNSeq2Seq:
        """The NumPy model this configuration trains."""
        config = self.model_config()
        if isinstance(config, RNNSeq2SeqConfig):
            return RNNSeq2Seq(config, dtype=dtype, rng=rng)
        return Transformer(config, dtype=dtype, rng=rng)

    def learning_rate(self, update: int) -> float:
        """The rate for update ``update`` (numbered from 1)."""
        if self.schedule == "inverse_sqrt":
            return inverse_sqrt_warmup(update, self.d_model, self.warmup_steps, self.lr_factor)
        return linear_warmup_cosine(update, self.peak_lr, self.warmup_steps, max(self.steps, self.warmup_steps))

    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float  # before clipping; NaN when the loss was not finite (no backward pass then)
    lr: float
    dropout_masks: dict[str, Any] = field(default_factory=dict, repr=False)
    # when the loss or the gradient norm is not finite the trainer makes no update and names here the
    # first non-finite gradient (None: the loss, or a norm that overflowed although every gradient is finite)
    nonfinite_grad: str | None = None
    nonfinite_value: str = ""  # "nan" or "inf": what that gradient holds


class NonFiniteError(ArithmeticError):
    """Training met a non-finite loss or gradient: ``step`` (from 1), ``tensor`` ("loss", a parameter name or
    "gradient norm"), ``value`` ("nan" or "inf"), ``backend``; ``history`` holds the losses up to that step.

    The step that met it made no update, so the model holds the weights of the step before.
    """

    def __init__(self, step: int, tensor: str, value: str, backend: str = "numpy", history: History | None = None):
        self.step, self.tensor, self.value, self.backend, self.history = step, tensor, value, backend, history
        if tensor == "loss":
            what = f"loss is {value}"
        elif tensor == "gradient norm":
            what = f"gradient norm is {value} (every gradient is finite; their sum of squares overflows)"
        else:
            what = f"gradient of {tensor} has {value}"
        super().__init__(f"step {step}: {what} ({backend} backend)")


def nonfinite_kind(values: Any) -> str:
    """'nan' if ``values`` holds a NaN, else 'inf' (for values known not to be all finite)."""
    return "nan" if bool(np.isnan(np.asarray(values)).any()) else "inf"


def first_nonfinite(named: Iterator[tuple[str, np.ndarray]]) -> str | None:
    """The name of the first array in ``named`` with a NaN or an infinity, or None."""
    for name, g in named:
        if not np.isfinite(g).all():
            return name
    return None


def clip_or_stop(model, max_norm: float, step: int, backend: str = "numpy") -> float:
    """Clip ``model``'s global gradient norm to ``max_norm`` and return the norm before clipping.

    If the norm is not finite nothing is scaled and :class:`NonFiniteError` names ``step`` and the first
    non-finite gradient (or "gradient norm" when every gradient is finite but their squares overflow).
    """
    try:  # the norm is the one vectorised check of every gradient; it raises before scaling any
        return float(clip_grad_norm(model, max_norm, error_if_nonfinite=True))
    except ValueError:
        bad = first_nonfinite(model.named_grads())
        kind = "inf" if bad is None else nonfinite_kind(dict(model.named_grads())[bad])
        raise NonFiniteError(step, bad or "gradient norm", kind, backend) from None


class Trainer(Protocol):
    backend: str

    def train_step(self, batch: Batch, dropout_masks: dict[str, np.ndarray] | None = None) -> StepResult: ...

    def evaluate(self, dataset: ToyDataset, batch_size: int) -> dict[str, float]: ...


def sequence_metrics(predicted: np.ndarray, batch: Batch) -> tuple[int, int]:
    """(exactly right sequences, sequences): ``predicted`` (B, L) tokens after BOS, compared up to and with EOS."""
    right = 0
    for pred, want in zip(predicted, batch.tgt_out, strict=True):
        n = int(np.sum(want != PAD))  # target length including EOS
        right += int(len(pred) >= n and np.array_equal(pred[:n], want[:n]))
    return right, len(batch.tgt_out)


class NumpyTrainer:
    """Adam + clipping + schedule on a NumPy :class:`Transformer`."""

    backend = "numpy"

    def __init__(self, model: Transformer | RNNSeq2Seq, cfg: TrainConfig, rng: np.random.Generator) -> None:
        self.model, self.cfg, self.rng = model, cfg, rng
        self.optimizer = Adam(model, lr=0.0, betas=cfg.betas, eps=cfg.eps)

    def train_step(self, batch: Batch, dropout_masks: dict[str, np.ndarray] | None = None) -> StepResult:
        model, cfg, opt = self.model, self.cfg, self.optimizer
        model.train()
        logits, cache = model.forward(batch.src, batch.tgt_in, rng=self.rng, dropout_masks=dropout_masks)
        loss, loss_cache = cross_entropy_forward(logits, batch.tgt_out, PAD, cfg.label_smoothing)
        lr = cfg.learning_rate(opt.step_count + 1)
        if not np.isfinite(loss):  # no backward pass and no update: the model keeps the last good weights
            return StepResult(float(loss), math.nan, lr, cache.dropout_masks)
        model.zero_grad()
        model.backward(cross_entropy_backward(1.0, loss_cache), cache)
        try:  # the norm is the one vectorised check of every gradient; it raises before scaling any
            norm = clip_grad_norm(model, cfg.clip_norm, error_if_nonfinite=True)
        except ValueError:
            bad = first_nonfinite(model.named_grads())
            kind = "" if bad is None else nonfinite_kind(dict(model.named_grads())[bad])
            return StepResult(float(loss), math.inf if bad is None else math.nan, lr, cache.dropout_masks, bad, kind)
        opt.lr = lr
        opt.step()
        return StepResult(float(loss), float(norm), opt.lr, cache.dropout_masks)

    def evaluate(self, dataset: ToyDataset, batch_size: int) -> dict[str, float]:
        """Validation loss (no smoothing), teacher-forced token accuracy, greedy exact-sequence accuracy."""
        from ..inference.search import greedy_decode

        model = self.model
        was_training = model.training
        model.eval()
        total_loss = tokens = right_tokens = right_seqs = seqs = 0.0
        for batch in dataset.val_batches(batch_size):
            logits, _ = model.forward(batch.src, batch.tgt_in)
            loss, _ = cross_entropy_forward(logits, batch.tgt_out, PAD)
            valid = batch.tgt_out != PAD
            total_loss += float(loss) * valid.sum()
            tokens += valid.sum()
            right_tokens += np.sum((logits.argmax(-1) == batch.tgt_out) & valid)
            decoded = greedy_decode(model, batch.src, max_len=batch.tgt_out.shape[1], bos_id=BOS, eos_id=EOS)
            r, n = sequence_metrics(decoded.tokens[:, 1:], batch)
            right_seqs, seqs = right_seqs + r, seqs + n
        model.train(was_training)
        return {
            "val_loss": total_loss / tokens,
            "val_token_accuracy": right_tokens / tokens,
            "val_sequence_accuracy": right_seqs / seqs,
        }


def max_loss_difference(losses: dict[str, list[float]]) -> tuple[float, int] | None:
    """Largest relative per-update loss difference between two backends' runs, and its update (from 1).

    ``losses``: backend -> loss of each update; None unless exactly two backends ran.
    """
    if len(losses) != 2:
        return None
    a, b = (np.asarray(v) for v in losses.values())
    rel = np.abs(a - b) / np.maximum(1.0, np.abs(b))
    return float(rel.max()), int(rel.argmax()) + 1


def stop_requested(step: int, steps: int, should_stop: Callable[[], bool] | None) -> bool:
    """After step ``step`` of ``steps``: whether ``should_stop()`` asks the run to end early (never after the last)."""
    return step < steps and should_stop is not None and should_stop()


def save_due(step: int, steps: int, save_every: int | None, stopped: bool) -> bool:
    """Whether the checkpoint is written after ``step``: every ``save_every`` steps, after the last, when stopped."""
    return stopped or step == steps or bool(save_every and step % save_every == 0)


@dataclass
class History:
    """Per-step losses of each backend and per-evaluation metrics.

    ``steps_done`` counts the updates made so far (over every resumed part of a run);
    ``stopped`` is True when :func:`fit` returned early because ``should_stop`` asked it to.
    """

    config: dict[str, Any]
    losses: dict[str, list[float]] = field(default_factory=dict)  # backend -> loss at each step
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", "epoch", "backend", metrics...}
    seconds: float = 0.0
    steps_done: int = 0
    stopped: bool = False

    def max_loss_difference(self) -> tuple[float, int] | None:
        """Largest relative per-step loss difference between two backends, and its step."""
        return max_loss_difference(self.losses)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BatchStream:
    """The endless, seeded stream of training batches :func:`fit` reads, and where it stands.

    Each epoch is one ``rng.permutation`` of the training set cut into batches (the last one
    may be smaller). Its position is three things: the epoch, how many of its batches were
    used, and the generator's state *before* that epoch's permutation. :meth:`position` returns
    them as JSON-ready values and :meth:`seek` restores them, redrawing the same permutation,
    so a resumed run reads exactly the batches an uninterrupted one would.
    """

    def __init__(self, dataset: ToyDataset, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.rng = np.random.default_rng([seed, 1])  # the batch order, independent of model init
        self.epoch = 0  # the epoch being read (0: none started)
        self.used = 0  # batches of it already handed out
        self._epoch_rng_state: dict[str, Any] = self.rng.bit_generator.state
        self._order: np.ndarray | None = None

    def _start_epoch(self) -> None:
        self._epoch_rng_state = self.rng.bit_generator.state
        self._order = self.rng.permutation(len(self.dataset.train))
        self.epoch, self.used = self.epoch + 1, 0

    def next(self) -> tuple[int, Batch]:
        """(epoch numbered from 1, the next batch)."""
        if self._order is None or self.used * self.batch_size >= len(self._order):
            self._start_epoch()
        assert self._order is not None
        picked = self._order[self.used * self.batch_size : (self.used + 1) * self.batch_size]
        self.used += 1
        return self.epoch, self.dataset.task.make_batch([self.dataset.train[i] for i in picked])

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "used": self.used, "epoch_rng_state": self._epoch_rng_state}

    def seek(self, position: dict[str, Any]) -> None:
        """Continue from ``position`` (from :meth:`position`; checked by ``resume.check_run_state``)."""
        self.epoch, self.used = int(position["epoch"]), int(position["used"])
        self.rng.bit_generator.state = position["epoch_rng_state"]
        self._epoch_rng_state, self._order = position["epoch_rng_state"], None
        if self.epoch > 0:
            self._order = self.rng.permutation(len(self.dataset.train))  # the same permutation, redrawn


def _check_finite(step: int, trainer: Trainer, result: StepResult, history: History, start: float) -> None:
    """Raise :class:`NonFiniteError` if ``result`` holds a non-finite loss or gradient norm (two float tests)."""
    if math.isfinite(result.loss) and math.isfinite(result.grad_norm):
        return
    history.seconds = time.perf_counter() - start
    if not math.isfinite(result.loss):
        tensor, value = "loss", nonfinite_kind(result.loss)
    elif result.nonfinite_grad is None:
        tensor, value = "gradient norm", nonfinite_kind(result.grad_norm)
    else:
        tensor, value = result.nonfinite_grad, result.nonfinite_value
    raise NonFiniteError(step, tensor, value, trainer.backend, history)


def fit(
    trainers: list[Trainer],
    dataset: ToyDataset,
    cfg: TrainConfig,
    steps: int,
    eval_every: int | None = None,
    on_step: Callable[[int, list[StepResult]], None] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    *,
    resume_from: tuple[History, dict[str, Any]] | None = None,
    save_every: int | None = None,
    on_save: Callable[[History, dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> History:
    """Train every trainer on the same batches for ``steps`` updates (in all, counting a resumed run's).

    With two trainers the first (NumPy) draws the dropout masks and the second replays
    them, so both see identical randomness. ``eval_every`` defaults to once per epoch
    and there is always a final evaluation.

    After each step the loss and the gradient norm (which covers every gradient) must be
    finite; else :class:`NonFiniteError` names the step and the first offending tensor
    (the trainer made no update at that step).

    Long runs: ``on_save(history, position)`` is called every ``save_every`` steps and after
    the last one, with the batch stream's :meth:`BatchStream.position`: everything ``fit``
    itself needs to continue (the caller saves the models, optimizers and their generators).
    ``should_stop()`` is asked after every step (and that step's evaluation, if one is due); when
    it says yes, ``fit`` calls ``on_save`` and returns a history with ``stopped`` set.
    ``resume_from=(history, position)`` continues such a run: the next step is
    ``history.steps_done + 1`` and reads the batch it would have read.
    """
    if steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps}")
    eval_every = eval_every or cfg.steps_per_epoch()
    stream = BatchStream(dataset, cfg.batch_size, cfg.seed)
    if resume_from is None:
        history = History(config=asdict(cfg), losses={t.backend: [] for t in trainers})
    else:
        history, position = resume_from
        if sorted(history.losses) != sorted(t.backend for t in trainers):
            raise ValueError(f"resume_from: the history is of {sorted(history.losses)}, the trainers are "
                             f"{[t.backend for t in trainers]}")  # fmt: skip
        if not 0 < history.steps_done < steps:
            raise ValueError(f"resume_from: the run made {history.steps_done} steps; expected 1 to {steps - 1}")
        stream.seek(position)
    start = time.perf_counter() - history.seconds
    for step in range(history.steps_done + 1, steps + 1):
        epoch, batch = stream.next()
        results = []
        masks = None
        for trainer in trainers:
            result = trainer.train_step(batch, dropout_masks=masks)
            masks = masks if masks is not None else result.dropout_masks
            history.losses[trainer.backend].append(result.loss)
            results.append(result)
            _check_finite(step, trainer, result, history, start)
        history.steps_done = step
        if on_step is not None:
            on_step(step, results)
        if step % eval_every == 0 or step == steps:
            for trainer in trainers:
                row = {"step": step, "epoch": epoch, "backend": trainer.backend}
                row.update(trainer.evaluate(dataset, 250))
                recent = history.losses[trainer.backend][-min(step, eval_every) :]
                row["train_loss"] = float(np.mean(recent))
                history.evals.append(row)
                if on_eval is not None:
                    on_eval(row)
        history.stopped = stop_requested(step, steps, should_stop)
        history.seconds = time.perf_counter() - start
        if on_save is not None and save_due(step, steps, save_every, history.stopped):
            on_save(history, stream.position())
        if history.stopped:
            break
    return history
