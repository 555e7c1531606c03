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
# # 17 · Modern decoder blocks: RMSNorm, rotary positions, SwiGLU and grouped-query attention
#
# The GPT of lesson 10 is GPT-2's architecture (2019). The open decoders that came after it —
# Llama, Mistral, Qwen — keep the pre-norm residual stack and change four parts of the block:
#
# | GPT (lesson 10) | Llama-style (`numpy_transformer.Llama`) |
# |---|---|
# | LayerNorm: centre, scale, shift | **RMSNorm**: scale only |
# | a learned position table added to the embeddings | **rotary positions**: queries and keys *turned* by their position |
# | `W₂ gelu(W₁ x)` | **SwiGLU**: `down(silu(gate(x)) ⊙ up(x))` |
# | one key/value head per query head | **grouped-query attention**: a key/value head shared by a group of query heads |
#
# Each has a backward worth deriving, and two of them carry a convention that trips up anyone
# who moves weights between implementations. This lesson:
#
# 1. derives **RMSNorm**'s backward node by node and sets it next to LayerNorm's: one term
#    fewer, and we say which and why;
# 2. writes **RoPE** as a rotation matrix, differentiates it (the rotation back), and proves that
#    the scores depend only on `m − n`;
# 3. shows the **two layouts** of the rotated pairs (Hugging Face's half, Meta's interleaved) and
#    the permutation of weight rows that makes them one model;
# 4. differentiates **SwiGLU**, its two paths through the gate;
# 5. sums the **GQA** gradients of a shared key/value head over its group, and measures what
#    sharing saves in the key/value cache;
# 6. runs one whole block and a whole Llama backward against the twin.
#
# Shape legend: `B` batch, `T` query positions, `S` key positions, `C` d_model, `H` query heads,
# `Hkv` key/value heads, `G = H / Hkv`, `D` head width, `P = D / 2` rotated pairs, `F` SwiGLU
# width. Everything is float64; every check is against torch autograd on the same intermediate
# and prints `exact`, `close (max rel err …)`, or stops with an `AssertionError`.

# %%
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small matrices: one BLAS thread is faster

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import numpy_transformer as nt
from numpy_transformer.functional import (
    gelu_backward,
    gelu_forward,
    grouped_query_attention_backward,
    grouped_query_attention_forward,
    layer_norm_backward,
    layer_norm_forward,
    relu_backward,
    relu_forward,
    rms_norm_backward,
    rms_norm_forward,
    rotary_embedding_backward,
    rotary_embedding_forward,
    rotary_frequencies,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
    silu_backward,
    silu_forward,
    swiglu_backward,
    swiglu_forward,
)
from numpy_transformer.functional.rotary import interleaved_to_half_rows
from numpy_transformer.models import LlamaKVCache
from numpy_transformer.modules import LlamaAttention, LlamaDecoderLayer, SwiGLUFeedForward
from numpy_transformer.testing import relative_error, report_differs, report_match, tolerance
from torch_transformer import functional as TF
from torch_transformer.bridge import twin_of

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
np.set_printoptions(precision=4, suppress=True, linewidth=110)
torch.set_num_threads(1)
START = time.perf_counter()
rng = np.random.default_rng(0)
CHECKS = []  # every comparison's result, for the summary at the end


def check(name, ours, reference):
    """``report_match`` (the float64 contract), remembered for the summary."""
    CHECKS.append(report_match(name, ours, reference))


def t64(a, grad=False):
    """A float64 torch leaf holding a copy of the NumPy array."""
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


# %% [markdown]
# ## 1. RMSNorm, and the term of LayerNorm's backward it does not have
#
# RMSNorm rescales each row to unit root mean square and multiplies by a gain; it does not
# subtract the mean and has no bias:
#
# $$m = \tfrac1C\textstyle\sum_c x_c^2,\quad r = (m + \epsilon)^{-1/2},\quad \hat x = x\,r,\quad
#   y = \gamma \odot \hat x .$$
#
# Four nodes, `ms → rstd → xhat → y`, against LayerNorm's six (lesson 02). The rows below have
# a mean far from zero, so that the two norms compute different things. torch builds the same
# nodes, with `retain_grad()` on each, and one `backward()` of the fake loss `Σ y ⊙ dout`.

# %%
B, T, C = 2, 3, 8
eps = 1e-6
x = rng.standard_normal((B, T, C)) * 1.5 + 0.7  # (B, T, C)
weight = rng.standard_normal(C)  # (C,) gamma
dout = rng.standard_normal((B, T, C))  # (B, T, C)

ms = (x * x).mean(axis=-1, keepdims=True)  # (B, T, 1) mean square: no mean subtracted first
rstd = 1.0 / np.sqrt(ms + eps)  # (B, T, 1)
xhat = x * rstd  # (B, T, C)
y = xhat * weight  # (B, T, C)

x_t, w_t = t64(x, grad=True), t64(weight, grad=True)
ms_t = (x_t * x_t).mean(dim=-1, keepdim=True)
rstd_t = 1.0 / torch.sqrt(ms_t + eps)
xhat_t = x_t * rstd_t
y_t = xhat_t * w_t
for node in (ms_t, rstd_t, xhat_t, y_t):
    node.retain_grad()
