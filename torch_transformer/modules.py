"""The twin modules: the same layers as ``numpy_transformer.modules`` as ``torch.nn.Module``s.

State-dict keys and shapes are identical to the NumPy modules', so weights move
between the two halves without renaming (``torch_transformer.bridge``).
Written out explicitly (``MultiHeadAttention`` does not wrap
``nn.MultiheadAttention``); autograd supplies the backward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from . import functional as TF
from .intermediates import expose, is_tracking

# ---------------------------------------------------------------------------- NumPy inputs
# The twin models take what the NumPy models take and give: NumPy token ids, masks and the
# ``cache.dropout_masks`` dict. Each model's ``forward`` converts them once, at its entry, to
# tensors on its own device; tensors pass through unchanged.


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def as_tensor(x: object, device: torch.device | str) -> object:
    """A NumPy array as a tensor on ``device`` (integer ids as int64: a uint8 tensor would index as a mask).

    Anything else (a tensor, None) is returned unchanged.
    """
    if not isinstance(x, np.ndarray):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))
    if np.issubdtype(x.dtype, np.integer):
        t = t.to(torch.int64)
    return t.to(device)


def as_tensor_masks(masks: Mapping[str, object] | None, device: torch.device | str) -> dict[str, object] | None:
    """A dict of dropout keep-masks (site -> NumPy or torch bool array) with every NumPy mask on ``device``."""
    return None if masks is None else {site: as_tensor(m, device) for site, m in masks.items()}


class Linear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TF.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim, dtype=dtype, device=device))
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx] = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return TF.embedding(ids, self.weight, self.padding_idx)


class LayerNorm(nn.Module):
    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(normalized_shape, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TF.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(nn.Module):
    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return TF.dropout(x, self.p, mask=mask, training=self.training)


class FeedForward(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("relu", "gelu", "gelu_tanh", "quick_gelu"):
            raise ValueError(f"activation: expected 'relu', 'gelu', 'gelu_tanh' or 'quick_gelu', got {activation!r}")
        self.activation = activation
        self.linear1 = Linear(d_model, d_ff, bias=bias, dtype=dtype, device=device)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(d_ff, d_model, bias=bias, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, dropout_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = expose("h", self.linear1(x))  # (..., F)
        if self.activation == "relu":
            a = TF.relu(h)
        elif self.activation == "quick_gelu":
            a = TF.quick_gelu(h)
        else:
            a = TF.gelu(h, "none" if self.activation == "gelu" else "tanh")
        return self.linear2(self.dropout(expose("a", a), mask=dropout_mask))


class PatchEmbedding(nn.Module):
    """(B, Cin, I, I) -> (B, N, C): conv2d with kernel = stride = P, the grid read row by row.

    The twin of ``numpy_transformer.modules.conv.PatchEmbedding``: ViT's (``bias=True``) and CLIP's
    image tower's (``bias=False``); ``weight`` (C, Cin, P, P), ``bias`` (C,), torch's default init.
    """

    def __init__(
        self, num_channels: int, d_model: int, patch_size: int, dtype=torch.float64, device=None, bias: bool = True
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        shape = (d_model, num_channels, patch_size, patch_size)
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(d_model, dtype=dtype, device=device)) if bias else None
        bound = (num_channels * patch_size * patch_size) ** -0.5
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        y = TF.conv2d(pixel_values, self.weight, self.bias, stride=self.patch_size)  # (B, C, g, g)
        return y.flatten(2).transpose(1, 2)  # (B, N, C)


def use_sdpa(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Set :attr:`MultiHeadAttention.use_sdpa` in every attention of ``model``; returns ``model``."""
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.use_sdpa = enabled
    return model


class MultiHeadAttention(nn.Module):
    """The twin of ``numpy_transformer.MultiHeadAttention``, one kernel for both of its ``attention`` kinds.

    The NumPy configs' ``attention="standard" | "flash"`` chooses between two NumPy kernels with the
    same numbers; the twin reads the same configs and ignores the field (autograd differentiates one
    attention, and ``parity_tests/test_attention_option.py`` checks it against the NumPy flash models).

    ``use_sdpa`` (an attribute, off by default; :func:`use_sdpa` sets it in a whole model): for speed,
    mostly on CUDA, run the attention through ``F.scaled_dot_product_attention``
    (:func:`~torch_transformer.functional.fused_attention`) whenever nothing needs the written-out
    path -- no explicit dropout mask to replay, no weights asked for, no intermediates tracked. The
    same numbers up to rounding (``parity_tests/test_gpu.py`` checks both on the CPU in float64).
    """

    use_sdpa: bool = False

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        bias: bool = True,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={d_model}, got {n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = Linear(d_model, d_model, bias, dtype, device)
        self.k_proj = Linear(d_model, d_model, bias, dtype, device)
        self.v_proj = Linear(d_model, d_model, bias, dtype, device)
        self.out_proj = Linear(d_model, d_model, bias, dtype, device)
        in_bound = math.sqrt(6.0 / (4 * d_model))  # Xavier over the packed (3C, C) matrix
        with torch.no_grad():
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                proj.weight.uniform_(-in_bound, in_bound)
            for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
                if proj.bias is not None:
                    proj.bias.zero_()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        dropout_mask: torch.Tensor | None = None,
        return_weights: bool = False,
        *,
        key_padding_mask: torch.Tensor | None = None,
    ):
        """As ``numpy_transformer.MultiHeadAttention.forward``: ``mask`` True = may attend, 4-D or a
        (T, S) pattern; ``key_padding_mask`` (B, S) bool, True = real token, applied as (B, 1, 1, S)."""
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
            mask = keep if mask is None else mask & keep
        q = expose("q_heads", self._split(self.q_proj(query)))  # (B, H, T, D)
        k = expose("k_heads", self._split(self.k_proj(key)))  # (B, H, S, D)
        v = expose("v_heads", self._split(self.v_proj(value)))
        p = self.dropout if self.training else 0.0
        if self.use_sdpa and dropout_mask is None and not return_weights and not is_tracking():
            heads = TF.fused_attention(q, k, v, mask=mask, is_causal=is_causal, dropout_p=p)  # (B, H, T, D)
            B, H, T, D = heads.shape
            return self.out_proj(heads.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)
        heads, weights = TF.scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=is_causal,
            dropout_p=p,
            dropout_mask=dropout_mask,
            return_weights=True,
        )  # (B, H, T, D), (B, H, T, S)
        B, H, T, D = expose("heads", heads).shape
        out = self.out_proj(expose("merged", heads.transpose(1, 2).reshape(B, T, H * D)))  # (B, T, C)
        return (out, weights) if return_weights else out
