"""Box ops: formats, IoU, GIoU and the matched-pair losses -- their own math, the degenerate boxes, Hugging Face.

The registry (``cases_boxes.py``) compares every op with the twin and finite differences; here:
the properties of the formulas (a round trip, symmetry, bounds, invariances), the degenerate
boxes the module defines (zero width, identical, disjoint, zero union), DETR's own box ops as
Hugging Face ships them (``transformers.loss.loss_for_object_detection``), and bad input.

Shape legend: N, M numbers of boxes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_transformer.functional as F
from numpy_transformer.functional.boxes import overlap_backward, overlap_forward
from numpy_transformer.testing import numerical_gradient
from torch_transformer import boxes as TB
from torch_transformer.parity.cases_boxes import draw_cxcywh, draw_xyxy

from .helpers import assert_matches, assert_matches_finite_differences
from .strategies import dtypes, seeds

hf = pytest.importorskip("transformers.loss.loss_for_object_detection")


def _boxes(seed: int, n: int, dtype=np.float64, x_range=(0.3, 0.7)) -> np.ndarray:
    return draw_xyxy(np.random.default_rng(seed), n, dtype, x_range)


# --------------------------------------------------------------------------- formats


@given(n=st.integers(1, 6), dtype=dtypes, seed=seeds)
def test_cxcywh_and_xyxy_are_inverse_maps_and_so_are_their_backwards(n, dtype, seed):
    rng = np.random.default_rng(seed)
    c = draw_cxcywh(rng, n, dtype, (0.2, 0.8))
    xyxy, cache = F.box_cxcywh_to_xyxy_forward(c)
    back, cache2 = F.box_xyxy_to_cxcywh_forward(xyxy)
    assert xyxy.dtype == back.dtype == dtype
    assert_matches("cxcywh -> xyxy -> cxcywh", back, c, dtype)
    # The two linear maps are inverse, so are their transposes: backward(backward(g)) = g.
    g = rng.standard_normal((n, 4)).astype(dtype)
    round_trip = F.box_cxcywh_to_xyxy_backward(F.box_xyxy_to_cxcywh_backward(g, cache2), cache)
    assert_matches("backward round trip", round_trip, g, dtype)
    assert np.all(xyxy[:, 2:] >= xyxy[:, :2])


# --------------------------------------------------------------------------- IoU and GIoU


@given(n=st.integers(1, 5), m=st.integers(1, 5), dtype=dtypes, seed=seeds)
def test_iou_is_symmetric_in_0_1_and_one_on_the_diagonal_of_a_box_with_itself(n, m, dtype, seed):
    a, b = _boxes(seed, n, dtype), _boxes(seed + 1, m, dtype)
    iou, _ = F.box_iou_forward(a, b)
    iou_t, _ = F.box_iou_forward(b, a)
    assert iou.shape == (n, m) and iou.dtype == dtype
    assert_matches("IoU(a, b) = IoU(b, a)^T", iou, iou_t.T, dtype)
    assert np.all((iou >= 0) & (iou <= 1 + 1e-6))
    self_iou, _ = F.box_iou_forward(a, a)
    assert_matches("IoU(a, a) diagonal", np.diag(self_iou), np.ones(n), dtype)


@given(n=st.integers(1, 5), m=st.integers(1, 5), seed=seeds, shift=st.floats(-3, 3), scale=st.floats(0.2, 5))
def test_iou_and_giou_do_not_change_when_both_boxes_move_or_scale_together(n, m, seed, shift, scale):
    a, b = _boxes(seed, n), _boxes(seed + 1, m)
    giou, _ = F.generalized_box_iou_forward(a, b)
    moved, _ = F.generalized_box_iou_forward(scale * a + shift, scale * b + shift)
    assert_matches("GIoU under a common translation and scale", moved, giou, np.float64)


@given(n=st.integers(1, 5), m=st.integers(1, 5), dtype=dtypes, seed=seeds)
def test_giou_is_at_most_iou_in_minus_1_1_and_equals_iou_when_one_box_contains_the_other(n, m, dtype, seed):
    a, b = _boxes(seed, n, dtype), _boxes(seed + 1, m, dtype)
    iou, _ = F.box_iou_forward(a, b)
    giou, _ = F.generalized_box_iou_forward(a, b)
    assert np.all(giou <= iou + 1e-6) and np.all(giou >= -1 - 1e-6)
    outer = np.concatenate([a[:, :2] - 0.1, a[:, 2:] + 0.1], axis=1).astype(dtype)  # contains a: C = A u B
    nested_iou, _ = F.box_iou_forward(outer, a)
    nested_giou, _ = F.generalized_box_iou_forward(outer, a)
    assert_matches("GIoU = IoU for nested boxes (diagonal)", np.diag(nested_giou), np.diag(nested_iou), dtype)


def test_disjoint_boxes_have_iou_zero_and_no_iou_gradient_but_giou_pulls_them_together():
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    b = np.array([[2.0, 0.2, 3.0, 1.3]])  # one unit to the right of a (no corner ties: a smooth point)
    iou, c_iou = F.box_iou_forward(a, b)
    da, db = F.box_iou_backward(np.ones((1, 1)), c_iou)
    assert iou[0, 0] == 0 and not da.any() and not db.any()
    giou, c = F.generalized_box_iou_forward(a, b)
    assert giou[0, 0] == pytest.approx(-1.8 / 3.9)  # IoU 0, union 2.1, enclosing 3 x 1.3: 0 - (3.9 - 2.1) / 3.9
    da, db = F.generalized_box_iou_backward(np.ones((1, 1)), c)
    # d GIoU / d a_x2 > 0: moving a's right edge towards b raises GIoU (shrinks the gap).
    assert da[0, 2] > 0 and db[0, 0] < 0
    numeric = numerical_gradient(lambda _: F.generalized_box_iou_forward(a, b)[0], a, np.ones((1, 1)))
    assert_matches_finite_differences("dGIoU/da, disjoint", da, numeric)


def test_a_zero_width_box_has_iou_zero_and_a_defined_giou_gradient():
    a = np.array([[0.5, 0.2, 0.5, 0.8]])  # a vertical segment: width 0
    b = np.array([[0.3, 0.3, 0.7, 0.7]])
    iou, _ = F.box_iou_forward(a, b)
    giou, c = F.generalized_box_iou_forward(a, b)
    assert iou[0, 0] == 0  # inter = 0 (zero width), union = area_b > 0
    assert giou[0, 0] == pytest.approx(0.16 / 0.24 - 1)  # union / enclosing - 1
    da, db = F.generalized_box_iou_backward(np.ones((1, 1)), c)
    assert np.all(np.isfinite(da)) and np.all(np.isfinite(db))
    t1, t2 = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    hf.generalized_box_iou(t1, t2).sum().backward()
    assert_matches("GIoU with a zero-width box vs transformers", giou, hf.generalized_box_iou(t1, t2), np.float64)
    assert_matches("dGIoU/db with a zero-width box vs transformers", db, t2.grad, np.float64)


def test_identical_boxes_have_giou_one_loss_zero_and_send_min_max_ties_to_the_first_box():
    a = _boxes(3, 4)
    giou, _ = F.generalized_box_iou_forward(a, a.copy())
    assert_matches("GIoU(a, a)", np.diag(giou), np.ones(4), np.float64)
    loss, c_loss = F.giou_loss_forward(a, a.copy(), 4.0)
    assert loss == pytest.approx(0.0, abs=1e-15)
    dpred, dtarget = F.giou_loss_backward(1.0, c_loss)
    tp, tt = torch.tensor(a, requires_grad=True), torch.tensor(a.copy(), requires_grad=True)
    TB.giou_loss(tp, tt, 4.0).backward()  # the twin's torch.where(a >= b, a, b): the same tie rule
    assert_matches("dpred at identical boxes", dpred, tp.grad, np.float64)
    assert_matches("dtarget at identical boxes", dtarget, tt.grad, np.float64)
    assert np.all(np.isfinite(dpred))


def test_two_boxes_of_zero_area_have_iou_and_penalty_zero_by_definition_where_transformers_gives_nan():
    a = np.array([[0.5, 0.5, 0.5, 0.5]])  # a point
    iou, c_iou = F.box_iou_forward(a, a.copy())
    giou, c = F.generalized_box_iou_forward(a, a.copy())
    assert iou[0, 0] == 0 and giou[0, 0] == 0
    for grads in (F.box_iou_backward(np.ones((1, 1)), c_iou), F.generalized_box_iou_backward(np.ones((1, 1)), c)):
        assert all(np.all(g == 0) for g in grads)
    theirs = hf.generalized_box_iou(torch.tensor(a), torch.tensor(a))
    assert torch.isnan(theirs).all(), "transformers' GIoU of two points: 0/0"


def test_overlap_broadcasts_and_its_backward_sums_over_the_broadcast_axes():
    a, b = _boxes(5, 3), _boxes(6, 4)
    iou, _, cache = overlap_forward(a[:, None], b[None])
    pair_iou, _ = F.box_iou_forward(a, b)
    assert_matches("broadcast IoU", iou, pair_iou, np.float64)
    dg = np.random.default_rng(0).standard_normal((3, 4))
    da, db = overlap_backward(None, dg, cache)
    assert da.shape == (3, 1, 4) and db.shape == (1, 4, 4)
    ref_a, ref_b = F.generalized_box_iou_backward(dg, F.generalized_box_iou_forward(a, b)[1])
    assert_matches("da", da[:, 0], ref_a, np.float64)
    assert_matches("db", db[0], ref_b, np.float64)


# --------------------------------------------------------------------------- against Hugging Face's DETR box ops


@settings(max_examples=8)  # each draw runs transformers' ops under autograd
@given(n=st.integers(1, 5), m=st.integers(1, 5), seed=seeds, apart=st.booleans())
def test_iou_and_giou_and_their_gradients_match_transformers_detr_box_ops(n, m, seed, apart):
    rng = np.random.default_rng(seed)
    a = draw_xyxy(rng, n, np.float64, (0.0, 0.1) if apart else (0.3, 0.7))
    b = draw_xyxy(rng, m, np.float64, (0.9, 1.0) if apart else (0.3, 0.7))
    dout = rng.standard_normal((n, m))
    for name, ours, theirs in (
        ("box_iou", (F.box_iou_forward, F.box_iou_backward), lambda x, y: hf.box_iou(x, y)[0]),
        (
            "generalized_box_iou",
            (F.generalized_box_iou_forward, F.generalized_box_iou_backward),
            hf.generalized_box_iou,
        ),
    ):
        y, cache = ours[0](a, b)
        da, db = ours[1](dout, cache)
        ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        yt = theirs(ta, tb)
        yt.backward(torch.tensor(dout))
        assert_matches(f"{name} vs transformers", y, yt, np.float64)
        assert_matches(f"d boxes1 of {name} vs transformers", da, ta.grad, np.float64)
        assert_matches(f"d boxes2 of {name} vs transformers", db, tb.grad, np.float64)


# --------------------------------------------------------------------------- the matched-pair losses


@given(n=st.integers(1, 6), dtype=dtypes, seed=seeds)
def test_giou_loss_is_the_diagonal_of_one_minus_pairwise_giou_over_num_boxes(n, dtype, seed):
    a, b = _boxes(seed, n, dtype), _boxes(seed + 7, n, dtype)
    loss, _ = F.giou_loss_forward(a, b, float(n + 2))
    giou, _ = F.generalized_box_iou_forward(a, b)
    assert loss.shape == () and loss.dtype == dtype
    assert_matches("GIoU loss", loss, (1 - np.diag(giou)).sum() / (n + 2), dtype)
    assert 0 <= loss * (n + 2) / n <= 2 + 1e-6  # each pair's 1 - GIoU lies in [0, 2]


@given(n=st.integers(1, 6), seed=seeds)
def test_l1_box_loss_divides_by_num_boxes_and_sends_no_gradient_where_pred_equals_target(n, seed):
    rng = np.random.default_rng(seed)
    p, t = draw_cxcywh(rng, n, np.float64, (0.2, 0.8)), draw_cxcywh(rng, n, np.float64, (0.2, 0.8))
    t[0, 1] = p[0, 1]  # one coordinate exactly right: sign(0) = 0, as torch's l1_loss
    loss, cache = F.l1_box_loss_forward(p, t, 3.0)
    assert loss == pytest.approx(np.abs(p - t).sum() / 3.0)
    dp, dt = F.l1_box_loss_backward(2.0, cache)
    assert dp[0, 1] == 0 and np.all(dt == -dp)
    tp = torch.tensor(p, requires_grad=True)
    (2.0 * torch.nn.functional.l1_loss(tp, torch.tensor(t), reduction="sum") / 3.0).backward()
    assert_matches("dL1 vs F.l1_loss", dp, tp.grad, np.float64)


# --------------------------------------------------------------------------- bad input


def test_bad_boxes_are_refused_with_the_argument_named():
    good = _boxes(0, 2)
    flipped = good[:, [2, 1, 0, 3]]  # x1 > x2
    with pytest.raises(ValueError, match=r"boxes2: expected corner boxes .* x1 <= x2"):
        F.box_iou_forward(good, flipped)
    with pytest.raises(ValueError, match=r"boxes1: expected shape \(\.\.\., 4\)"):
        F.generalized_box_iou_forward(good[:, :3], good)
    with pytest.raises(TypeError, match="boxes2: expected dtype float64"):
        F.box_iou_forward(good, good.astype(np.float32))
    with pytest.raises(ValueError, match=r"boxes: expected centre boxes .* w >= 0"):
        F.box_cxcywh_to_xyxy_forward(np.array([[0.5, 0.5, -0.1, 0.2]]))
    with pytest.raises(ValueError, match=r"target_boxes: expected shape \(2, 4\)"):
        F.giou_loss_forward(good, good[:1], 1.0)
    with pytest.raises(ValueError, match="num_boxes: expected a finite number > 0"):
        F.l1_box_loss_forward(good, good, 0)
    with pytest.raises(TypeError, match=r"boxes: expected a numpy\.ndarray"):
        F.box_xyxy_to_cxcywh_forward([[0, 0, 1, 1]])
