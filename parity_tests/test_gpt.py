"""The GPT-style decoder: causality, the tied head, training steps against PyTorch, generation and the KV cache.

(The NumPy model vs its twin and vs finite differences, dropout masks replayed, runs from
the parity registry in ``test_twin_parity.py`` under the name ``GPT``.)
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import numpy_transformer as nt
from numpy_transformer.applications.charlm import CharLMConfig, CharVocab, train_charlm, unigram_entropy
from numpy_transformer.applications.datasets import make_corpus
from numpy_transformer.functional import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.inference.sampling import (
    GPTKVCache,
    filter_logits,
    generate,
    sample,
    sampling_distribution,
)
from numpy_transformer.optim import AdamW, clip_grad_norm
from numpy_transformer.testing import assert_close, relative_error
from torch_transformer.bridge import state_dict_to_numpy, twin_of

from .helpers import assert_matches
from .strategies import dtypes, seeds


@st.composite
def configs(draw, dropout=None, pad=None):
    H = draw(st.sampled_from([1, 2, 4]))
    C = max(4, H * draw(st.sampled_from([2, 4])))  # LayerNorm over 2 features is ill-conditioned in float32
    V = draw(st.integers(3, 12))
    use_pad = draw(st.booleans()) if pad is None else pad
    return nt.GPTConfig(
        vocab_size=V, max_len=draw(st.integers(6, 12)), d_model=C, n_heads=H, n_layers=draw(st.integers(0, 2)),
        d_ff=draw(st.sampled_from([C, 2 * C + 1])), dropout=draw(dropout) if dropout is not None else 0.0,
        activation=draw(st.sampled_from(["gelu", "gelu_tanh"])), pad_id=0 if use_pad else None,
    )  # fmt: skip


def _model(cfg, dtype, seed, scale=0.5):
    """A GPT with every parameter redrawn at ``scale`` (so LayerNorm weights and biases are not 1 and 0)."""
    rng = np.random.default_rng(seed)
    model = nt.GPT(cfg, dtype=dtype, rng=rng)
    for p in model.parameters():
        p[...] = scale * rng.standard_normal(p.shape)
    return model, rng


# --------------------------------------------------------------------------- the model


@given(cfg=configs(), dtype=dtypes, seed=seeds, B=st.integers(1, 3), data=st.data())
def test_gpt_forward_and_every_gradient_match_the_twin(cfg, dtype, seed, B, data):
    model, rng = _model(cfg, dtype, seed)
    T = data.draw(st.integers(1, cfg.max_len), label="T")
    ids = rng.integers(0, cfg.vocab_size, size=(B, T))
    logits, cache = model.forward(ids)
    dlogits = rng.standard_normal(logits.shape).astype(dtype)
    model.backward(dlogits, cache)

    twin = twin_of(model)
    logits_t = twin(torch.from_numpy(ids))
    (logits_t * torch.from_numpy(dlogits)).sum().backward()
    assert logits.dtype == dtype and logits.shape == (B, T, cfg.vocab_size)
    assert_matches("logits", logits, logits_t, dtype)
    theirs = dict(twin.named_parameters())
    assert sorted(theirs) == sorted(n for n, _ in model.named_parameters())
    for name, grad in model.named_grads():
        assert_matches(f"d{name}", grad, theirs[name].grad, dtype)


def test_tied_embedding_collects_the_head_gradient_and_the_lookup_gradient():
    """``tok_embed.weight`` is used twice; its gradient is the sum of what each use alone gives (computed untied)."""
    cfg = nt.GPTConfig(vocab_size=9, max_len=8, d_model=8, n_heads=2, n_layers=2, d_ff=12)
    model, rng = _model(cfg, np.float64, 3)
    ids = rng.integers(0, 9, size=(2, 7))
    logits, cache = model.forward(ids)
    dlogits = rng.standard_normal(logits.shape)
    model.backward(dlogits, cache)

    twin = twin_of(model)
    # Untie in the twin: the lookup and the head each get their own copy of the matrix.
    w = twin.tok_embed.weight.detach()
    w_lookup, w_head = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    x = torch.nn.functional.embedding(torch.from_numpy(ids), w_lookup) + twin.pos_embed.weight[:7]
    for layer in twin.layers:
        x = layer(x, twin.attention_mask(torch.from_numpy(ids)))
    (twin.norm(x) @ w_head.T * torch.from_numpy(dlogits)).sum().backward()
    head, lookup = w_head.grad.numpy(), w_lookup.grad.numpy()
    assert np.abs(head).max() > 1e-3 and np.abs(lookup).max() > 1e-3, "both uses must contribute"
    assert_matches("dtok_embed.weight = head + lookup", model.tok_embed.grads["weight"], head + lookup, np.float64)
    wrong = relative_error("head only", model.tok_embed.grads["weight"], head)
    assert wrong.error > 1e-6, "the lookup's share is missing from the check"


@given(cfg=configs(), seed=seeds, data=st.data())
def test_changing_a_future_token_does_not_change_earlier_logits(cfg, seed, data):
    model, rng = _model(cfg, np.float64, seed)
    T = data.draw(st.integers(2, cfg.max_len), label="T")
    t = data.draw(st.integers(1, T - 1), label="t")
    ids = rng.integers(0, cfg.vocab_size, size=(2, T))
    changed = ids.copy()
    changed[:, t:] = (ids[:, t:] + rng.integers(1, cfg.vocab_size, size=ids[:, t:].shape)) % cfg.vocab_size
    a, cache = model.forward(ids)
    b, _ = model.forward(changed)
    # Exactly equal: a masked key's weight is exactly 0, so the future never enters the sums.
    assert np.array_equal(a[:, :t], b[:, :t]), "logits before position t moved when only tokens >= t changed"
    if cfg.n_layers:
        assert not np.array_equal(a[:, t:], b[:, t:])
        weights = cache.attention_weights()  # (B, H, T, T)
        assert np.all(weights[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)


def test_gradient_of_an_early_logit_reaches_no_later_position():
    """Backward causality: d logits[:, t] / d x[:, s] = 0 for s > t, so a later token's embedding gets no gradient."""
    cfg = nt.GPTConfig(vocab_size=20, max_len=8, d_model=8, n_heads=2, n_layers=2, d_ff=16)
    model, rng = _model(cfg, np.float64, 0)
    ids = np.arange(8)[None, :] + 10  # every token distinct, ids 10..17 at positions 0..7
    logits, cache = model.forward(ids)
    dlogits = np.zeros_like(logits)
    dlogits[:, 3] = rng.standard_normal(logits.shape[-1])  # only position 3 is scored
    model.zero_grad()
    model.backward(dlogits, cache)
    pos = model.pos_embed.grads["weight"]
    assert np.all(pos[4:] == 0) and np.all(np.abs(pos[:4]).max(axis=1) > 0)


