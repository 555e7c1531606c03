"""The standard attention's memory: at its peak about 1.5 (B, H, T, S) score arrays, not four.

``MultiHeadAttention``'s standard path keeps in its cache only what the backward needs of that
size -- the probabilities and, with dropout, a bool keep-mask (1/8 of a float64 array) -- and works
in place on the one score array it makes; the (..., T, S) temporaries of the dropout and of the
softmax backward are formed one block of query rows at a time (``functional/attention.py``,
``row_blocks``: 1/8 of the array each). Measured here with ``tracemalloc`` at a size where the
score arrays dominate.

Shape legend: B batch, H heads, T = S sequence length, C = H * D width, D head width.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import numpy_transformer as nt
from numpy_transformer.functional.attention import row_blocks

B, H, T, D = 1, 4, 1024, 16
C = H * D
# Everything else forward + backward holds is of size (B, L, C): the projections q, k, v, the
# heads and their merge, the output, the cache's inputs, dq, dk, dv, their merges and partial
# sums, the three input gradients. About 20 such arrays were counted; the bound allows 24.
LINEAR_ARRAYS = 24


def _peak_of_forward_and_backward(p: float) -> tuple[int, int, object]:
    """(peak extra bytes of forward + backward, bytes held by the forward's results, the cache)."""
    mha = nt.MultiHeadAttention(C, H, dropout=p, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, C))  # (B, T, C)
    dout = rng.standard_normal((B, T, C))
    drops = np.random.default_rng(2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out, cache = mha.forward(x, x, x, is_causal=True, rng=drops)
        held = tracemalloc.get_traced_memory()[0] - before
        grads = mha.backward(dout, cache)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert out.shape == (B, T, C) and all(g.shape == (B, T, C) for g in grads)
    return peak, held, cache


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_multi_head_attention_peaks_at_about_one_and_a_half_score_arrays(p):
    """float64, causal self-attention, training mode; with p = 0.1 the weights are dropped too."""
    assert len(row_blocks((B, H, T, T))) > 1, "the score array is small enough for one block: nothing tested"
    score = B * H * T * T * 8  # bytes of one (B, H, T, S) float64 array
    linear = LINEAR_ARRAYS * B * T * C * 8
    peak, held, cache = _peak_of_forward_and_backward(p)
    factor = (peak - linear) / score
    print(
        f"\nMultiHeadAttention B {B}, H {H}, T = S = {T}, D {D}, float64, dropout {p}: peak {peak / 2**20:.1f} MiB "
        f"= {peak / score:.2f} score arrays of {score / 2**20:.0f} MiB; beyond {LINEAR_ARRAYS} (B, T, C) arrays: "
        f"{factor:.2f}; held by the cache: {held / score:.2f}"
    )
    # The cache: the probabilities, plus the keep-mask as bools with dropout -- nothing else that large.
    assert cache.attention.weights.nbytes == score
    keep = cache.attention.dropout.keep
    assert (keep is None) == (p == 0) and (keep is None or keep.dtype == np.bool_)
    assert held <= score * (1 + (0.125 if p else 0)) + linear
    assert peak <= 1.5 * score + linear, f"peak {peak / score:.2f} score arrays (bound 1.5 + the linear terms)"
