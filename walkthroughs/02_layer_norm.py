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
# # 02 · LayerNorm, backward by hand
#
# LayerNorm normalises each row of the last dimension, then scales and shifts it:
#
# $$\mu = \tfrac1C\textstyle\sum_c x_c,\quad
#   \sigma^2 = \tfrac1C\sum_c (x_c-\mu)^2,\quad
#   \hat x = \dfrac{x-\mu}{\sqrt{\sigma^2+\epsilon}},\quad
#   y = \gamma \odot \hat x + \beta .$$
#
# Its backward is short in the end, but the short form hides two paths of the chain rule (through
# the mean and through the variance). This lesson:
#
# 1. breaks the forward into single nodes `mean → xc → var → rstd → xhat → y`;
# 2. backpropagates through each node and compares every intermediate gradient with torch
#    autograd (`retain_grad()` on the same nodes);
# 3. collapses the steps into the three-term form used by
#    `numpy_transformer.functional.layer_norm_backward`;
# 4. checks against `torch.nn.LayerNorm`, and shows that an unbiased variance, or `eps`
#    outside the square root, would **not** match it.
#
# Shape legend: `B` batch, `T` time, `C` features (the normalised dimension). Every array is
# float64; a check prints `exact`, `close (max rel err …)`, or stops with an `AssertionError`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from numpy_transformer.functional import layer_norm_backward, layer_norm_forward
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
# ## 1. The forward pass, one node at a time
#
# The inputs: a `(B, T, C)` activation, a gain $\gamma$ and a bias $\beta$ of shape `(C,)`, and
# a random upstream gradient `dout` (never all ones: a constant upstream gradient hides bugs,
# see walkthrough 01). The loss is the "fake loss" $L = \sum y \odot \mathit{dout}$, whose
# gradient with respect to $y$ is exactly `dout`.
#
# torch builds the same graph, with `retain_grad()` on every intermediate so that its
# `.grad` can be compared with ours after one `backward()`.

# %%
B, T, C = 2, 3, 8
eps = 1e-5
x = rng.standard_normal((B, T, C)) * 2.0 + 0.5  # (B, T, C)
weight = rng.standard_normal(C)  # (C,)  gamma
bias = rng.standard_normal(C)  # (C,)  beta
dout = rng.standard_normal((B, T, C))  # (B, T, C)

# NumPy, node by node
mean = x.mean(axis=-1, keepdims=True)  # (B, T, 1)
xc = x - mean  # (B, T, C)
var = (xc**2).mean(axis=-1, keepdims=True)  # (B, T, 1) biased: divide by C
rstd = 1.0 / np.sqrt(var + eps)  # (B, T, 1)
xhat = xc * rstd  # (B, T, C)
y = xhat * weight + bias  # (B, T, C)

# torch, the same nodes
x_t, w_t, b_t = t64(x, grad=True), t64(weight, grad=True), t64(bias, grad=True)
mean_t = x_t.mean(dim=-1, keepdim=True)
xc_t = x_t - mean_t
var_t = (xc_t**2).mean(dim=-1, keepdim=True)
rstd_t = 1.0 / torch.sqrt(var_t + eps)
xhat_t = xc_t * rstd_t
y_t = xhat_t * w_t + b_t
for node in (mean_t, xc_t, var_t, rstd_t, xhat_t, y_t):
    node.retain_grad()
(y_t * torch.from_numpy(dout)).sum().backward()

report_match("mean", mean, mean_t)
report_match("xc", xc, xc_t)
report_match("var", var, var_t)
report_match("rstd", rstd, rstd_t)
report_match("xhat", xhat, xhat_t)
report_match("y", y, y_t)

y_pkg, cache = layer_norm_forward(x, weight, bias, eps)
report_match("y from layer_norm_forward", y_pkg, y_t)
report_match("cache.xhat", cache.xhat, xhat_t)
report_match("cache.rstd", cache.rstd, rstd_t)

# %% [markdown]
# Before the affine step every row of $\hat x$ has **zero mean** and variance
# $\sigma^2/(\sigma^2+\epsilon)$, which is 1 up to the size of $\epsilon$ relative to the row's
# variance. The gain and bias then give each feature its own scale and offset back.

