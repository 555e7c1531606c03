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
# # 03 · Scaled dot-product attention, backward by hand
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt D} + \text{mask}\Big)\,V$$
#
# This lesson runs attention forward as five small steps,
#
# `scores → masked → weights (softmax) → attn (dropout) → out (weighted sum of values)`,
#
# then backward through the same five steps in reverse, comparing every intermediate gradient
# with torch autograd. Then it looks at the masks (causal, padding, both), at what a query
# row with **no** visible key gives, and at how `is_causal` lines up when $T \ne S$.
#
# Shape legend:
#
# | letter | meaning |
# |---|---|
# | `B` | batch |
# | `H` | heads |
# | `T` | query length (target) |
# | `S` | key / value length (source) |
# | `D` | width of one head (query, key and value here) |
#
# Masks follow one convention in this package: a **bool** array, `True` = "may attend",
# broadcastable to `(B, H, T, S)`. Every array is float64; a check prints `exact`,
# `close (max rel err …)`, or stops with an `AssertionError`.

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer.functional import (
    causal_mask,
    padding_mask,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
    softmax_backward,
    softmax_forward,
)
from numpy_transformer.testing import report_differs, report_match

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

np.set_printoptions(precision=3, suppress=True, linewidth=110)
rng = np.random.default_rng(0)
torch.manual_seed(0)  # only nn.MultiheadAttention's initial weights below draw from torch


def t64(a, grad=False):
    """A float64 torch leaf holding a copy of the NumPy array."""
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def grid(mask):
    """A bool (T, S) mask as rows of 1 (may attend) and . (blocked)."""
    return "\n".join("    " + " ".join("1" if m else "." for m in row) for row in mask)


# %% [markdown]
# ## 1. The masks
#
# A batch of two token sequences, right-padded with `PAD = 0`. Self-attention, so $T = S$.
#
# * `causal_mask(T)` is `(T, S)`: query $t$ may see key $s$ only when $s \le t$ (no peeking
#   at the future).
# * `padding_mask(ids, PAD)` is `(B, 1, 1, S)`: no query, in any head, may see a padded key.
# * Their logical **and** broadcasts to `(B, 1, T, S)`, and then against the scores `(B, H, T, S)`.

# %%
PAD = 0
ids = np.array([[5, 3, 8, 2, 7, 9], [4, 6, 1, 0, 0, 0]])  # (B, S)
B, S = ids.shape
T, H, D = S, 2, 4

causal = causal_mask(T)  # (T, S)
pad = padding_mask(ids, PAD)  # (B, 1, 1, S)
allowed = pad & causal  # (B, 1, T, S)
print(f"causal_mask(T), shape {causal.shape}\n{grid(causal)}")
print(f"padding_mask(ids)[1], shape {pad.shape}\n{grid(pad[1, 0])}")
print(f"both, batch element 1, shape {allowed.shape}\n{grid(allowed[1, 0])}")

# %% [markdown]
# ## 2. Forward, five steps (with dropout on the weights)
#
# | step | NumPy line | shape |
# |---|---|---|
# | scores | $s = QK^\top c$, $c = 1/\sqrt D$ | `(B, H, T, S)` |
# | masked | $\tilde s = s$ where allowed, $-\infty$ elsewhere | `(B, H, T, S)` |
# | weights | $w = \mathrm{softmax}_S(\tilde s)$ | `(B, H, T, S)` |
# | attn | $a = w \odot m/(1-p)$, $m$ the dropout keep-mask | `(B, H, T, S)` |
# | out | $o = aV$ | `(B, H, T, D)` |
#
# The scale $1/\sqrt D$ keeps the scores' variance near 1 when $Q$ and $K$ have unit-variance
# entries, so the softmax does not saturate as $D$ grows. A masked score of $-\infty$ becomes
# exactly $e^{-\infty} = 0$ in the softmax.
#
# Dropout draws a random mask, and torch's RNG is not NumPy's, so here the keep-mask is drawn
# once and handed to both sides.

