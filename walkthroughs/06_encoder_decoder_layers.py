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
# # 06 · Encoder and decoder layers: residuals, LayerNorm, and gradients by depth
#
# A Transformer layer wraps each sub-layer $f$ (self-attention, cross-attention, feed-forward)
# in a residual connection and a LayerNorm. Where the LayerNorm sits decides how the gradient
# travels:
#
# $$\text{post-LN (the paper):}\quad y = \mathrm{LN}(x + f(x)) \qquad\qquad
#   \text{pre-LN:}\quad y = x + f(\mathrm{LN}(x))$$
#
# $$\text{post-LN:}\quad dx = (I + J_f^\top)\,J_{\mathrm{LN}}^\top\,dy \qquad\qquad
#   \text{pre-LN:}\quad dx = dy + J_{\mathrm{LN}}^\top J_f^\top\,dy$$
#
# In post-LN **every** path from the output back to the input passes through a LayerNorm
# Jacobian; in pre-LN one path is the identity and carries $dy$ to $dx$ untouched. This lesson:
#
# 1. recalls what the LayerNorm Jacobian does to a gradient (walkthrough 02);
# 2. backpropagates through one `numpy_transformer.EncoderLayer`, post-LN then pre-LN, node by
#    node, comparing every intermediate with the twin `torch_transformer.EncoderLayer` under
#    autograd;
# 3. checks full `EncoderLayer` and `DecoderLayer` backward passes (`dx`, `dmemory`, every
#    parameter gradient) against their twins;
# 4. builds 12-layer stacks and measures, at initialisation, the gradient reaching each
#    layer's input and each layer's parameters, post-LN against pre-LN, and checks those
#    numbers against the twin.
#
# Shape legend: `B` batch, `T` target length, `S` source length, `C` model width, `H` heads,
# `F` feed-forward width, `V` classes of the read-out, `L` layers. Every array is float64;
# a check prints `exact`, `close (max rel err …)`, or stops with an `AssertionError`.

# %%
import os

# The matrices here are small (at most 64 x 256). BLAS worker threads cost more than they save
# at that size, and on a busy machine they can make this lesson many times slower. This has to
# happen before NumPy is imported; delete the line to use every core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch
import torch.nn.functional as F

import numpy_transformer as nt
import torch_transformer
from numpy_transformer.functional import (
    causal_mask,
    cross_entropy_backward,
    cross_entropy_forward,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    padding_mask,
)
from numpy_transformer.models import Encoder
from numpy_transformer.testing import relative_error, report_differs, report_match, tolerance
from torch_transformer.bridge import state_dict_to_torch

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)


def t64(a, grad=False):
    """A float64 torch leaf holding a copy of the NumPy array."""
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def twin_with_weights(np_module, twin_class, **kwargs):
    """The twin of an encoder/decoder layer or stack, loaded with the NumPy module's weights."""
    twin = twin_class(**kwargs)
    twin.load_state_dict(state_dict_to_torch(np_module.state_dict()))
    return twin


def report_parameter_grads(label, np_module, twin):
    """Compare every parameter gradient (one line: how many, and the worst of them)."""
    theirs = dict(twin.named_parameters())
    comparisons = [relative_error(name, g, theirs[name].grad.numpy()) for name, g in np_module.named_grads()]
    worst = max(comparisons, key=lambda c: c.error)
    tol = tolerance("cpu", np.float64)
    if not worst.error <= tol:
        raise AssertionError(f"MISMATCH {worst.describe()} exceeds tolerance {tol:.0e}")
    print(f"  {label}: all {len(comparisons)} parameter gradients close, worst {worst.name} ({worst.error:.1e})")


# %% [markdown]
# ## 1. What a LayerNorm does to a gradient
#
# From walkthrough 02, with $\hat x = (x - \mu)\,r$, $r = 1/\sqrt{\sigma^2 + \epsilon}$ and
# $g = \gamma \odot dy$:
#
# $$dx = r\,\big(g - \mathrm{mean}(g) - \hat x\,\mathrm{mean}(g\,\hat x)\big).$$
#
# Row by row, the backward removes the component of $g$ along $\mathbf 1$ and (up to
# $\epsilon$) along $\hat x$, then multiplies by $r$. Both removals can only shorten the
# vector, so with $\gamma = 1$ (its initial value)
#
# $$\lVert dx\rVert \le r\,\lVert dy\rVert = \lVert dy\rVert / \sqrt{\sigma^2+\epsilon}.$$
#
# A LayerNorm whose input has a standard deviation well above 1 **shrinks** the gradient passing
# through it; one whose input spread is below 1 **may enlarge** it. For a random $dy$ the two
# removals keep about $\sqrt{(C-2)/C}$ of its length. Checked on rows with three different
# spreads:

