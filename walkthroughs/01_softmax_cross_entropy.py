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
# # 01 · Softmax and cross-entropy, backward by hand
#
# This lesson derives the gradients that sit at the very top of every language model:
#
# 1. the softmax **Jacobian**, written out in full for one small row;
# 2. the **Jacobian-vector product** $dx = y \odot (dy - \langle dy, y\rangle)$, which gives the
#    same numbers without ever building the Jacobian;
# 3. the **fused softmax + cross-entropy** gradient $(p - \mathrm{onehot}(y))/N$;
# 4. **label smoothing** and **`ignore_index`**, and how the mean is taken when both are on.
#
# Every intermediate gradient is checked against PyTorch autograd in float64. A check prints
# `exact` (bit for bit), `close (max rel err …)` (within the project's float64 contract,
# $\max|a-b| / \max(1, \max|b|) \le 10^{-10}$), or stops the lesson with an `AssertionError`.
#
# Shape legend: `N` rows (positions), `V` classes (vocabulary), `B` batch, `T` time.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer.functional import (
    cross_entropy_backward,
    cross_entropy_forward,
    log_softmax_backward,
    log_softmax_forward,
    softmax_backward,
    softmax_forward,
)
from numpy_transformer.testing import report_differs, report_match

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)


def t64(a, grad=False):
    """A float64 torch leaf holding a copy of the NumPy array."""
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


# %% [markdown]
# ## 1. The forward pass
#
# For one row $x \in \mathbb{R}^V$:
#
# $$y_i = \frac{e^{x_i}}{\sum_j e^{x_j}}.$$
#
# `softmax_forward` subtracts the row maximum first. Adding the same constant to every
# $x_j$ scales numerator and denominator by the same $e^c$, so nothing changes except that
# `exp` can no longer overflow.

# %%
V = 4
x = rng.standard_normal(V)
y, sm_cache = softmax_forward(x)
print("x       =", x)
print("y       =", y, "  sum =", y.sum())

x_t = t64(x, grad=True)
y_t = torch.softmax(x_t, dim=-1)
report_match("softmax(x)", y, y_t)
report_match("softmax(x + 1000) (shift invariance)", softmax_forward(x + 1000.0)[0], y_t)

# %% [markdown]
# ## 2. The Jacobian, written out
#
# Differentiate $y_i = e^{x_i} / Z$ with $Z = \sum_j e^{x_j}$ and $\partial Z/\partial x_j = e^{x_j}$:
#
# $$\frac{\partial y_i}{\partial x_j}
#   = \frac{\delta_{ij} e^{x_i} Z - e^{x_i} e^{x_j}}{Z^2}
#   = y_i(\delta_{ij} - y_j),
# \qquad J = \mathrm{diag}(y) - y y^\top .$$
#
# Two facts to read off the matrix: it is **symmetric**, and every row and column **sums to
# zero**. The second one follows from $\sum_i y_i = 1$ for every $x$: moving $x$ cannot change
# the total, so $\mathbf 1^\top J = 0$.

# %%
J = np.diag(y) - np.outer(y, y)  # (V, V)
print("J =\n", J)
print(f"largest |row sum| : {np.abs(J.sum(axis=1)).max():.1e}")
print(f"symmetric        : {np.array_equal(J, J.T)}")

J_t = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, dim=-1), torch.from_numpy(x))
report_match("Jacobian dy/dx", J, J_t)

# %% [markdown]
# ## 3. The trap: never test softmax with `sum()` as the loss
#
# A tempting gradient test is `softmax(x).sum().backward()`. But $\mathbf 1^\top J = 0$, so the
# true gradient of that loss is **zero**, and any backward that also returns zero for an
# all-ones upstream gradient passes. Here is such a wrong backward: it subtracts the plain
# mean of $dy$ where the correct formula (section 4) subtracts the $y$-weighted mean.
# With $dy = \mathbf 1$ both means are 1, so the bug is invisible.
#
# The fix is the "fake loss" $L = \sum_i y_i\, dy_i$ with a **random** $dy$: then
# $\partial L / \partial y = dy$, and autograd returns exactly $J^\top dy$.

# %%
ones = np.ones(V)
x_t = t64(x, grad=True)
torch.softmax(x_t, dim=-1).sum().backward()
print(f"torch grad of sum(softmax(x)): largest |entry| = {x_t.grad.abs().max().item():.1e}")

