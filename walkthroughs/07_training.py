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
# # 07 · Training: one step by hand, then the loop, warm-up and clipping
#
# The lessons so far derived backward passes. Training puts them to work: at every step
#
# $$\text{forward} \;\to\; \text{loss} \;\to\; \text{backward} \;\to\; \text{clip } \lVert g\rVert
#   \;\to\; \text{learning rate } \gamma_t \;\to\; \text{Adam update}.$$
#
# This lesson:
#
# 1. writes **one training step** out with the package's pieces (`Transformer.forward`,
#    `cross_entropy_forward` with label smoothing and `ignore_index=PAD`, `Transformer.backward`,
#    `clip_grad_norm`, the schedule, `Adam`) and checks every stage against the PyTorch twin
#    stepped by PyTorch's own `F.cross_entropy`, `clip_grad_norm_` and `torch.optim.Adam`;
#    then checks that `NumpyTrainer.train_step` is exactly those lines;
# 2. trains the **reverse** task with `fit`, the NumPy trainer and the twin's trainer side by
#    side from the same weights (compare mode), then the NumPy model on its own to the end;
# 3. looks at what the trained model attends to while it decodes;
# 4. runs short trainings **without warm-up, without clipping, and with a too-large learning
#    rate**, and reads what changes in the loss and in the gradient norm.
#
# Shape legend: `B` batch, `S` source length, `T` target length, `C` d_model, `H` heads,
# `V` vocabulary. Sections 1–3 are float64 (the dtype for checking); section 4 is float32
# (the dtype for speed). A check prints `exact`, `close (max rel err …)`, or stops with an
# `AssertionError`.

# %%
import os

# The matrices here are small (at most 32 x 64 per sequence). BLAS worker threads cost more than
# they save at that size. This has to happen before NumPy is imported; delete the line to use
# every core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer import Transformer
from numpy_transformer.applications.plots import plot_attention, plot_loss_curves, smooth
from numpy_transformer.applications.step_cost import ProductClock, transformer_products
from numpy_transformer.functional import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.inference.search import greedy_decode
from numpy_transformer.optim import Adam, clip_grad_norm
from numpy_transformer.testing import relative_error, report_match, tolerance
from numpy_transformer.training import History, NumpyTrainer, TrainConfig, fit, keep_freed_memory
from numpy_transformer.training.tasks import BOS, EOS, N_SPECIAL, PAD, ToyDataset
from torch_transformer.bridge import state_dict_to_numpy, twin_of
from torch_transformer.training import TorchTrainer

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)

np.set_printoptions(precision=4, suppress=True, linewidth=110)
torch.set_num_threads(1)  # as for NumPy: one thread is faster for matrices this small
# Every step allocates and frees the same arrays. By default glibc hands the large ones back to the
# kernel, and the next step page-faults them in again (about 8 400 faults in a float32 step of
# `benchmark`, a quarter of its time). This keeps them in the heap; no number changes.
keep_freed_memory()
START = time.perf_counter()


def is_key_bias(name):
    """``*.k_proj.bias``: its true gradient is exactly zero (see section 1.3)."""
    return name.endswith("k_proj.bias")


def report_all(label, ours, theirs, skip=is_key_bias):
    """Compare two dicts of arrays keyed alike, in one line: how many, and the worst of them."""
    comparisons = [relative_error(name, a, theirs[name]) for name, a in ours.items() if not skip(name)]
    worst = max(comparisons, key=lambda c: c.error)
    tol = tolerance("cpu", np.float64)
    if not worst.error <= tol:
        raise AssertionError(f"MISMATCH {worst.describe()} exceeds tolerance {tol:.0e}")
    print(f"  {label}: all {len(comparisons)} close, worst {worst.name} ({worst.error:.1e})")


def recorder(rows):
    """An ``on_step`` callback for ``fit``: appends the first trainer's (loss, grad_norm, lr) to ``rows``."""

    def on_step(step, results):
        rows.append((results[0].loss, results[0].grad_norm, results[0].lr))

    return on_step


def token_names(ids):
    """Symbols as 0 .. n_symbols - 1, specials by name."""
    names = {PAD: "PAD", BOS: "BOS", EOS: "EOS"}
    return [names.get(int(t), str(int(t) - N_SPECIAL)) for t in ids]


# %% [markdown]
# ## 1. One training step, written out
#
# ### 1.1 The task, the model, one batch
#
# The **reverse** task: the source is a sequence of 2 to 6 symbols out of 6, the target the
# same symbols in reverse order. Token ids 0, 1, 2 are `PAD`, `BOS`, `EOS` and the symbols
# come after them, so `V = 9`. A `Batch` holds three `(B, L)` arrays: `src` = symbols + `EOS`;
# `tgt_in` = `BOS` + target, what the decoder reads (teacher forcing); `tgt_out` = target + `EOS`,
# what it must predict at each position. Rows are right-padded with `PAD`.
#
# The model is small on purpose (2 + 2 pre-LN layers, `C = 32`, 2 heads, feed-forward width
# 64, no dropout) so that the whole lesson runs in well under a minute on one CPU thread.
# `TrainConfig` holds everything a run needs. `peak_lr = 1e-2` was picked by trying a few rates
# while this lesson was written (500-step runs, not repeated here: `5e-3` decoded about 80 % of
# the validation sequences exactly, `1e-2` about 96 %, `2e-2` about 60 %).

