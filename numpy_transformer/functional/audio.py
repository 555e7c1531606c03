r"""Whisper's log-mel spectrogram, forward and backward by hand: from a waveform to the encoder's input.

Shape legend: ``B`` clips, ``N`` samples per clip (after padding or trimming), ``n`` the FFT size
(``n_fft``, 400), ``h`` the hop (160), ``T = N // h`` frames (3000 for 30 s), ``K = n // 2 + 1`` frequency
bins (201), ``M`` mel filters (80).

The front end, read top to bottom (as OpenAI's ``whisper/audio.py`` and Hugging Face's
``WhisperFeatureExtractor`` compute it)::

    a  = pad_or_trim(x, N)                        (B, N)        zeros after the clip, or its first N samples
    xp = reflect_pad(a, n // 2)                   (B, N + n)    centred frames: frame t is centred on sample t h
    f  = frames(xp)[:, :T]                        (B, T, n)     f[b, t, i] = xp[b, t h + i]; the last frame dropped
    u  = f * w                                    (B, T, n)     w: the periodic Hann window
    X  = rfft(u)                                  (B, T, K)     X = u C + i u S   (C_ik = cos 2 pi i k / n, S = -sin)
    P  = |X|^2                                    (B, T, K)     the power spectrum
    E  = P Fb^T                                   (B, T, M)     Fb (M, K): Slaney mel filterbank
    L  = log10(max(E, 1e-10))                     (B, T, M)
    Y  = max(L, max_{t,m} L - 8)                  (B, T, M)     80 dB of dynamic range per clip, no more
    out = (Y + 4) / 4, transposed                 (B, M, T)

Every step but the square, the log and the two ``max`` is linear, so the backward is short: the
adjoints of a gather (framing, reflect padding) are scatter-adds, that of the DFT the transposed
cosine and sine matrices. :func:`mel_filterbank` is computed here (Slaney's mel scale: linear below
1 kHz, logarithmic above; each triangle normalised to unit area), never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_positive_int
from .intermediates import gradient_at

WHISPER_SAMPLE_RATE = 16000  # Hz: every clip is resampled to this rate
WHISPER_N_FFT = 400  # 25 ms windows
WHISPER_HOP = 160  # 10 ms between frames
WHISPER_N_MELS = 80
WHISPER_CHUNK_SAMPLES = 30 * WHISPER_SAMPLE_RATE  # 480000: every clip is padded or trimmed to 30 s
WHISPER_N_FRAMES = WHISPER_CHUNK_SAMPLES // WHISPER_HOP  # 3000 frames -> 1500 encoder positions
LOG_MEL_CLAMP = 1e-10  # the mel energies are clamped here before the log (-100 dB)
LOG_MEL_RANGE = 8.0  # decades kept below the clip's loudest value (80 dB)

__all__ = [
    "LOG_MEL_CLAMP",
    "LOG_MEL_RANGE",
    "WHISPER_CHUNK_SAMPLES",
    "WHISPER_HOP",
    "WHISPER_N_FFT",
    "WHISPER_N_FRAMES",
    "WHISPER_N_MELS",
    "WHISPER_SAMPLE_RATE",
    "LogMelCache",
    "hann_window",
    "hz_to_mel",
    "log_mel_spectrogram_backward",
    "log_mel_spectrogram_forward",
    "mel_filterbank",
    "mel_to_hz",
]


# ---------------------------------------------------------------------------- window and filterbank


def hann_window(n: int, dtype: np.dtype | type = np.float64) -> np.ndarray:
    r"""The *periodic* Hann window of length ``n``: :math:`w_i = \tfrac12 - \tfrac12\cos(2\pi i / n)`.

    Periodic (denominator ``n``, as ``torch.hann_window`` and ``scipy.signal.get_window('hann', n)``),
    not symmetric (``n - 1``, as ``numpy.hanning``): ``n`` windows hopped by ``n / 2`` then sum to one.
    """
    n = check_positive_int("n", n)
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(dtype)


_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (Slaney's scale is linear there)
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mel at 1 kHz
_LOGSTEP = np.log(6.4) / 27.0  # above 1 kHz: 27 mel per factor 6.4 in frequency


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): ``f / (200/3)`` below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    above = hz >= _MIN_LOG_HZ
    return np.where(above, _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP, mel)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def mel_filterbank(
    sample_rate: int = WHISPER_SAMPLE_RATE,
    n_fft: int = WHISPER_N_FFT,
    n_mels: int = WHISPER_N_MELS,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> np.ndarray:
    r"""The Slaney-normalised triangular mel filterbank, shape ``(n_mels, n_fft // 2 + 1)`` (librosa's layout).

    ``n_mels + 2`` edges ``e_0 < ... < e_{M+1}`` equally spaced on the mel scale between ``f_min`` and
    ``f_max`` (default ``sample_rate / 2``), back in Hz. Filter ``m`` rises linearly from ``e_m`` to
    ``e_{m+1}`` and falls to ``e_{m+2}``, evaluated at the FFT bins ``f_k = k \cdot sr / n``:

    .. math:: Fb_{mk} = \frac{2}{e_{m+2} - e_m}\,
        \max\!\Big(0, \min\Big(\frac{f_k - e_m}{e_{m+1} - e_m}, \frac{e_{m+2} - f_k}{e_{m+2} - e_{m+1}}\Big)\Big),

    the factor making each triangle's area one (``norm="slaney"``), so a wide high filter does not
    collect more energy than a narrow low one. Equal to ``librosa.filters.mel(sr, n_fft, n_mels)``
    and to ``transformers.audio_utils.mel_filter_bank(..., norm="slaney", mel_scale="slaney")``
    (which returns the transpose); ``parity_tests/test_audio.py`` checks.
    """
    sample_rate = check_positive_int("sample_rate", sample_rate)
    n_fft = check_positive_int("n_fft", n_fft)
    n_mels = check_positive_int("n_mels", n_mels)
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    if not 0 <= f_min < f_max:
        raise ValueError(f"f_min, f_max: expected 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}")
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # (K,) Hz of every FFT bin
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (M + 2,) Hz
    widths = np.diff(edges)  # (M + 1,)
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]  # (M, K)
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]  # (M, K)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]  # (M, K) unit area per triangle


def _dft_matrices(n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``C`` and ``S`` (n, K): ``rfft(u) = u C + i u S``, ``C_ik = cos(2 pi i k / n)``, ``S_ik = -sin(...)``."""
    ik = np.outer(np.arange(n), np.arange(n // 2 + 1)) % n  # reduced mod n: exact angles
    angle = 2 * np.pi * ik / n
    return np.cos(angle).astype(dtype), (-np.sin(angle)).astype(dtype)


# ---------------------------------------------------------------------------- the log-mel op


@dataclass(frozen=True)
class LogMelCache:
    """What :func:`log_mel_spectrogram_backward` needs (the DFT matrices are recomputed, not stored)."""

    spectrum: np.ndarray  # (B, T, K) complex rfft of the windowed frames, X = u C + i u S
    filterbank: np.ndarray  # (M, K) Fb
    energies: np.ndarray  # (B, T, M) E = P Fb^T, before the clamp
    log_energies: np.ndarray  # (B, T, M) L = log10(max(E, 1e-10))
    argmax: np.ndarray  # (B,) flat index (t M + m) of each clip's largest L: the floor max L - 8 depends on it
    window: np.ndarray  # (n,) w
    hop: int  # h
    input_length: int  # samples of x before padding or trimming
    n_samples: int  # N, after it


def log_mel_spectrogram_forward(
    audio: np.ndarray,
    n_samples: int | None = WHISPER_CHUNK_SAMPLES,
    n_fft: int = WHISPER_N_FFT,
    hop: int = WHISPER_HOP,
    filterbank: np.ndarray | None = None,
) -> tuple[np.ndarray, LogMelCache]:
    """Whisper's log-mel spectrogram of ``audio`` (B, samples) at 16 kHz -> (B, M, T).

    Parameters
    ----------
    audio : ndarray, shape (B, samples), float32 or float64
        Mono waveforms in [-1, 1]; the output keeps the dtype.
    n_samples : int or None
        Pad with zeros (silence) or trim every clip to this many samples first: 480000 (30 s) for
        Whisper, whose encoder reads exactly 3000 frames. ``None``: use the clip as it is.
    n_fft, hop : int
        400 and 160 for Whisper (25 ms windows every 10 ms); ``n_samples`` must exceed ``n_fft // 2``
        (the reflect padding reflects that many samples).
    filterbank : ndarray (M, n_fft // 2 + 1), optional
        Default :func:`mel_filterbank` (Whisper's 80 filters).

    Returns
    -------
    out : ndarray, shape (B, M, T), ``T = n_samples // hop``
    cache : LogMelCache
    """
    check_float_array("audio", audio)
    if audio.ndim != 2 or audio.shape[1] < 1:
        raise ValueError(f"audio: expected shape (B, samples) with samples >= 1, got {audio.shape}")
    n_fft = check_positive_int("n_fft", n_fft)
    hop = check_positive_int("hop", hop)
    dtype = audio.dtype
    B, length = audio.shape
    N = length if n_samples is None else check_positive_int("n_samples", n_samples)
    if n_fft // 2 >= N:
        raise ValueError(
            f"n_samples: expected more than n_fft // 2 = {n_fft // 2} samples (the reflect padding), got {N}"
        )
    fb = mel_filterbank(n_fft=n_fft) if filterbank is None else filterbank
    check_float_array("filterbank", fb)
    if fb.ndim != 2 or fb.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"filterbank: expected shape (M, n_fft // 2 + 1 = {n_fft // 2 + 1}), got {fb.shape}")
    fb = fb.astype(dtype, copy=False)
    # a = pad_or_trim(x, N)
    a = np.zeros((B, N), dtype)  # (B, N): silence after a short clip
    a[:, : min(length, N)] = audio[:, :N]
    # xp = reflect_pad(a, n // 2); frames t = 0 .. T - 1 (the last frame, t = N // h, is dropped)
    xp = np.pad(a, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")  # (B, N + n)
    T = N // hop
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft, axis=1)[:, : T * hop : hop]  # (B, T, n)
    window = hann_window(n_fft, dtype)
    spectrum = np.fft.rfft(frames * window, axis=-1)  # (B, T, K) complex
    power = (spectrum.real**2 + spectrum.imag**2).astype(dtype)  # (B, T, K)
    energies = power @ fb.T  # (B, T, M)
    log_energies = np.log10(np.maximum(energies, dtype.type(LOG_MEL_CLAMP)))  # (B, T, M)
    flat = log_energies.reshape(B, -1)
    argmax = flat.argmax(axis=1)  # (B,)
    floor = flat[np.arange(B), argmax] - dtype.type(LOG_MEL_RANGE)  # (B,)
    y = np.maximum(log_energies, floor[:, None, None])
    out = ((y + dtype.type(4)) / dtype.type(4)).transpose(0, 2, 1)  # (B, M, T)
    cache = LogMelCache(
        spectrum=spectrum, filterbank=fb, energies=energies, log_energies=log_energies, argmax=argmax,
        window=window, hop=hop, input_length=length, n_samples=N,
    )  # fmt: skip
    return np.ascontiguousarray(out), cache


def log_mel_spectrogram_backward(dout: np.ndarray, cache: LogMelCache) -> np.ndarray:
    r"""The gradient of the waveform, ``daudio`` (B, samples), from ``dout`` (B, M, T).

    The forward read bottom-up (notation of the module docstring):

    .. math::
        dY = dout^T / 4

        Y = \max(L, L_{\max} - 8):\quad dL = dY \odot [L \ge L_{\max} - 8],\quad
        dL_{t^*m^*} \mathrel{+}= \textstyle\sum_{L < L_{\max} - 8} dY

        L = \log_{10}\max(E, 10^{-10}):\quad dE = dL \odot [E > 10^{-10}] / (E \ln 10)

        E = P\,Fb^T:\quad dP = dE\,Fb

        P = (uC)^2 + (uS)^2:\quad du = 2\,((uC) \odot dP)\,C^T + 2\,((uS) \odot dP)\,S^T

        u = f \odot w:\quad df = du \odot w

    then the framing and the reflect padding, both gathers, are undone by scatter-adds (an
    overlapping sample collects the gradient of every frame that read it, a reflected sample that
    of its mirror image), and the padding to ``N`` samples by cutting it off (a trimmed sample
    gets zero).

    What the clamp and the floor do to the gradient:

    * **The clamp** at :math:`10^{-10}` (energies of digital silence, e.g. the zeros padded to 30 s)
      is flat: those cells pass no gradient at all. Elsewhere ``1 / (E ln 10)`` is large for quiet
      cells, so a small change of a quiet sound moves its log a lot.
    * **The floor** :math:`L_{\max} - 8` makes every cell more than 80 dB below the clip's loudest
      one a copy of ``L_max - 8``: it passes no gradient to its own energy, and *all* of their
      upstream gradient goes to the single loudest cell ``(t*, m*)``, whose value sets the floor.
      So the gradient of the waveform is zero wherever only floored (or clamped) cells read it,
      apart from the loudest frame's share. (At a tie ``L = L_max - 8``, measure zero, this
      passes the gradient to ``L``; ``torch.maximum`` would split it half and half.)
    """
    c = cache
    B, T, M = c.log_energies.shape
    dtype = c.log_energies.dtype
    check_dout(dout, (B, M, T), dtype)
    n = c.window.shape[0]
    N, h = c.n_samples, c.hop
    # out = (Y + 4) / 4, transposed
    dy = dout.transpose(0, 2, 1) / dtype.type(4)  # (B, T, M)
    # Y = max(L, L_max - 8): the floored cells send their gradient to the argmax
    flat_l = c.log_energies.reshape(B, -1)
    floor = flat_l[np.arange(B), c.argmax] - dtype.type(LOG_MEL_RANGE)
    kept = c.log_energies >= floor[:, None, None]  # (B, T, M)
    dl = np.where(kept, dy, 0).reshape(B, -1)  # (B, T M)
    dl[np.arange(B), c.argmax] += np.where(kept, 0, dy).reshape(B, -1).sum(axis=1)
    dl = gradient_at("log_energies", dl.reshape(B, T, M))  # (B, T, M) gradient at L
    # L = log10(max(E, 1e-10)): nothing through the clamp
    live = c.energies > dtype.type(LOG_MEL_CLAMP)
    de = gradient_at("energies", np.where(live, dl / (np.where(live, c.energies, 1) * dtype.type(np.log(10.0))), 0))
    # E = P Fb^T
    dp = gradient_at("power", de @ c.filterbank)  # (B, T, K)
    # P = re^2 + im^2, re = u C, im = u S
    cos, sin = _dft_matrices(n, dtype)  # (n, K) each
    re, im = c.spectrum.real.astype(dtype), c.spectrum.imag.astype(dtype)
    du = (2 * re * dp) @ cos.T + (2 * im * dp) @ sin.T  # (B, T, n)
    # u = f * w
    df = du * c.window  # (B, T, n)
    # f[b, t, i] = xp[b, t h + i]: scatter-add frame t at offset t h, in blocks of h samples
    blocks = -(-n // h)  # frame samples i = j h + r, j < blocks
    acc = np.zeros((B, T + blocks, h), dtype)  # (B, T + blocks, h): sample (s h + r) at [s, r]
    for j in range(blocks):
        width = min(h, n - j * h)
        acc[:, j : j + T, :width] += df[:, :, j * h : j * h + width]
    dxp = acc.reshape(B, -1)[:, : N + 2 * (n // 2)]  # (B, N + n)
    if dxp.shape[1] < N + 2 * (n // 2):
        dxp = np.pad(dxp, ((0, 0), (0, N + 2 * (n // 2) - dxp.shape[1])))
    # xp = reflect_pad(a, p): xp[p - i] = a[i] on the left (i = 1 .. p), xp[p + N + i] = a[N - 2 - i] on the right
    p = n // 2
    da = dxp[:, p : p + N].copy()  # (B, N)
    da[:, 1 : p + 1] += dxp[:, :p][:, ::-1]
    da[:, N - 1 - p : N - 1] += dxp[:, p + N :][:, ::-1]
    # a = pad_or_trim(x, N)
    daudio = np.zeros((B, c.input_length), dtype)
    keep = min(c.input_length, N)
    daudio[:, :keep] = da[:, :keep]
    return daudio
