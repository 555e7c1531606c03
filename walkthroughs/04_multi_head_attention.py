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
# # 04 · Multi-head attention, backward by hand
#
# $$\mathrm{MHA}(X_q, X_k, X_v) = \mathrm{merge}\big(\mathrm{Attention}(\mathrm{split}(X_qW_q^\top + b_q),\,
#   \mathrm{split}(X_kW_k^\top + b_k),\, \mathrm{split}(X_vW_v^\top + b_v))\big)\,W_o^\top + b_o$$
#
# Walkthrough 03 differentiated one attention, $\mathrm{softmax}(QK^\top/\sqrt D)V$. Multi-head
# attention runs $H$ of them side by side on slices of the width $C$, and wraps them in four
# linear maps. This lesson:
#
# 1. splits a `(B, T, C)` tensor into heads `(B, H, T, D)` and merges it back, and shows that
#    the backward of `split` is `merge` and the backward of `merge` is `split`;
# 2. runs `numpy_transformer.MultiHeadAttention` and backpropagates through it step by step,
#    `out_proj → merge → attention per head → split → q/k/v projections`, comparing every
#    intermediate with the PyTorch twin (`torch_transformer.bridge.twin_of`) and autograd;
# 3. keeps `dquery`, `dkey`, `dvalue` apart (cross-attention needs them apart) and adds them for
#    self-attention;
# 4. compares with `torch.nn.MultiheadAttention`, whose masks point the **other** way
#    (`True` = blocked), converting with the helpers of `torch_transformer.bridge`, and shows
#    what an unconverted mask does.
#
# Shape legend:
#
# | letter | meaning |
# |---|---|
# | `B` | batch |
# | `T` | query length (target) |
# | `S` | key / value length (source); `S = T` in self-attention |
# | `C` | model width, `d_model` |
# | `H` | heads |
# | `D` | width of one head, `C // H` |
#
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
from numpy_transformer.functional import (
    causal_mask,
    padding_mask,
    scaled_dot_product_attention_backward,
)
from numpy_transformer.testing import report_differs, report_match
from torch_transformer import functional as TF
from torch_transformer.bridge import (
    key_padding_mask_to_mask,
    mask_to_attn_mask,
    mask_to_key_padding_mask,
    mha_to_torch_builtin,
    twin_of,
)

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

np.set_printoptions(precision=3, suppress=True, linewidth=110)
rng = np.random.default_rng(0)


def t64(a, grad=False):
    """A float64 torch leaf holding a copy of the NumPy array."""
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def grid(mask):
    """A bool (T, S) mask as rows of 1 (may attend) and . (blocked)."""
    return "\n".join("    " + " ".join("1" if m else "." for m in row) for row in mask)


# %% [markdown]
# ## 1. Splitting into heads and merging back
#
# A head does not get its own copy of the input: it gets a **slice** of the projected width.
# With $C = H \cdot D$, head $h$ owns columns $hD \ldots (h+1)D - 1$ of $Q = X_qW_q^\top + b_q$.
# Two NumPy lines make the slices a separate axis that the batched matrix products of
# attention can run over:
#
# | step | line | shape |
# |---|---|---|
# | split, 1 | `q.reshape(B, T, H, D)` | `(B, T, C) → (B, T, H, D)` |
# | split, 2 | `.transpose(0, 2, 1, 3)` | `(B, T, H, D) → (B, H, T, D)` |
# | merge, 1 | `.transpose(0, 2, 1, 3)` | `(B, H, T, D) → (B, T, H, D)` |
# | merge, 2 | `.reshape(B, T, C)` | `(B, T, H, D) → (B, T, C)` |
#
# A tiny example with numbered entries shows where each number goes: `B = 1`, `T = 3`,
# `C = 4`, `H = 2`, `D = 2`.

# %%
tiny = np.arange(1 * 3 * 4).reshape(1, 3, 4)  # (B, T, C)
tiny_4d = tiny.reshape(1, 3, 2, 2)  # (B, T, H, D)
tiny_heads = tiny_4d.transpose(0, 2, 1, 3)  # (B, H, T, D)
print(f"x {tiny.shape}, rows = positions t:\n{tiny[0]}")
print(f"after reshape {tiny_4d.shape} and transpose {tiny_heads.shape}:")
for h in range(2):
    print(f"  head {h} (columns {2 * h}..{2 * h + 1} of every row):\n{tiny_heads[0, h]}")