# %%
cfg = TrainConfig(
    task="reverse",
    n_symbols=6,
    min_len=2,
    max_len=6,
    n_train=2000,
    n_val=200,
    d_model=32,
    n_heads=2,
    n_layers=2,
    d_ff=64,
    dropout=0.0,
    norm_first=True,
    batch_size=32,
    steps=600,
    warmup_steps=50,
    peak_lr=1e-2,
    label_smoothing=0.1,
    clip_norm=1.0,
)
dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
model = Transformer(cfg.model_config(), dtype=np.float64, rng=np.random.default_rng(cfg.seed))
twin = twin_of(model)  # torch_transformer.transformer.Transformer, the same weights, float64
n_params = sum(p.size for p in model.parameters())
print(f"vocabulary V = {cfg.task_spec().vocab_size}, {len(model.parameters())} parameter arrays, {n_params} numbers")

batch = next(dataset.train_batches(cfg.batch_size, np.random.default_rng(0)))
print(f"one batch: src {batch.src.shape}, tgt_in {batch.tgt_in.shape}, tgt_out {batch.tgt_out.shape}")
for name in ("src", "tgt_in", "tgt_out"):
    print(f"  {name:<8}", " ".join(f"{t:>3}" for t in token_names(getattr(batch, name)[0])))
n_tokens = int((batch.tgt_out != PAD).sum())
print(f"  {n_tokens} target tokens that count, {batch.tgt_out.size - n_tokens} PAD positions that do not")

# %% [markdown]
# ### 1.2 Forward and loss
#
# `Transformer.forward(src, tgt_in)` returns logits `(B, T, V)` and a cache holding what the
# backward needs. The loss is the mean over the `N` non-`PAD` target positions of the
# label-smoothed cross-entropy (walkthrough 01): with $\varepsilon$ = `label_smoothing` and the
# target distribution $q = (1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon / V$,
#
# $$\mathcal L = \frac1N \sum_{(b,t):\,y_{bt}\ne\text{PAD}} -\sum_v q_v \log p_{btv},
#   \qquad \frac{\partial \mathcal L}{\partial z_{btv}} = \frac{p_{btv} - q_v}{N}
#   \;\;(0 \text{ at PAD positions}).$$
#
# At initialisation the predictions are close to uniform, so the loss starts near $\log V$.
# On the twin, `F.cross_entropy` wants the classes on dimension 1, hence the transpose.

# %%
model.train()
logits, cache = model.forward(batch.src, batch.tgt_in)  # (B, T, V)
loss, loss_cache = cross_entropy_forward(logits, batch.tgt_out, ignore_index=PAD, label_smoothing=cfg.label_smoothing)

src_t, tgt_in_t, tgt_out_t = (torch.from_numpy(a) for a in (batch.src, batch.tgt_in, batch.tgt_out))
logits_t = twin(src_t, tgt_in_t)  # (B, T, V)
logits_t.retain_grad()
loss_t = F.cross_entropy(
    logits_t.transpose(1, 2), tgt_out_t, ignore_index=PAD, label_smoothing=cfg.label_smoothing
)  # logits as (B, V, T)
report_match("logits", logits, logits_t)
report_match("loss", loss, loss_t)
print(f"  loss {float(loss):.4f}, log V = {np.log(cfg.task_spec().vocab_size):.4f}")

# %% [markdown]
# ### 1.3 Backward
#
# `cross_entropy_backward(1.0, cache)` gives $\partial\mathcal L / \partial z$, and
# `Transformer.backward` pushes it through the whole network, **adding** each parameter's gradient
# into `module.grads` (so gradients are zeroed first). On the twin, `loss.backward()`.
#
# One parameter needs a word: the bias of every key projection, `*.k_proj.bias`. Adding a vector
# $b$ to every key adds $q_i \cdot b$ to every score of query $i$: the same number along the
# whole row, which softmax ignores. The loss does not depend on $b$, so its true gradient is
# **exactly zero**. The backward computes it as $\sum_i q_i \sum_j dS_{ij}$, and each row of the
# softmax backward $dS$ sums to zero only up to rounding, so both halves return rounding noise,
# many orders of magnitude below every other gradient and different in each (printed below). It
# passes the comparison (noise against a scale of 1), but after Adam steps it will not
# (section 1.5).

# %%
model.zero_grad()
dlogits = cross_entropy_backward(1.0, loss_cache)  # (B, T, V)
model.backward(dlogits, cache)
loss_t.backward()
report_match("dlogits", dlogits, logits_t.grad)

grads = {name: g.copy() for name, g in model.named_grads()}  # before clipping
twin_grads = {name: p.grad.numpy().copy() for name, p in twin.named_parameters()}
for name in (
    "out_proj.weight",
    "decoder.norm.weight",
    "decoder.layers.1.cross_attn.q_proj.weight",
    "decoder.layers.0.ff.linear1.bias",
    "encoder.layers.0.self_attn.v_proj.weight",
    "src_embed.weight",
):
    report_match(name, grads[name], twin_grads[name])
