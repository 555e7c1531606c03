"""Every model takes ``attention="standard" | "flash"`` in its config, with the same numbers.

For each model a tiny config is built twice, once per kernel, with the same parameters; forward
and backward with random upstream gradients in float64 must agree within 1e-12 (relative to
scale) in the outputs and in every parameter gradient -- with a key-padding mask where the model
takes one, causal where it is causal (the flash kernel then skips whole tiles). With attention
dropout in training mode both kernels drop the same weights and agree as well (a whole training
step included); the field survives a checkpoint, and a checkpoint written before the field
existed loads as ``"standard"``.

Shape legend: B batch, T / S target / source length, V vocabulary, C width.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import numpy_transformer as nt
from numpy_transformer.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from numpy_transformer.functional.flash_attention import FlashAttentionCache
from numpy_transformer.functional.softmax import cross_entropy_backward, cross_entropy_forward
from numpy_transformer.models.clip import CLIPModel
from numpy_transformer.optim import Adam
from numpy_transformer.testing import assert_close, tolerance
from numpy_transformer.training.checkpoint import read_checkpoint, save_checkpoint

# Tiling reorders the softmax's sums only: a few ulps in float64 (as test_flash_attention.py).
FLASH_VS_STANDARD_FLOAT64 = 1e-12


def _ids(rng: np.random.Generator, B: int, L: int, V: int, pad: int | None = None, lengths=None) -> np.ndarray:
    """(B, L) ids in [1, V); positions at or after ``lengths[b]`` set to ``pad``."""
    ids = rng.integers(1, V, (B, L))
    if pad is not None:
        ids[np.arange(L)[None, :] >= np.asarray(lengths)[:, None]] = pad
    return ids


def _random_like(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return rng.standard_normal(x.shape).astype(x.dtype)


# Each runner: (config with attention=kind) -> (outputs by name, the model) after one forward and backward
# with upstream gradients drawn from a fixed seed (so both kernels get the same ones).


def _transformer(padded: bool) -> Callable[[str], tuple[dict[str, np.ndarray], nt.Module]]:
    def run(kind: str):
        cfg = nt.TransformerConfig(
            src_vocab_size=11,
            tgt_vocab_size=13,
            d_model=8,
            n_heads=2,
            n_encoder_layers=2,
            n_decoder_layers=2,
            d_ff=16,
            dropout=0.0,
            max_len=16,
            attention=kind,
        )
        model = nt.Transformer(cfg, rng=np.random.default_rng(0))
        rng = np.random.default_rng(1)
        src = _ids(rng, 2, 7, 11, 0 if padded else None, [7, 3])
        tgt = _ids(rng, 2, 6, 13, 0 if padded else None, [4, 6])
        logits, cache = model.forward(src, tgt)
        model.backward(_random_like(rng, logits), cache)
        return {"logits": logits, "memory": cache.memory}, model

    return run


def _gpt(padded: bool):
    def run(kind: str):
        cfg = nt.GPTConfig(
            vocab_size=11,
            max_len=16,
            d_model=8,
            n_heads=2,
            n_layers=2,
            d_ff=16,
            pad_id=0 if padded else None,
            attention=kind,
        )
        model = nt.GPT(cfg, rng=np.random.default_rng(0))
        rng = np.random.default_rng(1)
        ids = _ids(rng, 3, 9, 11, 0 if padded else None, [9, 4, 6])
        if padded:
            ids[2, 0] = 0  # a pad at position 0: that query row sees no key at all (zero output, zero gradient)
        logits, cache = model.forward(ids)
        model.backward(_random_like(rng, logits), cache)
        return {"logits": logits}, model

    return run


def _bert(padded: bool):
    def run(kind: str):
        cfg = nt.BertConfig(
            vocab_size=20,
            hidden_size=8,
            n_layers=2,
            n_heads=2,
            intermediate_size=16,
            max_position_embeddings=16,
            dropout=0.0,
            attention=kind,
        )
        model = nt.BertModel(cfg, rng=np.random.default_rng(0))
        rng = np.random.default_rng(1)
        ids = _ids(rng, 2, 7, 20)
        keep = np.arange(7)[None, :] < np.array([[7], [3]]) if padded else None  # (B, S) 1 at tokens
        out, cache = model.forward(ids, attention_mask=keep)
        model.backward(_random_like(rng, out.last_hidden_state), _random_like(rng, out.pooler_output), cache)
        return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}, model

    return run


def _vit(kind: str):
    cfg = nt.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=2,
        d_model=8,
        n_heads=2,
        n_layers=2,
        d_ff=16,
        num_labels=3,
        attention=kind,
    )
    model = nt.ViT(cfg, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    pixels = rng.standard_normal((2, 2, 8, 8))
    out, cache = model.forward(pixels)
    dpixels = model.backward(_random_like(rng, out.last_hidden_state), _random_like(rng, out.pooler_output), cache)
    return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output, "dpixels": dpixels}, model


def _clip(kind: str):
    cfg = CLIPConfig(
        text=CLIPTextConfig(vocab_size=12, max_len=8, d_model=8, n_heads=2, n_layers=2, d_ff=16, attention=kind),
        vision=CLIPVisionConfig(
            image_size=8, patch_size=4, num_channels=2, d_model=12, n_heads=3, n_layers=2, d_ff=16, attention=kind
        ),
        projection_dim=6,
    )
    model = CLIPModel(cfg, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids = _ids(rng, 3, 6, 11)
    ids[np.arange(3), [5, 2, 4]] = 11  # the end-of-text token (the largest id), padding after it
    pixels = rng.standard_normal((3, 2, 8, 8))
    out, cache = model.forward(ids, pixels, return_loss=True)
    dpixels = model.backward(
        cache,
        dloss=0.7,
        d_logits_per_image=_random_like(rng, out.logits_per_image),
        d_text_embeds=_random_like(rng, out.text_embeds),
        d_image_embeds=_random_like(rng, out.image_embeds),
    )
    return {"logits_per_image": out.logits_per_image, "loss": np.asarray(out.loss), "dpixels": dpixels}, model


def _llama(kind: str):
    cfg = nt.LlamaConfig(
        vocab_size=11, max_len=16, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=12, attention=kind
    )
    model = nt.Llama(cfg, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids = _ids(rng, 2, 9, 11)
    logits, cache = model.forward(ids)
    model.backward(_random_like(rng, logits), cache)
    return {"logits": logits}, model


RUNNERS = {
    "Transformer": _transformer(padded=False),
    "Transformer, padded source and target": _transformer(padded=True),
    "GPT (causal)": _gpt(padded=False),
    "GPT (causal), pad_id": _gpt(padded=True),
    "BERT": _bert(padded=False),
    "BERT, attention_mask": _bert(padded=True),
    "ViT": _vit,
    "CLIP (causal text, vision)": _clip,
    "Llama (causal, grouped-query)": _llama,
}


def _attention_caches(obj: object, seen: set[int] | None = None) -> list[object]:
    """Every FlashAttentionCache reachable from a model's forward cache (to prove the flash path ran)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (np.ndarray, str, int, float, type(None))):
        return []
    seen.add(id(obj))
    if isinstance(obj, FlashAttentionCache):
        return [obj]
    children = (
        [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        if dataclasses.is_dataclass(obj)
        else list(obj)
        if isinstance(obj, (tuple, list))
        else []
    )
    return [c for child in children for c in _attention_caches(child, seen)]


@pytest.mark.parametrize("name", list(RUNNERS))
def test_flash_and_standard_attention_give_the_same_outputs_and_every_parameter_gradient(name):
    outs_s, model_s = RUNNERS[name]("standard")
    outs_f, model_f = RUNNERS[name]("flash")
    flash_layers = [m for m in model_f.modules() if getattr(m, "attention", None) == "flash"]
    assert flash_layers, f"{name}: no attention module of the flash model uses the flash kernel"
    assert not [m for m in model_s.modules() if getattr(m, "attention", None) == "flash"]
    assert model_f.state_dict().keys() == model_s.state_dict().keys()
    for key, p in model_s.state_dict().items():
        np.testing.assert_array_equal(model_f.state_dict()[key], p, err_msg=f"{name}: parameter {key} differs")
    for key, value in outs_s.items():
        assert_close(f"{name}: {key}", outs_f[key], value, FLASH_VS_STANDARD_FLOAT64)
    grads_f = dict(model_f.named_grads())
    grads_s = dict(model_s.named_grads())
    assert grads_f.keys() == grads_s.keys()
    for key, g in grads_s.items():
        assert np.any(g != 0) or key.endswith("k_proj.bias"), f"{name}: grad {key} is all zero: nothing tested"
        assert_close(f"{name}: grad {key}", grads_f[key], g, FLASH_VS_STANDARD_FLOAT64)


def test_the_flash_models_really_run_the_tiled_kernel():
    """The forward caches of a flash GPT hold FlashAttentionCache objects (one per layer), no (T, T) weights."""
    cfg = nt.GPTConfig(vocab_size=11, max_len=16, d_model=8, n_heads=2, n_layers=3, d_ff=16, attention="flash")
    model = nt.GPT(cfg, rng=np.random.default_rng(0))
    _, cache = model.forward(np.random.default_rng(1).integers(0, 11, (2, 9)))
    found = _attention_caches(cache)
    assert len(found) == 3
    assert all(c.lse.shape == (2, 2, 9) for c in found)


@pytest.mark.parametrize("name", ["GPT", "Transformer", "Llama"])
def test_the_twin_reads_a_flash_config_and_matches_the_numpy_flash_model(name):
    """The twin ignores the field (one autograd attention): its logits and every gradient are the flash model's."""
    torch = pytest.importorskip("torch")
    from torch_transformer.bridge import twin_of

    rng = np.random.default_rng(3)
    if name == "GPT":
        model = nt.GPT(
            nt.GPTConfig(
                vocab_size=11, max_len=16, d_model=8, n_heads=2, n_layers=2, d_ff=16, pad_id=0, attention="flash"
            ),
            rng=rng,
        )
        inputs = (_ids(rng, 2, 7, 11, 0, [7, 4]),)
    elif name == "Transformer":
        model = nt.Transformer(
            nt.TransformerConfig(
                src_vocab_size=11,
                tgt_vocab_size=11,
                d_model=8,
                n_heads=2,
                n_encoder_layers=1,
                n_decoder_layers=1,
                d_ff=16,
                dropout=0.0,
                attention="flash",
            ),
            rng=rng,
        )
        inputs = (_ids(rng, 2, 6, 11, 0, [6, 3]), _ids(rng, 2, 5, 11, 0, [5, 2]))
    else:
        model = nt.Llama(
            nt.LlamaConfig(
                vocab_size=11, max_len=16, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=12, attention="flash"
            ),
            rng=rng,
        )
        inputs = (_ids(rng, 2, 7, 11),)
    twin = twin_of(model)
    logits, cache = model.forward(*inputs)
    dlogits = _random_like(rng, logits)
    model.backward(dlogits, cache)
    twin_logits = twin(*(torch.from_numpy(x) for x in inputs))
    (twin_logits * torch.from_numpy(dlogits)).sum().backward()
    tol = tolerance("cpu", np.float64)
    assert_close("logits", twin_logits.detach().numpy(), logits, tol)
    twin_grads = {k: p.grad.numpy() for k, p in twin.named_parameters()}
    for key, g in model.named_grads():
        assert_close(f"grad {key}", twin_grads[key], g, tol)


def _dropout_models(kind: str) -> dict[str, Callable[[], tuple[dict[str, np.ndarray], nt.Module]]]:
    """Models with dropout 0.1 (attention weights included), in training mode: each runner does one
    forward and backward with random upstream gradients, masks drawn from ``default_rng(2)`` (the
    same masks for both kernels: the models draw every mask, the attention's too, before the kernel
    runs) and returns (outputs and the masks used, the model)."""

    def build(make_model):
        def run():
            model = make_model()
            data = np.random.default_rng(1)
            rng = np.random.default_rng(2)
            if isinstance(model, (nt.ViT, nt.BertModel)):  # outputs (B, L, C) and a pooled (B, C) or None
                x = data.standard_normal((2, 1, 4, 4)) if isinstance(model, nt.ViT) else _ids(data, 2, 5, 11)
                both, cache = model.forward(x, rng=rng)
                out, pooled = both.last_hidden_state, both.pooler_output
                model.backward(_random_like(data, out), None if pooled is None else _random_like(data, pooled), cache)
                return {"out": out, **{f"mask {k}": m for k, m in cache.dropout_masks.items()}}, model
            if isinstance(model, nt.Transformer):
                out, cache = model.forward(_ids(data, 2, 5, 11), _ids(data, 2, 6, 11), rng=rng)
            else:
                out, cache = model.forward(_ids(data, 2, 5, 11), rng=rng)
            model.backward(_random_like(data, out), cache)
            return {"out": out, **{f"mask {k}": m for k, m in cache.dropout_masks.items()}}, model

        return run

    common = dict(d_model=8, n_heads=2, d_ff=16, dropout=0.1, attention=kind)
    return {
        "GPT": build(
            lambda: nt.GPT(nt.GPTConfig(vocab_size=11, max_len=8, n_layers=1, **common), rng=np.random.default_rng(0))
        ),
        "Transformer": build(
            lambda: nt.Transformer(
                nt.TransformerConfig(
                    src_vocab_size=11, tgt_vocab_size=11, n_encoder_layers=1, n_decoder_layers=1, **common
                ),
                rng=np.random.default_rng(0),
            )
        ),
        "BERT": build(
            lambda: nt.BertModel(
                nt.BertConfig(
                    vocab_size=11,
                    hidden_size=8,
                    n_layers=1,
                    n_heads=2,
                    intermediate_size=16,
                    max_position_embeddings=8,
                    dropout=0.1,
                    attention=kind,
                ),
                rng=np.random.default_rng(0),
            )
        ),
        "ViT": build(
            lambda: nt.ViT(
                nt.ViTConfig(image_size=4, patch_size=2, num_channels=1, n_layers=1, **common),
                rng=np.random.default_rng(0),
            )
        ),
    }


@pytest.mark.parametrize("name", ["GPT", "Transformer", "BERT", "ViT"])
def test_flash_attention_with_attention_dropout_equals_standard_given_the_same_masks(name):
    """Training mode, dropout 0.1 on the attention weights too: the same masks, outputs and every gradient."""
    outs_s, model_s = _dropout_models("standard")[name]()
    outs_f, model_f = _dropout_models("flash")[name]()
    assert [m for m in model_f.modules() if getattr(m, "attention", None) == "flash"]
    attention_masks = [k for k, m in outs_s.items() if k.startswith("mask") and m.ndim == 4 and not m.all()]
    assert attention_masks, f"{name}: no attention dropout mask was used: nothing tested"
    assert outs_f.keys() == outs_s.keys()
    for key, value in outs_s.items():
        if key.startswith("mask"):
            np.testing.assert_array_equal(outs_f[key], value, err_msg=f"{name}: {key} differs")
        else:
            assert_close(f"{name}: {key}", outs_f[key], value, FLASH_VS_STANDARD_FLOAT64)
    grads_f = dict(model_f.named_grads())
    for key, g in model_s.named_grads():
        assert_close(f"{name}: grad {key}", grads_f[key], g, FLASH_VS_STANDARD_FLOAT64)


def test_a_training_step_with_attention_dropout_is_the_same_with_either_kernel():
    """Forward, cross-entropy, backward and an Adam update of the Transformer, dropout 0.1 everywhere."""
    params, grads = {}, {}
    for kind in ("standard", "flash"):
        cfg = nt.TransformerConfig(
            src_vocab_size=11, tgt_vocab_size=11, d_model=8, n_heads=2, n_encoder_layers=2, n_decoder_layers=2,
            d_ff=16, dropout=0.1, attention=kind,
        )  # fmt: skip
        model = nt.Transformer(cfg, rng=np.random.default_rng(0))
        opt = Adam(model, lr=1e-2)
        data, rng = np.random.default_rng(1), np.random.default_rng(2)
        src, tgt_in, tgt_out = _ids(data, 3, 6, 11), _ids(data, 3, 5, 11), _ids(data, 3, 5, 11)
        logits, cache = model.forward(src, tgt_in, rng=rng)
        _, loss_cache = cross_entropy_forward(logits, tgt_out)
        model.backward(cross_entropy_backward(1.0, loss_cache), cache)
        grads[kind] = {k: g.copy() for k, g in model.named_grads()}
        opt.step()
        params[kind] = model.state_dict()
    for key, g in grads["standard"].items():
        assert_close(f"grad {key}", grads["flash"][key], g, FLASH_VS_STANDARD_FLOAT64)
    for key, p in params["standard"].items():
        if key.endswith("k_proj.bias"):
            # Its gradient is 0 up to rounding (a key bias shifts a whole score row: softmax ignores
            # it), and Adam divides a gradient by its own size: rounding noise becomes a step.
            continue
        assert_close(f"updated {key}", params["flash"][key], p, FLASH_VS_STANDARD_FLOAT64)


def test_flash_attention_with_dropout_is_fine_in_eval_mode():
    cfg = nt.GPTConfig(vocab_size=11, max_len=8, d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0.1)
    ids = np.random.default_rng(1).integers(0, 11, (2, 5))
    standard = nt.GPT(cfg, rng=np.random.default_rng(0)).eval()
    flash = nt.GPT(dataclasses.replace(cfg, attention="flash"), rng=np.random.default_rng(0)).eval()
    assert_close("logits", flash.forward(ids)[0], standard.forward(ids)[0], FLASH_VS_STANDARD_FLOAT64)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: nt.TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, attention=a),
        lambda a: nt.GPTConfig(vocab_size=5, attention=a),
        lambda a: nt.BertConfig(attention=a),
        lambda a: nt.ViTConfig(attention=a),
        lambda a: nt.LlamaConfig(vocab_size=5, attention=a),
        lambda a: CLIPTextConfig(vocab_size=5, attention=a),
        lambda a: CLIPVisionConfig(attention=a),
    ],
)
def test_every_config_defaults_to_standard_and_names_a_bad_attention_kind(make):
    assert make("standard").attention == "standard"
    assert make("flash").attention == "flash"
    with pytest.raises(ValueError, match=r"attention: expected one of \('standard', 'flash'\), got 'fast'"):
        make("fast")
    with pytest.raises(ValueError, match="attention: expected one of"):
        make(None)