# %%
C = 8
g_rows = rng.standard_normal((3, C))  # (3, C) upstream gradients
z_rows = rng.standard_normal((3, C))  # (3, C)
z_rows = (z_rows - z_rows.mean(axis=1, keepdims=True)) / z_rows.std(axis=1, keepdims=True)  # zero mean, unit std
x_rows = z_rows * np.array([[0.5], [1.0], [3.0]]) + 2.0  # (3, C) rows with std 0.5, 1 and 3
ones, zeros = np.ones(C), np.zeros(C)
_, ln_cache = layer_norm_forward(x_rows, ones, zeros)
dx_rows, _, _ = layer_norm_backward(g_rows, ln_cache)  # (3, C)
x_rows_t = t64(x_rows, grad=True)
(F.layer_norm(x_rows_t, (C,)) * torch.from_numpy(g_rows)).sum().backward()
report_match("dx through LayerNorm (torch.nn.functional)", dx_rows, x_rows_t.grad)
for row in range(3):
    ratio = np.linalg.norm(dx_rows[row]) / np.linalg.norm(g_rows[row])
    r = ln_cache.rstd[row, 0]
    print(
        f"  row {row}: input std {1 / r:5.2f}   |dx|/|dy| = {ratio:.3f}  <=  r = {r:.3f}   (r·sqrt((C-2)/C) = {r * np.sqrt((C - 2) / C):.3f})"
    )
print("  dx sums to zero in every row (no component along 1):", bool(np.allclose(dx_rows.sum(axis=1), 0, atol=1e-14)))

# %% [markdown]
# ## 2. One encoder layer, node by node
#
# `nt.EncoderLayer(C, H, F, dropout=0.0, norm_first=...)` holds `self_attn`
# (a `MultiHeadAttention`), `ff` (a `FeedForward`), `norm1`, `norm2`; its twin
# `torch_transformer.EncoderLayer` has the same state-dict keys, so the NumPy `state_dict()`
# loads into it as it is. Both halves below run the layer's forward **node by node**, using the
# layer's own sub-modules, so every intermediate can be compared; then the package's one-call
# `forward` / `backward` must give the same numbers. The LayerNorms are at their initial values
# ($\gamma = 1$, $\beta = 0$); dropout is off.
#
# Input: two sequences of length 5, the second with two padded positions, and a padding
# mask `(B, 1, 1, S)`.

# %%
B, T, C, H, Fw = 2, 5, 8, 2, 32  # Fw is the feed-forward width F (F is torch.nn.functional here)
ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])  # (B, T)
mask = padding_mask(ids, 0)  # (B, 1, 1, S) True = may attend
mask_t = torch.from_numpy(mask)
x = rng.standard_normal((B, T, C))  # (B, T, C)
dy = rng.standard_normal((B, T, C))  # (B, T, C) random upstream gradient

# %% [markdown]
# ### Post-LN: $h = \mathrm{LN}_1(x + \mathrm{SA}(x))$, $y = \mathrm{LN}_2(h + \mathrm{FF}(h))$
#
# Backward, reading the forward bottom-up:
#
# | forward line | backward line |
# |---|---|
# | $y = \mathrm{LN}_2(u_2)$ | $du_2 = J_{\mathrm{LN}_2}^\top\,dy$ |
# | $u_2 = h + \mathrm{FF}(h)$ | $dh = du_2 + J_{\mathrm{FF}}^\top du_2$ (identity + branch) |
# | $h = \mathrm{LN}_1(u_1)$ | $du_1 = J_{\mathrm{LN}_1}^\top\,dh$ |
# | $u_1 = x + \mathrm{SA}(x, x, x)$ | $dx = du_1 + dX_q + dX_k + dX_v$ with $(dX_q, dX_k, dX_v) = \mathrm{SA}^\top(du_1)$ |
#
# The residual's identity path reaches $x$ only **after** both LayerNorm Jacobians.

# %%
post = nt.EncoderLayer(C, H, Fw, dropout=0.0, norm_first=False, rng=rng)
post_t = twin_with_weights(
    post, torch_transformer.EncoderLayer, d_model=C, n_heads=H, d_ff=Fw, dropout=0.0, norm_first=False
)
print("twin state-dict keys equal ours:", list(post_t.state_dict()) == list(post.state_dict()))

