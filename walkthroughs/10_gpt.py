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
# # 10 · GPT: causal masking, a tied head, generation, and a KV cache that is exact
#
# A GPT is the Transformer's decoder alone: no encoder, no cross-attention. Token embeddings
# plus *learned* position embeddings go through a stack of pre-LN blocks whose self-attention
# is causal, a final LayerNorm, and an output layer that is the token-embedding matrix again:
#
# $$x_0 = W_{\text{tok}}[\text{ids}] + P[0..T-1], \qquad x_{i+1} = \text{block}_i(x_i), \qquad
#   \text{logits} = \mathrm{LN}(x_L)\, W_{\text{tok}}^{\top}.$$
#
# `numpy_transformer.GPT` builds the blocks from the package's own `EncoderLayer(norm_first=True)`,
# driven with a causal mask, and writes its backward by hand. This lesson:
#
# 1. shows what the **causal mask** buys: one forward pass scores every next-token prediction,
#    and changing a later token leaves every earlier logit *bit for bit* unchanged;
# 2. differentiates the **tied head**: `W_tok` is used twice, so its gradient has two terms;
#    checked against the twin, with the two terms computed apart by autograd;
# 3. turns logits into a next token: **temperature, top-k, top-p**, each against a
#    brute-force or library reference;
# 4. builds the **KV cache** and shows why its logits are the same numbers as recomputing the
#    whole prefix, and what it saves;
# 5. trains a small character-level model on the built-in corpus for a few seconds and samples
#    from it.
#
# Shape legend: `B` batch, `T` length, `C` d_model, `H` heads, `V` vocabulary. Everything is
# float64 except the training run (float32, for speed). A check prints `exact`,
# `close (max rel err …)`, or stops with an `AssertionError`.

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

import numpy_transformer as nt
from numpy_transformer.applications.charlm import CharLMConfig, sample_text, train_charlm
from numpy_transformer.inference.sampling import GPTKVCache, filter_logits, generate, sampling_distribution
from numpy_transformer.testing import relative_error, report_differs, report_match
from torch_transformer.bridge import twin_of

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
np.set_printoptions(precision=4, suppress=True, linewidth=110)
torch.set_num_threads(1)
START = time.perf_counter()

# %% [markdown]
# ## 1. The causal mask
#
# Query `t` may attend to keys `0..t` (`True` = may attend, the package's one convention).
# Every other operation of the network works on one position at a time, so `logits[:, t]`
# is a function of `ids[:, :t+1]` only, and `logits[:, t]` is trained to predict
# `ids[:, t+1]`: a sequence of `T` tokens gives `T` training examples in one pass.

# %%
cfg = nt.GPTConfig(vocab_size=12, max_len=16, d_model=16, n_heads=2, n_layers=2, d_ff=32)
rng = np.random.default_rng(0)
model = nt.GPT(cfg, dtype=np.float64, rng=rng)
for p in model.parameters():  # random weights at a larger scale, so that nothing is close to zero by accident
    p[...] = 0.5 * rng.standard_normal(p.shape)
print(model.attention_mask(np.zeros((1, 6), dtype=np.int64)).astype(int))

ids = rng.integers(0, 12, size=(2, 10))
logits, cache = model.forward(ids)  # (B, T, V)
weights = cache.attention_weights(0)  # (B, H, T, T)
print(
    f"logits {logits.shape}; attention weights {weights.shape}, above the diagonal: {np.abs(np.triu(weights[0, 0], 1)).max()}"
)

# %% [markdown]
# Change the token at position `t = 6` (and everything after it) and run again. The logits at
# positions `0..5` must not move at all: a masked key gets weight exactly `0`, so its value
# never enters the sums. Not "close": identical.

# %%
t = 6
changed = ids.copy()
changed[:, t:] = (ids[:, t:] + 1) % cfg.vocab_size
logits2, _ = model.forward(changed)
if not np.array_equal(logits[:, :t], logits2[:, :t]):
    raise AssertionError("mismatch: an earlier logit moved when a later token changed")
print(
    f"positions 0..{t - 1}: identical (np.array_equal); positions {t}..: max change {np.abs(logits2 - logits)[:, t:].max():.3f}"
)
change = np.abs(logits2 - logits).max(axis=(0, 2))  # (T,) per position

# %% [markdown]
# Without the mask the future leaks into every position. The same weights, driven through the
# same layers with no mask, give earlier logits that *do* depend on position 6:


