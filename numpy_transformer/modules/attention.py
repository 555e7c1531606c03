"""Multi-head attention with explicit ``q_proj / k_proj / v_proj / out_proj``.

Shape legend: ``B`` batch, ``T`` query length, ``S`` key length, ``C`` d_model,
``H`` heads, ``D = C // H`` head width.

Masks (one convention in the package: ``True`` = may attend)
-------------------------------------------------------------
``mask`` is broadcast against the scores (B, H, T, S) and must be 4-D (each axis its size or 1):
``padding_mask(ids, pad)`` (B, 1, 1, S), a causal pattern ``causal_mask(T)[None, None]``
(1, 1, T, T), or their ``&``. A padding mask in its natural (B, S) form goes to
``key_padding_mask``. Masks of fewer axes are refused: a 2-D mask could be a (T, S) pattern or
a (B, S) padding mask, and read as (T, S) the latter would be applied to the wrong rows whenever
B == T, with no error to tell. ``key_padding_mask`` is ``True`` at real tokens (the keys that
may be attended to) and ``False`` at padding -- the opposite of
``torch.nn.MultiheadAttention``'s argument of the same name (``bridge`` converts).
(The functional ``scaled_dot_product_attention_forward`` broadcasts any mask, as PyTorch's
does: it has no separate batch of sentences to confuse with queries.)

Standard or flash attention
---------------------------
``attention="standard"`` (the default) computes the (B, H, T, S) weights and keeps them in the
cache (with dropout also the bool keep-mask, nothing else of that size); ``attention="flash"``
runs ``flash_attention_forward``, tile by tile, and keeps one log-sum-exp per query row instead
(``functional/flash_attention.py``). The numbers are the same up to rounding, the parameters and
state dict identical, and attention dropout the same: given the same keep-mask (``dropout_mask``,
or the one drawn from ``rng`` the same way) both kernels drop the same weights. With dropout the
flash cache holds that (B, H, T, S) mask, as bools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.attention import (
    AttentionCache,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from ..functional.checks import check_dropout_p, check_float_array, check_positive_int, check_rng
from ..functional.flash_attention import (
    FlashAttentionCache,
    check_attention_kind,
    flash_attention_backward,
    flash_attention_forward,
)
from ..functional.intermediates import gradient_at
from ..functional.linear import LinearCache
from .base import Module, check_module_dtype
from .layers import Linear


@dataclass(frozen=True)
class MultiHeadAttentionCache:
    q_proj: LinearCache
    k_proj: LinearCache
    v_proj: LinearCache
    attention: AttentionCache | FlashAttentionCache  # per-head tensors: (B, H, T, S) weights, or (B, H, T) lse
    out_proj: LinearCache

    @property
    def weights(self) -> np.ndarray:
        """Per-head attention probabilities, shape (B, H, T, S) (recomputed from the lse for flash attention)."""
        return self.attention.weights


class MultiHeadAttention(Module):
    r"""``out_proj(concat_h(attention(q_proj(query)_h, k_proj(key)_h, v_proj(value)_h)))``.

    Serves self-attention (``query is key is value``) and cross-attention
    (``T != S``). Initialised as ``torch.nn.MultiheadAttention``: the three input
    projections Xavier-uniform as if packed into one ``(3C, C)`` matrix (bound
    :math:`\sqrt{6/(4C)}`), ``out_proj.weight`` as ``nn.Linear``, all biases zero.
    ``attention`` is ``"standard"`` or ``"flash"`` (see the module docstring).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        bias: bool = True,
        dropout: float = 0.0,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        attention: str = "standard",
    ) -> None:
        super().__init__()
        self.attention = check_attention_kind(attention)
        self.d_model = check_positive_int("d_model", d_model)
        self.n_heads = check_positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={d_model}, got {n_heads}")
        self.head_dim = d_model // n_heads
        self.dropout = check_dropout_p(dropout, "dropout")
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        self.q_proj = Linear(d_model, d_model, bias=bias, dtype=dtype, rng=rng)
        self.k_proj = Linear(d_model, d_model, bias=bias, dtype=dtype, rng=rng)
        self.v_proj = Linear(d_model, d_model, bias=bias, dtype=dtype, rng=rng)
        self.out_proj = Linear(d_model, d_model, bias=bias, dtype=dtype, rng=rng)
        in_bound = np.sqrt(6.0 / (d_model + 3 * d_model))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            proj.weight[...] = rng.uniform(-in_bound, in_bound, proj.weight.shape)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                proj.bias[...] = 0

    def split_heads(self, x: np.ndarray) -> np.ndarray:
        """(B, L, C) -> (B, H, L, D): head h owns features h*D .. (h+1)*D - 1. Its backward is merge_heads."""
        B, L, _ = x.shape
        return x.reshape(B, L, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, H, L, D)

    @staticmethod
    def merge_heads(x: np.ndarray) -> np.ndarray:
        """(B, H, L, D) -> (B, L, C), the inverse of split_heads (and its backward)."""
        B, H, L, D = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, L, H * D)  # (B, L, C)

    def forward(
        self,
        query: np.ndarray,
        key: np.ndarray,
        value: np.ndarray,
        mask: np.ndarray | None = None,
        is_causal: bool = False,
        rng: np.random.Generator | None = None,
        dropout_mask: np.ndarray | None = None,
        *,
        key_padding_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, MultiHeadAttentionCache]:
        """Attend from ``query`` (B, T, C) over ``key`` / ``value`` (B, S, C), ``S >= 1``.

        ``mask``: bool, ``True`` = may attend; 4-D, broadcastable to (B, H, T, S), e.g.
        ``padding_mask(ids, pad)`` of shape (B, 1, 1, S) or ``causal_mask(T)[None, None]``
        (1, 1, T, T); fewer axes are refused (a (B, S) padding mask goes to ``key_padding_mask``).
        ``key_padding_mask``: bool (B, S), ``True`` = real token (may be attended to),
        ``False`` = padding; applied as (B, 1, 1, S), together with ``mask`` and ``is_causal``.
        ``dropout_mask``: explicit (B, H, T, S) keep-mask for the attention weights.
        """
        C = self.d_model
        for name, x in (("query", query), ("key", key), ("value", value)):
            check_float_array(name, x)
            if x.dtype != self.dtype:
                raise TypeError(f"{name}: expected dtype {self.dtype} (the module's dtype), got {x.dtype}")
            if x.ndim != 3 or x.shape[-1] != C:
                raise ValueError(f"{name}: expected shape (B, L, {C}), got {x.shape}")
        if key.shape != value.shape or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"key, value: expected shape ({query.shape[0]}, S, {C}) each, got {key.shape} and {value.shape}"
            )
        if key.shape[1] < 1:
            raise ValueError(f"key: expected at least one key position (S >= 1), got shape {key.shape}")
        mask = self._combined_mask(mask, key_padding_mask, query.shape[1], key.shape[:2])
        q, cq = self.q_proj.forward(query)  # (B, T, C)
        k, ck = self.k_proj.forward(key)  # (B, S, C)
        v, cv = self.v_proj.forward(value)  # (B, S, C)
        p = self.dropout if self.training else 0.0
        # The two kernels take the same arguments and give the same numbers (the flash one tile by tile).
        kernel = flash_attention_forward if self.attention == "flash" else scaled_dot_product_attention_forward
        heads, ca = kernel(
            self.split_heads(q),
            self.split_heads(k),
            self.split_heads(v),  # (B, H, L, D)
            mask=mask,
            is_causal=is_causal,
            dropout_p=p,
            rng=rng,
            dropout_mask=dropout_mask,
        )  # (B, H, T, D)
        out, co = self.out_proj.forward(self.merge_heads(heads))  # (B, T, C)
        return out, MultiHeadAttentionCache(q_proj=cq, k_proj=ck, v_proj=cv, attention=ca, out_proj=co)

    def _combined_mask(
        self, mask: object, key_padding_mask: object, T: int, batch_and_keys: tuple[int, int]
    ) -> np.ndarray | None:
        """Check ``mask`` and ``key_padding_mask`` (see the module docstring); return ``mask & keep``.

        The result broadcasts to (B, H, T, S): ``mask`` as given, or (B, 1, T|1, S) with the padding.
        """
        B, S = batch_and_keys
        scores = (B, self.n_heads, T, S)
        hint = "; a (B, S) padding mask (True = real token) goes to key_padding_mask=, not mask="
        if mask is not None:
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
                raise TypeError(
                    "mask: expected a bool ndarray (True = may attend), "
                    f"got {getattr(mask, 'dtype', type(mask).__name__)}"
                )
            if mask.ndim != 4:  # a 2-D mask could be (T, S) or a (B, S) padding mask: B == T would hide the mistake
                raise ValueError(
                    f"mask: expected a 4-D mask broadcastable to (B, H, T, S) = {scores}, e.g. "
                    f"causal_mask(T)[None, None] for a (T, S) pattern, got shape {mask.shape}{hint}"
                )
            if any(a not in (1, b) for a, b in zip(mask.shape[::-1], scores[::-1], strict=False)):
                raise ValueError(
                    f"mask: expected a shape broadcastable to (B, H, T, S) = {scores}, got {mask.shape}{hint}"
                )
        if key_padding_mask is None:
            return mask
        if not isinstance(key_padding_mask, np.ndarray) or key_padding_mask.dtype != np.bool_:
            raise TypeError(
                "key_padding_mask: expected a bool ndarray (True = real token, False = padding), "
                f"got {getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}"
            )
        if key_padding_mask.shape != (B, S):
            raise ValueError(
                f"key_padding_mask: expected shape (B, S) = {(B, S)} (True = real token), got {key_padding_mask.shape}"
            )
        keep = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        return keep if mask is None else mask & keep  # (B, 1|H, T|1, S)

    def backward(self, dout: np.ndarray, cache: MultiHeadAttentionCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(dquery, dkey, dvalue)``, separate even for self-attention.

        For self-attention the caller adds the three to get the gradient of ``x``.
        """
        # out = out_proj(merge_heads(heads))
        dmerged = gradient_at("merged", self.out_proj.backward(dout, cache.out_proj))  # (B, T, C)
        dheads = gradient_at("heads", self.split_heads(dmerged))  # (B, H, T, D)
        # heads = attention(split(q), split(k), split(v))
        if isinstance(cache.attention, FlashAttentionCache):  # the backward of the forward that made the cache
            dq, dk, dv = flash_attention_backward(dheads, cache.attention)
        else:
            dq, dk, dv = scaled_dot_product_attention_backward(dheads, cache.attention)
        # q = q_proj(query), ...
        dquery = self.q_proj.backward(self.merge_heads(gradient_at("q_heads", dq)), cache.q_proj)  # (B, T, C)
        dkey = self.k_proj.backward(self.merge_heads(gradient_at("k_heads", dk)), cache.k_proj)  # (B, S, C)
        dvalue = self.v_proj.backward(self.merge_heads(gradient_at("v_heads", dv)), cache.v_proj)  # (B, S, C)
        return dquery, dkey, dvalue