tiny_back = tiny_heads.transpose(0, 2, 1, 3).reshape(1, 3, 4)  # (B, T, C)
print("merge(split(x)) == x:", bool(np.array_equal(tiny_back, tiny)))

# %% [markdown]
# ### The backward of split and merge
#
# `split` only **moves** entries: every output entry is one input entry, and every input entry
# lands in exactly one output place. Its Jacobian is a permutation matrix $P$, and the
# backward multiplies by $P^\top = P^{-1}$: the gradient of each entry goes back to the place
# the entry came from. So
#
# $$d(\text{before split}) = \mathrm{merge}(d(\text{after split})), \qquad
#   d(\text{before merge}) = \mathrm{split}(d(\text{after merge})).$$
#
# No arithmetic, no accumulation. Checked with autograd on a random tensor:

# %%
B, T, C, H = 2, 5, 12, 3
D = C // H


z = rng.standard_normal((B, T, C))  # (B, T, C)
g_heads = rng.standard_normal((B, H, T, D))  # (B, H, T, D) an upstream gradient for split(z)
z_t = t64(z, grad=True)
split_t = z_t.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D), as the twin writes it
(split_t * torch.from_numpy(g_heads)).sum().backward()
report_match("split(z)", z.reshape(B, T, H, D).transpose(0, 2, 1, 3), split_t)
report_match("dz = merge(d split(z))", g_heads.transpose(0, 2, 1, 3).reshape(B, T, C), z_t.grad)

w = rng.standard_normal((B, H, T, D))  # (B, H, T, D)
g_merged = rng.standard_normal((B, T, C))  # (B, T, C) an upstream gradient for merge(w)
w_t = t64(w, grad=True)
merged_t = w_t.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
(merged_t * torch.from_numpy(g_merged)).sum().backward()
report_match("merge(w)", w.transpose(0, 2, 1, 3).reshape(B, T, C), merged_t)
report_match("dw = split(d merge(w))", g_merged.reshape(B, T, H, D).transpose(0, 2, 1, 3), w_t.grad)

# %% [markdown]
# ## 2. The module and its twin
#
# `numpy_transformer.MultiHeadAttention(C, H)` owns four `Linear`s named as in the PyTorch twin:
# `q_proj`, `k_proj`, `v_proj`, `out_proj` (weights `(C, C)` in `torch.nn.Linear`'s `(out, in)`
# layout). Its initialisation copies `torch.nn.MultiheadAttention`'s: zero biases, so here the
# biases are set to random values to make their gradients visible.
#
# `twin_of(mha)` builds `torch_transformer.MultiHeadAttention` with the same weights. The
# twin is written out from elementary tensor operations, so autograd differentiates the very
# formula that the NumPy backward differentiates by hand.
#
# The input: a batch of two token sequences, the second right-padded with `PAD = 0`; the mask
# is causal and hides padded keys (`True` = may attend), shape `(B, 1, T, S)`. The ids only
# decide the mask; `x` stands in for their embeddings and is random.

# %%
mha = nt.MultiHeadAttention(C, H, rng=rng)
for proj in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj):
    proj.bias[...] = rng.uniform(-0.1, 0.1, proj.bias.shape)
twin = twin_of(mha)
print("parameters:", [f"{name} {p.shape}" for name, p in mha.named_parameters()])
print("twin keys equal ours:", list(twin.state_dict()) == [name for name, _ in mha.named_parameters()])

PAD = 0
ids = np.array([[5, 3, 8, 2, 7], [4, 6, 1, 0, 0]])  # (B, T)
allowed = padding_mask(ids, PAD) & causal_mask(T)  # (B, 1, T, S)
x = rng.standard_normal((B, T, C))  # (B, T, C) self-attention: query = key = value = x
dout = rng.standard_normal((B, T, C))  # (B, T, C) random upstream gradient
print(f"mask {allowed.shape}, batch element 1:\n{grid(allowed[1, 0])}")

# %% [markdown]
# ### Forward
#
# The package call, and the same forward spelled out on the torch side with the **twin's own**
# sub-modules, so that every intermediate is a tensor we can `retain_grad()` on. The query,
# key and value inputs are three separate leaves holding the same numbers, so autograd keeps
# their gradients apart exactly as `MultiHeadAttention.backward` does.

# %%
out, cache = mha.forward(x, x, x, mask=allowed)  # (B, T, C)