# %%
def forward_without_mask(m, token_ids):
    """GPT.forward with the causal mask left out: the blocks, the final norm and the tied head."""
    x = m.tok_embed.forward(token_ids)[0] + m.pos_embed.forward(np.arange(token_ids.shape[1])[None])[0]
    for layer in m.layers:
        x, _ = layer.forward(x, mask=None)
    return m.norm.forward(x)[0] @ m.tok_embed.weight.T


report_differs(
    "no mask: earlier logits after the change",
    forward_without_mask(model, changed)[:, :t],
    forward_without_mask(model, ids)[:, :t],
)

# %% [markdown]
# ## 2. The backward of the tied head
#
# In the forward pass `W_tok` appears twice: in the lookup `x_0 = W_tok[ids] + …` and in the
# head `logits = h W_tokᵀ`. Its gradient is the sum of both uses:
#
# $$dW_{\text{tok}} = \underbrace{d\text{logits}^{\top} h}_{\text{head}}
#   + \underbrace{\textstyle\sum_{b,t:\ \text{ids}_{bt} = v} dx_{0,bt}}_{\text{lookup, row } v}.$$
#
# `GPT.backward` adds the head's share with `tok_embed.accumulate_grad("weight", …)` and then the
# lookup's with `tok_embed.backward(…)`; modules *accumulate* gradients precisely so that this
# is correct. The twin ties the same parameter; to see the two terms apart, autograd runs once
# more with two separate copies of the matrix.

# %%
dlogits = rng.standard_normal(logits.shape)  # a random upstream gradient, never all-ones
model.zero_grad()
model.backward(dlogits, cache)

twin = twin_of(model)
ids_t = torch.from_numpy(ids)
logits_t = twin(ids_t)
(logits_t * torch.from_numpy(dlogits)).sum().backward()
report_match("logits vs twin", logits, logits_t)
for name, p in twin.named_parameters():
    if name in ("tok_embed.weight", "pos_embed.weight", "layers.0.self_attn.q_proj.weight", "norm.weight"):
        report_match(f"d{name} vs twin", dict(model.named_grads())[name], p.grad)

w = twin.tok_embed.weight.detach()
w_lookup, w_head = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
x = torch.nn.functional.embedding(ids_t, w_lookup) + twin.pos_embed.weight[: ids.shape[1]]
for layer in twin.layers:
    x = layer(x, twin.attention_mask(ids_t))
(twin.norm(x) @ w_head.T * torch.from_numpy(dlogits)).sum().backward()
report_match("dW_tok = head term + lookup term", model.tok_embed.grads["weight"], w_head.grad + w_lookup.grad)
report_differs("dW_tok vs the head term alone", model.tok_embed.grads["weight"], w_head.grad)
report_differs("dW_tok vs the lookup term alone", model.tok_embed.grads["weight"], w_lookup.grad)

# %% [markdown]
# ## 3. From logits to the next token
#
# `filter_logits(logits, temperature, top_k, top_p)` applies, in this order:
#
# * **temperature** `τ`: `z = logits / τ` (`τ < 1` sharpens, `τ > 1` flattens; `τ = 0` is greedy);
# * **top-k**: keep the `k` largest `z`;
# * **top-p**: keep the smallest set of most likely tokens whose probability reaches `p`: a
#   token stays when the mass ranked strictly above it is below `p` (so the top token always stays).
#
# Removed tokens get `-inf`, and `sampling_distribution` is the softmax of the result. Check the
# top-p rule against an independent brute force over every subset of a small vocabulary:

# %%
from itertools import combinations

row = np.array([1.2, -0.3, 2.0, 0.4, 0.9, -1.5, 0.1])
full = sampling_distribution(row[None])[0]
for top_p in (0.3, 0.5, 0.75, 0.9, 0.99):
    kept = set(np.flatnonzero(sampling_distribution(row[None], top_p=top_p)[0] > 0))
    for size in range(1, len(row) + 1):  # brute force: the smallest subset of mass >= p (largest mass among those)
        best = max(combinations(range(len(row)), size), key=lambda s: full[list(s)].sum())
        if full[list(best)].sum() >= top_p:
            break
    if kept != set(best):
        raise AssertionError(f"mismatch: top_p={top_p} kept {sorted(kept)}, brute force {sorted(best)}")
    kept = sorted(int(i) for i in kept)
    print(f"  top_p = {top_p:<5} keeps tokens {kept} (mass {full[kept].sum():.3f}) = brute force")

# %% [markdown]
# And against Hugging Face's own warpers, when `transformers` is installed:

