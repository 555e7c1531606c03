"""Fine-tuning a pretrained BERT encoder for sentence classification: three strategies.

``python -m numpy_transformer finetune`` runs :func:`run_cli` on all-MiniLM-L6-v2.

The model is :class:`~numpy_transformer.models.bert.BertForSequenceClassification`:
the pretrained encoder (``bert.embeddings``, ``bert.layers.0`` .. ``bert.layers.{L-1}``)
under a task-specific **head**, ``bert.pooler`` + ``classifier``, newly trained. (The
sentence-transformers model all-MiniLM-L6-v2 mean-pools its token states and never
uses the pooler, so the pooler is task-specific here too.)

Strategies (:class:`FineTuneConfig`):

* ``"frozen"`` -- the encoder stays as it is; only the head trains (a linear probe on
  the [CLS] state, through the pooler).
* ``"gradual"`` -- gradual unfreezing (Howard & Ruder, 2018, "ULMFiT"): the head alone
  for ``unfreeze_every`` updates, then the top encoder layer too, then one more layer
  every ``unfreeze_every`` updates, top to bottom, and the embeddings last.
* ``"full"`` -- everything trains from the first update.

Freezing is ``module.requires_grad_(False)``: a frozen module's backward adds nothing
to its gradients (they stay exactly 0), the backward stops below the lowest module
that still trains, and the optimizer skips its parameters -- no update, no weight decay,
and its Adam moments and update count stay untouched, so a layer unfrozen at update
``u`` starts Adam afresh there (bias correction from its own step 1), exactly as
``torch.optim`` treats a parameter whose ``.grad`` is ``None``.

Learning rates: AdamW with layer-wise learning-rate decay (Clark et al., 2020, "ELECTRA";
Sun et al., 2019, "How to fine-tune BERT"), one parameter group per encoder layer.
The top layer gets ``lr``, the layer ``k`` below it ``lr * layer_decay**k`` and the
embeddings, below the lowest layer, ``lr * layer_decay**L``. The head gets ``head_lr``:
it starts from random weights and needs a larger rate. The default encoder rate,
5e-5, is half of BERT's pre-training peak (1e-4, Devlin et al. 2019, appendix A.2), at
the top of the fine-tuning range that paper recommends (2e-5 to 5e-5), and 100 times
smaller than the rate this repository trains its Transformers from scratch with
(``train``: peak 5e-3). (The model card of all-MiniLM-L6-v2 reports 2e-5 for its own
sentence-embedding training stage.)

The data (:func:`sentiment_dataset`) is generated, not downloaded: a few hundred
seeded sentences of positive or negative reviews, most of them built so that no single
word decides the label (negation, "I expected ... but it was ...", "everyone said it
would be ..., but it was not").

One training step is forward (dropout on), mean cross-entropy, backward, AdamW. The
loop (:func:`run_fine_tuning`) drives any trainer with ``train_step`` / ``evaluate``, so
the NumPy one here and the PyTorch one in ``torch_transformer.finetune`` run the same
batches with the same schedule; in compare mode the twin replays the NumPy model's
dropout masks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..functional.checks import check_int, check_positive_number
from ..functional.softmax import cross_entropy_backward, cross_entropy_forward
from ..models.bert import BertForSequenceClassification, BertModel
from ..optim import AdamW
from ..training.loop import max_loss_difference
from .datasets import SentenceDataset

STRATEGIES = ("frozen", "gradual", "full")
HEAD_PREFIXES = ("bert.pooler.", "classifier.")  # the task-specific head: trained by every strategy

# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FineTuneConfig:
    """One fine-tuning run. Defaults: the ``finetune`` command's (MiniLM, a few minutes on one thread)."""

    strategy: str = "gradual"  # "frozen" | "gradual" | "full" (module docstring)
    lr: float = 5e-5  # AdamW rate of the top encoder layer (see the module docstring for the comparison)
    head_lr: float = 2e-3  # pooler + classifier: new weights, larger steps
    layer_decay: float = 0.8  # each layer further down gets this factor more: lr * decay**depth, in (0, 1]
    unfreeze_every: int = 6  # gradual: updates per stage (head only, +1 layer, ..., +embeddings)
    epochs: int = 3
    batch_size: int = 16
    weight_decay: float = 0.01  # AdamW's decoupled decay, for every trained parameter
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0  # batch order, head initialisation and dropout masks

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {self.strategy!r}")
        check_positive_number("lr", self.lr)
        check_positive_number("head_lr", self.head_lr)
        decay = self.layer_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise ValueError(f"layer_decay: expected a number in (0, 1] (1 = no decay), got {decay!r}")
        check_int("unfreeze_every", self.unfreeze_every, 1)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (math.isfinite(wd) and wd >= 0):
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {wd!r}")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas: expected a pair of numbers in [0, 1), got {self.betas!r}")
        check_positive_number("eps", self.eps)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {self.seed!r}")

    def steps_per_epoch(self, n_train: int) -> int:
        return math.ceil(n_train / self.batch_size)