# --------------------------------------------------------------------------- checkpoints


CHECKPOINT_MODELS = {
    "GPT": lambda a: nt.GPT(
        nt.GPTConfig(vocab_size=7, max_len=8, d_model=8, n_heads=2, n_layers=1, d_ff=8, attention=a)
    ),
    "Transformer": lambda a: nt.Transformer(
        nt.TransformerConfig(
            src_vocab_size=7,
            tgt_vocab_size=7,
            d_model=8,
            n_heads=2,
            n_encoder_layers=1,
            n_decoder_layers=1,
            d_ff=8,
            max_len=8,
            attention=a,
        )
    ),
    "Llama": lambda a: nt.Llama(
        nt.LlamaConfig(vocab_size=7, max_len=8, d_model=8, n_heads=2, n_kv_heads=1, n_layers=1, d_ff=8, attention=a)
    ),
    "ViT": lambda a: nt.ViTForImageClassification(
        nt.ViTConfig(image_size=4, patch_size=2, num_channels=1, d_model=8, n_heads=2, n_layers=1, d_ff=8, attention=a)
    ),
    "BERT": lambda a: nt.BertModel(
        nt.BertConfig(
            vocab_size=7,
            hidden_size=8,
            n_layers=1,
            n_heads=2,
            intermediate_size=8,
            max_position_embeddings=8,
            attention=a,
        )
    ),
    "CLIP": lambda a: CLIPModel(
        CLIPConfig(
            text=CLIPTextConfig(vocab_size=9, max_len=8, d_model=8, n_heads=2, n_layers=1, d_ff=8, attention=a),
            vision=CLIPVisionConfig(
                image_size=4, patch_size=2, num_channels=1, d_model=8, n_heads=2, n_layers=1, d_ff=8, attention=a
            ),
            projection_dim=4,
        )
    ),
}


def _drop_field_from_meta(path: Path, field: str) -> None:
    """Rewrite ``path`` as a file written before ``config.<field>`` existed."""
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    for config in (meta["config"], *(v for v in meta["config"].values() if isinstance(v, dict))):  # CLIP's towers
        config.pop(field, None)
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)
    with zipfile.ZipFile(path) as z:
        assert f'"{field}"' not in str(np.load(z.open("meta.npy")))


@pytest.mark.parametrize("name", list(CHECKPOINT_MODELS))
def test_a_checkpoint_keeps_the_attention_field_and_an_old_one_without_it_loads_as_standard(name, tmp_path):
    model = CHECKPOINT_MODELS[name]("flash")
    path = save_checkpoint(tmp_path / "flash.npz", model)
    assert read_checkpoint(path).config == model.config  # attention="flash" included (CLIP: in both towers)
    old = save_checkpoint(tmp_path / "old.npz", CHECKPOINT_MODELS[name]("flash"))
    _drop_field_from_meta(old, "attention")
    config = read_checkpoint(old).config
    configs = (config.text, config.vision) if name == "CLIP" else (config,)
    assert all(c.attention == "standard" for c in configs)
