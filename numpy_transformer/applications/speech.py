r"""Speech to text with the NumPy Whisper: WAV files in, greedy transcripts out, and what the decoder looked at.

Shape legend: ``R`` rows decoded together, ``S`` encoder positions (1500 = 30 s, 20 ms each), ``H`` the
heads shown, ``L`` tokens, ``V`` vocabulary.

The pipeline (:func:`transcribe`)::

    wav --wave--> int PCM --/ 2^(bits-1)--> float in [-1, 1] --mean over channels--> mono
        --resample_poly(16000 / rate)--> 16 kHz --log_mel_spectrogram_forward--> (1, 80, 3000)
        --encoder--> memory (1, 1500, 384) --greedy decoding, KV cache--> tokens --tokenizer--> text

Decoding follows Whisper's English-only models: the prompt is ``<|startoftranscript|><|notimestamps|>``
(:class:`WhisperStepping` feeds the first in ``start``; the search's ``bos_id`` is the second), the
ids of ``config.json``'s ``suppress_ids`` are never chosen, nor any id from ``<|notimestamps|>`` on
(timestamps), and ``suppress_ids_begin`` (the blank and end-of-text) not as the first token. The
searches of :mod:`numpy_transformer.inference.search` drive it through the stepping protocol; the KV
cache is :mod:`numpy_transformer.modules.kv_cache`'s.

The cross-attention returned per step is that of Whisper's *alignment heads* (the (layer, head) pairs
in ``config.json`` that OpenAI found to follow the timing of the words), so ``tokens x frames`` is a rough
alignment of the transcript on the audio.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import wave
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..functional.audio import WHISPER_HOP, WHISPER_SAMPLE_RATE, log_mel_spectrogram_forward
from ..functional.linear import linear_forward
from ..inference.protocol import FullPrefixStepper, Stepper, check_step_ids
from ..inference.search import greedy_decode
from ..models.whisper import WhisperForConditionalGeneration, check_input_features
from ..modules.kv_cache import DecoderLayerKV, cached_decoder_layer, check_rows
from .whisper_weights import PretrainedWhisper

SOT, NO_TIMESTAMPS, EOT = "<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>"

# ---------------------------------------------------------------------------- audio files


class AudioFileError(ValueError):
    """A file that is not a readable PCM WAV; the message names the file."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV (8, 16, 24 or 32 bit, any channels) as a float64 mono waveform in [-1, 1] and its rate.

    Channels are averaged. Raises :class:`AudioFileError` for a missing file, a file that is not a WAV,
    a compressed one or an empty one.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise AudioFileError(f"{path}: not a PCM WAV file ({exc or type(exc).__name__})") from None
    if n == 0 or not raw:
        raise AudioFileError(f"{path}: the WAV holds no samples")
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128  # 8-bit WAV is unsigned
    elif width in (2, 4):
        x = np.frombuffer(raw, f"<i{width}").astype(np.float64) / 2.0 ** (8 * width - 1)
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 2**23, v - 2**24, v).astype(np.float64) / 2.0**23
    else:
        raise AudioFileError(f"{path}: {8 * width}-bit samples; expected 8, 16, 24 or 32-bit PCM")
    x = x[: (x.size // channels) * channels].reshape(-1, channels).mean(axis=1)  # (samples,) mono
    return x, rate


def resample(audio: np.ndarray, rate: int, target: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """``audio`` (samples,) at ``rate`` Hz -> ``target`` Hz by ``scipy.signal.resample_poly`` (anti-aliased)."""
    if rate == target:
        return audio
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(audio, target // g, int(rate) // g)


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` speech synthesiser is on the PATH (Debian: ``apt-get install espeak-ng``)."""
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, path: str | Path, voice: str = "en-us", words_per_minute: int = 150) -> Path:
    """Speak ``text`` into a WAV (22.05 kHz, 16-bit mono) with ``espeak-ng``; return the path."""
    if not espeak_available():
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    path = Path(path)
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return path


# ---------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodingFacts:
    """What the searches read of a model's config: the vocabulary, the id they never choose, the most steps."""

    tgt_vocab_size: int
    pad_id: int  # <|startoftranscript|>: suppressed anyway, and what a finished row is filled with
    max_len: int


class WhisperStepper:
    """The :class:`~numpy_transformer.inference.protocol.Stepper` of Whisper's decoder with a KV cache.

    The prompt (ids fed by :meth:`WhisperStepping.start` before the search's first token) is run first;
    each :meth:`step` then feeds one token at the next position: its embedding plus the learned position,
    the cached decoder layers (:func:`~numpy_transformer.modules.kv_cache.cached_decoder_layer`: the
    self-attention keys grow, the cross-attention keys and values of the audio are computed once), the final
    LayerNorm and the tied projection. The logits of suppressed ids are ``-inf``.
    """

    def __init__(self, stepping: WhisperStepping, memory: np.ndarray, capacity: int) -> None:
        model = stepping.model
        self.stepping, self.model = stepping, model
        self.capacity = len(stepping.prompt) + capacity
        self.layers = [DecoderLayerKV.start(layer, memory, self.capacity) for layer in model.decoder.layers]
        self.length = 0
        self.rows = memory.shape[0]
        if stepping.prompt:
            for token in stepping.prompt:
                self._forward(np.full(self.rows, token, dtype=np.int64))

    @property
    def batch_size(self) -> int:
        return self.rows

    def _forward(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dec = self.model.decoder
        t = self.length
        if t == self.capacity:
            raise ValueError(f"capacity: all {self.capacity} positions are fed; start with a larger capacity")
        x = dec.embed_tokens[token_ids][:, None] + dec.embed_positions[t : t + 1]  # (R, 1, C)
        weights = []
        for i, layer in enumerate(dec.layers):
            x, w, self.layers[i] = cached_decoder_layer(layer, x, self.layers[i], None, None)  # (R, 1, C)
            weights.append(w[:, :, 0])  # (R, H, S)
        self.length = t + 1
        y, _ = dec.norm.forward(x)
        logits, _ = linear_forward(y[:, 0], dec.embed_tokens)  # (R, V): tied
        return logits, np.stack(weights, axis=1)  # (R, layers, H, S)

    def step(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        check_step_ids(token_ids, self.rows, self.model.config.vocab_size)
        first = self.length == len(self.stepping.prompt)  # the search's first token: the next one is the first chosen
        logits, weights = self._forward(token_ids)
        return self.stepping.suppress(logits, first_choice=first), self.stepping.heads_of(weights)

    def reorder(self, rows: np.ndarray) -> None:
        rows = check_rows(rows, self.rows)
        for kv in self.layers:
            kv.reorder(rows)


@dataclass(frozen=True)
class WhisperStepping:
    """The :class:`~numpy_transformer.inference.protocol.Steppable` of a NumPy Whisper: ``src`` is the log-mel.

    ``prompt``: ids fed before the search's ``bos_id`` (Whisper: ``<|startoftranscript|>``, and
    ``bos_id = <|notimestamps|>``). ``suppress_ids`` never chosen; ``suppress_ids_begin`` not first;
    ``suppress_from``: every id from there on never chosen (the timestamps), ``None`` for none.
    ``alignment_heads``: the (layer, head) pairs whose cross-attention the steps return (default: every
    head of the last layer).
    """

    model: WhisperForConditionalGeneration
    prompt: tuple[int, ...]
    suppress_ids: tuple[int, ...] = ()
    suppress_ids_begin: tuple[int, ...] = ()
    suppress_from: int | None = None
    alignment_heads: tuple[tuple[int, int], ...] | None = None

    @property
    def config(self) -> DecodingFacts:
        c = self.model.config
        pad = self.prompt[0] if self.prompt else c.decoder_start_token_id
        return DecodingFacts(tgt_vocab_size=c.vocab_size, pad_id=pad, max_len=c.max_target_positions - len(self.prompt))

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    def check_src(self, src: object) -> np.ndarray:
        return check_input_features(src, self.model.config, self.model.dtype)

    def eval_mode(self) -> AbstractContextManager[object]:
        return self.model.eval_mode()

    def suppress(self, logits: np.ndarray, first_choice: bool) -> np.ndarray:
        """``logits`` (R, V) with the suppressed ids at ``-inf`` (a copy)."""
        logits = logits.copy()
        if self.suppress_ids:
            logits[:, list(self.suppress_ids)] = -np.inf
        if self.suppress_from is not None:
            logits[:, self.suppress_from :] = -np.inf
        if first_choice and self.suppress_ids_begin:
            logits[:, list(self.suppress_ids_begin)] = -np.inf
        return logits

    def heads_of(self, weights: np.ndarray) -> np.ndarray:
        """(R, layers, H, S) cross-attention -> (R, heads shown, S)."""
        if self.alignment_heads is None:
            return weights[:, -1]
        return np.stack([weights[:, layer, head] for layer, head in self.alignment_heads], axis=1)

    def start(self, src: np.ndarray, copies: int, capacity: int, use_cache: bool) -> Stepper:
        memory, _ = self.model.encoder.forward(src)  # (B, S, C)
        if copies > 1:
            memory = np.repeat(memory, copies, axis=0)
        if use_cache:
            return WhisperStepper(self, memory, capacity)
        prompt = np.asarray(self.prompt, dtype=np.int64)

        def last_position(prefix: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ids = np.concatenate([np.broadcast_to(prompt, (prefix.shape[0], prompt.size)), prefix], axis=1)
            logits, cache = self.model.decoder.forward(ids, memory[rows])  # (R, t, V)
            weights = np.stack([w[:, :, -1] for w in cache.cross_attentions], axis=1)  # (R, layers, H, S)
            return self.suppress(logits[:, -1], first_choice=prefix.shape[1] == 1), self.heads_of(weights)

        c = self.config
        return FullPrefixStepper(last_position, memory.shape[0], capacity, c.tgt_vocab_size, c.pad_id)


def whisper_stepping(pretrained: PretrainedWhisper, alignment_heads: bool = True) -> WhisperStepping:
    """The stepping of the pretrained tiny.en, with its suppressions and (``alignment_heads``) its alignment heads."""
    import json

    heads = None
    if alignment_heads:
        extra = json.loads((pretrained.model_dir / "config.json").read_text(encoding="utf-8"))
        heads = tuple((int(a), int(b)) for a, b in extra.get("alignment_heads", ())) or None
    return WhisperStepping(
        model=pretrained.model,
        prompt=(pretrained.token_id(SOT),),
        suppress_ids=pretrained.suppress_ids,
        suppress_ids_begin=pretrained.suppress_ids_begin,
        suppress_from=pretrained.token_id(NO_TIMESTAMPS),
        alignment_heads=heads,
    )


@dataclass(frozen=True)
class Transcript:
    text: str
    tokens: np.ndarray  # (L,) <|notimestamps|>, the chosen tokens, <|endoftext|> (when reached)
    cross_attention: np.ndarray  # (heads, L - 1, S) at each step: which audio positions it read
    log_mel: np.ndarray  # (M, frames) the encoder's input
    duration: float  # seconds of audio (before the padding to 30 s)


def audio_to_log_mel(audio: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A 16 kHz mono waveform (samples,) -> Whisper's (1, 80, 3000) input (padded or trimmed to 30 s)."""
    mel, _ = log_mel_spectrogram_forward(np.asarray(audio, dtype=dtype)[None])
    return mel


def transcribe(
    pretrained: PretrainedWhisper, audio: np.ndarray, max_tokens: int = 128, use_cache: bool = True
) -> Transcript:
    """Greedy transcript of a 16 kHz mono waveform (samples,) by the pretrained Whisper (the first 30 s)."""
    mel = audio_to_log_mel(audio, pretrained.model.dtype)
    steps = whisper_stepping(pretrained)
    result = greedy_decode(steps, mel, max_len=max_tokens, bos_id=pretrained.token_id(NO_TIMESTAMPS),
                           eos_id=pretrained.token_id(EOT), use_cache=use_cache)  # fmt: skip
    tokens = result.tokens[0, : 1 + int(result.lengths[0])]
    text = pretrained.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True).strip()
    return Transcript(text=text, tokens=tokens, cross_attention=result.cross_attention[0, :, : tokens.size - 1],
                      log_mel=mel[0], duration=min(len(audio) / WHISPER_SAMPLE_RATE, 30.0))  # fmt: skip


def transcribe_file(pretrained: PretrainedWhisper, path: str | Path, max_tokens: int = 128) -> Transcript:
    audio, rate = read_wav(path)
    return transcribe(pretrained, resample(audio, rate), max_tokens)


# ---------------------------------------------------------------------------- word error rate


def normalize_words(text: str) -> list[str]:
    """Lower case, punctuation removed (apostrophes kept inside words), split on spaces."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words): Levenshtein over normalised words."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        prev, row = row, np.empty_like(row)
        row[0] = i
        for j, h in enumerate(hyp, start=1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return int(row[-1]), len(ref)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: the sum of the word errors over the sum of the reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"hypotheses: expected {len(references)} (one per reference), got {len(hypotheses)}")
    errors = [word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return sum(e for e, _ in errors) / max(1, sum(n for _, n in errors))


# Twenty short English sentences for the WER of ``transcribe --wer`` (spoken by espeak-ng).
WER_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Please call me back after lunch.",
    "The weather is very nice today.",
    "I would like a cup of coffee.",
    "We are going to the park this afternoon.",
    "The train leaves at seven in the morning.",
    "My brother plays the guitar every evening.",
    "Can you help me find my keys?",
    "The meeting has been moved to Friday.",
    "Reading books is a good way to learn.",
    "The children are playing in the garden.",
    "Turn left at the next traffic light.",
    "This is the best pizza in town.",
    "He forgot to bring his umbrella.",
    "The museum opens at ten o'clock.",
    "Water boils at one hundred degrees.",
    "Our team won the game last night.",
    "Please close the window before you leave.",
    "The computer is running very slowly.",
)


def frames_per_position() -> float:
    """Seconds per encoder position: two mel frames of 10 ms (the stride-2 convolution)."""
    return 2 * WHISPER_HOP / WHISPER_SAMPLE_RATE


def token_labels(pretrained: PretrainedWhisper, transcript: Transcript) -> list[str]:
    """The text of each predicted token (the rows of :attr:`Transcript.cross_attention`)."""
    return [pretrained.tokenizer.decode([int(t)], skip_special_tokens=False) for t in transcript.tokens[1:]]


def plot_transcript(transcript: Transcript, tokens: Sequence[str], path: str | Path, title: str = "") -> Path:
    """The log-mel (top) and the alignment heads' mean cross-attention, tokens x audio positions (bottom).

    Row ``i`` of the attention is the step that predicted ``tokens[i]``: where in the audio it looked.
    """
    from .plots import pyplot, save_figure

    plt = pyplot()
    seconds = max(transcript.duration, 0.5)
    frames = min(transcript.log_mel.shape[1], int(np.ceil(seconds * WHISPER_SAMPLE_RATE / WHISPER_HOP)))
    positions = max(1, int(np.ceil(seconds / frames_per_position())))
    attention = transcript.cross_attention.mean(axis=0)[:, :positions]  # (L - 1, S')
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 2.2 + 0.22 * len(tokens) + 2.0), sharex=True,
                                   gridspec_kw={"height_ratios": [2.0, max(1.0, 0.12 * len(tokens))]})  # fmt: skip
    ax1.imshow(transcript.log_mel[:, :frames], origin="lower", aspect="auto", cmap="magma",
               extent=(0, frames * WHISPER_HOP / WHISPER_SAMPLE_RATE, 0, transcript.log_mel.shape[0]))  # fmt: skip
    ax1.set_ylabel("mel bin")
    ax1.set_title(title or "log-mel spectrogram and cross-attention")
    ax2.imshow(attention, aspect="auto", cmap="viridis", interpolation="nearest",
               extent=(0, positions * frames_per_position(), len(tokens) - 0.5, -0.5))  # fmt: skip
    ax2.set_yticks(range(len(tokens)))
    ax2.set_yticklabels(tokens, fontsize=7)
    ax2.set_xlabel("seconds (encoder positions, 20 ms each)")
    ax2.set_ylabel("token predicted")
    fig.tight_layout()
    return save_figure(fig, path)
