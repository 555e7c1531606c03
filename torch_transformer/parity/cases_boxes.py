"""Parity cases for the box ops: format conversions, pairwise IoU / GIoU, and the matched-pair losses.

Sizes: T boxes in the first set (N), S in the second (M); the losses pair T boxes with T targets
and divide by ``num_boxes = T + 1`` (DETR divides by the batch's target count, not by the pairs
a layer matched). The variant is the layout of the boxes: ``overlapping`` (centres near each
other, most pairs overlap) or ``apart`` (the two sets on opposite halves of the image: IoU and
its gradient are 0, GIoU still pulls). Coordinates are continuous draws, so no two corners tie
and no intersection is exactly 0 wide: finite differences see a smooth function.

The PyTorch built-ins of these ops live in torchvision (``torchvision.ops.box_convert``,
``box_iou``, ``generalized_box_iou``, ``generalized_box_iou_loss``); where torchvision is
installed they are the built-in of each case, otherwise ``test_builtins.WITHOUT_BUILTIN`` says so.
``l1_box_loss`` is ``F.l1_loss(reduction="sum") / num_boxes``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as TorchF

import numpy_transformer.functional as F

from ..boxes import box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou, giou_loss, l1_box_loss
from .registry import Builtin, Case, leaf_gradients, register

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@dataclass(frozen=True)
class BoxLayout:
    layout: str  # "overlapping" or "apart"


_LAYOUTS = (BoxLayout("overlapping"), BoxLayout("apart"))


def draw_cxcywh(rng: np.random.Generator, n: int, dtype: np.dtype, x_range: tuple[float, float]) -> np.ndarray:
    """``n`` centre boxes: centres uniform in ``x_range`` (x) and [0.3, 0.7] (y), sizes in [0.05, 0.4]."""
    cx = rng.uniform(*x_range, n)
    cy = rng.uniform(0.3, 0.7, n)
    wh = rng.uniform(0.05, 0.4, (n, 2))
    return np.stack([cx, cy, wh[:, 0], wh[:, 1]], axis=1).astype(dtype)  # (n, 4)


def draw_xyxy(rng, n, dtype, x_range):
    c = draw_cxcywh(rng, n, dtype, x_range).astype(np.float64)
    return np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], axis=1).astype(dtype)


def _ranges(v: BoxLayout) -> tuple[tuple[float, float], tuple[float, float]]:
    if v.layout == "apart":  # widths <= 0.4: the first set ends before 0.3, the second starts after 0.7
        return (0.0, 0.1), (0.9, 1.0)
    return (0.35, 0.65), (0.35, 0.65)


def _tv(name: str):
    """A torchvision op (imported only when installed)."""
    import torchvision.ops as ops

    return getattr(ops, name)


# ---------------------------------------------------------------------------- conversions


def _draw_convert(fmt):
    def draw(rng, dtype, d):
        r, _ = _ranges(d["variant"])
        n = d["B"] * d["T"]
        boxes = draw_cxcywh(rng, n, dtype, r) if fmt == "cxcywh" else draw_xyxy(rng, n, dtype, r)
        return {"boxes": boxes.reshape(d["B"], d["T"], 4)}  # (B, T, 4): leading axes broadcast through

    return draw


def _np_unary(forward, backward):
    def run(a, d):
        y, cache = forward(a["boxes"])
        return y, lambda dout: {"boxes": backward(dout, cache)}

    return run


def _convert_builtin(in_fmt, out_fmt):
    if not HAS_TORCHVISION:
        return None
    return Builtin(
        name=f"torchvision.ops.box_convert({in_fmt}->{out_fmt})",
        run=lambda t, d: (_tv("box_convert")(t["boxes"], in_fmt, out_fmt), leaf_gradients(t)),
    )


for _name, _fmt, _out, _fwd, _bwd, _twin in (
    ("box_cxcywh_to_xyxy", "cxcywh", "xyxy", F.box_cxcywh_to_xyxy_forward, F.box_cxcywh_to_xyxy_backward,
     box_cxcywh_to_xyxy),
    ("box_xyxy_to_cxcywh", "xyxy", "cxcywh", F.box_xyxy_to_cxcywh_forward, F.box_xyxy_to_cxcywh_backward,
     box_xyxy_to_cxcywh),
):  # fmt: skip
    register(
        Case(
            name=_name,
            kind="op",
            draw=_draw_convert(_fmt),
            differentiable=lambda d: ("boxes",),
            numpy=_np_unary(_fwd, _bwd),
            torch=(lambda twin: lambda t, d: (twin(t["boxes"]), t))(_twin),
            variants=_LAYOUTS,
            uses=("B", "T"),
            builtin=_convert_builtin(_fmt, _out),
        )
    )


# ---------------------------------------------------------------------------- pairwise IoU and GIoU


def _draw_pair(rng, dtype, d):
    r1, r2 = _ranges(d["variant"])
    return {"boxes1": draw_xyxy(rng, d["T"], dtype, r1), "boxes2": draw_xyxy(rng, d["S"], dtype, r2)}


def _np_pair(forward, backward):
    def run(a, d):
        y, cache = forward(a["boxes1"], a["boxes2"])

        def grads(dout):
            d1, d2 = backward(dout, cache)
            return {"boxes1": d1, "boxes2": d2}

        return y, grads

    return run


def _pair_builtin(name):
    if not HAS_TORCHVISION:
        return None
    return Builtin(
        name=f"torchvision.ops.{name}",
        run=lambda t, d: (_tv(name)(t["boxes1"], t["boxes2"]), leaf_gradients(t)),
    )


for _name, _fwd, _bwd, _twin in (
    ("box_iou", F.box_iou_forward, F.box_iou_backward, box_iou),
    ("generalized_box_iou", F.generalized_box_iou_forward, F.generalized_box_iou_backward, generalized_box_iou),
):
    register(
        Case(
            name=_name,
            kind="op",
            draw=_draw_pair,
            differentiable=lambda d: ("boxes1", "boxes2"),
            numpy=_np_pair(_fwd, _bwd),
            torch=(lambda twin: lambda t, d: (twin(t["boxes1"], t["boxes2"]), t))(_twin),
            variants=_LAYOUTS,
            uses=("T", "S"),
            builtin=_pair_builtin(_name),
        )
    )


# ---------------------------------------------------------------------------- matched-pair losses


def _draw_matched(fmt):
    def draw(rng, dtype, d):
        r1, r2 = _ranges(d["variant"])
        drawer = draw_cxcywh if fmt == "cxcywh" else draw_xyxy
        return {"pred_boxes": drawer(rng, d["T"], dtype, r1), "target_boxes": drawer(rng, d["T"], dtype, r2)}

    return draw


def _num_boxes(d) -> float:
    return float(d["T"] + 1)


def _np_loss(forward, backward):
    def run(a, d):
        y, cache = forward(a["pred_boxes"], a["target_boxes"], _num_boxes(d))

        def grads(dout):
            dp, dt = backward(dout, cache)
            return {"pred_boxes": dp, "target_boxes": dt}

        return y, grads

    return run


def _giou_loss_builtin():
    if not HAS_TORCHVISION:
        return None

    def run(t, d):
        loss = _tv("generalized_box_iou_loss")(t["pred_boxes"], t["target_boxes"], reduction="sum")
        return loss / _num_boxes(d), leaf_gradients(t)

    return Builtin(name="torchvision.ops.generalized_box_iou_loss", run=run)


register(
    Case(
        name="giou_loss",
        kind="op",
        draw=_draw_matched("xyxy"),
        differentiable=lambda d: ("pred_boxes", "target_boxes"),
        numpy=_np_loss(F.giou_loss_forward, F.giou_loss_backward),
        torch=lambda t, d: (giou_loss(t["pred_boxes"], t["target_boxes"], _num_boxes(d)), t),
        variants=_LAYOUTS,
        uses=("T",),
        builtin=_giou_loss_builtin(),
    )
)

register(
    Case(
        name="l1_box_loss",
        kind="op",
        draw=_draw_matched("cxcywh"),
        differentiable=lambda d: ("pred_boxes", "target_boxes"),
        numpy=_np_loss(F.l1_box_loss_forward, F.l1_box_loss_backward),
        torch=lambda t, d: (l1_box_loss(t["pred_boxes"], t["target_boxes"], _num_boxes(d)), t),
        variants=_LAYOUTS,
        uses=("T",),
        builtin=Builtin(
            name="F.l1_loss(reduction='sum') / num_boxes",
            run=lambda t, d: (
                TorchF.l1_loss(t["pred_boxes"], t["target_boxes"], reduction="sum") / _num_boxes(d),
                leaf_gradients(t),
            ),
        ),
    )
)