report_all("every other parameter gradient", grads, twin_grads)
for name in [n for n in grads if is_key_bias(n)]:
    print(f"  {name:<44} max |grad| numpy {np.abs(grads[name]).max():.0e}, torch {np.abs(twin_grads[name]).max():.0e}")

# %% [markdown]
# ### 1.4 Clipping and the learning rate
#
# `clip_grad_norm(model, max_norm)` computes **one** norm over every gradient together and
# scales them all by the same factor when it is too large (the rule of
# `torch.nn.utils.clip_grad_norm_`, which also returns the norm before clipping):
#
# $$N = \sqrt{\textstyle\sum_i \lVert g_i\rVert^2}, \qquad
#   c = \min\!\Big(\frac{\text{max\_norm}}{N + 10^{-6}},\, 1\Big), \qquad g_i \leftarrow c\,g_i .$$
#
# The direction of the whole gradient is kept; only its length is capped. Here $N$ is below
# `clip_norm = 1.0`, so $c = 1$ and the gradients are left bit for bit as they were. To see the
# rule at work, copies of both halves' gradients are also clipped to half their norm.

# %%
norm = clip_grad_norm(model, cfg.clip_norm)  # in place; returns N before clipping
norm_t = torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.clip_norm)
report_match("global gradient norm N", np.asarray(norm), norm_t)
print(
    f"  N = {norm:.4f} < clip_norm = {cfg.clip_norm}: gradients unchanged:",
    all(np.array_equal(g, grads[n]) for n, g in model.named_grads()),
)

half = {name: g.copy() for name, g in grads.items()}
clip_grad_norm(half, 0.5 * norm)
copies = []
for p in twin.parameters():
    copy = torch.nn.Parameter(p.detach().clone())
    copy.grad = p.grad.clone()
    copies.append(copy)
torch.nn.utils.clip_grad_norm_(copies, 0.5 * norm)
report_all(
    "gradients clipped to N/2, against clip_grad_norm_",
    half,
    {name: c.grad.numpy() for (name, _), c in zip(twin.named_parameters(), copies, strict=True)},
)
c = 0.5 * norm / (norm + 1e-6)
deviation = max(np.abs(half[name] - c * grads[name]).max() for name in grads)
new_norm = np.sqrt(sum((g**2).sum() for g in half.values()))
print(f"  every clipped gradient is c * g with one c = {c:.6f} (largest deviation {deviation:.0e})")
print(f"  new norm {new_norm:.8f}, N/2 = {0.5 * norm:.8f}: a hair below, because of the 1e-6")

# %% [markdown]
# The learning rate of update $t$ (numbered from 1) comes from the schedule, a pure function
# of $t$: here `linear_warmup_cosine`, a linear rise to `peak_lr` over `warmup_steps` updates,
# then half a cosine down to 0 at `steps`. Update 1 gets `peak_lr / warmup_steps`.

# %%
for t in (1, 2, 25, 50, 51, 300, 550, 600):
    print(f"  update {t:>3}: lr = {cfg.learning_rate(t):.6f}")
lr = cfg.learning_rate(1)

# %% [markdown]
# ### 1.5 The Adam update
#
# Adam keeps two running averages per parameter, $m$ of the gradient and $v$ of its square
# (`betas` = (0.9, 0.98) as in the Transformer paper), corrects their start-up bias, and moves
# each number by
#
# $$\theta \leftarrow \theta - \gamma_t\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon},\qquad
#   \hat m_t = \frac{m_t}{1-\beta_1^t},\; \hat v_t = \frac{v_t}{1-\beta_2^t}.$$
#
# The update is a *ratio*: scaling every gradient by the same factor leaves it (almost)
# unchanged. At $t = 1$, $\hat m_1 = g$ and $\hat v_1 = g^2$, so every number whose gradient is
# well above $\epsilon = 10^{-9}$ moves by almost exactly $\gamma_1$, whatever the size of
# its gradient, and one with a zero gradient does not move.
#
# This is where `k_proj.bias` parts ways: its gradient noise (printed above) is far below
# $\epsilon$, so it moves by about $\gamma_t \cdot |\text{noise}| / 10^{-9}$ per step, in a
# direction set by noise that differs between the two halves. After one step that is
# invisible; over many steps the difference grows to ~$10^{-10}$ and more, so the
# parameters after a step are compared **without** it and its drift is shown on its own.

# %%
before = model.state_dict()
opt = Adam(model, lr=lr, betas=cfg.betas, eps=cfg.eps)
opt.step()
opt_t = torch.optim.Adam(twin.parameters(), lr=lr, betas=cfg.betas, eps=cfg.eps)
opt_t.step()

after, after_t = model.state_dict(), state_dict_to_numpy(twin.state_dict())
report_match("updated out_proj.weight", after["out_proj.weight"], after_t["out_proj.weight"])
report_match(
    "Adam's exp_avg_sq of out_proj.weight",
    opt.state["exp_avg_sq"]["out_proj.weight"],
    opt_t.state[twin.out_proj.weight]["exp_avg_sq"],
)
report_all("every updated parameter", after, after_t)
for name in [n for n in after if is_key_bias(n)][:1]:
    print(
        f"  {name}: moved by {np.abs(after[name] - before[name]).max():.1e} (numpy), "
        f"{np.abs(after_t[name] - before[name]).max():.1e} (torch)"
    )

