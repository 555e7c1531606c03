"""A character-level language model on a built-in corpus: a :class:`GPT` or a :class:`Llama` trained end to end.

``python -m numpy_transformer train --task charlm`` trains it (numpy_transformer/commands/train.py);
``--model llama`` trains the Llama-style decoder instead, at about the GPT's parameter count, on
the same windows with the same optimizer and schedule, so that the two runs compare the
architectures and nothing else.

The corpus is *generated*, not downloaded: ``datasets.make_corpus`` writes seeded English
sentences from a small grammar (subjects, verbs, objects, places, times, a few sentence
shapes). It is regular enough for a small model to learn in a couple of minutes on one
CPU thread, and varied enough that the model has to learn spelling, word order and
agreement rather than memorise a handful of lines. The first 90 % of the text trains,
the last 10 % validates.

Training: random windows of ``block_size + 1`` characters, next-character cross-entropy
at every position (``logits[:, t]`` predicts ``chars[t + 1]``), AdamW (no decay on
LayerNorm / RMSNorm gains and biases, nor on the position table), global gradient-norm clipping,
linear warm-up then a cosine. The reference point for the loss is the corpus's unigram
entropy: what a model that knows the character frequencies but no context would score.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import GPTConfig, LlamaConfig
from ..functional.softmax import cross_entropy_backward, cross_entropy_forward
from ..inference.sampling import generate
from ..models.gpt import GPT
from ..models.llama import Llama
from ..optim import AdamW, linear_warmup_cosine
from ..training.loop import NonFiniteError, clip_or_stop, nonfinite_kind, save_due, stop_requested
from .datasets import make_corpus

CHARLM_MODELS = ("gpt", "llama")  # what ``train --task charlm --model`` can train; the GPT is the default

# ---------------------------------------------------------------------------- characters <-> ids


@dataclass(frozen=True)
class CharVocab:
    """Every distinct character of a text, sorted; id = position in ``chars``."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> int64 ids; a character outside the vocabulary is a ``ValueError`` naming it."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"text: characters {unknown!r} are not in the vocabulary {self.chars!r}")
        return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids: np.ndarray) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the character frequencies: the loss of the best context-free model."""
    p = np.bincount(ids, minlength=vocab_size) / ids.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class CharLMConfig:
    """Defaults: readable samples after about two minutes on one CPU thread (float32).

    ``model`` picks the network; ``d_model``, ``n_heads`` and ``n_layers`` are shared by both, and
    the ``llama_*`` fields are the Llama's own. With the defaults the two have about the same
    number of parameters (411 392 for the GPT, 411 904 for the Llama, with the corpus's 43
    characters): the Llama spends what grouped-query attention and the missing position table
    and biases save on a wider SwiGLU.
    """

    corpus_chars: int = 200_000
    block_size: int = 64  # characters per training window (T)
    batch_size: int = 32
    model: str = "gpt"  # one of CHARLM_MODELS; "gpt" for the files written before the field existed
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 256  # 2 * C: the exact GELU over (B, T, F) is a large share of a step on the CPU
    dropout: float = 0.0  # 180k training characters of a regular grammar: the model underfits at this budget
    # The Llama only (model="llama"). Its head is tied to the embeddings, as the GPT's is.
    llama_n_kv_heads: int = 2  # key/value heads shared by groups of 2 query heads (GQA): half the K/V weights
    llama_d_ff: int = 224  # SwiGLU width: three (C, F) matrices; 224 brings the count to the GPT's (see above)
    llama_rope_theta: float = 10000.0  # base of the rotary frequencies, as Llama 2
    steps: int = 500
    warmup_steps: int = 50
    peak_lr: float = 3e-3
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    eval_every: int = 100
    eval_windows: int = 64  # validation windows of block_size + 1 characters, spread over the split
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("corpus_chars", "block_size", "batch_size", "steps", "eval_every", "eval_windows")
        for name in (*positive, "llama_n_kv_heads", "llama_d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.model not in CHARLM_MODELS:
            raise ValueError(f"model: expected one of {CHARLM_MODELS}, got {self.model!r}")
        theta = self.llama_rope_theta
        if not isinstance(theta, int | float) or isinstance(theta, bool) or not 0 < theta < float("inf"):
            raise ValueError(f"llama_rope_theta: expected a finite number > 0, got {theta!r}")
        if self.model == "llama" and self.dropout != 0:
            raise ValueError(f"dropout: the Llama has no dropout; expected 0.0 with model='llama', got {self.dropout}")

    def model_config(self, vocab_size: int) -> GPTConfig | LlamaConfig:
        """The config of the network ``model`` names, for a vocabulary of ``vocab_size`` characters."""
        if self.model == "llama":
            return LlamaConfig(
                vocab_size=vocab_size, max_len=self.block_size, d_model=self.d_model, n_heads=self.n_heads,
                n_kv_heads=self.llama_n_kv_heads, n_layers=self.n_layers, d_ff=self.llama_d_ff,
                rope_theta=self.llama_rope_theta, tie_embeddings=True,
            )  # fmt: skip
        return GPTConfig(
            vocab_size=vocab_size, max_len=self.block_size, d_model=self.d_model, n_heads=self.n_heads,
            n_layers=self.n_layers, d_ff=self.d_ff, dropout=self.dropout,
        )  # fmt: skip

    def build_model(self, vocab_size: int, dtype: np.dtype | type, rng: np.random.Generator) -> GPT | Llama:
        """A fresh :class:`GPT` or :class:`Llama` (``model``), its weights drawn from ``rng``."""
        config = self.model_config(vocab_size)
        return Llama(config, dtype=dtype, rng=rng) if self.model == "llama" else GPT(config, dtype=dtype, rng=rng)


class CharLMTrainer(Protocol):
    """One backend's half of a charlm step: :class:`NumpyCharLMTrainer` here, the twin's in torch_transformer."""

    backend: str

    def train_step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, dropout_masks: dict[str, Any] | None = None
    ) -> tuple[float, dict[str, Any]]: ...

    def evaluate(self, windows: np.ndarray) -> float: ...


@dataclass
class CharLMRun:
    """A model being trained (or trained), its vocabulary and what happened on the way.

    Everything :func:`train_charlm` needs to continue is here, which is what ``train --resume``
    saves: the NumPy model and its optimizer (one AdamW, two parameter groups: decayed and not), the
    generator of dropout masks (``rng``; a Llama draws none, but its state is saved all the same) and of
    training windows (``batch_rng``), each step's loss.
    ``trainers``: who trains, by default the NumPy model alone; the torch backend puts the twin's
    trainer here instead (``train --task charlm --backend torch``), ``--compare`` both.
    """

    model: GPT | Llama
    vocab: CharVocab
    optimizer: AdamW
    unigram_entropy: float  # nats, of the training split
    rng: np.random.Generator = field(repr=False)  # dropout masks
    batch_rng: np.random.Generator = field(repr=False)  # the random training windows
    trainers: list[CharLMTrainer] = field(default_factory=list, repr=False)
    # {"step", "backend", "train_loss", "val_loss", "seconds"}; seconds: of the run (training and the evaluations
    # before this one) when this evaluation began, for validation loss against time
    evals: list[dict[str, Any]] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)  # backend -> the training loss of each step
    seconds: float = 0.0
    steps_done: int = 0
    stopped: bool = False  # train_charlm returned early because should_stop asked it to


class CharData:
    """The corpus as ids, split 90 / 10 into training and validation text."""

    def __init__(self, cfg: CharLMConfig) -> None:
        text = make_corpus(cfg.corpus_chars, cfg.seed)
        self.vocab = CharVocab.from_text(text)
        ids = self.vocab.encode(text)
        cut = int(0.9 * ids.size)
        self.train, self.val = ids[:cut], ids[cut:]
        W = cfg.block_size + 1
        if self.val.size < W:
            raise ValueError(f"corpus_chars: {cfg.corpus_chars} leaves fewer than block_size + 1 validation characters")
        starts = np.linspace(0, self.val.size - W, cfg.eval_windows).astype(np.int64)
        self.val_windows = self.val[starts[:, None] + np.arange(W)]  # (n, W), fixed

    def batch(self, rng: np.random.Generator, batch_size: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Random training windows: inputs (B, T) and their next characters (B, T)."""
        starts = rng.integers(0, self.train.size - block_size, size=batch_size)
        windows = self.train[starts[:, None] + np.arange(block_size + 1)]  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]


