"""The twin of ``numpy_transformer.models.clip``: the same CLIP, autograd backward.

Same structure and state-dict keys (``text_model.tok_embed.weight``, ``text_model.layers.i....``,
``text_model.final_norm.*``, ``vision_model.class_embedding``, ``vision_model.patch_embed.weight``,
``vision_model.pos_embed.weight``, ``vision_model.pre_norm.*``, ``vision_model.post_norm.*``,
``text_projection.weight``, ``visual_projection.weight``, ``logit_scale``). The blocks are the twin's
``EncoderLayer(norm_first=True)``, the patch embedding its own im2col ``conv2d`` without bias, and the
logits and the loss its ``contrastive_logits`` / ``clip_loss``. Runs on any device, in float32 or float64.
"""

from __future__ import annotations

import torch
from torch import nn

from numpy_transformer.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

from . import functional as TF
from .modules import Embedding, LayerNorm, Linear, PatchEmbedding, as_tensor, module_device
from .transformer_layers import EncoderLayer


def _blocks(c: CLIPTextConfig | CLIPVisionConfig, dtype, device) -> nn.ModuleList:
    block = dict(norm_first=True, layer_norm_eps=c.layer_norm_eps, dtype=dtype, device=device, ff_dropout=0.0)
    return nn.ModuleList(
        [EncoderLayer(c.d_model, c.n_heads, c.d_ff, 0.0, c.activation, **block) for _ in range(c.n_layers)]
    )


class CLIPTextTransformer(nn.Module):
    """Same structure and keys as ``numpy_transformer.models.clip.CLIPTextTransformer``."""

    def __init__(self, config: CLIPTextConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.config = c = config
        self.tok_embed = Embedding(c.vocab_size, c.d_model, dtype=dtype, device=device)
        self.pos_embed = Embedding(c.max_len, c.d_model, dtype=dtype, device=device)
        self.layers = _blocks(c, dtype, device)
        self.final_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype, device=device)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``(last_hidden_state (Bt, T, Ct), pooled (Bt, Ct))``, pooled at the largest id of each row."""
        Bt, T = input_ids.shape
        x = self.tok_embed(input_ids) + self.pos_embed(torch.arange(T, device=input_ids.device)[None])
        mask = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()[None, None]  # (1, 1, T, T)
        for layer in self.layers:
            x = layer(x, mask)
        y = self.final_norm(x)
        eot = input_ids.argmax(dim=-1)  # (Bt,) the end-of-text token: the largest id
        return y, y[torch.arange(Bt, device=y.device), eot]


class CLIPVisionTransformer(nn.Module):
    """Same structure and keys as ``numpy_transformer.models.clip.CLIPVisionTransformer``."""

    def __init__(self, config: CLIPVisionConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.config = c = config
        self.class_embedding = nn.Parameter(torch.randn(c.d_model, dtype=dtype, device=device) * c.d_model**-0.5)
        self.patch_embed = PatchEmbedding(
            c.num_channels, c.d_model, c.patch_size, dtype=dtype, device=device, bias=False
        )
        with torch.no_grad():
            self.patch_embed.weight.normal_(0.0, 0.02)
        self.pos_embed = Embedding(c.num_patches + 1, c.d_model, dtype=dtype, device=device)
        self.pre_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype, device=device)
        self.layers = _blocks(c, dtype, device)
        self.post_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype, device=device)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``(last_hidden_state (B, L, Cv), pooled (B, Cv))``: the blocks' output, the post-normed class token."""
        tokens = self.patch_embed(pixel_values)  # (B, N, Cv)
        B, N, C = tokens.shape
        cls = self.class_embedding.expand(B, 1, C)
        z = torch.cat([cls, tokens], dim=1) + self.pos_embed(torch.arange(N + 1, device=tokens.device)[None])
        z = self.pre_norm(z)
        for layer in self.layers:
            z = layer(z)
        return z, self.post_norm(z[:, 0])


class CLIPModel(nn.Module):
    """Same structure and keys as ``numpy_transformer.models.clip.CLIPModel``."""

    def __init__(self, config: CLIPConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        if not isinstance(config, CLIPConfig):
            raise TypeError(f"config: expected a CLIPConfig, got {type(config).__name__}")
        self.config = c = config
        self.logit_scale = nn.Parameter(torch.tensor(c.logit_scale_init, dtype=dtype, device=device))
        self.text_model = CLIPTextTransformer(c.text, dtype, device)
        self.vision_model = CLIPVisionTransformer(c.vision, dtype, device)
        self.text_projection = Linear(c.text.d_model, c.projection_dim, bias=False, dtype=dtype, device=device)
        self.visual_projection = Linear(c.vision.d_model, c.projection_dim, bias=False, dtype=dtype, device=device)

    def forward(self, input_ids, pixel_values, return_loss: bool = False) -> dict[str, torch.Tensor]:
        """-> ``logits_per_image`` (B, Bt), ``logits_per_text``, ``text_embeds``, ``image_embeds`` (normalised),
        and with ``return_loss`` the ``loss``."""
        device = module_device(self)
        _, text_pooled = self.text_model(as_tensor(input_ids, device))
        _, image_pooled = self.vision_model(as_tensor(pixel_values, device))
        text_features = self.text_projection(text_pooled)
        image_features = self.visual_projection(image_pooled)
        logits = TF.contrastive_logits(image_features, text_features, self.logit_scale)
        out = {
            "logits_per_image": logits,
            "logits_per_text": logits.T,
            "text_embeds": TF.l2_normalize(text_features),
            "image_embeds": TF.l2_normalize(image_features),
        }
        if return_loss:
            out["loss"] = TF.clip_loss(image_features, text_features, self.logit_scale)
        return out
