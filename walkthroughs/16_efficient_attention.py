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
# # 16 · Efficient attention: the online softmax, a backward from the log-sum-exp, sliding windows
#
# Lesson 03's attention computes the scores `s = c q kᵀ` of every query against every key, a
# `(T, S)` array per head, takes their softmax `P` and keeps it for the backward. At T = S = 8192
# in float32 one such array is 256 MiB; even written with care (the scores turned into the
# probabilities in place, a bool dropout mask, the backward's temporaries in blocks of rows)
# forward + backward hold fewer than two of them at their peak. The
# tiled ("flash") attention of `numpy_transformer.functional.flash_attention` computes the *same
# numbers* a tile of `Bq` queries by `Bk` keys at a time, keeps one number per query row between
# tiles, and recomputes the probabilities in the backward. This lesson:
#
# 1. derives the **online softmax** and shows why rescaling by `exp(m_old − m_new)` is exact, not
#    an approximation — checked number by number;
# 2. checks `flash_attention_forward` against `F.scaled_dot_product_attention` and the standard op;
# 3. derives the **backward from the log-sum-exp**: `P = exp(s − L)` brings the probabilities
#    back exactly, then each gradient of a tile needs that tile only;
# 4. shows why `rowsum(dO ∘ O) = rowsum(dP ∘ P)`, the one number per row that the softmax's
#    Jacobian needs and that no tile could compute;
# 5. **measures** memory and time against T (small sizes, so the lesson runs in seconds; the full
#    sweep is `python -m numpy_transformer benchmark --attention`);
# 6. adds **sliding windows**: the mask, the tiles that are skipped, and equality with the
#    standard attention under the equivalent boolean mask.
#
# Shape legend: `T` queries, `S` keys, `D` query/key width, `Dv` value width, `Bq`/`Bk` tile
# sizes, `c = 1/√D`. Everything is float64 but the measured sweep (float32, as the benchmark).
# Every check prints `exact`, `close (max rel err …)`, or stops with an `AssertionError`.

# %%
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small matrices: one BLAS thread is faster

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer.applications.attention_benchmark import AttentionBenchConfig, run_sweep, score_array_mib
from numpy_transformer.functional import (
    flash_attention_backward,
    flash_attention_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
    sliding_window_mask,
)
from numpy_transformer.testing import report_differs, report_match

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
# ## 1. The online softmax
#
# Take one query row, its scaled scores `s_1 … s_S` and values `v_1 … v_S`, and cut the keys into
# blocks `J_1, J_2, …`. The output `o = Σ_s softmax(s)_s v_s` needs the maximum (to keep the
# exponentials from overflowing) and the sum of the exponentials — both over *all* keys. The
# online softmax keeps, after block `j`, a running maximum, sum and unnormalised output:
#
# $$m_j = \max(m_{j-1}, \max_{s \in J_j} s),\qquad
#   l_j = e^{m_{j-1} - m_j}\, l_{j-1} + \sum_{s \in J_j} e^{s - m_j},\qquad
#   a_j = e^{m_{j-1} - m_j}\, a_{j-1} + \sum_{s \in J_j} e^{s - m_j}\, v_s,$$
#
# from `m_0 = −∞`, `l_0 = 0`, `a_0 = 0`. **Why the rescaling is exact.** Suppose after block
# `j − 1` the invariant holds: `l_{j−1} = Σ_{s seen} e^{s − m_{j−1}}`. Each term times
# `e^{m_{j−1} − m_j}` is `e^{s − m_{j−1} + m_{j−1} − m_j} = e^{s − m_j}`: the product of two
# exponentials is the exponential of the sum, an identity, so the old sum *becomes* the sum the
# new reference point needs, term by term. Adding the new block's terms keeps the invariant for
# `j`. Nothing is approximated; the reference point only moves, and every exponential stays ≤ 1.
# At the end `o = a / l`, and `L = m + log l` is the row's log-sum-exp. We run it block by block
# and check the invariant after every block against the sums computed directly.

