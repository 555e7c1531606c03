"""The twin of ``numpy_transformer.modules.dropout_masks``: named dropout masks, looked up by site."""

from __future__ import annotations

import torch

from . import functional as TF

__all__ = ["DropoutMasks"]


class DropoutMasks:
    """Looks up named dropout masks; the torch counterpart of ``DropoutMasks``."""

    def __init__(self, given: dict[str, torch.Tensor] | None, prefix: str = "") -> None:
        self.given = given or {}
        self.prefix = prefix

    def child(self, name: str) -> DropoutMasks:
        return DropoutMasks(self.given, f"{self.prefix}{name}.")

    def get(self, site: str) -> torch.Tensor | None:
        return self.given.get(self.prefix + site)

    def drop(self, x: torch.Tensor, p: float, site: str, training: bool) -> torch.Tensor:
        """Dropout of ``x`` at ``site`` with that site's given mask (or a fresh one)."""
        return TF.dropout(x, p, mask=self.get(site), training=training)
