"""A character-level language model on a built-in corpus: the :class:`GPT` trained end to end.

``python -m numpy_transformer train --task charlm`` runs :func:`run_cli`.

The corpus is *generated*, not downloaded: :func:`make_corpus` writes seeded English
sentences from a small grammar (subjects, verbs, objects, places, times, a few sentence
shapes). It is regular enough for a small model to learn in a couple of minutes on one
CPU thread, and varied enough that the model has to learn spelling, word order and
agreement rather than memorise a handful of lines. The first 90 % of the text trains,
the last 10 % validates.

Training: random windows of ``block_size + 1`` characters, next-character cross-entropy
at every position (``logits[:, t]`` predicts ``chars[t + 1]``), AdamW (no decay on
LayerNorm parameters, biases or the position table), global gradient-norm clipping,
linear warm-up then a cosine. The reference point for the loss is the corpus's unigram
entropy: what a model that knows the character frequencies but no context would score.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import GPTConfig
from ..functional.softmax import cross_entropy_backward, cross_entropy_forward
from ..inference.sampling import generate
from ..models.gpt import GPT
from ..optim import AdamW, clip_grad_norm, linear_warmup_cosine

# ---------------------------------------------------------------------------- the corpus

_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Lena", "Max")
_NOUNS = (
    "cat", "dog", "bird", "fox", "horse", "teacher", "farmer", "child", "baker", "sailor", "queen", "king",
    "painter", "doctor", "rabbit", "owl",
)  # fmt: skip
_THINGS = (
    "apple", "book", "letter", "lamp", "basket", "map", "key", "hat", "cake", "boat", "song", "stone", "box",
    "coat", "flower", "cup",
)  # fmt: skip
_ADJECTIVES = (
    "small", "old", "happy", "quiet", "brave", "green", "tired", "clever", "young", "red", "kind", "little",
    "bright", "lazy",
)  # fmt: skip
_TRANSITIVE = (
    ("found", "finds"), ("carried", "carries"), ("painted", "paints"), ("liked", "likes"), ("opened", "opens"),
    ("lost", "loses"), ("wanted", "wants"), ("brought", "brings"), ("washed", "washes"), ("sold", "sells"),
)  # fmt: skip
_INTRANSITIVE = (
    ("slept", "sleeps"), ("sang", "sings"), ("waited", "waits"), ("laughed", "laughs"), ("walked", "walks"),
    ("danced", "dances"), ("smiled", "smiles"), ("worked", "works"),
)  # fmt: skip
_PLACES = (
    "in the garden", "near the river", "at the market", "in the kitchen", "on the hill", "by the sea",
    "under the old tree", "in the village", "at school", "on the bridge",
)  # fmt: skip
_TIMES = ("in the morning", "after dinner", "every day", "at night", "on sunday", "before the rain", "in winter")
_FEELINGS = ("happy", "sad", "tired", "hungry", "calm", "proud", "surprised")


def _choice(rng: np.random.Generator, options: tuple) -> object:
    return options[rng.integers(len(options))]


def _subject(rng: np.random.Generator) -> str:
    if rng.random() < 0.35:
        return _choice(rng, _NAMES)
    adjective = f"{_choice(rng, _ADJECTIVES)} " if rng.random() < 0.5 else ""
    return f"the {adjective}{_choice(rng, _NOUNS)}"


def _object(rng: np.random.Generator) -> str:
    thing = _choice(rng, _THINGS)
    if rng.random() < 0.4:
        thing = f"{_choice(rng, _ADJECTIVES)} {thing}"
    article = "an" if thing[0] in "aeiou" else "a"
    return f"{article} {thing}" if rng.random() < 0.5 else f"the {thing}"


def _sentence(rng: np.random.Generator) -> str:
    """One sentence from the grammar, capitalised and with its full stop."""
    form = rng.integers(6)
    tense = rng.integers(2)  # 0: past, 1: present (third person singular)
    subject = _subject(rng)
    if form == 0:
        words = f"{subject} {_choice(rng, _TRANSITIVE)[tense]} {_object(rng)} {_choice(rng, _PLACES)}"
    elif form == 1:
        words = f"{subject} {_choice(rng, _INTRANSITIVE)[tense]} {_choice(rng, _TIMES)}"
    elif form == 2:
        verb = ("was", "is")[tense]
        cause = f"{_subject(rng)} {_choice(rng, _TRANSITIVE)[tense]} {_object(rng)}"
        words = f"{subject} {verb} {_choice(rng, _FEELINGS)} because {cause}"
    elif form == 3:
        words = f"{_choice(rng, _TIMES)}, {subject} {_choice(rng, _INTRANSITIVE)[tense]} {_choice(rng, _PLACES)}"
    elif form == 4:
        words = f"{subject} {_choice(rng, _TRANSITIVE)[tense]} {_object(rng)} and {_choice(rng, _INTRANSITIVE)[tense]}"
    else:
        words = f"{subject} and {_subject(rng)} {_choice(rng, _INTRANSITIVE)[0]} {_choice(rng, _PLACES)}"
    return words[0].upper() + words[1:] + "."


def make_corpus(n_chars: int = 200_000, seed: int = 0) -> str:
    """At least ``n_chars`` characters of generated English: sentences, five or so to a line."""
    rng = np.random.default_rng(seed)
    lines, total = [], 0
    while total < n_chars:
        line = " ".join(_sentence(rng) for _ in range(int(rng.integers(3, 8))))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


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
    """Defaults: readable samples after about two minutes on one CPU thread (float32)."""

    corpus_chars: int = 200_000
    block_size: int = 64  # characters per training window (T)
    batch_size: int = 32
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 256  # 2 * C: the exact GELU over (B, T, F) is a large share of a step on the CPU
    dropout: float = 0.0  # 180k training characters of a regular grammar: the model underfits at this budget
    steps: int = 500
    warmup_steps: int = 50
    peak_lr: float = 3e-3
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    eval_every: int = 100
    eval_windows: int = 64  # validation windows of block_size + 1 characters, spread over the split
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("corpus_chars", "block_size", "batch_size", "steps", "eval_every", "eval_windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(
            vocab_size=vocab_size, max_len=self.block_size, d_model=self.d_model, n_heads=self.n_heads,
            n_layers=self.n_layers, d_ff=self.d_ff, dropout=self.dropout,
        )  # fmt: skip


@dataclass
class CharLMRun:
    """A trained model, its vocabulary and what happened on the way."""

    model: GPT
    vocab: CharVocab
    optimizer: AdamW
    unigram_entropy: float  # nats, of the training split
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step", "train_loss", "val_loss"}
    seconds: float = 0.0


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


def _no_decay(name: str) -> bool:
    """LayerNorm parameters, biases and the position table are not decayed (as nanoGPT / GPT-2)."""
    return name.endswith("bias") or ".norm" in name or name.startswith("norm.") or name.startswith("pos_embed")


def evaluate(model: GPT, windows: np.ndarray) -> float:
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


def train_charlm(
    cfg: CharLMConfig,
    dtype: np.dtype | type = np.float32,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> CharLMRun:
    """Train a :class:`GPT` on the built-in corpus; evaluate at step 0, every ``eval_every`` steps and at the end."""
    data = CharData(cfg)
    rng = np.random.default_rng(cfg.seed)
    model = GPT(cfg.model_config(data.vocab.size), dtype=dtype, rng=rng)
    decay = [(n, p, g) for (n, p), (_, g) in zip(model.named_parameters(), model.named_grads(), strict=True)]
    opt = AdamW([t for t in decay if not _no_decay(t[0])], lr=0.0, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    opt_plain = AdamW([t for t in decay if _no_decay(t[0])], lr=0.0, betas=(0.9, 0.99), weight_decay=0.0)
    run = CharLMRun(model, data.vocab, opt, unigram_entropy(data.train, data.vocab.size))
    batch_rng = np.random.default_rng([cfg.seed, 1])

    def record(step: int, train_loss: float) -> None:
        row = {"step": step, "train_loss": train_loss, "val_loss": evaluate(model, data.val_windows)}
        run.evals.append(row)
        if on_eval is not None:
            on_eval(row)

    start = time.perf_counter()
    record(0, float("nan"))
    recent: list[float] = []
    model.train()
    for step in range(1, cfg.steps + 1):
        x, y = data.batch(batch_rng, cfg.batch_size, cfg.block_size)
        logits, cache = model.forward(x, rng=rng)
        loss, loss_cache = cross_entropy_forward(logits, y)
        model.zero_grad()
        model.backward(cross_entropy_backward(1.0, loss_cache), cache)
        clip_grad_norm(model, cfg.clip_norm)
        opt.lr = opt_plain.lr = linear_warmup_cosine(step, cfg.peak_lr, min(cfg.warmup_steps, cfg.steps), cfg.steps)
        opt.step()
        opt_plain.step()
        recent.append(float(loss))
        if on_step is not None:
            on_step(step, float(loss))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step, float(np.mean(recent)))
            recent = []
    run.seconds = time.perf_counter() - start
    return run


def sample_text(
    model: GPT,
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