def test_pad_keys_are_never_attended_to():
    cfg = nt.GPTConfig(vocab_size=7, max_len=6, d_model=8, n_heads=2, n_layers=1, d_ff=8, pad_id=0)
    model, _ = _model(cfg, np.float64, 1)
    ids = np.array([[3, 0, 4, 0, 5, 6]])
    _, cache = model.forward(ids)
    weights = cache.attention_weights(0)  # (1, H, T, T)
    assert np.all(weights[..., [1, 3]] == 0)
    np.testing.assert_allclose(weights.sum(-1)[..., [0, 2, 4, 5]], 1.0)
    np.testing.assert_allclose(weights[0, :, 1, 0], 1.0)  # query 1 (a pad) sees key 0 only: key 1 is its own pad


def test_dropout_masks_are_named_recorded_and_replayed_by_the_twin():
    cfg = nt.GPTConfig(vocab_size=9, max_len=8, d_model=8, n_heads=2, n_layers=2, d_ff=12, dropout=0.3)
    model, rng = _model(cfg, np.float64, 4)
    ids = rng.integers(0, 9, size=(3, 8))
    logits, cache = model.forward(ids, rng=rng)
    sites = set(cache.dropout_masks)
    for i in range(2):
        assert {f"layers.{i}.{s}" for s in ("self_attn", "dropout1", "dropout2")} <= sites
    assert "embed_dropout" in sites and len(sites) == 7  # no dropout inside the feed-forward, as GPT-2
    dlogits = rng.standard_normal(logits.shape)
    model.backward(dlogits, cache)
    twin = twin_of(model)
    masks = {k: torch.from_numpy(v) for k, v in cache.dropout_masks.items()}
    logits_t = twin(torch.from_numpy(ids), masks)
    (logits_t * torch.from_numpy(dlogits)).sum().backward()
    assert_matches("logits (dropout replayed)", logits, logits_t, np.float64)
    grads = dict(model.named_grads())
    for name, p in twin.named_parameters():
        assert_matches(f"d{name} (dropout replayed)", grads[name], p.grad, np.float64)
    # a second draw drops other units; eval mode drops none
    assert not np.array_equal(model.forward(ids, rng=rng)[0], logits)
    model.eval()
    assert model.forward(ids, rng=rng)[1].dropout_masks == {}