# %%
print(f"largest |row mean| of xhat: {np.abs(xhat.mean(axis=-1)).max():.1e}")
sci = {"float_kind": "{:.2e}".format}
print("1 - var(xhat), per row     :", np.array2string(1.0 - xhat.var(axis=-1).ravel(), formatter=sci))
print("eps / (var + eps), per row :", np.array2string((eps / (var + eps)).ravel(), formatter=sci))
report_match("var(xhat) = var / (var + eps)", xhat.var(axis=-1, keepdims=True), var / (var + eps))

# %% [markdown]
# ## 2. Backward, node by node
#
# Each step undoes one forward line. Where a node feeds two later nodes (here `xc` feeds both
# `var` and `xhat`, and `x` feeds both `mean` and `xc`), the gradients from the two uses
# **add up**. torch's `xc.grad` and `x.grad` are those totals, so we compare after both
# contributions have arrived.
#
# **Step 1**, $y = \gamma\hat x + \beta$:
# $\quad d\hat x = \mathit{dout}\odot\gamma,\quad d\gamma = \sum_{B,T} \mathit{dout}\odot\hat x,
# \quad d\beta = \sum_{B,T}\mathit{dout}$.

# %%
dxhat = dout * weight  # (B, T, C)
dweight = (dout * xhat).sum(axis=(0, 1))  # (C,)
dbias = dout.sum(axis=(0, 1))  # (C,)
report_match("dy (upstream)", dout, y_t.grad)
report_match("dxhat", dxhat, xhat_t.grad)
report_match("dweight", dweight, w_t.grad)
report_match("dbias", dbias, b_t.grad)

# %% [markdown]
# **Step 2**, $\hat x = x_c \cdot r$ with $r$ = `rstd` broadcast along $C$:
# $\quad dx_c \mathrel{+}= d\hat x \cdot r$ (first use of $x_c$),
# $\quad dr = \sum_c d\hat x_c\, x_{c}$ (a broadcast in the forward is a sum in the backward).

# %%
dxc = dxhat * rstd  # (B, T, C)  first contribution, through xhat
drstd = (dxhat * xc).sum(axis=-1, keepdims=True)  # (B, T, 1)
report_match("drstd", drstd, rstd_t.grad)

# %% [markdown]
# **Step 3**, $r = (\sigma^2+\epsilon)^{-1/2}$:
# $\quad d\sigma^2 = dr\cdot(-\tfrac12)(\sigma^2+\epsilon)^{-3/2} = -\tfrac12\, dr\, r^3$.

# %%
dvar = -0.5 * drstd * rstd**3  # (B, T, 1)
report_match("dvar", dvar, var_t.grad)

# %% [markdown]
# **Step 4**, $\sigma^2 = \tfrac1C\sum_c x_c^2$: the second use of $x_c$,
# $\quad dx_c \mathrel{+}= d\sigma^2 \cdot 2x_c / C$. Now $dx_c$ is complete.

# %%
dxc = dxc + dvar * 2.0 * xc / C  # (B, T, C)  second contribution, through var
report_match("dxc (both paths)", dxc, xc_t.grad)

# %% [markdown]
# **Step 5**, $x_c = x - \mu$: $\quad dx \mathrel{+}= dx_c$, $\quad d\mu = -\sum_c dx_c$.
#
# **Step 6**, $\mu = \tfrac1C\sum_c x_c$: $\quad dx \mathrel{+}= d\mu / C$ (the same for every $c$).

# %%
dmean = -dxc.sum(axis=-1, keepdims=True)  # (B, T, 1)
report_match("dmean", dmean, mean_t.grad)
dx_steps = dxc + dmean / C  # (B, T, C)
report_match("dx (step by step)", dx_steps, x_t.grad)

# %% [markdown]
# A detail worth noticing in step 5: the variance path contributes **nothing** to $d\mu$,
# because its share of $dx_c$ is proportional to $x_c$ and $\sum_c x_c = 0$. So
# $d\mu = -r\sum_c d\hat x_c$ alone.

# %%
report_match("dmean = -rstd * sum(dxhat)", -rstd * dxhat.sum(axis=-1, keepdims=True), mean_t.grad)

