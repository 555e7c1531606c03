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
# # 13 · Detection: DETR's matching, the GIoU backward, and what carries the gradient
#
# DETR predicts a fixed set of `Q` boxes per image and trains them against a set of `n ≤ Q` objects.
# Which prediction answers for which object is decided by a **Hungarian matching** that is *not*
# differentiated. This lesson:
#
# 1. matches four predictions to two objects by hand: the cost matrix, the assignment, a brute-force check;
# 2. shows why a permutation has no gradient, and why the loss still trains every query;
# 3. derives the backward of the generalized IoU line by line and checks each intermediate against
#    torch autograd and finite differences;
# 4. looks at the no-object weighting of the cross-entropy and its denominator;
# 5. sums the auxiliary losses' gradients into the decoder that all layers share.
#
# Shape legend: `Q` queries, `n` objects, `V = K + 1` classes (the last = no object), `L` decoder layers.
# A check prints `exact`, `close (max rel err …)`, or stops with an `AssertionError`.

# %%
import itertools
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
import torch

import numpy_transformer.functional as F
from numpy_transformer.config import DetrConfig
from numpy_transformer.functional.boxes import overlap_backward, overlap_forward
from numpy_transformer.functional.detr_loss import matching_cost
from numpy_transformer.models.detr import DETR
from numpy_transformer.testing import numerical_gradient, relative_error, report_match, tolerance

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
np.set_printoptions(precision=3, suppress=True, linewidth=110)
torch.set_num_threads(1)


def check_fd(name, analytic, numeric):
    cmp = relative_error(name, analytic, numeric)
    tol = tolerance("finite_differences", np.float64)
    if not cmp.error <= tol:
        raise AssertionError(f"MISMATCH {cmp.describe()} exceeds tolerance {tol:.0e}")
    print(f"  {name:<44} close to finite differences (max rel err {cmp.error:.1e})")


# %% [markdown]
# ## 1. The matching on a tiny example
#
# Four queries predict a class distribution over `K = 2` digits plus "no object" and a box
# `(cx, cy, w, h)`; the image holds two objects. DETR's cost of giving object `j` to query `i` is
#
# $$C_{ij} = 5\,\lVert \hat b_i - b_j\rVert_1 \;-\; 1\cdot \hat p_i(c_j) \;-\; 2\,\mathrm{GIoU}(\hat b_i, b_j),$$
#
# with the class *probability* (not its log: a probability is bounded, like the other two terms).

# %%
logits = np.array([[2.0, 0.1, 0.0], [0.0, 0.2, 1.5], [0.1, 2.5, 0.0], [0.5, 0.4, 0.3]])  # (Q, V)
pred = np.array([[0.30, 0.30, 0.20, 0.20], [0.70, 0.70, 0.10, 0.10], [0.68, 0.35, 0.22, 0.28], [0.5, 0.5, 0.6, 0.6]])
labels = np.array([1, 0])  # object 0 is a "1", object 1 a "0"
targets = np.array([[0.70, 0.30, 0.20, 0.30], [0.32, 0.28, 0.20, 0.22]])  # (n, 4)
cost = matching_cost(logits, pred, labels, targets)  # (Q, n)
print("cost matrix (rows: queries, columns: objects)\n", cost)
((rows, cols),) = F.hungarian_match(logits[None], pred[None], [labels], [targets])
print("assignment: query", rows, "-> object", cols, " total cost", cost[rows, cols].sum().round(3))
best = min(
    (cost[list(q), [0, 1]].sum(), q) for q in itertools.permutations(range(4), 2)
)  # every ordered pair of queries
assert np.isclose(best[0], cost[rows, cols].sum()) and tuple(rows[np.argsort(cols)]) == best[1]
print("brute force over all 12 assignments agrees:", best[1])

fig, ax = plt.subplots(figsize=(4, 4))
ax.imshow(cost, cmap="viridis")
for i, j in zip(rows, cols, strict=True):
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, color="red", lw=3))
for i in range(4):
    for j in range(2):
        ax.text(j, i, f"{cost[i, j]:.2f}", ha="center", va="center", color="white")
