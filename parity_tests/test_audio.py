"""Whisper's log-mel front end (``numpy_transformer.functional.audio``): filterbank, spectrogram and its backward.

Against: ``transformers.audio_utils.mel_filter_bank`` (librosa too where installed) for the filterbank;
``transformers.WhisperFeatureExtractor`` for the whole spectrogram (float32: it computes in float32); the
twin's ``torch.stft`` front end (float64, forward and autograd backward); central finite differences through
the clamp and the 80 dB floor.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from numpy_transformer.functional.audio import (
    WHISPER_N_FRAMES,
    hann_window,
    hz_to_mel,
    log_mel_spectrogram_backward,
    log_mel_spectrogram_forward,
    mel_filterbank,
    mel_to_hz,
)
from numpy_transformer.testing import numerical_gradient, relative_error
from parity_tests.helpers import assert_matches, assert_matches_finite_differences
from torch_transformer.whisper import log_mel_spectrogram

transformers = pytest.importorskip("transformers")


def _speechlike(rng, n, quiet_from=None):
    """Noise shaped by a few tones, with an optional near-silent tail (so the 80 dB floor is hit)."""
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1800 * t) + 0.05 * rng.standard_normal(n)
    if quiet_from is not None:
        x[quiet_from:] *= 1e-7
    return x


def test_mel_filterbank_matches_transformers_slaney_filterbank():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=16000, norm="slaney", mel_scale="slaney")  # fmt: skip
    assert_matches("mel filterbank (transposed)", mel_filterbank().T, ref, np.float64)
    np.testing.assert_array_equal(transformers.WhisperFeatureExtractor().mel_filters, ref)


def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    assert_matches("mel filterbank", mel_filterbank(), librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), np.float32)


def test_mel_scale_round_trips_and_is_linear_below_1khz():
    hz = np.array([0.0, 200.0, 999.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(hz_to_mel(np.array([300.0, 600.0])), [4.5, 9.0])  # 3 f / 200
    fb = mel_filterbank()
    assert fb.shape == (80, 201) and (fb >= 0).all()
    widths = np.diff(mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), 82)))
    area = fb.sum(axis=1) * 40.0  # Riemann sum over bins 40 Hz apart: each triangle has unit area
    np.testing.assert_allclose(area[50:], 1.0, rtol=0.1)  # the wide upper filters, sampled by many bins
    assert widths[0] < widths[-1]


def test_hann_window_is_periodic():
    np.testing.assert_allclose(hann_window(400), torch.hann_window(400, periodic=True, dtype=torch.float64).numpy(),
                               atol=1e-15)  # fmt: skip
    assert hann_window(8)[0] == 0 and hann_window(8)[4] == 1


def test_log_mel_matches_whisper_feature_extractor_float32():
    rng = np.random.default_rng(0)
    x = _speechlike(rng, 16000 * 2)
    ref = transformers.WhisperFeatureExtractor()(x, sampling_rate=16000, return_tensors="np")["input_features"]
    ours, _ = log_mel_spectrogram_forward(x[None].astype(np.float32))
    assert ours.shape == ref.shape == (1, 80, WHISPER_N_FRAMES) and ours.dtype == np.float32
    assert_matches("log-mel vs WhisperFeatureExtractor", ours, ref, np.float32)


def test_hf_numpy_spectrogram_is_complex64_even_in_float64():
    """Framework fact: ``transformers.audio_utils.spectrogram(..., dtype=float64)`` stores the STFT in complex64
    (transformers 5.24), so WhisperFeatureExtractor's NumPy path is float32-accurate only: ~1e-8 from ours."""
    from transformers.audio_utils import spectrogram
    from transformers.models.whisper import feature_extraction_whisper as fw

    fe = transformers.WhisperFeatureExtractor()
    rng = np.random.default_rng(1)
    x = np.pad(_speechlike(rng, 8000), (0, 480000 - 8000))
    original = fw.spectrogram
    fw.spectrogram = functools.partial(spectrogram, dtype=np.float64)
    try:
        ref = fe._np_extract_fbank_features(x[None], "cpu")
    finally:
        fw.spectrogram = original
    ours, _ = log_mel_spectrogram_forward(x[None])
    assert ref.dtype == np.float64
    err = relative_error("log-mel vs HF's float64 NumPy path", ours, ref).error
    assert 1e-10 < err < 1e-6, err  # float32-close, not float64-close: the complex64 buffer


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_mel_and_its_backward_match_torch_stft_autograd(dtype):
    rng = np.random.default_rng(2)
    x = _speechlike(rng, 9000, quiet_from=5000).astype(dtype)[None].repeat(2, axis=0)
    x[1] *= 0.5
    ours, cache = log_mel_spectrogram_forward(x, n_samples=16000)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    ref = log_mel_spectrogram(x_t, n_samples=16000)
    assert_matches("log-mel vs torch.stft", ours, ref, dtype)
    assert (cache.log_energies < cache.log_energies.max() - 8).any(), "the draw must reach the 80 dB floor"
    dout = rng.standard_normal(ours.shape).astype(dtype)
    (ref * torch.from_numpy(dout)).sum().backward()
    assert_matches("d audio vs torch autograd", log_mel_spectrogram_backward(dout, cache), x_t.grad, dtype)


