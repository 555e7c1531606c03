"""Parity cases for DETR: the class-weighted cross-entropy and the set loss (matching included).

Sizes for ``detr_loss``: B images (at most 2), Q = min(T, 2) + 1 queries, V classes (at most 4;
the last = no object), and per image a number of objects drawn in ``[0, Q]`` -- images without
objects and images with as many objects as queries both occur. Targets ride in the draw as padded
arrays (``target_labels`` (B, Q) with -1 for "no object here", ``target_boxes`` (B, Q, 4)); they
are constants (not differentiated). The variant says how many decoder layers are supervised: 1
(the last only) or 2 (an auxiliary layer too, each matched on its own). The draws are small
because finite differences probe every logit and box, each probe a full matching; a random draw
has no near-tie in the cost, so the matching is held fixed under the probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TorchF

import numpy_transformer.functional as F
from numpy_transformer.config import DetrConfig
from numpy_transformer.models.detr import DETR

from .. import detr as twin_detr
from ..detr_loss import detr_loss, weighted_cross_entropy
from ..frozen_batch_norm import frozen_batch_norm
from .registry import (
    Builtin,
    Case,
    float_dtype,
    leaf_gradients,
    load_weights,
    module_grads,
    normal,
    register,
)

# ---------------------------------------------------------------------------- frozen batch norm
# B is the batch, D the channels, T x S the image; the statistics are drawn (variances > 0) and
# are constants: only x is differentiated.


def _draw_frozen_bn(rng, dtype, d):
    C = d["D"]
    return {
        "x": normal(rng, (d["B"], C, d["T"], d["S"]), dtype),
        "weight": normal(rng, (C,), dtype),
        "bias": normal(rng, (C,), dtype),
        "running_mean": normal(rng, (C,), dtype),
        "running_var": rng.uniform(0.2, 2.0, C).astype(dtype),
    }


_BN_STATS = ("weight", "bias", "running_mean", "running_var")


def _np_frozen_bn(a, d):
    y, cache = F.frozen_batch_norm_forward(a["x"], *(a[k] for k in _BN_STATS))
    return y, lambda dout: {"x": F.frozen_batch_norm_backward(dout, cache)}


register(
    Case(
        name="frozen_batch_norm",
        kind="op",
        draw=_draw_frozen_bn,
        differentiable=lambda d: ("x",),
        numpy=_np_frozen_bn,
        torch=lambda t, d: (frozen_batch_norm(t["x"], *(t[k] for k in _BN_STATS)), t),
        uses=("B", "T", "S", "D"),
        builtin=Builtin(
            name="F.batch_norm(training=False)",
            run=lambda t, d: (
                TorchF.batch_norm(
                    t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], training=False, eps=1e-5
                ),
                leaf_gradients(t),
            ),
        ),
    )
)


# ---------------------------------------------------------------------------- weighted cross-entropy


def _draw_weighted_ce(rng, dtype, d):
    N, V = d["B"] * d["T"], d["V"]
    weight = rng.uniform(0.05, 2.0, V).astype(dtype)
    return {"logits": normal(rng, (N, V), dtype, 2.0), "targets": rng.integers(0, V, N), "weight": weight}


def _np_weighted_ce(a, d):
    loss, cache = F.weighted_cross_entropy_forward(a["logits"], a["targets"], a["weight"])
    return loss, lambda dout: {"logits": F.weighted_cross_entropy_backward(dout, cache)}


register(
    Case(
        name="weighted_cross_entropy",
        kind="op",
        draw=_draw_weighted_ce,
        differentiable=lambda d: ("logits",),
        numpy=_np_weighted_ce,
        torch=lambda t, d: (weighted_cross_entropy(t["logits"], t["targets"], t["weight"]), t),
        uses=("B", "T", "V"),
        builtin=Builtin(
            name="F.cross_entropy(weight=...)",
            run=lambda t, d: (TorchF.cross_entropy(t["logits"], t["targets"], weight=t["weight"]), leaf_gradients(t)),
        ),
    )
)


# ---------------------------------------------------------------------------- the set loss


@dataclass(frozen=True)
class DetrLossVariant:
    layers: int  # supervised decoder layers: 1 = no auxiliary loss


def draw_detr_loss(rng, dtype, d):
    # Small on purpose: finite differences probe every logit and box, each probe a full matching.
    L, B, Q, V = d["variant"].layers, min(d["B"], 2), min(d["T"], 2) + 1, min(max(d["V"], 2), 4)
    logits = normal(rng, (L, B, Q, V), dtype, 1.5)
    boxes = 1 / (1 + np.exp(-normal(rng, (L, B, Q, 4), np.float64)))  # a sigmoid, as the box head
    labels = np.full((B, Q), -1, dtype=np.int64)
    targets = np.zeros((B, Q, 4), dtype=dtype)
    for b in range(B):
        n = int(rng.integers(0, Q + 1))
        labels[b, :n] = rng.integers(0, V - 1, n)
        centres, sizes = rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))
        targets[b, :n] = np.concatenate([centres, sizes], axis=1)
    return {"logits": logits, "pred_boxes": boxes.astype(dtype), "target_labels": labels, "target_boxes": targets}


def target_lists(labels: np.ndarray, boxes: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Padded (B, Q) labels (-1 = none) and (B, Q, 4) boxes -> one (n_b,) and one (n_b, 4) array per image."""
    keep = [row >= 0 for row in labels]
    return [row[k] for row, k in zip(labels, keep, strict=True)], [box[k] for box, k in zip(boxes, keep, strict=True)]


