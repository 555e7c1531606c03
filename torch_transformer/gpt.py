"""The twin of ``numpy_transformer.models.gpt``: the same decoder-only language model, autograd backward.

Same structure and state-dict keys (``tok_embed.weight``, ``pos_embed.weight``,
``layers.i....``, ``norm.weight``, ``norm.bias``); the blocks are the twin's own
``EncoderLayer(norm_first=True)`` driven with a causal mask, and the logits use
``tok_embed.weight`` (tied). Runs on any device, in float32 or float64.

Dropout masks: pass ``dropout_masks`` (site name -> bool keep-mask), e.g. the
``cache.dropout_masks`` of the NumPy forward as it is (NumPy masks and ids are converted
to tensors on the model's device), and the twin drops exactly the same units.
"""

from __future__ import annotations

import torch
from torch import nn

from numpy_transformer.config import GPTConfig
from numpy_transformer.models.gpt import EMBED_INIT_STD

from .dropout_masks import DropoutMasks
from .modules import Embedding, LayerNorm, as_tensor, as_tensor_masks, module_device
from .transformer_layers import EncoderLayer


class GPT(nn.Module):
    """Same structure and keys as ``numpy_transformer.GPT``."""

    def __init__(self, config: GPTConfig, dtype: torch.dtype = torch.float64, device=None) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok_embed = Embedding(c.vocab_size, c.d_model, dtype=dtype, device=device)
        self.pos_embed = Embedding(c.max_len, c.d_model, dtype=dtype, device=device)
        with torch.no_grad():
            self.tok_embed.weight.normal_(0.0, EMBED_INIT_STD)
            self.pos_embed.weight.normal_(0.0, EMBED_INIT_STD)
        block = dict(activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps, dtype=dtype,
                     device=device, ff_dropout=0.0)  # fmt: skip
        self.layers = nn.ModuleList(
            [EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, **block) for _ in range(c.n_layers)]
        )
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype, device=device)

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(T, T) causal, or (B, 1, T, T) causal and not-a-pad-key when ``pad_id`` is set; True = may attend."""
        T = ids.shape[1]
        mask = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()  # query t sees keys 0..t
        if self.config.pad_id is not None:
            mask = (ids != self.config.pad_id)[:, None, None, :] & mask  # (B, 1, T, T)
        return mask

    def forward(self, ids: torch.Tensor, dropout_masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``ids`` (B, T) -> logits (B, T, V). NumPy ids and masks are converted to tensors on the model's device."""
        device = module_device(self)
        ids = as_tensor(ids, device)
        masks = DropoutMasks(as_tensor_masks(dropout_masks, device))
        T = ids.shape[1]
        positions = torch.arange(T, device=ids.device)[None, :]  # (1, T)
        x = self.tok_embed(ids) + self.pos_embed(positions)  # (B, T, C)
        x = masks.drop(x, self.config.dropout, "embed_dropout", self.training)
        mask = self.attention_mask(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, masks.child(f"layers.{i}"))
        return self.norm(x) @ self.tok_embed.weight.T  # (B, T, V): the head is the embedding