def test_gpt_bad_input_raises_clear_errors():
    cfg = nt.GPTConfig(vocab_size=5, max_len=4, d_model=4, n_heads=2, n_layers=1, d_ff=4)
    model, _ = _model(cfg, np.float64, 0)
    with pytest.raises(TypeError, match="ids: expected an integer dtype"):
        model.forward(np.zeros((1, 3)))
    with pytest.raises(TypeError, match=r"ids: expected a numpy\.ndarray"):
        model.forward([[1, 2]])
    with pytest.raises(ValueError, match=r"ids: expected token ids of shape \(B, L\)"):
        model.forward(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"ids: expected token ids of shape \(B, L\)"):
        model.forward(np.zeros((1, 0), dtype=np.int64))
    with pytest.raises(ValueError, match="ids: expected length L <= max_len=4, got 5"):
        model.forward(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 5\), got range \[0, 5\]"):
        model.forward(np.array([[0, 5]]))
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 5\), got range \[-1, 0\]"):
        model.forward(np.array([[0, -1]]))
    _, cache = model.forward(np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"dlogits: expected shape \(1, 3, 5\)"):
        model.backward(np.zeros((1, 3, 4)), cache)
    with pytest.raises(ValueError, match=r"dlogits: expected .* dtype float64"):
        model.backward(np.zeros((1, 3, 5), np.float32), cache)
    with pytest.raises(TypeError, match="config: expected a GPTConfig"):
        nt.GPT(nt.TransformerConfig(5, 5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0}, "vocab_size: expected a positive int"),
        ({"max_len": 2.0}, "max_len: expected a positive int"),
        ({"n_heads": 3}, "n_heads: expected a divisor of d_model=8"),
        ({"n_layers": -1}, "n_layers: expected a non-negative int"),
        ({"d_ff": True}, "d_ff: expected a positive int"),
        ({"dropout": 1.0}, r"dropout: expected a probability in \[0, 1\)"),
        ({"activation": "relu"}, "activation: expected 'gelu' or 'gelu_tanh'"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps: expected a positive float"),
        ({"pad_id": 5}, r"pad_id: expected None or an id in \[0, 5\)"),
    ],
)
def test_gpt_config_rejects_bad_arguments_naming_them(kwargs, message):
    base = dict(vocab_size=5, max_len=4, d_model=8, n_heads=2, n_layers=1, d_ff=8)
    with pytest.raises(ValueError, match=message):
        nt.GPTConfig(**{**base, **kwargs})


# --------------------------------------------------------------------------- training steps vs PyTorch