wrong_dx_ones = y * (ones - ones.mean())  # the bug: plain mean instead of sum(dy * y)
report_match("wrong backward, dy = 1 (bug slips through)", wrong_dx_ones, x_t.grad)

dy = rng.standard_normal(V)  # a random upstream gradient
x_t = t64(x, grad=True)
(torch.softmax(x_t, dim=-1) * torch.from_numpy(dy)).sum().backward()
report_differs("wrong backward, random dy (bug caught)", y * (dy - dy.mean()), x_t.grad)

# %% [markdown]
# ## 4. The Jacobian-vector product: the same gradient without $J$
#
# Backprop needs $dx = J^\top dy$, never $J$ itself:
#
# $$dx_j = \sum_i dy_i\, y_i(\delta_{ij} - y_j) = y_j\, dy_j - y_j \sum_i dy_i y_i
#        = y_j\big(dy_j - \langle dy, y\rangle\big).$$
#
# One dot product per row instead of a $V \times V$ matrix. That is the whole of
# `softmax_backward`, and it needs only the forward output $y$ (the cache holds nothing else).

# %%
x_t = t64(x, grad=True)
y_t = torch.softmax(x_t, dim=-1)
y_t.retain_grad()
(y_t * torch.from_numpy(dy)).sum().backward()

dx_explicit = J.T @ dy  # (V,)  the textbook route, O(V^2)
dx_jvp = y * (dy - (dy * y).sum())  # (V,)  the formula above, O(V)
dx_pkg = softmax_backward(dy, sm_cache)
report_match("dy (what reaches y)", dy, y_t.grad)
report_match("dx = J^T dy", dx_explicit, x_t.grad)
report_match("dx = y * (dy - sum(dy * y))", dx_jvp, x_t.grad)
report_match("dx from softmax_backward", dx_pkg, x_t.grad)

V_gpt2 = 50257
print(f"\nOne row's Jacobian for a GPT-2 vocabulary (V = {V_gpt2}) in float64: {V_gpt2**2 * 8 / 1e9:.1f} GB")

# %% [markdown]
# The same formula works for any batch of rows and along any axis: the sum runs over the
# softmax axis only. Here a `(B, T, V)` block along the last axis and along axis 1.

# %%
B, T, V = 2, 3, 5
xb = rng.standard_normal((B, T, V))
dyb = rng.standard_normal((B, T, V))
for axis in (-1, 1):
    yb, cache_b = softmax_forward(xb, axis=axis)
    xb_t = t64(xb, grad=True)
    yb_t = torch.softmax(xb_t, dim=axis)
    (yb_t * torch.from_numpy(dyb)).sum().backward()
    report_match(f"(B, T, V) softmax, axis={axis}", yb, yb_t)
    report_match(f"(B, T, V) dx, axis={axis}", softmax_backward(dyb, cache_b), xb_t.grad)

# %% [markdown]
# ## 5. Log-softmax, the form cross-entropy really uses
#
# $\log y_i = x_i - \log\sum_j e^{x_j}$, so $\partial \log y_i / \partial x_j = \delta_{ij} - y_j$ and
#
# $$dx_j = dy_j - y_j \sum_i dy_i .$$
#
# Computing $\log\mathrm{softmax}$ directly (never $\log$ of the softmax) keeps a tiny
# probability as a large negative number instead of $\log 0 = -\infty$.

# %%
N, V = 5, 7
z = rng.standard_normal((N, V)) * 2.0  # logits
targets = rng.integers(0, V, size=N)  # (N,)
dlp = rng.standard_normal((N, V))
logp, ls_cache = log_softmax_forward(z)
z_t = t64(z, grad=True)
logp_t = F.log_softmax(z_t, dim=-1)
(logp_t * torch.from_numpy(dlp)).sum().backward()
report_match("log_softmax(z)", logp, logp_t)
report_match("dz from log_softmax_backward", log_softmax_backward(dlp, ls_cache), z_t.grad)

# %% [markdown]
# ## 6. Cross-entropy: the chain, then the fused gradient
#
# For logits $z \in \mathbb{R}^{N\times V}$ and targets $t_n$:
#
# $$L = \frac1N \sum_n \ell_n, \qquad \ell_n = -\log p_{n, t_n}, \qquad p_n = \mathrm{softmax}(z_n).$$
#
# Backward, one node at a time:
#
# * $L = \mathrm{mean}(\ell)$: $\quad d\ell_n = 1/N$;
# * $\ell_n = -\log p_{n,t_n}$ picks one entry: $\quad d\log p_{n,v} = -[v = t_n]/N$;
# * log-softmax (section 5): $\quad dz_{n,j} = d\log p_{n,j} - p_{n,j}\sum_v d\log p_{n,v}$.
#
# The row sum of $d\log p$ is $-1/N$, so the chain collapses to the **fused** gradient
#
# $$dz_n = \frac{p_n - \mathrm{onehot}(t_n)}{N}.$$
#
# Below, torch runs the same chain with `retain_grad()` on each node so every step can be compared.

