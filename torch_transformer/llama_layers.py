"""The twin of ``numpy_transformer.modules.llama_layers``: RMSNorm, SwiGLU, rotary grouped-query attention, the layer.

Same parameter names and shapes as the NumPy modules (``weight``; ``gate_proj / up_proj /
down_proj``; ``q_proj / k_proj / v_proj / out_proj``; ``norm1 / self_attn / norm2 / ff``), so a
NumPy state dict loads as it is. Autograd supplies every backward. Runs on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from . import functional as TF
from .intermediates import expose
from .modules import Linear


class RMSNorm(nn.Module):
    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-6,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TF.rms_norm(x, self.weight, self.eps)


class SwiGLUFeedForward(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.gate_proj = Linear(d_model, d_ff, bias, dtype, device)
        self.up_proj = Linear(d_model, d_ff, bias, dtype, device)
        self.down_proj = Linear(d_ff, d_model, bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(TF.swiglu(self.gate_proj(x), self.up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        rope_theta: float = 10000.0,
        rope_layout: str = "half",
        bias: bool = False,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads, n_kv_heads: expected n_kv_heads | n_heads | d_model, got {n_kv_heads}, {n_heads}"
            )
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.rope_theta, self.rope_layout = rope_theta, rope_layout
        self.q_proj = Linear(d_model, d_model, bias, dtype, device)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim, bias, dtype, device)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim, bias, dtype, device)
        self.out_proj = Linear(d_model, d_model, bias, dtype, device)

    def _split(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, n, self.head_dim).transpose(1, 2)  # (B, n, L, D)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_weights: bool = False,
    ):
        """``x`` (B, T, C) -> (B, T, C); ``positions`` (T,) default ``arange(T)``; ``mask`` True = may attend."""
        B, T, _ = x.shape
        if positions is None:
            positions = torch.arange(T, device=x.device)
        rope = dict(theta=self.rope_theta, layout=self.rope_layout)
        q = TF.rotary_embedding(self._split(self.q_proj(x), self.n_heads), positions, **rope)  # (B, H, T, D)
        k = TF.rotary_embedding(self._split(self.k_proj(x), self.n_kv_heads), positions, **rope)  # (B, Hkv, T, D)
        q, k = expose("q_rotated", q), expose("k_rotated", k)
        v = self._split(self.v_proj(x), self.n_kv_heads)
        heads, weights = TF.grouped_query_attention(q, k, v, mask=mask, is_causal=is_causal, return_weights=True)
        out = self.out_proj(expose("heads", heads).transpose(1, 2).reshape(B, T, -1))  # (B, T, C)
        return (out, weights) if return_weights else out


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        d_ff: int,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        rope_layout: str = "half",
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model, rms_norm_eps, dtype, device)
        self.self_attn = LlamaAttention(
            d_model, n_heads, n_kv_heads, rope_theta, rope_layout, dtype=dtype, device=device
        )
        self.norm2 = RMSNorm(d_model, rms_norm_eps, dtype, device)
        self.ff = SwiGLUFeedForward(d_model, d_ff, dtype=dtype, device=device)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
    ) -> torch.Tensor:
        h = x + self.self_attn(self.norm1(x), positions, mask, is_causal)  # (B, T, C)
        return h + self.ff(self.norm2(h))
