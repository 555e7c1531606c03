"""Hypothesis strategies shared by the parity tests.

Shapes include 1s and ``T != S``; values come from ``numpy.random.default_rng(seed)``
so that drawing stays cheap and every failure is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from torch_transformer.parity import MASK_KINDS, Case

dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)


def dims_for(case: Case, max_len: int = 5) -> st.SearchStrategy[dict]:
    """Sizes for one draw of ``case``: B, T, S, H, D, V, a mask kind and a variant."""
    return st.fixed_dictionaries(
        {
            "B": st.integers(1, 3),
            "T": st.integers(1, max_len),
            "S": st.integers(1, max_len),
            "H": st.integers(1, 3),
            "D": st.integers(1, 4),
            "V": st.integers(2, 7),
            "mask": st.sampled_from(MASK_KINDS),
            "variant": st.sampled_from(case.variants),
        }
    )
