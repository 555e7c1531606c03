r"""DETR's set loss: the Hungarian matching, the class-weighted cross-entropy and the box losses.

Shape legend: ``L`` decoder layers whose outputs are supervised (the last one, and with auxiliary
losses every earlier one too), ``B`` images, ``Q`` object queries (predictions per image),
``V = num_labels + 1`` classes (the last is "no object"), ``n_b`` the objects of image ``b``,
``n = sum_b n_b``.

Carion et al., "End-to-End Object Detection with Transformers" (2020). A DETR predicts a fixed
set of ``Q`` boxes per image; the ground truth is a set of ``n_b <= Q`` boxes. The loss:

1. **Match** (no gradient). For every image, the cost of giving target ``j`` to query ``i`` is

   .. math:: C_{ij} = 5\,\lVert \hat b_i - b_j \rVert_1 - 1\,\hat p_i(c_j) - 2\,\mathrm{GIoU}(\hat b_i, b_j)

   (L1 on ``cxcywh``, GIoU on the corners, and the class *probability*, not its log). The
   one-to-one assignment of least total cost, ``sigma``, is found by the Hungarian algorithm
   (``scipy.optimize.linear_sum_assignment``). With more queries than objects, ``Q - n_b``
   queries stay unmatched; an image without objects matches none.
2. **Classify** every query: a matched query's target is its object's class, an unmatched one's
   is "no object" (class ``V - 1``). The cross-entropy is weighted by class, ``w_{V-1} =
   eos_coef = 0.1`` and 1 otherwise, and -- as ``torch.nn.functional.cross_entropy(weight=...)``
   does -- the weighted *mean* divides by the sum of the targets' weights, not by ``B Q``:

   .. math:: \ell_{ce} = \frac{\sum_{b,i} w_{y_{bi}}\, (-\log p_{bi}(y_{bi}))}{\sum_{b,i} w_{y_{bi}}}.

3. **Regress** the matched boxes only: :math:`\ell_{L1} = \sum_{\text{matched}} \lVert \hat b - b
   \rVert_1 / \max(n, 1)` and :math:`\ell_{GIoU} = \sum_{\text{matched}} (1 - \mathrm{GIoU}) / \max(n, 1)`.

The total is :math:`\sum_{l} (\ell_{ce} + 5\,\ell_{L1} + 2\,\ell_{GIoU})` over the supervised
decoder layers, each layer matched on its own.

Why no gradient flows through the matching, and why every query still learns: ``sigma`` is a
piecewise-constant function of the predictions (a small change of a box does not change which
assignment is cheapest), so its derivative is 0 almost everywhere. Given ``sigma``, the loss is a
smooth function of *every* query's logits: the matched ones are pushed towards their object's
class and box, the unmatched ones towards "no object". That is the whole backward here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .boxes import (
    BoxConvertCache,
    GIoULossCache,
    L1BoxLossCache,
    box_cxcywh_to_xyxy_backward,
    box_cxcywh_to_xyxy_forward,
    check_boxes,
    generalized_box_iou_forward,
    giou_loss_backward,
    giou_loss_forward,
    l1_box_loss_backward,
    l1_box_loss_forward,
)
from .checks import check_float_array, check_int_array, check_real, check_same_dtype
from .intermediates import prefix
from .softmax import log_softmax_forward, softmax_forward

# ---------------------------------------------------------------------------- weighted cross-entropy


@dataclass(frozen=True)
class WeightedCrossEntropyCache:
    probs: np.ndarray  # (N, V) softmax of the logits
    targets: np.ndarray  # (N,) int64
    row_weight: np.ndarray  # (N,) w[targets]
    total_weight: float  # sum of row_weight: the mean's denominator


def weighted_cross_entropy_forward(
    logits: np.ndarray, targets: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, WeightedCrossEntropyCache]:
    r"""``F.cross_entropy(logits, targets, weight=weight)``: the weighted mean over rows (N, V) -> 0-d.

    .. math:: \ell = \frac{\sum_n w_{y_n}\,(-\log p_n(y_n))}{\sum_n w_{y_n}}

    The denominator is the sum of the *targets'* weights (for DETR: the matched queries count 1
    each and the no-object ones 0.1 each), not the number of rows. A sum of weights of 0 gives
    ``0 / 0 = NaN``, as in torch.
    """
    check_float_array("logits", logits)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits: expected shape (N, V) with V >= 1, got {logits.shape}")
    check_int_array("targets", targets)
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets: expected shape ({logits.shape[0]},) (one class per row), got {targets.shape}")
    check_float_array("weight", weight)
    V = logits.shape[1]
    if weight.shape != (V,):
        raise ValueError(f"weight: expected shape ({V},) (one weight per class), got {weight.shape}")
    check_same_dtype(logits=logits, weight=weight)
    if targets.size and (targets.min() < 0 or targets.max() >= V):
        raise ValueError(f"targets: expected class indices in [0, {V}), got range [{targets.min()}, {targets.max()}]")
    t = targets.astype(np.int64)
    logp, _ = log_softmax_forward(logits, axis=-1)  # (N, V)
    nll = -np.take_along_axis(logp, t[:, None], axis=1)[:, 0]  # (N,)
    row_weight = weight[t]  # (N,)
    total = row_weight.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.asarray((row_weight * nll).sum() / total, dtype=logits.dtype)
    return loss, WeightedCrossEntropyCache(np.exp(logp), t, row_weight, float(total))


def weighted_cross_entropy_backward(dout: np.ndarray | float, cache: WeightedCrossEntropyCache) -> np.ndarray:
    r"""Gradient of the logits (N, V).

    .. math:: dz_n = d\ell\; w_{y_n}\,(p_n - \mathrm{onehot}(y_n)) / \textstyle\sum_m w_{y_m}

    (the weights are constants: no gradient for them). Zero when the weights sum to 0.
    """
    dtype = cache.probs.dtype
    dout = np.asarray(dout, dtype=dtype)
    if dout.shape != ():
        raise ValueError(f"dout: expected a scalar (the loss is a scalar), got shape {dout.shape}")
    if cache.total_weight == 0:
        return np.zeros_like(cache.probs)
    N = cache.probs.shape[0]
    dz = cache.probs.copy()  # (N, V)
    dz[np.arange(N), cache.targets] -= 1
    return dz * (cache.row_weight * (dout / dtype.type(cache.total_weight)))[:, None]


# ---------------------------------------------------------------------------- targets and matching


@dataclass(frozen=True)
class MatchCosts:
    """The weights of the matching cost (DETR's defaults) and of the loss terms."""

    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0


def check_targets(
    target_labels: object, target_boxes: object, batch: int, num_labels: int, dtype: np.dtype
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One ``(n_b,)`` int label array and one ``(n_b, 4)`` ``cxcywh`` box array per image (``n_b`` may be 0)."""
    for name, value in (("target_labels", target_labels), ("target_boxes", target_boxes)):
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != batch:
            got = f"{type(value).__name__} of length {len(value)}" if hasattr(value, "__len__") else repr(value)
            raise ValueError(f"{name}: expected a list of {batch} arrays (one per image), got {got}")
    labels, boxes = [], []
    for b, (lab, box) in enumerate(zip(target_labels, target_boxes, strict=True)):
        check_int_array(f"target_labels[{b}]", lab)
        if lab.ndim != 1:
            raise ValueError(f"target_labels[{b}]: expected shape (n,) (one class per object), got {lab.shape}")
        if lab.size and (lab.min() < 0 or lab.max() >= num_labels):
            raise ValueError(
                f"target_labels[{b}]: expected classes in [0, {num_labels}) (num_labels; {num_labels} is "
                f"'no object' and is never a target), got range [{lab.min()}, {lab.max()}]"
            )
        check_boxes(f"target_boxes[{b}]", box, "cxcywh")
        if box.shape != (lab.shape[0], 4):
            raise ValueError(f"target_boxes[{b}]: expected shape ({lab.shape[0]}, 4) (cxcywh), got {box.shape}")
        if box.dtype != dtype:
            raise TypeError(f"target_boxes[{b}]: expected dtype {dtype} (that of the predictions), got {box.dtype}")
        labels.append(lab.astype(np.int64))
        boxes.append(box)
    return labels, boxes


def matching_cost(
    logits: np.ndarray,
    pred_boxes: np.ndarray,
    target_labels: np.ndarray,
    target_boxes: np.ndarray,
    costs: MatchCosts = MatchCosts(),
) -> np.ndarray:
    """The cost matrix (Q, n) of one image: ``bbox_cost L1 - class_cost p(class) + giou_cost (-GIoU)``.

    ``logits`` (Q, V), ``pred_boxes`` (Q, 4) and ``target_boxes`` (n, 4) in ``cxcywh``. NaN and
    ``inf`` entries become the dtype's largest number (as Hugging Face does), so the assignment
    never fails and takes such a pair only when it must.
    """
    probs, _ = softmax_forward(logits, axis=-1)  # (Q, V)
    class_term = -probs[:, target_labels]  # (Q, n)
    l1 = np.abs(pred_boxes[:, None, :] - target_boxes[None, :, :]).sum(axis=-1)  # (Q, n)
    pred_xyxy, _ = box_cxcywh_to_xyxy_forward(pred_boxes)
    target_xyxy, _ = box_cxcywh_to_xyxy_forward(target_boxes)
    giou, _ = generalized_box_iou_forward(pred_xyxy, target_xyxy)  # (Q, n)
    dt = logits.dtype.type
    cost = dt(costs.bbox_cost) * l1 + dt(costs.class_cost) * class_term + dt(costs.giou_cost) * (-giou)
    big = np.finfo(logits.dtype).max
    return np.nan_to_num(cost, nan=big, posinf=big, neginf=big)


def hungarian_match(
    logits: np.ndarray,
    pred_boxes: np.ndarray,
    target_labels: Sequence[np.ndarray],
    target_boxes: Sequence[np.ndarray],
    costs: MatchCosts = MatchCosts(),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each image, ``(query_idx, target_idx)``: the least-cost one-to-one assignment.

    ``logits`` (B, Q, V), ``pred_boxes`` (B, Q, 4) ``cxcywh``. Each pair of index arrays has
    ``min(Q, n_b)`` entries, ``query_idx`` increasing (scipy's order, Hugging Face's too). No
    gradient: the matching is a discrete choice.
    """
    from scipy.optimize import linear_sum_assignment  # scipy: a dependency of the reference

    out = []
    for b in range(logits.shape[0]):
        if len(target_labels[b]) == 0:
            empty = np.zeros(0, dtype=np.int64)
            out.append((empty, empty.copy()))
            continue
        cost = matching_cost(logits[b], pred_boxes[b], target_labels[b], target_boxes[b], costs)  # (Q, n_b)
        rows, cols = linear_sum_assignment(cost)
        out.append((rows.astype(np.int64), cols.astype(np.int64)))
    return out


# ---------------------------------------------------------------------------- the set criterion


@dataclass(frozen=True)
class DetrLayerLossCache:
    """One supervised decoder layer."""

    indices: tuple[tuple[np.ndarray, np.ndarray], ...]  # per image (query_idx, target_idx)
    batch_idx: np.ndarray  # (m,) the image of each matched pair, m = sum_b min(Q, n_b)
    query_idx: np.ndarray  # (m,) its query
    ce: WeightedCrossEntropyCache  # over the B Q rows
    l1: L1BoxLossCache  # over the m matched pairs, cxcywh
    to_xyxy: BoxConvertCache  # (m, 4) the matched predictions into corners
    giou: GIoULossCache  # over the m matched pairs, xyxy


@dataclass(frozen=True)
class DetrLossCache:
    layers: tuple[DetrLayerLossCache, ...]  # L, the last decoder layer last
    terms: dict[str, float]  # "loss_ce", "loss_bbox", "loss_giou", "cardinality_error", and "_i" for aux layer i
    num_boxes: float  # max(n, 1)
    logits_shape: tuple[int, int, int, int]  # (L, B, Q, V)
    dtype: np.dtype
    ce_weight: float
    bbox_weight: float
    giou_weight: float


def term_suffix(layer: int, n_layers: int) -> str:
    """Hugging Face's names: the last layer's terms have no suffix, auxiliary layer ``i``'s end in ``_i``."""
    return "" if layer == n_layers - 1 else f"_{layer}"


def detr_loss_forward(
    logits: np.ndarray,
    pred_boxes: np.ndarray,
    target_labels: Sequence[np.ndarray],
    target_boxes: Sequence[np.ndarray],
    *,
    eos_coef: float = 0.1,
    costs: MatchCosts = MatchCosts(),
    bbox_loss_coefficient: float = 5.0,
    giou_loss_coefficient: float = 2.0,
) -> tuple[np.ndarray, DetrLossCache]:
    r"""DETR's total loss over ``L`` supervised decoder layers (the last one last) -> a 0-d array.

    ``logits`` (L, B, Q, V) and ``pred_boxes`` (L, B, Q, 4) in ``cxcywh``; ``target_labels[b]``
    (n_b,) in ``[0, V - 1)`` and ``target_boxes[b]`` (n_b, 4) in ``cxcywh``. Every layer is matched
    on its own; ``num_boxes = max(n, 1)`` is shared. The total is
    :math:`\sum_l \ell_{ce}^l + 5\,\ell_{L1}^l + 2\,\ell_{GIoU}^l`; the cache's ``terms`` holds each
    term by Hugging Face's name (``loss_ce``, ``loss_bbox``, ``loss_giou``, ``cardinality_error``
    for the last layer, the same with ``_i`` for auxiliary layer ``i``).
    """
    check_float_array("logits", logits)
    if logits.ndim != 4 or logits.shape[-1] < 2 or min(logits.shape) < 1:
        raise ValueError(f"logits: expected shape (L, B, Q, V) with V = num_labels + 1 >= 2, got {logits.shape}")
    L, B, Q, V = logits.shape
    check_boxes("pred_boxes", pred_boxes, "cxcywh")
    if pred_boxes.shape != (L, B, Q, 4):
        raise ValueError(f"pred_boxes: expected shape {(L, B, Q, 4)} (those of the logits), got {pred_boxes.shape}")
    dtype = check_same_dtype(logits=logits, pred_boxes=pred_boxes)
    labels, boxes = check_targets(target_labels, target_boxes, B, V - 1, dtype)
    eos_coef = check_real("eos_coef", eos_coef, low=0)
    n = sum(len(lab) for lab in labels)
    num_boxes = float(max(n, 1))
    weight = np.ones(V, dtype=dtype)
    weight[-1] = eos_coef
    wb, wg = dtype.type(bbox_loss_coefficient), dtype.type(giou_loss_coefficient)
    total = dtype.type(0)
    terms: dict[str, float] = {}
    layer_caches = []
    for layer in range(L):
        z, bx = logits[layer], pred_boxes[layer]  # (B, Q, V), (B, Q, 4)
        indices = hungarian_match(z, bx, labels, boxes, costs)
        batch_idx = np.concatenate([np.full(len(q), b, dtype=np.int64) for b, (q, _) in enumerate(indices)])
        query_idx = np.concatenate([q for q, _ in indices])
        target_classes = np.full((B, Q), V - 1, dtype=np.int64)  # "no object" unless matched
        target_classes[batch_idx, query_idx] = np.concatenate(
            [lab[t] for lab, (_, t) in zip(labels, indices, strict=True)]
        )
        loss_ce, c_ce = weighted_cross_entropy_forward(z.reshape(B * Q, V), target_classes.reshape(-1), weight)
        matched = bx[batch_idx, query_idx]  # (m, 4)
        matched_t = (
            np.concatenate([box[t] for box, (_, t) in zip(boxes, indices, strict=True)]).reshape(-1, 4).astype(dtype)
        )
        loss_l1, c_l1 = l1_box_loss_forward(matched, matched_t, num_boxes)
        matched_xyxy, c_conv = box_cxcywh_to_xyxy_forward(matched)
        target_xyxy, _ = box_cxcywh_to_xyxy_forward(matched_t)
        loss_giou, c_giou = giou_loss_forward(matched_xyxy, target_xyxy, num_boxes)
        total = total + loss_ce + wb * loss_l1 + wg * loss_giou
        s = term_suffix(layer, L)
        cardinality = (z.argmax(-1) != V - 1).sum(axis=1)  # (B,) predictions that are not "no object"
        terms.update(
            {
                f"loss_ce{s}": float(loss_ce),
                f"loss_bbox{s}": float(loss_l1),
                f"loss_giou{s}": float(loss_giou),
                f"cardinality_error{s}": float(np.abs(cardinality - np.array([len(lab) for lab in labels])).mean()),
            }
        )
        layer_caches.append(
            DetrLayerLossCache(tuple(indices), batch_idx, query_idx, c_ce, c_l1, c_conv, c_giou)
        )  # fmt: skip
    cache = DetrLossCache(
        layers=tuple(layer_caches),
        terms=terms,
        num_boxes=num_boxes,
        logits_shape=(L, B, Q, V),
        dtype=dtype,
        ce_weight=1.0,
        bbox_weight=float(bbox_loss_coefficient),
        giou_weight=float(giou_loss_coefficient),
    )
    return np.asarray(total, dtype=dtype), cache


def detr_loss_backward(dout: np.ndarray | float, cache: DetrLossCache) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients ``(dlogits (L, B, Q, V), dpred_boxes (L, B, Q, 4))`` of the total loss.

    The matching is held fixed (its derivative is 0 almost everywhere). For each layer:

    .. math::
        d z = d\ell \cdot \partial \ell_{ce}/\partial z \ \text{(every query)}, \qquad
        d\hat b_{\sigma} = d\ell \,(5\,\partial\ell_{L1}/\partial \hat b + 2\,\partial\ell_{GIoU}/\partial \hat b)
        \ \text{(matched queries only)},

    the GIoU part through the ``cxcywh -> xyxy`` conversion; unmatched queries get no box gradient.
    """
    dtype = cache.dtype
    dout = np.asarray(dout, dtype=dtype)
    if dout.shape != ():
        raise ValueError(f"dout: expected a scalar (the loss is a scalar), got shape {dout.shape}")
    L, B, Q, V = cache.logits_shape
    dlogits = np.zeros((L, B, Q, V), dtype=dtype)
    dboxes = np.zeros((L, B, Q, 4), dtype=dtype)
    for layer, c in enumerate(cache.layers):
        dlogits[layer] = weighted_cross_entropy_backward(dout, c.ce).reshape(B, Q, V)
        d_l1, _ = l1_box_loss_backward(dout * dtype.type(cache.bbox_weight), c.l1)  # (m, 4)
        with prefix(f"layer{layer}"):  # named apart: the layers are taken in forward order here
            d_xyxy, _ = giou_loss_backward(dout * dtype.type(cache.giou_weight), c.giou)
        d_matched = d_l1 + box_cxcywh_to_xyxy_backward(d_xyxy, c.to_xyxy)  # (m, 4)
        dboxes[layer][c.batch_idx, c.query_idx] = d_matched  # each query matched at most once: no clash
    return dlogits, dboxes
