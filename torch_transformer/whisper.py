"""The twin of ``numpy_transformer.models.whisper`` and of ``numpy_transformer.functional.audio``: autograd backward.

Same structure and state-dict keys (``encoder.conv1.weight``, ``encoder.layers.i.self_attn.k_proj.weight``
(no bias), ``encoder.norm.*``, ``decoder.embed_tokens``, ``decoder.embed_positions``,
``decoder.layers.i.cross_attn.*``, ``decoder.norm.*``); the encoder's positions are a buffer, not in the
state dict, as in the NumPy model. The convolutions are the twin's own im2col ``conv1d`` (``F.conv1d`` is
never used, so comparing against Hugging Face's ``nn.Conv1d`` tests something); the blocks are the twin's
``EncoderLayer`` / ``DecoderLayer`` with ``norm_first=True``.

:func:`log_mel_spectrogram` is the front end written with ``torch.stft`` (a built-in, not our DFT), so
autograd through it checks :func:`numpy_transformer.functional.audio.log_mel_spectrogram_backward`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from numpy_transformer.config import WhisperConfig
from numpy_transformer.functional.audio import (
    LOG_MEL_CLAMP,
    LOG_MEL_RANGE,
    WHISPER_CHUNK_SAMPLES,
    WHISPER_HOP,
    WHISPER_N_FFT,
    mel_filterbank,
)

from . import functional as TF
from .intermediates import expose_transposed
from .modules import LayerNorm, Linear, as_tensor, module_device
from .transformer_layers import DecoderLayer, EncoderLayer

__all__ = ["WhisperDecoder", "WhisperEncoder", "WhisperForConditionalGeneration", "log_mel_spectrogram"]


def log_mel_spectrogram(
    audio: torch.Tensor,
    n_samples: int | None = WHISPER_CHUNK_SAMPLES,
    n_fft: int = WHISPER_N_FFT,
    hop: int = WHISPER_HOP,
    filterbank: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, samples) -> (B, M, n_samples // hop), OpenAI's ``log_mel_spectrogram`` with ``torch.stft``."""
    B, length = audio.shape
    if n_samples is not None:
        audio = torch.nn.functional.pad(audio, (0, max(0, n_samples - length)))[:, :n_samples]
    window = torch.hann_window(n_fft, periodic=True, dtype=audio.dtype, device=audio.device)
    stft = torch.stft(audio, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = expose_transposed("power", stft[..., :-1].abs() ** 2, 1, 2)  # (B, K, T): the last frame dropped
    fb = torch.from_numpy(mel_filterbank(n_fft=n_fft)) if filterbank is None else filterbank  # (M, K)
    fb = fb.to(audio.dtype).to(audio.device)
    energies = expose_transposed("energies", fb @ power, 1, 2)  # (B, M, T)
    log_spec = expose_transposed("log_energies", torch.clamp(energies, min=LOG_MEL_CLAMP).log10(), 1, 2)  # (B, M, T)
    floor = log_spec.reshape(B, -1).max(dim=1).values - LOG_MEL_RANGE  # (B,)
    log_spec = torch.maximum(log_spec, floor[:, None, None])
    return (log_spec + 4.0) / 4.0


def _sinusoids(length: int, channels: int) -> np.ndarray:
    inv = np.exp(-np.log(10000.0) / (channels // 2 - 1) * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)


class Conv1d(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(cout, cin, k, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(cout, dtype=dtype, device=device))
        bound = (cin * k) ** -0.5
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TF.conv1d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


def _no_key_bias(attn: nn.Module, d_model: int, dtype, device) -> None:
    attn.k_proj = Linear(d_model, d_model, bias=False, dtype=dtype, device=device)


class WhisperEncoder(nn.Module):
    def __init__(self, config: WhisperConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.config = c = config
        self.conv1 = Conv1d(c.num_mel_bins, c.d_model, 3, padding=1, dtype=dtype, device=device)
        self.conv2 = Conv1d(c.d_model, c.d_model, 3, stride=2, padding=1, dtype=dtype, device=device)
        block = dict(dropout=0.0, activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps,
                     dtype=dtype, device=device)  # fmt: skip
        self.layers = nn.ModuleList(
            [
                EncoderLayer(c.d_model, c.encoder_attention_heads, c.encoder_ffn_dim, **block)
                for _ in range(c.encoder_layers)
            ]
        )
        for layer in self.layers:
            _no_key_bias(layer.self_attn, c.d_model, dtype, device)
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype, device=device)
        positions = torch.from_numpy(_sinusoids(c.max_source_positions, c.d_model)).to(dtype)
        self.register_buffer("embed_positions", positions.to(device), persistent=False)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        x = as_tensor(input_features, module_device(self))
        v = TF.gelu(self.conv2(TF.gelu(self.conv1(x))))  # (B, C, S): exact GELU in the stem
        z = v.transpose(1, 2) + self.embed_positions  # (B, S, C)
        for layer in self.layers:
            z = layer(z)
        return self.norm(z)


class WhisperDecoder(nn.Module):
    def __init__(self, config: WhisperConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.config = c = config
        self.embed_tokens = nn.Parameter(torch.empty(c.vocab_size, c.d_model, dtype=dtype, device=device))
        self.embed_positions = nn.Parameter(torch.empty(c.max_target_positions, c.d_model, dtype=dtype, device=device))
        with torch.no_grad():
            self.embed_tokens.normal_(0.0, 0.02)
            self.embed_positions.normal_(0.0, 0.02)
        block = dict(dropout=0.0, activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps,
                     dtype=dtype, device=device)  # fmt: skip
        self.layers = nn.ModuleList(
            [
                DecoderLayer(c.d_model, c.decoder_attention_heads, c.decoder_ffn_dim, **block)
                for _ in range(c.decoder_layers)
            ]
        )
        for layer in self.layers:
            _no_key_bias(layer.self_attn, c.d_model, dtype, device)
            _no_key_bias(layer.cross_attn, c.d_model, dtype, device)
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype, device=device)

    def forward(self, decoder_input_ids, memory: torch.Tensor) -> torch.Tensor:
        ids = as_tensor(decoder_input_ids, module_device(self))
        T = ids.shape[1]
        x = self.embed_tokens[ids] + self.embed_positions[:T]  # (B, T, C)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]  # (1, 1, T, T)
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=mask)
        return self.norm(x) @ self.embed_tokens.T  # (B, T, V): tied


class WhisperForConditionalGeneration(nn.Module):
    """Same structure and keys as ``numpy_transformer.models.whisper.WhisperForConditionalGeneration``."""

    def __init__(self, config: WhisperConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        if not isinstance(config, WhisperConfig):
            raise TypeError(f"config: expected a WhisperConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = WhisperEncoder(config, dtype, device)
        self.decoder = WhisperDecoder(config, dtype, device)

    def forward(self, input_features, decoder_input_ids, labels=None):
        """-> ``(logits (B, T, V), loss or None, memory (B, S, C))``; ``labels`` -100 = not scored."""
        memory = self.encoder(input_features)
        logits = self.decoder(decoder_input_ids, memory)
        loss = None
        if labels is not None:
            labels = as_tensor(labels, logits.device)
            loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return logits, loss, memory
