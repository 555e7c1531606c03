r"""Bounding boxes: the two formats, pairwise IoU and generalized IoU, and the box losses of DETR.

Shape legend: ``N``, ``M`` numbers of boxes; ``...`` any leading axes. A box is 4 numbers on the
last axis, in one of two formats:

* ``cxcywh``: centre ``(cx, cy)``, width ``w``, height ``h`` -- what DETR's box head predicts
  (through a sigmoid, so in ``[0, 1]``) and what its targets are written in;
* ``xyxy``: the corners ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2`` -- what the
  overlap of two boxes is computed in.

Overlap of two boxes ``a`` and ``b`` (``xyxy``)::

    area_a = (a_x2 - a_x1)(a_y2 - a_y1)
    inter  = relu(min(a_x2, b_x2) - max(a_x1, b_x1)) * relu(min(a_y2, b_y2) - max(a_y1, b_y1))
    union  = area_a + area_b - inter
    IoU    = inter / union
    enc    = (max(a_x2, b_x2) - min(a_x1, b_x1)) * (max(a_y2, b_y2) - min(a_y1, b_y1))   the smallest
             box C that encloses both
    GIoU   = IoU - (enc - union) / enc  =  IoU - 1 + union / enc

IoU is 0 for every pair that does not overlap, however far apart: it gives a box that misses its
target no gradient. GIoU (Rezatofighi et al., 2019) keeps going down as the boxes move apart
(towards -1), so a box that misses still learns to move towards its target. ``1 - GIoU`` is the
GIoU loss, in ``[0, 2]``.

Degenerate boxes, defined here (and tested in ``parity_tests/test_boxes.py``)
----------------------------------------------------------------------------
* **Zero width or height** is a valid box of area 0: ``IoU`` with a box of positive area is
  ``0`` (no area in common), ``GIoU = -1 + union / enc`` stays defined and differentiable.
* **Identical boxes** give ``IoU = GIoU = 1``, the loss 0. ``min`` and ``max`` tie there; the tie
  goes to the *first* box ``a`` (``max(a, b) = a if a >= b``, ``min(a, b) = a if a <= b``), a
  subgradient (the twin writes the same rule with ``torch.where``).
* **No overlap** (or boxes that only touch): ``inter = 0`` and the relu passes no gradient to
  the intersection (``relu'(0) = 0``).
* **Zero union** (both boxes of area 0): ``inter / union`` is ``0 / 0``. It is *defined* as
  ``IoU = 0`` with a zero gradient through the ratio; likewise a zero enclosing area (two
  zero-width boxes on one vertical line ...) makes the penalty ``(enc - union) / enc := 0``.
  Hugging Face's (and DETR's) ``generalized_box_iou`` return NaN there.
* Boxes with ``x2 < x1`` or ``y2 < y1`` (or NaN) are refused with a ``ValueError``, as DETR does.

The backward of the overlap reads the forward bottom-up (``d`` = gradient of the output):
``d inter = dIoU / union``, ``d union = -dIoU inter / union^2 + dGIoU / enc``,
``d enc = -dGIoU union / enc^2``; ``union`` sends ``+d union`` to both areas and ``-d union`` to
``inter``; a product sends each factor the other one times its gradient; ``relu`` passes where
its argument is ``> 0``; ``min`` / ``max`` pass to the box that won (``a`` on a tie). The full
derivation is walked through in ``walkthroughs/13_detection.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dout, check_float_array, check_positive_number, check_same_dtype
from .intermediates import gradient_at

# ---------------------------------------------------------------------------- checks


def check_boxes(name: str, boxes: object, fmt: str = "xyxy", ndim: int | None = None) -> np.ndarray:
    """``boxes`` must be a float array (..., 4); in ``xyxy`` format also ``x1 <= x2`` and ``y1 <= y2``."""
    check_float_array(name, boxes)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected shape (..., 4) (one box per row, {fmt}), got {boxes.shape}")
    if ndim is not None and boxes.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} axes {'(N, 4)' if ndim == 2 else ''} in {fmt}, got {boxes.shape}")
    if fmt == "xyxy":
        ok = (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])
        if not ok.all():
            bad = np.argwhere(~ok)[0]
            raise ValueError(
                f"{name}: expected corner boxes (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, "
                f"got {boxes[tuple(bad)].tolist()} at index {tuple(int(i) for i in bad)}"
            )
    elif fmt == "cxcywh":
        ok = (boxes[..., 2] >= 0) & (boxes[..., 3] >= 0)
        if not ok.all():
            bad = np.argwhere(~ok)[0]
            raise ValueError(
                f"{name}: expected centre boxes (cx, cy, w, h) with w >= 0 and h >= 0, "
                f"got {boxes[tuple(bad)].tolist()} at index {tuple(int(i) for i in bad)}"
            )
    return boxes


# ---------------------------------------------------------------------------- format conversions


@dataclass(frozen=True)
class BoxConvertCache:
    shape: tuple[int, ...]  # (..., 4): the map is linear, the backward needs nothing else
    dtype: np.dtype


def box_cxcywh_to_xyxy_forward(boxes: np.ndarray) -> tuple[np.ndarray, BoxConvertCache]:
    """``(cx, cy, w, h) -> (cx - w/2, cy - h/2, cx + w/2, cy + h/2)`` on the last axis (..., 4)."""
    check_boxes("boxes", boxes, "cxcywh")
    half = boxes.dtype.type(0.5)
    cxcy, wh = boxes[..., :2], boxes[..., 2:]
    out = np.concatenate([cxcy - half * wh, cxcy + half * wh], axis=-1)  # (..., 4)
    return out, BoxConvertCache(boxes.shape, boxes.dtype)


def box_cxcywh_to_xyxy_backward(dout: np.ndarray, cache: BoxConvertCache) -> np.ndarray:
    r"""Gradient of the centre boxes.

    Forward: :math:`x_1 = c_x - w/2,\ x_2 = c_x + w/2` (and the same in y). Backward:

    .. math:: dc_x = dx_1 + dx_2, \qquad dw = (dx_2 - dx_1) / 2.
    """
    check_dout(dout, cache.shape, cache.dtype)
    half = cache.dtype.type(0.5)
    d1, d2 = dout[..., :2], dout[..., 2:]  # (..., 2) each: d(x1, y1), d(x2, y2)
    return np.concatenate([d1 + d2, half * (d2 - d1)], axis=-1)  # (..., 4)


def box_xyxy_to_cxcywh_forward(boxes: np.ndarray) -> tuple[np.ndarray, BoxConvertCache]:
    """``(x1, y1, x2, y2) -> ((x1 + x2)/2, (y1 + y2)/2, x2 - x1, y2 - y1)`` on the last axis (..., 4)."""
    check_boxes("boxes", boxes, "xyxy")
    half = boxes.dtype.type(0.5)
    p1, p2 = boxes[..., :2], boxes[..., 2:]
    out = np.concatenate([half * (p1 + p2), p2 - p1], axis=-1)  # (..., 4)
    return out, BoxConvertCache(boxes.shape, boxes.dtype)


def box_xyxy_to_cxcywh_backward(dout: np.ndarray, cache: BoxConvertCache) -> np.ndarray:
    r"""Gradient of the corner boxes.

    Forward: :math:`c_x = (x_1 + x_2)/2,\ w = x_2 - x_1`. Backward:

    .. math:: dx_1 = dc_x / 2 - dw, \qquad dx_2 = dc_x / 2 + dw.
    """
    check_dout(dout, cache.shape, cache.dtype)
    half = cache.dtype.type(0.5)
    dc, dwh = dout[..., :2], dout[..., 2:]
    return np.concatenate([half * dc - dwh, half * dc + dwh], axis=-1)  # (..., 4)


# ---------------------------------------------------------------------------- the overlap of two boxes


@dataclass(frozen=True)
class OverlapCache:
    """What the backward of :func:`overlap_forward` needs, every field of the broadcast shape (P,)."""

    a_wins_ix1: np.ndarray  # bool: max(a_x1, b_x1) is a's (a tie included); the same below
    a_wins_iy1: np.ndarray
    a_wins_ix2: np.ndarray  # bool: min(a_x2, b_x2) is a's
    a_wins_iy2: np.ndarray
    a_wins_cx1: np.ndarray  # bool: min(a_x1, b_x1) is a's (enclosing box)
    a_wins_cy1: np.ndarray
    a_wins_cx2: np.ndarray  # bool: max(a_x2, b_x2) is a's
    a_wins_cy2: np.ndarray
    wa: np.ndarray  # a's width and height
    ha: np.ndarray
    wb: np.ndarray
    hb: np.ndarray
    iw: np.ndarray  # relu(min x2 - max x1): the intersection's width and height
    ih: np.ndarray
    cw: np.ndarray  # the enclosing box's width and height
    ch: np.ndarray
    inter: np.ndarray
    union: np.ndarray  # safe: 1 where the union is 0 (see has_union)
    enc: np.ndarray  # safe: 1 where the enclosing area is 0
    has_union: np.ndarray  # bool: union > 0 (else IoU := 0)
    has_enc: np.ndarray  # bool: enc > 0 (else the GIoU penalty := 0)
    a_shape: tuple[int, ...]  # (..., 4) as given, to sum the gradient over the broadcast axes
    b_shape: tuple[int, ...]


def overlap_forward(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, OverlapCache]:
    """IoU and GIoU of the boxes ``a`` and ``b`` (``xyxy``, last axis 4), broadcast over the leading axes.

    Returns ``(iou, giou, cache)``, each of the broadcast shape ``P``. The pairwise and paired ops
    below call this with ``a[:, None]`` / ``b[None]`` or with two equal shapes; the module docstring
    defines the degenerate cases.
    """
    dtype = a.dtype
    zero, one = dtype.type(0), dtype.type(1)
    ax1, ay1, ax2, ay2 = (a[..., i] for i in range(4))
    bx1, by1, bx2, by2 = (b[..., i] for i in range(4))
    wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    area_a, area_b = wa * ha, wb * hb
    a_ix1, a_iy1 = ax1 >= bx1, ay1 >= by1  # max: a wins ties
    a_ix2, a_iy2 = ax2 <= bx2, ay2 <= by2  # min: a wins ties
    iw_raw = np.where(a_ix2, ax2, bx2) - np.where(a_ix1, ax1, bx1)  # (P,)
    ih_raw = np.where(a_iy2, ay2, by2) - np.where(a_iy1, ay1, by1)
    iw, ih = np.maximum(iw_raw, zero), np.maximum(ih_raw, zero)  # relu: no overlap -> 0
    inter = iw * ih
    union = area_a + area_b - inter
    a_cx1, a_cy1 = ax1 <= bx1, ay1 <= by1  # the enclosing box: min of the first corners ...
    a_cx2, a_cy2 = ax2 >= bx2, ay2 >= by2  # ... max of the second
    cw = np.where(a_cx2, ax2, bx2) - np.where(a_cx1, ax1, bx1)
    ch = np.where(a_cy2, ay2, by2) - np.where(a_cy1, ay1, by1)
    enc = cw * ch
    has_union, has_enc = union > zero, enc > zero
    union_s, enc_s = np.where(has_union, union, one), np.where(has_enc, enc, one)  # safe denominators
    iou = np.where(has_union, inter / union_s, zero)
    giou = iou - np.where(has_enc, (enc - union) / enc_s, zero)
    shape = iou.shape

    def full(x):  # every cached field of the broadcast shape, so the backward can index them alike
        return x if x.shape == shape else np.broadcast_to(x, shape)

    cache = OverlapCache(
        *(full(m) for m in (a_ix1, a_iy1, a_ix2, a_iy2, a_cx1, a_cy1, a_cx2, a_cy2)),
        *(full(x) for x in (wa, ha, wb, hb, iw, ih, cw, ch, inter, union_s, enc_s, has_union, has_enc)),
        a_shape=a.shape,
        b_shape=b.shape,
    )
    return iou, giou, cache


def _sum_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``x`` over the axes it was broadcast along to reach its shape from ``shape``."""
    lead = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def overlap_backward(
    diou: np.ndarray | None, dgiou: np.ndarray | None, cache: OverlapCache
) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients of ``a`` and ``b`` from those of ``iou`` and/or ``giou`` (``None`` = zero).

    Forward (see the module docstring): :math:`I = iw\,ih`, :math:`U = A_a + A_b - I`,
    :math:`E = cw\,ch`, :math:`\mathrm{IoU} = I/U`, :math:`\mathrm{GIoU} = \mathrm{IoU} - 1 + U/E`.
    Backward, top-down:

    .. math::
        d\mathrm{IoU} \mathrel{+}= d\mathrm{GIoU}, \quad
        dU = -d\mathrm{IoU}\,I/U^2 + d\mathrm{GIoU}/E, \quad dE = -d\mathrm{GIoU}\,U/E^2,

        dI = d\mathrm{IoU}/U - dU, \quad dA_a = dA_b = dU, \quad
        d\,iw = dI\,ih\,[iw_{raw} > 0], \quad d\,cw = dE\,ch, \ \ldots

    and each ``min`` / ``max`` sends its gradient to the corner that won it (``a`` on a tie).
    Where ``U = 0`` (or ``E = 0``) the ratio was defined as 0, so its gradient is 0.
    """
    c = cache
    dtype = c.inter.dtype
    zero = dtype.type(0)
    diou = np.zeros_like(c.inter) if diou is None else diou
    dgiou = np.zeros_like(c.inter) if dgiou is None else dgiou
    # giou = iou - [has_enc] (enc - union) / enc = iou - [has_enc] (1 - union / enc)
    d_iou = gradient_at("iou", diou + dgiou)
    d_union = np.where(c.has_enc, dgiou / c.enc, zero)
    d_enc = gradient_at("enc", np.where(c.has_enc, -dgiou * c.union / (c.enc * c.enc), zero))
    # iou = [has_union] inter / union
    d_inter = np.where(c.has_union, d_iou / c.union, zero)
    d_union = gradient_at("union", d_union + np.where(c.has_union, -d_iou * c.inter / (c.union * c.union), zero))
    # union = area_a + area_b - inter
    d_area_a, d_area_b = d_union, d_union
    d_inter = gradient_at("inter", d_inter - d_union)
    # inter = iw * ih, iw = relu(ix2 - ix1): passes where the boxes overlap (iw > 0)
    d_iw = np.where(c.iw > zero, d_inter * c.ih, zero)
    d_ih = np.where(c.ih > zero, d_inter * c.iw, zero)
    # enc = cw * ch, cw = cx2 - cx1
    d_cw, d_ch = d_enc * c.ch, d_enc * c.cw
    # area_a = wa * ha with wa = ax2 - ax1 (and the same for b)
    d_wa, d_ha, d_wb, d_hb = d_area_a * c.ha, d_area_a * c.wa, d_area_b * c.hb, d_area_b * c.wb

    def split(d: np.ndarray, a_wins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A min / max sends ``d`` to the box that won it."""
        return np.where(a_wins, d, zero), np.where(a_wins, zero, d)

    grads_a = [np.zeros_like(c.inter) for _ in range(4)]  # d(ax1, ay1, ax2, ay2), each (P,)
    grads_b = [np.zeros_like(c.inter) for _ in range(4)]
    for k, (d_width, sign) in enumerate(((d_wa, -1), (d_ha, -1))):  # wa = ax2 - ax1, ha = ay2 - ay1
        grads_a[k] = grads_a[k] + sign * d_width
        grads_a[k + 2] = grads_a[k + 2] - sign * d_width
    for k, (d_width, sign) in enumerate(((d_wb, -1), (d_hb, -1))):
        grads_b[k] = grads_b[k] + sign * d_width
        grads_b[k + 2] = grads_b[k + 2] - sign * d_width
    # (corner index, gradient arriving at that corner's min/max, who won it)
    routed = (
        (0, -d_iw, c.a_wins_ix1),  # iw = min(x2) - max(x1)
        (2, d_iw, c.a_wins_ix2),
        (1, -d_ih, c.a_wins_iy1),
        (3, d_ih, c.a_wins_iy2),
        (0, -d_cw, c.a_wins_cx1),  # cw = max(x2) - min(x1)
        (2, d_cw, c.a_wins_cx2),
        (1, -d_ch, c.a_wins_cy1),
        (3, d_ch, c.a_wins_cy2),
    )
    for k, d, a_wins in routed:
        to_a, to_b = split(d, a_wins)
        grads_a[k] = grads_a[k] + to_a
        grads_b[k] = grads_b[k] + to_b
    da = np.stack(grads_a, axis=-1)  # (P, 4)
    db = np.stack(grads_b, axis=-1)
    return _sum_to(da, c.a_shape).astype(dtype, copy=False), _sum_to(db, c.b_shape).astype(dtype, copy=False)


