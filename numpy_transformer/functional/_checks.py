"""Input validation shared by every op.

Every public op checks its arguments up front so that a mistake surfaces as a
clear ``TypeError`` / ``ValueError`` naming the argument, what was expected
and what was given, instead of as a broadcasting accident deep inside a
backward pass.
"""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_array(name: str, x: object, *, ndim_min: int = 0) -> np.ndarray:
    """Return ``x`` if it is a float32/float64 ndarray with at least ``ndim_min`` dims."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if x.ndim < ndim_min:
        raise ValueError(f"{name}: expected at least {ndim_min} dimension(s), got shape {x.shape}")
    return x


def check_same_dtype(**arrays: np.ndarray | None) -> np.dtype:
    """All given arrays (``None`` skipped) must share one float dtype; return it."""
    named = [(name, a) for name, a in arrays.items() if a is not None]
    first_name, first = named[0]
    for name, a in named[1:]:
        if a.dtype != first.dtype:
            raise TypeError(
                f"{name}: expected dtype {first.dtype} (the dtype of {first_name}), "
                f"got {a.dtype}; convert explicitly, nothing is upcast silently"
            )
    return first.dtype


def check_shape(name: str, x: np.ndarray, expected: tuple[int, ...]) -> None:
    """``x.shape`` must equal ``expected`` exactly."""
    if x.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {x.shape}")


def check_int_array(name: str, x: object) -> np.ndarray:
    """Return ``x`` if it is an ndarray of integers (any width, signed or not)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of integers, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer dtype, got {x.dtype}")
    return x


def check_token_ids(
    name: str, ids: object, vocab_size: int, max_len: int | None = None, *, length_name: str = "max_len"
) -> np.ndarray:
    """Return ``ids`` if it is a (B, L) integer array, ``B, L >= 1``, ``L <= max_len``, ids in ``[0, vocab_size)``.

    ``length_name`` is how the limit is called in the message (``max_position_embeddings`` for BERT).
    """
    check_int_array(name, ids)
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"{name}: expected token ids of shape (B, L) with B, L >= 1, got {ids.shape}")
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"{name}: expected length L <= {length_name}={max_len}, got {ids.shape[1]}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"{name}: expected token ids in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]")
    return ids


def check_broadcastable(name: str, x: np.ndarray, target: tuple[int, ...]) -> None:
    """``x`` must broadcast to ``target`` without growing ``target``.

    Each of ``x``'s trailing dimensions must be 1 or equal to the matching
    dimension of ``target``, and ``x`` may not have more dimensions.
    """
    if x.ndim > len(target) or any(a not in (1, b) for a, b in zip(x.shape[::-1], target[::-1], strict=False)):
        raise ValueError(
            f"{name}: expected a shape broadcastable to {tuple(target)} "
            f"(each dimension 1 or equal, aligned on the right), got {x.shape}"
        )


def check_dout(dout: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The upstream gradient must have the forward output's shape and dtype (no silent upcast)."""
    check_float_array("dout", dout)
    if dout.dtype != dtype:
        raise TypeError(f"dout: expected dtype {np.dtype(dtype)} (the dtype of the forward pass), got {dout.dtype}")
    check_shape("dout", dout, tuple(shape))
    return dout
