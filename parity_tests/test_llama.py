"""The Llama-style decoder: causality, the tied head, the layouts, the key/value cache and its memory, errors.

The registry (``cases_llama.py``) compares every parameter gradient with the twin and with finite
differences; ``test_llama_hf.py`` compares with ``transformers.LlamaForCausalLM``. Here: the model's
own properties (no logit reads a later token; a tied head collects two gradients), Meta's layout
with permuted weights is Hugging Face's, the key/value cache gives the full forward's logits, holds
only the ``n_kv_heads`` heads (its memory, with and without grouping), is a stepper that reorders
rows, and drives ``generate``; bad shapes, dtypes, ids and configs raise errors that name the argument.

Shape legend: B batch, T length, V vocabulary, C d_model, H / Hkv query / key-value heads, D head width.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer as nt
import numpy_transformer.functional as F
from numpy_transformer.inference import generate
from numpy_transformer.models.llama import LlamaKVCache, llama_state_from_hf, llama_state_to_hf
from numpy_transformer.modules import LlamaAttention, LlamaDecoderLayer, RMSNorm, SwiGLUFeedForward
from numpy_transformer.training.checkpoint import read_checkpoint, save_checkpoint
from torch_transformer.bridge import twin_of

from .helpers import assert_matches
from .strategies import dtypes, seeds


def tiny(**overrides) -> nt.LlamaConfig:
    fields = dict(vocab_size=11, max_len=12, d_model=8, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=6, rope_theta=100.0)
    return nt.LlamaConfig(**(fields | overrides))


def random_model(config: nt.LlamaConfig, dtype=np.float64, seed: int = 0) -> nt.Llama:
    """A model whose every weight is random (RMSNorm weights start at one, which would hide a mistake)."""
    rng = np.random.default_rng(seed)
    model = nt.Llama(config, dtype=dtype, rng=rng)
    model.load_state_dict({n: (0.5 * rng.standard_normal(p.shape)).astype(dtype) for n, p in model.named_parameters()})
    return model


configs = st.sampled_from(
    [
        tiny(),
        tiny(n_kv_heads=1, rope_layout="interleaved", tie_embeddings=True),
        tiny(n_heads=2, n_kv_heads=2, n_layers=1),
    ]
)


# --------------------------------------------------------------------------- the model's own properties


@given(config=configs, seed=seeds, t=st.integers(0, 5))
def test_changing_a_future_token_does_not_change_earlier_logits(config, seed, t):
    model = random_model(config, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(2, 7))
    logits, _ = model.forward(ids)
    changed = ids.copy()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % config.vocab_size
    np.testing.assert_array_equal(model.forward(changed)[0][:, : t + 1], logits[:, : t + 1])
    assert np.abs(model.forward(changed)[0][:, t + 1 :] - logits[:, t + 1 :]).max() > 0


def test_a_tied_head_is_the_embedding_and_collects_the_head_and_the_lookup_gradients():
    tied, untied = random_model(tiny(tie_embeddings=True)), random_model(tiny())
    assert "lm_head.weight" not in dict(tied.named_parameters()) and tied.head_weight is tied.tok_embed.weight
    assert dict(untied.named_parameters())["lm_head.weight"].shape == (11, 8)
    # Untie by hand: the same weights, the embedding copied into a separate head.
    state = tied.state_dict()
    untied.load_state_dict(state | {"lm_head.weight": state["tok_embed.weight"].copy()})
    ids = np.random.default_rng(1).integers(0, 11, size=(2, 6))
    dlogits = np.random.default_rng(2).standard_normal((2, 6, 11))
    for model in (tied, untied):
        _, cache = model.forward(ids)
        model.zero_grad()
        model.backward(dlogits, cache)
    assert_matches("logits", tied.forward(ids)[0], untied.forward(ids)[0], np.float64)
    g_tied, g_untied = dict(tied.named_grads()), dict(untied.named_grads())
    both = g_untied["tok_embed.weight"] + g_untied["lm_head.weight"]
    assert_matches("d tok_embed.weight = lookup + head", g_tied["tok_embed.weight"], both, np.float64)


def test_metas_interleaved_layout_with_permuted_rows_is_the_half_layout_model_gradients_included():
    half = random_model(tiny(d_model=16))  # D = 4: two pairs per head, so the layouts differ
    interleaved = nt.Llama(tiny(d_model=16, rope_layout="interleaved"), rng=np.random.default_rng(0))
    hf_names = llama_state_to_hf(half.state_dict(), half.config)  # the half model under HF's names
    interleaved.load_state_dict(llama_state_from_hf(hf_names, interleaved.config))  # q, k rows permuted
    q = "layers.0.self_attn.q_proj.weight"
    assert np.abs(interleaved.state_dict()[q] - half.state_dict()[q]).max() > 0
    ids = np.random.default_rng(3).integers(0, 11, size=(2, 7))
    dlogits = np.random.default_rng(4).standard_normal((2, 7, 11))
    for model in (half, interleaved):
        _, cache = model.forward(ids)
        model.zero_grad()
        model.backward(dlogits, cache)
    assert_matches("logits", interleaved.forward(ids)[0], half.forward(ids)[0], np.float64)
    theirs = llama_state_from_hf(llama_state_to_hf(dict(half.named_grads()), half.config), interleaved.config)
    for name, g in dict(interleaved.named_grads()).items():
        assert_matches(f"d{name}", g, theirs[name], np.float64)


def test_twin_of_copies_the_model_and_every_block():
    model = random_model(tiny())
    twin = twin_of(model)
    ids = np.random.default_rng(0).integers(0, 11, size=(2, 5))
    with torch.no_grad():
        assert_matches("logits", model.forward(ids)[0], twin(ids), np.float64)
    assert sorted(twin.state_dict()) == sorted(model.state_dict())
    layer = model.layers[0]
    for block in (layer, layer.self_attn, layer.ff, layer.norm1):
        assert sorted(twin_of(block).state_dict()) == sorted(block.state_dict())


def test_checkpoint_round_trip_keeps_the_config_and_every_weight(tmp_path):
    model = random_model(tiny(n_kv_heads=1, rope_layout="interleaved", tie_embeddings=True, rope_theta=5e5))
    path = save_checkpoint(tmp_path / "llama.npz", model)
    checkpoint = read_checkpoint(path)
    assert checkpoint.config == model.config
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(checkpoint.model_state[name], value)


# --------------------------------------------------------------------------- the key/value cache


@given(config=configs, dtype=dtypes, seed=seeds, data=st.data())
def test_kv_cache_logits_equal_the_full_forward_however_the_tokens_are_fed(config, dtype, seed, data):
    model = random_model(config, dtype, seed % 1000).eval()
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(2, 9))
    full, _ = model.forward(ids)
    cache = LlamaKVCache(model, 2, capacity=9)
    cuts = sorted(data.draw(st.sets(st.integers(1, 8), max_size=4), label="cuts"))
    pieces, start = [], 0
    for stop in [*cuts, 9]:
        if stop - start == 1:
            logits, attention = cache.step(ids[:, start])  # one token per row: the Stepper protocol
            assert attention is None
            pieces.append(logits[:, None])
        else:
            pieces.append(cache.feed(ids[:, start:stop]))
        start = stop
    assert cache.length == 9
    assert_matches("cached logits", np.concatenate(pieces, axis=1), full, dtype)


def test_kv_cache_reorders_rows_as_beam_search_needs():
    model = random_model(tiny()).eval()
    ids = np.random.default_rng(0).integers(0, 11, size=(3, 6))
    cache = LlamaKVCache(model, 3)
    cache.feed(ids[:, :4])
    rows = np.array([2, 2, 0])
    cache.reorder(rows)
    logits, _ = cache.step(ids[rows, 4])
    full, _ = model.forward(ids[rows, :5])
    assert_matches("logits after reorder", logits, full[:, -1], np.float64)


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(4, 4), (4, 2), (4, 1)])
def test_kv_cache_holds_only_the_kv_heads_and_its_memory_is_as_documented(n_heads, n_kv_heads):
    config = tiny(d_model=16, n_heads=n_heads, n_kv_heads=n_kv_heads, n_layers=3, max_len=20)
    model = nt.Llama(config, np.float32, np.random.default_rng(0)).eval()
    cache = LlamaKVCache(model, batch_size=2, capacity=20)
    D = 16 // n_heads
    assert all(kv.keys.shape == kv.values.shape == (2, n_kv_heads, 20, D) for kv in cache.layers)
    assert cache.nbytes == 2 * 3 * 2 * n_kv_heads * 20 * D * 4  # 2 (keys, values) * layers * B * Hkv * N * D * 4 B
    mha = LlamaKVCache(nt.Llama(tiny(d_model=16, n_heads=n_heads, n_kv_heads=n_heads, n_layers=3, max_len=20),
                                np.float32).eval(), 2, 20)  # fmt: skip
    assert mha.nbytes == cache.nbytes * (n_heads // n_kv_heads)  # grouping saves a factor H / Hkv


def test_the_memory_example_of_the_docstring():
    """models/llama.py: default config, float32, one sequence of 128: 256 KiB; 512 KiB with MHA, 128 KiB with MQA."""
    for n_kv_heads, kib in ((2, 256), (4, 512), (1, 128)):
        model = nt.Llama(nt.LlamaConfig(vocab_size=10, n_kv_heads=n_kv_heads), np.float32, np.random.default_rng(0))
        assert LlamaKVCache(model.eval(), 1).nbytes == kib * 1024


@given(seed=seeds, temperature=st.sampled_from([0.0, 0.7, 1.5]), top_k=st.sampled_from([None, 3]))
def test_generate_samples_a_llama_with_and_without_the_cache_alike(seed, temperature, top_k):
    model = random_model(tiny(), seed=seed % 100)
    prompt = np.random.default_rng(seed).integers(0, 11, size=(2, 3))
    cached = generate(model, prompt, 6, temperature, top_k, rng=np.random.default_rng(seed))
    full = generate(model, prompt, 6, temperature, top_k, rng=np.random.default_rng(seed), use_cache=False)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    assert_matches("logits", cached.logits, full.logits, np.float64)
    assert model.training  # the mode is restored


# --------------------------------------------------------------------------- errors that name the argument


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_kv_heads": 3}, "n_kv_heads: expected a divisor of n_heads=4"),
        ({"n_kv_heads": 0}, "n_kv_heads: expected a positive int"),
        ({"d_model": 12, "n_heads": 4}, "n_heads: expected an even head width"),
        ({"d_model": 10, "n_heads": 4}, "n_heads: expected a divisor of d_model=10"),
        ({"rope_layout": "meta"}, "rope_layout: expected one of"),
        ({"rope_theta": 0.0}, "rope_theta: expected a positive float"),
        ({"rms_norm_eps": -1e-6}, "rms_norm_eps: expected a positive float"),
        ({"tie_embeddings": 1}, "tie_embeddings: expected a bool"),
        ({"vocab_size": 0}, "vocab_size: expected a positive int"),
        ({"n_layers": -1}, "n_layers: expected a non-negative int"),
    ],
)
def test_llama_config_rejects_bad_fields_naming_them(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_llama_rejects_bad_ids_dlogits_and_caches_naming_them():
    model = random_model(tiny())
    with pytest.raises(TypeError, match="config: expected a LlamaConfig"):
        nt.Llama(nt.GPTConfig(vocab_size=5))
    with pytest.raises(TypeError, match="ids: expected an integer dtype"):
        model.forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"ids: expected token ids of shape \(B, L\)"):
        model.forward(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 11\)"):
        model.forward(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="ids: expected length L <= max_len=12"):
        model.forward(np.zeros((1, 13), dtype=np.int64))
    logits, cache = model.forward(np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"dlogits: expected shape \(1, 3, 11\) and dtype float64"):
        model.backward(logits[:, :2], cache)
    with pytest.raises(ValueError, match=r"dlogits: expected shape"):
        model.backward(logits.astype(np.float32), cache)
    with pytest.raises(ValueError, match="model: expected eval mode"):
        LlamaKVCache(model, 1)
    model.eval()
    with pytest.raises(ValueError, match="capacity: expected an int in"):
        LlamaKVCache(model, 1, capacity=13)
    kv = LlamaKVCache(model, 2, capacity=4)
    with pytest.raises(ValueError, match="ids: expected batch size 2"):
        kv.feed(np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"token_ids: expected shape \(2,\)"):
        kv.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"token_ids: expected token ids in \[0, 11\)"):
        kv.step(np.array([0, 11]))
    kv.feed(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="exceed the cache's capacity 4"):
        kv.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match=r"rows: expected entries in \[0, 2\)"):
        kv.reorder(np.array([0, 2]))
    with pytest.raises(TypeError, match="model: expected a numpy_transformer GPT or Llama"):
        generate(nt.Linear(2, 2), np.array([[1]]), 1)


def test_llama_ops_and_blocks_reject_bad_shapes_and_dtypes_naming_the_argument():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"weight: expected shape \(4,\)"):
        F.rms_norm_forward(x, np.ones(3))
    with pytest.raises(TypeError, match="weight: expected dtype float64"):
        F.rms_norm_forward(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="eps: expected a positive float"):
        F.rms_norm_forward(x, np.ones(4), eps=0.0)
    with pytest.raises(ValueError, match="x: expected an even head width"):
        F.rotary_embedding_forward(np.ones((2, 3, 5)), np.arange(3))
    with pytest.raises(ValueError, match=r"positions: expected shape \(3,\)"):
        F.rotary_embedding_forward(x, np.arange(4))
    with pytest.raises(TypeError, match="positions: expected an integer dtype"):
        F.rotary_embedding_forward(x, np.arange(3.0))
    with pytest.raises(ValueError, match="layout: expected one of"):
        F.rotary_embedding_forward(x, np.arange(3), layout="meta")
    with pytest.raises(ValueError, match="positions: expected a 1-D array of positions >= 0"):
        F.rotary_embedding_forward(x, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="weight: expected n_heads \\* D rows with an even head width"):
        F.interleaved_to_half_rows(np.ones((6, 4)), 2)
    with pytest.raises(ValueError, match=r"up: expected shape \(2, 3, 4\)"):
        F.swiglu_forward(x, np.ones((2, 3, 5)))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64"):
        F.silu_forward(np.ones(3, np.int64))
    q, k = np.ones((1, 4, 2, 3)), np.ones((1, 3, 2, 3))
    with pytest.raises(ValueError, match="k: expected a number of key/value heads dividing H=4"):
        F.grouped_query_attention_forward(q, k, k)
    with pytest.raises(ValueError, match=r"v: expected shape \(1, 2, 2, 'Dv'\)"):
        F.grouped_query_attention_forward(q, k[:, :2], np.ones((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="mask: expected a shape broadcastable to"):
        F.grouped_query_attention_forward(q, k[:, :2], k[:, :2], mask=np.ones((1, 3, 2, 2), bool))
    with pytest.raises(TypeError, match="mask: expected a bool ndarray"):
        F.grouped_query_attention_forward(q, k[:, :2], k[:, :2], mask=np.ones((2, 2)))
    _, cache = F.grouped_query_attention_forward(q, k[:, :2], k[:, :2])
    with pytest.raises(ValueError, match=r"dout: expected shape \(1, 4, 2, 3\)"):
        F.grouped_query_attention_backward(np.ones((1, 2, 2, 3)), cache)
    with pytest.raises(ValueError, match="n_kv_heads: expected a divisor of n_heads=4"):
        LlamaAttention(8, 4, 3)
    with pytest.raises(ValueError, match="n_heads: expected a head width d_model // n_heads that is even"):
        LlamaAttention(12, 4, 2)
    attn = LlamaAttention(8, 4, 2)
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        attn.forward(np.ones((1, 3, 8), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, L, 8\)"):
        attn.forward(np.ones((1, 3, 6)))
    with pytest.raises(ValueError, match=r"positions: expected shape \(3,\)"):
        attn.forward(np.ones((1, 3, 8)), np.arange(2))
    with pytest.raises(ValueError, match="normalized_shape: expected a positive int"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="in_features: expected a positive int"):
        SwiGLUFeedForward(0, 4)
    with pytest.raises(ValueError, match=r"dout: expected shape \(1, 3, 8\)"):
        layer = LlamaDecoderLayer(8, 4, 2, 6)
        layer.backward(np.ones((1, 2, 8)), layer.forward(np.ones((1, 3, 8)))[1])