# ---------------------------------------------------------------------------- pairwise IoU and GIoU


@dataclass(frozen=True)
class PairwiseBoxCache:
    overlap: OverlapCache  # every field (N, M): boxes1[:, None] against boxes2[None]
    dtype: np.dtype


def _check_pair(boxes1: object, boxes2: object) -> None:
    check_boxes("boxes1", boxes1, "xyxy", ndim=2)
    check_boxes("boxes2", boxes2, "xyxy", ndim=2)
    check_same_dtype(boxes1=boxes1, boxes2=boxes2)


def box_iou_forward(boxes1: np.ndarray, boxes2: np.ndarray) -> tuple[np.ndarray, PairwiseBoxCache]:
    """Pairwise IoU ``(N, 4), (M, 4) -> (N, M)`` of corner boxes (``torchvision.ops.box_iou``).

    A pair whose union is 0 (two boxes of area 0) has IoU 0 by definition (see the module docstring).
    """
    _check_pair(boxes1, boxes2)
    iou, _, cache = overlap_forward(boxes1[:, None, :], boxes2[None, :, :])  # (N, M)
    return iou, PairwiseBoxCache(cache, boxes1.dtype)


def box_iou_backward(dout: np.ndarray, cache: PairwiseBoxCache) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(dboxes1 (N, 4), dboxes2 (M, 4))`` of the pairwise IoU; see :func:`overlap_backward`."""
    check_dout(dout, cache.overlap.inter.shape, cache.dtype)
    da, db = overlap_backward(dout, None, cache.overlap)  # (N, 1, 4), (1, M, 4)
    return da[:, 0], db[0]


def generalized_box_iou_forward(boxes1: np.ndarray, boxes2: np.ndarray) -> tuple[np.ndarray, PairwiseBoxCache]:
    """Pairwise GIoU ``(N, 4), (M, 4) -> (N, M)`` of corner boxes (DETR's ``generalized_box_iou``).

    ``GIoU = IoU - (|C| - |A u B|) / |C|``, ``C`` the smallest box enclosing both; in ``[-1, 1]``.
    """
    _check_pair(boxes1, boxes2)
    _, giou, cache = overlap_forward(boxes1[:, None, :], boxes2[None, :, :])  # (N, M)
    return giou, PairwiseBoxCache(cache, boxes1.dtype)


def generalized_box_iou_backward(dout: np.ndarray, cache: PairwiseBoxCache) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(dboxes1 (N, 4), dboxes2 (M, 4))`` of the pairwise GIoU; see :func:`overlap_backward`."""
    check_dout(dout, cache.overlap.inter.shape, cache.dtype)
    da, db = overlap_backward(None, dout, cache.overlap)
    return da[:, 0], db[0]


# ---------------------------------------------------------------------------- the losses of matched pairs


def _check_matched(pred: object, target: object, fmt: str) -> None:
    check_boxes("pred_boxes", pred, fmt, ndim=2)
    check_boxes("target_boxes", target, fmt, ndim=2)
    check_same_dtype(pred_boxes=pred, target_boxes=target)
    if pred.shape != target.shape:
        raise ValueError(
            f"target_boxes: expected shape {pred.shape} (one target per predicted box, matched), got {target.shape}"
        )


@dataclass(frozen=True)
class GIoULossCache:
    overlap: OverlapCache  # every field (N,): pair i is pred_boxes[i] with target_boxes[i]
    num_boxes: float
    dtype: np.dtype


def giou_loss_forward(
    pred_boxes: np.ndarray, target_boxes: np.ndarray, num_boxes: float
) -> tuple[np.ndarray, GIoULossCache]:
    r"""``sum_i (1 - GIoU(pred_i, target_i)) / num_boxes`` over matched corner boxes (N, 4) -> a 0-d array.

    DETR's ``loss_giou``: row ``i`` of the predictions is matched to row ``i`` of the targets (the
    matcher has already permuted them), and the sum is divided by the number of target boxes in
    the batch (``num_boxes``, at least 1), not by ``N``.
    """
    _check_matched(pred_boxes, target_boxes, "xyxy")
    num_boxes = check_positive_number("num_boxes", num_boxes)
    dtype = pred_boxes.dtype
    _, giou, cache = overlap_forward(pred_boxes, target_boxes)  # (N,)
    loss = np.asarray((dtype.type(1) - giou).sum() / dtype.type(num_boxes), dtype=dtype)
    return loss, GIoULossCache(cache, num_boxes, dtype)


def giou_loss_backward(dout: np.ndarray | float, cache: GIoULossCache) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients ``(dpred_boxes, dtarget_boxes)`` (N, 4) of the GIoU loss.

    .. math:: \ell = \tfrac{1}{n}\textstyle\sum_i (1 - g_i) \Rightarrow dg_i = -d\ell / n,

    then :func:`overlap_backward` of ``g``.
    """
    dout = np.asarray(dout, dtype=cache.dtype)
    if dout.shape != ():
        raise ValueError(f"dout: expected a scalar (the loss is a scalar), got shape {dout.shape}")
    dg = np.full(cache.overlap.inter.shape, -dout / cache.dtype.type(cache.num_boxes), dtype=cache.dtype)  # (N,)
    return overlap_backward(None, dg, cache.overlap)


@dataclass(frozen=True)
class L1BoxLossCache:
    sign: np.ndarray  # (N, 4) sign(pred - target), 0 where equal (torch's l1_loss gradient there)
    num_boxes: float


def l1_box_loss_forward(
    pred_boxes: np.ndarray, target_boxes: np.ndarray, num_boxes: float
) -> tuple[np.ndarray, L1BoxLossCache]:
    """``sum |pred - target| / num_boxes`` over matched boxes (N, 4) -> a 0-d array (DETR's ``loss_bbox``).

    The boxes are in ``cxcywh`` (DETR's L1 is on centres and sizes), every coordinate counted.
    """
    _check_matched(pred_boxes, target_boxes, "cxcywh")
    num_boxes = check_positive_number("num_boxes", num_boxes)
    dtype = pred_boxes.dtype
    diff = pred_boxes - target_boxes  # (N, 4)
    loss = np.asarray(np.abs(diff).sum() / dtype.type(num_boxes), dtype=dtype)
    return loss, L1BoxLossCache(np.sign(diff), num_boxes)


def l1_box_loss_backward(dout: np.ndarray | float, cache: L1BoxLossCache) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients ``(dpred_boxes, dtarget_boxes)`` (N, 4).

    .. math:: \ell = \tfrac1n \textstyle\sum |p - t| \Rightarrow dp = d\ell\,\mathrm{sign}(p - t)/n = -dt,

    with ``sign(0) = 0`` (a subgradient, the one torch's ``l1_loss`` picks).
    """
    dtype = cache.sign.dtype
    dout = np.asarray(dout, dtype=dtype)
    if dout.shape != ():
        raise ValueError(f"dout: expected a scalar (the loss is a scalar), got shape {dout.shape}")
    dpred = cache.sign * (dout / dtype.type(cache.num_boxes))  # (N, 4)
    return dpred, -dpred