steps_over_lr = np.concatenate([np.abs(after[n] - before[n]).ravel() / lr for n in after if not is_key_bias(n)])
print(
    f"  |change| / lr over all {steps_over_lr.size} other numbers: "
    f"{np.mean(np.abs(steps_over_lr - 1) < 1e-3):.1%} within 0.1 % of 1, "
    f"{np.mean(steps_over_lr == 0):.1%} exactly 0, max {steps_over_lr.max():.6f}"
)

# %% [markdown]
# The numbers that did not move have an exactly-zero gradient: the embedding rows of tokens that
# never reach the loss as an input (`PAD` positions are masked out of every attention and
# ignored by the loss, `BOS` never occurs in a source, `EOS` never in `tgt_in`), and here also
# one hidden unit of a feed-forward layer whose ReLU is off at every position of this batch (its
# row of `linear1.weight`, its bias, its column of `linear2.weight`). The few that moved by
# noticeably less than $\gamma_1$ have gradients below about $10^{-6}$, where $\epsilon = 10^{-9}$
# is no longer negligible against $\sqrt{\hat v_1} = |g|$.
#
# ### 1.6 `NumpyTrainer.train_step` is those lines
#
# The trainer used from now on does exactly what was written out above. From the same
# initial weights and the same batch its step gives the same loss, norm, rate and parameters,
# bit for bit.

# %%
fresh = Transformer(cfg.model_config(), dtype=np.float64, rng=np.random.default_rng(cfg.seed))
result = NumpyTrainer(fresh, cfg, np.random.default_rng(cfg.seed)).train_step(batch)
print(f"  StepResult: loss {result.loss:.6f}, grad_norm {result.grad_norm:.6f}, lr {result.lr:.6f}")
report_match("train_step loss", np.asarray(result.loss), np.asarray(float(loss)))
report_match("train_step grad_norm", np.asarray(result.grad_norm), np.asarray(norm))
report_all("train_step parameters vs the step by hand", fresh.state_dict(), after, skip=lambda name: False)

# %% [markdown]
# ### 1.7 Where the step's time goes
#
# `ProductClock` (in `numpy_transformer.applications.step_cost`) times the matrix products where
# they run. `clock.mark(model)` turns each parameter into a view of an `ndarray` subclass whose `@`
# adds its seconds to the clock. NumPy keeps a subclass through ufuncs, views and reshapes, so
# every activation and gradient computed from those parameters is marked too, and every product
# of the forward and backward reports itself. The subclass changes nothing else: the product runs
# on plain views, so the numbers come out bit for bit those of sections 1.2 and 1.3. The cost
# model `transformer_products` lists the same products from the architecture alone, and the two
# counts must agree.

# %%
clock = ProductClock()
clocked = Transformer(cfg.model_config(), dtype=np.float64, rng=np.random.default_rng(cfg.seed))
clock.mark(clocked)
shares = []
for _ in range(5):
    seconds, start = clock.seconds, time.perf_counter()
    logits_c, cache_c = clocked.forward(batch.src, batch.tgt_in)
    _, loss_cache_c = cross_entropy_forward(
        logits_c, batch.tgt_out, ignore_index=PAD, label_smoothing=cfg.label_smoothing
    )
    clocked.zero_grad()
    clocked.backward(cross_entropy_backward(1.0, loss_cache_c), cache_c)
    shares.append((clock.seconds - seconds) / (time.perf_counter() - start))
same = np.array_equal(logits_c, logits) and all(np.array_equal(g, grads[n]) for n, g in clocked.named_grads())
assert same, "the clocked model must compute the numbers of 1.2 and 1.3"
S, T = batch.src.shape[1], batch.tgt_in.shape[1]
n_listed = sum(p.count for p in transformer_products(cfg.model_config(), batch.src.shape[0], S, T))
assert clock.count == 5 * n_listed
print(f"  products in one forward + backward: {clock.count // 5} timed by the clock, {n_listed} listed")
print("  logits and every gradient bit for bit those of 1.2 and 1.3")
print(f"  share of the time in products: {np.median(shares):.0%} (median of 5 steps)")

# %% [markdown]
# At `C = 32` with batches of 32 short sequences, the products are the smaller part of the step (the
# share printed above): most of it goes to the calls themselves and to element-wise work. In the
# benchmark's model (`python -m numpy_transformer benchmark`: `C = 128`, batch 16 × 32, vocabulary
# 1000) they take 51–55 % of a float32 step and 58–60 % of a float64 one (the Speed section of
# the Training page).

# %% [markdown]
# ## 2. Training: `fit`, two backends, same weights
#
# `fit(trainers, dataset, cfg, steps)` draws the batches (from `cfg.seed`) and hands each batch
# to **every** trainer, in order. `NumpyTrainer` is the step above; `TorchTrainer` is the same
# step on the twin with `F.cross_entropy`, `clip_grad_norm_` and `torch.optim.Adam`. Started from
# the same float64 weights (`twin_of`) they must give the same loss at every step, to rounding:
# this checks the hand-written backward, clipping, schedule and Adam of the NumPy half against
# PyTorch's autograd and built-ins over a whole run, not just one step.
#
# Random numbers are the one thing two backends cannot share by seed. In compare mode the first
# trainer (NumPy) draws every dropout mask and returns them in `StepResult.dropout_masks`, and
# `fit` hands them to the second, which applies the **same** masks. The main run below has no
# dropout (it only slows this noise-free task down), so first a short run with `dropout=0.1`
# shows the replay at work.

