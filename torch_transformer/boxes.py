"""The twin of ``numpy_transformer.functional.boxes``: box formats, IoU, GIoU and the box losses, forward only.

Written from elementary tensor operations so that autograd differentiates the same formula the
NumPy backward differentiates by hand, with the same definitions at the degenerate points: a
``min`` / ``max`` tie goes to the first box (``torch.where(a >= b, a, b)``), a zero union gives
IoU 0 and a zero enclosing area a zero penalty, through safe denominators (so no NaN reaches the
gradient of the branch ``torch.where`` does not take).
"""

from __future__ import annotations

import torch

from .intermediates import expose


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cxcy, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([cxcy - 0.5 * wh, cxcy + 0.5 * wh], dim=-1)  # (..., 4)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    p1, p2 = boxes[..., :2], boxes[..., 2:]
    return torch.cat([0.5 * (p1 + p2), p2 - p1], dim=-1)  # (..., 4)


def _max_a_wins(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a >= b, a, b)


def _min_a_wins(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a <= b, a, b)


def overlap(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(iou, giou)`` of corner boxes ``a``, ``b`` (..., 4), broadcast over the leading axes."""
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    iw = _min_a_wins(ax2, bx2) - _max_a_wins(ax1, bx1)
    ih = _min_a_wins(ay2, by2) - _max_a_wins(ay1, by1)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    iw = torch.where(iw > 0, iw, zero)  # relu with relu'(0) = 0
    ih = torch.where(ih > 0, ih, zero)
    inter = expose("inter", iw * ih)
    union = expose("union", area_a + area_b - inter)
    cw = _max_a_wins(ax2, bx2) - _min_a_wins(ax1, bx1)
    ch = _max_a_wins(ay2, by2) - _min_a_wins(ay1, by1)
    enc = expose("enc", cw * ch)
    has_union, has_enc = union > 0, enc > 0
    one = torch.ones((), dtype=a.dtype, device=a.device)
    union_s, enc_s = torch.where(has_union, union, one), torch.where(has_enc, enc, one)
    iou = expose("iou", torch.where(has_union, inter / union_s, zero))
    giou = iou - torch.where(has_enc, (enc - union) / enc_s, zero)
    return iou, giou


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) -> (N, M)."""
    return overlap(boxes1[:, None], boxes2[None])[0]


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) -> (N, M)."""
    return overlap(boxes1[:, None], boxes2[None])[1]


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """sum_i (1 - GIoU(pred_i, target_i)) / num_boxes over matched corner boxes (N, 4)."""
    return (1 - overlap(pred_boxes, target_boxes)[1]).sum() / num_boxes


def l1_box_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """sum |pred - target| / num_boxes over matched boxes (N, 4)."""
    return (pred_boxes - target_boxes).abs().sum() / num_boxes
