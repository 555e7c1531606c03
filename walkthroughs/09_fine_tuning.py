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
# # 09 · Fine-tuning a pretrained encoder: frozen, gradual, full
#
# all-MiniLM-L6-v2 was trained to produce sentence embeddings. Here it gets a new job,
# telling positive from negative reviews, with a new **head** on top: the pooler
# `tanh(W [CLS] + b)` and a linear classifier (`BertForSequenceClassification`, parameters
# `bert.*` and `classifier.*`). How much of the pretrained encoder should move?
#
# * **frozen** — none of it: only the head trains (a probe of what the encoder already knows);
# * **gradual** — the head alone first, then the top layer, then one more layer every few
#   updates, the embeddings last (ULMFiT's gradual unfreezing);
# * **full** — everything from the first update.
#
# Every strategy uses AdamW with **layer-wise learning-rate decay**: the top encoder layer gets
# `lr`, the layer `k` below it `lr · decay^k`, the embeddings `lr · decay^L`, the new head its
# own larger `head_lr` — one optimizer parameter group each.
#
# This lesson:
#
# 1. looks at what **freezing** does to the gradients, stage by stage of the gradual schedule:
#    exact zeros, and a backward pass that stops early; the twin's `.grad` is `None` there;
# 2. builds the layer-wise parameter groups and checks their rates;
# 3. trains the three strategies (a reduced setting, so that the lesson runs in about a minute)
#    and compares their loss curves and validation accuracy;
# 4. runs a few updates of the NumPy model and the PyTorch twin (`torch.optim.AdamW`, autograd)
#    side by side in float64, and compares every loss, weight and Adam moment.
#
# Shape legend: `B` sentences in a batch, `S` tokens, `C = 384` hidden size, `K = 2` classes.

# %%
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small matrices: one BLAS thread is fastest

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from numpy_transformer.applications.datasets import best_single_word_accuracy, sentiment_dataset
from numpy_transformer.applications.finetune import (
    STRATEGIES,
    FineTuneConfig,
    NumpyFineTuner,
    apply_unfreeze_schedule,
    classifier_from_pretrained,
    group_grad_norms,
    layer_groups,
    make_batch,
    run_fine_tuning,
)
from numpy_transformer.applications.pretrained import load_minilm
from numpy_transformer.functional import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.testing import relative_error, report_match, tolerance
from torch_transformer.bridge import state_dict_to_numpy, twin_of
from torch_transformer.finetune import TorchFineTuner

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
START = time.perf_counter()

# %% [markdown]
# ## 0. The data and the model
#
# `sentiment_dataset()` generates 400 review sentences (seeded; nothing is downloaded), half
# positive, split 300 / 100. Two thirds of them carry a negation or a contrast — "the soup was
# not bland at all." is positive, "i expected the movie to be brilliant, but it was dull."
# negative — so no single word decides the label: the best one-word rule is barely better than a
# coin. For speed this lesson trains on 128 of the training sentences and validates on 48.

# %%
full_data = sentiment_dataset()
data = full_data.subset(128, 48)
for sentence, label in list(zip(data.train_sentences, data.train_labels, strict=True))[:5]:
    print(f"  {data.label_names[label]:>8}: {sentence}")
accuracy, word = best_single_word_accuracy(full_data.train_sentences, full_data.train_labels)
print(f"best one-word rule on the 300 training sentences: '{word}', accuracy {accuracy:.3f}")
assert accuracy < 0.7

pretrained = load_minilm(np.float32)
encode = pretrained.tokenize  # sentences -> (input_ids, attention_mask, token_type_ids), (B, S) int64
L = pretrained.config.n_layers
print(pretrained.tokens(data.train_sentences[0]))

# %% [markdown]
# ## 1. What freezing does to the gradients
#
# `module.requires_grad_(False)` freezes a module and everything in it. Its backward still
# passes the gradient *down* (a layer below may be training), but adds nothing to its own
# `grads`; and below the lowest module that still trains there is nothing left to compute, so
# `BertModel.backward` stops there. The optimizer reads each parameter's owning module and skips
# frozen ones — no update, no weight decay, no Adam step counted.
#
# `apply_unfreeze_schedule(model, update, cfg)` sets the flags for an update (numbered from 1).
# With `unfreeze_every = 1` the gradual schedule visits one stage per update: the head alone,
# then `layers.5`, `layers.4`, …, `layers.0`, and finally the embeddings. For one batch, the
# gradient norm of every parameter group at every stage:

# %%
batch = make_batch(encode, data.train_sentences[:8], data.train_labels[:8])
model = classifier_from_pretrained(pretrained.model, 2, np.random.default_rng(0))
stage_cfg = FineTuneConfig(strategy="gradual", unfreeze_every=1)
twin = twin_of(model)  # float32, the same weights
names = [g.name for g in layer_groups(L, 1.0, 1.0, 1.0)]  # embeddings, layers.0 .. layers.5, head
norms = np.zeros((L + 2, len(names)))