# %%
cfg_drop = replace(cfg, dropout=0.1)
m_drop = Transformer(cfg_drop.model_config(), dtype=np.float64, rng=np.random.default_rng(1))
drop_pair = [NumpyTrainer(m_drop, cfg_drop, np.random.default_rng(1)), TorchTrainer(twin_of(m_drop), cfg_drop)]
masks_seen = []
h_drop = fit(
    drop_pair,
    dataset,
    cfg_drop,
    steps=10,
    eval_every=10**9,
    on_step=lambda step, results: masks_seen.append(results[0].dropout_masks),
)
diff, at = h_drop.max_loss_difference()
example_sites = ", ".join(sorted(masks_seen[0])[:3])
print(f"  dropout 0.1: {len(masks_seen[0])} masks per step (e.g. {example_sites}, ...), replayed in the twin")
print(f"  10 steps: largest per-step loss difference {diff:.1e} (relative, step {at})")
assert diff <= tolerance("cpu", np.float64), "the dropout replay failed"

# %% [markdown]
# Now the run itself. Compare mode costs a twin step per step, and at this size the twin's step
# took about twice as long as the NumPy one while this lesson was written, so the two backends
# run side by side for the first `N_COMPARE` steps only; after that the NumPy trainer continues alone to
# `cfg.steps`, keeping its weights, its Adam state and its place in the schedule (a trainer
# numbers its own updates). The second `fit` call draws its batches in a new order
# (`seed + 1`), so it does not replay the first epoch's order.

# %%
N_COMPARE = 100
model = Transformer(cfg.model_config(), dtype=np.float64, rng=np.random.default_rng(cfg.seed))  # as in section 1
np_trainer = NumpyTrainer(model, cfg, np.random.default_rng(cfg.seed))
torch_trainer = TorchTrainer(twin_of(model), cfg)
main_run = []  # (loss, grad_norm, lr) of the NumPy trainer at every step
h_cmp = fit([np_trainer, torch_trainer], dataset, cfg, steps=N_COMPARE, eval_every=50, on_step=recorder(main_run))
diff, at = h_cmp.max_loss_difference()
losses_np, losses_t = np.array(h_cmp.losses["numpy"]), np.array(h_cmp.losses["torch"])
print(
    f"  loss at step 1: numpy {losses_np[0]:.6f}, torch {losses_t[0]:.6f};"
    f" at step {N_COMPARE}: numpy {losses_np[-1]:.6f}, torch {losses_t[-1]:.6f}"
)
print(
    f"  largest per-step loss difference over {N_COMPARE} steps: {diff:.1e} (relative, at step {at});"
    f" {np.sum(losses_np == losses_t)} of {N_COMPARE} steps bit-identical"
)
assert diff <= tolerance("cpu", np.float64)

weights, weights_t = model.state_dict(), state_dict_to_numpy(torch_trainer.model.state_dict())
report_all(f"parameters after {N_COMPARE} steps", weights, weights_t)
key_biases = [name for name in weights if is_key_bias(name)]
drift = max(np.abs(weights[n] - weights_t[n]).max() for n in key_biases)
largest = max(np.abs(weights[n]).max() for n in key_biases)
print(
    f"  *.k_proj.bias after {N_COMPARE} steps: largest numpy - torch difference {drift:.1e}"
    f" (they start at 0; the largest |value| is now {largest:.1e}: noise through Adam)"
)
for row in h_cmp.evals:
    print(
        f"  step {row['step']:>3} [{row['backend']:>5}]  val loss {row['val_loss']:.6f}"
        f"  sequence accuracy {row['val_sequence_accuracy']:.3f}"
    )

# %%
h_rest = fit(
    [np_trainer],
    dataset,
    replace(cfg, seed=cfg.seed + 1),
    steps=cfg.steps - N_COMPARE,
    eval_every=100,
    on_step=recorder(main_run),
)
history = History(
    config=h_cmp.config,
    losses={"numpy": h_cmp.losses["numpy"] + h_rest.losses["numpy"], "torch": h_cmp.losses["torch"]},
    evals=h_cmp.evals + [{**row, "step": row["step"] + N_COMPARE} for row in h_rest.evals],
    seconds=h_cmp.seconds + h_rest.seconds,
)
print(f"  {cfg.steps} steps ({cfg.steps / cfg.steps_per_epoch():.1f} epochs) in {history.seconds:.1f} s")
for row in history.evals:
    if row["backend"] == "numpy":
        print(
            f"  step {row['step']:>3}  train loss {row['train_loss']:.3f}  val loss {row['val_loss']:.3f}"
            f"  token accuracy {row['val_token_accuracy']:.3f}  sequence accuracy {row['val_sequence_accuracy']:.3f}"
        )