# %%
rows = np.arange(N)
onehot = np.zeros((N, V))
onehot[rows, targets] = 1.0

z_t = t64(z, grad=True)
logp_t = F.log_softmax(z_t, dim=-1)
logp_t.retain_grad()
nll_t = -logp_t.gather(1, torch.from_numpy(targets)[:, None]).squeeze(1)  # (N,)
nll_t.retain_grad()
loss_t = nll_t.mean()
loss_t.backward()

# forward, in NumPy
logp, ls_cache = log_softmax_forward(z)  # (N, V)
nll = -logp[rows, targets]  # (N,)
loss = nll.mean()
report_match("loss", loss, loss_t)

# backward, in NumPy, one node at a time
dnll = np.full(N, 1.0 / N)  # loss = nll.mean()
report_match("d nll", dnll, nll_t.grad)
dlogp = -onehot * dnll[:, None]  # nll = -logp[rows, targets]
report_match("d logp", dlogp, logp_t.grad)
dz_chain = log_softmax_backward(dlogp, ls_cache)  # logp = log_softmax(z)
report_match("dz through the chain", dz_chain, z_t.grad)

p = np.exp(logp)
dz_fused = (p - onehot) / N
report_match("dz fused: (p - onehot) / N", dz_fused, z_t.grad)
print(f"largest |row sum| of dz: {np.abs(dz_fused.sum(axis=1)).max():.1e}")

# %% [markdown]
# The textbook route goes through the probabilities instead: $\ell = -\log p_{t}$ gives
# $dp_{t} = -1/(N p_{t})$, then the softmax JVP. Same answer, but it **divides by $p$**.

# %%
z_t = t64(z, grad=True)
p_t = torch.softmax(z_t, dim=-1)
p_t.retain_grad()
(-torch.log(p_t).gather(1, torch.from_numpy(targets)[:, None])).mean().backward()

p, p_cache = softmax_forward(z)
dp = np.zeros((N, V))
dp[rows, targets] = -1.0 / (N * p[rows, targets])  # d(-log p)/dp = -1/p
report_match("d p (through log p)", dp, p_t.grad)
report_match("dz through softmax_backward", softmax_backward(dp, p_cache), z_t.grad)

# %% [markdown]
# Why the fused form wins: with confident, wrong logits the target probability underflows to
# exactly 0. The route through $p$ then computes $\log 0$ and $1/0$; the fused form never
# divides and stays finite, and it still agrees with torch.

# %%
z_big = z * 500.0
targets_bad = z_big.argmin(axis=1)  # the least likely class is the target
p_big, p_big_cache = softmax_forward(z_big)
with np.errstate(divide="ignore", invalid="ignore"):
    dp_big = np.zeros((N, V))
    dp_big[rows, targets_bad] = -1.0 / (N * p_big[rows, targets_bad])
    dz_naive = softmax_backward(dp_big, p_big_cache)
print("target probabilities:", p_big[rows, targets_bad])
print("route through p, all finite:", bool(np.isfinite(dz_naive).all()))

loss_big, ce_big = cross_entropy_forward(z_big, targets_bad)
dz_big = cross_entropy_backward(1.0, ce_big)
print("fused route, all finite:    ", bool(np.isfinite(dz_big).all()), "  loss =", float(loss_big))
zb_t = t64(z_big, grad=True)
lb_t = F.cross_entropy(zb_t, torch.from_numpy(targets_bad))
lb_t.backward()
report_match("loss, huge logits", loss_big, lb_t)
report_match("dz, huge logits", dz_big, zb_t.grad)

# %% [markdown]
# The package's `cross_entropy_forward` / `cross_entropy_backward` implement the fused form,
# and match `torch.nn.functional.cross_entropy`:

# %%
loss_pkg, ce_cache = cross_entropy_forward(z, targets)
dz_pkg = cross_entropy_backward(1.0, ce_cache)
z_t = t64(z, grad=True)
loss_t = F.cross_entropy(z_t, torch.from_numpy(targets))
loss_t.backward()
report_match("cross_entropy_forward vs F.cross_entropy", loss_pkg, loss_t)
report_match("cross_entropy_backward vs autograd", dz_pkg, z_t.grad)

