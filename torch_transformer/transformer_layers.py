"""The twin of ``numpy_transformer.modules.transformer_layers``: the encoder and decoder layers."""

from __future__ import annotations

import torch
from torch import nn

from .dropout_masks import DropoutMasks
from .modules import FeedForward, LayerNorm, MultiHeadAttention

__all__ = ["DecoderLayer", "EncoderLayer"]


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5, dtype=torch.float64, device=None, ff_dropout=None) -> None:  # fmt: skip
        super().__init__()
        self.norm_first, self.p = norm_first, dropout
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, dtype=dtype, device=device)
        ff_p = dropout if ff_dropout is None else ff_dropout
        self.ff = FeedForward(d_model, d_ff, activation, ff_p, dtype=dtype, device=device)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype, device=device)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype, device=device)

    def forward(self, x, mask=None, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks(None)
        p, tr = self.p, self.training

        def sa(z):
            return self.self_attn(z, z, z, mask=mask, dropout_mask=masks.get("self_attn"))

        def ff(z):
            return self.ff(z, dropout_mask=masks.get("ff"))

        if self.norm_first:
            h = x + masks.drop(sa(self.norm1(x)), p, "dropout1", tr)
            return h + masks.drop(ff(self.norm2(h)), p, "dropout2", tr)
        h = self.norm1(x + masks.drop(sa(x), p, "dropout1", tr))
        return self.norm2(h + masks.drop(ff(h), p, "dropout2", tr))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 layer_norm_eps=1e-5, dtype=torch.float64, device=None) -> None:  # fmt: skip
        super().__init__()
        self.norm_first, self.p = norm_first, dropout
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, dtype=dtype, device=device)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, dtype=dtype, device=device)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, dtype=dtype, device=device)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype, device=device)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype, device=device)
        self.norm3 = LayerNorm(d_model, layer_norm_eps, dtype=dtype, device=device)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks(None)
        p, tr = self.p, self.training

        def sa(z):
            return self.self_attn(z, z, z, mask=tgt_mask, dropout_mask=masks.get("self_attn"))

        def ca(z):
            return self.cross_attn(z, memory, memory, mask=memory_mask, dropout_mask=masks.get("cross_attn"))

        def ff(z):
            return self.ff(z, dropout_mask=masks.get("ff"))

        if self.norm_first:
            h1 = x + masks.drop(sa(self.norm1(x)), p, "dropout1", tr)
            h2 = h1 + masks.drop(ca(self.norm2(h1)), p, "dropout2", tr)
            return h2 + masks.drop(ff(self.norm3(h2)), p, "dropout3", tr)
        h1 = self.norm1(x + masks.drop(sa(x), p, "dropout1", tr))
        h2 = self.norm2(h1 + masks.drop(ca(h1), p, "dropout2", tr))
        return self.norm3(h2 + masks.drop(ff(h2), p, "dropout3", tr))