xq_t, xk_t, xv_t = t64(x, grad=True), t64(x, grad=True), t64(x, grad=True)
q_t, k_t, v_t = twin.q_proj(xq_t), twin.k_proj(xk_t), twin.v_proj(xv_t)  # (B, T, C) each
qh_t, kh_t, vh_t = (a.view(B, T, H, D).transpose(1, 2) for a in (q_t, k_t, v_t))  # (B, H, T, D)
heads_t, weights_t = TF.scaled_dot_product_attention(
    qh_t, kh_t, vh_t, mask=torch.from_numpy(allowed), return_weights=True
)  # (B, H, T, D), (B, H, T, S)
merged_t = heads_t.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
out_t = twin.out_proj(merged_t)  # (B, T, C)
for node in (q_t, k_t, v_t, qh_t, kh_t, vh_t, heads_t, merged_t, out_t):
    node.retain_grad()
(out_t * torch.from_numpy(dout)).sum().backward()

report_match("out (the package) vs out (twin, step by step)", out, out_t)
report_match("out vs twin(x, x, x) in one call", out, twin(t64(x), t64(x), t64(x), mask=torch.from_numpy(allowed)))

# %% [markdown]
# The cache keeps each piece the backward needs: a `LinearCache` per projection (its input
# and weight), and the per-head `AttentionCache` of walkthrough 03, whose `q`, `k`, `v` are
# the **split** projections and whose `weights` are `(B, H, T, S)`.

# %%
print("cache.q_proj.x        ", cache.q_proj.x.shape, "  the query input, for dW_q")
print("cache.attention.q     ", cache.attention.q.shape, "  split(q_proj(query))")
print("cache.weights         ", cache.weights.shape, "  softmax probabilities per head")
print("cache.out_proj.x      ", cache.out_proj.x.shape, "  merge(heads)")
report_match("cache.attention.q = split(q)", cache.attention.q, qh_t)
report_match("cache.attention.k = split(k)", cache.attention.k, kh_t)
report_match("cache.attention.v = split(v)", cache.attention.v, vh_t)
report_match("cache.weights", cache.weights, weights_t)
report_match("cache.out_proj.x = merge(heads)", cache.out_proj.x, merged_t)

# %% [markdown]
# ## 3. Backward, one step at a time
#
# **out_proj**: $\;o = m W_o^\top + b_o$ with $m$ the merged heads `(B, T, C)`. As for any
# linear map (rows $n$ run over all `B·T` positions):
#
# $$dm = do\,W_o,\qquad dW_o = \textstyle\sum_n do_n^\top m_n,\qquad db_o = \sum_n do_n .$$

# %%
W_o = mha.out_proj.weight  # (C, C)
m = cache.out_proj.x  # (B, T, C)
dmerged = dout @ W_o  # (B, T, C) @ (C, C) -> (B, T, C)
dweight_o = dout.reshape(-1, C).T @ m.reshape(-1, C)  # (C, B*T) @ (B*T, C) -> (C, C)
dbias_o = dout.sum(axis=(0, 1))  # (C,)
report_match("dmerged", dmerged, merged_t.grad)
report_match("d out_proj.weight", dweight_o, twin.out_proj.weight.grad)
report_match("d out_proj.bias", dbias_o, twin.out_proj.bias.grad)

# %% [markdown]
# **merge**: $m = \mathrm{merge}(\text{heads})$, so by section 1
# $d\,\text{heads} = \mathrm{split}(dm)$, `(B, T, C) → (B, H, T, D)`.
#
# The module keeps the two lines of section 1 in its helpers `split_heads` and
# `merge_heads`; the backward calls them the other way round from the forward.

# %%
dheads = mha.split_heads(dmerged)  # (B, T, C) -> (B, H, T, D)
report_match("dheads = split(dmerged)", dheads, heads_t.grad)

# %% [markdown]
# **attention per head**: each head is the scaled dot-product attention of walkthrough 03 on
# its own `(T, D)` slices; the batched backward runs over `(B, H)` at once. Heads never mix
# inside attention, so head $h$'s gradient depends on head $h$'s upstream gradient only.

# %%
dqh, dkh, dvh = scaled_dot_product_attention_backward(dheads, cache.attention)  # (B, H, T, D) each
report_match("dq per head", dqh, qh_t.grad)
report_match("dk per head", dkh, kh_t.grad)
report_match("dv per head", dvh, vh_t.grad)

# %% [markdown]
# **split**: $q_h = \mathrm{split}(q)$, so $dq = \mathrm{merge}(dq_h)$, `(B, H, T, D) → (B, T, C)`.