ax.set(xlabel="object", ylabel="query", title="cost; red = Hungarian assignment", xticks=[0, 1], yticks=range(4))
fig.tight_layout()
fig.savefig(OUT / "13_matching.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## 2. A permutation has no gradient, yet every query learns
#
# The assignment is a discrete choice: nudging a box by `ε` does not change it (unless two costs
# tie), so `dσ/dθ = 0` almost everywhere. Given `σ`, the loss is an ordinary smooth function of every
# query: matched queries get a class target and a box target, unmatched ones the target "no object".
# Finite differences of the *whole* loss (matching included) therefore equal the backward that holds
# the matching fixed.

# %%
L_ = logits[None, None]  # (L=1, B=1, Q, V)
B_ = pred[None, None]
loss, lc = F.detr_loss_forward(L_, B_, [labels], [targets])
dlogits, dboxes = F.detr_loss_backward(1.0, lc)
check_fd("dlogits (matching recomputed each probe)", dlogits, numerical_gradient(lambda _: F.detr_loss_forward(L_, B_, [labels], [targets])[0], L_, np.ones(())))  # fmt: skip
check_fd("dboxes (matching recomputed each probe)", dboxes, numerical_gradient(lambda _: F.detr_loss_forward(L_, B_, [labels], [targets])[0], B_, np.ones(())))  # fmt: skip
print("per query |dlogits|:", np.abs(dlogits[0, 0]).sum(-1), " |dboxes|:", np.abs(dboxes[0, 0]).sum(-1))
unmatched = [q for q in range(4) if q not in rows]
assert not dboxes[0, 0, unmatched].any() and (dlogits[0, 0, unmatched, -1] < 0).all()
print(f"queries {unmatched} are unmatched: no box gradient, and descent raises their no-object logit")

# %% [markdown]
# ## 3. The GIoU backward, line by line
#
# For corner boxes `a`, `b`: `I = relu(min x₂ − max x₁) · relu(min y₂ − max y₁)`, `U = A_a + A_b − I`,
# `E = (max x₂ − min x₁)(max y₂ − min y₁)` (the enclosing box), `IoU = I / U`,
# `GIoU = IoU − (E − U)/E = IoU − 1 + U/E`. Backward from `dG`:
#
# $$dU = dG\,\Big(\tfrac1E - \tfrac{I}{U^2}\Big),\quad dE = -dG\,\tfrac{U}{E^2},\quad
#   dI = \tfrac{dG}{U} - dU,$$
#
# then `dA_a = dA_b = dU`, each product sends each factor the other times its gradient, `relu` passes
# where the boxes overlap, and every `min` / `max` passes to the corner that won it.

# %%
a = np.array([0.1, 0.2, 0.5, 0.6])
b = np.array([0.3, 0.1, 0.8, 0.5])
iou, giou, c = overlap_forward(a, b)
d_g = 1.0
I, U, E = c.inter, c.union, c.enc
d_u = d_g * (1 / E - I / U**2)
d_e = -d_g * U / E**2
d_i = d_g / U - d_u
at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
iw = torch.clamp(torch.minimum(at[2], bt[2]) - torch.maximum(at[0], bt[0]), min=0)
ih = torch.clamp(torch.minimum(at[3], bt[3]) - torch.maximum(at[1], bt[1]), min=0)
It = iw * ih
Ut = (at[2] - at[0]) * (at[3] - at[1]) + (bt[2] - bt[0]) * (bt[3] - bt[1]) - It
Et = (torch.maximum(at[2], bt[2]) - torch.minimum(at[0], bt[0])) * (
    torch.maximum(at[3], bt[3]) - torch.minimum(at[1], bt[1])
)
for t in (It, Ut, Et):
    t.retain_grad()
Gt = It / Ut - (Et - Ut) / Et
Gt.backward()
report_match("GIoU", giou, Gt)
report_match("d_e = -d_g U / E^2", d_e, Et.grad)
report_match("d_u = d_g (1/E - I/U^2)", d_u, Ut.grad)
report_match("d_i = d_g / U - d_u (U = A_a + A_b - I)", d_i, It.grad)
da, db = overlap_backward(None, np.array(d_g), c)
report_match("da (every corner of a)", da, at.grad)
report_match("db", db, bt.grad)
check_fd("da", da, numerical_gradient(lambda _: overlap_forward(a, b)[1], a, np.ones(())))

# %% [markdown]
# GIoU is worth its extra term when boxes do **not** overlap: IoU is then 0 with a zero gradient,
# while GIoU keeps a slope that points the prediction at its target. Slide `a` along x past `b`:

# %%
shifts = np.linspace(-0.8, 0.8, 161)
curves = {"IoU": [], "GIoU": [], "dGIoU/dshift": [], "dIoU/dshift": []}
for s in shifts:
    a_s = a + np.array([s, 0, s, 0])
    i_s, g_s, c_s = overlap_forward(a_s, b)
    dgi, _ = overlap_backward(None, np.array(1.0), c_s)
    dii, _ = overlap_backward(np.array(1.0), None, c_s)
    curves["IoU"].append(i_s)
    curves["GIoU"].append(g_s)
    curves["dGIoU/dshift"].append(dgi[0] + dgi[2])
    curves["dIoU/dshift"].append(dii[0] + dii[2])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(shifts, curves["IoU"], label="IoU")
axes[0].plot(shifts, curves["GIoU"], label="GIoU")
axes[1].plot(shifts, curves["dIoU/dshift"], label="d IoU / d shift")
axes[1].plot(shifts, curves["dGIoU/dshift"], label="d GIoU / d shift")
for ax in axes:
    ax.set_xlabel("shift of box a along x")
    ax.legend()
axes[0].set_title("IoU is flat at 0 once the boxes part")
axes[1].set_title("the GIoU gradient still points home")
fig.tight_layout()
fig.savefig(OUT / "13_giou.png", dpi=100)
plt.close(fig)
far = (shifts > 0.72) | (shifts < -0.25)  # a = [0.1, 0.5] + shift and b = [0.3, 0.8] apart along x
assert not np.any(np.array(curves["dIoU/dshift"])[far]) and np.all(np.abs(np.array(curves["dGIoU/dshift"])[far]) > 0)

# %% [markdown]
# ## 4. The no-object weighting
#
# With `Q = 100` queries and a handful of objects, almost every target is "no object". DETR weighs
# that class by `eos_coef = 0.1`, and torch's weighted mean divides by the **sum of the targets'
# weights**: here `2 · 1 + 2 · 0.1 = 2.2`, not `Q = 4`.

# %%
target_classes = np.full(4, 2)
target_classes[rows] = labels[cols]
w = np.array([1.0, 1.0, 0.1])
ce, _ = F.weighted_cross_entropy_forward(logits, target_classes, w)
theirs = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(target_classes), weight=torch.tensor(w))
report_match("weighted CE vs F.cross_entropy(weight=)", ce, theirs)
nll = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))[np.arange(4), target_classes]
print(f"sum w*nll / sum w = {(w[target_classes] * nll).sum() / w[target_classes].sum():.4f}"
      f"   (/ Q would give {(w[target_classes] * nll).sum() / 4:.4f})")  # fmt: skip