# %%
try:
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
except ImportError:
    print("  transformers is not installed: skipped")
else:
    scores = rng.standard_normal((4, 50)) * 2
    s = torch.from_numpy(scores.copy())
    dummy = torch.zeros((4, 1), dtype=torch.long)
    s = TopPLogitsWarper(0.8)(dummy, TopKLogitsWarper(20)(dummy, TemperatureLogitsWarper(0.7)(dummy, s)))
    ours = filter_logits(scores, temperature=0.7, top_k=20, top_p=0.8)
    if not np.array_equal(np.isfinite(ours), np.isfinite(s.numpy())):
        raise AssertionError("mismatch: a different set of tokens was kept than by transformers")
    report_match("filter_logits vs transformers' warpers", ours, s)

# %% [markdown]
# ## 4. The KV cache, and why it is exact
#
# Generating token `t + 1` needs `logits[:, t]`. Re-running the model on the whole prefix
# repeats, for positions `0..t-1`, work whose result cannot have changed: by causality, the
# key and value that position `s` contributes in every layer depend on `ids[:, :s+1]` only.
# `GPTKVCache` keeps them, pre-allocated `(B, H, max_len, D)` per layer, and for each new
# token runs just that one position through every layer: its query attends over all stored
# keys (mask: key `s ≤ t`, the causal mask's row `t`), its own key and value are appended, and
# positions continue after the prompt (`pos_embed[t]`).
#
# Every number the cache computes is computed from the same inputs by the same operations as
# in the full forward pass. The only thing that can differ is rounding: a product over a
# `(1, C)` row and one over a `(t, C)` block may add in a different order. So the comparison
# below is exact or within ~1e-16, far inside the contract.

# %%
model.eval()
prompt = ids[:, :4]
kv = GPTKVCache(model, batch_size=2)
step_logits = [kv.feed(prompt)]  # the prompt in one pass: (B, 4, V)
for s in range(4, ids.shape[1]):
    step_logits.append(kv.feed(ids[:, s : s + 1]))  # one token at a time: (B, 1, V)
cached = np.concatenate(step_logits, axis=1)
report_match("KV-cache logits vs full forward, every position", cached, logits)

result = generate(model, prompt, max_new_tokens=12, temperature=1.0, top_k=5, rng=np.random.default_rng(7))
again = generate(
    model, prompt, max_new_tokens=12, temperature=1.0, top_k=5, rng=np.random.default_rng(7), use_cache=False
)
if not np.array_equal(result.tokens, again.tokens):
    raise AssertionError("mismatch: the same seed gave different tokens with and without the cache")
report_match("generate: step logits with vs without the cache", result.logits, again.logits)
print("  same seed, same tokens with and without the cache:", result.tokens[0].tolist())

# %% [markdown]
# What it saves: without the cache, step `t` redoes all `t` positions (attention `O(t²)`), so a
# whole generation of `N` tokens costs `O(N³)` in attention and `O(N²)` elsewhere; with it, step
# `t` is one position against `t` keys. Timed on a wider model, one sequence of 128 tokens:

# %%
big = nt.GPT(nt.GPTConfig(vocab_size=64, max_len=128, d_model=64, n_heads=4, n_layers=2, d_ff=128), rng=rng)
seconds = {}
for use_cache in (True, False):
    t0 = time.perf_counter()
    out = generate(big, np.array([[1]]), 127, temperature=0, use_cache=use_cache)
    seconds[use_cache] = time.perf_counter() - t0
print(
    f"  127 new tokens: {seconds[True]:.3f} s with the cache, {seconds[False]:.3f} s without ({seconds[False] / seconds[True]:.1f}x)"
)
per_step = {}
for use_cache in (True, False):
    big.eval()
    times = []
    seq = out.tokens
    kv = GPTKVCache(big, 1)
    for s in range(1, 128):
        t0 = time.perf_counter()
        if use_cache:
            kv.feed(seq[:, s - 1 : s])
        else:
            big.forward(seq[:, :s])
        times.append(time.perf_counter() - t0)
    per_step[use_cache] = np.array(times)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
axes[0].plot(np.arange(1, 128), 1e3 * per_step[False], label="recompute the prefix")
axes[0].plot(np.arange(1, 128), 1e3 * per_step[True], label="KV cache")
axes[0].set(xlabel="sequence length t", ylabel="ms per generated token", title="time per step")
axes[0].legend()
axes[1].plot(np.arange(1, 128), np.cumsum(per_step[False]), label="recompute the prefix")
axes[1].plot(np.arange(1, 128), np.cumsum(per_step[True]), label="KV cache")
axes[1].set(xlabel="tokens generated", ylabel="seconds", title="total")
axes[1].legend()
fig.savefig(OUT / "10_kv_cache.png", dpi=110)
plt.close(fig)

