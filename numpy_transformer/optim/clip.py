r"""Gradient clipping by the joint 2-norm of all gradients, as ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..functional.checks import FLOAT_DTYPES, check_bool, check_real


def _collect_grads(grads: Any) -> list[np.ndarray]:
    if hasattr(grads, "named_grads"):
        arrays = [g for _, g in grads.named_grads()]
    elif isinstance(grads, np.ndarray):
        arrays = [grads]
    elif isinstance(grads, Mapping):
        arrays = list(grads.values())
    elif isinstance(grads, Iterable) and not isinstance(grads, str):
        arrays = list(grads)
    else:
        raise TypeError(
            "grads: expected an object with named_grads(), a mapping or an iterable of arrays, "
            f"got {type(grads).__name__}"
        )
    for i, g in enumerate(arrays):
        if not isinstance(g, np.ndarray) or g.dtype not in FLOAT_DTYPES:
            what = g.dtype if isinstance(g, np.ndarray) else type(g).__name__
            raise TypeError(f"grads: item {i} must be a float32 or float64 numpy.ndarray, got {what}")
    return arrays


def clip_grad_norm(grads: Any, max_norm: float, eps: float = 1e-6, error_if_nonfinite: bool = False) -> float:
    r"""Scale all gradients together so that their joint 2-norm is at most about ``max_norm``.

    The same rule as ``torch.nn.utils.clip_grad_norm_`` (2-norm)::

        N = \sqrt{\sum_i \lVert g_i \rVert_2^2}            (one norm over every gradient together)
        c = \min\left(\frac{\text{max\_norm}}{N + \epsilon}, 1\right),  \epsilon = 10^{-6}
        g_i \leftarrow c \, g_i                              (in place)

    Because of :math:`\epsilon`, a clipped norm ends slightly *below* ``max_norm``, and a
    norm exactly at ``max_norm`` is scaled by about :math:`1 - \epsilon / \text{max\_norm}`.
    When :math:`c = 1` the gradients are not touched (bit-identical). Each gradient's norm
    and :math:`c` are computed in the gradients' dtype, as PyTorch does.

    Parameters
    ----------
    grads : module, optimizer, mapping or iterable of arrays
        Anything with ``named_grads()`` (a module or an optimizer), a dict of gradients,
        a list of float32/float64 arrays, or one array. Scaled in place.
    max_norm : float
        Largest allowed total norm, > 0.
    eps : float, default 1e-6
        Added to the total norm in the coefficient's denominator (PyTorch fixes it at 1e-6).
    error_if_nonfinite : bool, default False
        Raise ``ValueError`` when the total norm is NaN or infinite. Otherwise, as in
        PyTorch, a NaN norm makes every gradient NaN and an infinite one multiplies them by 0.

    Returns
    -------
    float
        The total norm :math:`N` before clipping.
    """
    if not (isinstance(max_norm, (int, float, np.floating)) and max_norm == math.inf):
        max_norm = check_real("max_norm", max_norm, low=0.0, low_inclusive=False)  # inf: measure only, as in PyTorch
    eps = check_real("eps", eps, low=0.0)
    error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
    arrays = _collect_grads(grads)
    if not arrays:
        return 0.0
    dtype = np.result_type(*arrays)
    norms = np.array([np.linalg.norm(g.ravel()) for g in arrays], dtype=dtype)  # each in its own dtype first
    total = np.linalg.norm(norms)
    if error_if_nonfinite and not np.isfinite(total):
        raise ValueError(f"grads: the total gradient norm is {float(total)}; clipping would make it meaningless")
    # c = inf, no clipping, also when eps = 0 and every gradient is 0, or max_norm is beyond float32 (as in PyTorch)
    with np.errstate(divide="ignore", over="ignore"):
        coef = dtype.type(max_norm) / (total + dtype.type(eps))
    if not coef >= 1.0:  # c < 1, or NaN, which PyTorch's clamp lets through too
        with np.errstate(invalid="ignore"):  # inf * 0 = NaN is the defined (PyTorch) result here
            for g in arrays:
                g *= g.dtype.type(coef)
    return float(total)
