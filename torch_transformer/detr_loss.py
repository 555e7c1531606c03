"""The twin of ``numpy_transformer.functional.detr_loss``: DETR's matching and set loss in plain torch.

The formulas of Carion et al. written out with tensor operations (autograd gives the backward);
the matching computes its cost matrix in torch and solves it with
``scipy.optimize.linear_sum_assignment``, as DETR and Hugging Face do, under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou, giou_loss, l1_box_loss
from .functional import log_softmax
from .intermediates import prefix


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, V), (N,), (V,) -> sum_n w[y_n] nll_n / sum_n w[y_n]."""
    nll = -log_softmax(logits).gather(1, targets[:, None])[:, 0]  # (N,)
    w = weight[targets]  # (N,)
    return (w * nll).sum() / w.sum()


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    target_labels: Sequence[torch.Tensor],
    target_boxes: Sequence[torch.Tensor],
    class_cost: float = 1.0,
    bbox_cost: float = 5.0,
    giou_cost: float = 2.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image ``(query_idx, target_idx)`` (int64) minimising bbox L1 - p(class) - GIoU, weighted."""
    from scipy.optimize import linear_sum_assignment

    out = []
    for b in range(logits.shape[0]):
        labels, boxes = target_labels[b], target_boxes[b]
        if len(labels) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            out.append((empty, empty.clone()))
            continue
        probs = torch.softmax(logits[b], dim=-1)  # (Q, V)
        l1 = (pred_boxes[b][:, None, :] - boxes[None, :, :]).abs().sum(-1)  # (Q, n)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes[b]), box_cxcywh_to_xyxy(boxes))
        cost = bbox_cost * l1 - class_cost * probs[:, labels] - giou_cost * giou
        big = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


def detr_loss(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    target_labels: Sequence[torch.Tensor],
    target_boxes: Sequence[torch.Tensor],
    eos_coef: float = 0.1,
    bbox_loss_coefficient: float = 5.0,
    giou_loss_coefficient: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L, B, Q, V), (L, B, Q, 4) cxcywh -> the total over the layers, and each term by Hugging Face's name."""
    L, B, Q, V = logits.shape
    device = logits.device
    labels = [t.to(device) for t in target_labels]
    boxes = [t.to(device) for t in target_boxes]
    num_boxes = float(max(sum(len(t) for t in labels), 1))
    weight = torch.ones(V, dtype=logits.dtype, device=device)
    weight[-1] = eos_coef
    total = logits.new_zeros(())
    terms = {}
    for layer in range(L):
        z, bx = logits[layer], pred_boxes[layer]
        indices = hungarian_match(z, bx, labels, boxes)
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        target_classes = torch.full((B, Q), V - 1, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = torch.cat(
            [lab[t.to(device)] for lab, (_, t) in zip(labels, indices, strict=True)]
        )
        loss_ce = weighted_cross_entropy(z.reshape(B * Q, V), target_classes.reshape(-1), weight)
        matched = bx[batch_idx, query_idx]  # (m, 4)
        matched_t = torch.cat([box[t.to(device)] for box, (_, t) in zip(boxes, indices, strict=True)]).reshape(-1, 4)
        loss_l1 = l1_box_loss(matched, matched_t, num_boxes)
        with prefix(f"layer{layer}"):  # as in the NumPy backward
            loss_g = giou_loss(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(matched_t), num_boxes)
        total = total + loss_ce + bbox_loss_coefficient * loss_l1 + giou_loss_coefficient * loss_g
        s = "" if layer == L - 1 else f"_{layer}"
        terms.update({f"loss_ce{s}": loss_ce, f"loss_bbox{s}": loss_l1, f"loss_giou{s}": loss_g})
    return total, terms


def as_tensors(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """A list of per-image target arrays as tensors (the twin's targets)."""
    return [torch.from_numpy(np.asarray(a)) for a in arrays]
