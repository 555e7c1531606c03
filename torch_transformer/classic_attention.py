"""The twin of classic attention: additive (Bahdanau) and Luong's dot / general / concat scores.

Written from elementary tensor operations in the form the papers give, so
autograd differentiates the formulas themselves. Two choices differ on purpose
from the NumPy half, so that the comparison checks an algebraic step too:
``general`` projects the keys (:math:`q^T (W k_s)`) where NumPy projects the
query (:math:`(q^T W) k_s`), and ``concat`` really concatenates :math:`[q; k_s]`
where NumPy splits :math:`W_c` by columns.

Shape legend: ``B`` batch, ``T`` decoder steps (optional), ``S`` source length,
``Dq``, ``Dk``, ``Dv`` query, key, value widths, ``A`` attention width. Masks:
bool, ``True`` = may attend, ``(B, S)`` or, with a time axis, ``(B, T, S)``; a
fully masked row gets all-zero weights, as in NumPy.
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import masked_softmax
from .intermediates import expose
from .modules import Linear

LUONG_SCORES = ("dot", "general", "concat")


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over S of (B, T, S) scores; masked positions and fully masked rows get weight 0."""
    if mask is None:
        return masked_softmax(scores, torch.ones_like(scores, dtype=torch.bool))
    allowed = mask[:, None, :] if mask.dim() == 2 else mask  # (B, 1 or T, S)
    return masked_softmax(scores, allowed.expand(scores.shape))


def _attend(scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, has_time: bool, return_weights: bool):
    weights = expose("weights", _masked_softmax(expose("scores", scores), mask))  # (B, T, S)
    context = weights @ v  # (B, T, Dv)
    if not has_time:
        weights, context = weights[:, 0], context[:, 0]
    return (context, weights) if return_weights else context


def additive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    v_a: torch.Tensor,
    mask: torch.Tensor | None = None,
    return_weights: bool = False,
):
    """:math:`e_s = v_a^T \\tanh(W_q q + W_k k_s)`, masked softmax over S, context :math:`\\sum_s w_s v_s`."""
    has_time = q.dim() == 3
    q3 = q if has_time else q[:, None, :]  # (B, T, Dq)
    h = expose("h", torch.tanh(expose("z", (q3 @ w_q.T)[:, :, None, :] + (k @ w_k.T)[:, None, :, :])))  # (B, T, S, A)
    scores = (h * v_a).sum(dim=-1)  # (B, T, S)
    return _attend(scores, v, mask, has_time, return_weights)


def luong_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score: str = "dot",
    w: torch.Tensor | None = None,
    w_c: torch.Tensor | None = None,
    v_c: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    return_weights: bool = False,
):
    """Luong attention: ``dot`` q^T k_s, ``general`` q^T (W k_s), ``concat`` v_c^T tanh(W_c [q; k_s])."""
    if score not in LUONG_SCORES:
        raise ValueError(f"score: expected one of {LUONG_SCORES}, got {score!r}")
    has_time = q.dim() == 3
    q3 = q if has_time else q[:, None, :]  # (B, T, Dq)
    if score == "dot":
        scores = q3 @ k.transpose(-1, -2)  # (B, T, S)
    elif score == "general":
        scores = q3 @ (k @ w.T).transpose(-1, -2)  # W k_s: (B, S, Dq), then (B, T, S)
    else:
        B, T, Dq = q3.shape
        S, Dk = k.shape[1], k.shape[2]
        pairs = torch.cat([q3[:, :, None, :].expand(B, T, S, Dq), k[:, None, :, :].expand(B, T, S, Dk)], dim=-1)
        h = expose("h", torch.tanh(expose("z", pairs @ w_c.T)))  # (B, T, S, A): z = W_c [q; k_s]
        scores = (h * v_c).sum(dim=-1)  # (B, T, S)
    return _attend(scores, v, mask, has_time, return_weights)


class AdditiveAttention(nn.Module):
    """Twin of ``numpy_transformer.AdditiveAttention``: keys ``w_q.weight``, ``w_k.weight``, ``v_a.weight``."""

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        attn_dim: int,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.w_q = Linear(query_dim, attn_dim, bias=False, dtype=dtype, device=device)
        self.w_k = Linear(key_dim, attn_dim, bias=False, dtype=dtype, device=device)
        self.v_a = Linear(attn_dim, 1, bias=False, dtype=dtype, device=device)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ):
        return additive_attention(
            query, keys, values, self.w_q.weight, self.w_k.weight, self.v_a.weight[0], mask, return_weights
        )


class LuongAttention(nn.Module):
    """Twin of ``numpy_transformer.LuongAttention``: ``w.weight`` (general), ``w_c.weight``, ``v_c.weight`` (concat)."""

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        score: str,
        attn_dim: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if score not in LUONG_SCORES:
            raise ValueError(f"score: expected one of {LUONG_SCORES}, got {score!r}")
        if score != "concat" and attn_dim is not None:
            raise ValueError(f"attn_dim: only used by score='concat', got {attn_dim!r} with score={score!r}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f"key_dim: score='dot' needs key_dim == query_dim = {query_dim}, got {key_dim}")
        self.score = score
        attn_dim = query_dim if attn_dim is None else attn_dim
        if score == "general":
            self.w = Linear(key_dim, query_dim, bias=False, dtype=dtype, device=device)
        elif score == "concat":
            self.w_c = Linear(query_dim + key_dim, attn_dim, bias=False, dtype=dtype, device=device)
            self.v_c = Linear(attn_dim, 1, bias=False, dtype=dtype, device=device)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ):
        weights = {}
        if self.score == "general":
            weights["w"] = self.w.weight
        elif self.score == "concat":
            weights["w_c"], weights["v_c"] = self.w_c.weight, self.v_c.weight[0]
        return luong_attention(query, keys, values, self.score, mask=mask, return_weights=return_weights, **weights)