# NumPy forward, node by node, with the layer's own sub-modules
a, c_sa = post.self_attn.forward(x, x, x, mask=mask)  # (B, T, C)
u1 = x + a
h, c_n1 = post.norm1.forward(u1)  # (B, T, C)
f, c_ff = post.ff.forward(h)  # (B, T, C)
u2 = h + f
y, c_n2 = post.norm2.forward(u2)  # (B, T, C)

# torch, the same nodes with the twin's sub-modules
x_t = t64(x, grad=True)
a_t = post_t.self_attn(x_t, x_t, x_t, mask=mask_t)
u1_t = x_t + a_t
h_t = post_t.norm1(u1_t)
f_t = post_t.ff(h_t)
u2_t = h_t + f_t
y_t = post_t.norm2(u2_t)
for node in (a_t, u1_t, h_t, f_t, u2_t):
    node.retain_grad()
(y_t * torch.from_numpy(dy)).sum().backward()
report_match("y", y, y_t)

# backward, the table read top to bottom
du2 = post.norm2.backward(dy, c_n2)  # (B, T, C) through LN2's Jacobian
report_match("du2 = J_LN2^T dy", du2, u2_t.grad)
df = du2  # u2 = h + f: the sum hands du2 to both summands
dh = du2 + post.ff.backward(df, c_ff)  # identity + branch
report_match("df", df, f_t.grad)
report_match("dh = du2 + J_FF^T du2", dh, h_t.grad)
du1 = post.norm1.backward(dh, c_n1)  # (B, T, C) through LN1's Jacobian
report_match("du1 = J_LN1^T dh", du1, u1_t.grad)
report_match("da", du1, a_t.grad)
dq, dk, dv = post.self_attn.backward(du1, c_sa)  # (B, T, C) each
dx = du1 + dq + dk + dv
report_match("dx = du1 + dquery + dkey + dvalue", dx, x_t.grad)

# %% [markdown]
# What does each LayerNorm do to the length of the gradient here? Its input ($u_1$ or $u_2$)
# is a roughly unit-variance stream plus a branch, so its spread is close to 1 and $r \approx 1$:
# the length changes mostly through the projection, and row by row it never exceeds
# $r\,\lVert d\,\text{in}\rVert$ (section 1). A row whose input spread is below 1 can come
# out **longer**.

# %%
for name, d_in, d_out, cache_ln in (("LN2", dy, du2, c_n2), ("LN1", dh, du1, c_n1)):
    ratio = np.linalg.norm(d_out, axis=-1) / np.linalg.norm(d_in, axis=-1)  # (B, T)
    r = cache_ln.rstd[..., 0]  # (B, T)
    print(
        f"  {name}: mean input std {np.mean(1 / r):.3f}, mean |d out|/|d in| per row {ratio.mean():.3f}, all <= r: {bool((ratio <= r * (1 + 1e-12)).all())}"
    )

# %% [markdown]
# The package's `EncoderLayer.backward` is these lines, fused. Its parameter gradients also
# match the twin's (which autograd filled during the backward above). The step-by-step run
# already accumulated gradients into the layer's modules, so they are cleared first.

# %%
post.zero_grad()
y_pkg, cache_pkg = post.forward(x, mask)
dx_pkg = post.backward(dy, cache_pkg)
report_match("EncoderLayer.forward (post-LN)", y_pkg, y_t)
report_match("EncoderLayer.backward (post-LN) dx", dx_pkg, x_t.grad)
report_parameter_grads("post-LN encoder layer", post, post_t)

# %% [markdown]
# ### Pre-LN: $h = x + \mathrm{SA}(\mathrm{LN}_1(x))$, $y = h + \mathrm{FF}(\mathrm{LN}_2(h))$
#
# | forward line | backward line |
# |---|---|
# | $y = h + \mathrm{FF}(n_2)$ | $dh = dy + J_{\mathrm{LN}_2}^\top J_{\mathrm{FF}}^\top dy$ |
# | $n_2 = \mathrm{LN}_2(h)$ | (inside the line above) |
# | $h = x + \mathrm{SA}(n_1)$ | $dx = dh + J_{\mathrm{LN}_1}^\top(dX_q + dX_k + dX_v)$ |
# | $n_1 = \mathrm{LN}_1(x)$ | (inside the line above) |
#
# Unrolled: $dx = dy + (\text{FF branch}) + (\text{SA branch})$. The first term is the
# identity path: $dy$ arrives at $x$ unchanged, whatever the LayerNorms and sub-layers do.