# %% [markdown]
# ## 3. Collapsing the six steps: the three-term form
#
# Write $g = d\hat x = \mathit{dout}\odot\gamma$. Substitute steps 3 and 4 into $dx_c$, using
# $r x_c = \hat x$:
#
# $$dx_c = r g + \frac{2x_c}{C}\Big(-\frac12 r^3 \sum_c g_c x_c\Big)
#        = r\big(g - \hat x\,\mathrm{mean}_c(g\hat x)\big).$$
#
# Steps 5 and 6 subtract the row mean, $dx = dx_c - \mathrm{mean}_c(dx_c)$, and since
# $\mathrm{mean}_c(\hat x) = 0$ that mean is just $r\,\mathrm{mean}_c(g)$:
#
# $$\boxed{dx = r\,\big(g - \mathrm{mean}_c(g) - \hat x\,\mathrm{mean}_c(g\,\hat x)\big)}$$
#
# Three terms: the direct path, the path through the mean, the path through the variance.
# The backward needs only $\hat x$, $r$ and $\gamma$: exactly what `LayerNormCache` stores.

# %%
g = dout * weight  # (B, T, C)
term_direct = rstd * g  # (B, T, C)
term_mean = -rstd * g.mean(axis=-1, keepdims=True)  # (B, T, 1) broadcast along C
term_var = -rstd * xhat * (g * xhat).mean(axis=-1, keepdims=True)  # (B, T, C)
dx_compact = term_direct + term_mean + term_var
report_match("dx (three-term form) vs torch", dx_compact, x_t.grad)
report_match("dx (three-term form) vs the six steps", dx_compact, dx_steps)

dx_pkg, dweight_pkg, dbias_pkg = layer_norm_backward(dout, cache)
report_match("dx from layer_norm_backward", dx_pkg, x_t.grad)
report_match("dweight from layer_norm_backward", dweight_pkg, w_t.grad)
report_match("dbias from layer_norm_backward", dbias_pkg, b_t.grad)

# %% [markdown]
# Two properties of $dx$ can be read off the form.
#
# * Every row of $dx$ **sums to zero**: shifting a row of $x$ by a constant does not change
#   the output at all, so the gradient has no component along $(1, \dots, 1)$.
# * $dx$ is **almost** orthogonal to $\hat x$. Scaling a row of $x$ would not change the output
#   if $\epsilon$ were 0; with $\epsilon > 0$ it does, a little. Using
#   $\mathrm{mean}_c(\hat x^2) = \sigma^2/(\sigma^2+\epsilon)$:
#
# $$\sum_c dx_c\,\hat x_c = r\,\frac{\epsilon}{\sigma^2+\epsilon}\sum_c g_c\,\hat x_c ,$$
#
# small, but not zero, and exactly what the numbers show.

# %%
print(f"largest |sum_c dx|       : {np.abs(dx_pkg.sum(axis=-1)).max():.1e}")
print(f"largest |sum_c dx * xhat|: {np.abs((dx_pkg * xhat).sum(axis=-1)).max():.1e}")
report_match(
    "sum dx*xhat = r eps/(var+eps) sum g*xhat",
    (dx_pkg * xhat).sum(axis=-1, keepdims=True),
    rstd * eps / (var + eps) * (g * xhat).sum(axis=-1, keepdims=True),
)

# %% [markdown]
# ## 4. Against `torch.nn.LayerNorm`, and two near misses
#
# `torch.nn.LayerNorm(C)` uses the **biased** variance (divide by $C$) and puts $\epsilon$
# **inside** the square root. The package does the same, and so matches it forward and
# backward.

# %%
ln = torch.nn.LayerNorm(C, eps=eps, dtype=torch.float64)
with torch.no_grad():
    ln.weight.copy_(torch.from_numpy(weight))
    ln.bias.copy_(torch.from_numpy(bias))
x_t = t64(x, grad=True)
y_ln = ln(x_t)
(y_ln * torch.from_numpy(dout)).sum().backward()
report_match("y vs nn.LayerNorm", y_pkg, y_ln)
report_match("dx vs nn.LayerNorm", dx_pkg, x_t.grad)
report_match("dweight vs nn.LayerNorm.weight.grad", dweight_pkg, ln.weight.grad)
report_match("dbias vs nn.LayerNorm.bias.grad", dbias_pkg, ln.bias.grad)