# %%
q = rng.standard_normal((B, H, T, D))  # (B, H, T, D)
k = rng.standard_normal((B, H, S, D))  # (B, H, S, D)
v = rng.standard_normal((B, H, S, D))  # (B, H, S, D)
dout = rng.standard_normal((B, H, T, D))  # (B, H, T, D) random upstream gradient
p_drop = 0.2
keep = rng.random((B, H, T, S)) >= p_drop  # (B, H, T, S) True = kept
scale = 1.0 / math.sqrt(D)

# NumPy, step by step
scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, H, T, S)
masked = np.where(allowed, scores, -np.inf)  # (B, H, T, S)
weights, sm_cache = softmax_forward(masked, axis=-1)  # (B, H, T, S) every row here sees >= 1 key
attn = np.where(keep, weights / (1 - p_drop), 0.0)  # (B, H, T, S)
out = attn @ v  # (B, H, T, D)

# torch, the same steps, keeping every intermediate's gradient
q_t, k_t, v_t = t64(q, grad=True), t64(k, grad=True), t64(v, grad=True)
allowed_t, keep_t = torch.from_numpy(allowed), torch.from_numpy(keep)
scores_t = (q_t @ k_t.transpose(-1, -2)) * scale
masked_t = scores_t.masked_fill(~allowed_t, float("-inf"))
weights_t = torch.softmax(masked_t, dim=-1)
attn_t = weights_t * keep_t / (1 - p_drop)
out_t = attn_t @ v_t
for node in (scores_t, masked_t, weights_t, attn_t, out_t):
    node.retain_grad()
(out_t * torch.from_numpy(dout)).sum().backward()

report_match("scores", scores, scores_t)
# relative_error counts -inf vs -inf as an infinite error, so compare the finite entries and
# the positions of the -inf entries separately.
full = np.broadcast_to(allowed, scores.shape)  # (B, H, T, S)
report_match("masked scores, allowed entries", masked[full], masked_t.detach().numpy()[full])
report_match("masked scores, where -inf", np.isneginf(masked), torch.isneginf(masked_t))
report_match("weights", weights, weights_t)
report_match("attn (after dropout)", attn, attn_t)
report_match("out", out, out_t)
print("  weights are exactly 0 at every blocked key:", bool((weights[~full] == 0).all()))

# %% [markdown]
# ## 3. Backward, the five steps in reverse
#
# **out** $= aV$, a batched matrix product over the last two axes:
# $\quad da = do\,V^\top$ `(B, H, T, S)`, $\quad dV = a^\top do$ `(B, H, S, D)`.

# %%
dattn = dout @ v.swapaxes(-1, -2)  # (B, H, T, D) @ (B, H, D, S) -> (B, H, T, S)
dv = attn.swapaxes(-1, -2) @ dout  # (B, H, S, T) @ (B, H, T, D) -> (B, H, S, D)
report_match("dout (upstream)", dout, out_t.grad)
report_match("dattn", dattn, attn_t.grad)
report_match("dv", dv, v_t.grad)

# %% [markdown]
# **attn** $= w \odot m/(1-p)$, elementwise: $\quad dw = da \odot m/(1-p)$. A dropped weight
# passes no gradient back.

# %%
dweights = np.where(keep, dattn / (1 - p_drop), 0.0)  # (B, H, T, S)
report_match("dweights", dweights, weights_t.grad)

# %% [markdown]
# **weights** $= \mathrm{softmax}(\tilde s)$ along `S`: the Jacobian-vector product of
# walkthrough 01, row by row,
# $\quad d\tilde s = w \odot (dw - \sum_S dw\, w)$.
# At a blocked key $w = 0$, so $d\tilde s = 0$ there.

# %%
dmasked = softmax_backward(dweights, sm_cache)  # (B, H, T, S)
report_match("dmasked", dmasked, masked_t.grad)

