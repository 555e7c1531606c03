"""The twin's charlm trainer: the torch :class:`GPT` or :class:`Llama`, ``torch.optim.AdamW``, ``clip_grad_norm_``,
``F.cross_entropy``.

It mirrors :class:`numpy_transformer.applications.charlm.NumpyCharLMTrainer` step for step (the same
two parameter groups, betas, clipping, schedule and evaluation windows) with PyTorch's own optimizer,
clipping and loss, so ``train --task charlm --backend torch`` trains the same model the same way and
``--compare`` checks those built-ins as well as the model. For ``--resume`` its AdamW state goes into
the file in the NumPy AdamW's format (``torch_transformer.training.numpy_adam_state``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer.applications.charlm import BETAS, no_decay
from numpy_transformer.training.loop import NonFiniteError

from .gpt import GPT
from .llama import Llama
from .training import load_numpy_adam_state, numpy_adam_state


class TorchCharLMTrainer:
    backend = "torch"

    def __init__(
        self, model: GPT | Llama, weight_decay: float, clip_norm: float, device: str | torch.device = "cpu"
    ) -> None:
        self.model, self.clip_norm, self.device = model, clip_norm, torch.device(device)
        self.replays_dropout = isinstance(model, GPT)  # a Llama has no dropout: its forward takes the ids alone
        named = list(model.named_parameters())
        groups = [
            {"params": [p for n, p in named if not no_decay(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=BETAS)
        self.updates = 0

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def train_step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, dropout_masks: dict[str, Any] | None = None
    ) -> tuple[float, dict[str, Any]]:
        model = self.model
        model.train()
        ids = self._tensor(x)
        # (B, T, V); the GPT replays the NumPy side's dropout masks (it converts them itself)
        logits = model(ids, dropout_masks) if self.replays_dropout else model(ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self._tensor(y).reshape(-1))
        value = loss.item()
        if not np.isfinite(value):
            raise NonFiniteError(step, "loss", "nan" if np.isnan(value) else "inf", "torch")
        self.optimizer.zero_grad()
        loss.backward()
        try:  # the norm checks every gradient at once; it raises before scaling any
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_norm, error_if_nonfinite=True)
        except RuntimeError:
            for name, p in model.named_parameters():
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    kind = "nan" if bool(p.grad.isnan().any()) else "inf"
                    raise NonFiniteError(step, name, kind, "torch") from None
            raise NonFiniteError(step, "gradient norm", "inf", "torch") from None
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.updates += 1
        return value, {}

    @torch.no_grad()
    def evaluate(self, windows: np.ndarray) -> float:
        """Mean next-character cross-entropy over ``windows`` (n, T + 1), the NumPy side's chunks, in eval mode."""
        model = self.model
        was_training = model.training
        model.eval()
        total = 0.0
        for chunk in np.array_split(windows, max(1, len(windows) // 32)):
            logits = model(self._tensor(chunk[:, :-1]))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self._tensor(chunk[:, 1:]).reshape(-1))
            total += float(loss) * len(chunk)
        model.train(was_training)
        return total / len(windows)

    def numpy_optimizer_state(self, template: dict) -> dict:
        """This AdamW's state in the NumPy AdamW's format; ``template`` is that optimizer's ``state_dict()``."""
        return numpy_adam_state(self.optimizer, self.model, template, self.updates)

    def load_numpy_optimizer_state(self, state: dict) -> None:
        self.updates = load_numpy_adam_state(self.optimizer, self.model, state)