# %%
S, Dv, block = 20, 3, 6
s_row = rng.standard_normal(S) * 3.0  # one query's scaled scores
v_row = rng.standard_normal((S, Dv))
m, l, a = -math.inf, 0.0, np.zeros(Dv)
history = []  # (keys seen, m, a / l) after each block
for j0 in range(0, S, block):
    sj = s_row[j0 : j0 + block]
    m_new = max(m, sj.max())
    rescale = math.exp(m - m_new)  # exp(m_old - m_new) <= 1; exp(-inf) = 0 for the first block
    l = rescale * l + np.exp(sj - m_new).sum()
    a = rescale * a + np.exp(sj - m_new) @ v_row[j0 : j0 + block]
    m = m_new
    seen = s_row[: j0 + len(sj)]
    check(f"l after keys 0..{len(seen) - 1} = sum exp(s - m)", np.array(l), np.exp(seen - m).sum())
    history.append((len(seen), m, a / l))

o_online = a / l
s_t, v_t = t64(s_row), t64(v_row)
check("o = a / l vs softmax(s) @ v (torch)", o_online, torch.softmax(s_t, 0) @ v_t)
check("L = m + log l vs torch.logsumexp(s)", np.array(m + math.log(l)), torch.logsumexp(s_t, 0))

# Rescaling is not optional: keep every block's old sum as it was (no exp(m_old - m_new)) and the
# blocks are summed against different reference points.
m, l_wrong = -math.inf, 0.0
for j0 in range(0, S, block):
    sj = s_row[j0 : j0 + block]
    m = max(m, sj.max())
    l_wrong = l_wrong + np.exp(sj - m).sum()
report_differs("l without the rescaling", np.array(l_wrong), np.exp(s_row - s_row.max()).sum())

# And why shift at all: scores of a few hundred overflow exp() in float64 (and ~89 in float32).
big = np.array([700.0, 710.0, 705.0])
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(big) / np.exp(big).sum()
print(
    f"  naive softmax of {big}: {naive} -- the shifted one: {np.exp(big - big.max()) / np.exp(big - big.max()).sum()}"
)

# %%
fig, (ax_s, ax_o) = plt.subplots(1, 2, figsize=(11, 3.8))
ax_s.bar(np.arange(S), s_row, color="0.7", label="scores s")
edges = [min(j0 + block, S) for j0 in range(0, S, block)]
ax_s.step([0, *edges], [history[0][1], *[h[1] for h in history]], where="pre", color="C3", label="running max m_j")
for e in edges[:-1]:
    ax_s.axvline(e - 0.5, color="k", ls=":", lw=1)
ax_s.set(xlabel="key", title="one query row, keys in blocks of 6")
ax_s.legend(fontsize=8)
for d in range(Dv):
    (line,) = ax_o.plot([h[0] for h in history], [h[2][d] for h in history], "o-", label=f"(a/l)[{d}]")
    ax_o.axhline(o_online[d], color=line.get_color(), ls="--", lw=1)
ax_o.set(xlabel="keys seen", title="the normalised output after each block (dashed: final o)")
ax_o.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "16_online_softmax.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## 2. Tile by tile, every row and head at once
#
# `flash_attention_forward` runs the recurrence for a whole block of `Bq` query rows at a time
# (the running `m`, `l` are `(…, Bq, 1)` columns, `a` is `(…, Bq, Dv)`), over key blocks of `Bk`,
# each tile one matrix product over all leading dimensions. Tiles that do not divide `T` or `S`
# are shorter at the end. Its cache holds `q, k, v, out` and the row log-sum-exp `lse` — no
# `(T, S)` array. Against `F.scaled_dot_product_attention` and our standard op, causal, with
# tiles of 5 × 3 that divide neither length:

# %%
B, H, T, S, D = 2, 3, 13, 11, 4
q = rng.standard_normal((B, H, T, D))
k = rng.standard_normal((B, H, S, D))
v = rng.standard_normal((B, H, S, Dv))
dout = rng.standard_normal((B, H, T, Dv))
out, cache = flash_attention_forward(q, k, v, is_causal=True, block_size=(5, 3))
q_t, k_t, v_t = t64(q, True), t64(k, True), t64(v, True)
out_t = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True)
check("flash out vs F.scaled_dot_product_attention", out, out_t)
out_std, cache_std = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
check("flash out vs our standard attention", out, out_std)
scores_t = (q_t @ k_t.transpose(-1, -2)) / math.sqrt(D)
scores_t = scores_t.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), -math.inf)
check("cache.lse vs torch.logsumexp(masked scores)", cache.lse, torch.logsumexp(scores_t, -1))
print("  the cache's arrays:", {f: getattr(cache, f).shape for f in ("q", "k", "v", "out", "lse")})
total = math.ceil(T / 5) * math.ceil(S / 3)
print(f"  tiles computed: {cache.tiles} of {total} (causal: the tiles entirely above the diagonal are skipped)")