# ---------------------------------------------------------------------------- layer-wise groups


@dataclass(frozen=True)
class LayerGroup:
    """One optimizer parameter group: its name, the parameter-name prefixes it holds and its rate."""

    name: str  # "embeddings", "layers.<i>" or "head"
    prefixes: tuple[str, ...]
    lr: float
    depth: int | None  # layers below the top encoder layer (embeddings: n_layers); None for the head


def layer_groups(n_layers: int, lr: float, decay: float, head_lr: float) -> list[LayerGroup]:
    """The layer-wise groups, bottom to top: embeddings, ``layers.0`` .. ``layers.{L-1}``, head.

    ``layers.i`` is ``depth = L - 1 - i`` layers below the top and gets ``lr * decay**depth``;
    the embeddings, below ``layers.0``, get ``lr * decay**L``; the head gets ``head_lr``.
    Both backends build their optimizer groups from this one list.
    """
    FineTuneConfig(lr=lr, layer_decay=decay, head_lr=head_lr)  # the same checks, the same messages
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
        raise ValueError(f"n_layers: expected an int >= 0, got {n_layers!r}")
    groups = [LayerGroup("embeddings", ("bert.embeddings.",), lr * decay**n_layers, n_layers)]
    for i in range(n_layers):
        depth = n_layers - 1 - i
        groups.append(LayerGroup(f"layers.{i}", (f"bert.layers.{i}.",), lr * decay**depth, depth))
    groups.append(LayerGroup("head", HEAD_PREFIXES, head_lr, None))
    return groups


def group_index(name: str, groups: Sequence[LayerGroup]) -> int:
    """Which group a parameter name belongs to; ``ValueError`` if none (a model this layout does not fit)."""
    hits = [i for i, g in enumerate(groups) if name.startswith(g.prefixes)]
    if len(hits) != 1:
        raise ValueError(
            f"parameter {name!r}: expected in exactly one layer-wise group, found in "
            f"{[groups[i].name for i in hits]}; the model must be a BertForSequenceClassification"
        )
    return hits[0]


def layerwise_param_groups(
    model: BertForSequenceClassification, lr: float, decay: float, head_lr: float
) -> list[dict[str, Any]]:
    """``[{"params": [(name, param, grad, owner), ...], "lr": ...}, ...]`` for :class:`~numpy_transformer.optim.AdamW`.

    One group per :func:`layer_groups` entry, in that order (bottom to top). The items carry
    their owning module, so the optimizer skips parameters of frozen modules.
    """
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"model: expected a BertForSequenceClassification, got {type(model).__name__}")
    groups = layer_groups(model.config.n_layers, lr, decay, head_lr)
    params: list[list[tuple]] = [[] for _ in groups]
    for ref in model.named_parameter_refs():
        params[group_index(ref[0], groups)].append(ref)
    return [{"params": p, "lr": g.lr} for g, p in zip(groups, params, strict=True)]


# ---------------------------------------------------------------------------- unfreezing