V = cfg.task_spec().vocab_size
q = np.full(V, cfg.label_smoothing / V)
q[0] += 1 - cfg.label_smoothing  # the smoothed target of any one class
print(f"  the lowest label-smoothed loss possible is the entropy of q: {-(q * np.log(q)).sum():.3f}")
grad_norms = np.array([grad_norm for _, grad_norm, _ in main_run])
norms_by_block = grad_norms.reshape(-1, 100)  # (steps / 100, 100)
print(
    "  global gradient norm per 100 steps, median:",
    np.round(np.median(norms_by_block, axis=1), 2).tolist(),
    "max:",
    np.round(norms_by_block.max(axis=1), 2).tolist(),
    "steps clipped:",
    (norms_by_block > cfg.clip_norm).sum(axis=1).tolist(),
)
n_clipped = int(np.sum(grad_norms > cfg.clip_norm))
print(
    f"  global gradient norm: median {np.median(grad_norms):.2f}, largest {grad_norms.max():.2f}"
    f" (step {int(grad_norms.argmax()) + 1}); clipped at {cfg.clip_norm} on {n_clipped} of {cfg.steps} steps"
)
png = plot_loss_curves(
    history,
    OUT / "07_training_loss.png",
    title=f"reverse task, float64: numpy and torch side by side for {N_COMPARE} steps, then numpy",
)
print("saved", png)

# %% [markdown]
# What the numbers say:
#
# * **The two backends agree.** Over the compared steps the losses differ by less than
#   $10^{-15}$ (relative) at every step, many of them bit for bit; every parameter after those
#   steps is within ~$10^{-14}$, and both evaluations give the same validation loss and accuracy.
#   The exception is the one predicted in section 1.5: the key biases, which start at 0, carry
#   ~$10^{-10}$ of Adam-amplified noise, different in each backend — past the $10^{-10}$
#   contract, and meaningless.
# * **The model learns the task.** The training loss (left, log scale) is label-smoothed, so it
#   cannot go below the entropy of $q$ (printed above, 0.485); it ends just above it. Validation
#   (right) is measured without smoothing, and its sequence accuracy is strict: greedy decoding
#   must produce every symbol and the `EOS`. It reaches 98.5 % of the 200 held-out sequences.
#   Most of the progress on that measure happens between steps 200 and 500.
# * **The gradient norm is not constant.** It is about 0.5 at first, grows to a median of about
#   1.5 while the model is learning fastest (steps 200–400, with peaks near 3), and falls to
#   about 0.2 at the end, when the loss is near its floor. So clipping at 1.0 acted on 245 of the
#   600 steps, all of them between steps 100 and 500. Whether that helped is not tested here;
#   section 4 asks a simpler version of the question.

# %% [markdown]
# ## 3. What the trained model looks at
#
# `greedy_decode` runs the encoder once and the decoder one position at a time, taking the most
# likely token each time, and returns the last decoder layer's cross-attention at every step,
# `(B, H, L - 1, S)`. To reverse a sequence of $n$ symbols, the query producing output $i$ must
# find source position $n - 1 - i$: an **anti-diagonal**. Shown for the first validation sequence
# of the longest length.

# %%
val_batch = cfg.task_spec().make_batch(dataset.val)
example = int(np.flatnonzero((val_batch.src != PAD).sum(axis=1) == cfg.max_len + 1)[0])
src = val_batch.src[example : example + 1]  # (1, S)
decoded = greedy_decode(model, src, max_len=cfg.task_spec().max_seq_len, bos_id=BOS, eos_id=EOS)
generated = decoded.tokens[0, 1 : 1 + decoded.lengths[0]]  # up to and with EOS
print("  input:   ", " ".join(token_names(src[0])))
print("  output:  ", " ".join(token_names(generated)))
print("  expected:", " ".join(token_names(val_batch.tgt_out[example])))
weights_ca = decoded.cross_attention[0, :, : len(generated)]  # (H, L - 1, S)
n = cfg.max_len
mirrored = weights_ca[:, np.arange(n), n - 1 - np.arange(n)]  # (H, n): weight on the mirrored source position
print(f"  weight on the mirrored source position for the {n} symbols, per head: {np.round(mirrored, 2).tolist()}")
on_mirror = weights_ca[:, :n].argmax(axis=-1) == n - 1 - np.arange(n)  # (H, n)
print(f"  rows whose largest weight is on the mirrored position, per head: {on_mirror.sum(axis=1).tolist()} of {n}")
png = plot_attention(
    weights_ca,
    token_names(generated),
    token_names(src[0]),
    OUT / "07_cross_attention.png",
    title="reverse task: last decoder layer's cross-attention while decoding greedily",
)
print("saved", png)

# %% [markdown]
# The output is right, and the anti-diagonal is there: the first output symbol puts about 0.9
# of its weight (both heads) on the last source symbol, and the `EOS` query looks mostly at the
# source `EOS`. It is not a clean one-hot pointer. Head 1 is the sharper one: its largest weight
# is on the mirrored position in 5 of the 6 symbol rows. Head 0 finds it in the first three rows
# and then spreads its weight over the mirrored position and its neighbours (0.1–0.2 on the
# mirrored one). Only the last decoder layer is shown; the encoder's self-attention and the first
# decoder layer also move information between positions, so one layer's weights need not point
# at the answer alone.

