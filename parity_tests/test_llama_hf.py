"""Our Llama against Hugging Face's ``LlamaForCausalLM`` with mapped weights: the built-in check for the decoder.

A small random ``transformers.LlamaForCausalLM`` with grouped-query attention (4 query heads, 2
key/value heads), float64, ``attn_implementation="eager"``, holds the reference weights; they load
into ours through the public key map of ``numpy_transformer.models.llama`` (the same ``nn.Linear``
layouts, other names; for a model in Meta's interleaved RoPE layout the query and key rows are
permuted). Compared: logits, the next-token loss from ``labels``, the gradient of every parameter
under a random upstream gradient, and greedy generation with our key/value cache against
``generate``.

Framework facts found here (transformers 5.24, torch 2.13 CPU): a float64 ``LlamaForCausalLM`` is
only float32-accurate, because three of its steps compute in float32 whatever the model's dtype:

* ``LlamaRMSNorm`` casts its input to float32 (and back after the normalisation);
* ``LlamaRotaryEmbedding`` computes its frequencies and angles in float32 (``.float()``), then
  casts the cosines and sines to the model's dtype;
* ``eager_attention_forward`` takes the softmax with ``dtype=torch.float32``.

So stock Hugging Face agrees with us within the *float32* contract only
(:func:`test_stock_float64_llama_is_only_float32_accurate`). For the float64 contract, those three
steps are made dtype-preserving (the same formulas, no cast) in the model under test; everything
else — the wiring, ``repeat_kv``, ``rotate_half``, the causal mask, the MLP, the tied head, the
loss — is Hugging Face's own. Its ``labels`` loss casts the logits to float32 too (as GPT-2's):
the float64 reference loss is ``F.cross_entropy`` on its float64 logits.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.functional import cross_entropy_forward, rms_norm_forward, rotary_embedding_forward
from numpy_transformer.inference import generate
from numpy_transformer.models.llama import hf_llama_config, hf_llama_key_map, llama_state_from_hf
from numpy_transformer.testing import relative_error, tolerance
from parity_tests.helpers import assert_matches

transformers = pytest.importorskip("transformers")
modeling_llama = pytest.importorskip("transformers.models.llama.modeling_llama")

V, MAX_LEN = 37, 16


def small_config(layout: str = "half", tie: bool = False) -> nt.LlamaConfig:
    return nt.LlamaConfig(
        vocab_size=V, max_len=MAX_LEN, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=24,
        rope_theta=500.0, rope_layout=layout, tie_embeddings=tie,
    )  # fmt: skip


def hf_model(config: nt.LlamaConfig, seed: int = 0):
    """A random ``LlamaForCausalLM`` of ``config``'s architecture in float64, eager attention, eval mode."""
    torch.manual_seed(seed)
    hf_cfg = transformers.LlamaConfig(**hf_llama_config(config), attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(hf_cfg).double().eval()
    with torch.no_grad():
        for p in hf.parameters():  # RMSNorm weights start at one: move everything so that it counts
            p.normal_(0.0, 0.3)
    return hf


def ours_from(hf, config: nt.LlamaConfig) -> nt.Llama:
    ours = nt.Llama(config, np.float64, np.random.default_rng(0)).eval()
    ours.load_state_dict(llama_state_from_hf({k: v.detach().numpy() for k, v in hf.state_dict().items()}, config))
    return ours


# --------------------------------------------------------------------------- the three float32 steps, made float64


def _rms_norm_in_own_dtype(self, hidden_states):
    """``LlamaRMSNorm.forward`` without its cast to float32."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary_in_float64(self, x, position_ids):
    """``LlamaRotaryEmbedding.forward`` (default RoPE) with its frequencies and angles in float64."""
    base = self.config.rope_parameters["rope_theta"]
    dim = self.config.head_dim
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    freqs = position_ids[..., None].double() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _eager_attention_in_own_dtype(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """``eager_attention_forward`` with the softmax in the query's dtype instead of float32."""
    key_states = modeling_llama.repeat_kv(key, module.num_key_value_groups)
    value_states = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


@pytest.fixture
def float64_hf(monkeypatch):
    """Make a model's three float32 steps dtype-preserving (the attention for the test's duration)."""
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", _eager_attention_in_own_dtype)

    def make(hf):
        for module in hf.modules():
            if isinstance(module, modeling_llama.LlamaRMSNorm):
                module.forward = types.MethodType(_rms_norm_in_own_dtype, module)
        hf.model.rotary_emb.forward = types.MethodType(_rotary_in_float64, hf.model.rotary_emb)
        return hf

    return make


# --------------------------------------------------------------------------- logits, loss, every gradient


@pytest.mark.parametrize(("layout", "tie"), [("half", False), ("interleaved", True)])
def test_llama_is_hf_llama_logits_loss_and_every_gradient(float64_hf, layout, tie):
    """GQA 4/2, float64: logits, loss and every parameter gradient within the float64 contract.

    ``interleaved``: our model rotates Meta's pairs (2i, 2i+1), its query and key rows permuted
    from Hugging Face's; the permutation makes it the same function, gradients included.
    """
    config = small_config(layout, tie)
    hf = float64_hf(hf_model(config))
    ours = ours_from(hf, config)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, size=(3, 10))
    ids_t = torch.from_numpy(ids)

    out = hf(input_ids=ids_t, labels=ids_t)  # Hugging Face shifts the labels itself
    dlogits = rng.standard_normal(out.logits.shape)  # a random upstream gradient
    (out.logits * torch.from_numpy(dlogits)).sum().backward()
    with torch.no_grad():
        reference_loss = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].reshape(-1, V), ids_t[:, 1:].reshape(-1)
        )  # float64, from HF's logits

    logits, cache = ours.forward(ids)
    loss, _ = cross_entropy_forward(logits[:, :-1], ids[:, 1:])  # position t predicts token t + 1
    ours.zero_grad()
    ours.backward(dlogits, cache)

    assert_matches("logits", logits, out.logits.detach(), np.float64)
    assert_matches("next-token loss", np.asarray(loss), reference_loss, np.float64)
    assert_matches(
        "transformers' own (float32) loss", np.asarray(loss, np.float32), out.loss.detach().float(), np.float32
    )
    hf_grads = llama_state_from_hf({k: p.grad.numpy() for k, p in hf.named_parameters()}, config)
    grads = dict(ours.named_grads())
    assert sorted(hf_grads) == sorted(grads) == sorted(hf_llama_key_map(config))
    for name, g in hf_grads.items():
        assert_matches(f"d{name}", grads[name], g, np.float64)


