"""Input validation shared by the whole package: arrays first, then scalars.

Every public op, module, model, optimizer and command checks its arguments up front
so that a mistake surfaces as a clear ``TypeError`` / ``ValueError`` naming the
argument, what was expected and what was given, instead of as a broadcasting
accident deep inside a backward pass. This file is the one home of those checks.
"""

from __future__ import annotations

import math
import numbers

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


def check_float_layout(
    name: str, x: object, layout: tuple[str, ...], *, may_be_empty: tuple[str, ...] = ()
) -> np.ndarray:
    """A float32/float64 array with exactly one axis per letter of ``layout``, each of size >= 1.

    ``layout`` names the axes for the message, e.g. ``("N", "C", "H", "W")``; the letters in
    ``may_be_empty`` (a batch ``N``) may have size 0.
    """
    check_float_array(name, x)
    letters = "(" + ", ".join(layout) + ")"
    if x.ndim != len(layout):
        raise ValueError(f"{name}: expected shape {letters} ({len(layout)} dimensions), got shape {x.shape}")
    empty = [letter for letter, size in zip(layout, x.shape, strict=True) if size < 1 and letter not in may_be_empty]
    if empty:
        raise ValueError(f"{name}: expected shape {letters} with {', '.join(empty)} >= 1, got shape {x.shape}")
    return x


def check_axis_size(name: str, x: np.ndarray, axis: int, expected: int, what: str) -> None:
    """``x.shape[axis]`` must be ``expected``; ``what`` says what the axis holds and where ``expected`` comes from."""
    if x.shape[axis] != expected:
        raise ValueError(f"{name}: expected {what} = {expected} at axis {axis}, got shape {x.shape}")


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


def check_axis(axis: object, ndim: int, name: str = "axis") -> int:
    """An int (not a bool) in ``[-ndim, ndim)``, returned as a Python int; ValueError otherwise."""
    if not _is_int(axis) or not -ndim <= axis < ndim:
        raise ValueError(f"{name}: expected an int in [{-ndim}, {ndim}), got {axis!r}")
    return int(axis)


def check_nonempty_axis(name: str, x: np.ndarray, axis: int, what: str) -> None:
    """``x.shape[axis]`` must be at least 1: a softmax, a mean or a max over nothing is undefined.

    ``what`` says what the axis holds, for the message (``"classes V"``, ``"keys S"``).
    """
    if x.shape[axis] < 1:
        raise ValueError(f"{name}: expected axis {axis} ({what}) to have size >= 1, got shape {x.shape}")


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