# %%
dq, dk, dv = (mha.merge_heads(a) for a in (dqh, dkh, dvh))  # (B, H, T, D) -> (B, T, C) each
report_match("dq = merge(dq per head)", dq, q_t.grad)
report_match("dk = merge(dk per head)", dk, k_t.grad)
report_match("dv = merge(dv per head)", dv, v_t.grad)

# %% [markdown]
# **q, k, v projections**: three independent linear maps, each with the formula of
# `out_proj`:
#
# $$dX_q = dq\,W_q,\quad dW_q = \textstyle\sum_n dq_n^\top X_{q,n},\quad db_q = \sum_n dq_n,$$
#
# and the same for $k$ and $v$. In cross-attention $X_q$ is the decoder stream `(B, T, C)`
# while $X_k = X_v$ is the encoder output `(B, S, C)`: three separate input gradients.

# %%
dquery = dq @ mha.q_proj.weight  # (B, T, C)
dkey = dk @ mha.k_proj.weight  # (B, S, C)
dvalue = dv @ mha.v_proj.weight  # (B, S, C)
report_match("dquery", dquery, xq_t.grad)
report_match("dkey", dkey, xk_t.grad)
report_match("dvalue", dvalue, xv_t.grad)
for name, d in (("q", dq), ("k", dk), ("v", dv)):
    proj_t = getattr(twin, f"{name}_proj")
    report_match(f"d {name}_proj.weight", d.reshape(-1, C).T @ x.reshape(-1, C), proj_t.weight.grad)
    report_match(f"d {name}_proj.bias", d.sum(axis=(0, 1)), proj_t.bias.grad)

# %% [markdown]
# A head owns rows $hD \ldots (h+1)D - 1$ of $W_q$ (the rows that produce its columns of $q$),
# so those rows of $dW_q$ are built from head $h$'s gradient alone:
# $dW_q[hD:(h+1)D] = \sum_{b,t} dq_h[b, h, t]^\top x[b, t]$.

# %%
h = 1
rows = slice(h * D, (h + 1) * D)
dweight_q_head = np.einsum("btd,btc->dc", dqh[:, h], x)  # (D, C)
report_match(f"rows of d q_proj.weight owned by head {h}", dweight_q_head, twin.q_proj.weight.grad[rows])

# %% [markdown]
# **self-attention**: when one tensor $x$ feeds the query, key and value, the chain rule adds
# the three paths: $dx = dX_q + dX_k + dX_v$. The module returns the three separately and the
# caller adds them (an encoder layer does exactly that). Autograd with a **single** leaf agrees
# (the twin's parameter gradients are cleared first: autograd accumulates them, like `mha.grads`).

# %%
twin.zero_grad()
x_t = t64(x, grad=True)
(twin(x_t, x_t, x_t, mask=torch.from_numpy(allowed)) * torch.from_numpy(dout)).sum().backward()
report_match("dx = dquery + dkey + dvalue", dquery + dkey + dvalue, x_t.grad)
report_differs("dquery alone is not dx", dquery, x_t.grad)

# %% [markdown]
# **The package backward** does all of the above in six lines
# (`MultiHeadAttention.backward`) and accumulates every parameter gradient into `mha.grads`,
# keyed like the state dict.

# %%
dquery_pkg, dkey_pkg, dvalue_pkg = mha.backward(dout, cache)
report_match("dquery from the package", dquery_pkg, xq_t.grad)
report_match("dkey from the package", dkey_pkg, xk_t.grad)
report_match("dvalue from the package", dvalue_pkg, xv_t.grad)
twin_params = dict(twin.named_parameters())
for name, grad in mha.named_grads():
    report_match(f"mha.grads {name}", grad, twin_params[name].grad)

# %% [markdown]
# A padded key is never looked at, so it gets no gradient through $k$ and $v$: the rows of
# `dkey` and `dvalue` at batch element 1, positions 3–4, are zero. (The padded **queries** at
# those positions still attend to the real tokens and still pass gradient through `dquery`.)

# %%
print(
    "  dkey, dvalue at padded positions all zero:",
    bool((dkey_pkg[1, 3:] == 0).all() and (dvalue_pkg[1, 3:] == 0).all()),
)
print("  dquery at padded positions all zero:      ", bool((dquery_pkg[1, 3:] == 0).all()))