def test_adamw_training_steps_match_torch_adamw_on_the_twin_loss_by_loss_and_weight_by_weight():
    """float64, 6 steps: our forward/backward + clip + our AdamW vs the twin + autograd + clip_grad_norm_ + torch AdamW.

    Same initial weights, batches and dropout masks (drawn by NumPy, replayed in the twin). Every loss and
    every final weight within the float64 contract -- except ``*.k_proj.bias``, whose true gradient is exactly
    0 (adding ``b`` to every key adds ``q . b`` to a whole row of scores, which softmax ignores). Both backends
    compute rounding noise for it instead; we check that noise is tiny and that AdamW's steps on it stay below
    ``lr * 1e-6`` per step, rather than pretend the two noises agree.
    """
    cfg = nt.GPTConfig(vocab_size=11, max_len=10, d_model=8, n_heads=2, n_layers=2, d_ff=16, dropout=0.1)
    rng = np.random.default_rng(11)
    model = nt.GPT(cfg, dtype=np.float64, rng=rng)
    twin = twin_of(model)
    lr, n_steps = 3e-2, 6
    ours = AdamW(model, lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05)
    theirs = torch.optim.AdamW(twin.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05)
    names = [n for n, _ in twin.named_parameters()]
    losses_ours, losses_theirs = [], []
    for _ in range(n_steps):
        ids = (rng.integers(0, 11, size=(4, 1)) + np.arange(10)) % 11  # counting mod 11: learnable
        x, y = ids[:, :-1], ids[:, 1:]
        logits, cache = model.forward(x, rng=rng)
        loss, loss_cache = cross_entropy_forward(logits, y)
        model.zero_grad()
        model.backward(cross_entropy_backward(1.0, loss_cache), cache)

        theirs.zero_grad()
        masks = {k: torch.from_numpy(v) for k, v in cache.dropout_masks.items()}
        loss_t = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x), masks).reshape(-1, 11),
                                                   torch.from_numpy(y).reshape(-1))  # fmt: skip
        loss_t.backward()
        grads = dict(model.named_grads())
        for name, p in twin.named_parameters():
            if name.endswith("k_proj.bias"):
                assert np.abs(grads[name]).max() < 1e-14 and p.grad.abs().max() < 1e-14, name
            else:
                assert_matches(f"d{name}", grads[name], p.grad, np.float64)
        norm = clip_grad_norm(model, 0.5)
        norm_t = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        assert_matches("gradient norm before clipping", np.array(norm), norm_t, np.float64)
        ours.step()
        theirs.step()
        losses_ours.append(float(loss))
        losses_theirs.append(loss_t.item())

    assert len(cache.dropout_masks) > 0
    assert losses_ours[-1] < losses_ours[0], "training did not lower the loss"
    assert_matches("loss at every step", np.array(losses_ours), np.array(losses_theirs), np.float64)
    final = state_dict_to_numpy(twin.state_dict())
    assert sorted(final) == sorted(names)
    moved = 0
    for name, p in model.named_parameters():
        if name.endswith("k_proj.bias"):
            assert np.abs(p - final[name]).max() < n_steps * lr * 1e-6, name
            continue
        assert_matches(f"final {name}", p, final[name], np.float64)
        moved += 1
    assert moved == len(names) - cfg.n_layers


# --------------------------------------------------------------------------- filtering and sampling


def _brute_force_top_p(probs: np.ndarray, top_p: float) -> set[int]:
    """The smallest set of tokens with total probability >= top_p, by trying every subset (small V only).

    Among the sets of that size, the one of largest mass: for distinct probabilities it is unique.
    """
    V = len(probs)
    for size in range(1, V + 1):
        best = max(itertools.combinations(range(V), size), key=lambda s: probs[list(s)].sum())
        if probs[list(best)].sum() >= top_p:
            return set(best)
    raise AssertionError("unreachable: all tokens together have probability 1")