# %% [markdown]
# Two formulas that look just as reasonable do not match:
#
# * the **unbiased** variance, $\frac{1}{C-1}\sum_c (x_c-\mu)^2$ (the default of `torch.var`,
#   and `np.var` with `ddof=1`);
# * $\epsilon$ **outside** the root, $(x-\mu)/(\sigma+\epsilon)$.
#
# The second one differs by only about $\epsilon/(2\sigma)$ relative on ordinary rows,
# invisible when printing four digits, but far outside the $10^{-10}$ contract; and on a row
# whose variance is comparable to $\epsilon$ the two disagree completely.

# %%
var_unbiased = x.var(axis=-1, ddof=1, keepdims=True)  # (B, T, 1)
y_unbiased = xc / np.sqrt(var_unbiased + eps) * weight + bias
y_eps_outside = xc / (np.sqrt(var) + eps) * weight + bias
report_differs("y with the unbiased variance", y_unbiased, y_ln)
report_differs("y with eps outside the sqrt", y_eps_outside, y_ln)

x_flat = 1.0 + 1e-3 * rng.standard_normal((1, C))  # one nearly constant row: var ~ 1e-6
y_flat_ln = ln(t64(x_flat))
y_flat_pkg, _ = layer_norm_forward(x_flat, weight, bias, eps)
xc_flat = x_flat - x_flat.mean(axis=-1, keepdims=True)
y_flat_outside = xc_flat / (np.sqrt((xc_flat**2).mean(axis=-1, keepdims=True)) + eps) * weight + bias
print(f"nearly constant row, var = {float(xc_flat.var()):.1e}:")
report_match("  package (eps inside)", y_flat_pkg, y_flat_ln)
report_differs("  eps outside", y_flat_outside, y_flat_ln)

# %% [markdown]
# ## 5. A picture: the three terms of $dx$
#
# For one row, the bars show the direct term $r g$, the mean term $-r\,\mathrm{mean}(g)$ (the
# same for every feature), the variance term $-r\hat x\,\mathrm{mean}(g\hat x)$ (proportional to
# $\hat x$), and their sum $dx$.

# %%
b0, t0 = 0, 1
feats = np.arange(C)
width = 0.2
fig, ax = plt.subplots(figsize=(9, 4))
ax.bar(feats - 1.5 * width, term_direct[b0, t0], width, label=r"direct  $r\,g$")
ax.bar(feats - 0.5 * width, np.broadcast_to(term_mean[b0, t0], (C,)), width, label=r"mean  $-r\,\mathrm{mean}(g)$")
ax.bar(feats + 0.5 * width, term_var[b0, t0], width, label=r"variance  $-r\,\hat{x}\,\mathrm{mean}(g\hat{x})$")
ax.bar(feats + 1.5 * width, dx_pkg[b0, t0], width, color="black", label=r"$dx$ (sum)")
ax.axhline(0.0, color="black", linewidth=0.8)
ax.set_xticks(feats)
ax.set_xlabel("feature c")
ax.set_ylabel("gradient")
ax.set_title(f"LayerNorm backward, row (b={b0}, t={t0}): dx = direct + mean + variance terms")
ax.legend(fontsize=8)
fig.tight_layout()
png = OUT / "02_layer_norm.png"
fig.savefig(png, dpi=120)
plt.close(fig)
print("saved", png)

# %% [markdown]
# ## Summary
#
# * Forward as six nodes: `mean → xc → var → rstd → xhat → y`; backward as six steps, each
#   one undoing one line, with gradients **added** where a node is used twice (`xc`, `x`).
# * Every intermediate gradient ($d\hat x$, $dr$, $d\sigma^2$, $dx_c$, $d\mu$, $dx$) matches torch
#   autograd's `retain_grad()` values.
# * The steps collapse to $dx = r\,(g - \mathrm{mean}(g) - \hat x\,\mathrm{mean}(g\hat x))$ with
#   $g = \mathit{dout}\odot\gamma$; the backward needs only $\hat x$, $r$ and $\gamma$.
# * Rows of $\hat x$ have zero mean and variance $\sigma^2/(\sigma^2+\epsilon)\approx 1$; rows of
#   $dx$ sum to zero and are orthogonal to $\hat x$ up to that same factor of $\epsilon$.
# * `torch.nn.LayerNorm` means biased variance and $\epsilon$ inside the root; either other
#   choice gives different numbers.
