"""Data sets: an English corpus for the character LM, review sentences for fine-tuning, digit images.

The first two are written from small seeded grammars, so nothing is downloaded and every run sees the same
text; the digits are scikit-learn's 8 x 8 images (shipped inside that package), split by a seed.
(The toy seq2seq tasks the training loop learns, copy / reverse / sort, live in ``training/tasks.py``.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LABEL_NAMES",
    "DigitsData",
    "SentenceDataset",
    "WordTokenizer",
    "best_single_word_accuracy",
    "digits_dataset",
    "make_corpus",
    "sentiment_dataset",
]

LABEL_NAMES = ("negative", "positive")

# ---------------------------------------------------------------------------- the character LM's corpus

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


# ---------------------------------------------------------------------------- the sentiment sentences

_POSITIVE = (
    "great", "wonderful", "excellent", "delightful", "superb", "fantastic", "pleasant", "lovely", "charming",
    "brilliant", "enjoyable", "impressive",
)  # fmt: skip
_NEGATIVE = (
    "awful", "terrible", "dreadful", "boring", "bland", "disappointing", "mediocre", "horrible", "dull",
    "unpleasant", "tedious", "annoying",
)  # fmt: skip
_SUBJECTS = (
    "the food", "the service", "the movie", "the plot", "the acting", "the hotel room", "the staff", "the music",
    "the book", "the soup", "the concert", "the phone", "the game", "the trip", "the coffee", "the show",
)  # fmt: skip

# Sentence shapes: (template, how the label follows from the polarity of {a} (and {b})).
# "same": label = polarity of {a}; "flip": the opposite; "second": polarity of {b}, with {a} of the
# other polarity, so both kinds of word are in the sentence and only their order tells.
_SHAPES: tuple[tuple[str, str], ...] = (
    ("{s} was {a}.", "same"),
    ("honestly, {s} was really {a}.", "same"),
    ("everyone said {s} would be {a}, and it was.", "same"),
    ("{s} was not {a} at all.", "flip"),
    ("{s} was far from {a}.", "flip"),
    ("i would never call {s} {a}.", "flip"),
    ("everyone said {s} would be {a}, but it was not.", "flip"),
    ("i expected {s} to be {a}, but it was {b}.", "second"),
    ("{s} looked {a} at first, but in the end it was {b}.", "second"),
)


@dataclass(frozen=True)
class SentenceDataset:
    """Sentences with integer labels, split into a training and a validation part."""

    train_sentences: tuple[str, ...]
    train_labels: np.ndarray  # (N_train,) int64
    val_sentences: tuple[str, ...]
    val_labels: np.ndarray  # (N_val,) int64
    label_names: tuple[str, ...] = LABEL_NAMES

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[list[str], np.ndarray]]:
        """One epoch of shuffled ``(sentences, labels)`` batches; the last one may be smaller."""
        order = rng.permutation(len(self.train_sentences))
        for start in range(0, order.size, batch_size):
            idx = order[start : start + batch_size]
            yield [self.train_sentences[i] for i in idx], self.train_labels[idx]

    def val_batches(self, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
        for start in range(0, len(self.val_sentences), batch_size):
            yield list(self.val_sentences[start : start + batch_size]), self.val_labels[start : start + batch_size]

    def subset(self, n_train: int, n_val: int) -> SentenceDataset:
        """The first ``n_train`` training and ``n_val`` validation sentences (already shuffled)."""
        return SentenceDataset(
            self.train_sentences[:n_train],
            self.train_labels[:n_train],
            self.val_sentences[:n_val],
            self.val_labels[:n_val],
            self.label_names,
        )


def sentiment_dataset(n_sentences: int = 400, val_fraction: float = 0.25, seed: int = 0) -> SentenceDataset:
    """``n_sentences`` distinct generated review sentences, half positive, split train / validation.

    A sentence is made from one of the shapes in ``_SHAPES`` (two thirds of them with a
    negation or a contrast), a subject and one or two adjectives. The label is the
    sentiment of the whole sentence: "the soup was not bland at all." is positive, "i
    expected the movie to be brilliant, but it was dull." negative. So a classifier
    that looks for one sentiment word is right on the plain sentences only.
    """
    if not isinstance(n_sentences, int) or isinstance(n_sentences, bool) or not 20 <= n_sentences <= 5000:
        raise ValueError(f"n_sentences: expected an int in [20, 5000], got {n_sentences!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    rng = np.random.default_rng([seed, 9])
    seen: set[str] = set()
    sentences: list[str] = []
    labels: list[int] = []
    want = n_sentences // 2
    per_label = [0, 0]
    while len(sentences) < 2 * want:
        template, rule = _SHAPES[rng.integers(len(_SHAPES))]
        first_positive = bool(rng.integers(2))
        a = _pick(rng, _POSITIVE if first_positive else _NEGATIVE)
        b = _pick(rng, _NEGATIVE if first_positive else _POSITIVE)  # only used by "second": the other polarity
        text = template.format(s=_pick(rng, _SUBJECTS), a=a, b=b)
        label = int(first_positive) if rule == "same" else int(not first_positive)
        if text in seen or per_label[label] >= want:
            continue
        seen.add(text)
        sentences.append(text)
        labels.append(label)
        per_label[label] += 1
    y = np.asarray(labels, dtype=np.int64)
    n_val = max(1, round(want * val_fraction))  # per label: the split is stratified, both parts balanced
    parts = [rng.permutation(np.flatnonzero(y == c)) for c in (0, 1)]
    val = rng.permutation(np.concatenate([p[:n_val] for p in parts]))
    train = rng.permutation(np.concatenate([p[n_val:] for p in parts]))
    return SentenceDataset(
        tuple(sentences[i] for i in train), y[train], tuple(sentences[i] for i in val), y[val], LABEL_NAMES
    )


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def best_single_word_accuracy(sentences: Sequence[str], labels: np.ndarray) -> tuple[float, str]:
    """The accuracy of the best rule "word w present -> label c, else the other label", and its word.

    How far a one-keyword classifier gets; the strategies have to do better than that.
    """
    words = [set(_words(s)) for s in sentences]
    best = (float(np.mean(labels == np.bincount(labels).argmax())), "")  # the majority class
    for w in sorted(set().union(*words)):
        has = np.array([w in ws for ws in words])
        for c in (0, 1):
            acc = float(np.mean(np.where(has, c, 1 - c) == labels))
            best = max(best, (acc, w))
    return best


def _words(sentence: str) -> list[str]:
    return re.findall(r"[a-z']+|[.,!?]", sentence.lower())


class WordTokenizer:
    """A word-level tokenizer over a fixed vocabulary, for small randomly initialised models.

    Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]``, 3 ``[SEP]``, then the words of ``sentences``
    in sorted order. Calling it gives what ``load_minilm(...).tokenize`` gives:
    ``(input_ids, attention_mask, token_type_ids)``, int64 (B, S), ``[CLS] words [SEP]``,
    right-padded to the batch's longest.
    """

    SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")

    def __init__(self, sentences: Sequence[str]) -> None:
        words = sorted({w for s in sentences for w in _words(s)})
        self.vocab = {w: i for i, w in enumerate((*self.SPECIALS, *words))}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __call__(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [[2, *(self.vocab.get(w, 1) for w in _words(s)), 3] for s in sentences]
        S = max(len(r) for r in rows)
        ids = np.zeros((len(rows), S), dtype=np.int64)  # (B, S), 0 = [PAD]
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        mask = (ids != 0).astype(np.int64)
        return ids, mask, np.zeros_like(ids)


# ---------------------------------------------------------------------------- handwritten digits (images)


@dataclass(frozen=True)
class DigitsData:
    """scikit-learn's 1 797 digits, 8 x 8 grey images scaled to [0, 1], split once by a seed.

    ``x_*`` (N, 1, 8, 8) in the requested dtype, ``y_*`` (N,) int64 in 0..9. The split is stratified
    (each digit split in the same proportion), and no test image is ever in the training set.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_dataset(seed: int = 0, test_fraction: float = 0.2, dtype: np.dtype | type = np.float32) -> DigitsData:
    """The digits split ``1 - test_fraction`` / ``test_fraction`` per class, shuffled by ``seed``.

    Needs scikit-learn (its ``load_digits`` reads a table shipped inside the package: no download).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits come from scikit-learn: pip install 'numpy-transformer[vision]' (or scikit-learn)"
        ) from exc
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(dtype)[:, None]  # (1797, 1, 8, 8), pixel values 0..16 -> [0, 1]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng([seed, 7])
    train, test = [], []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_test = round(test_fraction * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = rng.permutation(np.concatenate(train)), np.sort(np.concatenate(test))
    return DigitsData(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])