model.eval()  # no dropout here: this section is about gradients only
twin.eval()
for stage in range(L + 2):
    frozen = apply_unfreeze_schedule(model, stage + 1, stage_cfg)
    apply_unfreeze_schedule(twin, stage + 1, stage_cfg)
    logits, cache = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)  # (B, K)
    loss, loss_cache = cross_entropy_forward(logits, batch.labels)
    model.zero_grad()
    t0 = time.perf_counter()
    model.backward(cross_entropy_backward(1.0, loss_cache), cache)
    seconds = time.perf_counter() - t0
    norms[stage] = list(group_grad_norms(model).values())
    twin.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(
        twin(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))),
        torch.from_numpy(batch.labels),
    ).backward()
    grads = dict(model.named_grads())
    for name, p in twin.named_parameters():
        is_frozen = name.startswith(tuple(f + "." for f in frozen))
        if is_frozen:
            assert p.grad is None, f"twin {name}: frozen, yet it has a gradient"
            assert not grads[name].any(), f"{name}: frozen, yet its NumPy gradient is not exactly zero"
        else:
            worst = relative_error(name, grads[name], p.grad.numpy())
            assert worst.error <= tolerance("cpu", np.float32), f"MISMATCH {worst.describe()}"
    trained = [n for n, v in zip(names, norms[stage], strict=True) if v > 0]
    print(f"  stage {stage}: backward {seconds * 1e3:5.0f} ms, non-zero gradients in {trained}")
print("  every frozen gradient exactly 0 (NumPy) / None (twin); every other one matches the twin in float32")

# %% [markdown]
# Each stage adds one group to the non-zero gradients, top down, and the backward takes longer
# as it reaches further down: at stage 0 it runs through the head only, because below the
# lowest trainable module there is nothing to compute. A group that trains has the same
# gradient at every stage: freezing a layer changes nothing in the forward pass, it only stops
# that layer's own gradient from being accumulated. The same numbers as a picture:

# %%
fig, ax = plt.subplots(figsize=(8.5, 4.2))
shown = np.where(norms > 0, norms, np.nan)
im = ax.imshow(np.log10(shown), cmap="viridis", aspect="auto")
for (i, j), v in np.ndenumerate(norms):
    ax.text(j, i, "frozen\n0" if v == 0 else f"{v:.2g}", ha="center", va="center", fontsize=7,
            color="0.4" if v == 0 else "white")  # fmt: skip
ax.set_xticks(range(len(names)), names, rotation=30)
ax.set_yticks(range(L + 2), ["head only"] + [f"+ layers.{L - k}" for k in range(1, L + 1)] + ["+ embeddings"])
ax.set_xlabel("parameter group (bottom of the network on the left)")
ax.set_ylabel("gradual stage")
fig.colorbar(im, ax=ax, label="log10 gradient norm")
ax.set_title("Gradient norm per layer at each stage of gradual unfreezing (MiniLM, one batch)")
fig.tight_layout()
fig.savefig(OUT / "09_gradient_norms.png", dpi=110)
plt.close(fig)

# %% [markdown]
# ## 2. Layer-wise learning rates as parameter groups
#
# `layerwise_param_groups(model, lr, decay, head_lr)` gives `torch.optim`-style groups,
# `[{"params": [(name, param, grad, owner), ...], "lr": ...}, ...]`, bottom to top. The
# owner in each item is what lets the optimizer skip frozen parameters. The twin's
# `TorchFineTuner` builds `torch.optim.AdamW` from the same `layer_groups` list, so the groups
# have the same members and the same rates.

# %%
cfg = FineTuneConfig(strategy="gradual", lr=2e-4, head_lr=3e-3, layer_decay=0.8, unfreeze_every=2, epochs=3)
trainer = NumpyFineTuner(model, cfg, np.random.default_rng(0))
for group, spec in zip(trainer.optimizer.param_groups, layer_groups(L, cfg.lr, cfg.layer_decay, cfg.head_lr),
                       strict=True):  # fmt: skip
    n = sum(p.size for name, p in trainer.optimizer.named_parameters() if name in group["params"])
    depth = "" if spec.depth is None else f"lr x {cfg.layer_decay}^{spec.depth}"
    print(f"  {spec.name:<11} {n:>11,} parameters  lr {group['lr']:.3e}  {depth}")
    assert group["lr"] == (cfg.head_lr if spec.depth is None else cfg.lr * cfg.layer_decay**spec.depth)

# %% [markdown]
# ## 3. The three strategies
#
# Same data, same batches (one seeded order), same initial head, same rates; 3 epochs of batch
# 16 = 24 updates. The rates are larger than the `finetune` command's defaults (encoder 2e-4
# instead of 5e-5) because this run is shorter. For gradual, one more module every 2 updates:
# the head alone for updates 1–2, `layers.5` joins at 3, …, the embeddings at 15.