def _np_detr_loss(a, d):
    tl, tb = target_lists(a["target_labels"], a["target_boxes"])
    loss, cache = F.detr_loss_forward(a["logits"], a["pred_boxes"], tl, tb)

    def grads(dout):
        dz, db = F.detr_loss_backward(dout, cache)
        return {"logits": dz, "pred_boxes": db}

    return loss, grads


def _twin_detr_loss(t, d):
    labels, boxes = t["target_labels"], t["target_boxes"]
    keep = [row >= 0 for row in labels]
    tl = [row[k] for row, k in zip(labels, keep, strict=True)]
    tb = [box[k] for box, k in zip(boxes, keep, strict=True)]
    return detr_loss(t["logits"], t["pred_boxes"], tl, tb)[0], t


register(
    Case(
        name="detr_loss",
        kind="op",
        draw=draw_detr_loss,
        differentiable=lambda d: ("logits", "pred_boxes"),
        numpy=_np_detr_loss,
        torch=_twin_detr_loss,
        variants=(DetrLossVariant(layers=1), DetrLossVariant(layers=2)),
        uses=("B", "T", "V"),
    )
)


# ---------------------------------------------------------------------------- the model
# A tiny DETR, small because finite differences probe every parameter: an 8 x 8 grey image, a stem
# of 1 channel (stride 2, then the stride-2 max-pool), one stage of 2 channels (a 1 x 1 shortcut:
# the width changes) -> a 2 x 2 feature map; d_model 4 in 2 heads, one encoder and two decoder
# layers, 2 queries, 1 class (+ no object). The output is every decoder layer's logits and boxes
# side by side, (L, B, Q, V + 4). The frozen batch norms' statistics are drawn (variances > 0).

DETR_CONFIG = DetrConfig(
    embedding_size=1, hidden_sizes=(2,), depths=(1,), d_model=4, encoder_layers=1, decoder_layers=2,
    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=4, decoder_ffn_dim=4,
    num_queries=2, num_labels=1,
)  # fmt: skip
DETR_IMAGE = 8
# Finite differences probe every trainable parameter tensor (all 85 of them, and the image), but only
# DETR_PROBES seeded entries of each: a probe of the whole model costs ~9 ms, and all 879 entries
# would take 16 s per draw. Each probed tensor P is written P = P_0 + scatter(probe, index): the
# draw holds ``probe:<name>`` (k zeros, the differentiable array) and ``index:<name>`` (k distinct
# flat indices drawn by the seed), so the gradient of the probe is the gradient of P at those
# entries -- in NumPy read off the full gradient, in the twin left by autograd on the probe leaf
# (``torch.func.functional_call`` with ``P_0.index_add(probe)``). Every entry of every gradient is
# compared with the twin in test_detr.py and with Hugging Face in test_detr_hf.py.
DETR_PROBES = 3  # entries per parameter tensor (all of a smaller one)
DETR_IMAGE_PROBES = 8  # entries of the image gradient
_FROZEN = ("running_mean", "running_var")  # with the frozen norms' weight and bias: no gradient, not probed


