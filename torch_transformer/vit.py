"""The twin of ``numpy_transformer.models.vit``: the same Vision Transformer, autograd backward.

Same structure and state-dict keys (``cls_token``, ``pos_embed``, ``patch_embed.weight``,
``patch_embed.bias``, ``layers.i....``, ``norm.*``, ``pooler.*``; the classifier adds ``vit.`` and
``classifier.*``). The patch embedding is the twin's own im2col ``conv2d`` (``F.conv2d`` is never
used, so comparing against Hugging Face's ``nn.Conv2d`` tests something); the blocks are the twin's
``EncoderLayer(norm_first=True)``. Runs on any device, in float32 or float64.

Dropout masks: pass ``dropout_masks`` (site name -> bool keep-mask), e.g. the NumPy cache's
``dropout_masks`` as it is (NumPy arrays are converted to tensors on the model's device), and the
twin drops exactly the same units.
"""

from __future__ import annotations

import torch
from torch import nn

from numpy_transformer.config import ViTConfig

from . import functional as TF
from .dropout_masks import DropoutMasks
from .modules import LayerNorm, Linear, PatchEmbedding, as_tensor, as_tensor_masks, module_device
from .transformer_layers import EncoderLayer


def _init_like_hf(module: nn.Module, std: float) -> None:
    """Every Linear and patch-embedding weight ~ N(0, std^2), biases 0 (as the NumPy model)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (Linear, PatchEmbedding)):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()


class ViT(nn.Module):
    """Same structure and keys as ``numpy_transformer.models.vit.ViT``."""

    def __init__(self, config: ViTConfig, dtype=torch.float64, device=None, add_pooling_layer: bool = True) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config: expected a ViTConfig, got {type(config).__name__}")
        self.config = c = config
        C = c.d_model
        self.cls_token = nn.Parameter(torch.empty(1, 1, C, dtype=dtype, device=device))
        self.pos_embed = nn.Parameter(torch.empty(1, c.num_patches + 1, C, dtype=dtype, device=device))
        with torch.no_grad():
            self.cls_token.normal_(0.0, c.initializer_range)
            self.pos_embed.normal_(0.0, c.initializer_range)
        self.patch_embed = PatchEmbedding(c.num_channels, C, c.patch_size, dtype=dtype, device=device, bias=True)
        block = dict(activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps, dtype=dtype,
                     device=device, ff_dropout=0.0)  # fmt: skip
        self.layers = nn.ModuleList([EncoderLayer(C, c.n_heads, c.d_ff, c.dropout, **block) for _ in range(c.n_layers)])
        if not c.qkv_bias:
            for layer in self.layers:
                for name in ("q_proj", "k_proj", "v_proj"):  # same place among the children, no bias
                    setattr(layer.self_attn, name, Linear(C, C, bias=False, dtype=dtype, device=device))
        self.norm = LayerNorm(C, c.layer_norm_eps, dtype=dtype, device=device)
        self.pooler = Linear(C, C, dtype=dtype, device=device) if add_pooling_layer else None
        _init_like_hf(self, c.initializer_range)

    def forward(self, pixel_values, dropout_masks=None, masks: DropoutMasks | None = None, output_attentions=False):
        """-> ``(last_hidden_state (B, L, C), pooler_output (B, C) or None)``, and with ``output_attentions``
        a third item: the tuple of every layer's (B, H, L, L) attention probabilities."""
        device = module_device(self)
        x = as_tensor(pixel_values, device)
        masks = masks if masks is not None else DropoutMasks(as_tensor_masks(dropout_masks, device))
        tokens = self.patch_embed(x)  # (B, N, C)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, C)
        z = torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, L, C)
        z = masks.drop(z, self.config.dropout, "embed_dropout", self.training)
        attentions = []
        for i, layer in enumerate(self.layers):
            site = masks.child(f"layers.{i}")
            if not output_attentions:
                z = layer(z, None, site)
                continue
            # The pre-LN block of EncoderLayer.forward, spelled out to keep the attention probabilities.
            n1 = layer.norm1(z)
            a, weights = layer.self_attn(n1, n1, n1, dropout_mask=site.get("self_attn"), return_weights=True)
            h = z + site.drop(a, layer.p, "dropout1", layer.training)
            f = layer.ff(layer.norm2(h), dropout_mask=site.get("ff"))
            z = h + site.drop(f, layer.p, "dropout2", layer.training)
            attentions.append(weights)
        y = self.norm(z)
        pooled = None if self.pooler is None else TF.tanh(self.pooler(y[:, 0]))
        return (y, pooled, tuple(attentions)) if output_attentions else (y, pooled)


class ViTForImageClassification(nn.Module):
    """Same structure and keys as ``numpy_transformer.models.vit.ViTForImageClassification``."""

    def __init__(self, config: ViTConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.vit = ViT(config, dtype, device, add_pooling_layer=False)
        self.classifier = Linear(config.d_model, config.num_labels, dtype=dtype, device=device)
        _init_like_hf(self.classifier, config.initializer_range)

    def forward(self, pixel_values, dropout_masks=None) -> torch.Tensor:
        """-> logits (B, K), read off the class token's row after the final LayerNorm."""
        masks = DropoutMasks(as_tensor_masks(dropout_masks, module_device(self)))
        y, _ = self.vit(pixel_values, masks=masks.child("vit"))
        return self.classifier(y[:, 0])