# %%
histories = {}
for strategy in STRATEGIES:
    run_cfg = FineTuneConfig(strategy=strategy, lr=2e-4, head_lr=3e-3, unfreeze_every=2, epochs=3)
    model_s = classifier_from_pretrained(pretrained.model, 2, np.random.default_rng([0, 3]))
    trainer_s = NumpyFineTuner(model_s, run_cfg, np.random.default_rng([0, 2]))
    histories[strategy] = run_fine_tuning([trainer_s], data, encode, run_cfg)
    h = histories[strategy]
    print(
        f"  {strategy:<8} val accuracy {h.before['numpy']['val_accuracy']:.3f} -> {h.after['numpy']['val_accuracy']:.3f}"
        f", final loss {np.mean(h.losses['numpy'][-5:]):.3f}, {h.seconds:.1f} s"
    )
assert len({h.before["numpy"]["val_accuracy"] for h in histories.values()}) == 1  # the same start

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for strategy, h in histories.items():
    ax.plot(range(1, len(h.losses["numpy"]) + 1), h.losses["numpy"], marker=".", label=strategy)
gradual = histories["gradual"]
for u in range(2, len(gradual.frozen)):
    if len(gradual.frozen[u]) < len(gradual.frozen[u - 1]):
        ax.axvline(u + 1, color="0.85", lw=0.8, zorder=0)
ax.set_xlabel("update (grey lines: gradual unfreezes one more module)")
ax.set_ylabel("training loss (one batch)")
ax.set_title("Fine-tuning MiniLM: frozen / gradual / full (128 sentences, 24 updates)")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "09_loss_curves.png", dpi=110)
plt.close(fig)

# %% [markdown]
# The frozen encoder barely helps: its [CLS] state was never trained to carry a sentence's
# sentiment (all-MiniLM-L6-v2 mean-pools instead), and a probe on it cannot undo a negation.
# Letting the encoder move is what makes the difference; with the full data and more updates
# (`python -m numpy_transformer finetune`, table in the README) full and gradual fine-tuning
# reach well above 90 %.
#
# ## 4. The twin, update by update
#
# Three updates of the gradual schedule with one stage per update — the head, then
# `layers.5`, then `layers.4` — in float64, dropout on (the twin replays the NumPy model's
# masks). The NumPy trainer uses our AdamW, the twin `torch.optim.AdamW`; a frozen parameter
# has no update in ours because its owner is frozen, and none in torch because its `.grad` is
# `None`. After the last update every weight and both Adam moments are compared, and each
# parameter's Adam step count, which starts at the update its layer was unfrozen.
#
# (`k_proj.bias` is left out: its true gradient is exactly zero, since a key bias shifts
# every score of a query by one constant, and Adam turns each backend's rounding noise into
# different tiny steps.)

# %%
pretrained64 = load_minilm(np.float64)
model64 = classifier_from_pretrained(pretrained64.model, 2, np.random.default_rng(0))
twin64 = twin_of(model64)
cfg64 = FineTuneConfig(strategy="gradual", unfreeze_every=1, lr=5e-5, head_lr=2e-3)
ours, theirs = NumpyFineTuner(model64, cfg64, np.random.default_rng(0)), TorchFineTuner(twin64, cfg64)
for t in range(3):
    b = make_batch(encode, data.train_sentences[8 * t : 8 * t + 8], data.train_labels[8 * t : 8 * t + 8])
    a_step = ours.train_step(b)
    t_step = theirs.train_step(b, dropout_masks=a_step.dropout_masks)
    report_match(f"update {t + 1} loss", np.float64(a_step.loss), np.float64(t_step.loss))
final = state_dict_to_numpy(twin64.state_dict())
tparams = dict(twin64.named_parameters())
worst = max(
    (relative_error(n, p, final[n]) for n, p in model64.named_parameters() if not n.endswith("k_proj.bias")),
    key=lambda c: c.error,
)
assert worst.error <= tolerance("cpu", np.float64), f"MISMATCH {worst.describe()}"
print(f"  all weights close, worst {worst.name} ({worst.error:.1e})")
for buf in ("exp_avg", "exp_avg_sq"):
    for name, p in tparams.items():
        if p in theirs.optimizer.state and not name.endswith("k_proj.bias"):
            cmp = relative_error(name, ours.optimizer.state[buf][name], theirs.optimizer.state[p][buf].numpy())
            assert cmp.error <= tolerance("cpu", np.float64), f"MISMATCH {buf} {cmp.describe()}"
steps = {n: ours.optimizer.param_steps[n] for n in ("classifier.weight", "bert.layers.5.norm1.weight",
                                                     "bert.layers.4.norm1.weight", "bert.layers.3.norm1.weight")}  # fmt: skip
print(f"  Adam steps per parameter: {steps}")
assert list(steps.values()) == [3, 2, 1, 0]
for name, count in steps.items():
    assert (
        int(theirs.optimizer.state[tparams[name]]["step"]) == count
        if count
        else tparams[name] not in theirs.optimizer.state
    )
print("  Adam moments and step counts match the twin")

# %%
print(f"walkthrough 09 ran in {time.perf_counter() - START:.0f} s")
