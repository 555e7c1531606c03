"""Inverted dropout: zero each unit with probability ``p``, scale the rest by ``1/(1-p)``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_dropout_p, check_float_array, check_shape


@dataclass(frozen=True)
class DropoutCache:
    keep: np.ndarray | None  # (...) bool, True = unit kept; None when dropout was the identity
    scale: float  # 1 / (1 - p)
    dtype: np.dtype
    shape: tuple[int, ...]


def draw_dropout_mask(
    shape: tuple[int, ...], p: float, rng: np.random.Generator | None, name: str = "rng"
) -> np.ndarray:
    """Draw a boolean keep-mask (True = kept, probability ``1 - p``) from ``rng``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name}: dropout with p > 0 in training mode needs a numpy.random.Generator "
            f"(or an explicit mask), got {type(rng).__name__}"
        )
    # A unit is kept when a uniform 32-bit integer u is >= p * 2**32: probability 1 - p to within
    # 2**-33 (float32 uniforms resolve only 2**-24), and random integers are the cheapest draw there is
    # (a 64-bit generator gives two per output). Drawn in blocks, so that the temporary integers of a
    # large mask stay small; the blocks have an even size, so the units get the same integers as in
    # one draw of the whole mask.
    n = math.prod(shape)
    threshold = np.uint32(min(round(p * 2**32), 2**32 - 1))
    keep = np.empty(n, dtype=np.bool_)
    for start in range(0, n, _DRAW_BLOCK):
        stop = min(start + _DRAW_BLOCK, n)
        np.greater_equal(_uniform_uint32(rng, stop - start), threshold, out=keep[start:stop])
    return keep.reshape(shape)


_DRAW_BLOCK = 2**16  # units per block of draw_dropout_mask (even): 256 KiB of integers at a time
# Bit generators whose every raw output is 64 random bits (MT19937's are 32, in a uint64).
_RAW_64_BITS = (np.random.PCG64, np.random.PCG64DXSM, np.random.SFC64, np.random.Philox)


def _uniform_uint32(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` independent uniform integers in [0, 2**32), as uint32: the raw 64-bit outputs split in halves."""
    if isinstance(rng.bit_generator, _RAW_64_BITS):
        return rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]
    return rng.integers(0, 2**32, size=n, dtype=np.uint32)


def dropout_forward(
    x: np.ndarray,
    p: float,
    rng: np.random.Generator | None = None,
    mask: np.ndarray | None = None,
    training: bool = True,
) -> tuple[np.ndarray, DropoutCache]:
    """Inverted dropout.

    Parameters
    ----------
    x : ndarray, shape (...)
    p : float in [0, 1)
        Probability of zeroing a unit.
    rng : numpy.random.Generator, optional
        Draws the keep-mask when ``mask`` is not given.
    mask : ndarray of bool, shape (...), optional
        Explicit keep-mask (True = kept). Lets the PyTorch twin drop the same units.
    training : bool
        In eval mode (or with ``p == 0``) dropout is the identity.

    Returns
    -------
    y : ndarray, shape (...), ``x * mask / (1 - p)``
    cache : DropoutCache
    """
    check_float_array("x", x)
    p = check_dropout_p(p)
    if not training or p == 0.0:
        return x, DropoutCache(keep=None, scale=1.0, dtype=x.dtype, shape=x.shape)
    if mask is None:
        mask = draw_dropout_mask(x.shape, p, rng)
    else:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            raise TypeError(f"mask: expected a bool ndarray (True = keep), got {getattr(mask, 'dtype', type(mask))}")
        check_shape("mask", mask, x.shape)
    scale = 1.0 / (1.0 - p)
    y = x * mask  # bool mask: dropped units become exactly 0, kept ones unchanged
    y *= x.dtype.type(scale)
    return y, DropoutCache(keep=mask, scale=scale, dtype=x.dtype, shape=x.shape)


def dropout_backward(dout: np.ndarray, cache: DropoutCache) -> np.ndarray:
    r"""Forward ``y = x \cdot m / (1-p)``; backward :math:`dx = dy \cdot m / (1-p)`."""
    check_dout(dout, cache.shape, cache.dtype)
    if cache.keep is None:
        return dout
    dx = dout * cache.keep
    dx *= dout.dtype.type(cache.scale)
    return dx