# %%
pre = nt.EncoderLayer(C, H, Fw, dropout=0.0, norm_first=True, rng=rng)
pre_t = twin_with_weights(
    pre, torch_transformer.EncoderLayer, d_model=C, n_heads=H, d_ff=Fw, dropout=0.0, norm_first=True
)

n1, c_n1 = pre.norm1.forward(x)  # (B, T, C)
a, c_sa = pre.self_attn.forward(n1, n1, n1, mask=mask)
h = x + a
n2, c_n2 = pre.norm2.forward(h)
f, c_ff = pre.ff.forward(n2)
y = h + f

x_t = t64(x, grad=True)
n1_t = pre_t.norm1(x_t)
a_t = pre_t.self_attn(n1_t, n1_t, n1_t, mask=mask_t)
h_t = x_t + a_t
n2_t = pre_t.norm2(h_t)
f_t = pre_t.ff(n2_t)
y_t = h_t + f_t
for node in (n1_t, a_t, h_t, n2_t, f_t):
    node.retain_grad()
(y_t * torch.from_numpy(dy)).sum().backward()
report_match("y", y, y_t)

dn2 = pre.ff.backward(dy, c_ff)  # (B, T, C) J_FF^T dy
report_match("dn2 = J_FF^T dy", dn2, n2_t.grad)
ff_branch = pre.norm2.backward(dn2, c_n2)  # J_LN2^T J_FF^T dy
dh = dy + ff_branch
report_match("dh = dy + J_LN2^T J_FF^T dy", dh, h_t.grad)
dq, dk, dv = pre.self_attn.backward(dh, c_sa)
dn1 = dq + dk + dv  # n1 feeds query, key and value
report_match("dn1 = dquery + dkey + dvalue", dn1, n1_t.grad)
sa_branch = pre.norm1.backward(dn1, c_n1)
dx = dh + sa_branch
report_match("dx = dh + J_LN1^T dn1", dx, x_t.grad)
report_match("dx = dy + FF branch + SA branch", dy + ff_branch + sa_branch, x_t.grad)
print(
    f"  |dy| = {np.linalg.norm(dy):.3f}, |FF branch| = {np.linalg.norm(ff_branch):.3f}, |SA branch| = {np.linalg.norm(sa_branch):.3f}, |dx| = {np.linalg.norm(dx):.3f}"
)

pre.zero_grad()
y_pkg, cache_pkg = pre.forward(x, mask)
report_match("EncoderLayer.forward (pre-LN)", y_pkg, y_t)
report_match("EncoderLayer.backward (pre-LN) dx", pre.backward(dy, cache_pkg), x_t.grad)
report_parameter_grads("pre-LN encoder layer", pre, pre_t)

# %% [markdown]
# Swapping the two layouts is not a detail of the code: with the same weights, the two layers
# compute different functions and different gradients.

# %%
swapped = nt.EncoderLayer(C, H, Fw, dropout=0.0, norm_first=True, rng=rng)
swapped.load_state_dict(post.state_dict())
report_differs("post-LN weights run as pre-LN: y", swapped.forward(x, mask)[0], post.forward(x, mask)[0])

# %% [markdown]
# ## 3. Full layers against their twins, with perturbed weights
#
# At initialisation $\gamma = 1$, $\beta = 0$ and the attention biases are zero, so those
# gradients would be checked only at one point. Here every parameter is perturbed, and both
# layer kinds are checked in both layouts, through the package's one-call
# `forward` / `backward`:
#
# * `EncoderLayer.forward(x, mask) -> (y, cache)`, `backward(dy, cache) -> dx`;
# * `DecoderLayer.forward(x, memory, tgt_mask, memory_mask) -> (y, cache)`,
#   `backward(dy, cache) -> (dx, dmemory)`.
#
# The decoder reads the encoder output `memory` `(B, S, C)` as the key **and** the value of
# its cross-attention, so $d\,\text{memory} = dX_k + dX_v$ of that attention (and, in a stack,
# the sum over all decoder layers). Its self-attention mask is causal and hides padded target
# positions `(B, 1, T, T)`; its memory mask hides padded source positions `(B, 1, 1, S)`.