def test_log_mel_backward_matches_finite_differences_through_clamp_and_floor():
    rng = np.random.default_rng(3)
    x = np.stack([_speechlike(rng, 700, quiet_from=450), 0.2 * rng.standard_normal(700)])  # (2, 700)
    n = 1120  # padded with zeros: the last frames are digital silence (clamped at 1e-10)
    out, cache = log_mel_spectrogram_forward(x, n_samples=n)
    floored = cache.log_energies < cache.log_energies.reshape(2, -1).max(axis=1)[:, None, None] - 8
    assert floored[0].any() and (cache.energies <= 1e-10).any()
    dout = rng.standard_normal(out.shape)
    numeric = numerical_gradient(lambda z: log_mel_spectrogram_forward(z, n_samples=n)[0], x, dout, eps=1e-6)
    assert_matches_finite_differences("d audio", log_mel_spectrogram_backward(dout, cache), numeric)


def test_log_mel_floor_sends_its_gradient_to_the_loudest_cell_and_trimming_cuts_it():
    rng = np.random.default_rng(4)
    x = _speechlike(rng, 2000, quiet_from=1000)[None]
    out, cache = log_mel_spectrogram_forward(x, n_samples=1600)  # trimmed: samples 1600.. are not read
    flat = cache.log_energies.reshape(-1)
    floored = (flat < flat.max() - 8).reshape(cache.log_energies.shape).transpose(0, 2, 1)  # (1, M, T)
    dout = np.where(floored, 1.0, 0.0) * rng.standard_normal(out.shape)
    dx = log_mel_spectrogram_backward(dout, cache)
    assert np.all(dx[:, 1600:] == 0)
    # only the loudest cell receives it: the same gradient as dout = its sum placed there
    t_star, m_star = divmod(int(cache.argmax[0]), cache.log_energies.shape[2])
    at_max = np.zeros_like(out)
    at_max[0, m_star, t_star] = dout.sum()
    np.testing.assert_allclose(dx, log_mel_spectrogram_backward(at_max, cache), rtol=1e-12, atol=1e-15)


def test_log_mel_rejects_bad_input():
    with pytest.raises(ValueError, match=r"audio: expected shape \(B, samples\)"):
        log_mel_spectrogram_forward(np.zeros(100))
    with pytest.raises(TypeError, match="audio"):
        log_mel_spectrogram_forward(np.zeros((1, 100), dtype=np.int16))
    with pytest.raises(ValueError, match="n_samples: expected more than"):
        log_mel_spectrogram_forward(np.zeros((1, 100)), n_samples=150)
    with pytest.raises(ValueError, match="filterbank"):
        log_mel_spectrogram_forward(np.zeros((1, 1000)), filterbank=np.zeros((80, 7)))


def test_a_louder_clip_shifts_the_log_mel_by_half_the_gain_in_decades():
    """Gain g multiplies the power by g^2: every log10 energy and the floor move by 2 log10 g, the output by a quarter
    of it; a constant shift, so Whisper's input carries no absolute loudness beyond it (clamp aside)."""
    rng = np.random.default_rng(5)
    x = _speechlike(rng, 4000, quiet_from=3000)[None]
    quiet, _ = log_mel_spectrogram_forward(x, n_samples=4800)
    loud, _ = log_mel_spectrogram_forward(10.0 * x, n_samples=4800)
    assert_matches("log-mel of 10 x", loud, quiet + 0.5, np.float64)  # 2 log10(10) / 4
