"""Bad input gives a clear ``TypeError`` / ``ValueError`` that names the argument.

DESIGN.md: "never a broadcasting accident deep inside". Each case calls one public op or
module with one thing wrong and checks the error type and that the message starts with
the argument's name (``"x: expected ..."``). Cases are ``(id, call, error type, pattern)``.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_transformer as nt
from numpy_transformer.functional import (
    causal_mask,
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    log_softmax_backward,
    log_softmax_forward,
    padding_mask,
    relu_backward,
    relu_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
    sinusoidal_positional_encoding,
    softmax_backward,
    softmax_forward,
)

RNG = np.random.default_rng(0)


def arr(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


W = arr(4, 3)  # a (out=4, in=3) Linear weight
C = 5
LN_W, LN_B = arr(C), arr(C)
Q, K, V = arr(2, 3, 4), arr(2, 5, 4), arr(2, 5, 6)  # (..., T, D), (..., S, D), (..., S, Dv)
EMB = arr(6, 3)  # (V, C)


# Each case: (id, zero-argument call, expected error type, regex the message must match).
CASES = [
    # ---- shapes
    ("linear x last dim != in_features", lambda: linear_forward(arr(2, 5), W), ValueError, r"^x:"),
    ("linear weight not 2-D", lambda: linear_forward(arr(2, 3), arr(4, 3, 1)), ValueError, r"^weight:"),
    ("linear bias shape", lambda: linear_forward(arr(2, 3), W, arr(3)), ValueError, r"^bias:"),
    ("layer_norm weight shape", lambda: layer_norm_forward(arr(2, C), arr(C + 1), LN_B), ValueError, r"^weight:"),
    ("layer_norm bias shape", lambda: layer_norm_forward(arr(2, C), LN_W, arr(1, C)), ValueError, r"^bias:"),
    ("layer_norm eps <= 0", lambda: layer_norm_forward(arr(2, C), LN_W, LN_B, eps=0.0), ValueError, r"^eps:"),
    (
        "attention k width != q width",
        lambda: scaled_dot_product_attention_forward(Q, arr(2, 5, 3), V),
        ValueError,
        r"^k:",
    ),
    (
        "attention k leading dims != q",
        lambda: scaled_dot_product_attention_forward(Q, arr(3, 5, 4), arr(3, 5, 6)),
        ValueError,
        r"^k:",
    ),
    (
        "attention v length != k length",
        lambda: scaled_dot_product_attention_forward(Q, K, arr(2, 4, 6)),
        ValueError,
        r"^v:",
    ),
    (
        "attention mask not broadcastable",
        lambda: scaled_dot_product_attention_forward(Q, K, V, mask=np.ones((3, 4), dtype=bool)),
        ValueError,
        r"^mask:",
    ),
    (
        "attention mask with extra dims",
        lambda: scaled_dot_product_attention_forward(Q, K, V, mask=np.ones((1, 1, 3, 5), dtype=bool)),
        ValueError,
        r"^mask:",
    ),
    (
        "attention dropout_mask shape",
        lambda: scaled_dot_product_attention_forward(
            Q, K, V, dropout_p=0.5, dropout_mask=np.ones((2, 3, 4), dtype=bool)
        ),
        ValueError,
        r"^dropout_mask:",
    ),
    ("cross_entropy logits 1-D", lambda: cross_entropy_forward(arr(5), np.array([1])), ValueError, r"^logits:"),
    (
        "cross_entropy targets shape",
        lambda: cross_entropy_forward(arr(3, 5), np.array([1, 2])),
        ValueError,
        r"^targets:",
    ),
    ("embedding weight not 2-D", lambda: embedding_forward(np.array([0, 1]), arr(6)), ValueError, r"^weight:"),
    (
        "dropout mask shape",
        lambda: dropout_forward(arr(2, 3), 0.5, mask=np.ones((3, 2), dtype=bool)),
        ValueError,
        r"^mask:",
    ),
    ("padding_mask ids not 2-D", lambda: padding_mask(np.array([1, 0]), 0), ValueError, r"^ids:"),
    ("causal_mask negative T", lambda: causal_mask(-1), ValueError, r"^T:"),
    ("causal_mask float S", lambda: causal_mask(3, 2.0), ValueError, r"^S:"),
    ("positional encoding d_model 0", lambda: sinusoidal_positional_encoding(4, 0), ValueError, r"^d_model:"),
    ("positional encoding length -1", lambda: sinusoidal_positional_encoding(-1, 4), ValueError, r"^length:"),
    # ---- mask dtype
    (
        "attention mask int dtype",
        lambda: scaled_dot_product_attention_forward(Q, K, V, mask=np.ones((3, 5), dtype=np.int64)),
        TypeError,
        r"^mask:",
    ),
    (
        "attention mask float dtype",
        lambda: scaled_dot_product_attention_forward(Q, K, V, mask=np.zeros((3, 5))),
        TypeError,
        r"^mask:",
    ),
    (
        "attention mask python list",
        lambda: scaled_dot_product_attention_forward(Q, K, V, mask=[[True] * 5] * 3),
        TypeError,
        r"^mask:",
    ),
    (
        "attention dropout_mask float",
        lambda: scaled_dot_product_attention_forward(Q, K, V, dropout_p=0.5, dropout_mask=np.ones((2, 3, 5))),
        TypeError,
        r"^dropout_mask:",
    ),
    ("dropout mask float", lambda: dropout_forward(arr(2, 3), 0.5, mask=np.ones((2, 3))), TypeError, r"^mask:"),
    # ---- int / float16 inputs
    ("softmax int x", lambda: softmax_forward(np.arange(6).reshape(2, 3)), TypeError, r"^x:"),
    ("softmax float16 x", lambda: softmax_forward(arr(2, 3, dtype=np.float16)), TypeError, r"^x:"),
    ("softmax list x", lambda: softmax_forward([[1.0, 2.0]]), TypeError, r"^x:"),
    ("log_softmax float16 x", lambda: log_softmax_forward(arr(2, 3, dtype=np.float16)), TypeError, r"^x:"),
    ("relu int x", lambda: relu_forward(np.arange(3)), TypeError, r"^x:"),
    ("gelu float16 x", lambda: gelu_forward(arr(3, dtype=np.float16)), TypeError, r"^x:"),
    ("dropout int x", lambda: dropout_forward(np.arange(3), 0.0), TypeError, r"^x:"),
    ("linear float16 x", lambda: linear_forward(arr(2, 3, dtype=np.float16), W), TypeError, r"^x:"),
    ("linear int weight", lambda: linear_forward(arr(2, 3), np.ones((4, 3), dtype=np.int64)), TypeError, r"^weight:"),
    ("layer_norm int x", lambda: layer_norm_forward(np.ones((2, C), dtype=np.int32), LN_W, LN_B), TypeError, r"^x:"),
    (
        "attention float16 q",
        lambda: scaled_dot_product_attention_forward(Q.astype(np.float16), K, V),
        TypeError,
        r"^q:",
    ),
    (
        "attention int v",
        lambda: scaled_dot_product_attention_forward(Q, K, np.ones((2, 5, 6), dtype=np.int64)),
        TypeError,
        r"^v:",
    ),
    (
        "cross_entropy int logits",
        lambda: cross_entropy_forward(np.ones((3, 5), dtype=np.int64), np.array([0, 1, 2])),
        TypeError,
        r"^logits:",
    ),
    (
        "cross_entropy float targets",
        lambda: cross_entropy_forward(arr(3, 5), np.array([0.0, 1.0, 2.0])),
        TypeError,
        r"^targets:",
    ),
    ("embedding float ids", lambda: embedding_forward(np.array([0.0, 1.0]), EMB), TypeError, r"^ids:"),
    (
        "embedding float16 weight",
        lambda: embedding_forward(np.array([0, 1]), EMB.astype(np.float16)),
        TypeError,
        r"^weight:",
    ),
    (
        "positional encoding float16",
        lambda: sinusoidal_positional_encoding(4, 4, dtype=np.float16),
        TypeError,
        r"^dtype:",
    ),
    # ---- mixed float32 / float64
    ("linear x f32, weight f64", lambda: linear_forward(arr(2, 3, dtype=np.float32), W), TypeError, r"^weight:"),
    ("linear bias f32", lambda: linear_forward(arr(2, 3), W, arr(4, dtype=np.float32)), TypeError, r"^bias:"),
    (
        "layer_norm weight f32",
        lambda: layer_norm_forward(arr(2, C), LN_W.astype(np.float32), LN_B),
        TypeError,
        r"^weight:",
    ),
    ("attention k f32", lambda: scaled_dot_product_attention_forward(Q, K.astype(np.float32), V), TypeError, r"^k:"),
    ("attention v f32", lambda: scaled_dot_product_attention_forward(Q, K, V.astype(np.float32)), TypeError, r"^v:"),
    # ---- ids out of range
    ("embedding id negative", lambda: embedding_forward(np.array([0, -1]), EMB), ValueError, r"^ids:"),
    ("embedding id == V", lambda: embedding_forward(np.array([[0, 6]]), EMB), ValueError, r"^ids:"),
    (
        "embedding padding_idx == V",
        lambda: embedding_forward(np.array([0]), EMB, padding_idx=6),
        ValueError,
        r"^padding_idx:",
    ),
    (
        "cross_entropy target negative",
        lambda: cross_entropy_forward(arr(3, 5), np.array([0, -1, 2])),
        ValueError,
        r"^targets:",
    ),
    (
        "cross_entropy target == V",
        lambda: cross_entropy_forward(arr(2, 3, 5), np.array([[0, 5, 2], [1, 1, 1]])),
        ValueError,
        r"^targets:",
    ),
    (
        "cross_entropy label_smoothing 1.5",
        lambda: cross_entropy_forward(arr(3, 5), np.array([0, 1, 2]), label_smoothing=1.5),
        ValueError,
        r"^label_smoothing:",
    ),
    # ---- dropout probabilities and randomness
    ("dropout p = 1.0", lambda: dropout_forward(arr(2, 3), 1.0, rng=RNG), ValueError, r"^p:"),
    ("dropout p = -0.1", lambda: dropout_forward(arr(2, 3), -0.1, rng=RNG), ValueError, r"^p:"),
    ("dropout p = 1.5", lambda: dropout_forward(arr(2, 3), 1.5, rng=RNG), ValueError, r"^p:"),
    ("dropout p = 1.0 in eval mode", lambda: dropout_forward(arr(2, 3), 1.0, training=False), ValueError, r"^p:"),
    ("Dropout module p = 1.0", lambda: nt.Dropout(1.0), ValueError, r"^p:"),
    ("Dropout module p = -0.1", lambda: nt.Dropout(-0.1), ValueError, r"^p:"),
    (
        "attention dropout_p = 1.0",
        lambda: scaled_dot_product_attention_forward(Q, K, V, dropout_p=1.0),
        ValueError,
        r"^dropout_p:",
    ),
    ("MultiHeadAttention dropout = 1.5", lambda: nt.MultiHeadAttention(4, 2, dropout=1.5), ValueError, r"^dropout:"),
    ("dropout training, p > 0, no rng, no mask", lambda: dropout_forward(arr(2, 3), 0.5), TypeError, r"^rng:"),
    (
        "attention dropout, no rng, no mask",
        lambda: scaled_dot_product_attention_forward(Q, K, V, dropout_p=0.5),
        TypeError,
        r"^rng:",
    ),
    ("Dropout module training, no rng", lambda: nt.Dropout(0.5).forward(arr(2, 3)), TypeError, r"^rng:"),
    # ---- other arguments
    ("gelu approximate='foo'", lambda: gelu_forward(arr(3), approximate="foo"), ValueError, r"^approximate:"),
    ("softmax axis 2 for 2-D x", lambda: softmax_forward(arr(2, 3), axis=2), ValueError, r"^axis:"),
    ("softmax axis -3 for 2-D x", lambda: softmax_forward(arr(2, 3), axis=-3), ValueError, r"^axis:"),
    ("softmax axis float", lambda: softmax_forward(arr(2, 3), axis=1.0), ValueError, r"^axis:"),
    ("log_softmax axis out of range", lambda: log_softmax_forward(arr(2, 3), axis=5), ValueError, r"^axis:"),
    # ---- modules
    ("MultiHeadAttention(d_model=10, n_heads=3)", lambda: nt.MultiHeadAttention(10, 3), ValueError, r"^n_heads:"),
    ("MultiHeadAttention n_heads=0", lambda: nt.MultiHeadAttention(8, 0), ValueError, r"^n_heads:"),
    ("Linear in_features=0", lambda: nt.Linear(0, 3), ValueError, r"^in_features:"),
    ("Linear float16 dtype", lambda: nt.Linear(2, 3, dtype=np.float16), TypeError, r"^dtype:"),
    ("Linear rng not a Generator", lambda: nt.Linear(2, 3, rng=0), TypeError, r"^rng:"),
    ("Embedding padding_idx out of range", lambda: nt.Embedding(5, 3, padding_idx=5), ValueError, r"^padding_idx:"),
    ("LayerNorm int dtype", lambda: nt.LayerNorm(4, dtype=np.int64), TypeError, r"^dtype:"),
    ("FeedForward activation 'tanh'", lambda: nt.FeedForward(4, 8, activation="tanh"), ValueError, r"^activation:"),
    (
        "Linear module f32 input into f64 weights",
        lambda: nt.Linear(3, 2, rng=RNG).forward(arr(2, 3, dtype=np.float32)),
        TypeError,
        r"^weight:",
    ),
    (
        "MultiHeadAttention query width",
        lambda: nt.MultiHeadAttention(4, 2, rng=RNG).forward(arr(1, 3, 5), arr(1, 3, 4), arr(1, 3, 4)),
        ValueError,
        r"^query:",
    ),
    (
        "MultiHeadAttention query 2-D",
        lambda: nt.MultiHeadAttention(4, 2, rng=RNG).forward(arr(3, 4), arr(1, 3, 4), arr(1, 3, 4)),
        ValueError,
        r"^query:",
    ),
    (
        "MultiHeadAttention key/value length differ",
        lambda: nt.MultiHeadAttention(4, 2, rng=RNG).forward(arr(1, 3, 4), arr(1, 3, 4), arr(1, 2, 4)),
        ValueError,
        r"^key, value:",
    ),
    (
        "MultiHeadAttention int key",
        lambda: nt.MultiHeadAttention(4, 2, rng=RNG).forward(
            arr(1, 3, 4), np.ones((1, 3, 4), dtype=np.int64), arr(1, 3, 4)
        ),
        TypeError,
        r"^key:",
    ),
    (
        "MultiHeadAttention mask not broadcastable",
        lambda: nt.MultiHeadAttention(4, 2, rng=RNG).forward(
            arr(2, 3, 4), arr(2, 5, 4), arr(2, 5, 4), mask=np.ones((3, 1, 1, 5), dtype=bool)
        ),
        ValueError,
        r"^mask:",
    ),
]


@pytest.mark.parametrize(("call", "error", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_the_documented_error_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# --------------------------------------------------------------------------- degenerate sizes, loose arguments
#
# Each used to fail deep inside NumPy (a zero-size reduction, ZeroDivisionError, IndexError) or to
# pass silently (scale=nan gave NaN, eps=inf gave zeros, is_causal="no" was truthy). Every
# message names the argument, says what was expected and shows what was given. TypeError for a
# value of the wrong type, ValueError for a wrong value of the right type (sizes, eps and
# probabilities keep their family's ValueError: checks.py explains the two families).

K0, V0 = arr(2, 0, 4), arr(2, 0, 6)  # S = 0 keys and values
MHA = nt.MultiHeadAttention(4, 2, rng=np.random.default_rng(1))

DEGENERATE_CASES = [
    # ---- degenerate sizes
    (
        "attention S = 0",
        lambda: scaled_dot_product_attention_forward(Q, K0, V0),
        ValueError,
        r"^k: expected .*S >= 1.*\(2, 0, 4\)",
    ),
    (
        "attention D = 0",
        lambda: scaled_dot_product_attention_forward(arr(2, 3, 0), arr(2, 5, 0), V),
        ValueError,
        r"^q: expected .*D >= 1.*\(2, 3, 0\)",
    ),
    (
        "attention D = 0 with an explicit scale",
        lambda: scaled_dot_product_attention_forward(arr(2, 3, 0), arr(2, 5, 0), V, scale=1.0),
        ValueError,
        r"^q: expected .*D >= 1",
    ),
    (
        "MultiHeadAttention S = 0",
        lambda: MHA.forward(arr(1, 3, 4), arr(1, 0, 4), arr(1, 0, 4)),
        ValueError,
        r"^key: expected .*S >= 1.*\(1, 0, 4\)",
    ),
    (
        "softmax zero-size axis",
        lambda: softmax_forward(arr(2, 0)),
        ValueError,
        r"^x: expected axis -1 .*size >= 1.*\(2, 0\)",
    ),
    ("softmax zero-size axis 0", lambda: softmax_forward(arr(0, 3), axis=0), ValueError, r"^x: expected axis 0 "),
    ("log_softmax zero-size axis", lambda: log_softmax_forward(arr(3, 0)), ValueError, r"^x: expected axis -1 "),
    (
        "cross_entropy V = 0",
        lambda: cross_entropy_forward(arr(2, 0), np.array([0, 0])),
        ValueError,
        r"^logits: expected axis -1 \(classes V\) to have size >= 1, got shape \(2, 0\)",
    ),
    (
        "cross_entropy V = 0, (B, T, V)",
        lambda: cross_entropy_forward(arr(2, 3, 0), np.zeros((2, 3), dtype=np.int64)),
        ValueError,
        r"^logits: expected axis -1 \(classes V\) to have size >= 1, got shape \(2, 3, 0\)",
    ),
    # ---- loose arguments
    (
        "attention scale = nan",
        lambda: scaled_dot_product_attention_forward(Q, K, V, scale=float("nan")),
        ValueError,
        r"^scale: expected a finite number, got nan",
    ),
    (
        "attention scale = inf",
        lambda: scaled_dot_product_attention_forward(Q, K, V, scale=np.inf),
        ValueError,
        r"^scale: expected a finite number, got inf",
    ),
    (
        "attention scale = 0",
        lambda: scaled_dot_product_attention_forward(Q, K, V, scale=0.0),
        ValueError,
        r"^scale: expected a number > 0, got 0.0",
    ),
    (
        "attention scale = -1",
        lambda: scaled_dot_product_attention_forward(Q, K, V, scale=-1),
        ValueError,
        r"^scale: expected a number > 0, got -1.0",
    ),
    (
        "attention scale = 'x'",
        lambda: scaled_dot_product_attention_forward(Q, K, V, scale="x"),
        TypeError,
        r"^scale: expected a real number, got str 'x'",
    ),
    (
        "attention scale = True",
        lambda: scaled_dot_product_attention_forward(Q, K, V, scale=True),
        TypeError,
        r"^scale: expected a real number, got bool",
    ),
    (
        "layer_norm eps = inf",
        lambda: layer_norm_forward(arr(2, C), LN_W, LN_B, eps=np.inf),
        ValueError,
        r"^eps: expected a positive float \(finite, > 0\), got inf",
    ),
    (
        "layer_norm eps = nan",
        lambda: layer_norm_forward(arr(2, C), LN_W, LN_B, eps=float("nan")),
        ValueError,
        r"^eps: expected a positive float \(finite, > 0\), got nan",
    ),
    (
        "LayerNorm module eps = inf",
        lambda: nt.LayerNorm(C, eps=np.inf).forward(arr(2, C)),
        ValueError,
        r"^eps: expected a positive float \(finite, > 0\), got inf",
    ),
    (
        "LayerNorm module eps = inf, caught when built",
        lambda: nt.LayerNorm(C, eps=np.inf),
        ValueError,
        r"^eps: expected a positive float \(finite, > 0\), got inf",
    ),
    (
        "Embedding module padding_idx = 1.5",
        lambda: nt.Embedding(5, 3, padding_idx=1.5),
        TypeError,
        r"^padding_idx: expected an integer, got float 1.5",
    ),
    (
        "Embedding module padding_idx = True",
        lambda: nt.Embedding(5, 3, padding_idx=True),
        TypeError,
        r"^padding_idx: expected an integer, got bool True",
    ),
    (
        "attention is_causal = 'no'",
        lambda: scaled_dot_product_attention_forward(Q, K, V, is_causal="no"),
        TypeError,
        r"^is_causal: expected a bool, got str 'no'",
    ),
    (
        "attention is_causal = 1",
        lambda: scaled_dot_product_attention_forward(Q, K, V, is_causal=1),
        TypeError,
        r"^is_causal: expected a bool, got int 1",
    ),
    (
        "MultiHeadAttention is_causal = 'no'",
        lambda: MHA.forward(arr(1, 3, 4), arr(1, 3, 4), arr(1, 3, 4), is_causal="no"),
        TypeError,
        r"^is_causal: expected a bool, got str 'no'",
    ),
    (
        "cross_entropy ignore_index = 'x'",
        lambda: cross_entropy_forward(arr(3, 5), np.array([0, 1, 2]), ignore_index="x"),
        TypeError,
        r"^ignore_index: expected an integer, got str 'x'",
    ),
    (
        "cross_entropy ignore_index = 1.5",
        lambda: cross_entropy_forward(arr(3, 5), np.array([0, 1, 2]), ignore_index=1.5),
        TypeError,
        r"^ignore_index: expected an integer, got float 1.5",
    ),
    (
        "cross_entropy label_smoothing = 'x'",
        lambda: cross_entropy_forward(arr(3, 5), np.array([0, 1, 2]), label_smoothing="x"),
        TypeError,
        r"^label_smoothing: expected a real number, got str 'x'",
    ),
    (
        "cross_entropy label_smoothing = True",
        lambda: cross_entropy_forward(arr(3, 5), np.array([0, 1, 2]), label_smoothing=True),
        TypeError,
        r"^label_smoothing: expected a real number, got bool",
    ),
    (
        "embedding padding_idx = 1.5",
        lambda: embedding_forward(np.array([0, 1]), EMB, padding_idx=1.5),
        TypeError,
        r"^padding_idx: expected an integer, got float 1.5",
    ),
    (
        "embedding padding_idx = '1'",
        lambda: embedding_forward(np.array([0, 1]), EMB, padding_idx="1"),
        TypeError,
        r"^padding_idx: expected an integer, got str '1'",
    ),
    (
        "embedding padding_idx = True",
        lambda: embedding_forward(np.array([0, 1]), EMB, padding_idx=True),
        TypeError,
        r"^padding_idx: expected an integer, got bool",
    ),
    (
        "padding_mask pad_id = 'x'",
        lambda: padding_mask(np.array([[1, 0]]), "x"),
        TypeError,
        r"^pad_id: expected an integer, got str 'x'",
    ),
    (
        "dropout p = np.float64(1.0)",
        lambda: dropout_forward(arr(2, 3), np.float64(1.0), rng=RNG),
        ValueError,
        r"^p: expected a probability in \[0, 1\), got",
    ),
    (
        "dropout p = np.True_",
        lambda: dropout_forward(arr(2, 3), np.True_, rng=RNG),
        ValueError,
        r"^p: expected a probability in \[0, 1\), got",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "pattern"), [c[1:] for c in DEGENERATE_CASES], ids=[c[0] for c in DEGENERATE_CASES]
)
def test_degenerate_size_or_loose_argument_raises_a_named_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize(
    "p", [np.int64(0), np.int32(0), np.float32(0.25), np.float64(0.5), np.array(0.25), 0, 0.25], ids=repr
)
def test_dropout_probability_accepts_numpy_scalars_like_python_numbers(p):
    """``p=np.int64(0)`` (say, from a config read with NumPy) is the same probability as ``0``."""
    from numpy_transformer.functional.checks import check_dropout_p

    assert check_dropout_p(p) == float(p)
    x = arr(2, 3)
    y, _ = dropout_forward(x, p, rng=np.random.default_rng(0))
    y_ref, _ = dropout_forward(x, float(p), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(y, y_ref)
    assert nt.Dropout(p).p == float(p)
    assert nt.MultiHeadAttention(4, 2, dropout=p, rng=np.random.default_rng(0)).dropout == float(p)
    scaled_dot_product_attention_forward(Q, K, V, dropout_p=p, rng=np.random.default_rng(0))
    assert nt.TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=4, n_heads=2, d_ff=8, dropout=p)


# --------------------------------------------------------------------------- backward: dout shape


def _caches():
    """One (backward, cache, good dout shape) per op, from a valid forward."""
    x = arr(2, 3)
    _, c_lin = linear_forward(x, W)
    _, c_ln = layer_norm_forward(arr(2, C), LN_W, LN_B)
    _, c_sm = softmax_forward(x)
    _, c_att = scaled_dot_product_attention_forward(Q, K, V)
    _, c_emb = embedding_forward(np.array([[0, 1, 2]]), EMB)
    _, c_ce = cross_entropy_forward(arr(3, 5), np.array([0, 1, 2]))
    return [
        ("linear_backward", linear_backward, c_lin, (2, 4)),
        ("layer_norm_backward", layer_norm_backward, c_ln, (2, C)),
        ("softmax_backward", softmax_backward, c_sm, (2, 3)),
        ("scaled_dot_product_attention_backward", scaled_dot_product_attention_backward, c_att, (2, 3, 6)),
        ("embedding_backward", embedding_backward, c_emb, (1, 3, 3)),
        ("cross_entropy_backward", cross_entropy_backward, c_ce, ()),
    ]


@pytest.mark.parametrize("index", range(6), ids=[c[0] for c in _caches()])
def test_backward_with_dout_of_the_wrong_shape_raises_value_error_naming_dout(index):
    _, backward, cache, good_shape = _caches()[index]
    backward(arr(*good_shape) if good_shape else np.float64(1.0), cache)  # the right shape works
    bad_shape = (*good_shape, 2) if good_shape else (1,)
    with pytest.raises(ValueError, match=r"^dout:"):
        backward(arr(*bad_shape), cache)


# --------------------------------------------------------------------------- load_state_dict


def _modules():
    rng = np.random.default_rng(1)
    return {
        "Linear": nt.Linear(3, 4, rng=rng),
        "Linear float32": nt.Linear(3, 4, dtype=np.float32, rng=rng),
        "Embedding": nt.Embedding(6, 3, padding_idx=0, rng=rng),
        "LayerNorm": nt.LayerNorm(5),
        "FeedForward": nt.FeedForward(4, 8, activation="gelu", rng=rng),
        "MultiHeadAttention": nt.MultiHeadAttention(4, 2, rng=rng),
    }


def _fresh_state(module: nt.Module) -> dict[str, np.ndarray]:
    """A valid state dict whose every value differs from the module's current one."""
    return {name: p + 1 for name, p in module.named_parameters()}


