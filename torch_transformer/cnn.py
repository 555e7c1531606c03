"""The twin of ``numpy_transformer.models.cnn``: the same conv stages and head, the same parameter names.

Built from the twin's own ops (``functional.conv2d`` and ``functional.max_pool2d``: unfold + matmul,
gather), so comparing it with ``torch.nn.Conv2d`` / ``MaxPool2d`` (``parity_tests/test_cnn.py``)
checks PyTorch's built-ins too.
"""

from __future__ import annotations

import torch
from torch import nn

from numpy_transformer.config import CNNConfig

from . import functional as TF


class Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(torch.zeros(c_out, c_in, k, k, dtype=dtype))
        self.conv.bias = nn.Parameter(torch.zeros(c_out, dtype=dtype))
        self.padding = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = TF.conv2d(x, self.conv.weight, self.conv.bias, padding=self.padding)
        return TF.max_pool2d(TF.relu(y), 2)


class ImageCNN(nn.Module):
    def __init__(self, config: CNNConfig, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.config = config
        widths = (config.num_channels, *config.channels)
        self.stages = nn.ModuleList(
            [Stage(widths[s], widths[s + 1], config.kernel_size, dtype) for s in range(len(config.channels))]
        )
        self.head = nn.Linear(config.flat_features, config.num_labels, dtype=dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` (B, Cin, I, I) -> logits (B, K)."""
        x = pixel_values
        for stage in self.stages:
            x = stage(x)
        return TF.linear(x.reshape(x.shape[0], -1), self.head.weight, self.head.bias)
