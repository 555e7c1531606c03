"""Parity cases for the GRU cell and layer. Registered on import.

Sizes: ``B`` batch, ``T`` time steps, input size ``I = D`` and hidden size
``min(S, 4)`` (``S`` plays no other part here), so finite differences stay cheap
(H <= 4, T <= 5). A GRU returns two arrays, the per-step outputs and the final
state; a case compares one, so both are joined along time: ``(B, T + 1, D*H)``,
the last step holding the final state(s) ``[forward; backward]``.

Variants: with and without biases (and only ``bias_hh``, where ``b_hn`` lives),
with and without ``lengths`` (some rows of length 0), forward and reversed reading,
bidirectional, with and without ``h0``.
"""

from __future__ import annotations

import numpy as np
import torch

import numpy_transformer as nt
import numpy_transformer.functional as F

from . import gru as tgru
from .parity import (
    Case,
    _draw_module,
    _load,
    _module_grads,
    _normal,
    _params_and,
    _register,
    _register_module,
    _twin_leaves,
    a_dtype,
)

_USES = ("B", "T", "S", "D")


def _sizes(d: dict) -> tuple[int, int]:
    """Input size I and hidden size H of a draw."""
    return d["D"], min(d["S"], 4)


def _draw_lengths(rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    lengths = rng.integers(1, T + 1, size=B)
    if rng.random() < 0.2:
        lengths[rng.integers(B)] = 0  # an empty row: zero outputs, h_T = h0
    return lengths


def _join(outputs, h_n):
    """``outputs`` (B, T, D*H) and ``h_n`` (D, B, H) -> (B, T + 1, D*H); works for arrays and tensors."""
    D, B, H = h_n.shape
    last = h_n.transpose(0, 1) if isinstance(h_n, torch.Tensor) else h_n.transpose(1, 0, 2)  # (B, D, H)
    last = last.reshape(B, 1, D * H)  # (B, 1, D*H) [forward; backward]
    if isinstance(outputs, torch.Tensor):
        return torch.cat([outputs, last], dim=1)
    return np.concatenate([outputs, last], axis=1)


def _split(dout: np.ndarray, D: int) -> tuple[np.ndarray, np.ndarray]:
    """Undo :func:`_join` for the upstream gradient: ``doutputs`` (B, T, D*H), ``dh_n`` (D, B, H)."""
    B, T1, DH = dout.shape
    dh_n = dout[:, T1 - 1].reshape(B, D, DH // D).transpose(1, 0, 2)  # (D, B, H)
    return dout[:, : T1 - 1], np.ascontiguousarray(dh_n)


# ---------------------------------------------------------------------------- gru_cell


def _draw_gru_weights(rng, dtype, I, H, bias_ih: bool, bias_hh: bool) -> dict:
    arrays = {
        "weight_ih": _normal(rng, (3 * H, I), dtype, scale=0.5),
        "weight_hh": _normal(rng, (3 * H, H), dtype, scale=0.5),
    }
    if bias_ih:
        arrays["bias_ih"] = _normal(rng, (3 * H,), dtype, scale=0.5)
    if bias_hh:
        arrays["bias_hh"] = _normal(rng, (3 * H,), dtype, scale=0.5)
    return arrays


_CELL_BIASES = {"bias": (True, True), "no_bias": (False, False), "hh_only": (False, True)}


def _draw_gru_cell(rng, dtype, d):
    I, H = _sizes(d)
    arrays = {"x": _normal(rng, (d["B"], I), dtype), "h": _normal(rng, (d["B"], H), dtype)}
    arrays.update(_draw_gru_weights(rng, dtype, I, H, *_CELL_BIASES[d["variant"]]))
    return arrays


def _gru_args(a):
    return a["weight_ih"], a["weight_hh"], a.get("bias_ih"), a.get("bias_hh")


def _named_grads(grads) -> dict:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return {name: g for name, g in zip(names, grads, strict=True) if g is not None}


def _np_gru_cell(a, d):
    h_next, cache = F.gru_cell_forward(a["x"], a["h"], *_gru_args(a))

    def backward(dout):
        dx, dh, *grads = F.gru_cell_backward(dout, cache)
        return {"x": dx, "h": dh, **_named_grads(grads)}

    return h_next, backward


_register(
    Case(
        "gru_cell",
        "op",
        _draw_gru_cell,
        lambda d: (
            ("x", "h", "weight_ih", "weight_hh")
            + tuple(n for n, on in zip(("bias_ih", "bias_hh"), _CELL_BIASES[d["variant"]], strict=True) if on)
        ),
        _np_gru_cell,
        lambda t, d: (tgru.gru_cell(t["x"], t["h"], *_gru_args(t)), t),
        variants=tuple(_CELL_BIASES),
        uses=_USES,
    )
)


# ---------------------------------------------------------------------------- gru (one direction over time)

# (biases, lengths, reading direction)
_GRU_VARIANTS = (
    ("bias", "full", "forward"),
    ("bias", "lengths", "forward"),
    ("bias", "lengths", "reverse"),
    ("no_bias", "full", "reverse"),
    ("no_bias", "lengths", "forward"),
)


def _draw_gru(rng, dtype, d):
    I, H = _sizes(d)
    B, T = d["B"], d["T"]
    bias, lengths, _ = d["variant"]
    arrays = {"x": _normal(rng, (B, T, I), dtype), "h0": _normal(rng, (B, H), dtype)}
    arrays.update(_draw_gru_weights(rng, dtype, I, H, bias == "bias", bias == "bias"))
    if lengths == "lengths":
        arrays["lengths"] = _draw_lengths(rng, B, T)
    return arrays


def _np_gru(a, d):
    (outputs, h_T), cache = F.gru_forward(
        a["x"], a["h0"], *_gru_args(a), lengths=a.get("lengths"), reverse=d["variant"][2] == "reverse"
    )

    def backward(dout):
        doutputs, dh_n = _split(dout, 1)
        dx, dh0, *grads = F.gru_backward(doutputs, dh_n[0], cache)
        return {"x": dx, "h0": dh0, **_named_grads(grads)}

    return _join(outputs, h_T[None]), backward


def _t_gru(t, d):
    outputs, h_T = tgru.gru(
        t["x"], t["h0"], *_gru_args(t), lengths=t.get("lengths"), reverse=d["variant"][2] == "reverse"
    )
    return _join(outputs, h_T[None]), t


_register(
    Case(
        "gru",
        "op",
        _draw_gru,
        lambda d: ("x", "h0", "weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if d["variant"][0] == "bias" else ()),
        _np_gru,
        _t_gru,
        variants=_GRU_VARIANTS,
        uses=_USES,
    )
)


# ---------------------------------------------------------------------------- GRUCell


def _cell_inputs(rng, dtype, d):
    I, H = _sizes(d)
    return {"x": _normal(rng, (d["B"], I), dtype), "h": _normal(rng, (d["B"], H), dtype)}


_register_module(
    "GRUCell",
    lambda dt, d: nt.GRUCell(*_sizes(d), bias=d["variant"], dtype=dt, rng=np.random.default_rng(0)),
    lambda dt, d: tgru.GRUCell(*_sizes(d), bias=d["variant"], dtype=dt),
    _cell_inputs,
    lambda m, a, d: m.forward(a["x"], a["h"]),
    lambda m, t, d: m(t["x"], t["h"]),
    ("x", "h"),
    variants=(True, False),
    uses=_USES,
)


# ---------------------------------------------------------------------------- GRU (the layer)

# (directions, biases, lengths, initial state)
_LAYER_VARIANTS = (
    ("unidirectional", "bias", "full", "h0"),
    ("unidirectional", "no_bias", "lengths", "h0"),
    ("bidirectional", "bias", "lengths", "h0"),
    ("bidirectional", "no_bias", "full", "no_h0"),
    ("bidirectional", "bias", "lengths", "no_h0"),
)


def _layer_kwargs(d):
    directions, bias, _, _ = d["variant"]
    return {"bidirectional": directions == "bidirectional", "bias": bias == "bias"}


def _make_np_gru(dtype, d):
    return nt.GRU(*_sizes(d), **_layer_kwargs(d), dtype=dtype, rng=np.random.default_rng(0))


def _layer_inputs(rng, dtype, d):
    I, H = _sizes(d)
    B, T = d["B"], d["T"]
    _, _, lengths, h0 = d["variant"]
    D = 2 if _layer_kwargs(d)["bidirectional"] else 1
    arrays = {"x": _normal(rng, (B, T, I), dtype)}
    if h0 == "h0":
        arrays["h0"] = _normal(rng, (D, B, H), dtype)
    if lengths == "lengths":
        arrays["lengths"] = _draw_lengths(rng, B, T)
    return arrays


def _layer_input_names(d) -> tuple[str, ...]:
    return ("x", "h0") if d["variant"][3] == "h0" else ("x",)


def _np_gru_layer(a, d):
    gru = _load(_make_np_gru(a_dtype(a), d), a)
    (outputs, h_n), cache = gru.forward(a["x"], a.get("h0"), a.get("lengths"))

    def backward(dout):
        gru.zero_grad()
        dx, dh0 = gru.backward(*_split(dout, gru.num_directions), cache)
        inputs = {"x": dx, "h0": dh0} if "h0" in a else {"x": dx}
        return _module_grads(gru, **inputs)

    return _join(outputs, h_n), backward


def _t_gru_layer(t, d):
    x = t["x"]
    gru = _load(tgru.GRU(*_sizes(d), **_layer_kwargs(d), dtype=x.dtype).to(x.device), t)
    outputs, h_n = gru(x, t.get("h0"), t.get("lengths"))
    return _join(outputs, h_n), _twin_leaves(gru, t, *_layer_input_names(d))


_register(
    Case(
        "GRU",
        "module",
        _draw_module(_make_np_gru, _layer_inputs),
        lambda d: _params_and(*_layer_input_names(d))(d),
        _np_gru_layer,
        _t_gru_layer,
        variants=_LAYER_VARIANTS,
        uses=_USES,
    )
)
