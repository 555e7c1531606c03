"""The parity registry: every op and module, run in NumPy, in the twin and by finite differences.

Each :class:`Case` knows how to draw inputs for given sizes, run the NumPy
forward/backward, and run the twin's forward (autograd gives its backward).
:func:`run_case` compares, for one draw:

* the forward output, NumPy vs twin;
* every gradient (inputs and parameters), NumPy backward vs twin autograd;
* in float64, every gradient vs central finite differences.

``parity_tests`` drives the cases with Hypothesis; ``python -m numpy_transformer
parity`` runs them once at fixed sizes and prints the table.

Sizes (``dims``): B batch, T query length, S key length, H heads, D head width,
V vocabulary / classes, ``mask`` one of :data:`MASK_KINDS`, ``variant`` one of
the case's ``variants``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import numpy_transformer as nt
import numpy_transformer.functional as F
from numpy_transformer.config import TransformerConfig
from numpy_transformer.functional import causal_mask
from numpy_transformer.modules.dropout_masks import DropoutMasks
from numpy_transformer.testing import Comparison, numerical_gradient, relative_error, tolerance

from . import functional as TF
from . import modules as tm
from . import transformer as ttransformer
from . import transformer_layers as tlayers
from .bridge import torch_dtype
from .dropout_masks import DropoutMasks as TwinDropoutMasks

MASK_KINDS = ("none", "padding", "causal", "padding+causal", "random", "fully_masked_row")

Arrays = dict[str, Any]  # name -> ndarray (float inputs/parameters, int ids, bool masks)
Backward = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Case:
    """One op or module under test.

    ``draw(rng, dtype, dims)`` returns the arrays; ``differentiable`` names the
    float arrays whose gradients are compared. ``numpy(arrays, dims)`` returns
    ``(out, backward)`` where ``backward(dout)`` maps each differentiable name
    to its gradient. ``torch(tensors, dims)`` returns ``(out, leaves)`` with
    ``leaves[name]`` the tensor whose ``.grad`` autograd fills.
    """

    name: str
    kind: str  # "op" (a functional pair), "module" (a layer) or "model" (layers composed)
    draw: Callable[[np.random.Generator, np.dtype, dict], Arrays]
    differentiable: Callable[[dict], tuple[str, ...]]
    numpy: Callable[[Arrays, dict], tuple[np.ndarray, Backward]]
    torch: Callable[[dict[str, torch.Tensor], dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    variants: tuple[Any, ...] = (None,)
    uses: tuple[str, ...] = field(default=())  # dims keys this case reads (for Hypothesis)
    # Where a gradient is zero by *convention* rather than by calculus (the
    # ``padding_idx`` row of an embedding), finite differences see the true
    # derivative; this hook zeroes those entries of the numeric estimate.
    conventional_zeros: Callable[[str, np.ndarray, dict], np.ndarray] | None = None


CASES: dict[str, Case] = {}


def _register(case: Case) -> Case:
    CASES[case.name] = case
    return case


# ---------------------------------------------------------------------------- masks


def draw_mask(rng: np.random.Generator, kind: str, B: int, H: int, T: int, S: int) -> tuple[np.ndarray | None, bool]:
    """A mask of the given kind (True = may attend) and the ``is_causal`` flag."""
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    if kind in ("padding", "padding+causal"):
        lengths = rng.integers(1, S + 1, size=B)  # at least key 0 stays visible
        keep = np.arange(S)[None, :] < lengths[:, None]  # (B, S)
        return keep[:, None, None, :], kind == "padding+causal"  # (B, 1, 1, S)
    if kind == "random":
        mask = rng.random((B, H, T, S)) < 0.7
        mask[..., 0] = True  # no fully masked row here
        return mask, False
    if kind == "fully_masked_row":
        mask = rng.random((B, H, T, S)) < 0.7
        mask[..., 0] = True
        mask[rng.integers(B), rng.integers(H), rng.integers(T), :] = False
        return mask, False
    raise ValueError(f"mask: expected one of {MASK_KINDS}, got {kind!r}")


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _module_grads(module: nt.Module, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    grads = {name: g.copy() for name, g in module.named_grads()}
    grads.update(inputs)
    return grads


def _load(module, arrays: Arrays):
    """Load the parameter entries of ``arrays`` into a NumPy module or a twin."""
    if isinstance(module, nt.Module):
        module.load_state_dict({n: arrays[n] for n, _ in module.named_parameters()})
        return module
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.copy_(arrays[n])
    return module


def _twin_leaves(module: torch.nn.Module, tensors: dict[str, torch.Tensor], *inputs: str) -> dict[str, torch.Tensor]:
    leaves = dict(module.named_parameters())
    leaves.update({name: tensors[name] for name in inputs})
    return leaves


def _twin_device(tensors: dict[str, torch.Tensor]) -> torch.device:
    return next(t.device for t in tensors.values() if isinstance(t, torch.Tensor))


# ---------------------------------------------------------------------------- functional ops


def _draw_linear(rng, dtype, d):
    arrays = {"x": _normal(rng, (d["B"], d["T"], d["D"]), dtype), "weight": _normal(rng, (d["S"], d["D"]), dtype)}
    if d["variant"] == "bias":
        arrays["bias"] = _normal(rng, (d["S"],), dtype)
    return arrays


def _np_linear(a, d):
    y, cache = F.linear_forward(a["x"], a["weight"], a.get("bias"))

    def backward(dout):
        dx, dw, db = F.linear_backward(dout, cache)
        return {"x": dx, "weight": dw, **({"bias": db} if db is not None else {})}

    return y, backward


_register(
    Case(
        "linear",
        "op",
        _draw_linear,
        lambda d: ("x", "weight", "bias") if d["variant"] == "bias" else ("x", "weight"),
        _np_linear,
        lambda t, d: (TF.linear(t["x"], t["weight"], t.get("bias")), t),
        variants=("bias", "no_bias"),
        uses=("B", "T", "S", "D"),
    )
)


def _zero_padding_row(name: str, numeric: np.ndarray, d: dict) -> np.ndarray:
    if name == "weight" and d["variant"] is not None:
        numeric = numeric.copy()
        numeric[d["variant"]] = 0  # torch.nn.Embedding(padding_idx=...) never updates this row
    return numeric


def _draw_embedding(rng, dtype, d):
    V = d["V"]
    return {"ids": rng.integers(0, V, size=(d["B"], d["T"])), "weight": _normal(rng, (V, d["D"]), dtype)}


def _np_embedding(a, d):
    y, cache = F.embedding_forward(a["ids"], a["weight"], d["variant"])
    return y, lambda dout: {"weight": F.embedding_backward(dout, cache)}


_register(
    Case(
        "embedding",
        "op",
        _draw_embedding,
        lambda d: ("weight",),
        _np_embedding,
        lambda t, d: (TF.embedding(t["ids"], t["weight"], d["variant"]), t),
        variants=(None, 0),
        uses=("B", "T", "V", "D"),
        conventional_zeros=_zero_padding_row,
    )
)


def _draw_pointwise(rng, dtype, d):
    x = rng.standard_normal((d["B"], d["T"], d["D"]))
    x = np.where(np.abs(x) < 1e-3, 0.5, x)  # keep finite differences away from ReLU's kink
    return {"x": (2.0 * x).astype(dtype)}


def _register_unary(name: str, forward: Callable, backward: Callable, twin: Callable) -> None:
    """A case for an op of one input ``x`` (B, T, D) and no parameters: relu, tanh, l2_normalize."""

    def run(a, d):
        y, cache = forward(a["x"])
        return y, lambda dout: {"x": backward(dout, cache)}

    _register(
        Case(name, "op", _draw_pointwise, lambda d: ("x",), run, lambda t, d: (twin(t["x"]), t), uses=("B", "T", "D"))
    )


_register_unary("relu", F.relu_forward, F.relu_backward, TF.relu)
_register_unary("tanh", F.tanh_forward, F.tanh_backward, TF.tanh)
_register_unary("l2_normalize", F.l2_normalize_forward, F.l2_normalize_backward, TF.l2_normalize)


def _draw_pooling(rng, dtype, d):
    B, T = d["B"], d["T"]
    lengths = rng.integers(1, T + 1, size=B)  # at least one real token per row
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    return {"hidden": _normal(rng, (B, T, d["D"]), dtype), "attention_mask": mask}


def _np_mean_pooling(a, d):
    y, cache = F.mean_pooling_forward(a["hidden"], a["attention_mask"])
    return y, lambda dout: {"hidden": F.mean_pooling_backward(dout, cache)}


_register(
    Case(
        "mean_pooling",
        "op",
        _draw_pooling,
        lambda d: ("hidden",),
        _np_mean_pooling,
        lambda t, d: (TF.mean_pooling(t["hidden"], t["attention_mask"]), t),
        uses=("B", "T", "D"),
    )
)


def _np_gelu(a, d):
    y, cache = F.gelu_forward(a["x"], d["variant"])
    return y, lambda dout: {"x": F.gelu_backward(dout, cache)}


_register(
    Case(
        "gelu",
        "op",
        _draw_pointwise,
        lambda d: ("x",),
        _np_gelu,
        lambda t, d: (TF.gelu(t["x"], d["variant"]), t),
        variants=("none", "tanh"),
        uses=("B", "T", "D"),
    )
)


def _draw_dropout(rng, dtype, d):
    x = _normal(rng, (d["B"], d["T"], d["D"]), dtype)
    p = d["variant"]
    return {"x": x, "mask": rng.random(x.shape) >= p}


def _np_dropout(a, d):
    y, cache = F.dropout_forward(a["x"], d["variant"], mask=a["mask"])
    return y, lambda dout: {"x": F.dropout_backward(dout, cache)}


_register(
    Case(
        "dropout",
        "op",
        _draw_dropout,
        lambda d: ("x",),
        _np_dropout,
        lambda t, d: (TF.dropout(t["x"], d["variant"], mask=t["mask"]), t),
        variants=(0.0, 0.25, 0.5),
        uses=("B", "T", "D"),
    )
)


def _draw_logits(rng, dtype, d):
    return {"x": _normal(rng, (d["B"], d["T"], d["V"]), dtype, scale=3.0)}


def _np_softmax(a, d):
    y, cache = F.softmax_forward(a["x"], d["variant"])
    return y, lambda dout: {"x": F.softmax_backward(dout, cache)}


def _np_log_softmax(a, d):
    y, cache = F.log_softmax_forward(a["x"], d["variant"])
    return y, lambda dout: {"x": F.log_softmax_backward(dout, cache)}


_register(
    Case(
        "softmax",
        "op",
        _draw_logits,
        lambda d: ("x",),
        _np_softmax,
        lambda t, d: (TF.softmax(t["x"], d["variant"]), t),
        variants=(-1, 0, 1),
        uses=("B", "T", "V"),
    )
)
_register(
    Case(
        "log_softmax",
        "op",
        _draw_logits,
        lambda d: ("x",),
        _np_log_softmax,
        lambda t, d: (TF.log_softmax(t["x"], d["variant"]), t),
        variants=(-1, 0, 1),
        uses=("B", "T", "V"),
    )
)


def _draw_cross_entropy(rng, dtype, d):
    layout, _ = d["variant"]
    B, T, V = d["B"], d["T"], d["V"]
    shape = (B, T) if layout == "3d" else (B * T,)
    targets = rng.integers(0, V, size=shape)
    targets[rng.random(shape) < 0.25] = -100  # some ignored positions
    return {"logits": _normal(rng, (*shape, V), dtype, scale=2.0), "targets": targets}


def _np_cross_entropy(a, d):
    loss, cache = F.cross_entropy_forward(a["logits"], a["targets"], -100, d["variant"][1])
    return loss, lambda dout: {"logits": F.cross_entropy_backward(dout, cache)}


_register(
    Case(
        "cross_entropy",
        "op",
        _draw_cross_entropy,
        lambda d: ("logits",),
        _np_cross_entropy,
        lambda t, d: (TF.cross_entropy(t["logits"], t["targets"], -100, d["variant"][1]), t),
        variants=(("2d", 0.0), ("3d", 0.0), ("2d", 0.1), ("3d", 0.2)),
        uses=("B", "T", "V"),
    )
)


def _spread_rows(x: np.ndarray) -> np.ndarray:
    """Give every row of the last axis a standard deviation of at least ~0.7.

    LayerNorm amplifies rounding by ``rstd = 1/sqrt(var + eps)``: on a nearly
    constant row, float32 results of *any* two implementations (ours, the twin,
    ``nn.LayerNorm``) differ by far more than 1e-5, because the problem itself is
    ill-conditioned. The contract is about rounding on well-conditioned inputs,
    so the draw keeps rows spread out (``parity_tests`` shows the ill-conditioned
    case separately).
    """
    C = x.shape[-1]
    if C < 2:
        return x
    narrow = x.std(axis=-1, keepdims=True) < 0.3
    return np.where(narrow, x + np.linspace(-1.0, 1.0, C), x).astype(x.dtype)


def _draw_layer_norm(rng, dtype, d):
    C = d["D"] * d["H"]
    return {
        "x": _spread_rows(_normal(rng, (d["B"], d["T"], C), dtype, scale=2.0)),
        "weight": _normal(rng, (C,), dtype),
        "bias": _normal(rng, (C,), dtype),
    }


def _np_layer_norm(a, d):
    y, cache = F.layer_norm_forward(a["x"], a["weight"], a["bias"], d["variant"])

    def backward(dout):
        dx, dw, db = F.layer_norm_backward(dout, cache)
        return {"x": dx, "weight": dw, "bias": db}

    return y, backward


_register(
    Case(
        "layer_norm",
        "op",
        _draw_layer_norm,
        lambda d: ("x", "weight", "bias"),
        _np_layer_norm,
        lambda t, d: (TF.layer_norm(t["x"], t["weight"], t["bias"], d["variant"]), t),
        variants=(1e-5, 1e-12, 0.1),
        uses=("B", "T", "H", "D"),
    )
)


def _draw_attention(rng, dtype, d):
    B, H, T, S, D = d["B"], d["H"], d["T"], d["S"], d["D"]
    mask, _ = draw_mask(rng, d["mask"], B, H, T, S)
    arrays = {
        "q": _normal(rng, (B, H, T, D), dtype),
        "k": _normal(rng, (B, H, S, D), dtype),
        "v": _normal(rng, (B, H, S, D + 1), dtype),  # Dv != D on purpose
    }
    if mask is not None:
        arrays["mask"] = mask
    p = d["variant"][1]
    if p > 0:
        arrays["dropout_mask"] = rng.random((B, H, T, S)) >= p
    return arrays


def _attention_kwargs(d):
    scale, p = d["variant"]
    return {"is_causal": "causal" in d["mask"], "scale": scale, "dropout_p": p}


def _np_attention(a, d):
    out, cache = F.scaled_dot_product_attention_forward(
        a["q"], a["k"], a["v"], mask=a.get("mask"), dropout_mask=a.get("dropout_mask"), **_attention_kwargs(d)
    )

    def backward(dout):
        dq, dk, dv = F.scaled_dot_product_attention_backward(dout, cache)
        return {"q": dq, "k": dk, "v": dv}

    return out, backward


_register(
    Case(
        "scaled_dot_product_attention",
        "op",
        _draw_attention,
        lambda d: ("q", "k", "v"),
        _np_attention,
        lambda t, d: (
            TF.scaled_dot_product_attention(
                t["q"], t["k"], t["v"], mask=t.get("mask"), dropout_mask=t.get("dropout_mask"), **_attention_kwargs(d)
            ),
            t,
        ),
        variants=((None, 0.0), (0.5, 0.0), (None, 0.3)),
        uses=("B", "H", "T", "S", "D", "mask"),
    )
)


# ---------------------------------------------------------------------------- modules


def _draw_module(make_np: Callable[[np.dtype, dict], nt.Module], make_inputs):
    def draw(rng, dtype, d):
        module = make_np(dtype, d)
        arrays = {name: _normal(rng, p.shape, dtype, scale=0.5) for name, p in module.named_parameters()}
        arrays.update(make_inputs(rng, dtype, d))
        return arrays

    return draw


def _np_module(make_np, run_forward, input_names):
    def run(a, d):
        module = _load(make_np(a_dtype(a), d), a)
        out, cache = run_forward(module, a, d)

        def backward(dout):
            module.zero_grad()
            dins = module.backward(dout, cache)
            if not input_names:  # e.g. Embedding: token ids have no gradient
                return _module_grads(module)
            if not isinstance(dins, tuple):
                dins = (dins,)
            return _module_grads(module, **dict(zip(input_names, dins, strict=True)))

        return out, backward

    return run


def a_dtype(a: Arrays) -> np.dtype:
    return next(v.dtype for v in a.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f")


def _make_twin(make_t):
    def run(t, d, forward, inputs):
        x = next(v for v in t.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
        module = _load(make_t(x.dtype, d).to(x.device), t)
        return forward(module, t, d), _twin_leaves(module, t, *inputs)

    return run


def _params_and(*names):
    def differentiable(d, _names=names):
        return ("PARAMS", *_names)

    return differentiable


def _x_btc(rng, dtype, d):
    return {"x": _normal(rng, (d["B"], d["T"], d["D"] * d["H"]), dtype)}


def _register_module(
    name,
    make_np,
    make_t,
    make_inputs,
    np_forward,
    t_forward,
    inputs,
    variants=(None,),
    uses=(),
    conventional_zeros=None,
):
    twin = _make_twin(make_t)
    case = Case(
        name,
        "module",
        _draw_module(make_np, make_inputs),
        _params_and(*inputs),
        _np_module(make_np, np_forward, inputs),
        lambda t, d: twin(t, d, t_forward, inputs),
        variants=variants,
        uses=uses,
        conventional_zeros=conventional_zeros,
    )
    _register(case)


_register_module(
    "Linear",
    lambda dt, d: nt.Linear(d["D"] * d["H"], d["S"], bias=d["variant"], dtype=dt, rng=np.random.default_rng(0)),
    lambda dt, d: tm.Linear(d["D"] * d["H"], d["S"], bias=d["variant"], dtype=dt),
    _x_btc,
    lambda m, a, d: m.forward(a["x"]),
    lambda m, t, d: m(t["x"]),
    ("x",),
    variants=(True, False),
    uses=("B", "T", "S", "H", "D"),
)
_register_module(
    "Embedding",
    lambda dt, d: nt.Embedding(d["V"], d["D"], padding_idx=d["variant"], dtype=dt, rng=np.random.default_rng(0)),
    lambda dt, d: tm.Embedding(d["V"], d["D"], padding_idx=d["variant"], dtype=dt),
    lambda rng, dt, d: {"ids": rng.integers(0, d["V"], size=(d["B"], d["T"]))},
    lambda m, a, d: m.forward(a["ids"]),
    lambda m, t, d: m(t["ids"]),
    (),
    variants=(None, 1),
    uses=("B", "T", "V", "D"),
    conventional_zeros=_zero_padding_row,
)
_register_module(
    "LayerNorm",
    lambda dt, d: nt.LayerNorm(d["D"] * d["H"], eps=d["variant"], dtype=dt),
    lambda dt, d: tm.LayerNorm(d["D"] * d["H"], eps=d["variant"], dtype=dt),
    lambda rng, dt, d: {"x": _spread_rows(_x_btc(rng, dt, d)["x"])},
    lambda m, a, d: m.forward(a["x"]),
    lambda m, t, d: m(t["x"]),
    ("x",),
    variants=(1e-5, 1e-12),
    uses=("B", "T", "H", "D"),
)


def _dropout_inputs(rng, dtype, d):
    x = _normal(rng, (d["B"], d["T"], d["D"]), dtype)
    return {"x": x, "mask": rng.random(x.shape) >= 0.3}


_register_module(
    "Dropout",
    lambda dt, d: nt.Dropout(0.3).train(d["variant"] == "train"),
    lambda dt, d: tm.Dropout(0.3).train(d["variant"] == "train"),
    _dropout_inputs,
    lambda m, a, d: m.forward(a["x"], mask=a["mask"]),
    lambda m, t, d: m(t["x"], mask=t["mask"]),
    ("x",),
    variants=("train", "eval"),
    uses=("B", "T", "D"),
)


def _ffn_inputs(rng, dtype, d):
    C, Fw = d["D"] * d["H"], 2 * d["D"] * d["H"] + 1
    arrays = {"x": _normal(rng, (d["B"], d["T"], C), dtype)}
    if d["variant"][1] > 0:
        arrays["dropout_mask"] = rng.random((d["B"], d["T"], Fw)) >= d["variant"][1]
    return arrays


_register_module(
    "FeedForward",
    lambda dt, d: nt.FeedForward(
        d["D"] * d["H"],
        2 * d["D"] * d["H"] + 1,
        d["variant"][0],
        d["variant"][1],
        dtype=dt,
        rng=np.random.default_rng(0),
    ),
    lambda dt, d: tm.FeedForward(d["D"] * d["H"], 2 * d["D"] * d["H"] + 1, d["variant"][0], d["variant"][1], dtype=dt),
    _ffn_inputs,
    lambda m, a, d: m.forward(a["x"], dropout_mask=a.get("dropout_mask")),
    lambda m, t, d: m(t["x"], dropout_mask=t.get("dropout_mask")),
    ("x",),
    variants=(("relu", 0.0), ("gelu", 0.0), ("gelu_tanh", 0.0), ("relu", 0.3)),
    uses=("B", "T", "H", "D"),
)


def _mha_inputs(rng, dtype, d):
    B, H, T, D = d["B"], d["H"], d["T"], d["D"]
    cross, p = d["variant"]
    S = d["S"] if cross else T
    C = H * D
    mask_kind = d["mask"]
    mask, _ = draw_mask(rng, mask_kind, B, H, T, S)
    x = _normal(rng, (B, T, C), dtype)
    # Self-attention: three equal copies, so that finite differences perturb one
    # input at a time and autograd reports three separate gradients, as our
    # backward does. (Passing the very same array is checked in parity_tests.)
    arrays = {"query": x, "key": x.copy(), "value": x.copy()}
    if cross:
        arrays["key"] = _normal(rng, (B, S, C), dtype)
        arrays["value"] = _normal(rng, (B, S, C), dtype)
    if mask is not None:
        arrays["mask"] = mask
    if p > 0:
        arrays["dropout_mask"] = rng.random((B, H, T, S)) >= p
    return arrays


def _mha_np_forward(m, a, d):
    return m.forward(
        a["query"],
        a["key"],
        a["value"],
        mask=a.get("mask"),
        is_causal="causal" in d["mask"],
        dropout_mask=a.get("dropout_mask"),
    )


def _mha_t_forward(m, t, d):
    return m(
        t["query"],
        t["key"],
        t["value"],
        mask=t.get("mask"),
        is_causal="causal" in d["mask"],
        dropout_mask=t.get("dropout_mask"),
    )


_register_module(
    "MultiHeadAttention",
    lambda dt, d: nt.MultiHeadAttention(
        d["D"] * d["H"], d["H"], dropout=d["variant"][1], dtype=dt, rng=np.random.default_rng(0)
    ),
    lambda dt, d: tm.MultiHeadAttention(d["D"] * d["H"], d["H"], dropout=d["variant"][1], dtype=dt),
    _mha_inputs,
    _mha_np_forward,
    _mha_t_forward,
    ("query", "key", "value"),
    variants=((False, 0.0), (True, 0.0), (True, 0.2)),
    uses=("B", "H", "T", "S", "D", "mask"),
)


# ---------------------------------------------------------------------------- layers and models
# Dropout masks of a layer or model are drawn once per case by a throwaway NumPy
# forward and stored under "dropout:<site>", so that every evaluation (NumPy, the
# twin, each finite-difference probe) drops the same units.

_DROP = "dropout:"


def _given_masks(a: dict) -> dict:
    return {k[len(_DROP) :]: v for k, v in a.items() if k.startswith(_DROP)}


def _record_masks(module: nt.Module, run: Callable[[DropoutMasks], Any], rng: np.random.Generator) -> dict:
    masks = DropoutMasks(rng)
    run(masks)
    return {_DROP + k: v for k, v in masks.used.items()}


def _layer_dims(d: dict) -> tuple[int, int, int]:
    """Heads, d_model, d_ff for layer and model cases: small, so finite differences can probe every parameter.

    d_model stays 4: a LayerNorm over 2 features maps every row to about (-1, 1),
    an ill-conditioned map under which two float32 implementations part by more
    than rounding.
    """
    H = min(d["H"], 2)
    C = 4
    return H, C, C + 1


def _make_layer(cls, d, dt, rng=None):
    H, C, Fw = _layer_dims(d)
    norm_first, activation, p = d["variant"]
    kwargs = dict(dropout=p, activation=activation, norm_first=norm_first, dtype=dt)
    if cls in (nt.EncoderLayer, nt.DecoderLayer):
        kwargs["rng"] = rng or np.random.default_rng(0)
    return cls(C, H, Fw, **kwargs)


_LAYER_VARIANTS = (
    (False, "relu", 0.0),
    (True, "relu", 0.0),
    (False, "gelu", 0.0),
    (True, "gelu", 0.3),
    (False, "relu", 0.3),
)


def _draw_encoder_layer(rng, dtype, d):
    layer = _make_layer(nt.EncoderLayer, d, dtype)
    H, C, _ = _layer_dims(d)
    arrays = {name: _normal(rng, p.shape, dtype, scale=0.5) for name, p in layer.named_parameters()}
    arrays["x"] = _normal(rng, (d["B"], d["T"], C), dtype)
    mask, causal = draw_mask(rng, d["mask"], d["B"], H, d["T"], d["T"])
    if causal:
        mask = causal_mask(d["T"]) if mask is None else mask & causal_mask(d["T"])
    if mask is not None:
        arrays["mask"] = mask
    arrays.update(_record_masks(layer, lambda m: layer.forward(arrays["x"], mask, m), rng))
    return arrays


def _np_encoder_layer(a, d):
    layer = _load(_make_layer(nt.EncoderLayer, d, a_dtype(a)), a)
    y, cache = layer.forward(a["x"], a.get("mask"), DropoutMasks(given=_given_masks(a)))

    def backward(dout):
        layer.zero_grad()
        return _module_grads(layer, x=layer.backward(dout, cache))

    return y, backward


def _t_encoder_layer(t, d):
    x = t["x"]
    layer = _load(_make_layer(tlayers.EncoderLayer, d, x.dtype).to(x.device), t)
    y = layer(x, t.get("mask"), TwinDropoutMasks(_given_masks(t)))
    return y, _twin_leaves(layer, t, "x")


_register(
    Case(
        "EncoderLayer", "model", _draw_encoder_layer, _params_and("x"), _np_encoder_layer, _t_encoder_layer,
        variants=_LAYER_VARIANTS, uses=("B", "T", "H", "D", "mask"),
    )
)  # fmt: skip


def _draw_decoder_layer(rng, dtype, d):
    layer = _make_layer(nt.DecoderLayer, d, dtype)
    H, C, _ = _layer_dims(d)
    B, T, S = d["B"], d["T"], d["S"]
    arrays = {name: _normal(rng, p.shape, dtype, scale=0.5) for name, p in layer.named_parameters()}
    arrays["x"] = _normal(rng, (B, T, C), dtype)
    arrays["memory"] = _normal(rng, (B, S, C), dtype)
    tgt_mask, causal = draw_mask(rng, d["mask"], B, H, T, T)
    if causal:
        tgt_mask = causal_mask(T) if tgt_mask is None else tgt_mask & causal_mask(T)
    if tgt_mask is not None:
        arrays["tgt_mask"] = tgt_mask
    memory_mask, _ = draw_mask(rng, "padding", B, H, T, S)
    arrays["memory_mask"] = memory_mask
    arrays.update(
        _record_masks(layer, lambda m: layer.forward(arrays["x"], arrays["memory"], tgt_mask, memory_mask, m), rng)
    )
    return arrays


def _np_decoder_layer(a, d):
    layer = _load(_make_layer(nt.DecoderLayer, d, a_dtype(a)), a)
    y, cache = layer.forward(
        a["x"], a["memory"], a.get("tgt_mask"), a["memory_mask"], DropoutMasks(given=_given_masks(a))
    )

    def backward(dout):
        layer.zero_grad()
        dx, dmemory = layer.backward(dout, cache)
        return _module_grads(layer, x=dx, memory=dmemory)

    return y, backward


def _t_decoder_layer(t, d):
    x = t["x"]
    layer = _load(_make_layer(tlayers.DecoderLayer, d, x.dtype).to(x.device), t)
    y = layer(x, t["memory"], t.get("tgt_mask"), t["memory_mask"], TwinDropoutMasks(_given_masks(t)))
    return y, _twin_leaves(layer, t, "x", "memory")


_register(
    Case(
        "DecoderLayer", "model", _draw_decoder_layer, _params_and("x", "memory"), _np_decoder_layer, _t_decoder_layer,
        variants=_LAYER_VARIANTS, uses=("B", "T", "S", "H", "D", "mask"),
    )
)  # fmt: skip


def _transformer_config(d: dict) -> TransformerConfig:
    H, C, Fw = _layer_dims(d)
    norm_first, activation, p, tie, layers = d["variant"]
    return TransformerConfig(
        src_vocab_size=d["V"] + 1, tgt_vocab_size=d["V"] + 2, d_model=C, n_heads=H, d_ff=Fw,
        n_encoder_layers=layers, n_decoder_layers=layers, dropout=p, activation=activation,
        norm_first=norm_first, max_len=8, pad_id=0, tie_embeddings=tie,
    )  # fmt: skip


def _draw_transformer(rng, dtype, d):
    cfg = _transformer_config(d)
    model = nt.Transformer(cfg, dtype=dtype, rng=np.random.default_rng(0))
    arrays = {name: _normal(rng, p.shape, dtype, scale=0.5) for name, p in model.named_parameters()}
    B, S, T = d["B"], d["S"], d["T"]
    src = rng.integers(1, cfg.src_vocab_size, size=(B, S))
    tgt = rng.integers(1, cfg.tgt_vocab_size, size=(B, T))
    for ids in (src, tgt):  # right padding of random length; position 0 stays a real token
        lengths = rng.integers(1, ids.shape[1] + 1, size=B)
        ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = cfg.pad_id
    arrays["src"], arrays["tgt"] = src, tgt
    _, cache = model.forward(src, tgt, rng=rng)
    arrays.update({_DROP + k: v for k, v in cache.dropout_masks.items()})
    return arrays


def _np_transformer(a, d):
    model = _load(nt.Transformer(_transformer_config(d), dtype=a_dtype(a), rng=np.random.default_rng(0)), a)
    logits, cache = model.forward(a["src"], a["tgt"], dropout_masks=_given_masks(a))

    def backward(dout):
        model.zero_grad()
        model.backward(dout, cache)
        return _module_grads(model)

    return logits, backward


def _t_transformer(t, d):
    src = t["src"]
    dtype = next(v.dtype for v in t.values() if v.is_floating_point())
    model = _load(ttransformer.Transformer(_transformer_config(d), dtype=dtype).to(src.device), t)
    logits = model(src, t["tgt"], _given_masks(t))
    return logits, dict(model.named_parameters())


_register(
    Case(
        "Transformer", "model", _draw_transformer, _params_and(), _np_transformer, _t_transformer,
        variants=(
            (False, "relu", 0.0, False, 1), (True, "gelu", 0.0, True, 1), (False, "gelu", 0.2, True, 2),
            (True, "relu", 0.2, False, 2),
        ),
        uses=("B", "T", "S", "H", "D", "V"),
    )
)  # fmt: skip


# ---------------------------------------------------------------------------- running a case


def differentiable_names(case: Case, arrays: Arrays, dims: dict) -> tuple[str, ...]:
    names = case.differentiable(dims)
    if names and names[0] == "PARAMS":
        inputs = names[1:]
        params = tuple(
            n for n, v in arrays.items() if n not in inputs and isinstance(v, np.ndarray) and v.dtype.kind == "f"
        )
        return params + inputs
    return names


@dataclass(frozen=True)
class CaseResult:
    case: str
    dtype: str
    device: str
    forward: Comparison
    vs_twin: list[Comparison]  # one per gradient
    vs_finite_differences: list[Comparison]  # float64 only

    @property
    def tolerance(self) -> float:
        return tolerance(self.device, self.dtype)

    @property
    def worst_twin(self) -> Comparison | None:
        return max(self.vs_twin, key=lambda c: c.error, default=None)

    @property
    def worst_finite_differences(self) -> Comparison | None:
        return max(self.vs_finite_differences, key=lambda c: c.error, default=None)

    def failures(self) -> list[str]:
        bad = [c.describe() for c in [self.forward, *self.vs_twin] if not c.error <= self.tolerance]
        fd_tol = tolerance("finite_differences", np.float64)
        bad += [c.describe() for c in self.vs_finite_differences if not c.error <= fd_tol]
        return bad


def _to_torch(arrays: Arrays, diff: tuple[str, ...], device: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, value in arrays.items():
        t = torch.from_numpy(np.array(value, copy=True)).to(device)  # a fresh copy per name
        if name in diff:
            t.requires_grad_(True)
        tensors[name] = t
    return tensors


def run_case(
    case: Case,
    dims: dict,
    dtype: np.dtype | type | str,
    seed: int,
    device: str = "cpu",
    finite_differences: bool = True,
) -> CaseResult:
    """Run one draw of ``case`` in NumPy, in the twin (on ``device``) and by finite differences."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    arrays = case.draw(rng, dtype, dims)
    diff = differentiable_names(case, arrays, dims)

    out, backward = case.numpy(arrays, dims)
    dout = np.asarray(rng.standard_normal(np.shape(out)), dtype=dtype)  # random upstream gradient
    grads = backward(dout)

    tensors = _to_torch(arrays, diff, device)
    out_t, leaves = case.torch(tensors, dims)
    out_t.backward(torch.from_numpy(dout).to(device))

    forward = relative_error(f"{case.name} output", out, out_t.detach().cpu().numpy())
    vs_twin = []
    for name in diff:
        g_t = leaves[name].grad
        expected = np.zeros_like(arrays[name]) if g_t is None else g_t.detach().cpu().numpy()
        vs_twin.append(relative_error(f"{case.name} d{name}", grads[name], expected))

    vs_fd = []
    if finite_differences and dtype == np.float64:
        for name in diff:
            numeric = numerical_gradient(lambda _x: case.numpy(arrays, dims)[0], arrays[name], dout)
            if case.conventional_zeros is not None:
                numeric = case.conventional_zeros(name, numeric, dims)
            vs_fd.append(relative_error(f"{case.name} d{name} (finite differences)", grads[name], numeric))
    return CaseResult(case.name, dtype.name, device, forward, vs_twin, vs_fd)


DEFAULT_DIMS = {"B": 2, "T": 5, "S": 4, "H": 2, "D": 3, "V": 6}


# The fixed draws the ``parity`` command runs: every variant, and for attention every mask kind.
def default_dims(case: Case) -> list[dict]:
    if "mask" not in case.uses:
        masks = ("none",)
    elif case.kind == "model":  # composed layers: the mask kinds that differ most, to keep the run short
        masks = ("padding+causal", "fully_masked_row")
    else:
        masks = MASK_KINDS
    return [dict(DEFAULT_DIMS, mask=m, variant=v) for v in case.variants for m in masks]


def enable_exact_cuda_matmul() -> None:
    """Turn TF32 off, so CUDA float32 matmuls are real float32 (the parity contract needs it)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


__all__ = [
    "CASES",
    "MASK_KINDS",
    "Case",
    "CaseResult",
    "default_dims",
    "draw_mask",
    "enable_exact_cuda_matmul",
    "run_case",
    "tolerance",
    "torch_dtype",
]


# Cases of other op families register themselves into CASES when imported.
from . import parity_bert, parity_classic_attention, parity_gpt, parity_gru, parity_rnn_seq2seq  # noqa: E402, F401
