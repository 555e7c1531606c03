"""The blocks every Transformer-style model shares: the encoder layer and the decoder layer.

Shape legend: ``B`` batch, ``T`` target length, ``S`` source length, ``C`` d_model,
``H`` heads, ``F`` feed-forward width.

The encoder–decoder Transformer stacks both; BERT stacks post-LN encoder layers; the
GPT stacks pre-LN encoder layers under a causal mask. Each sub-layer is wrapped in a
residual connection and a LayerNorm, post-LN (``norm(x + sublayer(x))``, as in the
paper) or pre-LN (``x + sublayer(norm(x))``). Dropout sites are named as the twin's
(``dropout1``, ``self_attn``, ``ff`` ...) so both halves can drop the same units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.checks import check_rng
from ..functional.dropout import DropoutCache, dropout_backward
from ..functional.layer_norm import LayerNormCache
from .attention import MultiHeadAttention, MultiHeadAttentionCache
from .base import Module, check_module_dtype
from .dropout_masks import DropoutMasks
from .layers import FeedForward, FeedForwardCache, LayerNorm

__all__ = ["DecoderLayer", "DecoderLayerCache", "EncoderLayer", "EncoderLayerCache"]


def _attend(
    mha: MultiHeadAttention, site: str, q: np.ndarray, kv: np.ndarray, mask: np.ndarray | None, masks: DropoutMasks
) -> tuple[np.ndarray, MultiHeadAttentionCache]:
    """``mha(q, kv, kv)`` with the attention-weight dropout mask of ``site``, shape (B, H, T, S)."""
    keep = masks.mask(site, (q.shape[0], mha.n_heads, q.shape[1], kv.shape[1]), mha.dropout, mha.training)
    return mha.forward(q, kv, kv, mask=mask, dropout_mask=keep)


def _ff_at_site(ff: FeedForward, x: np.ndarray, masks: DropoutMasks) -> tuple[np.ndarray, FeedForwardCache]:
    """``ff(x)`` with the hidden-layer dropout mask of site ``ff``, shape (..., F)."""
    keep = masks.mask("ff", x.shape[:-1] + (ff.linear1.out_features,), ff.dropout.p, ff.training)
    return ff.forward(x, dropout_mask=keep)


@dataclass(frozen=True)
class EncoderLayerCache:
    """What :meth:`EncoderLayer.backward` needs; the norms' inputs differ by layout (post-LN / pre-LN)."""

    sa: MultiHeadAttentionCache  # self-attention, (B, H, S, S) weights
    drop1: DropoutCache  # (B, S, C) keep-mask on the attention branch
    norm1: LayerNormCache  # (B, S, C): of x + a (post-LN) or of x (pre-LN)
    ff: FeedForwardCache  # (B, S, F) hidden layer
    drop2: DropoutCache  # (B, S, C) keep-mask on the feed-forward branch
    norm2: LayerNormCache  # (B, S, C): of h + f (post-LN) or of h (pre-LN)