# %% [markdown]
# ## 4. What warm-up and clipping change
#
# Six short runs (150 steps, float32, NumPy only), all from the same initial weights and the same
# batches, each with its own 150-step schedule:
#
# | run | peak lr | warm-up | clip at |
# |---|---|---|---|
# | default | 1e-2 | 50 | 1.0 |
# | no warm-up | 1e-2 | 0 | 1.0 |
# | no clipping | 1e-2 | 50 | none |
# | lr 0.1 | 1e-1 | 50 | 1.0 |
# | lr 0.1, no clipping | 1e-1 | 50 | none |
# | lr 0.1, no warm-up | 1e-1 | 0 | 1.0 |
#
# "No clipping" is `clip_norm=1e12`: `clip_grad_norm` wants a finite `max_norm`, and a norm that
# large never triggers it. `warmup_steps=0` is allowed by `linear_warmup_cosine`: the first
# update already gets (almost) the peak rate. `fit`'s `on_step` callback collects each step's
# `StepResult.grad_norm` (the global norm **before** clipping) and `lr`.

# %%
SHORT = 150
short = replace(cfg, steps=SHORT)
runs = {
    "default": short,
    "no warm-up": replace(short, warmup_steps=0),
    "no clipping": replace(short, clip_norm=1e12),
    "lr 0.1": replace(short, peak_lr=0.1),
    "lr 0.1, no clipping": replace(short, peak_lr=0.1, clip_norm=1e12),
    "lr 0.1, no warm-up": replace(short, peak_lr=0.1, warmup_steps=0),
}
curves = {}
for label, run_cfg in runs.items():
    m = Transformer(run_cfg.model_config(), dtype=np.float32, rng=np.random.default_rng(cfg.seed))
    per_step = []
    h = fit(
        [NumpyTrainer(m, run_cfg, np.random.default_rng(cfg.seed))],
        dataset,
        run_cfg,
        SHORT,
        eval_every=10**9,
        on_step=recorder(per_step),
    )
    loss_, gn_, lr_ = (np.array(v) for v in zip(*per_step, strict=True))
    curves[label] = {"loss": loss_, "grad_norm": gn_, "lr": lr_, "val": h.evals[-1]}

print(
    "  run                   loss 1-10 max  mean 1-25  mean 126-150 | |g| median  max (step)   clipped |"
    " val loss  seq acc"
)
for label, c in curves.items():
    gn_, clip = c["grad_norm"], runs[label].clip_norm
    clipped = int(np.sum(gn_ > clip))
    print(
        f"  {label:<20} {c['loss'][:10].max():13.3f} {c['loss'][:25].mean():10.3f} {c['loss'][-25:].mean():13.3f} |"
        f" {np.median(gn_):9.2f} {gn_.max():6.2f} ({int(gn_.argmax()) + 1:>3}) {clipped:>7} |"
        f" {c['val']['val_loss']:8.3f} {c['val']['val_sequence_accuracy']:8.3f}"
    )
same = np.array_equal(curves["default"]["loss"], curves["no clipping"]["loss"])
print("  default and no clipping give bit-identical losses:", same)
first_clip = int(np.argmax(curves["lr 0.1"]["grad_norm"] > cfg.clip_norm)) + 1
first_diff = int(np.argmax(curves["lr 0.1"]["loss"] != curves["lr 0.1, no clipping"]["loss"])) + 1
print(
    f"  lr 0.1: first clipped at step {first_clip}; with and without clipping the losses first differ at step {first_diff}"
)

# %%
colours = {
    "default": ("tab:blue", "-"),
    "no warm-up": ("tab:green", "-"),
    "no clipping": ("black", ":"),
    "lr 0.1": ("tab:red", "-"),
    "lr 0.1, no clipping": ("tab:orange", "--"),
    "lr 0.1, no warm-up": ("tab:purple", "-"),
}
fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained", sharex=True)
steps_axis = np.arange(1, SHORT + 1)
for label, c in curves.items():
    colour, style = colours[label]
    axes[0, 0].plot(steps_axis, c["lr"], style, color=colour, lw=1.5, label=label)
    axes[0, 1].plot(steps_axis, smooth(c["loss"], 5), style, color=colour, lw=1.5, label=label)
    panel = axes[1, 0] if runs[label].peak_lr < 0.05 else axes[1, 1]
    panel.plot(steps_axis, c["grad_norm"], style, color=colour, lw=1.0, label=label)
axes[0, 0].set(title="learning rate (log scale)", yscale="log")
axes[0, 1].set(title="training loss (label-smoothed; moving average of 5 steps)")
axes[1, 0].set(title="global gradient norm before clipping, peak lr 1e-2", xlabel="step", yscale="log")
axes[1, 1].set(title="global gradient norm before clipping, peak lr 0.1", xlabel="step", yscale="log")
for ax in axes[1]:
    ax.axhline(cfg.clip_norm, color="grey", lw=1, ls="-.", label="clip_norm = 1")
    ax.set_ylim(0.05, 10)
