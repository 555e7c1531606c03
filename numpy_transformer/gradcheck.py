"""Central finite differences, for checking any hand-written backward.

Usage, for an op ``y, cache = f_forward(x)`` and its backward::

    dout = rng.standard_normal(y.shape)
    numeric = numerical_gradient(lambda x: f_forward(x)[0], x, dout)
    analytic = f_backward(dout, cache)

``numerical_gradient`` differentiates the scalar ``L(x) = sum(f(x) * dout)``,
whose gradient is exactly the vector-Jacobian product a backward computes.
A random ``dout`` matters: with ``dout = 1`` the gradient of ``sum(softmax(x))``
is zero and would hide any softmax bug.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