# %% [markdown]
# ## 7. Label smoothing
#
# With smoothing $\varepsilon$ the target is no longer one-hot but
#
# $$q = (1-\varepsilon)\,\mathrm{onehot}(t) + \varepsilon / V ,$$
#
# and the row loss is the cross-entropy against $q$:
#
# $$\ell = -\sum_v q_v \log p_v = (1-\varepsilon)\,(-\log p_t) + \varepsilon\,\frac1V\sum_v(-\log p_v).$$
#
# Since $\sum_v q_v = 1$, the section-6 argument goes through unchanged:
# $\partial \ell / \partial z = p - q$. Smoothing only changes **what is subtracted**.

# %%
eps = 0.1
q = (1 - eps) * onehot + eps / V  # (N, V)
p = np.exp(logp)
loss_hand = -(q * logp).sum(axis=1).mean()
dz_hand = (p - q) / N

loss_pkg, ce_cache = cross_entropy_forward(z, targets, label_smoothing=eps)
dz_pkg = cross_entropy_backward(1.0, ce_cache)

z_t = t64(z, grad=True)
loss_t = F.cross_entropy(z_t, torch.from_numpy(targets), label_smoothing=eps)
loss_t.backward()
report_match("smoothed loss, hand formula", loss_hand, loss_t)
report_match("smoothed loss, cross_entropy_forward", loss_pkg, loss_t)
report_match("smoothed dz = (p - q) / N, by hand", dz_hand, z_t.grad)
report_match("smoothed dz, cross_entropy_backward", dz_pkg, z_t.grad)

# %% [markdown]
# ## 8. `ignore_index`, with and without smoothing
#
# In a padded batch some target positions are not real tokens; they carry `ignore_index`
# (PyTorch's default is $-100$). Those rows contribute **nothing**, and the mean divides by the
# number of **valid** rows $N_v$, not by $N$:
#
# $$L = \frac{1}{N_v} \sum_{n\ \mathrm{valid}} \ell_n,
# \qquad dz_n = [n\ \mathrm{valid}]\;\frac{p_n - q_n}{N_v}.$$
#
# With label smoothing on as well, **both** terms of $\ell_n$ (the NLL term and the smoothing
# term) are summed over the valid rows only and divided by $N_v$. Below: a `(B, T, V)` batch
# whose second sequence ends in three padded positions.

# %%
B, T, V = 2, 5, 6
IGNORE = -100
z3 = rng.standard_normal((B, T, V)) * 1.5  # (B, T, V)
t3 = rng.integers(0, V, size=(B, T))  # (B, T)
t3[1, 2:] = IGNORE
print("targets:\n", t3)

logp3, _ = log_softmax_forward(z3)  # (B, T, V)
p3 = np.exp(logp3)
valid = t3 != IGNORE  # (B, T)
n_valid = int(valid.sum())
safe_t3 = np.where(valid, t3, 0)  # any class index will do for ignored rows
q3 = np.full((B, T, V), eps / V)
np.put_along_axis(q3, safe_t3[..., None], 1 - eps + eps / V, axis=-1)  # (B, T, V) smoothed targets
row_loss = -(q3 * logp3).sum(axis=-1)  # (B, T)
loss_hand = np.where(valid, row_loss, 0.0).sum() / n_valid
dz_hand = np.where(valid[..., None], p3 - q3, 0.0) / n_valid
print(f"N = {B * T} rows, N_v = {n_valid} valid rows")

loss_pkg, ce_cache = cross_entropy_forward(z3, t3, ignore_index=IGNORE, label_smoothing=eps)
dz_pkg = cross_entropy_backward(1.0, ce_cache)  # (B, T, V)

z3_t = t64(z3, grad=True)
loss_t = F.cross_entropy(
    z3_t.reshape(-1, V), torch.from_numpy(t3).reshape(-1), ignore_index=IGNORE, label_smoothing=eps
)
loss_t.backward()
report_match("loss, ignore_index + smoothing, by hand", loss_hand, loss_t)
report_match("loss, ignore_index + smoothing, package", loss_pkg, loss_t)
report_match("dz, ignore_index + smoothing, by hand", dz_hand, z3_t.grad)
report_match("dz, ignore_index + smoothing, package", dz_pkg, z3_t.grad)
print("  gradient on ignored rows is exactly zero:", bool((dz_pkg[~valid] == 0).all()))

