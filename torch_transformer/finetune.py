"""The twin of ``numpy_transformer.applications.finetune``: the same fine-tuning loop on the PyTorch classifier.

``torch.optim.AdamW`` with parameter groups of the same names and learning rates
(:func:`numpy_transformer.applications.finetune.layer_groups`), ``F.cross_entropy``, autograd, and
freezing by ``requires_grad_(False)`` on the same schedule
(:func:`numpy_transformer.applications.finetune.apply_unfreeze_schedule` works on both models).
``optimizer.zero_grad()`` sets gradients to ``None``, so a frozen parameter has
``.grad is None`` and ``torch.optim`` skips it: no update, no weight decay, no step
counted. The NumPy optimizer does the same by reading the owning module's flag.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer.applications.datasets import SentenceDataset
from numpy_transformer.applications.finetune import (
    ClassificationBatch,
    Encoder,
    FineTuneConfig,
    FineTuneStep,
    apply_unfreeze_schedule,
    group_index,
    layer_groups,
    make_batch,
)

from .bert import BertForSequenceClassification


def layerwise_param_groups(
    model: BertForSequenceClassification, lr: float, decay: float, head_lr: float
) -> list[dict[str, Any]]:
    """``[{"params": [tensor, ...], "lr": ...}, ...]`` for ``torch.optim``, group for group as the NumPy one."""
    groups = layer_groups(model.config.n_layers, lr, decay, head_lr)
    params: list[list[torch.nn.Parameter]] = [[] for _ in groups]
    for name, p in model.named_parameters():
        params[group_index(name, groups)].append(p)
    return [{"params": p, "lr": g.lr} for g, p in zip(groups, params, strict=True)]


def group_names(model: BertForSequenceClassification) -> list[list[str]]:
    """The parameter names of each group, in the optimizer's order (for comparing state with the NumPy one)."""
    groups = layer_groups(model.config.n_layers, 1.0, 1.0, 1.0)
    names: list[list[str]] = [[] for _ in groups]
    for name, _ in model.named_parameters():
        names[group_index(name, groups)].append(name)
    return names


class TorchFineTuner:
    backend = "torch"

    def __init__(
        self, model: BertForSequenceClassification, cfg: FineTuneConfig, device: str | torch.device = "cpu"
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.optimizer = torch.optim.AdamW(
            layerwise_param_groups(model, cfg.lr, cfg.layer_decay, cfg.head_lr),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
        self.updates = 0
        apply_unfreeze_schedule(model, 1, cfg)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def train_step(
        self, batch: ClassificationBatch, dropout_masks: dict[str, np.ndarray] | None = None
    ) -> FineTuneStep:
        model = self.model
        update = self.updates + 1
        frozen = apply_unfreeze_schedule(model, update, self.cfg)
        model.train()
        masks = None if dropout_masks is None else {k: self._tensor(v) for k, v in dropout_masks.items()}
        logits = model(
            self._tensor(batch.input_ids), self._tensor(batch.attention_mask), self._tensor(batch.token_type_ids), masks
        )  # (B, K)
        loss = F.cross_entropy(logits, self._tensor(batch.labels))
        self.optimizer.zero_grad(set_to_none=True)  # frozen parameters keep .grad None: AdamW skips them
        loss.backward()
        self.optimizer.step()
        self.updates = update
        return FineTuneStep(loss.item(), update, frozen)

    @torch.no_grad()
    def evaluate(self, dataset: SentenceDataset, encode: Encoder, batch_size: int = 64) -> dict[str, float]:
        model = self.model
        was_training = model.training
        model.eval()
        total = right = 0.0
        for sentences, labels in dataset.val_batches(batch_size):
            b = make_batch(encode, sentences, labels)
            logits = model(self._tensor(b.input_ids), self._tensor(b.attention_mask), self._tensor(b.token_type_ids))
            y = self._tensor(b.labels)
            total += F.cross_entropy(logits, y).item() * len(labels)
            right += float((logits.argmax(-1) == y).sum())
        model.train(was_training)
        n = len(dataset.val_sentences)
        return {"val_loss": total / n, "val_accuracy": right / n}

    def trained_parameters(self) -> int:
        """Scalars that received at least one update so far (those with optimizer state)."""
        return sum(p.numel() for p in self.model.parameters() if p in self.optimizer.state)
