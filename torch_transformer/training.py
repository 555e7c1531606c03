"""The PyTorch trainer: the twin model, ``torch.optim.Adam``, ``clip_grad_norm_`` and ``F.cross_entropy``.

It follows :class:`numpy_transformer.training.NumpyTrainer` step for step (same
schedule, same clipping, same loss), using PyTorch's own optimizer, clipping and
loss, so that a compare run checks those built-ins as well as the model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer.inference.search import greedy_decode
from numpy_transformer.training import StepResult, TrainConfig, sequence_metrics
from numpy_transformer.training.tasks import BOS, EOS, PAD, Batch, ToyDataset

from .rnn_seq2seq import RNNSeq2Seq
from .steppers import stepping
from .transformer import Transformer


class TorchTrainer:
    backend = "torch"

    def __init__(self, model: Transformer | RNNSeq2Seq, cfg: TrainConfig, device: str | torch.device = "cpu") -> None:
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=cfg.betas, eps=cfg.eps)
        self.updates = 0

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    def train_step(self, batch: Batch, dropout_masks: dict[str, np.ndarray] | None = None) -> StepResult:
        model, cfg = self.model, self.cfg
        model.train()
        masks = None if dropout_masks is None else {k: self._tensor(v) for k, v in dropout_masks.items()}
        logits = model(self._tensor(batch.src), self._tensor(batch.tgt_in), masks)  # (B, T, V)
        loss = F.cross_entropy(
            logits.transpose(1, 2),  # F.cross_entropy wants the classes on dimension 1: (B, V, T)
            self._tensor(batch.tgt_out),
            ignore_index=PAD,
            label_smoothing=cfg.label_smoothing,
        )
        lr = cfg.learning_rate(self.updates + 1)
        loss_value = loss.item()
        if not math.isfinite(loss_value):  # no backward pass and no update: the model keeps the last good weights
            return StepResult(loss_value, math.nan, lr)
        self.optimizer.zero_grad()
        loss.backward()
        try:  # the norm is the one vectorised check of every gradient; it raises before scaling any
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm, error_if_nonfinite=True)
        except RuntimeError:
            for name, p in model.named_parameters():
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    kind = "nan" if bool(p.grad.isnan().any()) else "inf"
                    return StepResult(loss_value, math.nan, lr, nonfinite_grad=name, nonfinite_value=kind)
            return StepResult(loss_value, math.inf, lr)  # every gradient finite, their sum of squares overflows
        self.updates += 1
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return StepResult(loss_value, norm.item(), lr)

    @torch.no_grad()
    def evaluate(self, dataset: ToyDataset, batch_size: int) -> dict[str, float]:
        model = self.model
        was_training = model.training
        model.eval()
        total_loss = tokens = right_tokens = right_seqs = seqs = 0.0
        for batch in dataset.val_batches(batch_size):
            tgt_out = self._tensor(batch.tgt_out)
            logits = model(self._tensor(batch.src), self._tensor(batch.tgt_in))
            valid = tgt_out != PAD
            loss = F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD)
            total_loss += float(loss) * int(valid.sum())
            tokens += int(valid.sum())
            right_tokens += int(((logits.argmax(-1) == tgt_out) & valid).sum())
            max_len = batch.tgt_out.shape[1]
            decoded = greedy_decode(stepping(model), batch.src, max_len=max_len, bos_id=BOS, eos_id=EOS)
            r, n = sequence_metrics(decoded.tokens[:, 1:], batch)
            right_seqs, seqs = right_seqs + r, seqs + n
        model.train(was_training)
        return {
            "val_loss": total_loss / tokens,
            "val_token_accuracy": right_tokens / tokens,
            "val_sequence_accuracy": right_seqs / seqs,
        }