# %% [markdown]
# ## 4. Masks: ours vs `torch.nn.MultiheadAttention`
#
# | | this package, `F.scaled_dot_product_attention` | `nn.MultiheadAttention` |
# |---|---|---|
# | meaning of `True` | **may attend** | **blocked** |
# | causal / general mask | `mask`, bool, broadcastable to `(B, H, T, S)` | `attn_mask`, `(T, S)` or `(B·H, T, S)` |
# | padding | the same `mask`, e.g. `padding_mask(ids, PAD)`: `(B, 1, 1, S)` | `key_padding_mask`, `(B, S)` |
#
# `torch_transformer.bridge` converts, with shape checks:
#
# * `mask_to_attn_mask(mask, B, H, T, S)`: ours → `(B·H, T, S)`, negated, batch-major then heads;
# * `mask_to_key_padding_mask(mask)`: a per-key mask `(B, 1, 1, S)` → `(B, S)`, negated;
# * `key_padding_mask_to_mask(kpm)`: back, `(B, S)` → `(B, 1, 1, S)`.

# %%
pad = padding_mask(ids, PAD)  # (B, 1, 1, S) True = may attend
kpm = mask_to_key_padding_mask(pad)  # (B, S) True = blocked
attn_mask_3d = mask_to_attn_mask(allowed, B, H, T, T)  # (B*H, T, S) True = blocked
print(f"padding_mask {pad.shape} -> key_padding_mask {tuple(kpm.shape)}:\n{kpm.numpy().astype(int)}")
print(f"causal & padding {allowed.shape} -> attn_mask {tuple(attn_mask_3d.shape)}; entry b*H + h = 1*H + 0:")
print(attn_mask_3d[1 * H + 0].numpy().astype(int), "  (1 = blocked)")
report_match("key_padding_mask_to_mask(kpm) == padding_mask", key_padding_mask_to_mask(kpm), pad)

# %% [markdown]
# `mha_to_torch_builtin(mha)` packs `q_proj`, `k_proj`, `v_proj` into `nn.MultiheadAttention`'s
# `(3C, C)` `in_proj_weight`. Two equivalent ways to pass our causal + padding mask:
#
# 1. a causal `attn_mask` `(T, S)` (negated `causal_mask`) and a `key_padding_mask` `(B, S)`;
# 2. one 3-D `attn_mask` `(B·H, T, S)` from `mask_to_attn_mask`.
#
# With `need_weights=True, average_attn_weights=False` the built-in also returns the per-head
# weights `(B, H, T, S)`, comparable to `cache.weights`.

# %%
builtin = mha_to_torch_builtin(mha)
our_grads = dict(mha.named_grads())  # from the package backward of section 3, same x and dout
packed_dweight = np.concatenate([our_grads[f"{n}_proj.weight"] for n in "qkv"])  # (3C, C)
packed_dbias = np.concatenate([our_grads[f"{n}_proj.bias"] for n in "qkv"])  # (3C,)
print("built-in parameters:", {name: tuple(p.shape) for name, p in builtin.named_parameters()})
causal_blocked = torch.from_numpy(~causal_mask(T))  # (T, S) True = blocked
for label, kwargs in (
    ("attn_mask (T, S) + key_padding_mask", dict(attn_mask=causal_blocked, key_padding_mask=kpm)),
    ("attn_mask (B*H, T, S)", dict(attn_mask=attn_mask_3d)),
):
    xb_t = t64(x, grad=True)
    o_b, w_b = builtin(xb_t, xb_t, xb_t, need_weights=True, average_attn_weights=False, **kwargs)
    (o_b * torch.from_numpy(dout)).sum().backward()
    print(label)
    report_match("  out", out, o_b)
    report_match("  per-head weights", cache.weights, w_b)
    report_match("  dx", dquery_pkg + dkey_pkg + dvalue_pkg, xb_t.grad)
    report_match("  d in_proj_weight = [dW_q; dW_k; dW_v]", packed_dweight, builtin.in_proj_weight.grad)
    report_match("  d in_proj_bias = [db_q; db_k; db_v]", packed_dbias, builtin.in_proj_bias.grad)
    report_match("  d out_proj.weight", our_grads["out_proj.weight"], builtin.out_proj.weight.grad)
    builtin.zero_grad()

# %% [markdown]
# ### What an unconverted mask does
#
# Handing our mask straight to `nn.MultiheadAttention` inverts it. The causal mask then lets
# query $t$ see only keys **after** $t$: the last query sees nothing and its row becomes NaN.
# Our padding mask as a `key_padding_mask` lets every query see only the **pads**: a sequence
# without pads has no visible key at all, and its whole output is NaN. Neither raises an
# error, which is why the conversion is a named helper and not an inline `~`.