# %%
S = 6
src_ids = np.array([[7, 7, 2, 5, 1, 8], [4, 3, 9, 0, 0, 0]])  # (B, S)
memory = rng.standard_normal((B, S, C))  # (B, S, C)
tgt_mask = padding_mask(ids, 0) & causal_mask(T)  # (B, 1, T, T)
memory_mask = padding_mask(src_ids, 0)  # (B, 1, 1, S)


def perturb(module):
    """Move every parameter away from its initial value (LayerNorm weights near 1)."""
    for _, p in module.named_parameters():
        p += rng.uniform(-0.3, 0.3, p.shape)


for norm_first in (False, True):
    kind = "pre-LN" if norm_first else "post-LN"
    kwargs = dict(d_model=C, n_heads=H, d_ff=Fw, dropout=0.0, norm_first=norm_first)

    enc = nt.EncoderLayer(**kwargs, rng=rng)
    perturb(enc)
    enc_t = twin_with_weights(enc, torch_transformer.EncoderLayer, **kwargs)
    y_np, cache_np = enc.forward(x, mask)
    dx_np = enc.backward(dy, cache_np)
    x_t = t64(x, grad=True)
    y_tw = enc_t(x_t, mask_t)
    (y_tw * torch.from_numpy(dy)).sum().backward()
    print(f"EncoderLayer, {kind}")
    report_match("  y", y_np, y_tw)
    report_match("  dx", dx_np, x_t.grad)
    report_parameter_grads("  encoder", enc, enc_t)

    dec = nt.DecoderLayer(**kwargs, rng=rng)
    perturb(dec)
    dec_t = twin_with_weights(dec, torch_transformer.DecoderLayer, **kwargs)
    y_np, cache_np = dec.forward(x, memory, tgt_mask, memory_mask)
    dx_np, dmemory_np = dec.backward(dy, cache_np)
    x_t, memory_t = t64(x, grad=True), t64(memory, grad=True)
    y_tw = dec_t(x_t, memory_t, torch.from_numpy(tgt_mask), torch.from_numpy(memory_mask))
    (y_tw * torch.from_numpy(dy)).sum().backward()
    print(f"DecoderLayer, {kind}")
    report_match("  y", y_np, y_tw)
    report_match("  dx", dx_np, x_t.grad)
    report_match("  dmemory", dmemory_np, memory_t.grad)
    report_parameter_grads("  decoder", dec, dec_t)
    print("  dmemory at padded source positions all zero:", bool((dmemory_np[1, 3:] == 0).all()))

# %% [markdown]
# ## 4. Gradients by depth, at initialisation
#
# Now stack `L = 12` encoder layers (`numpy_transformer.models.Encoder`, configured by a
# `TransformerConfig`; a pre-LN stack ends with one more LayerNorm), put a random linear
# read-out with a cross-entropy loss on top (random targets), and backpropagate **one layer at a
# time**, keeping the gradient that reaches each layer's input. Width $C = 64$, $H = 4$,
# $F = 256$, no dropout, inputs $x \sim \mathcal N(0, 1)$.
#
# Two initialisations:
#
# * the package's (and the twin's, and `torch.nn`'s) default: `nn.Linear`'s uniform
#   $\pm 1/\sqrt{\text{in}}$ for the feed-forward and output projections, Xavier for the packed
#   $q, k, v$ projection;
# * Xavier-uniform for **every** matrix, which is what `torch.nn.Transformer` does after
#   building its layers (`_reset_parameters`), as the original implementation did. Its
#   feed-forward outputs are larger, so each residual branch adds more to the stream.
#
# Three seeds each, to see what is systematic and what is chance.

# %%
Cd, Hd, Fd, L, V = 64, 4, 256, 12, 16
Bd, Td = 4, 16


def build_stack(norm_first, init, seed):
    """An L-layer encoder, a read-out matrix, an input and targets, all drawn from one seed."""
    r = np.random.default_rng(seed)
    config = nt.TransformerConfig(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=Cd,
        n_heads=Hd,
        n_encoder_layers=L,
        d_ff=Fd,
        dropout=0.0,
        norm_first=norm_first,
    )
    encoder = Encoder(config, rng=r)
    if init == "xavier":
        for _, p in encoder.named_parameters():
            if p.ndim == 2:
                bound = np.sqrt(6.0 / (p.shape[0] + p.shape[1]))
                p[...] = r.uniform(-bound, bound, p.shape)
    readout = r.standard_normal((V, Cd)) / np.sqrt(Cd)  # (V, C)
    xd = r.standard_normal((Bd, Td, Cd))  # (B, T, C)
    targets = r.integers(0, V, (Bd, Td))  # (B, T)
    return config, encoder, readout, xd, targets