# %% [markdown]
# Two plausible but wrong ways to average, for contrast: dividing by all $N$ rows, and
# averaging the smoothing term over every row (ignored ones included) while the NLL term
# uses the valid rows only.

# %%
report_differs("loss divided by N instead of N_v", np.where(valid, row_loss, 0.0).sum() / (B * T), loss_t)
nll3 = -np.take_along_axis(logp3, safe_t3[..., None], axis=-1)[..., 0]  # (B, T)
smooth3 = -logp3.mean(axis=-1)  # (B, T)
loss_mixed = (1 - eps) * np.where(valid, nll3, 0.0).sum() / n_valid + eps * smooth3.mean()
report_differs("smoothing term averaged over all rows", loss_mixed, loss_t)

# %% [markdown]
# And the corner case: when **every** row is ignored the mean is $0/0$. The loss is NaN and
# the gradient is zero, in this package and in PyTorch.

# %%
t_none = np.full(N, IGNORE)
loss_none, cache_none = cross_entropy_forward(z, t_none, label_smoothing=eps)
z_t = t64(z, grad=True)
loss_t = F.cross_entropy(z_t, torch.from_numpy(t_none), label_smoothing=eps)
loss_t.backward()
report_match("loss, every row ignored (NaN)", loss_none, loss_t)
report_match("dz, every row ignored (zero)", cross_entropy_backward(1.0, cache_none), z_t.grad)

# %% [markdown]
# ## 9. A picture
#
# Left: the 4-class Jacobian of section 2 (diagonal $y_i(1-y_i)$, off-diagonal $-y_iy_j$).
# Right: for one row of the smoothed, padded batch, the probabilities $p$, the smoothed
# target $q$, and their difference, which is (up to $1/N_v$) the whole gradient.

# %%
fig, (ax_j, ax_g) = plt.subplots(1, 2, figsize=(11, 4.2))
lim = np.abs(J).max()
im = ax_j.imshow(J, cmap="RdBu_r", vmin=-lim, vmax=lim)
for i in range(J.shape[0]):
    for j in range(J.shape[1]):
        colour = "white" if abs(J[i, j]) > 0.6 * lim else "black"
        ax_j.text(j, i, f"{J[i, j]:+.3f}", ha="center", va="center", fontsize=9, color=colour)
ax_j.set_xticks(range(J.shape[1]))
ax_j.set_yticks(range(J.shape[0]))
ax_j.set_title(r"softmax Jacobian $\partial y_i/\partial x_j$")
ax_j.set_xlabel("j (input)")
ax_j.set_ylabel("i (output)")
fig.colorbar(im, ax=ax_j, shrink=0.8)

n_show = (0, 1)
classes = np.arange(V)
width = 0.27
ax_g.bar(classes - width, p3[n_show], width, label="p = softmax(z)")
ax_g.bar(classes, q3[n_show], width, label=rf"q (target, $\varepsilon$={eps})")
ax_g.bar(classes + width, (p3 - q3)[n_show], width, label="p - q  (gradient x N_v)")
ax_g.axhline(0.0, color="black", linewidth=0.8)
ax_g.set_xticks(classes)
ax_g.set_xlabel(f"class (target = {t3[n_show]})")
ax_g.set_title("fused cross-entropy gradient, one row")
ax_g.legend(fontsize=8)
fig.tight_layout()
png = OUT / "01_softmax_cross_entropy.png"
fig.savefig(png, dpi=120)
plt.close(fig)
print("saved", png)

# %% [markdown]
# ## Summary
#
# * The softmax Jacobian is $\mathrm{diag}(y) - yy^\top$: symmetric, rows summing to zero.
# * Backprop needs only $J^\top dy = y \odot (dy - \langle dy, y\rangle)$: one dot product per
#   row, and only $y$ is cached.
# * `sum(softmax(x))` has zero gradient, so it tests nothing; use a random upstream gradient
#   (the fake loss $\sum y \odot dy$).
# * Softmax + cross-entropy fuse to $(p - q)/N$, with $q$ the one-hot or smoothed target; the
#   fused form never divides by $p$ and survives huge logits.
# * With `ignore_index`, ignored rows get zero gradient and the mean (of both the NLL and the
#   smoothing term) divides by the number of valid rows; if none is valid the loss is NaN and
#   the gradient zero, as in PyTorch.