# %% [markdown]
# **masked** $= s$ where allowed, $-\infty$ elsewhere: the gradient passes where allowed and
# is zero elsewhere (it already was, by the remark above).
#
# **scores** $= QK^\top c$:
# $\quad dQ = c\, ds\, K$ `(B, H, T, D)`, $\quad dK = c\, ds^\top Q$ `(B, H, S, D)`.

# %%
dscores = np.where(allowed, dmasked, 0.0)  # (B, H, T, S)
report_match("dscores", dscores, scores_t.grad)
dq = (dscores * scale) @ k  # (B, H, T, S) @ (B, H, S, D) -> (B, H, T, D)
dk = (dscores * scale).swapaxes(-1, -2) @ q  # (B, H, S, T) @ (B, H, T, D) -> (B, H, S, D)
report_match("dq", dq, q_t.grad)
report_match("dk", dk, k_t.grad)

# %% [markdown]
# A consequence worth seeing: a padded key (batch element 1, keys 3–5) is never looked at, so
# it receives **no** gradient, neither through $K$ nor through $V$.

# %%
print("  dk, dv at padded keys all zero:", bool((dk[1, :, 3:] == 0).all() and (dv[1, :, 3:] == 0).all()))

# %% [markdown]
# The package function does the same five steps (taking the bool mask and the explicit
# dropout keep-mask), and agrees with torch on every output:

# %%
out_pkg, cache = scaled_dot_product_attention_forward(q, k, v, mask=allowed, dropout_p=p_drop, dropout_mask=keep)
dq_pkg, dk_pkg, dv_pkg = scaled_dot_product_attention_backward(dout, cache)
report_match("out from the package", out_pkg, out_t)
report_match("cache.weights (before dropout)", cache.weights, weights_t)
report_match("dq from the package", dq_pkg, q_t.grad)
report_match("dk from the package", dk_pkg, k_t.grad)
report_match("dv from the package", dv_pkg, v_t.grad)

# %% [markdown]
# ## 4. Against `torch.nn.functional.scaled_dot_product_attention`
#
# Without dropout, PyTorch's built-in takes the same bool convention (`True` = may attend).
# Three masks: causal only (`is_causal=True` on both sides), padding only, and both.
# PyTorch will not take `is_causal=True` together with an `attn_mask`, so the combined case
# passes the combined mask; this package accepts either spelling.

# %%
torch_out = {}
cases = {
    "causal": dict(mask=None, is_causal=True),
    "padding": dict(mask=pad, is_causal=False),
    "causal + padding": dict(mask=allowed, is_causal=False),
}
for label, kw in cases.items():
    out_np, c = scaled_dot_product_attention_forward(q, k, v, mask=kw["mask"], is_causal=kw["is_causal"])
    grads_np = scaled_dot_product_attention_backward(dout, c)
    qt, kt, vt = t64(q, grad=True), t64(k, grad=True), t64(v, grad=True)
    attn_mask = None if kw["mask"] is None else torch.from_numpy(kw["mask"])
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn_mask, is_causal=kw["is_causal"])
    (o * torch.from_numpy(dout)).sum().backward()
    torch_out[label] = o
    print(label)
    report_match("  out", out_np, o)
    for name, ours, theirs in zip(("dq", "dk", "dv"), grads_np, (qt.grad, kt.grad, vt.grad), strict=True):
        report_match(f"  {name}", ours, theirs)

out_pad_causal, _ = scaled_dot_product_attention_forward(q, k, v, mask=pad, is_causal=True)
report_match("package mask=pad, is_causal=True", out_pad_causal, torch_out["causal + padding"])