@given(seed=seeds, V=st.integers(2, 8), top_p=st.floats(0.01, 1.0), temperature=st.floats(0.3, 3.0))
def test_top_p_keeps_the_smallest_most_likely_set_reaching_p_by_brute_force(seed, V, top_p, temperature):
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((3, V))
    probs = sampling_distribution(logits, temperature=temperature, top_p=top_p)
    full = sampling_distribution(logits, temperature=temperature)
    for row, full_row in zip(probs, full, strict=True):
        # stay away from ties and from a cumulative mass within rounding of top_p
        sums = [full_row[list(s)].sum() for k in range(1, V + 1) for s in itertools.combinations(range(V), k)]
        assume(min(abs(s - top_p) for s in sums) > 1e-9 and np.min(np.diff(np.sort(full_row))) > 1e-9)
        kept = set(np.flatnonzero(row > 0))
        assert kept == _brute_force_top_p(full_row, top_p)
        assert int(full_row.argmax()) in kept
        assert_close("renormalised", row[list(kept)], full_row[list(kept)] / full_row[list(kept)].sum(), 1e-12)


@given(seed=seeds, V=st.integers(2, 40), k=st.integers(1, 45), top_p=st.one_of(st.none(), st.floats(0.05, 1.0)),
       temperature=st.floats(0.2, 5.0))  # fmt: skip
def test_filtering_matches_transformers_logits_warpers(seed, V, k, top_p, temperature):
    pytest.importorskip("transformers")
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal((4, V))
    ours = filter_logits(logits, temperature, top_k=k, top_p=top_p)
    scores, ids = torch.from_numpy(logits.copy()), torch.zeros((4, 1), dtype=torch.long)
    scores = TemperatureLogitsWarper(temperature)(ids, scores)
    scores = TopKLogitsWarper(k)(ids, scores)
    if top_p is not None:
        # stay away from a cumulative mass within rounding of top_p (there the two may round either way)
        p = torch.softmax(scores, -1).numpy()
        mass_above = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
        assume(np.abs(mass_above - top_p).min() > 1e-9)
        scores = TopPLogitsWarper(top_p)(ids, scores)
    theirs = scores.numpy()
    assert np.array_equal(np.isfinite(ours), np.isfinite(theirs)), "a different set of tokens was kept"
    assert_matches("filtered logits", ours, theirs, np.float64)


def test_top_k_never_samples_outside_the_k_best():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 30))
    best5 = set(np.argsort(-logits[0])[:5])
    probs = np.repeat(sampling_distribution(logits, temperature=2.0, top_k=5), 20000, axis=0)  # (20000, 30)
    drawn = sample(probs, rng)
    assert set(drawn) == best5, "every one of the 5 best is drawn, nothing else"
    # frequencies follow the renormalised distribution
    freq = np.bincount(drawn, minlength=30) / drawn.size
    np.testing.assert_allclose(freq, probs[0], atol=0.015)


def test_temperature_zero_is_the_arg_max_and_temperature_scales_the_logits():
    logits = np.array([[1.0, 3.0, 3.0, -2.0]])
    assert np.array_equal(sampling_distribution(logits, temperature=0), [[0.0, 1.0, 0.0, 0.0]])  # first maximum
    for tau in (0.5, 1.0, 2.5):
        e = np.exp(logits / tau)
        assert_close(f"softmax(logits / {tau})", sampling_distribution(logits, tau), e / e.sum(), 1e-15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature: expected a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature: expected a finite number >= 0"),
        ({"top_k": 0}, r"top_k: expected an int >= 1, got 0"),
        ({"top_k": 2.5}, "top_k: expected an int"),
        ({"top_p": 0.0}, r"top_p: expected None or a probability in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p: expected None or a probability in \(0, 1\]"),
    ],
)
def test_bad_sampling_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        filter_logits(np.zeros((1, 3)), **kwargs)
    cfg = nt.GPTConfig(vocab_size=5, max_len=6, d_model=4, n_heads=2, n_layers=1, d_ff=4)
    model, rng = _model(cfg, np.float64, 0)
    with pytest.raises(ValueError, match=message):
        generate(model, np.array([[1, 2]]), 2, rng=rng, **kwargs)