def test_greedy_generation_with_our_kv_cache_is_hf_generate(float64_hf):
    config = small_config()
    hf = float64_hf(hf_model(config, seed=3))
    ours = ours_from(hf, config)
    prompt = np.random.default_rng(2).integers(0, V, size=(3, 4))
    theirs = hf.generate(
        input_ids=torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
        max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    result = generate(ours, prompt, 10, temperature=0.0)  # through LlamaKVCache
    np.testing.assert_array_equal(result.tokens, theirs.numpy())
    assert len(set(result.tokens[:, 4:].ravel())) > 1, "a degenerate continuation would prove little"


# --------------------------------------------------------------------------- framework facts


def test_stock_float64_llama_is_only_float32_accurate():
    """Unpatched, HF's float64 Llama is within the float32 contract of ours, and far outside the float64 one."""
    config = small_config()
    hf = hf_model(config)
    ours = ours_from(hf, config)
    ids = np.random.default_rng(1).integers(0, V, size=(3, 10))
    with torch.no_grad():
        theirs = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
    logits, _ = ours.forward(ids)
    assert theirs.dtype == np.float64
    error = relative_error("logits", logits, theirs).error
    assert error <= tolerance("cpu", "float32")
    assert error > 100 * tolerance("cpu", "float64"), f"stock HF now float64-accurate? error {error:.1e}"


def test_hf_rms_norm_computes_in_float32_whatever_the_dtype():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8))
    norm = modeling_llama.LlamaRMSNorm(8, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(rng.standard_normal(8)))
        theirs = norm(torch.from_numpy(x)).numpy()
    weight = norm.weight.detach().numpy()
    ours64, _ = rms_norm_forward(x, weight, 1e-6)
    ours32, _ = rms_norm_forward(x.astype(np.float32), np.ones(8, np.float32), 1e-6)
    assert theirs.dtype == np.float64
    assert_matches("HF RMSNorm vs float32 RMSNorm", theirs, weight * ours32, np.float32)  # float32 accurate ...
    assert relative_error("HF RMSNorm vs float64", theirs, ours64).error > 100 * tolerance("cpu", "float64")  # only


def test_hf_rotate_half_is_our_half_layout_and_its_angles_are_float32():
    """``apply_rotary_pos_emb`` with float64 cos/sin is our ``layout="half"``; HF's own cos/sin are float32 values."""
    rng = np.random.default_rng(0)
    B, H, T, D, theta = 2, 3, 7, 8, 500.0
    q, k = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, H, T, D))
    positions = np.arange(T) + 11
    angles = positions[:, None] * (1.0 / theta ** (np.arange(0, D, 2) / D))[None, :]  # (T, D/2) float64
    cos = torch.from_numpy(np.cos(np.concatenate([angles, angles], axis=-1)))[None]  # (1, T, D)
    sin = torch.from_numpy(np.sin(np.concatenate([angles, angles], axis=-1)))[None]
    q_hf, k_hf = modeling_llama.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), cos, sin)
    assert_matches("q rotated", rotary_embedding_forward(q, positions, theta, "half")[0], q_hf, np.float64)
    assert_matches("k rotated", rotary_embedding_forward(k, positions, theta, "half")[0], k_hf, np.float64)
    interleaved, _ = rotary_embedding_forward(q, positions, theta, "interleaved")
    assert np.abs(interleaved - q_hf.numpy()).max() > 1e-3  # the other layout is another function

    config = transformers.LlamaConfig(hidden_size=D * H, num_attention_heads=H, rope_theta=theta)
    rotary = modeling_llama.LlamaRotaryEmbedding(config).double()
    hf_cos, _ = rotary(torch.zeros(1, dtype=torch.float64), torch.from_numpy(positions)[None])
    assert hf_cos.dtype == torch.float64
    np.testing.assert_array_equal(hf_cos.numpy(), hf_cos.numpy().astype(np.float32).astype(np.float64))
    assert np.abs(hf_cos.numpy() - cos.numpy()).max() > 1e-9