BETAS = (0.9, 0.99)  # AdamW's, for both backends


def no_decay(name: str) -> bool:
    """LayerNorm and RMSNorm parameters, biases and the position table are not decayed (as nanoGPT / GPT-2).

    The Llama's norms are named as the GPT's (``layers.i.norm1.weight``, ``norm.weight``), and it has
    no biases and no position table: only its gains are left out.
    """
    return name.endswith("bias") or ".norm" in name or name.startswith("norm.") or name.startswith("pos_embed")


def evaluate(model: GPT | Llama, windows: np.ndarray) -> float:
    """Mean next-character cross-entropy (nats) over ``windows`` (n, T + 1), in eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for chunk in np.array_split(windows, max(1, len(windows) // 32)):
        logits, _ = model.forward(chunk[:, :-1])
        loss, _ = cross_entropy_forward(logits, chunk[:, 1:])
        total += float(loss) * len(chunk)
    model.train(was_training)
    return total / len(windows)


def forward_for_training(
    model: GPT | Llama, x: np.ndarray, rng: np.random.Generator, dropout_masks: dict[str, Any] | None = None
) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """``(logits (B, T, V), cache, the dropout masks used)`` of one training forward pass.

    The GPT draws its dropout masks from ``rng`` (or replays ``dropout_masks``). A Llama has no
    dropout, and its ``forward`` takes the ids alone: no mask is drawn and none is needed to replay
    the step in the twin, so the masks are ``{}``.
    """
    if isinstance(model, Llama):
        logits, cache = model.forward(x)
        return logits, cache, {}
    logits, cache = model.forward(x, rng=rng, dropout_masks=dropout_masks)
    return logits, cache, cache.dropout_masks


class NumpyCharLMTrainer:
    """Next-character cross-entropy, clipping and AdamW on the NumPy :class:`GPT` or :class:`Llama`."""

    backend = "numpy"

    def __init__(self, model: GPT | Llama, optimizer: AdamW, rng: np.random.Generator, clip_norm: float) -> None:
        self.model, self.optimizer, self.rng, self.clip_norm = model, optimizer, rng, clip_norm

    def train_step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, dropout_masks: dict[str, Any] | None = None
    ) -> tuple[float, dict[str, Any]]:
        """One update at rate ``lr``; (the loss, the dropout masks drawn). :class:`NonFiniteError` before any
        update if the loss or a gradient is not finite."""
        model = self.model
        model.train()
        logits, cache, masks = forward_for_training(model, x, self.rng, dropout_masks)
        loss, loss_cache = cross_entropy_forward(logits, y)
        if not np.isfinite(loss):  # stop before any update: the model keeps the last good weights
            raise NonFiniteError(step, "loss", nonfinite_kind(loss), "numpy")
        model.zero_grad()
        model.backward(cross_entropy_backward(1.0, loss_cache), cache)
        clip_or_stop(model, self.clip_norm, step)  # NonFiniteError naming the first bad gradient
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return float(loss), masks

    def evaluate(self, windows: np.ndarray) -> float:
        return evaluate(self.model, windows)


def start_charlm(cfg: CharLMConfig, dtype: np.dtype | type = np.float32) -> CharLMRun:
    """A fresh run: the model (``cfg.model``) drawn from ``cfg.seed``, AdamW (no decay on norm parameters,
    biases or the position table), the generators, the NumPy trainer, nothing trained yet."""
    data = CharData(cfg)
    rng = np.random.default_rng(cfg.seed)
    model = cfg.build_model(data.vocab.size, dtype, rng)
    triples = [(n, p, g) for (n, p), (_, g) in zip(model.named_parameters(), model.named_grads(), strict=True)]
    groups = [
        {"params": [t for t in triples if not no_decay(t[0])], "weight_decay": cfg.weight_decay},
        {"params": [t for t in triples if no_decay(t[0])], "weight_decay": 0.0},
    ]
    optimizer = AdamW(groups, lr=0.0, betas=BETAS)
    batch_rng = np.random.default_rng([cfg.seed, 1])
    run = CharLMRun(model, data.vocab, optimizer, unigram_entropy(data.train, data.vocab.size), rng, batch_rng)
    run.trainers = [NumpyCharLMTrainer(model, optimizer, rng, cfg.clip_norm)]
    return run


def train_charlm(
    cfg: CharLMConfig,
    dtype: np.dtype | type = np.float32,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    *,
    run: CharLMRun | None = None,
    save_every: int | None = None,
    on_save: Callable[[CharLMRun], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CharLMRun:
    """Train a :class:`GPT` (or a :class:`Llama`) on the built-in corpus; evaluate at step 0, every ``eval_every``
    steps and at the end.

    ``run``: continue this run (from :func:`start_charlm`, or rebuilt from a checkpoint) at step
    ``run.steps_done + 1``; by default a fresh one. Every trainer in ``run.trainers`` trains on the
    same windows; with two, the first draws the dropout masks and the second replays them.
    ``on_step(step, {backend: loss})`` after each step. ``on_save(run)`` is called every
    ``save_every`` steps, after the last, and when ``should_stop()`` (asked after every step) says
    yes; then the run returns with ``stopped`` set.
    """
    data = CharData(cfg)
    run = run if run is not None else start_charlm(cfg, dtype)
    for trainer in run.trainers:
        run.losses.setdefault(trainer.backend, [])

    def record(step: int, trainer: CharLMTrainer) -> None:
        before = [e["step"] for e in run.evals if e["backend"] == trainer.backend]
        recent = run.losses[trainer.backend][before[-1] :] if before else []
        train_loss = float(np.mean(recent)) if recent else float("nan")
        seconds = time.perf_counter() - start  # the run's clock when this evaluation starts
        row = {"step": step, "backend": trainer.backend, "train_loss": train_loss,
               "val_loss": trainer.evaluate(data.val_windows), "seconds": seconds}  # fmt: skip
        run.evals.append(row)
        if on_eval is not None:
            on_eval(row)

    start = time.perf_counter() - run.seconds
    if run.steps_done == 0:
        for trainer in run.trainers:
            record(0, trainer)
    for step in range(run.steps_done + 1, cfg.steps + 1):
        x, y = data.batch(run.batch_rng, cfg.batch_size, cfg.block_size)
        lr = linear_warmup_cosine(step, cfg.peak_lr, min(cfg.warmup_steps, cfg.steps), cfg.steps)
        masks, losses = None, {}
        for trainer in run.trainers:
            loss, drawn = trainer.train_step(x, y, lr, step, masks)
            masks = masks if masks is not None else drawn
            losses[trainer.backend] = loss
            run.losses[trainer.backend].append(loss)
        run.steps_done = step
        if on_step is not None:
            on_step(step, losses)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            for trainer in run.trainers:
                record(step, trainer)
        run.stopped = stop_requested(step, cfg.steps, should_stop)
        run.seconds = time.perf_counter() - start
        if on_save is not None and save_due(step, cfg.steps, save_every, run.stopped):
            on_save(run)
        if run.stopped:
            break
    run.seconds = time.perf_counter() - start
    return run


def sample_text(
    model: GPT | Llama,
    vocab: CharVocab,
    prompt: str,
    n_chars: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> str:
    """``prompt`` continued by up to ``n_chars`` characters (fewer if the context window ends first)."""
    ids = vocab.encode(prompt)[None, :]  # (1, P)
    n = min(n_chars, model.config.max_len - ids.shape[1])
    result = generate(model, ids, n, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
    return vocab.decode(result.tokens[0])
