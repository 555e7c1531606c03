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
# # 14 · Contrastive learning: CLIP's loss, its backward through the L2 normalisation, and the temperature
#
# CLIP trains an image encoder and a text encoder against each other. A batch holds `B` pairs;
# image `i` belongs with caption `i` and with no other. Each side is projected into one space
# of width `E` and normalised to unit length; every image is compared with every caption by
# cosine similarity, scaled by a learned `exp(s)`:
#
# $$u_i = \frac{I_i}{\lVert I_i\rVert},\quad v_j = \frac{T_j}{\lVert T_j\rVert},\quad
#   L_{ij} = e^{s}\, u_i \cdot v_j,\qquad
#   \ell = \tfrac12\Big(\mathrm{CE}(L, \mathrm{arange}\,B) + \mathrm{CE}(L^T, \mathrm{arange}\,B)\Big).$$
#
# Row `i` of `L` is a `B`-way classification "which caption is image `i`'s?", row `j` of `Lᵀ` the
# same question asked of caption `j`. This lesson:
#
# 1. computes the loss of a 4 × 4 batch by hand and checks it against autograd and `F.cross_entropy`;
# 2. derives the gradient of the logits, `dL = ½((P_row − 1)/B + ((P_col − 1)/B)ᵀ)`;
# 3. takes it through the L2 normalisation and shows why the result is **orthogonal to the
#    embedding**: moving `I` along itself does not move `u`;
# 4. derives the temperature's gradient, `ds = Σ dL ⊙ L`, and looks at the loss as a function of `s`;
# 5. follows one loss into **both encoders** of a small CLIP, every intermediate against the twin,
#    and shows that the two towers meet only at `L`.
#
# Shape legend: `B` pairs, `E` the shared width, `T` caption length, `Ct` / `Cv` the two encoders'
# widths. Everything is float64. A check prints `exact`, `close (max rel err …)` or stops.

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

from numpy_transformer.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from numpy_transformer.functional import (
    clip_loss_backward,
    clip_loss_forward,
    l2_normalize_backward,
    l2_normalize_forward,
)
from numpy_transformer.models.clip import CLIPModel
from numpy_transformer.testing import relative_error, report_match, tolerance
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
# ## 1. The loss of a 4 × 4 batch, by hand
#
# Four image features and four caption features (in CLIP they come out of the two projections).
# Pair `i` is row `i` of each. Each caption is its image plus noise — a batch half-way through
# training: partners agree more than strangers, but not perfectly.

# %%
B, E = 4, 6
image = rng.standard_normal((B, E))  # (B, E) I: image features
text = image + 0.9 * rng.standard_normal((B, E))  # (B, E) T: caption features, noisy copies
s = np.asarray(np.log(1 / 0.07))  # () logit_scale, CLIP's initial value: exp(s) = 14.29

r_img = np.sqrt((image**2).sum(-1, keepdims=True))  # (B, 1) |I_i|
r_txt = np.sqrt((text**2).sum(-1, keepdims=True))  # (B, 1) |T_j|
u, v = image / r_img, text / r_txt  # (B, E) unit rows
L = np.exp(s) * (u @ v.T)  # (B, B) L_ij = exp(s) cos(I_i, T_j)


