"""The twin of ``numpy_transformer.functional.frozen_batch_norm``: a per-channel affine map with fixed statistics."""

from __future__ import annotations

import torch


def frozen_batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """(N, C, H, W) -> weight (x - mean) / sqrt(var + eps) + bias, the statistics detached (constants)."""
    scale = (weight / torch.sqrt(running_var + eps)).detach().reshape(1, -1, 1, 1)
    shift = (bias.detach() - running_mean.detach() * scale.reshape(-1)).reshape(1, -1, 1, 1)
    return x * scale + shift