(y_t * torch.from_numpy(dout)).sum().backward()
check("y", y, y_t)
y_pkg, rms_cache = rms_norm_forward(x, weight, eps)
check("y from rms_norm_forward", y_pkg, y_t)

# %% [markdown]
# **Backward, node by node.** `x` is used twice — in `xhat = x · rstd` directly and inside `ms` —
# so its gradient has two parts that add.
#
# * $y = \gamma\hat x$: $\;g := d\hat x = \mathit{dout}\odot\gamma,\;\; d\gamma = \sum_{B,T}\mathit{dout}\odot\hat x$
# * $\hat x = x\,r$: $\;dr = \sum_c g_c x_c,\;$ and the direct part $dx^{(1)} = g\,r$
# * $r = (m+\epsilon)^{-1/2}$: $\;dm = -\tfrac12 r^3\,dr$
# * $m = \tfrac1C\sum_c x_c^2$: $\;dx^{(2)} = dm \cdot 2x / C$

# %%
dxhat = dout * weight  # (B, T, C) g
dweight = (dout * xhat).sum(axis=(0, 1))  # (C,)
drstd = (dxhat * x).sum(axis=-1, keepdims=True)  # (B, T, 1)
dx_direct = dxhat * rstd  # (B, T, C)
dms = -0.5 * rstd**3 * drstd  # (B, T, 1)
dx_through_ms = dms * 2.0 * x / C  # (B, T, C)
dx = dx_direct + dx_through_ms
check("dxhat", dxhat, xhat_t.grad)
check("drstd", drstd, rstd_t.grad)
check("dms", dms, ms_t.grad)
check("dx = direct + through ms", dx, x_t.grad)
check("dweight", dweight, w_t.grad)
report_differs("dx without the path through ms", dx_direct, x_t.grad)

# %% [markdown]
# **Collapsed.** With $r^2 x\,\mathrm{mean}(g x) = \hat x\,\mathrm{mean}(g\hat x)$ the two parts become
#
# $$dx = r\,\big(g - \hat x\,\mathrm{mean}_c(g\,\hat x)\big),$$
#
# what `rms_norm_backward` computes. And against PyTorch's own `F.rms_norm` and `nn.RMSNorm`
# (from torch 2.4), with `eps` passed explicitly: their default is the dtype's machine epsilon,
# not Llama's `1e-6`.

# %%
g = dxhat
dx_two_terms = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
check("dx, two-term form", dx_two_terms, x_t.grad)
dx_pkg, dweight_pkg = rms_norm_backward(dout, rms_cache)
check("dx from rms_norm_backward", dx_pkg, x_t.grad)
check("dweight from rms_norm_backward", dweight_pkg, w_t.grad)
if hasattr(F, "rms_norm"):
    x2 = t64(x, grad=True)
    norm = torch.nn.RMSNorm(C, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(weight))
    out = norm(x2)
    (out * torch.from_numpy(dout)).sum().backward()
    check("y vs torch.nn.RMSNorm", y_pkg, out)
    check("dx vs torch.nn.RMSNorm", dx_pkg, x2.grad)
    check("dweight vs torch.nn.RMSNorm", dweight_pkg, norm.weight.grad)
    check("y vs F.rms_norm", y_pkg, F.rms_norm(t64(x), (C,), t64(weight), eps))
else:
    print("  this torch has no F.rms_norm / nn.RMSNorm (added in 2.4): skipped")

# %% [markdown]
# **Next to LayerNorm.** Lesson 02 ends with
#
# $$dx_{\text{LN}} = r\,\big(g - \mathrm{mean}_c(g) - \hat x\,\mathrm{mean}_c(g\,\hat x)\big).$$
#
# RMSNorm's has no $-\mathrm{mean}_c(g)$. That term is the gradient through the **mean node**:
# LayerNorm computes $x_c - \mu$, and $\mu$ reads every feature, so every feature receives
# $-\tfrac1C\sum_c(\ldots)$ back. RMSNorm never subtracts a mean, so that path does not exist.
#
# The cleanest way to see it: on rows whose mean is already zero the two norms compute *the
# same forward* (the variance is then the mean square), and still their gradients differ, by
# exactly $r\,\mathrm{mean}(g)$ in every feature. The forward agrees; the derivative does not,
# because LayerNorm would also have re-centred a perturbed row and RMSNorm does not.

# %%
x0 = x - x.mean(axis=-1, keepdims=True)  # (B, T, C) zero-mean rows
y_ln, ln_cache = layer_norm_forward(x0, weight, np.zeros(C), eps)
y_rms, rms0_cache = rms_norm_forward(x0, weight, eps)
check("zero-mean rows: LayerNorm y = RMSNorm y", y_rms, y_ln)
dx_ln, _, _ = layer_norm_backward(dout, ln_cache)
dx_rms, _ = rms_norm_backward(dout, rms0_cache)
g0, r0 = dout * weight, rms0_cache.rstd
offset = np.broadcast_to(-r0 * g0.mean(axis=-1, keepdims=True), dx_ln.shape)  # (B, T, C): one value per row
check("dx_LN - dx_RMS = -rstd * mean(g)", dx_ln - dx_rms, offset)
report_differs("dx_LN vs dx_RMS", dx_rms, dx_ln)

