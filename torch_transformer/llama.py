"""The twin of ``numpy_transformer.models.llama``: the same Llama-style decoder, autograd backward.

Same structure and state-dict keys (``tok_embed.weight``, ``layers.i.norm1.weight``,
``layers.i.self_attn.{q,k,v,out}_proj.weight``, ``layers.i.norm2.weight``,
``layers.i.ff.{gate,up,down}_proj.weight``, ``norm.weight``, and ``lm_head.weight`` unless the
head is tied to the embeddings). Runs on any device, in float32 or float64; takes NumPy ids.
"""

from __future__ import annotations

import torch
from torch import nn

import numpy_transformer as nt
from numpy_transformer.config import LlamaConfig

from . import llama_layers as tll
from .llama_layers import LlamaDecoderLayer, RMSNorm
from .modules import Embedding, Linear, as_tensor, module_device


class Llama(nn.Module):
    """Same structure and keys as ``numpy_transformer.Llama``; initialised from N(0, initializer_range^2)."""

    def __init__(self, config: LlamaConfig, dtype: torch.dtype = torch.float64, device=None) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok_embed = Embedding(c.vocab_size, c.d_model, dtype=dtype, device=device)
        block = dict(rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, rope_layout=c.rope_layout)
        self.layers = nn.ModuleList(
            [
                LlamaDecoderLayer(c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, **block, dtype=dtype, device=device)
                for _ in range(c.n_layers)
            ]
        )
        self.norm = RMSNorm(c.d_model, c.rms_norm_eps, dtype=dtype, device=device)
        self.lm_head = None if c.tie_embeddings else Linear(c.d_model, c.vocab_size, False, dtype, device)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (Linear, Embedding)):
                    module.weight.normal_(0.0, c.initializer_range)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` (B, T) -> logits (B, T, V). NumPy ids are converted to a tensor on the model's device."""
        ids = as_tensor(ids, module_device(self))
        positions = torch.arange(ids.shape[1], device=ids.device)  # (T,)
        x = self.tok_embed(ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, positions, is_causal=True)
        weight = self.tok_embed.weight if self.lm_head is None else self.lm_head.weight  # (V, C)
        return self.norm(x) @ weight.T  # (B, T, V)


def twin_of_llama(m: nt.Module, dtype: torch.dtype) -> nn.Module:
    """The twin (initial weights only) of a NumPy Llama or one of its blocks; ``bridge.twin_of`` copies the weights."""
    layers = nt.modules
    if isinstance(m, nt.Llama):
        return Llama(m.config, dtype=dtype)
    if isinstance(m, layers.RMSNorm):
        return tll.RMSNorm(m.normalized_shape, m.eps, dtype=dtype)
    if isinstance(m, layers.SwiGLUFeedForward):
        return tll.SwiGLUFeedForward(
            m.gate_proj.in_features, m.gate_proj.out_features, bias=m.gate_proj.bias is not None, dtype=dtype
        )
    if isinstance(m, layers.LlamaAttention):
        bias = m.q_proj.bias is not None
        return tll.LlamaAttention(m.d_model, m.n_heads, m.n_kv_heads, m.rope_theta, m.rope_layout, bias, dtype)
    if isinstance(m, layers.LlamaDecoderLayer):
        a = m.self_attn
        return tll.LlamaDecoderLayer(
            a.d_model, a.n_heads, a.n_kv_heads, m.ff.gate_proj.out_features, m.norm1.eps, a.rope_theta,
            a.rope_layout, dtype,
        )  # fmt: skip
    raise TypeError(f"m: not a Llama or one of its blocks: {type(m).__name__}")