# ---------------------------------------------------------------------------- scalars
#
# Two families, kept apart on purpose. Sizes and counts (``check_int``, ``check_positive_int``),
# epsilons (``check_positive_float``) and probabilities (``check_dropout_p``) raise ValueError for
# any wrong value, a float included: ``d_model=2.0`` is a wrong size. Optimizer hyper-parameters
# and the ops' other scalars (``check_real``, ``check_integer``, ``check_bool``: an attention
# ``scale``, ``label_smoothing``, ``ignore_index``, ``padding_idx``, ``is_causal``) raise TypeError
# for a wrong type and ValueError for a wrong value, as ``torch.optim`` and ``torch.nn.functional`` do.
# NumPy scalars (``np.int64(0)``, ``np.float32(0.1)``) count as the Python numbers they hold.


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` must be an int in ``[low, high]`` (an open end where a bound is None); ValueError otherwise."""
    if low is None and high is None:
        bound = ""
    elif high is None:
        bound = f" >= {low}"
    elif low is None:
        bound = f" <= {high}"
    else:
        bound = f" in [{low}, {high}]"
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected an int{bound}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: object) -> int:
    """A size: an int >= 1 (not a bool, not a float); ValueError otherwise."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: object) -> int:
    """A count that may be zero (layers, ids): an int >= 0 (not a bool); ValueError otherwise."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: object) -> float:
    """A finite real number > 0 (an epsilon, a base, a standard deviation); ValueError otherwise.

    ``inf`` is refused too: ``eps=inf`` in a LayerNorm silently gives zeros.
    """
    value = _scalar(value)
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not value > 0
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name}: expected a positive float (finite, > 0), got {value!r}")
    return float(value)


def check_dropout_p(p: object, name: str = "p") -> float:
    """A dropout probability in ``[0, 1)`` (1 would drop everything and divide by zero).

    Python and NumPy numbers alike (``np.int64(0)``, ``np.float32(0.1)``, a 0-d array); not a bool.
    """
    p = _scalar(p)
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p!r}")
    return float(p)


def check_positive_number(name: str, value: object) -> float:
    """A finite real number > 0 (not a bool) as a Python float; ValueError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _scalar(value: object) -> object:
    """A 0-d array stands for its element (``torch.optim`` accepts 0-d tensors the same way)."""
    return value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value


def check_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    low_inclusive: bool = True,
    high: float | None = None,
) -> float:
    """A finite real number (not a bool) as a Python float, optionally bounded below and above (inclusive).

    TypeError for a value that is not a real number, ValueError for one out of range.
    """
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name}: expected a finite number, got {out!r}")
    too_low = low is not None and (out < low or (out == low and not low_inclusive))
    if too_low or (high is not None and out > high):
        if high is None:
            bound = f">= {low}" if low_inclusive else f"> {low}"
        elif low is None:
            bound = f"<= {high}"
        else:
            bound = f"in {'[' if low_inclusive else '('}{low}, {high}]"
        raise ValueError(f"{name}: expected a number {bound}, got {out!r}")
    return out


def check_integer(name: str, value: object, *, low: int | None = 0) -> int:
    """An integer (not a bool) >= ``low`` (any, with ``low=None``) as a Python int.

    TypeError for a non-integer (``1.5``, ``"x"``), ValueError below ``low``.
    """
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    out = int(value)
    if low is not None and out < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {out}")
    return out


def check_int_tuple(name: str, value: object, n: int, *, low: int) -> tuple[int, ...]:
    """An int, or a tuple / list of ``n`` ints, each >= ``low``, as a tuple of ``n`` Python ints.

    The ``stride`` / ``padding`` / ``kernel_size`` of a convolution or a pooling, as
    ``torch.nn.functional`` takes them: ``2`` means ``(2, 2)`` for a 2-D op. TypeError for
    what is not an integer (``1.5``, ``True``, ``"2"``), ValueError for a wrong length or a
    value below ``low``.
    """
    what = "an int or a tuple of 1 int" if n == 1 else f"an int or a tuple of {n} ints"
    value = _scalar(value)
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in items):
        raise TypeError(f"{name}: expected {what} (not bools), got {type(value).__name__} {value!r}")
    if len(items) != n:
        raise ValueError(f"{name}: expected {what}, got {len(items)} values {value!r}")
    if any(v < low for v in items):
        raise ValueError(f"{name}: expected {what} >= {low}, got {value!r}")
    return tuple(int(v) for v in items)


def check_padding_idx(padding_idx: object, num_embeddings: int) -> int | None:
    """None, or an integer id in ``[0, num_embeddings)``: TypeError for a non-integer (``1.5``), ValueError outside."""
    if padding_idx is None:
        return None
    idx = check_integer("padding_idx", padding_idx, low=None)
    if not 0 <= idx < num_embeddings:
        raise ValueError(f"padding_idx: expected an id in [0, {num_embeddings}), got {idx}")
    return idx


def check_bool(name: str, value: object) -> bool:
    """A bool (Python or NumPy); TypeError otherwise, so ``"yes"`` or ``1`` never pass for True."""
    value = _scalar(value)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_rng(rng: object, name: str = "rng") -> np.random.Generator:
    """An explicit ``numpy.random.Generator``, or None for a fresh unseeded one."""
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name}: expected a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


# ---------------------------------------------------------------------------- sliding windows
# Convolution and pooling slide a kernel over a padded input; these two checks say, before
# any arithmetic, when the geometry makes no sense.


def check_kernel_fits(
    name: str, kernel: tuple[int, ...], spatial: tuple[int, ...], padding: tuple[int, ...], *, input_name: str = "x"
) -> None:
    """Every kernel extent must fit the padded input, ``k <= size + 2 * padding``: else no window exists."""
    padded = tuple(s + 2 * p for s, p in zip(spatial, padding, strict=True))
    if any(k > s for k, s in zip(kernel, padded, strict=True)):
        raise ValueError(
            f"{name}: expected a kernel no larger than the padded input {padded} "
            f"({input_name}'s {spatial} plus padding {padding} on each side), got kernel {kernel}"
        )


def check_pool_padding(padding: tuple[int, ...], kernel: tuple[int, ...]) -> None:
    """Max-pooling padding at most half the kernel in each dimension, ``2 * p <= k``, as torch requires.

    Padding counts as ``-inf``; with more of it a window could hold nothing but padding
    and have no maximum to pass a gradient to.
    """
    if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        raise ValueError(
            f"padding: expected at most half of kernel_size in each dimension "
            f"(torch requires padding <= kernel_size / 2), got padding {padding} for kernel_size {kernel}"
        )