def _missing(state, last):
    del state[last]
    return KeyError, r"state.*missing"


def _extra(state, last):
    state["unexpected.weight"] = np.zeros(2)
    return KeyError, r"state.*unexpected"


def _wrong_shape(state, last):
    state[last] = np.zeros(state[last].shape + (1,), dtype=state[last].dtype)
    return ValueError, rf"state\['{last}'\].*shape"


def _wrong_dtype(state, last):
    other = np.float32 if state[last].dtype == np.float64 else np.float64
    state[last] = state[last].astype(other)
    return TypeError, rf"state\['{last}'\].*dtype"


def _not_an_array(state, last):
    state[last] = state[last].tolist()
    return TypeError, rf"state\['{last}'\]"


@pytest.mark.parametrize(
    "corrupt",
    [_missing, _extra, _wrong_shape, _wrong_dtype, _not_an_array],
    ids=["missing key", "extra key", "wrong shape", "wrong dtype", "not an array"],
)
@pytest.mark.parametrize("module_name", list(_modules()))
def test_load_state_dict_with_a_bad_entry_raises_and_leaves_every_parameter_unchanged(module_name, corrupt):
    module = _modules()[module_name]
    before = {name: p.copy() for name, p in module.named_parameters()}
    state = _fresh_state(module)
    # Corrupt the *last* parameter, so a loader that wrote as it checked would already
    # have overwritten all the others with the (valid, different) new values.
    last = list(state)[-1]
    error, pattern = corrupt(state, last)
    with pytest.raises(error, match=pattern):
        module.load_state_dict(state)
    after = dict(module.named_parameters())
    assert list(after) == list(before)
    for name in before:
        assert after[name].dtype == before[name].dtype
        assert np.array_equal(after[name], before[name]), f"{name} was modified by a failed load_state_dict"
    # The valid state dict does load (so the check above could fail).
    module.load_state_dict(_fresh_state(module))
    assert all(np.array_equal(p, before[name] + 1) for name, p in module.named_parameters())