class EncoderLayer(Module):
    """Self-attention and feed-forward, each wrapped in a residual connection and a LayerNorm."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        ff_dropout: float | None = None,
        attention: str = "standard",
    ) -> None:
        """``ff_dropout``: dropout inside the feed-forward (after the activation); ``None`` = ``dropout``.

        BERT and GPT-2 have none there (``ff_dropout=0.0``). ``attention``: the self-attention's
        kernel, ``"standard"`` or ``"flash"`` (:class:`MultiHeadAttention`; same numbers).
        """
        super().__init__()
        rng = check_rng(rng)
        self.dtype = check_module_dtype(dtype)
        self.norm_first = norm_first
        self.p = dropout
        self.self_attn = MultiHeadAttention(
            d_model, n_heads, dropout=dropout, dtype=dtype, rng=rng, attention=attention
        )
        ff_p = dropout if ff_dropout is None else ff_dropout
        self.ff = FeedForward(d_model, d_ff, activation, ff_p, dtype=dtype, rng=rng)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)

    def forward(
        self, x: np.ndarray, mask: np.ndarray | None = None, masks: DropoutMasks | None = None
    ) -> tuple[np.ndarray, EncoderLayerCache]:
        """``x`` (B, S, C) -> (B, S, C); ``mask`` True = may attend, broadcastable to (B, H, S, S)."""
        masks = masks or DropoutMasks()
        if self.norm_first:
            n1, c_n1 = self.norm1.forward(x)
            a, c_sa = _attend(self.self_attn, "self_attn", n1, n1, mask, masks)
            a, c_d1 = masks.drop(a, self.p, "dropout1", self.training)
            h = x + a  # (B, S, C)
            n2, c_n2 = self.norm2.forward(h)
            f, c_ff = _ff_at_site(self.ff, n2, masks)
            f, c_d2 = masks.drop(f, self.p, "dropout2", self.training)
            y = h + f
        else:
            a, c_sa = _attend(self.self_attn, "self_attn", x, x, mask, masks)
            a, c_d1 = masks.drop(a, self.p, "dropout1", self.training)
            h, c_n1 = self.norm1.forward(x + a)  # (B, S, C)
            f, c_ff = _ff_at_site(self.ff, h, masks)
            f, c_d2 = masks.drop(f, self.p, "dropout2", self.training)
            y, c_n2 = self.norm2.forward(h + f)
        return y, EncoderLayerCache(sa=c_sa, drop1=c_d1, norm1=c_n1, ff=c_ff, drop2=c_d2, norm2=c_n2)

    def backward(self, dy: np.ndarray, cache: EncoderLayerCache) -> np.ndarray:
        """Return dx; the layout is the forward read bottom-up."""
        c = cache
        if self.norm_first:
            # y = h + drop2(ff(norm2(h)))
            dh = dy + self.norm2.backward(self.ff.backward(dropout_backward(dy, c.drop2), c.ff), c.norm2)
            # h = x + drop1(sa(n1, n1, n1)), n1 = norm1(x): n1 feeds query, key and value
            dq, dk, dv = self.self_attn.backward(dropout_backward(dh, c.drop1), c.sa)
            return dh + self.norm1.backward(dq + dk + dv, c.norm1)
        # y = norm2(h + drop2(ff(h)))
        dsum2 = self.norm2.backward(dy, c.norm2)
        dh = dsum2 + self.ff.backward(dropout_backward(dsum2, c.drop2), c.ff)
        # h = norm1(x + drop1(sa(x, x, x)))
        dsum1 = self.norm1.backward(dh, c.norm1)
        dq, dk, dv = self.self_attn.backward(dropout_backward(dsum1, c.drop1), c.sa)
        return dsum1 + dq + dk + dv


@dataclass(frozen=True)
class DecoderLayerCache:
    """What :meth:`DecoderLayer.backward` needs; the norms' inputs differ by layout (post-LN / pre-LN)."""

    sa: MultiHeadAttentionCache  # masked self-attention, (B, H, T, T) weights
    drop1: DropoutCache  # (B, T, C) keep-mask on the self-attention branch
    norm1: LayerNormCache  # (B, T, C)
    ca: MultiHeadAttentionCache  # cross-attention over the memory, (B, H, T, S) weights
    drop2: DropoutCache  # (B, T, C) keep-mask on the cross-attention branch
    norm2: LayerNormCache  # (B, T, C)
    ff: FeedForwardCache  # (B, T, F) hidden layer
    drop3: DropoutCache  # (B, T, C) keep-mask on the feed-forward branch
    norm3: LayerNormCache  # (B, T, C)