# %% [markdown]
# Each term is an invariance. LayerNorm's output does not change when a constant is added to
# the row (a shift) or when the row is scaled, so its gradient is orthogonal to the all-ones
# direction (`Σ_c dx_c = 0`: that is what $-\mathrm{mean}(g)$ enforces) and to $\hat x$.
# RMSNorm is invariant to scaling only: its gradient is orthogonal to $x$ — exactly up to
# `eps`, since $x\cdot dx = r\,(x\cdot g)\,\epsilon/(m+\epsilon)$ — but its row sums are not zero.

# %%
print(f"  LayerNorm: largest |sum_c dx_c| = {np.abs(dx_ln.sum(-1)).max():.1e};  RMSNorm: "
      f"{np.abs(dx_pkg.sum(-1)).max():.2f}")  # fmt: skip
x_dot_dx = (x * dx_pkg).sum(-1, keepdims=True)  # (B, T, 1)
check(
    "RMSNorm: x . dx = rstd (x . g) eps / (ms + eps)",
    x_dot_dx,
    rstd * (x * g).sum(-1, keepdims=True) * eps / (ms + eps),
)
scale = (np.linalg.norm(x, axis=-1) * np.linalg.norm(dx_pkg, axis=-1)).max()  # what |x . dx| could be
print(f"  RMSNorm: largest |x . dx| = {np.abs(x_dot_dx).max():.1e}, against |x| |dx| up to {scale:.1f}")

# %% [markdown]
# The picture: one zero-mean row's `dx`, term by term. The bars of the two terms RMSNorm has are
# shared; LayerNorm adds the constant bar.

# %%
row = (0, 0)
terms = {
    "r·g": (r0 * g0)[row],
    "-r·x̂·mean(g x̂)": (-r0 * rms0_cache.xhat * (g0 * rms0_cache.xhat).mean(-1, keepdims=True))[row],
    "-r·mean(g)  (LayerNorm only)": np.broadcast_to(-r0[row] * g0[row].mean(), (C,)),
}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
width = 0.27
for j, (label, values) in enumerate(terms.items()):
    axes[0].bar(np.arange(C) + (j - 1) * width, values, width, label=label)