# %%
with torch.no_grad():
    o_wrong, w_wrong = builtin(
        t64(x),
        t64(x),
        t64(x),
        attn_mask=torch.from_numpy(causal_mask(T)),
        need_weights=True,
        average_attn_weights=False,
    )
    o_causal, _ = builtin(t64(x), t64(x), t64(x), attn_mask=causal_blocked)
out_causal, cache_causal = mha.forward(x, x, x, mask=causal_mask(T)[None, None])  # (1, 1, T, T)
report_match("causal, converted (~causal_mask)", out_causal, o_causal)
report_differs("causal, unconverted (causal_mask)", out_causal, o_wrong)
print("  unconverted: head 0, batch 0 weights (query t sees keys > t only):")
print(np.nan_to_num(w_wrong[0, 0].numpy(), nan=-1.0), "  (-1 = NaN)")

with torch.no_grad():
    o_wrong_pad, _ = builtin(t64(x), t64(x), t64(x), key_padding_mask=torch.from_numpy(pad[:, 0, 0, :]))
out_pad, _ = mha.forward(x, x, x, mask=pad)
report_differs("padding, unconverted (padding_mask)", out_pad, o_wrong_pad)
print("  NaN rows per batch element:", torch.isnan(o_wrong_pad).any(dim=-1).sum(dim=-1).tolist(), f"of {T}")

# %% [markdown]
# ## 5. A picture: what each head looks at
#
# The per-head weights `cache.weights[b, h]` of section 2 (causal + padding). The heads read
# the same tokens through different `(D, C)` slices of $W_q$ and $W_k$, so at initialisation
# they already spread their attention differently. Grey = blocked (weight exactly 0).

# %%
full = np.broadcast_to(allowed, cache.weights.shape)  # (B, H, T, S)
fig, axes = plt.subplots(B, H, figsize=(3.3 * H + 1.2, 3.3 * B + 0.6), layout="constrained")
cmap = plt.get_cmap("viridis").copy()
cmap.set_bad("lightgrey")
for b in range(B):
    labels = [f"{tok}" if tok != PAD else "PAD" for tok in ids[b]]
    for h in range(H):
        ax = axes[b, h]
        wts = cache.weights[b, h]  # (T, S)
        im = ax.imshow(np.ma.masked_array(wts, mask=~full[b, h]), cmap=cmap, vmin=0.0, vmax=1.0)
        for t in range(T):
            for s in range(T):
                if full[b, h, t, s]:
                    colour = "white" if wts[t, s] < 0.6 else "black"
                    ax.text(s, t, f"{wts[t, s]:.2f}", ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(T), labels, fontsize=8)
        ax.set_yticks(range(T), labels, fontsize=8)
        ax.set_title(f"batch {b}, head {h}", fontsize=10)
        if b == B - 1:
            ax.set_xlabel("key token")
        if h == 0:
            ax.set_ylabel("query token")
fig.colorbar(im, ax=axes, shrink=0.7, label="attention weight")
fig.suptitle("multi-head attention weights per head (causal + padding; grey = blocked)")
png = OUT / "04_multi_head_weights.png"
fig.savefig(png, dpi=120)
plt.close(fig)
print("saved", png)

# %% [markdown]
# ## Summary
#
# * `split`: `(B, T, C) → reshape (B, T, H, D) → transpose (B, H, T, D)`; `merge` undoes it.
#   Both only move entries, so the backward of `split` is `merge` and vice versa.
# * Backward of multi-head attention, in reverse order of the forward:
#   $dm = do\,W_o$ → $d\,\text{heads} = \mathrm{split}(dm)$ → attention backward per head
#   (walkthrough 03) → $dq = \mathrm{merge}(dq_h)$ → $dX_q = dq\,W_q$, and the same for
#   $k$, $v$; weight gradients $dW = \sum_n dy_n^\top x_n$, bias gradients $\sum_n dy_n$.
#   Every intermediate matches the twin under autograd.
# * `MultiHeadAttention.backward` returns `dquery, dkey, dvalue` separately; self-attention
#   adds them.
# * Our masks say `True` = may attend; `nn.MultiheadAttention`'s `attn_mask` and
#   `key_padding_mask` say `True` = blocked. Converted with `mask_to_attn_mask` /
#   `mask_to_key_padding_mask`, the built-in gives the same outputs, per-head weights and
#   gradients; unconverted, it silently attends to the wrong keys and produces NaN rows.