# %% [markdown]
# ## 3. The backward from the log-sum-exp
#
# With `L_t` stored, any tile's probabilities come back with one score product and one `exp`:
# `P_ts = e^{s_ts − L_t}` — exactly the softmax, since `softmax(s)_s = e^{s} / Σ e^{s'} = e^{s − L}`.
# Then, as in the standard backward (`O = P V`, `s = c Q Kᵀ`):
#
# $$dV = P^\top dO,\qquad dP = dO\,V^\top,\qquad dS = P \odot (dP - D),\qquad dQ = c\, dS\,K,\qquad dK = c\, dS^\top Q,$$
#
# with `D_t = Σ_s P_ts dP_ts` from the softmax's Jacobian. We compute each line for the whole
# array (one "tile") and compare it with the same intermediate of torch autograd (`retain_grad`).

# %%
c = 1 / math.sqrt(D)
allowed = np.tri(T, S, dtype=bool)  # causal, top-left aligned
s = np.where(allowed, c * q @ np.swapaxes(k, -1, -2), -np.inf)  # (B, H, T, S)
p = np.exp(s - cache.lse[..., None])  # P = exp(s - L): the softmax, recomputed
p_t = torch.softmax(scores_t, -1)
p_t.retain_grad()
scores_t.retain_grad()
o_t = p_t @ v_t
(o_t * torch.from_numpy(dout)).sum().backward()
check("P = exp(s - L) vs torch.softmax", p, p_t)
dv = np.swapaxes(p, -1, -2) @ dout  # dV = P^T dO
check("dV = P^T dO", dv, v_t.grad)
dp = dout @ np.swapaxes(v, -1, -2)  # dP = dO V^T
check("dP = dO V^T", dp, p_t.grad)
row = (p * dp).sum(-1, keepdims=True)  # D = rowsum(dP * P)
ds = p * (dp - row)  # dS = P * (dP - D)
check("dS = P * (dP - D)", ds, scores_t.grad)
check("dQ = c dS K", c * ds @ k, q_t.grad)
check("dK = c dS^T Q", c * np.swapaxes(ds, -1, -2) @ q, k_t.grad)

# %% [markdown]
# ## 4. Why `rowsum(dO ∘ O) = rowsum(dP ∘ P)`
#
# The last step needs, per row, `D_t = Σ_s P_ts dP_ts` — a sum over **all** keys, which no single
# tile sees. But `dP_ts = dO_t · v_s`, so
#
# $$D_t = \sum_s P_{ts}\,(dO_t \cdot v_s) = dO_t \cdot \sum_s P_{ts} v_s = dO_t \cdot O_t .$$
#
# The output the forward already wrote and the incoming gradient give it before the first tile:
# one `(…, T)` vector. Then each tile's gradients need only that tile, and `flash_attention_backward`
# adds the tiles' contributions into `dQ`, `dK`, `dV`.

# %%
check("rowsum(dO * O) vs rowsum(dP * P)", (dout * out).sum(-1), row[..., 0])
dq, dk, dv_f = flash_attention_backward(dout, cache)
check("flash_attention_backward dq vs torch autograd", dq, q_t.grad)
check("flash_attention_backward dk vs torch autograd", dk, k_t.grad)
check("flash_attention_backward dv vs torch autograd", dv_f, v_t.grad)
dq_s, dk_s, dv_s = scaled_dot_product_attention_backward(dout, cache_std)
print(f"  flash vs standard backward, worst: {max(np.abs(dq - dq_s).max(), np.abs(dk - dk_s).max()):.1e}")

# %% [markdown]
# ## 5. Memory and time against T, measured
#
# `numpy_transformer.applications.attention_benchmark` runs forward + backward of each kernel on
# float32 inputs and measures the time (median) and the peak of `tracemalloc` (every array the op
# allocates, outputs and gradients included, inputs not). Here at small sizes so the lesson stays
# quick (D = 64, one head, tiles of 64); `python -m numpy_transformer benchmark --attention` runs
# T = 512 … 8192 and adds `torch`'s `scaled_dot_product_attention`. The standard op's peak grows as
# `T²` — under two score-sized arrays, outputs and gradients included — the tiled ones' as `(T + S) · D`.