def log_softmax_rows(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


ce_img = -np.mean(np.diag(log_softmax_rows(L)))  # which caption is image i's?
ce_txt = -np.mean(np.diag(log_softmax_rows(L.T)))  # which image is caption j's?
loss = (ce_img + ce_txt) / 2
print("L = exp(s) u vᵀ (rows: images, columns: captions)\n", L)
print(f"CE over images {ce_img:.4f}, over captions {ce_txt:.4f}, loss {loss:.4f}   (log B = {np.log(B):.4f})")

image_t, text_t, s_t = t64(image, True), t64(text, True), t64(s, True)
u_t, v_t = F.normalize(image_t, dim=-1), F.normalize(text_t, dim=-1)
for node in (u_t, v_t):
    node.retain_grad()
L_t = s_t.exp() * (u_t @ v_t.T)
L_t.retain_grad()
targets = torch.arange(B)
loss_t = (F.cross_entropy(L_t, targets) + F.cross_entropy(L_t.T, targets)) / 2
loss_t.backward()
check("loss by hand vs F.cross_entropy", loss, loss_t)
loss_pkg, cache = clip_loss_forward(image, text, s)
check("loss from clip_loss_forward", loss_pkg, loss_t)

# %% [markdown]
# ## 2. The gradient of the logits
#
# Each cross-entropy is a mean over its `B` rows, and the gradient of one row's CE with respect
# to its logits is `softmax − one-hot`. The image term sees `L`'s rows; the caption term sees
# `Lᵀ`'s rows — `L`'s columns — so its gradient is computed on `Lᵀ` and transposed back:
#
# $$dL = \tfrac12\Big(\frac{P^{\text{row}} - \mathbb 1}{B} + \Big(\frac{P^{\text{col}} - \mathbb 1}{B}\Big)^T\Big),
#   \quad P^{\text{row}} = \mathrm{softmax}_{\text{rows}}(L),\ P^{\text{col}} = \mathrm{softmax}_{\text{rows}}(L^T).$$
#
# The diagonal is negative (pull the partners together), everything else positive (push the
# others apart); each row and each column of either half sums to zero.

# %%
P_row = np.exp(log_softmax_rows(L))  # (B, B) each image's distribution over captions
P_col = np.exp(log_softmax_rows(L.T))  # (B, B) each caption's distribution over images
eye = np.eye(B)
dlogits = 0.5 * ((P_row - eye) / B + ((P_col - eye) / B).T)  # (B, B)
check("dL", dlogits, L_t.grad)
print("dL (negative on the diagonal only):\n", dlogits)
assert (np.diag(dlogits) < 0).all() and (dlogits[~eye.astype(bool)] > 0).all()
CHECKS.append(relative_error("rows of the image half sum to 0", ((P_row - eye) / B).sum(1), np.zeros(B)))

# %% [markdown]
# ## 3. Through the L2 normalisation: a gradient orthogonal to the embedding
#
# From `L = e^s u vᵀ`: `du = e^s dL v` and `dv = e^s dLᵀ u`. Then `u = I / r` with `r = |I|` and
# `∂r/∂I = u`:
#
# $$dI = \frac{1}{r}\big(du - u\,(u\cdot du)\big).$$
#
# The bracket removes the component of `du` along `u`. So `I · dI = 0` for every row: a step of
# gradient descent only *turns* `I`, it never lengthens or shortens it to first order — the
# loss depends on the direction alone. (Second order, each step lengthens `I` a little: the
# step is tangent to the sphere, so `|I + ε dI|² = |I|² + ε²|dI|²`.)

# %%
du = np.exp(s) * (dlogits @ v)  # (B, E)
dv = np.exp(s) * (dlogits.T @ u)  # (B, E)
check("du", du, u_t.grad)
check("dv", dv, v_t.grad)
dimage = (du - u * (u * du).sum(-1, keepdims=True)) / r_img  # (B, E)
dtext = (dv - v * (v * dv).sum(-1, keepdims=True)) / r_txt
check("dI", dimage, image_t.grad)
check("dT", dtext, text_t.grad)
_, c_norm = l2_normalize_forward(image)
check("dI from l2_normalize_backward", l2_normalize_backward(du, c_norm), image_t.grad)
dot = (image * dimage).sum(-1)  # (B,)
print("I_i · dI_i per row:", dot, " (|dI| per row:", np.linalg.norm(dimage, axis=1), ")")
assert np.abs(dot).max() < 1e-14 * np.abs(image).max() * np.abs(dimage).max() * E
naive = du / r_img  # forgets that r depends on I
CHECKS.append(relative_error("dI without the projection (wrong)", naive, image_t.grad.numpy()))
print(f"  dI without the projection: max rel err {CHECKS[-1].error:.2f} -- differs, as it should")
assert CHECKS[-1].error > 1e-3
CHECKS.pop()  # a deliberately wrong formula is not a check that passed

# %% [markdown]
# The picture: in two dimensions, an embedding `I`, the upstream `du / r`, and the gradient `dI`,
# which is `du / r` with its component along `I` removed — tangent to the circle of radius `|I|`.

# %%
I2 = np.array([1.6, 0.9])
u2, r2 = I2 / np.linalg.norm(I2), np.linalg.norm(I2)
du2 = 1.2 * u2 + 0.9 * np.array([-u2[1], u2[0]])  # an upstream gradient with a large part along I
d_i2 = (du2 - u2 * (u2 @ du2)) / r2
fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
ax = axes[0]
theta = np.linspace(0, 2 * np.pi, 200)
ax.plot(r2 * np.cos(theta), r2 * np.sin(theta), color="lightgray")
for vec, base, color, label, offset in (
    (I2, 0 * I2, "black", "I", (-0.5, 0.1)),
    (du2 / r2, I2, "tab:blue", "du / |I|", (0.1, 0.0)),
    (d_i2, I2, "tab:red", "dI: du / |I| minus its part along I", (-2.4, -0.45)),
):
    ax.annotate("", xy=base + vec, xytext=base, arrowprops=dict(arrowstyle="->", color=color, lw=2))
    ax.text(*(base + vec + np.array(offset)), label, color=color, fontsize=9)
ax.plot(*np.stack([I2 + d_i2, I2 + du2 / r2]).T, ":", color="gray")  # the removed component, along I
ax.set(aspect="equal", xlim=(-2.2, 2.8), ylim=(-2.2, 2.4), title="the gradient through u = I / |I| is tangent")
ax = axes[1]
im = ax.imshow(dlogits, cmap="RdBu_r", vmin=-np.abs(dlogits).max(), vmax=np.abs(dlogits).max())
for i in range(B):
    for j in range(B):
        ax.text(j, i, f"L={L[i, j]:.1f}\ndL={dlogits[i, j]:+.3f}", ha="center", va="center", fontsize=8)
ax.set(xlabel="caption j", ylabel="image i", title="the 4 x 4 batch: logits and their gradient")
fig.colorbar(im, ax=ax, fraction=0.046)
fig.tight_layout()
fig.savefig(OUT / "14_contrastive_gradient.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## 4. The temperature's gradient
#
# `L = e^s C` with `C = u vᵀ` the cosines, so `∂L_ij/∂s = L_ij` and
#
# $$\frac{\partial \ell}{\partial s} = \sum_{ij} dL_{ij}\, L_{ij}.$$
#
# Raising `s` sharpens every softmax: it helps while the partners are the most similar pairs and
# hurts once they are not. Below: the loss of this batch against `s`, with the tangent our
# gradient gives at CLIP's initial value. OpenCLIP clamps `s` to `[0, ln 100]` after each
# optimizer step; a clamp *inside* the forward would make `∂ℓ/∂s = 0` beyond the bound and
# leave `s` stuck there (`parity_tests/test_clip.py` shows both).

# %%
ds = (dlogits * L).sum()
check("d logit_scale", ds, s_t.grad)
d_img_pkg, d_txt_pkg, ds_pkg = clip_loss_backward(1.0, cache)
check("d logit_scale from clip_loss_backward", ds_pkg, s_t.grad)
check("dI from clip_loss_backward", d_img_pkg, image_t.grad)


def batch_loss(scale):
    return float(clip_loss_forward(image, text, np.asarray(scale))[0])


grid = np.linspace(-1.0, 6.0, 141)
curve = np.array([batch_loss(g) for g in grid])
h = 1e-5
fd = (batch_loss(s + h) - batch_loss(s - h)) / (2 * h)
CHECKS.append(relative_error("d logit_scale vs central differences", np.asarray(ds), np.asarray(fd)))
assert CHECKS[-1].error < tolerance("finite_differences", np.float64)
print(f"  d logit_scale = {ds:.6f}; central differences {fd:.6f}; best s on this batch {grid[curve.argmin()]:.2f}")
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(grid, curve, label="loss of the 4 x 4 batch")
ax.plot(grid, loss + ds * (grid - s), "--", color="tab:red", label=f"tangent at s = ln(1/0.07), slope {ds:.3f}")
ax.axvspan(np.log(100), grid[-1], color="gray", alpha=0.15, label="beyond OpenCLIP's clamp, ln 100")
ax.set(xlabel="logit_scale s", ylabel="loss", ylim=(0, curve.max() * 1.1), title="the temperature's gradient")
ax.legend(fontsize=8)
fig.savefig(OUT / "14_temperature.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# ## 5. One loss, two encoders
#
# A small CLIP (2 layers each side, 8 × 8 one-channel images, a 20-token vocabulary whose
# largest id, 19, is the end-of-text token). The loss's gradient reaches the logits, splits
# into `du` and `dv`, and from there each half goes down its own tower: through its L2
# normalisation, its bias-free projection, its pooled state (the class token after
# `post_norm`; the end-of-text position after `final_norm`) and its blocks. The towers share
# no parameter; `logit_scale` is the only one that sees both.
#
# The twin runs the same weights with `retain_grad()` at each boundary.

# %%
config = CLIPConfig(
    text=CLIPTextConfig(vocab_size=20, max_len=7, d_model=16, n_heads=2, n_layers=2, d_ff=32),
    vision=CLIPVisionConfig(image_size=8, patch_size=4, num_channels=1, d_model=12, n_heads=3, n_layers=2, d_ff=24),
    projection_dim=8,
)
model = CLIPModel(config, np.float64, np.random.default_rng(1))
Bm = 5
ids = rng.integers(1, 19, size=(Bm, 7))
ends = np.array([6, 3, 4, 6, 2])  # each caption's end-of-text position; padding (id 0) after it
ids[np.arange(Bm), ends] = 19
for b, e in enumerate(ends):
    ids[b, e + 1 :] = 0
pixels = rng.random((Bm, 1, 8, 8))
out, cache = model.forward(ids, pixels, return_loss=True)
model.zero_grad()
dpixels = model.backward(cache, dloss=1.0)

twin = twin_of(model)
text_hidden, text_pooled = twin.text_model(torch.as_tensor(ids))
pixels_t = t64(pixels, True)
image_hidden, image_pooled = twin.vision_model(pixels_t)
text_features = twin.text_projection(text_pooled)
image_features = twin.visual_projection(image_pooled)
nodes = dict(text_pooled=text_pooled, image_pooled=image_pooled, text_features=text_features,
             image_features=image_features)  # fmt: skip
for node in nodes.values():
    node.retain_grad()
logits_t = twin.logit_scale.exp() * (F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T)
logits_t.retain_grad()
loss_twin = (F.cross_entropy(logits_t, torch.arange(Bm)) + F.cross_entropy(logits_t.T, torch.arange(Bm))) / 2
loss_twin.backward()
check("loss of the small CLIP", out.loss, loss_twin)
check("pooled on the end-of-text token", out.text_model_output.pooler_output, text_pooled)

# the same intermediates, by hand from the NumPy model's caches
c = cache
G = 0.5 * ((np.exp(log_softmax_rows(out.logits_per_image)) - np.eye(Bm)) / Bm
           + ((np.exp(log_softmax_rows(out.logits_per_image.T)) - np.eye(Bm)) / Bm).T)  # fmt: skip
check("dL (the meeting point)", G, logits_t.grad)
u_m, v_m, scale = c.logits.image_norm.y, c.logits.text_norm.y, c.logits.scale
d_image_features = l2_normalize_backward(scale * (G @ v_m), c.logits.image_norm)
d_text_features = l2_normalize_backward(scale * (G.T @ u_m), c.logits.text_norm)
check("d image_features", d_image_features, image_features.grad)
check("d text_features", d_text_features, text_features.grad)
check("d image pooled = d image_features · W_visual", d_image_features @ model.visual_projection.weight,
      image_pooled.grad)  # fmt: skip
check("d text pooled = d text_features · W_text", d_text_features @ model.text_projection.weight, text_pooled.grad)
print("  both features' gradients are orthogonal to them:",
      float(np.abs((c.visual_projection.x @ model.visual_projection.weight.T * d_image_features).sum(-1)).max()),
      float(np.abs((c.text_projection.x @ model.text_projection.weight.T * d_text_features).sum(-1)).max()))  # fmt: skip
check("d pixels (through the whole image tower)", dpixels, pixels_t.grad)

grads = dict(model.named_grads())
towers = {"text_model": [], "vision_model": [], "other": []}
for name, p in twin.named_parameters():
    CHECKS.append(relative_error(f"d{name}", grads[name], p.grad.numpy()))
    towers[name.split(".")[0] if name.split(".")[0] in towers else "other"].append(name)
worst = max(CHECKS[-len(grads) :], key=lambda cmp: cmp.error)
if not worst.error <= tolerance("cpu", np.float64):
    raise AssertionError(f"MISMATCH {worst.describe()}")
print(f"  all {len(grads)} parameter gradients vs the twin ({len(towers['text_model'])} text, "
      f"{len(towers['vision_model'])} image, {towers['other']}): worst {worst.name}, max rel err {worst.error:.1e}")  # fmt: skip

# %% [markdown]
# Where does each tower's gradient come from? Cut the loss's gradient into the part that reaches
# the logits through `du` (the image side) and through `dv` (the text side): the image tower's
# parameters change only with the first, the text tower's only with the second. Running the
# backward with the text half of the upstream zeroed leaves every text-tower gradient at exactly
# zero and every image-tower gradient as it was — the towers meet only at `L`.

# %%
model.zero_grad()
model.backward(cache, dloss=1.0)
full = {k: v.copy() for k, v in model.named_grads()}
model.zero_grad()
# the image embeddings' gradient alone: d image_embeds = e^s dL v  (the text side receives nothing)
model.backward(cache, d_image_embeds=scale * (G @ v_m))
image_only = dict(model.named_grads())
for name in towers["vision_model"] + ["visual_projection.weight"]:
    assert np.allclose(image_only[name], full[name], rtol=1e-10, atol=1e-14), name
assert all(not image_only[n].any() for n in towers["text_model"] + ["text_projection.weight", "logit_scale"])
print("  with only the image half of dL: every image-tower gradient unchanged, every text-tower gradient 0")


def group_norm(prefix):
    """The gradient norm of every parameter whose name starts with ``prefix``, taken together."""
    return float(np.sqrt(sum((full[n] ** 2).sum() for n in full if n.startswith(prefix))))


groups = {
    "image": ["vision_model.patch_embed", "vision_model.class_embedding", "vision_model.pos_embed",
              "vision_model.pre_norm", "vision_model.layers.0", "vision_model.layers.1", "vision_model.post_norm",
              "visual_projection"],
    "text": ["text_model.tok_embed", "text_model.pos_embed", "text_model.layers.0", "text_model.layers.1",
             "text_model.final_norm", "text_projection"],
}  # fmt: skip
fig, ax = plt.subplots(figsize=(8, 5))
labels = groups["image"] + ["logit_scale"] + groups["text"]
values = [group_norm(p) for p in labels]
colors = ["tab:blue"] * len(groups["image"]) + ["tab:gray"] + ["tab:orange"] * len(groups["text"])
ax.barh(range(len(labels)), values, color=colors)
ax.set_yticks(range(len(labels)), labels, fontsize=8)
ax.invert_yaxis()
ax.set(xscale="log", xlabel="gradient norm",
       title="one contrastive loss, two towers (blue: image, orange: text; they meet at logit_scale)")  # fmt: skip
fig.savefig(OUT / "14_two_towers.png", dpi=110, bbox_inches="tight")
plt.close(fig)

# %% [markdown]
# **Trained.** `python -m numpy_transformer train --task digit-captions --model clip` trains this
# pair on scikit-learn's digits and generated captions ("a handwritten seven", "the digit 7" …);
# `python -m numpy_transformer zero-shot RUN --index 0` then classifies a held-out digit by the
# never-seen prompt "a photo of the digit k". The README's CLIP section has the figures.
#
# ## Summary
#
# * CLIP's loss is two cross-entropies over one logit matrix, rows and columns; its gradient is
#   `½((P_row − 1)/B + ((P_col − 1)/B)ᵀ)`: negative on the diagonal, positive off it.
# * Through `u = I / |I|` the gradient loses its component along `I`: `I · dI = 0`.
# * `∂ℓ/∂s = Σ dL ⊙ L`; clamp `s` after the step, not inside the forward.
# * The two encoders share nothing but `logit_scale`; each receives its half of `dL`.

# %%
worst = max(CHECKS, key=lambda cmp: cmp.error)
print(f"\n{len(CHECKS)} checks; the worst: {worst.name}, max rel err {worst.error:.1e}")
print(f"wrote 14_contrastive_gradient.png, 14_temperature.png, 14_two_towers.png to {OUT}")
print(f"total {time.perf_counter() - START:.1f} s")
