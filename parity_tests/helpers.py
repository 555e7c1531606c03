"""The one comparison helper every test uses, with the DESIGN.md tolerances.

``assert_matches(name, actual, expected, dtype)`` fails with the tensor's name,
its worst index and both values when
``max|actual - expected| / max(1, max|expected|)`` exceeds the contract.
"""

from __future__ import annotations

import numpy as np
import torch

from numpy_transformer.testing import assert_close, tolerance


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_matches(name: str, actual, expected, dtype, device: str = "cpu"):
    """NumPy vs twin / built-in, within the contract for ``dtype`` on ``device``."""
    return assert_close(name, to_numpy(actual), to_numpy(expected), tolerance(device, dtype))


def assert_matches_finite_differences(name: str, analytic, numeric):
    """A float64 backward vs central finite differences (tolerance 1e-6)."""
    return assert_close(name, to_numpy(analytic), to_numpy(numeric), tolerance("finite_differences", np.float64))