# %% [markdown]
# ## 5. A query that can see nothing
#
# With **left** padding and a causal mask, the first query positions are pads that may only
# look at earlier positions, which are all pads too: every key of their row is blocked. The
# softmax of a row of $-\infty$ is $0/0$.
#
# This package defines the answer: **zero weights, zero output, zero gradient** for such a row.
# `torch.nn.functional.scaled_dot_product_attention` returns the same in recent PyTorch (2.5
# and later). `torch.nn.MultiheadAttention` returns **NaN** for those rows instead, so a model
# built on it must keep such rows out of the loss, or avoid them.

# %%
ids_left = np.array([[0, 0, 3, 5, 2, 7]])  # (1, S) left-padded
T1 = S1 = ids_left.shape[1]
mask_left = padding_mask(ids_left, PAD) & causal_mask(T1)  # (1, 1, T, S)
print("causal + left padding\n" + grid(mask_left[0, 0]))
q1, k1, v1 = (rng.standard_normal((1, H, T1, D)) for _ in range(3))
dout1 = rng.standard_normal((1, H, T1, D))

out1, c1 = scaled_dot_product_attention_forward(q1, k1, v1, mask=mask_left)
dq1, dk1, dv1 = scaled_dot_product_attention_backward(dout1, c1)
print(f"  weights of the two blind queries (head 0):\n{c1.weights[0, 0, :2]}")
print("  output rows 0-1 all zero:", bool((out1[:, :, :2] == 0).all()))
print("  dq rows 0-1 all zero:    ", bool((dq1[:, :, :2] == 0).all()))
print("  dk, dv at the pad keys 0-1 all zero:", bool((dk1[:, :, :2] == 0).all() and (dv1[:, :, :2] == 0).all()))

qt, kt, vt = t64(q1, grad=True), t64(k1, grad=True), t64(v1, grad=True)
o1 = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(mask_left))
(o1 * torch.from_numpy(dout1)).sum().backward()
print(f"torch {torch.__version__}, F.scaled_dot_product_attention:")
report_match("  out", out1, o1)
report_match("  dq", dq1, qt.grad)
report_match("  dk", dk1, kt.grad)
report_match("  dv", dv1, vt.grad)

# nn.MultiheadAttention uses the opposite convention: True = blocked.
mha = torch.nn.MultiheadAttention(H * D, H, batch_first=True, dtype=torch.float64)
x1 = torch.from_numpy(rng.standard_normal((1, T1, H * D)))
with torch.no_grad():
    blocked = torch.from_numpy(~causal_mask(T1))  # (T, S) True = blocked
    key_is_pad = torch.from_numpy(ids_left == PAD)  # (1, S) True = blocked
    o_mha, _ = mha(x1, x1, x1, attn_mask=blocked, key_padding_mask=key_is_pad)
nan_rows = torch.isnan(o_mha[0]).any(dim=-1).nonzero().ravel().tolist()
print(f"torch {torch.__version__}, nn.MultiheadAttention: NaN in output rows {nan_rows}")

# %% [markdown]
# ## 6. `is_causal` when $T \ne S$: aligned at the top left
#
# With 3 queries and 5 keys, which keys does query 0 see? PyTorch's `is_causal=True` (and this
# package's `causal_mask(T, S)`) aligns the triangle at the **top left**: query $t$ sees keys
# $0..t$, i.e. the mask is `tril(ones(T, S))`. Some libraries align at the bottom right
# instead (query $T-1$ sees every key, the natural choice when the queries are the *last* $T$
# positions of a cached sequence); that is a different mask and a different answer.

# %%
Tq, Sk = 3, 5
print("causal_mask(3, 5)\n" + grid(causal_mask(Tq, Sk)))
print("  equals tril(ones(3, 5)):", bool(np.array_equal(causal_mask(Tq, Sk), np.tril(np.ones((Tq, Sk), dtype=bool)))))