def layer_by_layer(encoder, readout, xd, targets):
    """Forward, loss, and a backward that keeps the gradient at every layer's input.

    Returns the loss, grads_in (L + 1 arrays: the inputs of layers 0 .. L-1, then the output of
    the last layer), the parameter-gradient norm of each layer, and the mean spread (std over C)
    of the input of each layer's norm1, read from its cache as 1 / rstd.
    """
    encoder.zero_grad()
    out, stack_cache = encoder.forward(xd)  # (B, T, C)
    layer_caches, norm_cache = stack_cache.layers, stack_cache.norm
    logits, c_head = linear_forward(out, readout)  # (B, T, V)
    loss, c_loss = cross_entropy_forward(logits, targets)
    dout, _, _ = linear_backward(cross_entropy_backward(1.0, c_loss), c_head)  # (B, T, C)
    if encoder.norm is not None:  # pre-LN: the final LayerNorm
        dout = encoder.norm.backward(dout, norm_cache)
    grads_in = [dout]
    for layer, cache in zip(reversed(list(encoder.layers)), reversed(layer_caches), strict=True):
        grads_in.append(layer.backward(grads_in[-1], cache))
    grads_in = grads_in[::-1]
    param_norms = [np.sqrt(sum((g**2).sum() for _, g in layer.named_grads())) for layer in encoder.layers]
    spreads = [float(np.mean(1.0 / cache.norm1.rstd)) for cache in layer_caches]
    return float(loss), grads_in, np.array(param_norms), np.array(spreads)


results = {}  # (init, layout) -> list over seeds of (input-gradient norms, parameter-gradient norms, spreads)
for init in ("default", "xavier"):
    for norm_first in (False, True):
        layout = "pre-LN" if norm_first else "post-LN"
        runs = []
        for seed in range(3):
            _, encoder, readout, xd, targets = build_stack(norm_first, init, seed)
            loss, grads_in, param_norms, spreads = layer_by_layer(encoder, readout, xd, targets)
            runs.append((np.array([np.linalg.norm(g) for g in grads_in]), param_norms, spreads))
        results[init, layout] = runs

# %% [markdown]
# The layer-by-layer backward must agree with `Encoder.backward` (which returns only the input
# gradient) and, layer by layer, with the twin `torch_transformer.transformer.Encoder` under
# autograd, `retain_grad()` on each layer's input. Checked for seed 0, default initialisation,
# both layouts.

# %%
for norm_first in (False, True):
    layout = "pre-LN" if norm_first else "post-LN"
    config, encoder, readout, xd, targets = build_stack(norm_first, "default", 0)
    out, cache = encoder.forward(xd)  # (B, T, C)
    logits, c_head = linear_forward(out, readout)
    _, c_loss = cross_entropy_forward(logits, targets)
    dout, _, _ = linear_backward(cross_entropy_backward(1.0, c_loss), c_head)  # (B, T, C)
    encoder.zero_grad()
    dx_stack = encoder.backward(dout, cache)
    loss, grads_in, _, _ = layer_by_layer(encoder, readout, xd, targets)  # zeroes and refills the gradients
    report_match(f"{layout}: Encoder.backward vs layer by layer", dx_stack, grads_in[0])

    twin = twin_with_weights(encoder, torch_transformer.transformer.Encoder, config=config)
    stream = t64(xd, grad=True)
    inputs_t = []
    for layer_t in twin.layers:
        stream.retain_grad()
        inputs_t.append(stream)
        stream = layer_t(stream)
    stream.retain_grad()
    inputs_t.append(stream)
    out_t = stream if twin.norm is None else twin.norm(stream)
    loss_t = F.cross_entropy(
        (out_t @ torch.from_numpy(readout).T).reshape(-1, V), torch.from_numpy(targets).reshape(-1)
    )
    loss_t.backward()
    print(f"{layout}, {L} layers, against the twin and F.cross_entropy")
    report_match("  loss", np.asarray(loss), loss_t)
    for i, (ours, theirs) in enumerate(zip(grads_in, inputs_t, strict=True)):
        where = f"input of layer {i}" if i < L else f"output of layer {L - 1}"
        report_match(f"  gradient at the {where}", ours, theirs.grad)
    report_parameter_grads(f"  {layout} stack", encoder, twin)