def test_generate_rejects_prompts_and_lengths_beyond_max_len():
    cfg = nt.GPTConfig(vocab_size=5, max_len=6, d_model=4, n_heads=2, n_layers=1, d_ff=4)
    model, rng = _model(cfg, np.float64, 0)
    with pytest.raises(ValueError, match="prompt_ids: expected length L <= max_len=6, got 7"):
        generate(model, np.ones((1, 7), dtype=np.int64), 1, rng=rng)
    with pytest.raises(ValueError, match=r"max_new_tokens: the prompt's 4 tokens \+ 3 new ones = 7 exceed max_len=6"):
        generate(model, np.ones((1, 4), dtype=np.int64), 3, rng=rng)
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1"):
        generate(model, np.ones((1, 4), dtype=np.int64), 0, rng=rng)
    with pytest.raises(ValueError, match=r"prompt_ids: expected token ids in \[0, 5\)"):
        generate(model, np.array([[7]]), 1, rng=rng)
    with pytest.raises(TypeError, match=r"rng: expected a numpy\.random\.Generator"):
        generate(model, np.array([[1]]), 1, rng=3)
    with pytest.raises(TypeError, match="model: expected a numpy_transformer GPT"):
        generate(nt.Linear(2, 2), np.array([[1]]), 1)
    assert generate(model, np.ones((1, 4), dtype=np.int64), 2, rng=rng).tokens.shape == (1, 6)  # exactly fills


# --------------------------------------------------------------------------- the KV cache


@given(cfg=configs(), dtype=dtypes, seed=seeds, data=st.data())
def test_kv_cache_logits_equal_full_recomputation_at_every_position(cfg, dtype, seed, data):
    model, rng = _model(cfg, dtype, seed)
    model.eval()
    B = data.draw(st.integers(1, 3), label="B")
    ids = rng.integers(0, cfg.vocab_size, size=(B, cfg.max_len))
    full, _ = model.forward(ids)  # (B, max_len, V)
    # feed in chunks of random sizes (the prompt, then one token at a time, or anything between)
    cache, t, pieces = GPTKVCache(model, B), 0, []
    while t < cfg.max_len:
        L = data.draw(st.integers(1, cfg.max_len - t), label="chunk")
        pieces.append(cache.feed(ids[:, t : t + L]))
        t += L
    cached = np.concatenate(pieces, axis=1)
    assert cached.dtype == dtype
    assert_matches("cached logits vs full recomputation", cached, full, dtype)
    if dtype == np.float64:  # the same operations on the same numbers: rounding only, far inside the contract
        assert_close("cached logits (float64, rounding only)", cached, full, 1e-13)


@given(cfg=configs(), seed=seeds, temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
       top_k=st.sampled_from([None, 1, 3]), top_p=st.sampled_from([None, 0.5, 0.9]))  # fmt: skip
def test_same_seed_gives_the_same_sample_with_and_without_the_cache(cfg, seed, temperature, top_k, top_p):
    model, rng = _model(cfg, np.float64, seed)
    prompt = rng.integers(0, cfg.vocab_size, size=(2, 2))
    n = cfg.max_len - 2
    a = generate(model, prompt, n, temperature, top_k, top_p, rng=np.random.default_rng(seed), use_cache=True)
    b = generate(model, prompt, n, temperature, top_k, top_p, rng=np.random.default_rng(seed), use_cache=False)
    assert np.array_equal(a.tokens, b.tokens)
    assert np.array_equal(a.tokens[:, :2], prompt)
    assert_close("step logits, cached vs recomputed", a.logits, b.logits, 1e-13)
    # every step's logits are the model's own on the sequence so far, and the token is in the kept set
    model.eval()
    full, _ = model.forward(a.tokens[:, :-1])
    assert_matches("step logits vs one forward pass", a.logits, full[:, 1:], np.float64)
    kept = np.isfinite(filter_logits(a.logits, temperature, top_k, top_p))  # (B, n, V)
    assert np.all(np.take_along_axis(kept, a.tokens[:, 2:, None], axis=-1))
    if temperature == 0:
        assert np.array_equal(a.tokens[:, 2:], a.logits.argmax(-1))


