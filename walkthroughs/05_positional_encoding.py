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
# # 05 · Sinusoidal positional encoding
#
# Attention by itself ignores order: permute the tokens of a sequence and the outputs of
# self-attention are permuted the same way, nothing more. "Attention Is All You Need" adds a
# fixed vector to each token's embedding that depends only on its position:
#
# $$PE(pos, 2i) = \sin\!\big(pos\,\omega_i\big),\qquad PE(pos, 2i+1) = \cos\!\big(pos\,\omega_i\big),
#   \qquad \omega_i = \mathrm{base}^{-2i/d},\ \mathrm{base} = 10000 .$$
#
# This lesson has no backward pass to derive (the encoding is a constant), but its algebra is
# worth checking number by number:
#
# 1. the formula, against `numpy_transformer.functional.sinusoidal_positional_encoding` and the
#    twin `torch_transformer.functional.sinusoidal_positional_encoding`;
# 2. a picture of the matrix and of a few of its columns over position;
# 3. why $PE(pos + k)$ is a **fixed linear map** of $PE(pos)$: a block-diagonal rotation
#    $R_k$ that depends on $k$ only;
# 4. why the dot product $PE(p)\cdot PE(q)$ depends on $p - q$ only;
# 5. where the encoding lives in a model: a constant, outside the state dict, with no gradient.
#
# Shape legend: `L` positions (sequence length), `d` model width (`d_model`, also `C` in the
# other lessons), `i` the index of a (sine, cosine) column pair, `0 ≤ i < d/2`.
# Every array is float64; a check prints `exact`, `close (max rel err …)`, or stops with an
# `AssertionError`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import numpy_transformer as nt
import torch_transformer
from numpy_transformer.functional import sinusoidal_positional_encoding
from numpy_transformer.testing import report_differs, report_match
from torch_transformer import functional as TF

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

np.set_printoptions(precision=4, suppress=True, linewidth=110)
torch.manual_seed(0)  # only the twin Transformer's initial weights in section 5 draw from torch
BASE = 10000.0

# %% [markdown]
# ## 1. The formula
#
# Column pair $i$ holds a sine and a cosine of the same angle $pos\cdot\omega_i$. The
# frequencies fall geometrically from $\omega_0 = 1$ (wavelength $2\pi \approx 6.3$ positions)
# to $\omega_{d/2-1} = \mathrm{base}^{-(d-2)/d}$ (wavelength almost $2\pi\cdot\mathrm{base}$).
# Written out in NumPy, with shapes:

# %%
L, d = 64, 16
pos = np.arange(L, dtype=np.float64)[:, None]  # (L, 1)
two_i = np.arange(0, d, 2, dtype=np.float64)  # (d/2,)  the even column indices 2i
omega = BASE ** (-two_i / d)  # (d/2,)
angle = pos * omega  # (L, d/2)
pe_hand = np.empty((L, d))  # (L, d)
pe_hand[:, 0::2] = np.sin(angle)
pe_hand[:, 1::2] = np.cos(angle)

pe = sinusoidal_positional_encoding(L, d)  # (L, d)
pe_t = TF.sinusoidal_positional_encoding(L, d)  # (L, d) torch.float64
print(f"PE shape {pe.shape}; frequencies ω_i = {omega}")
print(f"wavelengths 2π/ω_i (positions): {2 * np.pi / omega}")
print(f"PE rows 0..2:\n{pe[:3]}")
report_match("formula by hand vs the package", pe_hand, pe)
report_match("package vs the twin", pe, pe_t)

# %% [markdown]
# Row 0 is $(0, 1, 0, 1, \ldots)$: every angle is zero. Every row has the same length,
# $\lVert PE(pos)\rVert^2 = \sum_i (\sin^2 + \cos^2) = d/2$, so the encoding moves a point
# around a sphere and never scales the embedding it is added to.
#
# An odd `d` keeps the last sine column without its cosine partner; both halves agree on it.