class DecoderLayer(Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward; each residual + LayerNorm."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        attention: str = "standard",
    ) -> None:
        """``attention``: the kernel of both attentions, ``"standard"`` or ``"flash"`` (same numbers)."""
        super().__init__()
        rng = check_rng(rng)
        self.dtype = check_module_dtype(dtype)
        self.norm_first = norm_first
        self.p = dropout
        mha = dict(dropout=dropout, dtype=dtype, rng=rng, attention=attention)
        self.self_attn = MultiHeadAttention(d_model, n_heads, **mha)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, **mha)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, dtype=dtype, rng=rng)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm3 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)

    def forward(
        self,
        x: np.ndarray,
        memory: np.ndarray,
        tgt_mask: np.ndarray | None = None,
        memory_mask: np.ndarray | None = None,
        masks: DropoutMasks | None = None,
    ) -> tuple[np.ndarray, DecoderLayerCache]:
        """``x`` (B, T, C), ``memory`` (B, S, C) -> (B, T, C).

        ``tgt_mask`` broadcastable to (B, H, T, T) (causal and padding), ``memory_mask``
        to (B, H, T, S) (source padding); True = may attend.
        """
        masks = masks or DropoutMasks()
        p, tr = self.p, self.training
        if self.norm_first:
            n1, c_n1 = self.norm1.forward(x)
            a, c_sa = _attend(self.self_attn, "self_attn", n1, n1, tgt_mask, masks)
            a, c_d1 = masks.drop(a, p, "dropout1", tr)
            h1 = x + a
            n2, c_n2 = self.norm2.forward(h1)
            b, c_ca = _attend(self.cross_attn, "cross_attn", n2, memory, memory_mask, masks)
            b, c_d2 = masks.drop(b, p, "dropout2", tr)
            h2 = h1 + b
            n3, c_n3 = self.norm3.forward(h2)
            f, c_ff = _ff_at_site(self.ff, n3, masks)
            f, c_d3 = masks.drop(f, p, "dropout3", tr)
            y = h2 + f
        else:
            a, c_sa = _attend(self.self_attn, "self_attn", x, x, tgt_mask, masks)
            a, c_d1 = masks.drop(a, p, "dropout1", tr)
            h1, c_n1 = self.norm1.forward(x + a)
            b, c_ca = _attend(self.cross_attn, "cross_attn", h1, memory, memory_mask, masks)
            b, c_d2 = masks.drop(b, p, "dropout2", tr)
            h2, c_n2 = self.norm2.forward(h1 + b)
            f, c_ff = _ff_at_site(self.ff, h2, masks)
            f, c_d3 = masks.drop(f, p, "dropout3", tr)
            y, c_n3 = self.norm3.forward(h2 + f)
        return y, DecoderLayerCache(
            sa=c_sa, drop1=c_d1, norm1=c_n1, ca=c_ca, drop2=c_d2, norm2=c_n2, ff=c_ff, drop3=c_d3, norm3=c_n3
        )

    def backward(self, dy: np.ndarray, cache: DecoderLayerCache) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(dx, dmemory)``; ``dmemory`` sums the key and value paths of the cross-attention."""
        c = cache
        if self.norm_first:
            # y = h2 + drop3(ff(norm3(h2)))
            dh2 = dy + self.norm3.backward(self.ff.backward(dropout_backward(dy, c.drop3), c.ff), c.norm3)
            # h2 = h1 + drop2(ca(norm2(h1), m, m))
            dq, dk, dv = self.cross_attn.backward(dropout_backward(dh2, c.drop2), c.ca)
            dh1 = dh2 + self.norm2.backward(dq, c.norm2)
            dmemory = dk + dv
            # h1 = x + drop1(sa(n1, n1, n1)), n1 = norm1(x)
            dq, dk, dv = self.self_attn.backward(dropout_backward(dh1, c.drop1), c.sa)
            return dh1 + self.norm1.backward(dq + dk + dv, c.norm1), dmemory
        # y = norm3(h2 + drop3(ff(h2)))
        dsum3 = self.norm3.backward(dy, c.norm3)
        dh2 = dsum3 + self.ff.backward(dropout_backward(dsum3, c.drop3), c.ff)
        # h2 = norm2(h1 + drop2(ca(h1, m, m)))
        dsum2 = self.norm2.backward(dh2, c.norm2)
        dq, dk, dv = self.cross_attn.backward(dropout_backward(dsum2, c.drop2), c.ca)
        dh1 = dsum2 + dq
        dmemory = dk + dv
        # h1 = norm1(x + drop1(sa(x, x, x)))
        dsum1 = self.norm1.backward(dh1, c.norm1)
        dq, dk, dv = self.self_attn.backward(dropout_backward(dsum1, c.drop1), c.sa)
        return dsum1 + dq + dk + dv, dmemory