axes[0].axhline(0, color="k", lw=0.5)
axes[0].set(title="the terms of dx for one zero-mean row", xlabel="feature c")
axes[0].legend(fontsize=8)
axes[1].plot(dx_ln[row], "o-", label="LayerNorm dx (sums to 0)")
axes[1].plot(dx_rms[row], "s-", label="RMSNorm dx")
axes[1].axhline(0, color="k", lw=0.5)
axes[1].set(title="same forward, different gradients: offset by -r·mean(g)", xlabel="feature c")
axes[1].legend(fontsize=8)
fig.savefig(OUT / "17_rms_norm.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## 2. RoPE is a rotation
#
# Split each query or key vector of a head into `P = D/2` pairs and turn pair `i` of the vector
# at position `m` by the angle $m\,\omega_i$, $\omega_i = \theta^{-2i/D}$:
#
# $$\begin{pmatrix} a' \\ b' \end{pmatrix} = \begin{pmatrix} \cos m\omega_i & -\sin m\omega_i \\
#   \sin m\omega_i & \cos m\omega_i \end{pmatrix} \begin{pmatrix} a \\ b \end{pmatrix}.$$
#
# For one position, that is one `D × D` matrix $R_m$, block-diagonal up to which coordinates form
# a pair (the layout: section 3). Build it explicitly and check that `rotary_embedding_forward`
# is $x \mapsto R_m x$ at every position, and that $R_m$ is orthogonal.

# %%
D, P, theta = 8, 4, 10000.0
omega = rotary_frequencies(D, theta)  # (P,)


def pair_index(i: int, layout: str) -> tuple[int, int]:
    """The two coordinates of pair i: (i, i + P) in the half layout, (2i, 2i + 1) interleaved."""
    return (i, i + P) if layout == "half" else (2 * i, 2 * i + 1)


def rotation_matrix(m: int, layout: str = "half") -> np.ndarray:
    """(D, D) R_m: pair i turned by m * omega_i."""
    R = np.zeros((D, D))
    for i in range(P):
        a, b = pair_index(i, layout)
        c, s = np.cos(m * omega[i]), np.sin(m * omega[i])
        R[a, a], R[a, b], R[b, a], R[b, b] = c, -s, s, c
    return R


T = 6
positions = np.arange(T)
R = np.stack([rotation_matrix(m) for m in positions])  # (T, D, D)
xr = rng.standard_normal((B, 2, T, D))  # (B, H, T, D) queries of two heads
yr, rope_cache = rotary_embedding_forward(xr, positions, theta, "half")
check("rope(x) = R_m x at every position m", yr, np.einsum("tij,bhtj->bhti", R, xr))
check("R_m^T R_m = I", np.einsum("tji,tjk->tik", R, R), np.broadcast_to(np.eye(D), (T, D, D)))
check("|rope(x)| = |x|: every vector keeps its length", np.linalg.norm(yr, axis=-1), np.linalg.norm(xr, axis=-1))

# %% [markdown]
# **The backward** of a linear map $y = R x$ is $dx = R^{\top} dy$, and for a rotation
# $R(\phi)^{\top} = R(-\phi)$: the gradient is turned *back* by the same angle. Nothing of `x` is
# needed, only the cosines and sines (the cache holds those). Against torch autograd through
# the twin's `rotary_embedding`:

# %%
dyr = rng.standard_normal(yr.shape)
dxr = rotary_embedding_backward(dyr, rope_cache)
xr_t = t64(xr, grad=True)
yr_t = TF.rotary_embedding(xr_t, torch.from_numpy(positions), theta, "half")
(yr_t * torch.from_numpy(dyr)).sum().backward()
check("rope forward vs the twin", yr, yr_t)
check("dx = R_m^T dy", dxr, np.einsum("tji,bhtj->bhti", R, dyr))
check("dx vs torch autograd", dxr, xr_t.grad)
check("R_m^T = R_{-m}", np.swapaxes(R, 1, 2), np.stack([rotation_matrix(-m) for m in positions]))

# %% [markdown]
# **Relative positions.** Rotations compose by adding angles, so
# $(R_m q)\cdot(R_n k) = q^{\top} R_m^{\top} R_n k = q^{\top} R_{n-m}\, k$: the score of a query at
# `m` against a key at `n` depends on `n − m` only, although every vector was rotated by its
# absolute position. Put the *same* `q` at every position and the same `k` at every position:
# the `T × T` score matrix must be constant along each diagonal (a Toeplitz matrix), and
# shifting every position by 100 must change nothing.

# %%
T2 = 12
q1, k1 = rng.standard_normal(D), rng.standard_normal(D)
pos2 = np.arange(T2)
Q, _ = rotary_embedding_forward(np.tile(q1, (T2, 1)), pos2, theta)  # (T, D): q at every position
K, _ = rotary_embedding_forward(np.tile(k1, (T2, 1)), pos2, theta)
scores = Q @ K.T  # (T, T) [m, n] = q_m . k_n
toeplitz = np.array([[q1 @ rotation_matrix(n - m) @ k1 for n in pos2] for m in pos2])
check("q_m . k_n = q^T R_(n-m) k", scores, toeplitz)
check("R_m^T R_n = R_(n-m)", rotation_matrix(3).T @ rotation_matrix(7), rotation_matrix(4))
Qs, _ = rotary_embedding_forward(np.tile(q1, (T2, 1)), pos2 + 100, theta)
Ks, _ = rotary_embedding_forward(np.tile(k1, (T2, 1)), pos2 + 100, theta)
check("every position + 100: the same scores", Qs @ Ks.T, scores)
diag_spread = max(np.ptp(np.diagonal(scores, d)) for d in range(-T2 + 1, T2))
print(f"  largest spread along a diagonal of the score matrix: {diag_spread:.1e}")

# %% [markdown]
# An additive position code (lesson 05's sinusoids, or GPT's learned table) does not have this
# property: $(q + p_m)\cdot(k + p_n)$ has the terms $q\cdot p_n$ and $p_m\cdot k$, which depend on
# the absolute positions.

# %%
pe = nt.functional.sinusoidal_positional_encoding(T2, D)  # (T, D)
additive = (q1 + pe) @ (k1 + pe).T
report_differs("additive positions: shifted by 1 along the diagonal", additive[1:, 1:], additive[:-1, :-1])

# %% [markdown]
# The picture: pairs 0, 1 and 2 of one vector as the position goes from 0 to 39 — arcs of
# circles, since lengths are kept, pair 0 going round six times, pair 2 turning 0.4 rad in all; the Toeplitz score matrix; and, for `D = 64` and `q = k = 1`, the
# score against the distance, $2\sum_i \cos(d\,\omega_i)$, which decays: far-apart tokens
# interact less, one of the reasons RoPE was adopted (Su et al., 2021).

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
traj, _ = rotary_embedding_forward(np.tile(q1, (40, 1)), np.arange(40), theta)  # (40, D)
for i in range(P - 1):
    a, b = pair_index(i, "half")
    axes[0].plot(traj[:, a], traj[:, b], "o", ms=3, label=f"pair {i}: ω = {omega[i]:.3g} rad / position")
    axes[0].plot(traj[0, a], traj[0, b], "k*", ms=9)  # position 0: the unrotated pair
axes[0].plot([], [], "k*", label="position 0")
axes[0].set(title="one vector's pairs, positions 0..39", aspect="equal")
axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
im = axes[1].imshow(scores, cmap="RdBu_r")
axes[1].set(title="q_m · k_n: constant along diagonals", xlabel="key position n", ylabel="query position m")
fig.colorbar(im, ax=axes[1], shrink=0.8)
dist = np.arange(0, 513)
omega64 = rotary_frequencies(64, theta)
axes[2].plot(dist, 2 * np.cos(dist[:, None] * omega64[None]).sum(-1))
axes[2].set(title="q = k = 1, D = 64: score against n - m", xlabel="relative distance n - m", ylabel="score")
fig.savefig(OUT / "17_rope.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## 3. Two layouts of the pairs, and the permutation between them
#
# Which two coordinates form pair `i` is a convention, and both are in use:
#
# * **half** (Hugging Face's `rotate_half`, GPT-NeoX): pair `i` is `(i, i + P)`;
# * **interleaved** (Meta's original Llama code, `x[2i] + 1j·x[2i+1]` times $e^{im\omega_i}$): `(2i, 2i + 1)`.
#
# Both turn pair `i` by $m\omega_i$. So the two rotations are the *same* rotation of reordered
# coordinates: with $\pi$ moving interleaved coordinate `2i + j` to half coordinate `j·P + i`,
# $\;\mathrm{rope}_{\text{half}}(\Pi x) = \Pi\,\mathrm{rope}_{\text{interleaved}}(x)$.

# %%
print("  half pairs:       ", [pair_index(i, "half") for i in range(P)])
print("  interleaved pairs:", [pair_index(i, "interleaved") for i in range(P)])
perm = np.array([2 * i + j for j in range(2) for i in range(P)])  # half coordinate j*P + i <- interleaved 2i + j
print("  pi (half coordinate <- interleaved coordinate):", perm.tolist())
y_int, _ = rotary_embedding_forward(xr, positions, theta, "interleaved")
y_half, _ = rotary_embedding_forward(xr[..., perm], positions, theta, "half")
check("rope_half(x[pi]) = rope_interleaved(x)[pi]", y_half, y_int[..., perm])

# %% [markdown]
# A query is `q = W_q x`, so reordering its coordinates is reordering the **rows** of `W_q`,
# head by head; the same for `W_k`. Scores are dot products, which do not care about the
# order of coordinates, so a model with permuted `q_proj` and `k_proj` rotating in the half
# layout computes exactly what the original computes in the interleaved one. Values and the
# output projection are never rotated and stay as they are. `interleaved_to_half_rows` is this
# permutation (the `permute` of Hugging Face's `convert_llama_weights_to_hf.py`).
#
# Checked on a whole `LlamaAttention` (C = 16, 2 query heads, 1 key/value head): outputs, the
# input gradient, and the weight gradients, which are permuted the same way as the weights.
# The half-layout model is also run through the twin under autograd.

# %%
Ca, Ha, Hkva = 16, 2, 1
att_int = LlamaAttention(Ca, Ha, Hkva, theta, "interleaved", rng=rng)
for p in att_int.parameters():
    p[...] = 0.5 * rng.standard_normal(p.shape)  # larger weights: nothing small by accident
state = att_int.state_dict()
att_half = LlamaAttention(Ca, Ha, Hkva, theta, "half", rng=rng)
att_half.load_state_dict({**state, "q_proj.weight": interleaved_to_half_rows(state["q_proj.weight"], Ha),
                          "k_proj.weight": interleaved_to_half_rows(state["k_proj.weight"], Hkva)})  # fmt: skip
rows = (np.arange(Ha)[:, None] * D + perm).ravel()  # the same permutation, written out for every head
check("interleaved_to_half_rows = rows[pi] in every head", att_half.q_proj.weight, state["q_proj.weight"][rows])

xa = rng.standard_normal((B, 5, Ca))
da = rng.standard_normal((B, 5, Ca))
out_int, c_int = att_int.forward(xa, is_causal=True)
out_half, c_half = att_half.forward(xa, is_causal=True)
check("attention output: interleaved = permuted half", out_half, out_int)
dx_int, dx_half = att_int.backward(da, c_int), att_half.backward(da, c_half)
check("dx: interleaved = permuted half", dx_half, dx_int)
g_int, g_half = dict(att_int.named_grads()), dict(att_half.named_grads())
check(
    "dW_q: the gradient is permuted like the weight",
    g_half["q_proj.weight"],
    interleaved_to_half_rows(g_int["q_proj.weight"], Ha),
)
check("dW_v: values are not rotated, nothing permuted", g_half["v_proj.weight"], g_int["v_proj.weight"])

twin = twin_of(att_half)
xa_t = t64(xa, grad=True)
(twin(xa_t, is_causal=True) * torch.from_numpy(da)).sum().backward()
check("interleaved model's dx vs the twin of the half one", dx_int, xa_t.grad)
check(
    "permuted dW_k vs the twin's autograd",
    interleaved_to_half_rows(g_int["k_proj.weight"], Hkva),
    twin.k_proj.weight.grad,
)

att_wrong = LlamaAttention(Ca, Ha, Hkva, theta, "half", rng=rng)
att_wrong.load_state_dict(state)  # the interleaved weights, loaded unpermuted into a half-layout model
report_differs("half layout with unpermuted weights", att_wrong.forward(xa, is_causal=True)[0], out_int)

# %% [markdown]
# The last line is the bug to watch for: weights converted between Meta's and Hugging Face's
# formats without the permutation load without complaint (every shape fits) and produce a
# different model.
#
# ## 4. SwiGLU: a gate and its two paths
#
# The feed-forward is `down(h)`, $h = \mathrm{silu}(g) \odot u$, where `g = gate_proj(x)` and
# `u = up_proj(x)` are two projections of the same input and $\mathrm{silu}(g) = g\,\sigma(g)$.
# As nodes: `s = σ(g)`, `a = g · s`, `h = a · u`. Going back:
#
# * $h = a\,u$: $\;du = dh\,a,\;\; da = dh\,u$ — the gate passes gradient to `u` as far as it is open;
# * $a = g\,s$: $\;ds = da\,g$ and the direct part $dg^{(1)} = da\,s$;
# * $s = \sigma(g)$: $\;dg^{(2)} = ds\,\sigma(g)(1 - \sigma(g))$.

# %%
Fw = 6
gate = rng.standard_normal((B, T, Fw)) * 2.0  # (B, T, F)
up = rng.standard_normal((B, T, Fw))
dh = rng.standard_normal((B, T, Fw))

s = 1.0 / (1.0 + np.exp(-gate))  # (B, T, F) sigma(g)
a = gate * s  # silu(g)
h = a * up

g_t, u_t = t64(gate, grad=True), t64(up, grad=True)
s_t = torch.sigmoid(g_t)
a_t = g_t * s_t
h_t = a_t * u_t
for node in (s_t, a_t, h_t):
    node.retain_grad()
(h_t * torch.from_numpy(dh)).sum().backward()
check("h", h, h_t)

du = dh * a
da_ = dh * up
ds = da_ * gate
dg_direct = da_ * s
dg_through_s = ds * s * (1.0 - s)
dg = dg_direct + dg_through_s
check("da", da_, a_t.grad)
check("ds", ds, s_t.grad)
check("du", du, u_t.grad)
check("dg = direct + through sigma", dg, g_t.grad)
report_differs("dg without the path through sigma", dg_direct, g_t.grad)

# %% [markdown]
# Collapsed, $\mathrm{silu}'(g) = \sigma(g)\,\big(1 + g\,(1 - \sigma(g))\big)$ and
# $dg = dh \odot u \odot \mathrm{silu}'(g)$: what `swiglu_backward` computes (with SciPy's
# `expit` for σ, which does not overflow). In the module, `x` feeds both projections, so
# `dx = gate_projᵀ dg + up_projᵀ du`; checked against the twin, every weight gradient too.

# %%
check("silu'(g) in closed form", dh * up * s * (1.0 + gate * (1.0 - s)), g_t.grad)
dgate_pkg, dup_pkg = swiglu_backward(dh, swiglu_forward(gate, up)[1])
check("dgate from swiglu_backward", dgate_pkg, g_t.grad)
check("dup from swiglu_backward", dup_pkg, u_t.grad)

ff = SwiGLUFeedForward(Ca, Fw, rng=rng)
xf = rng.standard_normal((B, T, Ca))
df = rng.standard_normal((B, T, Ca))
yf, cf = ff.forward(xf)
ff.zero_grad()
dxf = ff.backward(df, cf)
ff_t = twin_of(ff)
xf_t = t64(xf, grad=True)
yf_t = ff_t(xf_t)
(yf_t * torch.from_numpy(df)).sum().backward()
check("SwiGLUFeedForward y vs the twin", yf, yf_t)
check("SwiGLUFeedForward dx vs the twin", dxf, xf_t.grad)
for name, p in ff_t.named_parameters():
    check(f"d{name} vs the twin", dict(ff.named_grads())[name], p.grad)

# %% [markdown]
# SiLU is smooth, and unlike ReLU it is not monotonic: its derivative is *negative* below
# about `x = −1.28` (minimum −0.0998 at `x ≈ −2.40`), so a unit there pushes its input the
# other way. The picture sets SiLU beside GELU and ReLU, each derivative from the package's
# backward (`*_backward` of ones), and the gradient `du` of one row: zero where the gate is shut.

# %%
grid = np.linspace(-6, 4, 1001)
ones = np.ones_like(grid)
curves = {}
for label, fwd, bwd in (("silu", silu_forward, silu_backward), ("gelu", gelu_forward, gelu_backward),
                        ("relu", relu_forward, relu_backward)):  # fmt: skip
    yv, cache = fwd(grid)
    curves[label] = (yv, bwd(ones, cache))
dsilu = curves["silu"][1]
print(f"  silu'(x) is negative for x < {grid[np.argmax(dsilu >= 0)]:.2f}; its minimum is {dsilu.min():.4f} at "
      f"x = {grid[dsilu.argmin()]:.2f}")  # fmt: skip
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
for label, (yv, dv) in curves.items():
    axes[0].plot(grid, yv, label=label)
    axes[1].plot(grid, dv, label=label)
axes[0].set(title="activation", xlabel="x", ylim=(-1, 4))
axes[1].axhline(0, color="k", lw=0.5)
axes[1].set(title="derivative, from each *_backward", xlabel="x")
for ax in axes[:2]:
    ax.legend()
axes[2].scatter(gate[0].ravel(), np.abs(du[0]).ravel() / np.abs(dh[0]).ravel(), s=12)
axes[2].plot(grid, np.abs(curves["silu"][0]), color="tab:gray", lw=0.8, label="|silu(g)|")
axes[2].set(
    title="|du| / |dh| = |silu(g)|: the gate scales u's gradient", xlabel="gate value g", xlim=(-6, 4), ylim=(0, 4)
)
axes[2].legend()
fig.savefig(OUT / "17_swiglu.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## 5. Grouped-query attention: the gradient of a shared head is a sum
#
# `H` query heads, `Hkv` key/value heads, `G = H / Hkv` query heads per group: query head `h`
# reads key/value head `h // G` (the order of `repeat_interleave` and of Hugging Face's
# `repeat_kv`). The reference implementation copies each key/value head `G` times and runs
# ordinary attention; ours broadcasts views instead, `q` seen as `(B, Hkv, G, T, D)` against
# each key head seen as `(B, Hkv, 1, S, D)`. Each of the `G` query heads of a group computes its
# own key gradient; the shared head was *used* `G` times, so its gradient is their sum:
#
# $$dk_j = \sum_{g=0}^{G-1} dk^{(jG+g)},\qquad dv_j = \sum_{g=0}^{G-1} dv^{(jG+g)}.$$
#
# In torch, autograd does the sum inside `repeat_interleave`'s backward. We look at the
# gradient of the repeated tensor (one slice per query head, `retain_grad()`), compare it with
# our per-head gradients, and then the sums.

# %%
H, Hkv, T3, D3 = 4, 2, 5, 4
G = H // Hkv
print("  query head -> key/value head:", {h: h // G for h in range(H)})
q = rng.standard_normal((B, H, T3, D3))  # (B, H, T, D)
k = rng.standard_normal((B, Hkv, T3, D3))  # (B, Hkv, S, D)
v = rng.standard_normal((B, Hkv, T3, D3))
do = rng.standard_normal((B, H, T3, D3))

out, gqa_cache = grouped_query_attention_forward(q, k, v, is_causal=True)
dq, dk, dv = grouped_query_attention_backward(do, gqa_cache)
# the per-query-head gradients, before the group sum: the same backward, without the sum
_, dk_per_head, dv_per_head = scaled_dot_product_attention_backward(do.reshape(B, Hkv, G, T3, D3), gqa_cache.attention)

q_t, k_t, v_t = t64(q, grad=True), t64(k, grad=True), t64(v, grad=True)
k_rep, v_rep = k_t.repeat_interleave(G, dim=1), v_t.repeat_interleave(G, dim=1)  # (B, H, S, D) copies
k_rep.retain_grad()
v_rep.retain_grad()
out_t = F.scaled_dot_product_attention(q_t, k_rep, v_rep, is_causal=True)
(out_t * torch.from_numpy(do)).sum().backward()
check("output vs repeat_interleave + F.sdpa", out, out_t)
check("dq", dq, q_t.grad)
check("per-query-head dk vs the repeated keys' grad", dk_per_head.reshape(B, H, T3, D3), k_rep.grad)
check("per-query-head dv vs the repeated values' grad", dv_per_head.reshape(B, H, T3, D3), v_rep.grad)
check("dk = sum over the group", dk, k_t.grad)
check("dv = sum over the group", dv, v_t.grad)
report_differs("dk from the group's first head alone", dk_per_head[:, :, 0], k_t.grad)
q2, k2, v2 = t64(q, grad=True), t64(k, grad=True), t64(v, grad=True)
try:
    out2 = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, enable_gqa=True)  # the groups inside torch
except TypeError:
    print("  this torch's F.scaled_dot_product_attention has no enable_gqa (added in 2.5): skipped")
else:
    (out2 * torch.from_numpy(do)).sum().backward()
    check("dk vs F.sdpa(enable_gqa=True)", dk, k2.grad)
    check("dv vs F.sdpa(enable_gqa=True)", dv, v2.grad)

# %% [markdown]
# The two ends of the family: `Hkv = H` (`G = 1`, every sum has one term) is multi-head
# attention, and `Hkv = 1` is multi-query attention, one key/value head for all `H`, whose
# gradient sums all of them.

# %%
_, c_mha = grouped_query_attention_forward(q, q, q, is_causal=True)  # Hkv = H: keys and values of 4 heads
_, c_std = scaled_dot_product_attention_forward(q, q, q, is_causal=True)
check("Hkv = H: dk equals ordinary attention's", grouped_query_attention_backward(do, c_mha)[1],
      scaled_dot_product_attention_backward(do, c_std)[1])  # fmt: skip
k1h, v1h = k[:, :1], v[:, :1]  # (B, 1, S, D): multi-query
_, c_mqa = grouped_query_attention_forward(q, k1h, v1h, is_causal=True)
_, dk_all, _ = scaled_dot_product_attention_backward(do, scaled_dot_product_attention_forward(
    q, np.broadcast_to(k1h, q.shape), np.broadcast_to(v1h, q.shape), is_causal=True)[1])  # fmt: skip
check(
    "Hkv = 1: dk is the sum over all H heads",
    grouped_query_attention_backward(do, c_mqa)[1],
    dk_all.sum(1, keepdims=True),
)

# %% [markdown]
# **What sharing saves** is memory at generation time: the key/value cache holds
# `2 · n_layers · B · Hkv · N · D` numbers instead of `2 · n_layers · B · H · N · D`. For the
# default `LlamaConfig` (4 layers, C = 128, 4 query heads, D = 32), one float32 sequence of 128
# positions:

# %%
kv_bytes = {}
for n_kv in (4, 2, 1):
    llama = nt.Llama(nt.LlamaConfig(vocab_size=43, n_kv_heads=n_kv), dtype=np.float32, rng=np.random.default_rng(0))
    kv = LlamaKVCache(llama.eval(), batch_size=1)
    c = llama.config
    formula = 2 * c.n_layers * 1 * n_kv * c.max_len * (c.d_model // c.n_heads) * 4
    assert kv.nbytes == formula, (kv.nbytes, formula)
    kv_bytes[n_kv] = kv.nbytes
    kind = {4: "multi-head", 2: "grouped (G = 2)", 1: "multi-query"}[n_kv]
    print(f"  n_kv_heads = {n_kv} ({kind:<15}): {kv.nbytes:>7} bytes = {kv.nbytes // 1024} KiB  (= the formula)")

# %% [markdown]
# The picture: which key/value head each query head reads; for one key head, the gradient that
# each query head of its group sends and their sum; and the cache size.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
mapping = np.zeros((H, Hkv))
mapping[np.arange(H), np.arange(H) // G] = 1
axes[0].imshow(mapping, cmap="Blues")
axes[0].set(title=f"H = {H} query heads over Hkv = {Hkv} key/value heads", xlabel="key/value head j",
            ylabel="query head h", xticks=range(Hkv), yticks=range(H))  # fmt: skip
b0, s0 = 0, 1  # one row of the batch, one key position
for gi in range(G):
    axes[1].plot(dk_per_head[b0, 0, gi, s0], "o--", label=f"from query head {gi} (dk^({gi}))")
axes[1].plot(dk[b0, 0, s0], "ks-", label="dk of key head 0 = their sum")
axes[1].set(title=f"key head 0, position {s0}: the group's gradients add", xlabel="feature d", xticks=range(D3))
axes[1].legend(fontsize=8)
axes[2].bar([f"Hkv = {n}" for n in kv_bytes], [b / 1024 for b in kv_bytes.values()], color="tab:green")
axes[2].set(title="KV cache, default LlamaConfig, 128 positions, float32", ylabel="KiB")
fig.savefig(OUT / "17_gqa.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## 6. All four in one block, and in a whole Llama
#
# `LlamaDecoderLayer` is `h = x + self_attn(norm1(x))`, `y = h + ff(norm2(h))`: RMSNorm, RoPE
# with grouped-query attention, SwiGLU, and the residual paths that pass the gradient straight
# through. Its backward, and that of a small `Llama` (embeddings, two layers, final RMSNorm,
# an untied head), against the twin under autograd — every parameter gradient:

# %%
layer = LlamaDecoderLayer(16, 4, 2, 24, rng=rng)
for p in layer.parameters():
    p[...] += 0.3 * rng.standard_normal(p.shape)  # norm gains away from one, larger projections
xl = rng.standard_normal((B, 7, 16))
dl = rng.standard_normal((B, 7, 16))
yl, cl = layer.forward(xl)
layer.zero_grad()
dxl = layer.backward(dl, cl)
layer_t = twin_of(layer)
xl_t = t64(xl, grad=True)
(layer_t(xl_t) * torch.from_numpy(dl)).sum().backward()
check("LlamaDecoderLayer dx vs the twin", dxl, xl_t.grad)
worst = max((report_match(f"d{n}", dict(layer.named_grads())[n], p.grad) for n, p in layer_t.named_parameters()),
            key=lambda cmp: cmp.error)  # fmt: skip
CHECKS.append(worst)

cfg = nt.LlamaConfig(vocab_size=20, max_len=16, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=24)
model = nt.Llama(cfg, rng=rng)
for p in model.parameters():
    p[...] += 0.3 * rng.standard_normal(p.shape)
ids = rng.integers(0, 20, size=(B, 9))
logits, cache = model.forward(ids)
dlogits = rng.standard_normal(logits.shape)
model.zero_grad()
model.backward(dlogits, cache)
model_t = twin_of(model)
logits_t = model_t(torch.from_numpy(ids))
(logits_t * torch.from_numpy(dlogits)).sum().backward()
check("Llama logits vs the twin", logits, logits_t)
grads = dict(model.named_grads())
for n, p in model_t.named_parameters():
    CHECKS.append(relative_error(f"d{n} (Llama)", grads[n], p.grad.numpy()))
worst = max(CHECKS[-len(grads) :], key=lambda cmp: cmp.error)
if not worst.error <= tolerance("cpu", np.float64):
    raise AssertionError(f"MISMATCH {worst.describe()}")
print(
    f"  all {len(grads)} parameter gradients of the Llama vs the twin: worst {worst.name}, max rel err {worst.error:.1e}"
)

# %% [markdown]
# **Trained.** `python -m numpy_transformer train --task charlm --model llama` trains this model
# at the GPT's size on lesson 10's character-level task; the README's "Llama-style decoder"
# section has the two side by side, validation loss against step and against time.
#
# ## Summary
#
# * RMSNorm's backward is LayerNorm's without `−mean(g)`: no mean is subtracted in the forward,
#   so there is no path back through one; its gradient is orthogonal to `x` but not to `1`.
# * RoPE is a rotation: its backward rotates back; scores depend on `m − n` only.
# * The half and interleaved layouts are one model up to a permutation of `q_proj` / `k_proj`
#   rows per head — forget it and the converted model is silently wrong.
# * SwiGLU's gate has two paths to `g` (through `g` itself and through `σ(g)`), and scales `u`'s gradient.
# * A shared key/value head's gradient is the sum over the query heads that read it.

# %%
worst = max(CHECKS, key=lambda cmp: cmp.error)
print(f"\n{len(CHECKS)} checks; the worst: {worst.name}, max rel err {worst.error:.1e}")
print(f"wrote {', '.join(f'17_{n}.png' for n in ('rms_norm', 'rope', 'swiglu', 'gqa'))} to {OUT}")
print(f"total {time.perf_counter() - START:.1f} s")