# --------------------------------------------------------------------------- backward: dout dtype


def _f32_caches():
    """(backward, cache, dout shape) for each op, forward run in float32."""
    f = np.float32
    _, c_lin = linear_forward(arr(2, 3, dtype=f), W.astype(f))
    _, c_ln = layer_norm_forward(arr(2, C, dtype=f), LN_W.astype(f), LN_B.astype(f))
    _, c_sm = softmax_forward(arr(2, 3, dtype=f))
    _, c_lsm = log_softmax_forward(arr(2, 3, dtype=f))
    _, c_relu = relu_forward(arr(2, 3, dtype=f))
    _, c_gelu = gelu_forward(arr(2, 3, dtype=f))
    _, c_drop = dropout_forward(arr(2, 3, dtype=f), 0.5, rng=np.random.default_rng(0))
    _, c_att = scaled_dot_product_attention_forward(Q.astype(f), K.astype(f), V.astype(f))
    _, c_emb = embedding_forward(np.array([[0, 1, 2]]), EMB.astype(f))
    return {
        "linear_backward": (linear_backward, c_lin, (2, 4)),
        "layer_norm_backward": (layer_norm_backward, c_ln, (2, C)),
        "softmax_backward": (softmax_backward, c_sm, (2, 3)),
        "log_softmax_backward": (log_softmax_backward, c_lsm, (2, 3)),
        "relu_backward": (relu_backward, c_relu, (2, 3)),
        "gelu_backward": (gelu_backward, c_gelu, (2, 3)),
        "dropout_backward": (dropout_backward, c_drop, (2, 3)),
        "scaled_dot_product_attention_backward": (scaled_dot_product_attention_backward, c_att, (2, 3, 6)),
        "embedding_backward": (embedding_backward, c_emb, (1, 3, 3)),
    }


_DOUT_DTYPE_CASES = [
    pytest.param(op, dout_dtype, id=f"{op}-{np.dtype(dout_dtype).name}")
    for op in _f32_caches()
    for dout_dtype in (np.float64, np.int64)
]


@pytest.mark.parametrize(("op", "dout_dtype"), _DOUT_DTYPE_CASES)
def test_backward_with_dout_of_another_dtype_than_the_forward_raises_type_error_naming_dout(op, dout_dtype):
    backward, cache, shape = _f32_caches()[op]
    with pytest.raises(TypeError, match=r"^dout:"):
        backward(np.ones(shape, dtype=dout_dtype), cache)


def test_multi_head_attention_float32_query_into_a_float64_module_names_query():
    mha = nt.MultiHeadAttention(4, 2, rng=RNG)
    x = arr(1, 3, 4, dtype=np.float32)
    with pytest.raises(TypeError, match=r"^query:"):
        mha.forward(x, x, x)