# %%
config = AttentionBenchConfig(lengths=(128, 256, 512, 1024), block_size=64, window=64, repeats=3, warmup=1)
rows = run_sweep(config)
by = {(r.kernel, r.T): r for r in rows}
print(
    f"  {'T':>5} {'one T x S (MiB)':>16} "
    + " ".join(f"{k + ' ms':>12} {k + ' MiB':>13}" for k in ("standard", "flash", "window"))
)
for T_ in config.lengths:
    cells = " ".join(
        f"{by[(kind, T_)].median_ms:12.1f} {by[(kind, T_)].peak_mib:13.2f}" for kind in ("standard", "flash", "window")
    )
    print(f"  {T_:5d} {score_array_mib(config, T_):16.2f} {cells}")  # fmt: skip
ratio = by[("standard", 1024)].peak_mib / score_array_mib(config, 1024)
print(f"  at T = 1024 the standard op peaks at {ratio:.1f} score arrays; flash at "
      f"{by[('flash', 1024)].peak_mib / score_array_mib(config, 1024):.2f} of one")  # fmt: skip
if not by[("flash", 1024)].peak_mib < 0.5 * score_array_mib(config, 1024) < by[("standard", 1024)].peak_mib:
    raise AssertionError("MISMATCH: the tiled kernel's memory is not below one score array")

fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
for kind in ("standard", "flash", "window"):
    xs = list(config.lengths)
    (line,) = ax_t.plot(xs, [by[(kind, x)].median_ms for x in xs], "o-", label=kind)
    ax_m.plot(xs, [by[(kind, x)].peak_mib for x in xs], "o-", color=line.get_color(), label=kind)
ax_m.plot(xs, [score_array_mib(config, x) for x in xs], "k--", alpha=0.5, label="one T x S array")
ax_t.set(xlabel="T = S", ylabel="ms (median)", title="forward + backward time")
ax_m.set(xlabel="T = S", ylabel="MiB (tracemalloc peak)", title="forward + backward peak memory")
for ax in (ax_t, ax_m):
    ax.set(xscale="log", yscale="log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xticks([], minor=True)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.suptitle(f"D {config.head_dim}, float32, tiles {config.block_size}, window {config.window}, one thread")
fig.tight_layout()
fig.savefig(OUT / "16_memory_time.png", dpi=110)
plt.close(fig)

# %% [markdown]
# On one CPU thread the tiled kernel is not faster: NumPy's BLAS already streams a whole `(T, S)`
# product, and the tiled backward does one more score product. Its gain is memory (and on a GPU,
# where the tile lives in on-chip memory, time as well). The window kernel is faster because it
# computes fewer tiles, the subject of the next section.
#
# ## 6. Sliding windows
#
# Causal local attention: query `t` sees the last `W` keys, `t − W < s ≤ t`
# (`sliding_window_mask(T, W)`; FlashAttention's `window_size=(W − 1, 0)`, Mistral's
# `sliding_window`). As a boolean mask it is a band under the diagonal; natively
# (`window=W`) the tiled kernel visits only the tiles that touch the band, so time and memory
# grow as `T · W`. It must equal the standard attention under the equivalent mask, forward and
# backward, and a key outside every query's window must get no gradient.

# %%
T, W, blk = 48, 10, 8
q = rng.standard_normal((2, 2, T, D))
k = rng.standard_normal((2, 2, T, D))
v = rng.standard_normal((2, 2, T, Dv))
dout = rng.standard_normal((2, 2, T, Dv))
band = sliding_window_mask(T, W)  # (T, T) bool, True = may attend
out_w, cache_w = flash_attention_forward(q, k, v, window=W, block_size=blk)
out_m, cache_m = scaled_dot_product_attention_forward(q, k, v, mask=band)
check("window flash out vs standard with the band mask", out_w, out_m)
for name, g_w, g_m in zip(("dq", "dk", "dv"), flash_attention_backward(dout, cache_w),
                          scaled_dot_product_attention_backward(dout, cache_m), strict=True):  # fmt: skip
    check(f"window flash {name} vs standard with the band mask", g_w, g_m)
q_t, k_t, v_t = t64(q, True), t64(k, True), t64(v, True)
F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=torch.from_numpy(band)).mul(
    torch.from_numpy(dout)
).sum().backward()
check("window flash dk vs F.sdpa(attn_mask=band) autograd", flash_attention_backward(dout, cache_w)[1], k_t.grad)  # fmt: skip