assert np.isclose(ce, (w[target_classes] * nll).sum() / w[target_classes].sum())

# %% [markdown]
# ## 5. Auxiliary losses: every layer's gradient lands in the same decoder
#
# With auxiliary losses the heads and the decoder's LayerNorm read every decoder layer, and each
# layer's loss flows back through all layers below it. The backward is linear in the upstream
# gradients, so the gradient of the total is the **sum** of what each layer's loss alone gives.

# %%
cfg = DetrConfig(embedding_size=4, hidden_sizes=(8,), depths=(1,), d_model=16, encoder_layers=1, decoder_layers=3,
                 encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=4, num_labels=2)  # fmt: skip
detr = DETR(cfg, rng=np.random.default_rng(0))
x = np.random.default_rng(1).random((1, 1, 16, 16))
out, cache = detr.forward(x)
total, lc3 = F.detr_loss_forward(out.logits, out.pred_boxes, [labels], [targets])
dz, dbx = F.detr_loss_backward(1.0, lc3)
detr.zero_grad()
detr.backward(dz, dbx, cache)
together = {n: g.copy() for n, g in detr.named_grads()}
per_layer = []
for l in range(3):
    only_z, only_b = np.zeros_like(dz), np.zeros_like(dbx)
    only_z[l], only_b[l] = dz[l], dbx[l]
    detr.zero_grad()
    detr.backward(only_z, only_b, cache)
    per_layer.append({n: g.copy() for n, g in detr.named_grads()})
summed = {n: sum(p[n] for p in per_layer) for n in together}
report_match("decoder.0 grads = sum of the 3 layers' losses'", summed["decoder.0.self_attn.q_proj.weight"], together["decoder.0.self_attn.q_proj.weight"])  # fmt: skip
report_match("class_head grads, summed", summed["class_head.weight"], together["class_head.weight"])
norms = np.array([[np.linalg.norm(p[f"decoder.{k}.ff.linear1.weight"]) for k in range(3)] for p in per_layer])
print("|d decoder.k.ff.linear1.weight| from the loss of layer l (rows l, columns k):\n", norms)
assert np.all(np.triu(norms, 1) == 0)  # layer l's loss never reaches the layers above it
fig, ax = plt.subplots(figsize=(4.2, 3.4))
ax.imshow(norms, cmap="magma")
ax.set(xlabel="decoder layer k (parameters)", ylabel="supervised layer l (loss)", xticks=range(3), yticks=range(3),
       title="gradient norm reaching layer k")  # fmt: skip
fig.tight_layout()
fig.savefig(OUT / "13_aux_gradients.png", dpi=100)
plt.close(fig)
print("pictures in", OUT)
print("the loss of the last layer alone leaves the first layers with the smallest gradient; the auxiliary")
print("losses give every layer a direct one, which is why DETR trains with them")
