"""The twin of ``numpy_transformer.models.detr``: the same backbone, layers and heads, the same parameter names.

Built from the twin's ops (``functional.conv2d`` / ``max_pool2d`` as unfold + matmul and gather, the
twin's attention), autograd doing the backward. The frozen batch norms keep their four arrays as
parameters with ``requires_grad=False`` (so the state dict has the NumPy model's keys); they are
constants of the forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from numpy_transformer.config import DetrConfig

from . import functional as TF
from .frozen_batch_norm import frozen_batch_norm
from .modules import FeedForward, LayerNorm, Linear, MultiHeadAttention


def detr_sine_position_embedding(height: int, width: int, d_model: int, dtype, device=None) -> torch.Tensor:
    """(h w, C): DETR's normalised sine positions, the y half then the x half."""
    F = d_model // 2
    y = torch.arange(1, height + 1, dtype=dtype, device=device) / (height + 1e-6) * (2 * math.pi)
    x = torch.arange(1, width + 1, dtype=dtype, device=device) / (width + 1e-6) * (2 * math.pi)
    k = torch.arange(F, device=device)
    dim = 10000 ** (2 * torch.div(k, 2, rounding_mode="floor").to(dtype) / F)
    even = k % 2 == 0

    def encode(v):
        a = v[:, None] / dim
        return torch.where(even, torch.sin(a), torch.cos(a))

    py = encode(y)[:, None, :].expand(height, width, F)
    px = encode(x)[None, :, :].expand(height, width, F)
    return torch.cat([py, px], dim=-1).reshape(height * width, 2 * F)


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, n: int, eps: float, dtype) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            setattr(self, name, nn.Parameter(torch.full((n,), value, dtype=dtype), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frozen_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)


class Conv(nn.Module):
    """A conv's parameters under the NumPy ``Conv2d``'s names (``weight``, ``bias``)."""

    def __init__(self, c_in, c_out, k, stride, padding, bias, dtype) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.zeros(c_out, c_in, k, k, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(c_out, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TF.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


class ConvNorm(nn.Module):
    def __init__(self, c_in, c_out, k, stride, relu, eps, dtype) -> None:
        super().__init__()
        self.relu = relu
        self.conv = Conv(c_in, c_out, k, stride, k // 2, False, dtype)
        self.norm = FrozenBatchNorm2d(c_out, eps, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return TF.relu(y) if self.relu else y


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, eps, dtype) -> None:
        super().__init__()
        self.conv1 = ConvNorm(c_in, c_out, 3, stride, True, eps, dtype)
        self.conv2 = ConvNorm(c_out, c_out, 3, 1, False, eps, dtype)
        self.shortcut = ConvNorm(c_in, c_out, 1, stride, False, eps, dtype) if (c_in != c_out or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x if self.shortcut is None else self.shortcut(x)
        return TF.relu(self.conv2(self.conv1(x)) + r)


class ResNetBackbone(nn.Module):
    def __init__(self, c: DetrConfig, dtype) -> None:
        super().__init__()
        eps = c.batch_norm_eps
        self.stem = ConvNorm(c.num_channels, c.embedding_size, 7, 2, True, eps, dtype)
        widths = (c.embedding_size, *c.hidden_sizes)
        stages = []
        for s, depth in enumerate(c.depths):
            blocks = [BasicBlock(widths[s], widths[s + 1], 1 if s == 0 else 2, eps, dtype)]
            blocks += [BasicBlock(widths[s + 1], widths[s + 1], 1, eps, dtype) for _ in range(depth - 1)]
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = TF.max_pool2d(self.stem(x), 3, 2, 1)
        for stage in self.stages:
            for block in stage:
                y = block(y)
        return y


class DetrEncoderLayer(nn.Module):
    def __init__(self, c: DetrConfig, dtype) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(c.d_model, c.encoder_attention_heads, dtype=dtype)
        self.norm1 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.ff = FeedForward(c.d_model, c.encoder_ffn_dim, "relu", dtype=dtype)
        self.norm2 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x + self.self_attn(x + pos, x + pos, x))
        return self.norm2(h + self.ff(h))


class DetrDecoderLayer(nn.Module):
    def __init__(self, c: DetrConfig, dtype) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(c.d_model, c.decoder_attention_heads, dtype=dtype)
        self.norm1 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.cross_attn = MultiHeadAttention(c.d_model, c.decoder_attention_heads, dtype=dtype)
        self.norm2 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.ff = FeedForward(c.d_model, c.decoder_ffn_dim, "relu", dtype=dtype)
        self.norm3 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    def forward(self, t, e, m, pos, return_weights: bool = False):
        t1 = self.norm1(t + self.self_attn(t + e, t + e, t))
        b, weights = self.cross_attn(t1 + e, m + pos, m, return_weights=True)
        t2 = self.norm2(t1 + b)
        out = self.norm3(t2 + self.ff(t2))
        return (out, weights) if return_weights else out


class DETR(nn.Module):
    """The twin of ``numpy_transformer.DETR``: ``forward`` returns logits (L, B, Q, V) and boxes (L, B, Q, 4)."""

    def __init__(self, config: DetrConfig, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        c = self.config = config
        self.query_position_embeddings = nn.Parameter(torch.randn(c.num_queries, c.d_model, dtype=dtype))
        self.backbone = ResNetBackbone(c, dtype)
        self.input_projection = Conv(c.hidden_sizes[-1], c.d_model, 1, 1, 0, True, dtype)
        self.encoder = nn.ModuleList([DetrEncoderLayer(c, dtype) for _ in range(c.encoder_layers)])
        self.decoder = nn.ModuleList([DetrDecoderLayer(c, dtype) for _ in range(c.decoder_layers)])
        self.decoder_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.class_head = Linear(c.d_model, c.num_labels + 1, dtype=dtype)
        self.box_head = nn.ModuleList(
            [Linear(c.d_model, c.d_model, dtype=dtype) for _ in range(2)] + [Linear(c.d_model, 4, dtype=dtype)]
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.input_projection(self.backbone(pixel_values))  # (B, C, h, w)
        B, C, h, w = g.shape
        m = g.flatten(2).transpose(1, 2)  # (B, S, C)
        pos = detr_sine_position_embedding(h, w, C, g.dtype, g.device)[None]
        for layer in self.encoder:
            m = layer(m, pos)
        e = self.query_position_embeddings[None].expand(B, -1, -1)
        t = torch.zeros_like(e)
        logits, boxes = [], []
        for layer in self.decoder:
            t = layer(t, e, m, pos)
            y = self.decoder_norm(t)
            logits.append(self.class_head(y))
            u = TF.relu(self.box_head[0](y))
            u = TF.relu(self.box_head[1](u))
            boxes.append(1 / (1 + torch.exp(-self.box_head[2](u))))
        return torch.stack(logits), torch.stack(boxes)
