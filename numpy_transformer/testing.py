"""The parity contract in code: one error measure, one tolerance table, and finite differences.

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

from collections.abc import Callable
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
    """Compare two arrays of one shape; NaN must meet NaN and inf the same inf, or the error is infinite."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} differs from expected {expected.shape}")
    if actual.size == 0:
        return Comparison(name, 0.0, (), float("nan"), float("nan"))
    # The same NaN, or the same infinity (a masked score is -inf in both), is a match.
    same_special = (np.isnan(actual) & np.isnan(expected)) | (np.isinf(expected) & (actual == expected))
    with np.errstate(invalid="ignore"):
        diff = np.where(same_special, 0.0, np.abs(actual - expected))
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


def report_match(
    name: str, ours: np.ndarray, reference: np.ndarray, dtype: np.dtype | type | str = np.float64, kind: str = "cpu"
) -> Comparison:
    """Print one line -- ``exact``, ``close (…)`` -- and raise when outside the contract.

    The walkthroughs use it to compare every intermediate with PyTorch:
    ``report_match("dxhat", dxhat, xhat_t.grad)``. ``reference`` may be a tensor;
    anything with ``.detach()`` is brought to NumPy first.
    """
    if hasattr(reference, "detach"):
        reference = reference.detach().cpu().numpy()
    cmp = relative_error(name, ours, reference)
    tol = tolerance(kind, dtype)
    if cmp.error == 0.0:
        verdict = "exact"
    elif cmp.error <= tol:
        verdict = f"close (max rel err {cmp.error:.1e})"
    else:
        raise AssertionError(f"MISMATCH {cmp.describe()} exceeds tolerance {tol:.0e}")
    print(f"  {name:<44} {verdict}")
    return cmp


def report_differs(
    name: str, wrong: np.ndarray, reference: np.ndarray, dtype: np.dtype | type | str = np.float64, kind: str = "cpu"
) -> Comparison:
    """The opposite check, for a deliberately wrong formula: it must miss ``reference`` by more than the tolerance."""
    if hasattr(reference, "detach"):
        reference = reference.detach().cpu().numpy()
    cmp = relative_error(name, wrong, reference)
    tol = tolerance(kind, dtype)
    if not cmp.error > tol:
        raise AssertionError(f"{name}: expected the wrong formula to differ, but {cmp.describe()}")
    print(f"  {name:<44} differs, as it should (max rel err {cmp.error:.1e})")
    return cmp


# ---------------------------------------------------------------------------- finite differences
# Central finite differences, for checking any hand-written backward.
#
# Usage, for an op ``y, cache = f_forward(x)`` and its backward::
#
#     dout = rng.standard_normal(y.shape)
#     numeric = numerical_gradient(lambda x: f_forward(x)[0], x, dout)
#     analytic = f_backward(dout, cache)
#
# ``numerical_gradient`` differentiates the scalar ``L(x) = sum(f(x) * dout)``,
# whose gradient is exactly the vector-Jacobian product a backward computes.
# A random ``dout`` matters: with ``dout = 1`` the gradient of ``sum(softmax(x))``
# is zero and would hide any softmax bug.


def numerical_gradient(
    f: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    dout: np.ndarray,
    eps: float = 1e-6,
) -> np.ndarray:
    r"""Central-difference estimate of :math:`\partial\,\mathrm{sum}(f(x)\,dout)/\partial x`.

    Each element is perturbed in place by :math:`\pm` ``eps`` and restored:
    :math:`g_i \approx (L(x + \epsilon e_i) - L(x - \epsilon e_i)) / 2\epsilon`,
    with error :math:`O(\epsilon^2)` plus rounding :math:`O(u\,|L|/\epsilon)`.
    Use float64: in float32 the rounding term swamps the estimate.
    """
    if x.dtype != np.float64:
        raise TypeError(f"x: finite differences need float64, got {x.dtype}")
    dout = np.asarray(dout, dtype=np.float64)
    grad = np.zeros_like(x)
    flat_x = x.reshape(-1)  # a view: writing into it perturbs x
    flat_g = grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + eps
        plus = float(np.sum(f(x) * dout))
        flat_x[i] = original - eps
        minus = float(np.sum(f(x) * dout))
        flat_x[i] = original
        flat_g[i] = (plus - minus) / (2 * eps)
    return grad


def numerical_gradients(
    f: Callable[[], np.ndarray],
    inputs: dict[str, np.ndarray],
    dout: np.ndarray,
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Finite-difference gradients for several named inputs of one function.

    ``f()`` takes no argument: it reads the arrays in ``inputs``, which are
    perturbed in place one element at a time (so they must be the very arrays
    ``f`` uses, e.g. a module's parameters).
    """
    return {name: numerical_gradient(lambda _x: f(), x, dout, eps) for name, x in inputs.items()}