# %% [markdown]
# ### The numbers
#
# Seed 0: $\lVert dx\rVert$ at each layer's input (row 12 = the output of the last layer), the
# norm of each layer's parameter gradient $\lVert d\theta\rVert$ (all its matrices and vectors
# together), and $\sigma$, the mean spread of the input of each layer's `norm1` (read from the
# cache as `1 / rstd`): in pre-LN that is the residual stream itself, in post-LN it is
# $x + \mathrm{SA}(x)$. Then, over the three seeds, the summaries the text below relies on.

# %%
for init in ("default", "xavier"):
    print(f"init = {init}, seed 0")
    print("  layer  |dx| post-LN  |dx| pre-LN  |dθ| post-LN  |dθ| pre-LN  std post-LN  std pre-LN")
    (gp, pp, sp), (gq, pq, sq) = results[init, "post-LN"][0], results[init, "pre-LN"][0]
    for i in range(L + 1):
        rest = f"{pp[i]:12.3f}  {pq[i]:11.3f}  {sp[i]:11.2f}  {sq[i]:10.2f}" if i < L else ""
        print(f"  {i:5d}  {gp[i]:11.4f}  {gq[i]:11.4f}  {rest}")
    for layout in ("post-LN", "pre-LN"):
        runs = results[init, layout]
        in_over_out = [g[0] / g[-1] for g, _, _ in runs]
        max_over_min = [g.max() / g.min() for g, _, _ in runs]
        grows_every_layer = all(bool(np.all(np.diff(g) < 0)) for g, _, _ in runs)
        first_over_last = [p[0] / p[-1] for _, p, _ in runs]
        last_layer = [p[-1] for _, p, _ in runs]
        print(f"  {layout}, 3 seeds:")
        print(f"    |dx| input/output {np.round(in_over_out, 2)}, max/min along depth {np.round(max_over_min, 2)}")
        print(f"    |dx| grows at every layer from output to input, every seed: {grows_every_layer}")
        print(
            f"    |dθ| first/last layer {np.round(first_over_last, 2)}, |dθ| of the last layer {np.round(last_layer, 3)}"
        )
    top_ratio = [
        p[-1] / q[-1] for (_, p, _), (_, q, _) in zip(results[init, "post-LN"], results[init, "pre-LN"], strict=True)
    ]
    print(f"  last layer's |dθ|, post-LN / pre-LN, per seed: {np.round(top_ratio, 2)}")

# %% [markdown]
# ### The picture