# Key 0 lies inside the windows of queries 0 .. W - 1 only: moving it may change those rows and no
# other. (Row 0 does not move either: query 0 sees key 0 alone, whose weight is 1 whatever the key.)
k2 = k.copy()
k2[..., 0, :] += 5.0
out_w2, _ = flash_attention_forward(q, k2, v, window=W, block_size=blk)
unchanged = np.abs(out_w2 - out_w).max(axis=(0, 1, 3))  # (T,)
print(f"  rows changed by moving key 0: {np.flatnonzero(unchanged > 0).tolist()} (of queries 0..{W - 1} only)")
if np.flatnonzero(unchanged > 0).max() >= W:
    raise AssertionError("MISMATCH: a query outside key 0's window moved")

n_bq = math.ceil(T / blk)
computed = np.zeros((n_bq, n_bq), dtype=bool)  # which (query block, key block) tiles the kernel visits
for i in range(n_bq):
    for j in range(n_bq):
        rows_ = np.arange(i * blk, min((i + 1) * blk, T))[:, None]
        keys_ = np.arange(j * blk, min((j + 1) * blk, T))[None, :]
        computed[i, j] = bool(((keys_ <= rows_) & (keys_ > rows_ - W)).any())
print(f"  tiles computed: {cache_w.tiles} of {n_bq * n_bq} ({computed.sum()} touch the band)")
if cache_w.tiles != computed.sum():
    raise AssertionError("MISMATCH: the kernel visited tiles outside the band (or skipped one inside)")

fig, (ax_b, ax_k) = plt.subplots(1, 2, figsize=(10, 4.5))
ax_b.imshow(band, cmap="Blues", interpolation="nearest")
for e in range(blk, T, blk):
    ax_b.axhline(e - 0.5, color="0.6", lw=0.6)
    ax_b.axvline(e - 0.5, color="0.6", lw=0.6)
ax_b.set(xlabel="key s", ylabel="query t", title=f"sliding_window_mask(T={T}, window={W}), tiles of {blk}")
ax_k.imshow(computed, cmap="Oranges", interpolation="nearest")
ax_k.set(xlabel="key block", ylabel="query block",
         title=f"tiles the kernel computes: {cache_w.tiles} of {n_bq * n_bq}")  # fmt: skip
fig.tight_layout()
fig.savefig(OUT / "16_sliding_window.png", dpi=110)
plt.close(fig)

# %% [markdown]
# **In the models.** Every model's config takes `attention="standard" | "flash"`
# (`GPTConfig(..., attention="flash")`, and the Transformer, BERT, ViT, CLIP towers and Llama —
# grouped-query natively, over the shared key/value heads). The numbers are the same to ~1e-15
# (`parity_tests/test_attention_option.py`), attention dropout included: given the same mask (or
# the same generator) both kernels drop the same weights, the flash one tile by tile.
#
# ## Summary
#
# * The online softmax moves its reference point: `e^{m_old − m_new}` turns every old term
#   `e^{s − m_old}` into `e^{s − m_new}` exactly; no approximation, no overflow.
# * One log-sum-exp per row is all the backward needs of the softmax: `P = e^{s − L}`.
# * `D = rowsum(dP ∘ P) = rowsum(dO ∘ O)`, known before any tile, makes every tile's gradient local.
# * Memory falls from several `T × S` arrays to `(T + S) · D` plus a tile; a sliding window also
#   cuts the tiles, and with them the time, to `T · W`.

# %%
worst = max(CHECKS, key=lambda cmp: cmp.error)
print(f"\n{len(CHECKS)} checks; the worst: {worst.name}, max rel err {worst.error:.1e}")
print(f"wrote {', '.join(f'16_{n}.png' for n in ('online_softmax', 'memory_time', 'sliding_window'))} to {OUT}")
print(f"total {time.perf_counter() - START:.1f} s")
