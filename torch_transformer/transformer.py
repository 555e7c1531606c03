"""The twin of ``numpy_transformer.models``: the same networks, same state-dict keys, autograd backward.

Dropout masks: pass ``dropout_masks`` (site name -> bool keep-mask), e.g. the
``cache.dropout_masks`` of the NumPy forward as it is (NumPy arrays, like NumPy token
ids, are converted to tensors on the model's device), and the twin drops exactly the
same units; a site missing from the dict draws its own mask from torch's generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from numpy_transformer.config import TransformerConfig

from . import functional as TF
from .dropout_masks import DropoutMasks
from .modules import Embedding, LayerNorm, Linear, as_tensor, as_tensor_masks, module_device
from .transformer_layers import DecoderLayer, EncoderLayer


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

    def forward(self, x, mask=None, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks(None)
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

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks(None)
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
        return masks.drop(x, self.config.dropout, site, self.training)

    def encode(self, src, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks(None)
        x = self._embed(self.src_embed, src, masks, "src_dropout")
        return self.encoder(x, self.source_mask(src), masks.child("encoder"))

    def decode(self, tgt, memory, src, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks(None)
        x = self._embed(self.tgt_embed, tgt, masks, "tgt_dropout")
        h = self.decoder(x, memory, self.target_mask(tgt), self.source_mask(src), masks.child("decoder"))
        weight = self.tgt_embed.weight if self.out_proj is None else self.out_proj.weight
        return h @ weight.T  # (B, T, V)

    def forward(self, src, tgt, dropout_masks: dict[str, torch.Tensor] | None = None):
        """``src`` (B, S), ``tgt`` (B, T) ids -> logits (B, T, V). NumPy ids and masks are converted to tensors."""
        device = module_device(self)
        src, tgt = as_tensor(src, device), as_tensor(tgt, device)
        masks = DropoutMasks(as_tensor_masks(dropout_masks, device))
        return self.decode(tgt, self.encode(src, masks), src, masks)