# %%
fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained", sharex=True)
colours = {"post-LN": "tab:red", "pre-LN": "tab:blue"}
titles = {"default": "default init (torch.nn / this package)", "xavier": "Xavier everywhere (nn.Transformer)"}
for col, init in enumerate(("default", "xavier")):
    for layout in ("post-LN", "pre-LN"):
        for seed, (g_norms, p_norms, _) in enumerate(results[init, layout]):
            label = layout if seed == 0 else None
            axes[0, col].plot(
                range(L + 1), g_norms, "o-", ms=3, lw=1.3, color=colours[layout], alpha=1.0 - 0.3 * seed, label=label
            )
            axes[1, col].plot(
                range(L), p_norms, "o-", ms=3, lw=1.3, color=colours[layout], alpha=1.0 - 0.3 * seed, label=label
            )
    axes[0, col].set_title(f"{titles[init]}\n‖∂loss/∂(input of layer l)‖, 3 seeds")
    axes[1, col].set_title("‖∂loss/∂(parameters of layer l)‖, 3 seeds")
    axes[1, col].set_xlabel("layer l (0 = first; 12 = output of the last layer)")
    for row in range(2):
        axes[row, col].set_yscale("log")
        for axis_ticks in (axes[row, col].yaxis.set_major_formatter, axes[row, col].yaxis.set_minor_formatter):
            axis_ticks(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
        axes[row, col].tick_params(axis="y", which="minor", labelsize=7)
        axes[row, col].grid(True, which="both", alpha=0.3)
        axes[row, col].legend(fontsize=9)
axes[0, 0].set_ylabel("gradient norm (log scale)")
axes[1, 0].set_ylabel("gradient norm (log scale)")
axes[0, 0].set_xticks(range(L + 1))
fig.suptitle(f"{L}-layer encoders at initialisation: cross-entropy on a random read-out, B={Bd}, T={Td}, C={Cd}")
png = OUT / "06_gradient_norms_by_depth.png"
fig.savefig(png, dpi=110)
plt.close(fig)
print("saved", png)

# %% [markdown]
# ### What the picture shows
#
# **Pre-LN** (blue). Read from the right (the output) to the left (the input), $\lVert dx\rVert$
# grows at every layer, smoothly and alike for every seed: about $1.5\times$ over 12 layers
# with the default initialisation, $3.3$–$4.3\times$ with Xavier. Each layer hands $dy$ down its
# identity path and adds its two branch terms, which in a wide layer are nearly orthogonal to
# $dy$, so the norm grows. (In the small layer of section 2 they were not: there $\lVert
# dx\rVert < \lVert dy\rVert$. The identity path guarantees that $dy$ is *in* $dx$, not that
# $dx$ is longer.) The branch terms shrink towards the top because the stream they are added
# to keeps growing: $\sigma$ rises from 1.0 to about 1.4 (default) or 3 (Xavier), and the
# LayerNorm in front of every branch divides that branch's gradient by $\sigma$
# (section 1). The same LayerNorm sits between each layer's weights and the stream, so the
# **parameter** gradients of pre-LN fall from the first layer to the last (by $1.3$–$1.8\times$
# with the default initialisation, $2$–$2.9\times$ with Xavier), and the final LayerNorm
# divides the gradient entering the stack by the top $\sigma$.
#
# **Post-LN** (red). There is no identity path: every route to layer $l$'s input crosses two
# LayerNorm Jacobians per layer above it, each a projection scaled by $1/\sigma$ of its input,
# interleaved with $(I + J_f^\top)$. The result is whatever that product happens to be. With the
# default initialisation the branches are small, $\sigma \approx 1.0$, and the gradient drifts
# by less than 20 % along the stack. With Xavier the branches are larger, $\sigma$ of the
# LayerNorm inputs is 1.0–1.5, and the gradient shrinks through some stretches of layers and
# grows through others, by a factor of 3–4 from its smallest to its largest value, with a
# different shape for each seed (the input gradient ends up 0.9–2.8 times the output
# gradient). Its parameter gradients show no consistent trend with depth (first/last ratio
# 0.7–1.6 across seeds and initialisations), and in every run the last layer's parameter
# gradient is larger than pre-LN's: $1.5$–$1.7\times$ with the default initialisation,
# $2.6$–$4.4\times$ with Xavier.
#
# This is the picture behind the practice of warming up the learning rate for post-LN
# Transformers (Xiong et al., 2020, "On Layer Normalization in the Transformer
# Architecture"; Liu et al., 2020, "Understanding the Difficulty of Training Transformers").
# At initialisation post-LN gives the layers near the output large gradients, and how the
# gradient scales through the stack is a product of LayerNorm Jacobians, so a full learning
# rate from the first step can move the top layers a long way before anything settles; a few
# thousand steps of warm-up keep the first updates small. Pre-LN, whose identity path carries
# the gradient from the loss to every layer and whose top layers get the smallest parameter
# gradients, usually trains without warm-up, at the price of a residual stream whose scale
# grows with depth (hence its final LayerNorm).

# %% [markdown]
# ## Summary
#
# * LayerNorm's backward removes the components of the gradient along $\mathbf 1$ and $\hat x$
#   and scales by $r = 1/\sqrt{\sigma^2+\epsilon}$: $\lVert dx\rVert \le r\lVert dy\rVert$
#   (with $\gamma = 1$).
# * Post-LN, $y = \mathrm{LN}(x + f(x))$: $dx = (I + J_f^\top) J_{\mathrm{LN}}^\top dy$;
#   every path crosses the LayerNorm. Pre-LN, $y = x + f(\mathrm{LN}(x))$:
#   $dx = dy + J_{\mathrm{LN}}^\top J_f^\top dy$; the identity path carries $dy$ through.
# * `EncoderLayer.backward` and `DecoderLayer.backward` (with `dmemory` = key path + value path
#   of the cross-attention) match their twins in both layouts, every parameter included.
# * At initialisation (12 layers), pre-LN input gradients grow smoothly from the output to the
#   input and its parameter gradients fall from the first layer to the last, both following the
#   growing spread of the residual stream; post-LN gradients pass through a product of
#   LayerNorm Jacobians, and their size along the stack depends on the initialisation and the
#   seed, with large parameter gradients up to the last layer — the reason post-LN is trained
#   with learning-rate warm-up.
