"""Parity cases for Whisper: the log-mel front end (``log_mel_spectrogram``) and ``WhisperForConditionalGeneration``.

Registered on import. The front end is compared with the twin's ``torch.stft`` version, with a quiet tail so
the 80 dB floor is in play, and its gradient of the waveform by finite differences. The model compares every
parameter and the gradient of its log-mel input, on tiny random configs (one or two layers, a vocabulary of
``V``, ``T`` tokens, four mel frames per position pair). Variants: the decoder depth and the feed-forward
activation. ``transformers.WhisperForConditionalGeneration`` and ``WhisperFeatureExtractor`` are compared in
``parity_tests/test_whisper_hf.py`` and ``parity_tests/test_audio.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from numpy_transformer.config import WhisperConfig
from numpy_transformer.functional import audio as naudio
from numpy_transformer.models import whisper as nwhisper

from .. import whisper as twhisper
from .registry import Case, float_dtype, layer_dims, load_weights, module_grads, normal, register, twin_float_dtype

# ---------------------------------------------------------------------------- the log-mel op

N_FFT, HOP = 16, 4  # a small STFT: 9 frequency bins, 80 mel filters would be mostly empty, so 6 of them


@dataclass(frozen=True)
class LogMelVariant:
    samples: int  # the clip before padding or trimming
    n_samples: int  # after


LOG_MEL_VARIANTS = (LogMelVariant(samples=30, n_samples=40), LogMelVariant(samples=48, n_samples=40))


def _filterbank(dtype) -> np.ndarray:
    return naudio.mel_filterbank(sample_rate=16000, n_fft=N_FFT, n_mels=6).astype(dtype)


def _draw_log_mel(rng, dtype, d):
    v = d["variant"]
    x = normal(rng, (d["B"], v.samples), dtype, scale=0.5)
    x[:, v.samples // 2 :] *= np.dtype(dtype).type(1e-5)  # a quiet half: cells below the floor
    return {"audio": x}


def _numpy_log_mel(a, d):
    v = d["variant"]
    out, cache = naudio.log_mel_spectrogram_forward(
        a["audio"], n_samples=v.n_samples, n_fft=N_FFT, hop=HOP, filterbank=_filterbank(a["audio"].dtype)
    )
    return out, lambda dout: {"audio": naudio.log_mel_spectrogram_backward(dout, cache)}


def _torch_log_mel(t, d):
    x = t["audio"]
    fb = torch.from_numpy(_filterbank(np.float64)).to(x.dtype).to(x.device)
    return twhisper.log_mel_spectrogram(x, n_samples=d["variant"].n_samples, n_fft=N_FFT, hop=HOP, filterbank=fb), {
        "audio": x
    }


register(
    Case(
        name="log_mel_spectrogram",
        kind="op",
        draw=_draw_log_mel,
        differentiable=lambda d: ("audio",),
        numpy=_numpy_log_mel,
        torch=_torch_log_mel,
        variants=LOG_MEL_VARIANTS,
        uses=("B",),
    )
)

# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class WhisperVariant:
    decoder_layers: int
    activation: str


WHISPER_VARIANTS = (WhisperVariant(1, "gelu"), WhisperVariant(2, "gelu_tanh"), WhisperVariant(0, "gelu"))


def _config(d: dict) -> WhisperConfig:
    H, C, Fw = layer_dims(d)
    v = d["variant"]
    V = max(3, d["V"])
    return WhisperConfig(
        vocab_size=V, num_mel_bins=2, d_model=C, encoder_layers=1, decoder_layers=v.decoder_layers,
        encoder_attention_heads=H, decoder_attention_heads=H, encoder_ffn_dim=Fw, decoder_ffn_dim=Fw,
        max_source_positions=2, max_target_positions=d["T"], activation=v.activation,
        decoder_start_token_id=V - 2, eos_token_id=V - 1,
    )  # fmt: skip


def _draw_model(rng, dtype, d):
    cfg = _config(d)
    model = nwhisper.WhisperForConditionalGeneration(cfg, dtype, np.random.default_rng(0))
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    arrays["input_features"] = normal(rng, (d["B"], cfg.num_mel_bins, cfg.n_frames), dtype)
    arrays["decoder_input_ids"] = rng.integers(0, cfg.vocab_size, (d["B"], d["T"]))
    return arrays


def _numpy_model(a, d):
    model = load_weights(nwhisper.WhisperForConditionalGeneration(_config(d), float_dtype(a)), a)
    out, cache = model.forward(a["input_features"], a["decoder_input_ids"])

    def backward(dout):
        model.zero_grad()
        return module_grads(model, input_features=model.backward(dout, cache))

    return out.logits, backward


def _torch_model(t, d):
    x = t["input_features"]
    model = twhisper.WhisperForConditionalGeneration(_config(d), dtype=twin_float_dtype(t)).to(x.device)
    model = load_weights(model, t)
    logits, _, _ = model(x, t["decoder_input_ids"])
    leaves = dict(model.named_parameters())
    leaves["input_features"] = x
    return logits, leaves


register(
    Case(
        name="WhisperForConditionalGeneration",
        kind="model",
        draw=_draw_model,
        differentiable=lambda d: ("input_features",),
        all_parameters=True,
        numpy=_numpy_model,
        torch=_torch_model,
        variants=WHISPER_VARIANTS,
        uses=("B", "T", "H", "V"),
    )
)
