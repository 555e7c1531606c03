"""The twin models take NumPy inputs: token ids and the NumPy model's ``cache.dropout_masks``.

``twin(src, tgt, cache.dropout_masks)``, as the README shows it, used to raise a TypeError
(NumPy masks) or another one (NumPy ids). Each twin model now converts NumPy arrays once, at
the entry of its ``forward``, to tensors on its own device (integer ids as int64); tensors pass
unchanged. Each test replays the NumPy model's dropout in the twin with nothing but NumPy
arrays and checks the logits within the parity contract.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.testing import relative_error, tolerance
from torch_transformer.bridge import twin_of

README = Path(__file__).resolve().parents[1] / "docs" / "pages" / "transformer.md"  # moved from README.md


def _ids(rng, shape, vocab, dtype=np.int64):
    return rng.integers(1, vocab, size=shape).astype(dtype)  # 0 is pad


def _assert_replayed(name, twin_logits, logits, dtype):
    assert isinstance(twin_logits, torch.Tensor)
    cmp = relative_error(name, twin_logits.detach().cpu().numpy(), logits)
    assert cmp.error <= tolerance("cpu", dtype), cmp.describe()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transformer_twin_replays_numpy_dropout_masks_from_numpy_ids(dtype):
    cfg = nt.TransformerConfig(src_vocab_size=11, tgt_vocab_size=13, d_model=8, n_heads=2, n_encoder_layers=1,
                               n_decoder_layers=1, d_ff=16, dropout=0.3)  # fmt: skip
    model = nt.Transformer(cfg, dtype=dtype, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    src, tgt = _ids(rng, (2, 5), 11), _ids(rng, (2, 4), 13, np.int32)
    src[1, 3:] = 0  # padding
    logits, cache = model.forward(src, tgt, rng=rng)
    assert cache.dropout_masks and all(isinstance(m, np.ndarray) for m in cache.dropout_masks.values())
    twin = twin_of(model)
    assert twin.training
    _assert_replayed("Transformer logits", twin(src, tgt, cache.dropout_masks), logits, dtype)


@pytest.mark.parametrize("head", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification"])
def test_bert_twins_replay_numpy_dropout_masks_from_numpy_ids_masks_and_segments(head):
    dtype = np.float64
    cfg = nt.BertConfig(vocab_size=17, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16,
                        max_position_embeddings=8, dropout=0.3)  # fmt: skip
    model_rng = np.random.default_rng(0)
    model = nt.BertForSequenceClassification(cfg, 3, dtype, model_rng) if "Sequence" in head else (
        getattr(nt, head)(cfg, dtype, rng=model_rng))  # fmt: skip
    rng = np.random.default_rng(2)
    ids = _ids(rng, (2, 6), 17)
    attention_mask = np.ones((2, 6), dtype=np.int64)
    attention_mask[0, 4:] = 0
    types = np.zeros((2, 6), dtype=np.int64)
    types[:, 3:] = 1
    out, cache = model.forward(ids, attention_mask, types, rng=rng)
    masks = (cache if head == "BertModel" else cache.bert).dropout_masks
    if head == "BertForSequenceClassification":
        masks = {**masks, "dropout": cache.drop.keep}
    assert masks
    twin = twin_of(model)
    twin_out = twin(ids, attention_mask, types, dropout_masks=masks)
    if head == "BertModel":
        _assert_replayed("last_hidden_state", twin_out[0], out.last_hidden_state, dtype)
        _assert_replayed("pooler_output", twin_out[1], out.pooler_output, dtype)
    else:
        _assert_replayed(f"{head} logits", twin_out, out, dtype)


def test_gpt_twin_replays_numpy_dropout_masks_from_numpy_ids():
    dtype = np.float32
    cfg = nt.GPTConfig(vocab_size=19, max_len=8, d_model=8, n_heads=2, n_layers=2, d_ff=16, dropout=0.3)
    model = nt.GPT(cfg, dtype=dtype, rng=np.random.default_rng(0))
    rng = np.random.default_rng(3)
    ids = _ids(rng, (3, 6), 19)
    logits, cache = model.forward(ids, rng=rng)
    assert cache.dropout_masks
    _assert_replayed("GPT logits", twin_of(model)(ids, cache.dropout_masks), logits, dtype)


@pytest.mark.parametrize("attention", ["bahdanau", "luong-general"])
def test_rnn_seq2seq_twin_takes_numpy_ids_and_the_empty_mask_dict(attention):
    dtype = np.float64
    cfg = nt.RNNSeq2SeqConfig(src_vocab_size=11, tgt_vocab_size=13, embed_dim=6, hidden_size=8, attention=attention,
                              attn_dim=5)  # fmt: skip
    model = nt.RNNSeq2Seq(cfg, dtype=dtype, rng=np.random.default_rng(0))
    rng = np.random.default_rng(4)
    src, tgt = _ids(rng, (2, 5), 11), _ids(rng, (2, 4), 13)
    src[0, 3:] = 0
    logits, cache = model.forward(src, tgt, rng=rng)
    _assert_replayed("RNNSeq2Seq logits", twin_of(model)(src, tgt, cache.dropout_masks), logits, dtype)


def test_twin_still_takes_tensors_and_converts_uint8_ids_as_ids_not_as_a_boolean_index():
    cfg = nt.GPTConfig(vocab_size=19, max_len=8, d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0.0)
    model = nt.GPT(cfg, rng=np.random.default_rng(0))
    ids = _ids(np.random.default_rng(5), (2, 6), 19)
    logits, _ = model.forward(ids)
    twin = twin_of(model)
    _assert_replayed("tensor ids", twin(torch.from_numpy(ids)), logits, np.float64)
    _assert_replayed("uint8 ids", twin(ids.astype(np.uint8)), logits, np.float64)


def _readme_transformer_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "twin(src, tgt, cache.dropout_masks)" in b]
    return block


def test_readme_transformer_snippet_replays_dropout_in_the_twin_as_written():
    """The README's encoder-decoder block, run as written: the twin, handed the NumPy ids and
    ``cache.dropout_masks``, gives the NumPy logits within the parity contract."""
    namespace: dict = {}
    exec(compile(_readme_transformer_block(), str(README), "exec"), namespace)
    logits, twin_logits = namespace["logits"], namespace["twin_logits"]
    assert namespace["model"].training and namespace["cache"].dropout_masks  # dropout really is on
    _assert_replayed("README twin_logits", twin_logits, logits, np.float64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none found)")
def test_twin_on_cuda_moves_numpy_ids_and_masks_to_its_device():
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = nt.GPTConfig(vocab_size=19, max_len=8, d_model=8, n_heads=2, n_layers=2, d_ff=16, dropout=0.3)
    model = nt.GPT(cfg, dtype=np.float32, rng=np.random.default_rng(0))
    ids = _ids(np.random.default_rng(3), (3, 6), 19)
    logits, cache = model.forward(ids, rng=np.random.default_rng(6))
    twin_logits = twin_of(model, device="cuda")(ids, cache.dropout_masks)
    assert twin_logits.device.type == "cuda"
    cmp = relative_error("GPT logits on CUDA", twin_logits.detach().cpu().numpy(), logits)
    assert cmp.error <= tolerance("cuda", np.float32), cmp.describe()
