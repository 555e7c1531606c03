"""Our GPT against Hugging Face's GPT-2 with mapped weights: the built-in check for the decoder.

With ``activation="gelu_tanh"`` our GPT is GPT-2's architecture: learned positions, pre-LN
causal blocks, a final LayerNorm, the LM head tied to the token embeddings. GPT-2 stores its
projections as ``Conv1D`` (``y = x W + b``, W of shape (in, out)) and packs query, key and
value into one ``c_attn``; the mapping below transposes and splits them. A random
``transformers.GPT2LMHeadModel`` (float64, eager attention) holds the reference weights.
Compared: logits, the shifted next-token loss, and the gradient of every parameter (HF's
gradients mapped the same way as its weights). The loss HF computes from ``labels`` is
float32-accurate only, even in a float64 model: it casts the logits to float32 first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.functional import cross_entropy_backward, cross_entropy_forward
from parity_tests.helpers import assert_matches

transformers = pytest.importorskip("transformers")

V, C, H, LAYERS, MAX_LEN = 37, 16, 4, 2, 12


def gpt2_to_ours(hf: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """GPT-2 names and layouts -> ours (works for weights and for their gradients alike)."""
    ours = {"tok_embed.weight": hf["transformer.wte.weight"], "pos_embed.weight": hf["transformer.wpe.weight"]}
    ours["norm.weight"], ours["norm.bias"] = hf["transformer.ln_f.weight"], hf["transformer.ln_f.bias"]
    for i in range(n_layers):
        h, o = f"transformer.h.{i}.", f"layers.{i}."
        w_qkv, b_qkv = hf[h + "attn.c_attn.weight"], hf[h + "attn.c_attn.bias"]  # (C, 3C), (3C,)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            ours[o + f"self_attn.{name}.weight"] = w_qkv[:, j * C : (j + 1) * C].T  # Conv1D (in, out) -> (out, in)
            ours[o + f"self_attn.{name}.bias"] = b_qkv[j * C : (j + 1) * C]
        for theirs, mine in (
            ("attn.c_proj", "self_attn.out_proj"),
            ("mlp.c_fc", "ff.linear1"),
            ("mlp.c_proj", "ff.linear2"),
        ):
            ours[o + mine + ".weight"] = hf[h + theirs + ".weight"].T
            ours[o + mine + ".bias"] = hf[h + theirs + ".bias"]
        for theirs, mine in (("ln_1", "norm1"), ("ln_2", "norm2")):
            ours[o + mine + ".weight"], ours[o + mine + ".bias"] = hf[h + theirs + ".weight"], hf[h + theirs + ".bias"]
    return {k: np.ascontiguousarray(v) for k, v in ours.items()}


def test_gpt_with_tanh_gelu_is_gpt2_logits_loss_and_every_gradient():
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=MAX_LEN, n_embd=C, n_layer=LAYERS, n_head=H, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, attn_implementation="eager",
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    for p in hf.parameters():  # GPT-2 starts its biases and LayerNorms at 0 / 1: move them so they count
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    cfg = nt.GPTConfig(
        vocab_size=V, max_len=MAX_LEN, d_model=C, n_heads=H, n_layers=LAYERS, d_ff=4 * C, activation="gelu_tanh",
        layer_norm_eps=1e-5,
    )  # fmt: skip
    ours = nt.GPT(cfg, np.float64, np.random.default_rng(0)).eval()
    hf_params = {k: p.detach().numpy() for k, p in hf.named_parameters()}  # lm_head is tied: not listed
    ours.load_state_dict(gpt2_to_ours(hf_params, LAYERS))

    ids = np.random.default_rng(1).integers(0, V, size=(3, 10))
    ids_t = torch.from_numpy(ids)
    out = hf(input_ids=ids_t, labels=ids_t)  # HF shifts the labels itself
    # transformers' causal-LM loss casts the logits to float32 first (seen in 5.24), so in a float64
    # model its loss is only float32-accurate; the float64 reference is cross_entropy on its logits.
    reference_loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids_t[:, 1:].reshape(-1))
    reference_loss.backward()

    logits, cache = ours.forward(ids)
    loss, ce = cross_entropy_forward(logits[:, :-1], ids[:, 1:])  # position t predicts token t + 1
    dlogits = np.zeros_like(logits)
    dlogits[:, :-1] = cross_entropy_backward(np.asarray(1.0), ce)
    ours.backward(dlogits, cache)

    assert_matches("logits", logits, out.logits.detach(), np.float64)
    assert_matches("next-token loss", np.asarray(loss), reference_loss.detach(), np.float64)
    assert_matches(
        "transformers' own (float32) loss", np.asarray(loss, np.float32), out.loss.detach().float(), np.float32
    )
    hf_grads = gpt2_to_ours({k: p.grad.numpy() for k, p in hf.named_parameters()}, LAYERS)
    grads = dict(ours.named_grads())
    assert sorted(hf_grads) == sorted(grads)
    for name, g in hf_grads.items():
        assert_matches(f"d{name}", grads[name], g, np.float64)


def test_exact_gelu_is_not_gpt2():
    """The same weights with the exact-erf GELU give measurably different logits: the activation
    form is part of the architecture, and the comparison above can tell."""
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=MAX_LEN, n_embd=C, n_layer=1, n_head=H, activation_function="gelu_new",
        attn_implementation="eager",
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
    cfg = nt.GPTConfig(vocab_size=V, max_len=MAX_LEN, d_model=C, n_heads=H, n_layers=1, d_ff=4 * C, activation="gelu")
    ours = nt.GPT(cfg, np.float64, np.random.default_rng(0)).eval()
    ours.load_state_dict(gpt2_to_ours({k: p.detach().numpy() for k, p in hf.named_parameters()}, 1))
    ids = np.arange(8)[None, :]
    logits, _ = ours.forward(ids)
    with torch.no_grad():
        theirs = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(logits - theirs).max() > 1e-6
