"""The parity contract in code: one error measure and one tolerance table.

Every comparison in ``parity_tests/``, the walkthroughs and the ``parity``
command goes through :func:`relative_error`, so "close" means the same thing
everywhere:

    error = max|actual - expected| / max(1, max|expected|)

| compare                                   | float64 | float32 |
|-------------------------------------------|---------|---------|
| NumPy vs twin / built-in on CPU           | 1e-10   | 1e-5    |
| NumPy vs twin on CUDA (TF32 off)          | --      | 1e-4    |
| NumPy backward vs central differences     | 1e-6    | --      |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCES: dict[tuple[str, str], float] = {
    ("cpu", "float64"): 1e-10,
    ("cpu", "float32"): 1e-5,
    ("cuda", "float64"): 1e-10,
    ("cuda", "float32"): 1e-4,
    ("finite_differences", "float64"): 1e-6,
}


def tolerance(kind: str, dtype: np.dtype | type | str) -> float:
    """Tolerance for ``kind`` ('cpu', 'cuda' or 'finite_differences') and a dtype."""
    key = (kind, np.dtype(dtype).name)
    if key not in TOLERANCES:
        raise ValueError(f"no tolerance is defined for {key}; defined: {sorted(TOLERANCES)}")
    return TOLERANCES[key]


@dataclass(frozen=True)
class Comparison:
    name: str
    error: float  # max|a - b| / max(1, max|b|)
    worst_index: tuple[int, ...]
    actual: float  # the values at the worst index
    expected: float

    def describe(self) -> str:
        return (
            f"{self.name}: relative error {self.error:.3e} at index {self.worst_index} "
            f"(actual {self.actual!r}, expected {self.expected!r})"
        )


def relative_error(name: str, actual: np.ndarray, expected: np.ndarray) -> Comparison:
    """Compare two arrays of one shape; NaNs must match NaNs (a lone NaN is an infinite error)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} differs from expected {expected.shape}")
    if actual.size == 0:
        return Comparison(name, 0.0, (), float("nan"), float("nan"))
    both_nan = np.isnan(actual) & np.isnan(expected)
    diff = np.where(both_nan, 0.0, np.abs(actual - expected))
    diff = np.where(np.isnan(diff), np.inf, diff)
    finite_expected = np.where(np.isfinite(expected), np.abs(expected), 0.0)
    scale = max(1.0, float(finite_expected.max()))
    flat = int(np.argmax(diff))
    idx = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    return Comparison(name, float(diff.flat[flat]) / scale, idx, float(actual[idx]), float(expected[idx]))


def assert_close(name: str, actual: np.ndarray, expected: np.ndarray, tol: float) -> Comparison:
    """Raise ``AssertionError`` naming the tensor and its worst element when error > ``tol``."""
    cmp = relative_error(name, actual, expected)
    if not cmp.error <= tol:
        raise AssertionError(f"{cmp.describe()} exceeds tolerance {tol:.0e}")
    return cmp
