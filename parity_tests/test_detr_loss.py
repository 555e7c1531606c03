"""DETR's matching and set loss: the math of each part, Hugging Face's DetrLoss / HungarianMatcher, framework facts.

The registry (``cases_detr.py``) compares the loss and its gradients with DETR's formulas written
in plain torch (the twin) in float64 and float32, and with finite differences. Here:

* the weighted cross-entropy divides by the sum of the targets' weights (torch's rule), not by N;
* the matching: the cost matrix is DETR's formula (the probability, not the log-probability), the
  assignment is the cheapest of all (brute force on a tiny example), images without objects and
  with more queries than objects (or fewer) are handled, and it equals Hugging Face's;
* the loss: every term and the gradients equal Hugging Face's ``ImageLoss`` on the same inputs in
  float32 -- in float64 Hugging Face's loss raises (its class-weight buffer is float32, a fact
  pinned below); permuting the queries permutes the gradients; unmatched queries get a class
  gradient (towards "no object") and no box gradient;
* bad input.

Shape legend: L supervised layers, B images, Q queries, V = num_labels + 1 classes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_transformer.functional as F
from numpy_transformer.functional.detr_loss import MatchCosts
from torch_transformer.detr_loss import as_tensors

from .helpers import assert_matches
from .strategies import seeds

hf = pytest.importorskip("transformers.loss.loss_for_object_detection")


def draw_problem(seed: int, L: int = 2, B: int = 3, Q: int = 5, V: int = 4, counts=None, dtype=np.float64):
    """Random logits and sigmoid boxes (L, B, Q, ·), and per image 0..Q target objects."""
    rng = np.random.default_rng(seed)
    logits = (1.5 * rng.standard_normal((L, B, Q, V))).astype(dtype)
    boxes = (1 / (1 + np.exp(-rng.standard_normal((L, B, Q, 4))))).astype(dtype)
    counts = [int(rng.integers(0, Q + 1)) for _ in range(B)] if counts is None else counts
    labels = [rng.integers(0, V - 1, n) for n in counts]
    targets = [
        np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], axis=1).astype(dtype)
        for n in counts
    ]
    return logits, boxes, labels, targets


def hf_targets(labels, boxes, dtype=torch.float32):
    pairs = zip(labels, boxes, strict=True)
    return [{"class_labels": torch.from_numpy(lab), "boxes": torch.from_numpy(b).to(dtype)} for lab, b in pairs]


def hf_criterion(V: int):
    matcher = hf.HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    return hf.ImageLoss(matcher=matcher, num_classes=V - 1, eos_coef=0.1, losses=["labels", "boxes", "cardinality"])


# --------------------------------------------------------------------------- the weighted cross-entropy


def test_weighted_cross_entropy_divides_by_the_sum_of_the_targets_weights_not_by_n():
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((6, 3)), np.array([0, 2, 2, 2, 1, 2])
    weight = np.array([1.0, 1.0, 0.1])  # class 2 = "no object", eos_coef 0.1
    loss, _ = F.weighted_cross_entropy_forward(logits, targets, weight)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(6), targets]
    w = weight[targets]
    assert loss == pytest.approx((w * nll).sum() / w.sum())  # / 2.4 (1 + 1 + 4 x 0.1) ...
    assert loss != pytest.approx((w * nll).sum() / 6)  # ... not / 6
    theirs = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets), weight=torch.tensor(weight))
    assert_matches("weighted CE vs F.cross_entropy(weight=)", loss, theirs, np.float64)


def test_weighted_cross_entropy_with_equal_weights_is_the_plain_mean():
    rng = np.random.default_rng(1)
    logits, targets = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    plain, _ = F.cross_entropy_forward(logits, targets)
    weighted, _ = F.weighted_cross_entropy_forward(logits, targets, np.full(4, 0.3))
    assert_matches("CE with constant weights", weighted, plain, np.float64)


# --------------------------------------------------------------------------- the matching


def test_the_cost_matrix_is_5_l1_minus_probability_minus_2_giou():
    logits, boxes, labels, targets = draw_problem(2, L=1, B=1, Q=4, counts=[3])
    cost = F.matching_cost(logits[0, 0], boxes[0, 0], labels[0], targets[0])
    p = np.exp(logits[0, 0]) / np.exp(logits[0, 0]).sum(-1, keepdims=True)
    xyxy = lambda b: F.box_cxcywh_to_xyxy_forward(b)[0]  # noqa: E731
    giou, _ = F.generalized_box_iou_forward(xyxy(boxes[0, 0]), xyxy(targets[0]))
    l1 = np.abs(boxes[0, 0][:, None] - targets[0][None]).sum(-1)
    assert_matches("cost", cost, 5 * l1 - p[:, labels[0]] - 2 * giou, np.float64)
    with_log = 5 * l1 - np.log(p[:, labels[0]]) - 2 * giou
    assert np.abs(cost - with_log).max() > 0.1  # the probability, not the log-probability


@given(seed=seeds, Q=st.integers(1, 5), n=st.integers(0, 5))
def test_the_assignment_is_the_cheapest_one_to_one_matching_of_min_q_n_pairs(seed, Q, n):
    logits, boxes, labels, targets = draw_problem(seed, L=1, B=1, Q=Q, counts=[n])
    ((rows, cols),) = F.hungarian_match(logits[0], boxes[0], labels, targets)
    assert len(rows) == len(cols) == min(Q, n)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    if n == 0:
        return
    cost = F.matching_cost(logits[0, 0], boxes[0, 0], labels[0], targets[0])
    k = min(Q, n)
    queries, objects = itertools.permutations(range(Q), k), list(itertools.combinations(range(n), k))
    best = min(cost[list(q), list(t)].sum() for q in queries for t in objects)
    assert cost[rows, cols].sum() == pytest.approx(best)


@settings(max_examples=10)
@given(seed=seeds)
def test_the_matching_equals_transformers_hungarian_matcher(seed):
    logits, boxes, labels, targets = draw_problem(seed, L=1)
    ours = F.hungarian_match(logits[0], boxes[0], labels, targets)
    matcher = hf.HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    outputs = {"logits": torch.from_numpy(logits[0]), "pred_boxes": torch.from_numpy(boxes[0])}
    theirs = matcher(outputs, hf_targets(labels, targets, torch.float64))
    for (q, t), (q_hf, t_hf) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(q, q_hf.numpy())
        np.testing.assert_array_equal(t, t_hf.numpy())


def test_a_nan_prediction_is_matched_only_when_no_other_query_is_left():
    logits, boxes, labels, targets = draw_problem(11, L=1, B=1, Q=3, counts=[2])
    logits[0, 0, 1] = np.nan  # query 1's cost is NaN -> the largest number, as Hugging Face does
    ((rows, _),) = F.hungarian_match(logits[0], boxes[0], labels, targets)
    assert sorted(rows.tolist()) == [0, 2]
    ((rows, _),) = F.hungarian_match(logits[0], boxes[0], [np.arange(3) % 3], [np.tile(targets[0][:1], (3, 1))])
    assert sorted(rows.tolist()) == [0, 1, 2]  # three objects for three queries: the NaN one must take one


# --------------------------------------------------------------------------- the loss against Hugging Face


def test_hugging_face_detr_loss_fails_in_float64_because_its_class_weight_buffer_is_float32():
    """A framework fact (transformers 4.x - 5.x): ``ImageLoss.empty_weight`` is ``torch.ones`` (float32)."""
    logits, boxes, labels, targets = draw_problem(3, L=1)
    criterion = hf_criterion(logits.shape[-1])
    assert criterion.empty_weight.dtype == torch.float32
    outputs = {"logits": torch.from_numpy(logits[0]), "pred_boxes": torch.from_numpy(boxes[0])}
    with pytest.raises(RuntimeError, match="expected scalar type Double but found Float"):
        criterion(outputs, hf_targets(labels, targets, torch.float64))
    ours, _ = F.detr_loss_forward(logits, boxes, labels, targets)  # ours runs in float64
    assert np.isfinite(ours) and ours.dtype == np.float64


@settings(max_examples=8)  # each draw: three layers matched twice, transformers' loss under autograd
@given(seed=seeds)
def test_every_loss_term_and_both_gradients_match_transformers_image_loss_in_float32(seed):
    L, V = 3, 4
    logits, boxes, labels, targets = draw_problem(seed, L=L, V=V, dtype=np.float32)
    loss, cache = F.detr_loss_forward(logits, boxes, labels, targets)
    dlogits, dboxes = F.detr_loss_backward(np.float32(1.0), cache)
    tz, tb = torch.tensor(logits, requires_grad=True), torch.tensor(boxes, requires_grad=True)
    outputs = {
        "logits": tz[-1],
        "pred_boxes": tb[-1],
        "auxiliary_outputs": [{"logits": tz[i], "pred_boxes": tb[i]} for i in range(L - 1)],
    }
    terms = hf_criterion(V)(outputs, hf_targets(labels, targets))
    assert set(terms) == set(cache.terms)
    for name, value in terms.items():
        assert_matches(name, np.float32(cache.terms[name]), value, np.float32)
    weight = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    total = sum(v * weight[k.rstrip("_0123456789")] for k, v in terms.items() if not k.startswith("card"))
    total.backward()
    assert_matches("total loss", loss, total, np.float32)
    assert_matches("dlogits vs transformers", dlogits, tz.grad, np.float32)
    assert_matches("dpred_boxes vs transformers", dboxes, tb.grad, np.float32)


# --------------------------------------------------------------------------- what carries the gradient


def test_permuting_the_queries_permutes_the_loss_gradients_and_leaves_the_loss_unchanged():
    logits, boxes, labels, targets = draw_problem(4, L=2, B=2, Q=5, counts=[2, 3])
    perm = np.random.default_rng(0).permutation(5)
    loss, cache = F.detr_loss_forward(logits, boxes, labels, targets)
    loss_p, cache_p = F.detr_loss_forward(logits[:, :, perm], boxes[:, :, perm], labels, targets)
    assert_matches("loss under a permutation of the queries", loss_p, loss, np.float64)
    dz, db = F.detr_loss_backward(1.0, cache)
    dz_p, db_p = F.detr_loss_backward(1.0, cache_p)
    assert_matches("dlogits permuted", dz_p, dz[:, :, perm], np.float64)
    assert_matches("dboxes permuted", db_p, db[:, :, perm], np.float64)


def test_unmatched_queries_learn_no_object_and_get_no_box_gradient():
    logits, boxes, labels, targets = draw_problem(5, L=1, B=2, Q=6, counts=[2, 0])
    _, cache = F.detr_loss_forward(logits, boxes, labels, targets)
    dz, db = F.detr_loss_backward(1.0, cache)
    matched = np.zeros((2, 6), dtype=bool)
    for b, (q, _) in enumerate(cache.layers[0].indices):
        matched[b, q] = True
    assert matched.sum() == 2  # two objects, the second image has none
    assert not db[0][~matched].any() and np.abs(db[0][matched]).min() > 0
    assert np.all(dz[0][~matched][:, -1] < 0)  # gradient descent raises the "no object" logit
    assert np.abs(dz[0]).min(axis=-1).min() > 0  # every query's logits get a gradient


def test_without_any_object_the_box_losses_are_zero_and_num_boxes_is_one():
    logits, boxes, labels, targets = draw_problem(6, L=2, B=2, Q=3, counts=[0, 0])
    loss, cache = F.detr_loss_forward(logits, boxes, labels, targets)
    assert cache.num_boxes == 1.0
    assert cache.terms["loss_bbox"] == 0 and cache.terms["loss_giou_0"] == 0
    _, db = F.detr_loss_backward(1.0, cache)
    assert not db.any() and np.isfinite(loss)


def test_auxiliary_layers_are_matched_each_on_its_own_and_their_losses_add_up():
    logits, boxes, labels, targets = draw_problem(7, L=3)
    total, cache = F.detr_loss_forward(logits, boxes, labels, targets)
    per_layer = [F.detr_loss_forward(logits[i : i + 1], boxes[i : i + 1], labels, targets)[0] for i in range(3)]
    assert_matches("sum of per-layer losses", total, sum(per_layer), np.float64)
    costs = MatchCosts()
    for i in range(3):
        alone = F.hungarian_match(logits[i], boxes[i], labels, targets, costs)
        for (q, t), (q2, t2) in zip(cache.layers[i].indices, alone, strict=True):
            np.testing.assert_array_equal(q, q2)
            np.testing.assert_array_equal(t, t2)


def test_the_twin_takes_the_same_targets_as_tensors():
    logits, boxes, labels, targets = draw_problem(8, L=1)
    from torch_transformer.detr_loss import detr_loss

    theirs, _ = detr_loss(torch.from_numpy(logits), torch.from_numpy(boxes), as_tensors(labels), as_tensors(targets))
    ours, _ = F.detr_loss_forward(logits, boxes, labels, targets)
    assert_matches("twin loss", ours, theirs, np.float64)


# --------------------------------------------------------------------------- bad input


def test_bad_targets_are_refused_with_the_argument_named():
    logits, boxes, labels, targets = draw_problem(9, L=1, B=2, counts=[1, 2])
    with pytest.raises(ValueError, match="target_labels: expected a list of 2 arrays"):
        F.detr_loss_forward(logits, boxes, labels[:1], targets)
    with pytest.raises(ValueError, match=r"target_labels\[1\]: expected classes in \[0, 3\)"):
        F.detr_loss_forward(logits, boxes, [labels[0], np.array([0, 3])], targets)
    with pytest.raises(ValueError, match=r"target_boxes\[0\]: expected shape \(1, 4\)"):
        F.detr_loss_forward(logits, boxes, labels, [targets[1], targets[1]])
    with pytest.raises(TypeError, match=r"target_boxes\[0\]: expected dtype float64"):
        F.detr_loss_forward(logits, boxes, labels, [targets[0].astype(np.float32), targets[1]])
    with pytest.raises(ValueError, match=r"pred_boxes: expected shape \(1, 2, 5, 4\)"):
        F.detr_loss_forward(logits, boxes[:, :, :4], labels, targets)
    with pytest.raises(ValueError, match=r"logits: expected shape \(L, B, Q, V\)"):
        F.detr_loss_forward(logits[0], boxes, labels, targets)
    with pytest.raises(ValueError, match=r"weight: expected shape \(4,\)"):
        F.weighted_cross_entropy_forward(logits[0, 0], np.zeros(5, dtype=np.int64), np.ones(3))