def frozen_modules(strategy: str, n_layers: int, update: int, unfreeze_every: int) -> tuple[str, ...]:
    """The encoder modules frozen during update ``update`` (numbered from 1), bottom to top.

    * ``"full"``: none;  ``"frozen"``: all of them (``bert.embeddings``, every layer);
    * ``"gradual"``: stage ``k = (update - 1) // unfreeze_every``; stage 0 trains the head
      only, stage ``k`` the top ``k`` layers too, and from stage ``L + 1`` on the embeddings
      as well. The head is never frozen.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    check_int("update", update, 1)
    check_int("unfreeze_every", unfreeze_every, 1)
    encoder = ("bert.embeddings", *(f"bert.layers.{i}" for i in range(n_layers)))  # bottom to top
    if strategy == "full":
        return ()
    if strategy == "frozen":
        return encoder
    stage = (update - 1) // unfreeze_every  # trainable encoder modules, counted from the top
    return encoder[: max(0, len(encoder) - stage)]


def apply_unfreeze_schedule(model: Any, update: int, cfg: FineTuneConfig) -> tuple[str, ...]:
    """Freeze / unfreeze ``model``'s encoder modules for update ``update``; return the frozen names.

    Works on the NumPy model and on its PyTorch twin alike: both have ``bert.embeddings``,
    ``bert.layers[i]`` and ``requires_grad_``. The head is always left trainable.
    """
    n_layers = len(model.bert.layers)
    frozen = frozen_modules(cfg.strategy, n_layers, update, cfg.unfreeze_every)
    model.bert.embeddings.requires_grad_("bert.embeddings" not in frozen)
    for i, layer in enumerate(model.bert.layers):
        layer.requires_grad_(f"bert.layers.{i}" not in frozen)
    model.bert.pooler.requires_grad_(True)
    model.classifier.requires_grad_(True)
    return frozen


# ---------------------------------------------------------------------------- the NumPy trainer


@dataclass(frozen=True)
class ClassificationBatch:
    input_ids: np.ndarray  # (B, S) int64
    attention_mask: np.ndarray  # (B, S) int64, 1 = token, 0 = padding
    token_type_ids: np.ndarray  # (B, S) int64
    labels: np.ndarray  # (B,) int64


Encoder = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray, np.ndarray]]


def make_batch(encode: Encoder, sentences: Sequence[str], labels: np.ndarray) -> ClassificationBatch:
    ids, mask, types = encode(list(sentences))
    return ClassificationBatch(ids, mask, types, np.asarray(labels, dtype=np.int64))


@dataclass(frozen=True)
class FineTuneStep:
    loss: float
    update: int
    frozen: tuple[str, ...]  # encoder modules frozen during this update
    dropout_masks: dict[str, Any] = field(default_factory=dict, repr=False)


class FineTuner(Protocol):
    backend: str

    def train_step(
        self, batch: ClassificationBatch, dropout_masks: dict[str, np.ndarray] | None = None
    ) -> FineTuneStep: ...

    def evaluate(self, dataset: SentenceDataset, encode: Encoder, batch_size: int = 64) -> dict[str, float]: ...

    def trained_parameters(self) -> int: ...


def classifier_from_pretrained(
    encoder: BertModel, num_labels: int, rng: np.random.Generator
) -> BertForSequenceClassification:
    """A :class:`BertForSequenceClassification` whose ``bert.*`` are copies of ``encoder``'s weights.

    The classifier is new (BERT's initialisation, from ``rng``); so is the pooler when
    ``encoder`` has none.
    """
    if not isinstance(encoder, BertModel):
        raise TypeError(f"encoder: expected a BertModel, got {type(encoder).__name__}")
    model = BertForSequenceClassification(encoder.config, num_labels, encoder.dtype, rng)
    state = model.state_dict()
    state.update({f"bert.{name}": p for name, p in encoder.state_dict().items()})
    model.load_state_dict(state)
    return model


class NumpyFineTuner:
    """AdamW with layer-wise groups + the unfreezing schedule on a NumPy classifier."""

    backend = "numpy"

    def __init__(self, model: BertForSequenceClassification, cfg: FineTuneConfig, rng: np.random.Generator) -> None:
        self.model, self.cfg, self.rng = model, cfg, rng
        self.optimizer = AdamW(
            layerwise_param_groups(model, cfg.lr, cfg.layer_decay, cfg.head_lr),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
        self.updates = 0
        apply_unfreeze_schedule(model, 1, cfg)

    def train_step(
        self, batch: ClassificationBatch, dropout_masks: dict[str, np.ndarray] | None = None
    ) -> FineTuneStep:
        model = self.model
        update = self.updates + 1
        frozen = apply_unfreeze_schedule(model, update, self.cfg)
        model.train()
        logits, cache = model.forward(
            batch.input_ids, batch.attention_mask, batch.token_type_ids, rng=self.rng, dropout_masks=dropout_masks
        )  # (B, K)
        loss, loss_cache = cross_entropy_forward(logits, batch.labels)
        model.zero_grad()
        model.backward(cross_entropy_backward(1.0, loss_cache), cache)
        self.optimizer.step()
        self.updates = update
        return FineTuneStep(float(loss), update, frozen, cache.bert.dropout_masks)

    def evaluate(self, dataset: SentenceDataset, encode: Encoder, batch_size: int = 64) -> dict[str, float]:
        """Validation loss and accuracy, dropout off."""
        model = self.model
        was_training = model.training
        model.eval()
        total = right = 0.0
        for sentences, labels in dataset.val_batches(batch_size):
            b = make_batch(encode, sentences, labels)
            logits, _ = model.forward(b.input_ids, b.attention_mask, b.token_type_ids)
            loss, _ = cross_entropy_forward(logits, b.labels)
            total += float(loss) * len(labels)
            right += float(np.sum(logits.argmax(-1) == b.labels))
        model.train(was_training)
        n = len(dataset.val_sentences)
        return {"val_loss": total / n, "val_accuracy": right / n}

    def trained_parameters(self) -> int:
        """Scalars that received at least one update so far."""
        sizes = dict((n, p.size) for n, p in self.optimizer.named_parameters())
        return sum(sizes[n] for n, steps in self.optimizer.param_steps.items() if steps > 0)


def group_grad_norms(model: BertForSequenceClassification) -> dict[str, float]:
    """The 2-norm of the current gradients of each layer-wise group (embeddings, layers.i, head)."""
    groups = layer_groups(model.config.n_layers, 1.0, 1.0, 1.0)
    sq = [0.0] * len(groups)
    for name, g in model.named_grads():
        sq[group_index(name, groups)] += float(np.sum(np.asarray(g, dtype=np.float64) ** 2))
    return {grp.name: math.sqrt(s) for grp, s in zip(groups, sq, strict=True)}


# ---------------------------------------------------------------------------- the loop


@dataclass
class FineTuneHistory:
    strategy: str
    losses: dict[str, list[float]] = field(default_factory=dict)  # backend -> training loss of each update
    frozen: list[tuple[str, ...]] = field(default_factory=list)  # encoder modules frozen at each update
    before: dict[str, dict[str, float]] = field(default_factory=dict)  # backend -> val metrics before training
    after: dict[str, dict[str, float]] = field(default_factory=dict)
    trained_parameters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def max_loss_difference(self) -> tuple[float, int] | None:
        """Largest relative per-update loss difference between two backends, and its update."""
        return max_loss_difference(self.losses)


def run_fine_tuning(
    trainers: Sequence[FineTuner],
    dataset: SentenceDataset,
    encode: Encoder,
    cfg: FineTuneConfig,
    steps: int | None = None,
    evaluate: bool = True,
    on_step: Callable[[int, list[FineTuneStep]], None] | None = None,
) -> FineTuneHistory:
    """Train every trainer on the same batches for ``steps`` updates (default ``cfg.epochs`` epochs).

    With two trainers the first (NumPy) draws the dropout masks and the second replays
    them. With ``evaluate``, validation loss and accuracy before and after.
    """
    per_epoch = cfg.steps_per_epoch(len(dataset.train_sentences))
    steps = cfg.epochs * per_epoch if steps is None else check_int("steps", steps, 1)
    history = FineTuneHistory(cfg.strategy, losses={t.backend: [] for t in trainers})
    if evaluate:
        history.before = {t.backend: t.evaluate(dataset, encode) for t in trainers}
    batch_rng = np.random.default_rng([cfg.seed, 1])  # the batch order, the same for every strategy
    start = time.perf_counter()
    step = 0
    while step < steps:
        for sentences, labels in dataset.train_batches(cfg.batch_size, batch_rng):
            step += 1
            batch = make_batch(encode, sentences, labels)
            results, masks = [], None
            for trainer in trainers:
                result = trainer.train_step(batch, dropout_masks=masks)
                masks = masks if masks is not None else result.dropout_masks
                history.losses[trainer.backend].append(result.loss)
                results.append(result)
            history.frozen.append(results[0].frozen)
            if on_step is not None:
                on_step(step, results)
            if step == steps:
                break
    history.seconds = time.perf_counter() - start
    history.trained_parameters = {t.backend: t.trained_parameters() for t in trainers}
    if evaluate:
        history.after = {t.backend: t.evaluate(dataset, encode) for t in trainers}
    return history


def format_table(histories: Sequence[FineTuneHistory], backend: str = "numpy", tail: int = 10) -> str:
    """The comparison table: accuracy before / after, final train loss (mean of the last ``tail`` updates), time."""
    header = (
        f"| {'strategy':<8} | {'val acc before':>14} | {'val acc after':>13} | {'final train loss':>16} "
        f"| {'wall time':>9} | {'trained parameters':>18} |"
    )
    rule = "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"
    rows = [header, rule]
    for h in histories:
        losses = h.losses[backend]
        before, after = h.before[backend]["val_accuracy"], h.after[backend]["val_accuracy"]
        rows.append(
            f"| {h.strategy:<8} | {before:>14.3f} | {after:>13.3f} "
            f"| {float(np.mean(losses[-tail:])):>16.4f} | {h.seconds:>7.1f} s | {h.trained_parameters[backend]:>18,} |"
        )
    return "\n".join(rows)
