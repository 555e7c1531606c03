"""Boolean attention masks. One convention in the whole package: ``True`` = may attend.

This is the convention of ``torch.nn.functional.scaled_dot_product_attention``.
``torch.nn.MultiheadAttention``'s ``attn_mask`` / ``key_padding_mask`` use the
opposite one (``True`` = blocked); ``torch_transformer.bridge`` converts.

Shape legend: ``B`` batch, ``H`` heads, ``T`` query length, ``S`` key length.
"""

from __future__ import annotations

import numpy as np

from .checks import check_int_array, check_integer, check_non_negative_int, check_positive_int


def causal_mask(T: int, S: int | None = None) -> np.ndarray:
    """``(T, S)`` bool mask, ``True`` where key ``s <= t`` (query ``t`` sees no future key).

    Aligned at the top-left when ``T != S`` (query 0 sees key 0 only), which is
    what ``scaled_dot_product_attention(..., is_causal=True)`` does in PyTorch.
    """
    S = T if S is None else S
    for name, value in (("T", T), ("S", S)):
        check_non_negative_int(name, value)
    return np.tri(T, S, k=0, dtype=bool)


def sliding_window_mask(T: int, window: int, S: int | None = None) -> np.ndarray:
    """``(T, S)`` bool mask of causal local attention: ``True`` where ``t - window < s <= t``.

    Query ``t`` sees the last ``window`` positions, itself included: ``window=1`` sees only
    key ``t``, ``window >= T`` is :func:`causal_mask`. (Mistral's ``sliding_window``; in
    FlashAttention's ``window_size=(left, right)`` it is ``(window - 1, 0)``.) Aligned at the
    top-left when ``T != S``, as :func:`causal_mask`.
    """
    S = T if S is None else S
    for name, value in (("T", T), ("S", S)):
        check_non_negative_int(name, value)
    window = check_positive_int("window", window)
    # np.tri(k=j) is True where s <= t + j: keep s <= t, drop s <= t - window
    return np.tri(T, S, k=0, dtype=bool) & ~np.tri(T, S, k=-window, dtype=bool)


def padding_mask(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """``(B, 1, 1, S)`` bool mask from token ids ``(B, S)``: ``False`` at padded keys.

    Broadcasts against scores ``(B, H, T, S)``: every head and every query
    ignores the padded key positions.
    """
    check_int_array("ids", ids)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected shape (B, S), got {ids.shape}")
    pad_id = check_integer("pad_id", pad_id, low=None)
    return (ids != pad_id)[:, None, None, :]