q2 = rng.standard_normal((B, H, Tq, D))
k2, v2 = rng.standard_normal((B, H, Sk, D)), rng.standard_normal((B, H, Sk, D))
dout2 = rng.standard_normal((B, H, Tq, D))
out2, c2 = scaled_dot_product_attention_forward(q2, k2, v2, is_causal=True)
grads2 = scaled_dot_product_attention_backward(dout2, c2)
qt, kt, vt = t64(q2, grad=True), t64(k2, grad=True), t64(v2, grad=True)
o2 = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
(o2 * torch.from_numpy(dout2)).sum().backward()
report_match("out, is_causal=True, T=3, S=5", out2, o2)
for name, ours, theirs in zip(("dq", "dk", "dv"), grads2, (qt.grad, kt.grad, vt.grad), strict=True):
    report_match(f"{name}, is_causal=True, T=3, S=5", ours, theirs)

bottom_right = np.tril(np.ones((Tq, Sk), dtype=bool), k=Sk - Tq)
out_br, _ = scaled_dot_product_attention_forward(q2, k2, v2, mask=bottom_right)
report_differs("bottom-right aligned mask instead", out_br, o2)

# %% [markdown]
# ## 7. A picture: where each query looks
#
# Attention weights of head 0 for both sequences of section 1, with causal + padding masks and
# no dropout. Grey cells are blocked (weight exactly 0). Each row sums to 1 over its white
# cells; in the padded sequence, the pad queries (rows 3–5) still attend to the real tokens,
# while no query ever attends to a pad key.

# %%
_, c_plot = scaled_dot_product_attention_forward(q, k, v, mask=allowed)
full_allowed = full  # (B, H, T, S)
fig, axes = plt.subplots(1, B, figsize=(12, 5.2), layout="constrained")
cmap = plt.get_cmap("viridis").copy()
cmap.set_bad("lightgrey")
for b, ax in enumerate(axes):
    w = np.ma.masked_array(c_plot.weights[b, 0], mask=~full_allowed[b, 0])  # (T, S)
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0)
    for t in range(T):
        for s in range(S):
            if full_allowed[b, 0, t, s]:
                value = c_plot.weights[b, 0, t, s]
                colour = "white" if value < 0.6 else "black"
                ax.text(s, t, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    labels = [f"{tok}" if tok != PAD else "PAD" for tok in ids[b]]
    ax.set_xticks(range(S), [f"k{s}\n{lab}" for s, lab in enumerate(labels)])
    ax.set_yticks(range(T), [f"q{t} {lab}" for t, lab in enumerate(labels)])
    ax.set_xlabel("key (position, token)")
    if b == 0:
        ax.set_ylabel("query (position, token)")
    ax.set_title(f"batch {b}, head 0: causal + padding")
fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
fig.suptitle("attention weights; grey = blocked (weight exactly 0); each row sums to 1")
png = OUT / "03_attention_weights.png"
fig.savefig(png, dpi=120)
plt.close(fig)
print("saved", png)

# %% [markdown]
# ## Summary
#
# * Forward: `scores = QKᵀ/√D → masked (−∞ where blocked) → weights = softmax → attn = dropout
#   → out = attn V`, shapes `(B, H, T, S)` until the last step gives `(B, H, T, D)`.
# * Backward, in reverse: $da = do\,V^\top$, $dV = a^\top do$; $dw = da\odot m/(1-p)$;
#   $d\tilde s = w\odot(dw - \sum_S dw\,w)$; zero at blocked keys; $dQ = c\,ds\,K$, $dK = c\,ds^\top Q$.
#   Each intermediate matches torch autograd.
# * Masks are bool, `True` = may attend; causal `(T, S)` and padding `(B, 1, 1, S)` combine with
#   `&` and broadcast. Blocked and padded keys receive exactly zero gradient.
# * A query with no visible key gives zero weights, zero output and zero gradient here and in
#   `F.scaled_dot_product_attention` (PyTorch ≥ 2.5); `nn.MultiheadAttention` gives NaN.
# * `is_causal=True` with $T \ne S$ is `tril(ones(T, S))`, aligned at the top left.