# %%
print("  |PE(pos)|^2 = d/2 for every pos:", bool(np.allclose((pe**2).sum(axis=1), d / 2, rtol=0, atol=1e-12)))
report_match(
    "odd d = 7: package vs the twin", sinusoidal_positional_encoding(L, 7), TF.sinusoidal_positional_encoding(L, 7)
)

# %% [markdown]
# ## 2. A picture
#
# Left: the matrix for 100 positions and $d = 64$; the columns on the left turn fast, those on
# the right barely move over 100 positions. Middle: a few columns over position, each pair a
# sine and a cosine of one frequency. Right: the dot product of section 4: all $100^2$
# pairs $(p, q)$ fall on one curve of $p - q$.

# %%
L_plot, d_plot = 100, 64
pe_plot = sinusoidal_positional_encoding(L_plot, d_plot)  # (L, d)
omega_plot = BASE ** (-np.arange(0, d_plot, 2) / d_plot)  # (d/2,)
offsets = np.arange(-(L_plot - 1), L_plot)  # (2L - 1,)
dot_by_offset = np.cos(offsets[:, None] * omega_plot).sum(axis=1)  # (2L - 1,) section 4's formula
gram_plot = pe_plot @ pe_plot.T  # (L, L) every PE(p) . PE(q)
p_minus_q = np.arange(L_plot)[:, None] - np.arange(L_plot)[None, :]  # (L, L)

fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), layout="constrained", gridspec_kw={"width_ratios": [1.1, 1.4, 1.2]})
ax = axes[0]
im = ax.imshow(pe_plot, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
ax.set_xlabel("dimension (even: sin, odd: cos)")
ax.set_ylabel("position")
ax.set_title(f"PE matrix, {L_plot} positions x d = {d_plot}")
fig.colorbar(im, ax=ax, shrink=0.85)
ax = axes[1]
for dim, style, colour in (
    (4, "-", "tab:blue"),
    (5, "--", "tab:blue"),
    (16, "-", "tab:green"),
    (28, "-", "tab:purple"),
    (44, "-", "tab:brown"),
):
    kind = "sin" if dim % 2 == 0 else "cos"
    wavelength = 2 * np.pi / omega_plot[dim // 2]
    ax.plot(pe_plot[:, dim], style, color=colour, lw=1.5, label=f"dim {dim}: {kind}, λ = {wavelength:.0f}")
ax.set_xlabel("position")
ax.set_ylabel("PE(pos, dim)")
ax.set_title("a few dimensions over position (λ = wavelength in positions)")
ax.set_ylim(-1.15, 1.6)
ax.legend(fontsize=8, loc="upper center", ncol=3)
ax = axes[2]
ax.plot(p_minus_q.ravel(), gram_plot.ravel(), ".", ms=2.5, color="tab:orange", label="all (p, q) pairs of PE PE^T")
ax.plot(offsets, dot_by_offset, lw=1.0, color="black", label="Σ_i cos((p - q) ω_i)")
ax.legend(fontsize=8, loc="upper right")
ax.axhline(d_plot / 2, color="grey", lw=0.8, ls=":")
ax.text(offsets[0], d_plot / 2 - 0.4, f"d/2 = {d_plot // 2} at p = q", fontsize=8, va="top")
ax.set_xlabel("offset p - q")
ax.set_ylabel("PE(p) · PE(q)")
ax.set_title("dot product depends on p - q only (and is even in it)")
fig.suptitle("sinusoidal positional encoding, base 10000")
png = OUT / "05_positional_encoding.png"
fig.savefig(png, dpi=110)
plt.close(fig)
print("saved", png)

# %% [markdown]
# ## 3. $PE(pos + k)$ is a rotation of $PE(pos)$
#
# Take one column pair with angle $a = pos\,\omega_i$ and shift by $b = k\,\omega_i$. The
# angle-addition formulas
#
# $$\sin(a+b) = \cos b\,\sin a + \sin b\,\cos a,\qquad \cos(a+b) = -\sin b\,\sin a + \cos b\,\cos a$$
#
# say that the pair is multiplied by a $2\times2$ rotation that contains $k$ but **not** $pos$:
#
# $$\begin{pmatrix}\sin(a+b)\\ \cos(a+b)\end{pmatrix} =
#   \underbrace{\begin{pmatrix}\cos k\omega_i & \sin k\omega_i\\ -\sin k\omega_i & \cos k\omega_i\end{pmatrix}}_{M_i(k)}
#   \begin{pmatrix}\sin a\\ \cos a\end{pmatrix}.$$
#
# Stacking the $d/2$ blocks on the diagonal gives $R_k$ `(d, d)`. With positions as rows,
# $PE(pos+k) = PE(pos)\,R_k^\top$ for **every** $pos$ at once. This is the property the paper
# gives as the reason for the choice: attending to "the token $k$ places back" is a fixed
# linear function of the encoding, the same at every position.


# %%
def rotation(k, omega):
    """R_k (d, d): block i is the 2x2 rotation M_i(k) acting on column pair (2i, 2i+1)."""
    n = len(omega)
    R = np.zeros((2 * n, 2 * n))  # (d, d)
    c, s = np.cos(k * omega), np.sin(k * omega)  # (d/2,) each
    R[0::2, 0::2] = np.diag(c)
    R[0::2, 1::2] = np.diag(s)
    R[1::2, 0::2] = np.diag(-s)
    R[1::2, 1::2] = np.diag(c)
    return R


for k in (1, 3, 10):
    R_k = rotation(k, omega)  # (d, d)
    report_match(f"k={k:>2}: PE[pos] R_k^T vs twin PE[pos+k]", pe[:-k] @ R_k.T, pe_t[k:])
print(f"R_3, top-left 4x4 (two blocks):\n{rotation(3, omega)[:4, :4]}")

# %% [markdown]
# A rotation is orthogonal ($R_k R_k^\top = I$), rotations compose by adding angles
# ($R_j R_k = R_{j+k}$), and $R_{-k} = R_k^\top$ shifts back. Shifting is **not** adding
# encodings, though: $PE(pos+k) \ne PE(pos) + PE(k)$.

# %%
R3, R7 = rotation(3, omega), rotation(7, omega)
report_match("R_3 R_3^T = I", R3 @ R3.T, np.eye(d))
report_match("R_3 R_7 = R_10", R3 @ R7, rotation(10, omega))
report_match("R_-3 = R_3^T", rotation(-3, omega), R3.T)
report_differs("PE[pos+3] = PE[pos] + PE[3] (wrong)", pe[:-3] + pe[3], pe_t[3:])

# %% [markdown]
# ## 4. The dot product depends on $p - q$ only
#
# $$PE(p)\cdot PE(q) = \sum_i \big(\sin p\omega_i \sin q\omega_i + \cos p\omega_i \cos q\omega_i\big)
#   = \sum_i \cos\big((p-q)\,\omega_i\big).$$
#
# So the Gram matrix $G = PE\,PE^\top$ `(L, L)` is constant along each diagonal (a Toeplitz
# matrix): a query–key score between two pure position vectors sees only their distance.
# Because cosine is even (as any symmetric dot product that depends on $p - q$ alone must
# be), it does not see the **sign** of $p - q$: before and after look alike to a plain dot
# product. (Learned $W_q$, $W_k$ can break the symmetry: $PE(p)\,W_q^\top
# W_k\,PE(q)^\top$ is not symmetric in general.)

# %%
G = pe @ pe.T  # (L, L)
diff = np.arange(L)[:, None] - np.arange(L)[None, :]  # (L, L) p - q
G_formula = np.cos(diff[:, :, None] * omega).sum(axis=-1)  # (L, L)
G_t = pe_t @ pe_t.T
report_match("sum_i cos((p-q) w_i) vs twin PE PE^T", G_formula, G_t)
for k in (0, 1, 5):
    along = np.diagonal(G, offset=-k)  # entries with p - q = k
    print(
        f"  p - q = {k}: {len(along)} entries, spread max - min = {along.max() - along.min():.1e}, value {along[0]:.6f}"
    )

# %% [markdown]
# ## 5. A constant: no gradient, not in the state dict
#
# The model adds the encoding to the scaled token embeddings,
# $x = \sqrt{C}\,E[\text{ids}] + PE[:T]$. Nothing in $PE$ is learned: the backward of that line
# sends $\sqrt{C}\,dx$ to the embedding rows and nothing anywhere else. Consequently:
#
# * `numpy_transformer.Transformer` keeps it as a plain array, not a parameter, so it is not
#   in `state_dict()` and no optimizer sees it;
# * the twin registers it as a **non-persistent** buffer (`register_buffer("pe", …,
#   persistent=False)`): it moves with `.to(device)` but is not in its `state_dict()` either,
#   so the two state dicts have identical keys;
# * under autograd it is a tensor without `requires_grad`, so it never receives a `.grad`.

# %%
config = nt.TransformerConfig(
    src_vocab_size=11,
    tgt_vocab_size=11,
    d_model=16,
    n_heads=2,
    n_encoder_layers=1,
    n_decoder_layers=1,
    d_ff=32,
    dropout=0.0,
    max_len=32,
)
model = nt.Transformer(config, rng=np.random.default_rng(0))
twin_model = torch_transformer.Transformer(config)
ours_keys, twin_keys = list(model.state_dict()), list(twin_model.state_dict())
print("  our state dict has a positional entry:", any("pe" in key.split(".") for key in ours_keys))
print(
    "  twin buffers:", [name for name, _ in twin_model.named_buffers()], "| 'pe' in twin state dict:", "pe" in twin_keys
)
print("  state-dict keys identical:", ours_keys == twin_keys, f"({len(ours_keys)} keys)")
report_match("package PE vs the twin's pe buffer", sinusoidal_positional_encoding(32, 16), twin_model.pe)

C = config.d_model
E_t = torch.tensor(np.random.default_rng(1).standard_normal((config.tgt_vocab_size, C)), requires_grad=True)
ids_t = torch.tensor([[3, 1, 4, 1, 5]])  # (B, T)
T = ids_t.shape[1]
x_t = E_t[ids_t] * np.sqrt(C) + twin_model.pe[:T]  # (B, T, C)
dx = np.random.default_rng(2).standard_normal((1, T, C))  # (B, T, C)
(x_t * torch.from_numpy(dx)).sum().backward()
print("  pe.requires_grad:", twin_model.pe.requires_grad, "| pe.grad:", twin_model.pe.grad)
dembedding = np.zeros((config.tgt_vocab_size, C))  # (V, C) sqrt(C) dx scattered to the looked-up rows
np.add.at(dembedding, ids_t.numpy().ravel(), np.sqrt(C) * dx.reshape(-1, C))
report_match("d embedding = sqrt(C) dx at the ids", dembedding, E_t.grad)

# %% [markdown]
# ## Summary
#
# * $PE(pos, 2i) = \sin(pos\,\omega_i)$, $PE(pos, 2i+1) = \cos(pos\,\omega_i)$,
#   $\omega_i = 10000^{-2i/d}$; every row has squared length $d/2$. Package, hand formula and
#   twin agree.
# * $PE(pos + k) = PE(pos)\,R_k^\top$ with $R_k$ block-diagonal $2\times2$ rotations by
#   $k\,\omega_i$: a linear map that depends on the offset only. $R_j R_k = R_{j+k}$,
#   $R_k^{-1} = R_k^\top = R_{-k}$.
# * $PE(p)\cdot PE(q) = \sum_i \cos((p-q)\,\omega_i)$: a function of the distance only, and
#   an even one.
# * The encoding is a constant: not a parameter, not in either state dict (a non-persistent
#   buffer in the twin), and it receives no gradient; only the embedding rows do.
