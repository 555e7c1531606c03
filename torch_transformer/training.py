"""The PyTorch trainer: the twin model, ``torch.optim.Adam``, ``clip_grad_norm_`` and ``F.cross_entropy``.

It follows :class:`numpy_transformer.training.NumpyTrainer` step for step (same
schedule, same clipping, same loss), using PyTorch's own optimizer, clipping and
loss, so that a compare run checks those built-ins as well as the model.

For ``train --resume`` the trainer writes its Adam state in the NumPy optimizer's format
(:meth:`TorchTrainer.numpy_optimizer_state`; the two Adams keep the same buffers) and reads it
back (:meth:`TorchTrainer.load_numpy_optimizer_state`), so one checkpoint format serves both
backends; :func:`generator_states` / :func:`restore_generators` carry torch's random generators.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from numpy_transformer.inference.search import greedy_decode
from numpy_transformer.optim import Adam
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

    def numpy_optimizer_state(self, numpy_model) -> dict:
        """This Adam's state as ``numpy_transformer.optim.Adam.state_dict()`` of ``numpy_model`` gives it.

        ``numpy_model``: the NumPy model with this twin's parameter names (its values are not read).
        """
        template = Adam(numpy_model, lr=0.0, betas=self.cfg.betas, eps=self.cfg.eps).state_dict()
        return numpy_adam_state(self.optimizer, self.model, template, self.updates)

    def load_numpy_optimizer_state(self, state: dict) -> None:
        """Set this Adam from a NumPy Adam's ``state_dict()`` (checked already, by loading it into one)."""
        self.updates = load_numpy_adam_state(self.optimizer, self.model, state)

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


def generator_states(device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """torch's random generators as uint8 arrays: ``torch_rng.cpu`` and, on CUDA, ``torch_rng.cuda``."""
    out = {"torch_rng.cpu": torch.get_rng_state().numpy().copy()}
    if torch.device(device).type == "cuda":
        out["torch_rng.cuda"] = torch.cuda.get_rng_state(torch.device(device)).numpy().copy()
    return out


def restore_generators(states: dict[str, np.ndarray], device: torch.device | str = "cpu") -> None:
    """Undo :func:`generator_states`: a ``ValueError`` naming the entry if one is missing or not a state."""
    wanted = ["torch_rng.cpu"] + (["torch_rng.cuda"] if torch.device(device).type == "cuda" else [])
    for key in wanted:
        a = states.get(key)
        if a is None or a.dtype != np.uint8 or a.ndim != 1:
            got = None if a is None else f"{a.shape} {a.dtype}"
            raise ValueError(f"state/{key}: expected torch's generator state, a 1-D uint8 array; got {got}")
    try:
        torch.set_rng_state(torch.from_numpy(states["torch_rng.cpu"].copy()))
        if "torch_rng.cuda" in wanted:
            torch.cuda.set_rng_state(torch.from_numpy(states["torch_rng.cuda"].copy()), torch.device(device))
    except RuntimeError as exc:
        raise ValueError(f"state/torch_rng.*: not a state torch accepts ({exc})") from None


def _lr_key(state: dict, group: int) -> str:
    """Where a NumPy optimizer's state dict keeps group ``group``'s rate: ``lr`` with one group."""
    return "lr" if "lr" in state else f"param_groups.{group}.lr"


def numpy_adam_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, template: dict, step: int) -> dict:
    """A torch Adam / AdamW's state in the NumPy optimizer's state-dict format.

    ``template``: the ``state_dict()`` of the matching NumPy optimizer (same groups, same parameter
    names, its hyper-parameters); its step count, rates and moment buffers are replaced by this
    optimizer's, buffer for buffer: the two Adams keep the same ``exp_avg`` and ``exp_avg_sq``.
    """
    state = dict(template)
    state["step"] = step
    for i, group in enumerate(optimizer.param_groups):
        state[_lr_key(template, i)] = group["lr"]
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            if key in ("exp_avg", "exp_avg_sq"):
                state[f"{key}.{name}"] = value.detach().cpu().numpy().copy()
    return state


def load_numpy_adam_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict) -> int:
    """Undo :func:`numpy_adam_state`: the moment buffers bit for bit, the step count, each group's rate.

    ``state`` must already have passed the NumPy optimizer's ``load_state_dict`` checks (names, shapes,
    dtypes). Returns the step count.
    """
    step = int(state["step"])
    mine = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    if step > 0:
        like = torch.zeros(())  # the dtype torch gives a fresh Adam's step counter (float32 by default)
        for name, p in model.named_parameters():
            mine["state"][index[id(p)]] = {
                "step": torch.tensor(float(step), dtype=like.dtype),
                "exp_avg": torch.from_numpy(np.asarray(state[f"exp_avg.{name}"]).copy()),
                "exp_avg_sq": torch.from_numpy(np.asarray(state[f"exp_avg_sq.{name}"]).copy()),
            }
    for i, group in enumerate(mine["param_groups"]):
        group["lr"] = float(state[_lr_key(state, i)])
    optimizer.load_state_dict(mine)  # moves the buffers to each parameter's device and dtype
    return step