def detr_probed(model: DETR) -> tuple[str, ...]:
    """The image and every trainable parameter of ``model``, in its order."""
    return ("pixel_values", *(name for name, _, _ in model.named_trainable()))


def draw_detr(rng, dtype, d):
    model = DETR(DETR_CONFIG, dtype=dtype, rng=rng)
    arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    for name in arrays:
        if name.endswith("running_var"):
            arrays[name] = rng.uniform(0.5, 1.5, arrays[name].shape).astype(dtype)
    arrays["pixel_values"] = normal(rng, (1, 1, DETR_IMAGE, DETR_IMAGE), dtype)
    for name in detr_probed(model):
        size = arrays[name].size
        k = min(DETR_IMAGE_PROBES if name == "pixel_values" else DETR_PROBES, size)
        arrays[f"index:{name}"] = np.sort(rng.choice(size, k, replace=False)).astype(np.int64)
        arrays[f"probe:{name}"] = np.zeros(k, dtype=dtype)
    return arrays


_MODELS: dict[str, DETR] = {}  # one model per dtype, reloaded for every evaluation (finite differences make many)


def _np_detr(a, d):
    dtype = float_dtype(a)
    if dtype.name not in _MODELS:
        _MODELS[dtype.name] = DETR(DETR_CONFIG, dtype=dtype)
    model = load_weights(_MODELS[dtype.name], a)
    probed = detr_probed(model)
    arrays = {"pixel_values": a["pixel_values"].copy(), **dict(model.named_parameters())}  # the model's own arrays
    for name in probed:
        arrays[name].reshape(-1)[a[f"index:{name}"]] += a[f"probe:{name}"]  # P = P_0 + scatter(probe)
    out, cache = model.forward(arrays["pixel_values"])
    V = DETR_CONFIG.num_labels + 1

    def backward(dout):
        model.zero_grad()
        dx = model.backward(np.ascontiguousarray(dout[..., :V]), np.ascontiguousarray(dout[..., V:]), cache)
        grads = module_grads(model, pixel_values=dx)
        return {f"probe:{name}": grads[name].reshape(-1)[a[f"index:{name}"]] for name in probed}

    return np.concatenate([out.logits, out.pred_boxes], axis=-1), backward


def _twin_detr(t, d):
    x = t["pixel_values"]
    model = load_weights(twin_detr.DETR(DETR_CONFIG, dtype=x.dtype).to(x.device), t)
    names = detr_probed(DETR(DETR_CONFIG))

    def probed(name: str) -> torch.Tensor:
        return t[name].detach().reshape(-1).index_add(0, t[f"index:{name}"], t[f"probe:{name}"]).view_as(t[name])

    weights = {name: probed(name) for name in names if name != "pixel_values"}
    logits, boxes = torch.func.functional_call(model, weights, (probed("pixel_values"),))
    return torch.cat([logits, boxes], dim=-1), {f"probe:{name}": t[f"probe:{name}"] for name in names}


def _detr_differentiable(d) -> tuple[str, ...]:
    return tuple(f"probe:{name}" for name in detr_probed(DETR(DETR_CONFIG)))


register(
    Case(
        name="DETR",
        kind="model",
        draw=draw_detr,
        differentiable=_detr_differentiable,
        numpy=_np_detr,
        torch=_twin_detr,
        uses=(),
    )
)
