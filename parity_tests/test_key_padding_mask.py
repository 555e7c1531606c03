"""``MultiHeadAttention(..., key_padding_mask=)``: a (B, S) padding mask that cannot be misread.

The package has one mask convention, ``True`` = may attend. ``mask`` is broadcast against the
scores (B, H, T, S). A (B, S) padding mask handed to ``mask=`` used to be read as a (T, S)
pattern shared by every sequence: an error when B != T, but silently applied to the wrong rows
when B == T (five sentences of five tokens). ``mask`` must now be 4-D (a causal pattern is
``causal_mask(T)[None, None]``), so that mistake is an error naming ``key_padding_mask``.
Padding has its own argument now: ``key_padding_mask`` (B, S), ``True`` = a real token that
may be attended to, ``False`` = padding (the opposite of ``nn.MultiheadAttention``'s
``key_padding_mask``, where ``True`` means padded; ``bridge.mask_to_key_padding_mask``
converts). It is checked to be exactly (B, S) and applied as (B, 1, 1, S). Both halves take it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import numpy_transformer as nt
from numpy_transformer.functional import causal_mask
from numpy_transformer.testing import relative_error, tolerance
from parity_tests.helpers import assert_matches
from torch_transformer.bridge import twin_of

LENGTHS = np.array([5, 3, 1, 4, 2])  # five sentences, padded to five tokens: B == T == S
B = T = S = 5
C, H = 8, 2


def _keep() -> np.ndarray:
    return np.arange(S)[None, :] < LENGTHS[:, None]  # (B, S) True = real token


def _mha(dtype, seed=0) -> nt.MultiHeadAttention:
    mha = nt.MultiHeadAttention(C, H, dtype=dtype, rng=np.random.default_rng(seed))
    for name, p in mha.named_parameters():  # non-zero biases, so nothing cancels by accident
        if name.endswith("bias"):
            p[...] = np.random.default_rng(seed + 1).uniform(-0.5, 0.5, p.shape)
    return mha


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_key_padding_mask_with_b_equal_t_gives_every_sentence_its_own_padding(dtype):
    rng = np.random.default_rng(1)
    mha = _mha(dtype)
    x = rng.standard_normal((B, T, C)).astype(dtype)
    keep = _keep()
    out, cache = mha.forward(x, x, x, key_padding_mask=keep)

    # The documented (B, 1, 1, S) mask gives the very same numbers.
    same, _ = mha.forward(x, x, x, mask=keep[:, None, None, :])
    np.testing.assert_array_equal(out, same)
    # Each sentence alone, cut to its length, gives the outputs of its real positions.
    for b, L in enumerate(LENGTHS):
        xb = x[b : b + 1, :L]
        alone, _ = mha.forward(xb, xb, xb)
        assert_matches(f"sentence {b} (length {L})", out[b, :L], alone[0], dtype)
        assert (cache.weights[b, :, :, L:] == 0).all(), f"sentence {b} attends to its padding"
    # Handed to mask= instead, the same (B, S) array would read as a (T, S) pattern (row t of
    # every sentence getting sentence t's padding) and nothing would tell, since B == T: refused.
    with pytest.raises(ValueError, match=r"^mask: expected a 4-D mask.*got shape \(5, 5\).*key_padding_mask="):
        mha.forward(x, x, x, mask=keep)
    # What that reading would have computed is far from the right answer (so the error matters).
    misread, _ = mha.forward(x, x, x, mask=keep[None, None])
    assert relative_error("mask= reading", misread, out).error > 1e3 * tolerance("cpu", dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_key_padding_mask_combines_with_mask_and_is_causal_and_the_twin_agrees_with_every_gradient(dtype):
    rng = np.random.default_rng(2)
    mha = _mha(dtype, seed=3)
    query = rng.standard_normal((B, T, C)).astype(dtype)
    memory = rng.standard_normal((B, S, C)).astype(dtype)
    keep = _keep()
    pattern = rng.random((T, S)) < 0.7  # a (T, S) pattern shared by the batch
    pattern[:, 0] = True
    out, cache = mha.forward(query, memory, memory, mask=pattern[None, None], is_causal=True, key_padding_mask=keep)
    expected, _ = mha.forward(query, memory, memory, mask=pattern & causal_mask(T, S) & keep[:, None, None, :])
    np.testing.assert_array_equal(out, expected)
    dout = rng.standard_normal(out.shape).astype(dtype)
    mha.zero_grad()
    grads = dict(zip(("query", "key", "value"), mha.backward(dout, cache), strict=True))

    twin = twin_of(mha)
    leaves = {
        n: torch.from_numpy(a.copy()).requires_grad_(True)
        for n, a in (("query", query), ("key", memory), ("value", memory.copy()))
    }
    out_t = twin(
        leaves["query"],
        leaves["key"],
        leaves["value"],
        mask=torch.from_numpy(pattern),
        is_causal=True,
        key_padding_mask=torch.from_numpy(keep),
    )
    assert_matches("twin output", out, out_t, dtype)
    (out_t * torch.from_numpy(dout)).sum().backward()
    for name, g in grads.items():
        assert_matches(f"d{name}", g, leaves[name].grad, dtype)
    named_grads = dict(mha.named_grads())
    for name, p in twin.named_parameters():
        assert_matches(f"d{name}", named_grads[name], p.grad, dtype)


# (id, query length T, forward's keyword arguments, error, message)
BAD = [
    ("key_padding_mask int", T, dict(key_padding_mask=_keep().astype(np.int64)), TypeError,
     r"^key_padding_mask: expected a bool ndarray \(True = real token.*got int64"),
    ("key_padding_mask a list", T, dict(key_padding_mask=_keep().tolist()), TypeError,
     r"^key_padding_mask: expected a bool ndarray.*got list"),
    ("key_padding_mask (B, 1, 1, S)", T, dict(key_padding_mask=_keep()[:, None, None, :]), ValueError,
     r"^key_padding_mask: expected shape \(B, S\) = \(5, 5\).*got \(5, 1, 1, 5\)"),
    ("key_padding_mask (B, S - 1)", T, dict(key_padding_mask=_keep()[:, :4]), ValueError,
     r"^key_padding_mask: expected shape \(B, S\) = \(5, 5\).*got \(5, 4\)"),
    ("mask 3-D (B, T, S)", T, dict(mask=np.ones((B, T, S), dtype=bool)), ValueError,
     r"^mask: expected a 4-D mask.*got shape \(5, 5, 5\).*key_padding_mask"),
    ("mask 1-D (S,)", T, dict(mask=np.ones(S, dtype=bool)), ValueError,
     r"^mask: expected a 4-D mask.*got shape \(5,\)"),
    ("mask (B, S) with B == T", T, dict(mask=_keep()), ValueError,
     r"^mask: expected a 4-D mask.*causal_mask\(T\)\[None, None\].*got shape \(5, 5\).*key_padding_mask"),
    ("mask (B, S) with B != T", 4, dict(mask=_keep()), ValueError,
     r"^mask: expected a 4-D mask.*got shape \(5, 5\).*key_padding_mask"),
    ("mask 4-D, wrong S", T, dict(mask=np.ones((1, 1, T, S - 1), dtype=bool)), ValueError,
     r"^mask: expected a shape broadcastable to \(B, H, T, S\) = \(5, 2, 5, 5\), got \(1, 1, 5, 4\)"),
]  # fmt: skip


@pytest.mark.parametrize(("T_query", "kwargs", "error", "pattern"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_mask_or_key_padding_mask_is_a_named_error(T_query, kwargs, error, pattern):
    mha = _mha(np.float64)
    x = np.random.default_rng(0).standard_normal((B, S, C))
    with pytest.raises(error, match=pattern):
        mha.forward(x[:, :T_query], x, x, **kwargs)