for ax in axes.ravel():
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left" if ax is axes[0, 0] else "upper right")
fig.suptitle(f"reverse task, {SHORT} steps each, float32, the same initial weights and batches")
png = OUT / "07_warmup_and_clipping.png"
fig.savefig(png, dpi=110)
plt.close(fig)
print("saved", png)

# %% [markdown]
# ### What the picture shows
#
# **Peak rate 1e-2 (the main run's rate).** The gradient norm stays between about 0.3 and 0.8
# for all 150 steps, so clipping at 1.0 never fires, and the run without clipping is
# bit-identical to the default one (the dotted black curves lie on the blue ones). Without
# warm-up the loss falls sooner (mean over steps 1–25: 1.78 against 2.14) and ends slightly
# lower (1.09 against 1.13 over the last 25 steps; validation loss 0.83 against 0.87). For this
# small pre-LN model at this rate, warm-up cost a few dozen steps and bought nothing, which fits
# walkthrough 06: pre-LN usually trains without it.
#
# **Peak rate 0.1, ten times larger.** With warm-up, the loss first falls faster than the
# default's (the rate passes 1e-2 within five steps), bottoms out around step 20 at about 1.6,
# then *rises* while the rate keeps climbing to 0.1, and stays at 1.6–1.9: validation loss 1.46
# against the default's 0.87, 4.5 % of sequences right. Its gradient norm is mostly below 1,
# with spikes above it from step 55 on; 6 steps are clipped. Without clipping the run is the
# same up to step 55 (the first clipped step) and parts from step 56; its spikes are higher (up
# to 5.8) and it ends higher (1.78 against 1.62 over the last 25 steps, validation loss 1.65
# against 1.46). That is one pair of runs, and the gap comes from a handful of steps: clipping
# trimmed the damage of the spikes, it did not make the rate usable.
#
# **Peak rate 0.1 from the first step.** The first updates at the full rate push the loss
# *up*, from 2.33 to 3.15 at step 3, and the gradient norm above 1 (steps 2–8, up to 2.2),
# although clipping is on. The run never recovers in 150 steps: 1.83 over the last 25 steps,
# validation loss 1.75, no sequence right; and its gradient norm is the smallest of all (median
# 0.16), so after the first steps clipping has almost nothing to act on (two more steps).
#
# **Why clipping does so little and warm-up so much: Adam.** Adam moves each weight by
# $\gamma_t\,\hat m_t / (\sqrt{\hat v_t} + \epsilon)$, a *ratio* of gradient statistics, so
# scaling all gradients by one factor hardly changes the update. At $t = 1$ it does not change
# it at all: every weight moves by $\gamma_1$ (section 1.5), clipped or not, which is why the
# no-warm-up run at 0.1 blew up with clipping on. Clipping matters only when the norm **jumps**
# relative to its recent history (the running $v$ lags behind the new gradient): it caps those
# steps, as in the spiky lr-0.1 runs. The learning rate, on the other hand, *is* the size of
# Adam's step, and warm-up keeps it small while $m$ and $v$ are still built from a few batches.
# With a well-chosen rate and this small pre-LN model neither mattered here; with a rate ten
# times too large, warm-up decided whether the first steps wrecked the model, and clipping
# trimmed the later spikes.

# %% [markdown]
# ## Summary
#
# * One training step is: `logits, cache = model.forward(src, tgt_in)`; `loss, c =
#   cross_entropy_forward(logits, tgt_out, ignore_index=PAD, label_smoothing=ε)`;
#   `model.zero_grad(); model.backward(cross_entropy_backward(1.0, c), cache)`;
#   `N = clip_grad_norm(model, max_norm)`; `opt.lr = cfg.learning_rate(t)`; `opt.step()`.
#   Each stage matches the twin with `F.cross_entropy`, `clip_grad_norm_` and
#   `torch.optim.Adam` in float64, and `NumpyTrainer.train_step` is exactly these lines.
# * `*.k_proj.bias` has an exactly-zero true gradient (a constant added to a row of scores does
#   not change its softmax); both halves compute rounding noise instead (~$10^{-20}$ here), which
#   Adam turns into ~$10^{-10}$ of drift over 100 steps, different in each. It is excluded from the
#   equality checks after Adam steps, everywhere in this project.
# * `fit` with a `NumpyTrainer` and a `TorchTrainer` from the same float64 weights gives the same
#   loss at every step to ~$10^{-15}$, dropout included (the NumPy trainer's masks are replayed
#   in the twin). The compare ran for the first 100 steps here, then the NumPy model went on
#   alone.
# * 600 steps (about 15 s on one CPU thread here) take this 2 + 2-layer model to 98.5 % exact
#   greedy decodes on held-out sequences, and its last decoder layer's cross-attention shows the
#   reverse task's anti-diagonal.
# * With Adam, the first update moves every weight by the learning rate, whatever the gradient's
#   size. Warm-up limits those first steps; clipping limits only steps whose gradient norm jumps.
#   At a good rate (1e-2) neither changed much here (no warm-up was even a little faster; clipping
#   at 1.0 never fired). At a rate ten times too large, skipping warm-up drove the loss up at the
#   start and the run never recovered, and clipping made the spiky warmed-up run somewhat better
#   without making the rate usable.

# %%
print(f"total time {time.perf_counter() - START:.1f} s")
