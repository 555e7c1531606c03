"""Classic attention modules: ``AdditiveAttention`` (Bahdanau) and ``LuongAttention``.

Shape legend: ``B`` batch, ``T`` decoder steps (optional), ``S`` source length,
``Dq`` query width, ``Dk`` key width, ``Dv`` value width, ``A`` attention width.

Each weight is a bias-free :class:`~numpy_transformer.modules.layers.Linear`, so
the state-dict keys (``w_q.weight``, ``w_k.weight``, ``v_a.weight``, ...) and the
initialisation (uniform :math:`\\pm 1/\\sqrt{\\text{in}}`) are ``torch.nn.Linear``'s.
The modules call the fused functional pairs of
:mod:`numpy_transformer.functional.classic_attention` with those weights.
"""

from __future__ import annotations

import numpy as np

from ..functional.checks import check_float_array, check_positive_int, check_rng
from ..functional.classic_attention import (
    LUONG_SCORES,
    AdditiveAttentionCache,
    LuongAttentionCache,
    additive_attention_backward,
    additive_attention_forward,
    luong_attention_backward,
    luong_attention_forward,
)
from .base import Module, check_module_dtype
from .layers import Linear


def _check_module_inputs(module: Module, query: object, keys: object, values: object) -> None:
    for name, x in (("query", query), ("keys", keys), ("values", values)):
        check_float_array(name, x)
        if x.dtype != module.dtype:
            raise TypeError(f"{name}: expected dtype {module.dtype} (the module's dtype), got {x.dtype}")
    if query.ndim not in (2, 3) or query.shape[-1] != module.query_dim:
        raise ValueError(
            f"query: expected shape (B, {module.query_dim}) or (B, T, {module.query_dim}), got {query.shape}"
        )
    if keys.ndim != 3 or keys.shape[-1] != module.key_dim:
        raise ValueError(f"keys: expected shape (B, S, {module.key_dim}), got {keys.shape}")


class AdditiveAttention(Module):
    r"""Bahdanau attention: :math:`e_s = v_a^T \tanh(W_q q + W_k k_s)`, context :math:`\sum_s w_s v_s`, w = softmax(e).

    Parameters: ``w_q.weight`` (A, Dq), ``w_k.weight`` (A, Dk), ``v_a.weight`` (1, A),
    each a bias-free ``Linear`` initialised as ``torch.nn.Linear``.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        attn_dim: int,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.query_dim = check_positive_int("query_dim", query_dim)
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.attn_dim = check_positive_int("attn_dim", attn_dim)
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        self.w_q = Linear(query_dim, attn_dim, bias=False, dtype=dtype, rng=rng)
        self.w_k = Linear(key_dim, attn_dim, bias=False, dtype=dtype, rng=rng)
        self.v_a = Linear(attn_dim, 1, bias=False, dtype=dtype, rng=rng)

    def forward(
        self, query: np.ndarray, keys: np.ndarray, values: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, AdditiveAttentionCache]:
        """Attend from ``query`` (B, Dq) or (B, T, Dq) over ``keys`` (B, S, Dk) / ``values`` (B, S, Dv).

        ``mask``: bool (B, S), ``True`` = may attend. Returns the context (B, [T,] Dv)
        and the cache, whose ``weights`` are (B, [T,] S).
        """
        _check_module_inputs(self, query, keys, values)
        return additive_attention_forward(
            query, keys, values, self.w_q.weight, self.w_k.weight, self.v_a.weight[0], mask=mask
        )

    def backward(self, dout: np.ndarray, cache: AdditiveAttentionCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(dquery, dkeys, dvalues)``; parameter gradients are accumulated."""
        dq, dk, dv, dw_q, dw_k, dv_a = additive_attention_backward(dout, cache)
        self.w_q.accumulate_grad("weight", dw_q)
        self.w_k.accumulate_grad("weight", dw_k)
        self.v_a.accumulate_grad("weight", dv_a[None, :])  # (1, A)
        return dq, dk, dv


class LuongAttention(Module):
    r"""Luong attention with the ``dot``, ``general`` or ``concat`` score.

    Parameters by score: ``dot`` none (needs ``query_dim == key_dim``);
    ``general`` ``w.weight`` (Dq, Dk), score :math:`q^T W k_s`; ``concat``
    ``w_c.weight`` (A, Dq + Dk) and ``v_c.weight`` (1, A), score
    :math:`v_c^T \tanh(W_c [q; k_s])`, with ``attn_dim`` = A (default ``query_dim``).
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        score: str,
        attn_dim: int | None = None,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if score not in LUONG_SCORES:
            raise ValueError(f"score: expected one of {LUONG_SCORES}, got {score!r}")
        self.query_dim = check_positive_int("query_dim", query_dim)
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.score = score
        self.dtype = check_module_dtype(dtype)
        if score != "concat" and attn_dim is not None:
            raise ValueError(f"attn_dim: only used by score='concat', got {attn_dim!r} with score={score!r}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f"key_dim: score='dot' needs key_dim == query_dim = {query_dim}, got {key_dim}")
        self.attn_dim = check_positive_int("attn_dim", query_dim if attn_dim is None else attn_dim)
        rng = check_rng(rng)
        if score == "general":
            self.w = Linear(key_dim, query_dim, bias=False, dtype=dtype, rng=rng)  # (Dq, Dk): q^T (W k_s)
        elif score == "concat":
            self.w_c = Linear(query_dim + key_dim, self.attn_dim, bias=False, dtype=dtype, rng=rng)
            self.v_c = Linear(self.attn_dim, 1, bias=False, dtype=dtype, rng=rng)

    def forward(
        self, query: np.ndarray, keys: np.ndarray, values: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, LuongAttentionCache]:
        """Attend from ``query`` (B, Dq) or (B, T, Dq) over ``keys`` (B, S, Dk) / ``values`` (B, S, Dv)."""
        _check_module_inputs(self, query, keys, values)
        weights = {}
        if self.score == "general":
            weights["w"] = self.w.weight
        elif self.score == "concat":
            weights["w_c"], weights["v_c"] = self.w_c.weight, self.v_c.weight[0]
        return luong_attention_forward(query, keys, values, self.score, mask=mask, **weights)

    def backward(self, dout: np.ndarray, cache: LuongAttentionCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(dquery, dkeys, dvalues)``; parameter gradients are accumulated."""
        if not isinstance(cache, LuongAttentionCache) or cache.score_name != self.score:
            got = getattr(cache, "score_name", type(cache).__name__)
            raise ValueError(f"cache: expected the cache of this module's forward (score={self.score!r}), got {got!r}")
        dq, dk, dv, dw, dw_c, dv_c = luong_attention_backward(dout, cache)
        if self.score == "general":
            self.w.accumulate_grad("weight", dw)
        elif self.score == "concat":
            self.w_c.accumulate_grad("weight", dw_c)
            self.v_c.accumulate_grad("weight", dv_c[None, :])  # (1, A)
        return dq, dk, dv
