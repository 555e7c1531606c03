"""Token embedding lookup and the fixed sinusoidal positional encoding.

Shape legend: ``...`` any index shape (e.g. ``(B, T)``), ``V`` vocabulary size,
``C`` embedding width (d_model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_int_array, check_padding_idx, check_positive_float


@dataclass(frozen=True)
class EmbeddingCache:
    ids: np.ndarray  # (...) int, the looked-up rows
    num_embeddings: int  # V
    embedding_dim: int  # C
    dtype: np.dtype
    padding_idx: int | None


def embedding_forward(
    ids: np.ndarray, weight: np.ndarray, padding_idx: int | None = None
) -> tuple[np.ndarray, EmbeddingCache]:
    """Look up rows of ``weight``: ``y[...] = weight[ids[...]]``.

    Parameters
    ----------
    ids : integer ndarray, shape (...)
        Every id must lie in ``[0, V)``; anything else is a ``ValueError``.
    weight : ndarray, shape (V, C)
    padding_idx : int, optional
        As in ``torch.nn.Embedding``: the row of this id receives no gradient. An integer
        in ``[0, V)`` (``TypeError`` for ``1.5``, ``ValueError`` outside the range).

    Returns
    -------
    y : ndarray, shape (..., C)
    cache : EmbeddingCache
    """
    check_int_array("ids", ids)
    check_float_array("weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"weight: expected shape (num_embeddings, dim), got {weight.shape}")
    V = weight.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        bad = ids[(ids < 0) | (ids >= V)].flat[0]
        raise ValueError(f"ids: expected token ids in [0, {V}), got {bad}")
    padding_idx = check_padding_idx(padding_idx, V)
    return weight[ids], EmbeddingCache(
        ids=ids, num_embeddings=V, embedding_dim=weight.shape[1], dtype=weight.dtype, padding_idx=padding_idx
    )


def embedding_backward(dout: np.ndarray, cache: EmbeddingCache) -> np.ndarray:
    r"""Forward ``y[n] = W[ids[n]]``; backward :math:`dW_v = \sum_{n: ids_n = v} dy_n`.

    An id that appears several times accumulates all of its gradients
    (``np.add.at`` is an unbuffered scatter-add; plain ``dW[ids] += dy`` would
    keep only the last one). The ``padding_idx`` row gets zero.
    """
    ids = cache.ids
    C = cache.embedding_dim
    check_dout(dout, ids.shape + (C,), cache.dtype)
    dweight = np.zeros((cache.num_embeddings, C), dtype=dout.dtype)  # (V, C)
    np.add.at(dweight, ids.reshape(-1), dout.reshape(-1, C))
    if cache.padding_idx is not None:
        dweight[cache.padding_idx] = 0
    return dweight


def sinusoidal_positional_encoding(
    length: int, d_model: int, base: float = 10000.0, dtype: np.dtype | type = np.float64
) -> np.ndarray:
    r"""The fixed positional encoding of "Attention Is All You Need".

    .. math::
        PE(pos, 2i) = \sin(pos / base^{2i/d}),\qquad
        PE(pos, 2i+1) = \cos(pos / base^{2i/d})

    Each pair of columns ``(2i, 2i+1)`` is a point on a circle turning at
    frequency :math:`\omega_i = base^{-2i/d}`, so ``PE(pos + k)`` is ``PE(pos)``
    rotated by the angle :math:`k\,\omega_i` in every pair: a fixed linear map
    that depends on ``k`` only. An odd ``d_model`` keeps the last sine column.

    Returns
    -------
    ndarray, shape (length, d_model)
    """
    for name, value in (("length", length), ("d_model", d_model)):
        if not isinstance(value, (int, np.integer)) or value < (0 if name == "length" else 1):
            raise ValueError(
                f"{name}: expected a {'non-negative' if name == 'length' else 'positive'} int, got {value!r}"
            )
    check_positive_float("base", base)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    pos = np.arange(length, dtype=np.float64)[:, None]  # (L, 1)
    two_i = np.arange(0, d_model, 2, dtype=np.float64)  # (ceil(d/2),)
    angle = pos / base ** (two_i / d_model)  # (L, ceil(d/2))
    pe = np.empty((length, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : d_model // 2])
    return pe.astype(dtype)