# %% [markdown]
# **Checking against GPT-2.** With `activation="gelu_tanh"` this model *is* GPT-2's
# architecture, and `parity_tests/test_gpt_hf.py` maps a random `transformers.GPT2LMHeadModel`
# into it (Conv1D weights transposed, the packed `c_attn` split into q, k, v): logits and every
# gradient agree to float64 rounding. One thing to know when you do such a check yourself:
# `GPT2LMHeadModel(labels=...)` casts the logits to **float32** before its loss, so even a
# float64 model reports a loss good to ~1e-8 only — compare logits, or recompute the loss.

# %% [markdown]
# ## 5. A character-level model, trained for a few seconds
#
# `numpy_transformer.applications.charlm` generates its corpus (seeded English sentences from a small
# grammar, no download) and trains a `GPT` on it with AdamW. `python -m numpy_transformer
# train --task charlm` runs the full-size version (a couple of minutes); here a small model
# trains for 400 steps. At initialisation the validation loss is `ln V` (uniform guessing); the
# reference is the corpus's **unigram entropy**, what knowing the character frequencies alone
# would give.

# %%
small = CharLMConfig(corpus_chars=60_000, block_size=32, d_model=64, n_heads=4, n_layers=2, d_ff=128, steps=400,
                     eval_every=100, warmup_steps=30, peak_lr=1e-2)  # fmt: skip
run = train_charlm(small, np.float32)
for row in run.evals:
    print(f"  step {row['step']:>4}: validation loss {row['val_loss']:.3f} nats/char")
print(f"  {run.seconds:.1f} s; unigram entropy {run.unigram_entropy:.3f}, ln V = {np.log(run.vocab.size):.3f}")
if not run.evals[-1]["val_loss"] < 0.5 * run.unigram_entropy:
    raise AssertionError("mismatch: the validation loss did not fall below half the unigram entropy")

gen_rng = np.random.default_rng(1)
for temperature, top_k, top_p in ((0.0, None, None), (0.5, None, None), (1.0, None, 0.9), (1.5, 10, None)):
    text = sample_text(run.model, run.vocab, "The ", 28, temperature, top_k, top_p, gen_rng)
    print(f"  temperature {temperature}, top-k {top_k}, top-p {top_p}: {text!r}")

# %% [markdown]
# Greedy decoding repeats the most likely path; a low temperature stays close to it; a high one
# with no filter makes up words, and top-k / top-p cut off the unlikely tail that makes them.
# The picture: the attention of section 1 (causal: nothing above the diagonal), the per-position
# effect of changing token 6, and one next-character distribution of the trained model under the
# filters.

# %%
run.model.eval()
probe = run.vocab.encode("The old ca")[None]
next_logits = run.model.forward(probe)[0][0, -1].astype(np.float64)
order = np.argsort(-next_logits)[:12]
labels = [repr(run.vocab.chars[i])[1:-1] for i in order]
fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
axes[0].imshow(weights[0, 0], cmap="viridis")
axes[0].set(title="layer 0, head 0 attention (causal)", xlabel="key position", ylabel="query position")
axes[1].bar(np.arange(len(change)), change, color=["tab:blue"] * t + ["tab:red"] * (len(change) - t))
axes[1].set(title=f"max |logit change| per position after changing token {t}", xlabel="position")
width = 0.2
for j, (label, kw) in enumerate(
    [("τ = 1", {}), ("τ = 0.5", {"temperature": 0.5}), ("top-k 3", {"top_k": 3}), ("top-p 0.8", {"top_p": 0.8})]
):
    probs = sampling_distribution(next_logits[None], **kw)[0]
    axes[2].bar(np.arange(12) + (j - 1.5) * width, probs[order], width, label=label)
axes[2].set_xticks(np.arange(12), labels)
axes[2].set(title="next character after 'The old ca'", ylabel="probability")
axes[2].legend()
fig.savefig(OUT / "10_causal_attention.png", dpi=110)
plt.close(fig)

print(f"\nwrote {OUT / '10_causal_attention.png'}, {OUT / '10_kv_cache.png'}")
print(f"total {time.perf_counter() - START:.1f} s")
_ = relative_error  # the error measure behind every check above
