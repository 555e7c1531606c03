"""The twin of ``numpy_transformer.models``: the same networks, same state-dict keys, autograd backward.

Dropout masks: pass ``dropout_masks`` (site name -> bool keep-mask tensor), e.g. the
``cache.dropout_masks`` of the NumPy forward, and the twin drops exactly the same
units; a site missing from the dict draws its own mask from torch's generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from numpy_transformer.config import TransformerConfig

from . import functional as TF
from .modules import Embedding, FeedForward, LayerNorm, Linear, MultiHeadAttention


class _Masks:
    """Looks up named dropout masks; the torch counterpart of ``DropoutMasks``."""

    def __init__(self, given: dict[str, torch.Tensor] | None, prefix: str = "") -> None:
        self.given = given or {}
        self.prefix = prefix

    def child(self, name: str) -> _Masks:
        return _Masks(self.given, f"{self.prefix}{name}.")

    def get(self, site: str) -> torch.Tensor | None:
        return self.given.get(self.prefix + site)


def _drop(x: torch.Tensor, p: float, masks: _Masks, site: str, training: bool) -> torch.Tensor:
    return TF.dropout(x, p, mask=masks.get(site), training=training)


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

    def forward(self, x, mask=None, masks: _Masks | None = None):
        masks = masks or _Masks(None)
        p, tr = self.p, self.training

        def sa(z):
            return self.self_attn(z, z, z, mask=mask, dropout_mask=masks.get("self_attn"))

        def ff(z):
            return self.ff(z, dropout_mask=masks.get("ff"))

        if self.norm_first:
            h = x + _drop(sa(self.norm1(x)), p, masks, "dropout1", tr)
            return h + _drop(ff(self.norm2(h)), p, masks, "dropout2", tr)
        h = self.norm1(x + _drop(sa(x), p, masks, "dropout1", tr))
        return self.norm2(h + _drop(ff(h), p, masks, "dropout2", tr))


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

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, masks: _Masks | None = None):
        masks = masks or _Masks(None)
        p, tr = self.p, self.training

        def sa(z):
            return self.self_attn(z, z, z, mask=tgt_mask, dropout_mask=masks.get("self_attn"))

        def ca(z):
            return self.cross_attn(z, memory, memory, mask=memory_mask, dropout_mask=masks.get("cross_attn"))

        def ff(z):
            return self.ff(z, dropout_mask=masks.get("ff"))

        if self.norm_first:
            h1 = x + _drop(sa(self.norm1(x)), p, masks, "dropout1", tr)
            h2 = h1 + _drop(ca(self.norm2(h1)), p, masks, "dropout2", tr)
            return h2 + _drop(ff(self.norm3(h2)), p, masks, "dropout3", tr)
        h1 = self.norm1(x + _drop(sa(x), p, masks, "dropout1", tr))
        h2 = self.norm2(h1 + _drop(ca(h1), p, masks, "dropout2", tr))
        return self.norm3(h2 + _drop(ff(h2), p, masks, "dropout3", tr))


def _layer_args(c: TransformerConfig):
    return (c.d_model, c.n_heads, c.d_ff, c.dropout, c.activation, c.norm_first, c.layer_norm_eps)


class Encoder(nn.Module):
    def __init__(self, config: TransformerConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        args = _layer_args(config)
        self.layers = nn.ModuleList(
            [EncoderLayer(*args, dtype=dtype, device=device) for _ in range(config.n_encoder_layers)]
        )
        self.norm = (
            LayerNorm(config.d_model, config.layer_norm_eps, dtype=dtype, device=device) if config.norm_first else None
        )

    def forward(self, x, mask=None, masks: _Masks | None = None):
        masks = masks or _Masks(None)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, masks.child(f"layers.{i}"))
        return x if self.norm is None else self.norm(x)


class Decoder(nn.Module):
    def __init__(self, config: TransformerConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        args = _layer_args(config)
        self.layers = nn.ModuleList(
            [DecoderLayer(*args, dtype=dtype, device=device) for _ in range(config.n_decoder_layers)]
        )
        self.norm = (
            LayerNorm(config.d_model, config.layer_norm_eps, dtype=dtype, device=device) if config.norm_first else None
        )

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, masks: _Masks | None = None):
        masks = masks or _Masks(None)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, tgt_mask, memory_mask, masks.child(f"layers.{i}"))
        return x if self.norm is None else self.norm(x)


class Transformer(nn.Module):
    """Same structure and keys as ``numpy_transformer.Transformer``."""

    def __init__(self, config: TransformerConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.config = config
        C = config.d_model
        self.src_embed = Embedding(config.src_vocab_size, C, dtype=dtype, device=device)
        self.tgt_embed = Embedding(config.tgt_vocab_size, C, dtype=dtype, device=device)
        self.encoder = Encoder(config, dtype, device)
        self.decoder = Decoder(config, dtype, device)
        self.out_proj = (
            None if config.tie_embeddings else Linear(C, config.tgt_vocab_size, bias=False, dtype=dtype, device=device)
        )
        # Not a parameter and not persistent, so the state dict holds only the weights.
        pe = TF.sinusoidal_positional_encoding(config.max_len, C, dtype=dtype, device=device or "cpu")
        self.register_buffer("pe", pe, persistent=False)
        self.embed_scale = math.sqrt(C)

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        return (src != self.config.pad_id)[:, None, None, :]  # (B, 1, 1, S)

    def target_mask(self, tgt: torch.Tensor) -> torch.Tensor:
        T = tgt.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt.device).tril()
        return (tgt != self.config.pad_id)[:, None, None, :] & causal  # (B, 1, T, T)

    def _embed(self, embed, ids, masks, site):
        x = embed(ids) * self.embed_scale + self.pe[: ids.shape[1]]
        return _drop(x, self.config.dropout, masks, site, self.training)

    def encode(self, src, masks: _Masks | None = None):
        masks = masks or _Masks(None)
        x = self._embed(self.src_embed, src, masks, "src_dropout")
        return self.encoder(x, self.source_mask(src), masks.child("encoder"))

    def decode(self, tgt, memory, src, masks: _Masks | None = None):
        masks = masks or _Masks(None)
        x = self._embed(self.tgt_embed, tgt, masks, "tgt_dropout")
        h = self.decoder(x, memory, self.target_mask(tgt), self.source_mask(src), masks.child("decoder"))
        weight = self.tgt_embed.weight if self.out_proj is None else self.out_proj.weight
        return h @ weight.T  # (B, T, V)

    def forward(self, src, tgt, dropout_masks: dict[str, torch.Tensor] | None = None):
        masks = _Masks(dropout_masks)
        return self.decode(tgt, self.encode(src, masks), src, masks)
