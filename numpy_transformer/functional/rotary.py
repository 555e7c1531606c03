r"""Rotary position embeddings (RoPE), in both layouts, and the weight permutation between them.

Shape legend: ``...`` leading dimensions (usually ``(B, H)``), ``T`` positions, ``D`` head width
(even), ``P = D // 2`` rotation pairs, ``H`` heads, ``C`` d_model.

What RoPE does
--------------
RoPE splits each query and key vector of a head into ``P`` pairs of coordinates and turns pair
``i`` of the vector at position ``m`` by the angle :math:`m\,\omega_i`, with
:math:`\omega_i = \theta^{-2i/D}` (``theta`` is ``rope_theta``: 10 000 in Llama 1 and 2,
500 000 in Llama 3). A pair :math:`(a, b)` becomes

.. math:: (a\cos m\omega_i - b\sin m\omega_i,\; a\sin m\omega_i + b\cos m\omega_i),

a rotation :math:`R(m\omega_i)`. Rotations compose by adding angles and
:math:`R(\alpha)^T = R(-\alpha)`, so the score of a query at ``m`` and a key at ``n`` is

.. math:: (R_m q)\cdot(R_n k) = q \cdot R_m^T R_n k = q \cdot R_{n-m}\,k,

a function of ``m - n`` only: attention sees relative positions, though each vector is
rotated by its absolute one. Nothing is added to the residual stream.

Two layouts of the pairs
------------------------
* ``"half"`` (Hugging Face's ``rotate_half``, GPT-NeoX): pair ``i`` is the coordinates
  ``(i, i + P)``, the first half of the head against the second.
* ``"interleaved"`` (Meta's original Llama code, a complex multiplication of
  ``x[2i] + 1j * x[2i + 1]`` by :math:`e^{i m \omega_i}`): pair ``i`` is ``(2i, 2i + 1)``.

Both turn pair ``i`` by :math:`m\omega_i`; they differ only in which coordinates form the pair.
So the same model can be written either way if the rows of the query and key projections are
permuted inside every head: :func:`interleaved_to_half_rows` is that permutation, the one Hugging
Face's ``convert_llama_weights_to_hf.py`` applies to Meta's ``wq`` and ``wk``. Values and the output
projection are not rotated and need no permutation.

The backward
------------
A rotation is orthogonal, so its Jacobian's transpose is its inverse: the gradient of the
input is the upstream gradient rotated *back*, by :math:`-m\omega_i` (the same code with the
sine negated). No activation needs storing: only the angles' cosines and sines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_int_array, check_positive_float, check_positive_int

ROPE_LAYOUTS = ("half", "interleaved")


def check_rope_layout(layout: object) -> str:
    """``"half"`` (Hugging Face's rotate-half) or ``"interleaved"`` (Meta's); ValueError otherwise."""
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"layout: expected one of {ROPE_LAYOUTS}, got {layout!r}")
    return layout


def rotary_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    r"""The ``P = D // 2`` angular frequencies :math:`\omega_i = \theta^{-2i/D}`, float64, shape (P,).

    Pair 0 turns by one radian per position; the last pair almost not at all, so that far
    apart positions stay distinguishable.
    """
    D = check_positive_int("head_dim", head_dim)
    if D % 2:
        raise ValueError(f"head_dim: expected an even number (coordinates are rotated in pairs), got {D}")
    theta = check_positive_float("theta", theta)
    return 1.0 / theta ** (np.arange(0, D, 2, dtype=np.float64) / D)  # (P,)


def rotary_cos_sin(
    positions: np.ndarray, head_dim: int, theta: float = 10000.0, dtype: np.dtype | type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    r""":math:`\cos(m\,\omega_i)` and :math:`\sin(m\,\omega_i)` for every position ``m``, each (T, P), in ``dtype``.

    The angles are computed in float64 and then rounded to ``dtype`` (Hugging Face computes them
    in float32 whatever the model's dtype: see ``parity_tests/test_llama_hf.py``).
    """
    positions = check_int_array("positions", positions)
    if positions.ndim != 1 or (positions.size and positions.min() < 0):
        raise ValueError(f"positions: expected a 1-D array of positions >= 0, got shape {positions.shape}")
    angles = positions.astype(np.float64)[:, None] * rotary_frequencies(head_dim, theta)[None, :]  # (T, P)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


@dataclass(frozen=True)
class RotaryCache:
    cos: np.ndarray  # (T, P) cos(m * omega_i), in the input's dtype
    sin: np.ndarray  # (T, P) sin(m * omega_i)
    layout: str  # "half" or "interleaved": which coordinates form pair i
    shape: tuple[int, ...]  # (..., T, D) the input's shape; nothing else of x is needed


def _pairs(x: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """The two coordinates of every pair of ``x`` (..., T, D): each (..., T, P), views."""
    P = x.shape[-1] // 2
    if layout == "half":
        return x[..., :P], x[..., P:]  # pair i = (i, i + P)
    return x[..., 0::2], x[..., 1::2]  # pair i = (2i, 2i + 1)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
    """Turn every pair of ``x`` (..., T, D) by the angle whose cosine and sine are given, each (T, P)."""
    a, b = _pairs(x, layout)  # (..., T, P) each
    y = np.empty_like(x)
    y_a, y_b = _pairs(y, layout)  # views into y
    y_a[...] = a * cos - b * sin
    y_b[...] = a * sin + b * cos
    return y


def rotary_embedding_forward(
    x: np.ndarray, positions: np.ndarray, theta: float = 10000.0, layout: str = "half"
) -> tuple[np.ndarray, RotaryCache]:
    r"""Rotate every pair of ``x``'s last axis by :math:`m\,\omega_i`, ``m`` the row's position.

    Parameters
    ----------
    x : ndarray, shape (..., T, D)
        Queries or keys split into heads, e.g. (B, H, T, D); ``D`` even.
    positions : int ndarray, shape (T,)
        The position of each row, ``>= 0`` (``arange(T)``; ``t0 + arange(L)`` for new tokens
        behind a key/value cache).
    theta : float
        ``rope_theta``, the base of the frequencies :math:`\omega_i = \theta^{-2i/D}`.
    layout : ``"half"`` or ``"interleaved"``
        Which coordinates form the pairs (see the module docstring).

    Returns
    -------
    y : ndarray, shape (..., T, D), ``x``'s dtype
    cache : RotaryCache
    """
    check_float_array("x", x, ndim_min=2)
    layout = check_rope_layout(layout)
    *_, T, D = x.shape
    if D < 2 or D % 2:
        raise ValueError(f"x: expected an even head width D >= 2 (pairs are rotated), got shape {x.shape}")
    positions = check_int_array("positions", positions)
    if positions.shape != (T,):
        raise ValueError(f"positions: expected shape ({T},), one per row of x {x.shape}, got {positions.shape}")
    cos, sin = rotary_cos_sin(positions, D, theta, x.dtype)  # (T, P) each
    return _rotate(x, cos, sin, layout), RotaryCache(cos=cos, sin=sin, layout=layout, shape=x.shape)


def rotary_embedding_backward(dout: np.ndarray, cache: RotaryCache) -> np.ndarray:
    r"""The gradient of the input: ``dout`` rotated back, by :math:`-m\,\omega_i`.

    Forward, per pair: :math:`(y_a, y_b) = (a\cos\phi - b\sin\phi,\; a\sin\phi + b\cos\phi)`,
    i.e. :math:`y = R(\phi)\,x`. Backward: :math:`dx = R(\phi)^T dy = R(-\phi)\,dy`,

    .. math:: da = dy_a\cos\phi + dy_b\sin\phi,\qquad db = -dy_a\sin\phi + dy_b\cos\phi.
    """
    check_dout(dout, cache.shape, cache.cos.dtype)
    return _rotate(dout, cache.cos, -cache.sin, cache.layout)  # R(-phi) = R(phi)^T


def interleaved_to_half_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Permute a query or key projection (H * D, C) from Meta's interleaved layout to Hugging Face's half layout.

    Inside every head, row ``2i + j`` (pair ``i``, coordinate ``j`` in {0, 1}) moves to row
    ``j * P + i``: the even rows first, then the odd ones. A model whose ``q_proj`` and ``k_proj``
    are permuted this way and that rotates with ``layout="half"`` computes exactly the attention
    of the original with ``layout="interleaved"`` (the rotated vectors are the same up to this
    reordering of coordinates, and a dot product does not care about the order). This is
    ``permute`` of Hugging Face's ``convert_llama_weights_to_hf.py``. Works on a bias (H * D,) too.
    """
    w = _check_head_rows(weight, n_heads)
    H, D = n_heads, w.shape[0] // n_heads
    rows = w.reshape(H, D // 2, 2, *w.shape[1:])  # (H, P, 2, ...): [h, i, j] = row 2i + j of head h
    return np.swapaxes(rows, 1, 2).reshape(w.shape).copy()  # (H, 2, P, ...) -> row j * P + i


def half_to_interleaved_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`interleaved_to_half_rows`: Hugging Face's half layout (H * D, C) back to Meta's."""
    w = _check_head_rows(weight, n_heads)
    H, D = n_heads, w.shape[0] // n_heads
    rows = w.reshape(H, 2, D // 2, *w.shape[1:])  # (H, 2, P, ...): [h, j, i] = row j * P + i of head h
    return np.swapaxes(rows, 1, 2).reshape(w.shape).copy()  # (H, P, 2, ...) -> row 2i + j


def _check_head_rows(weight: object, n_heads: int) -> np.ndarray:
    check_float_array("weight", weight, ndim_min=1)
    n_heads = check_positive_int("n_heads", n_heads)
    rows = weight.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(
            f"weight: expected n_heads * D rows with an even head width D (n_heads={n_heads}), got shape {weight.shape}"
        )
    return weight
