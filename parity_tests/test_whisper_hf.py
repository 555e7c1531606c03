"""Our Whisper against Hugging Face's ``WhisperForConditionalGeneration``, with mapped weights (random small config).

A small random ``transformers.WhisperConfig`` (float64, eager attention, built offline) holds the reference
weights; ``numpy_transformer.applications.whisper_weights`` renames them to ours. Compared within the float64
contract: the encoder output, the logits, the loss Hugging Face computes from ``labels`` (with ``-100``
positions), the gradient of the log-mel input and of every parameter (our hand-written backward against HF's
autograd, under random upstream gradients). Unlike HF's ViT, HF's eager Whisper attention keeps the softmax in
the input dtype (transformers 5.24), so the stock ``"eager"`` path runs in float64 unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.applications.pretrained import PretrainedLoadError
from numpy_transformer.applications.whisper_weights import (
    WHISPER_HF_POSITIONS,
    WHISPER_HF_TIED,
    whisper_config_to_hf,
    whisper_hf_key_map,
    whisper_state_dict_from_hf,
    whisper_state_dict_to_hf,
)
from numpy_transformer.config import WhisperConfig
from numpy_transformer.models.whisper import WhisperForConditionalGeneration, whisper_sinusoids
from parity_tests.helpers import assert_matches

transformers = pytest.importorskip("transformers")

B, T = 2, 5


def _configs(activation="gelu"):
    ours = WhisperConfig(
        vocab_size=40, num_mel_bins=6, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=32, max_source_positions=5,
        max_target_positions=9, activation=activation, decoder_start_token_id=38, eos_token_id=39,
    )  # fmt: skip
    return ours, transformers.WhisperConfig(**whisper_config_to_hf(ours), attn_implementation="eager")


def _hf_model(hf_cfg, seed=0):
    torch.manual_seed(seed)
    hf = transformers.WhisperForConditionalGeneration(hf_cfg).double().eval()
    with torch.no_grad():  # HF starts biases and LayerNorms at 0 / 1: move every trained parameter so each one counts
        for p in hf.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return hf


def _ours_from(hf, cfg):
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    ours_state, positions = whisper_state_dict_from_hf(state, cfg)
    model = WhisperForConditionalGeneration(cfg, np.float64, np.random.default_rng(0))
    model.load_state_dict(ours_state)
    model.encoder.set_positions(positions)
    key_map = whisper_hf_key_map(cfg)
    params = dict(hf.named_parameters())
    by_ours = {key_map[k]: p for k, p in params.items() if k in key_map}
    assert set(by_ours) == {n for n, _ in model.named_parameters()}, "the key map must cover both sides exactly"
    assert set(params) - set(key_map) == {WHISPER_HF_POSITIONS}, "only the frozen positions are not ours"
    return model, by_ours


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_whisper_matches_hf_encoder_logits_loss_and_every_gradient(activation):
    cfg, hf_cfg = _configs(activation)
    hf = _hf_model(hf_cfg)
    model, by_ours = _ours_from(hf, cfg)
    rng = np.random.default_rng(1)
    mel = rng.standard_normal((B, cfg.num_mel_bins, cfg.n_frames))
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    labels = rng.integers(0, cfg.vocab_size, (B, T))
    labels[0, -2:] = -100  # not scored: HF's ignore_index
    mel_t = torch.from_numpy(mel.copy()).requires_grad_(True)
    out_hf = hf(input_features=mel_t, decoder_input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels))
    out, cache = model.forward(mel, ids, labels)
    assert_matches("encoder_last_hidden_state", out.encoder_last_hidden_state, out_hf.encoder_last_hidden_state,
                   np.float64)  # fmt: skip
    assert_matches("logits", out.logits, out_hf.logits, np.float64)
    assert_matches("loss", out.loss, out_hf.loss, np.float64)
    # random upstream gradients of the logits and of the loss together, never all-ones
    dlogits = rng.standard_normal(out.logits.shape)
    dloss = float(rng.standard_normal())
    (out_hf.logits * torch.from_numpy(dlogits)).sum().add(dloss * out_hf.loss).backward()
    model.zero_grad()
    dmel = model.backward(dlogits, cache) + model.backward(None, cache, dloss=dloss)  # grads accumulate
    assert_matches("d input_features", dmel, mel_t.grad, np.float64)
    for name, grad in model.named_grads():
        assert_matches(f"d{name} (vs HF autograd)", grad, by_ours[name].grad, np.float64)


def test_whisper_input_gradient_matches_hf():
    cfg, hf_cfg = _configs()
    hf = _hf_model(hf_cfg, seed=3)
    model, _ = _ours_from(hf, cfg)
    rng = np.random.default_rng(4)
    mel = rng.standard_normal((B, cfg.num_mel_bins, cfg.n_frames))
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    mel_t = torch.from_numpy(mel.copy()).requires_grad_(True)
    logits_hf = hf(input_features=mel_t, decoder_input_ids=torch.from_numpy(ids)).logits
    out, cache = model.forward(mel, ids)
    dlogits = rng.standard_normal(out.logits.shape)
    (logits_hf * torch.from_numpy(dlogits)).sum().backward()
    assert_matches("d input_features", model.backward(dlogits, cache), mel_t.grad, np.float64)


def test_hf_encoder_positions_are_whisper_sinusoids_and_state_dict_round_trips():
    cfg, hf_cfg = _configs()
    hf = _hf_model(hf_cfg)
    hf_positions = hf.model.encoder.embed_positions.weight.detach().numpy()
    # HF computes its table in float32 (``torch.arange`` and ``exp`` before ``.double()``): float32-close only,
    # which is why the comparisons above load HF's own table into ours.
    ours = whisper_sinusoids(cfg.max_source_positions, cfg.d_model)
    assert_matches("HF's encoder positions (float32-made)", ours, hf_positions, np.float32)
    assert np.abs(ours - hf_positions).max() > 1e-10, "HF's table is no longer float32-made: tighten this test"
    model, _ = _ours_from(hf, cfg)
    back = whisper_state_dict_to_hf(model)
    for key, value in hf.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    assert back[WHISPER_HF_TIED] is back["model.decoder.embed_tokens.weight"]


def test_whisper_state_dict_from_hf_names_a_bad_key():
    cfg, hf_cfg = _configs()
    state = {k: v.numpy() for k, v in _hf_model(hf_cfg).state_dict().items()}
    with pytest.raises(PretrainedLoadError, match=r"model\.encoder\.conv1\.weight.*expected shape"):
        whisper_state_dict_from_hf({**state, "model.encoder.conv1.weight": np.zeros((1, 2, 3))}, cfg)
    with pytest.raises(PretrainedLoadError, match="not a WhisperForConditionalGeneration parameter"):
        whisper_state_dict_from_hf({**state, "model.extra.weight": np.zeros(1)}, cfg)
    del state["model.decoder.layer_norm.bias"]
    with pytest.raises(PretrainedLoadError, match="missing 1 parameter"):
        whisper_state_dict_from_hf(state, cfg)


def test_whisper_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="encoder_attention_heads"):
        WhisperConfig(d_model=10, encoder_attention_heads=3)
    with pytest.raises(ValueError, match="eos_token_id"):
        WhisperConfig(vocab_size=100, decoder_start_token_id=5, eos_token_id=100)
    assert nt is not None