def test_generate_restores_training_mode_and_the_cache_refuses_training_mode():
    cfg = nt.GPTConfig(vocab_size=5, max_len=6, d_model=4, n_heads=2, n_layers=1, d_ff=4, dropout=0.5)
    model, _ = _model(cfg, np.float64, 0)
    a = generate(model, np.array([[1]]), 5, temperature=0)
    b = generate(model, np.array([[1]]), 5, temperature=0)
    assert np.array_equal(a.tokens, b.tokens), "generation must run without dropout"
    assert model.training and model.layers[0].self_attn.training
    with pytest.raises(ValueError, match=r"model: expected eval mode"):
        GPTKVCache(model, 1)
    model.eval()
    cache = GPTKVCache(model, 2, capacity=3)
    with pytest.raises(ValueError, match="ids: expected batch size 2"):
        cache.feed(np.ones((1, 2), dtype=np.int64))
    cache.feed(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"ids: 2 more position.* after 2 exceed the cache's capacity 3"):
        cache.feed(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"capacity: expected an int in \[1, 6\]"):
        GPTKVCache(model, 1, capacity=7)


# --------------------------------------------------------------------------- the character-level model


def test_corpus_is_seeded_readable_english_and_the_vocabulary_round_trips():
    a, b, c = make_corpus(5000, seed=1), make_corpus(5000, seed=1), make_corpus(5000, seed=2)
    assert a == b and a != c and len(a) >= 5000
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.\n")
    sentences = [s.strip() for s in a.replace("\n", " ").split(".") if s.strip()]
    assert all(s[0].isupper() for s in sentences) and len(set(sentences)) > 0.8 * len(sentences)
    vocab = CharVocab.from_text(a)
    assert vocab.decode(vocab.encode(a)) == a
    with pytest.raises(ValueError, match=r"text: characters \['#'\] are not in the vocabulary"):
        vocab.encode("a#")
    ids = vocab.encode(a)
    assert 2.5 < unigram_entropy(ids, vocab.size) < np.log(vocab.size)


@pytest.mark.slow
def test_charlm_validation_loss_falls_far_below_the_unigram_entropy():
    """A short run (~12 s): from ln(V) at initialisation to well under what character frequencies alone give."""
    cfg = CharLMConfig(corpus_chars=60_000, block_size=32, d_model=64, n_heads=4, n_layers=2, d_ff=128, steps=400,
                       eval_every=200, warmup_steps=30, peak_lr=1e-2)  # fmt: skip
    run = train_charlm(cfg, np.float32)
    losses = [e["val_loss"] for e in run.evals]
    assert losses[0] == pytest.approx(np.log(run.vocab.size), abs=0.1)
    assert losses[-1] < losses[1] < losses[0]
    assert losses[-1] < 0.5 * run.unigram_entropy, f"val loss {losses[-1]:.3f}, unigram {run.unigram_entropy:.3f}"


def test_train_charlm_compare_trains_numpy_and_the_twin_step_for_step(tmp_path, capsys):
    """--compare: the same windows and dropout masks, torch's AdamW / clipping / cross-entropy on the twin."""
    pytest.importorskip("torch")
    from numpy_transformer.commands import main

    args = ["train", "--task", "charlm", "--compare", "--dtype", "float64", "--steps", "4", "--batch-size", "4",
            "--dropout", "0.1", "--no-progress", "--out", str(tmp_path), "--samples", "1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("largest per-step loss difference numpy vs torch"))
    assert float(line.split(": ")[1].split()[0]) < 1e-12, line
    assert "[numpy] trained 4 steps" in out and "[torch] trained 4 steps" in out


def test_train_charlm_command_runs_and_prints_falling_loss_and_samples(tmp_path, capsys):
    from numpy_transformer.commands import main

    args = ["train", "--task", "charlm", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path), "--top-k", "5"]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "unigram entropy" in out and "val loss" in out and "samples (temperature 0.8, top-k 5)" in out
    assert (tmp_path / "checkpoint.npz").is_file() and (tmp_path / "history.json").is_file()
    # progress: a bar on stderr that reaches the last step, and the loss curves
    assert "2/2" in captured.err and "step" in captured.err
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "charlm", "--model", "rnn-bahdanau"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "charlm", "--top-p", "1.5"])
    assert exc.value.code == 2
