"""Parity cases for the GRU cell and layer. Registered on import.

Sizes: ``B`` batch, ``T`` time steps, input size ``I = D`` and hidden size
``min(S, 4)`` (``S`` plays no other part here), so finite differences stay cheap
(H <= 4, T <= 5). A GRU returns two arrays, the per-step outputs and the final
state; a case compares one, so both are joined along time: ``(B, T + 1, D*H)``,
the last step holding the final state(s) ``[forward; backward]``.

Variants: with and without biases (and only ``bias_hh``, where ``b_hn`` lives),
with and without ``lengths`` (some rows of length 0), forward and reversed reading,
bidirectional, with and without ``h0``. Built-ins: ``nn.GRUCell`` and ``nn.GRU``
(``lengths`` through ``pack_padded_sequence``, which rejects a row of length 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import numpy_transformer as nt
import numpy_transformer.functional as F

from .. import bridge
from .. import gru as tgru
from .registry import (
    Builtin,
    Case,
    draw_module,
    float_dtype,
    leaf_gradients,
    load_weights,
    module_case,
    module_grads,
    normal,
    numpy_arrays,
    register,
    twin_leaves,
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


def _empty_row(a, d) -> str | None:
    if "lengths" in a and (a["lengths"] == 0).any():
        return "a row of length 0: pack_padded_sequence rejects it"
    return None


def _nn_gru(gru: nn.GRU, x: torch.Tensor, h0, lengths, reverse: bool = False):
    """``nn.GRU`` (batch first) on ``x`` (B, T, I): ``lengths`` through ``pack_padded_sequence``;
    ``reverse`` reads each row backwards within its length (reversed in, run, reversed out)."""
    B, T = x.shape[:2]
    if reverse:
        L = lengths if lengths is not None else torch.full((B,), T, device=x.device)
        t = torch.arange(T, device=x.device)[None, :]
        idx = torch.where(t < L[:, None], L[:, None] - 1 - t, t)  # (B, T): a permutation of each row
        x = x.gather(1, idx[..., None].expand_as(x))
    if lengths is None:
        outputs, h_n = gru(x, h0)
    else:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, h_n = gru(packed, h0)  # h0 and h_n in the caller's batch order
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=T)  # zeros past each length
    if reverse:
        outputs = outputs.gather(1, idx[..., None].expand(-1, -1, outputs.shape[-1]))
    return outputs, h_n


# ---------------------------------------------------------------------------- gru_cell


@dataclass(frozen=True)
class CellVariant:
    bias_ih: bool
    bias_hh: bool  # holds b_hn, inside the reset product


def _draw_gru_weights(rng, dtype, I, H, bias_ih: bool, bias_hh: bool) -> dict:
    arrays = {
        "weight_ih": normal(rng, (3 * H, I), dtype, scale=0.5),
        "weight_hh": normal(rng, (3 * H, H), dtype, scale=0.5),
    }
    if bias_ih:
        arrays["bias_ih"] = normal(rng, (3 * H,), dtype, scale=0.5)
    if bias_hh:
        arrays["bias_hh"] = normal(rng, (3 * H,), dtype, scale=0.5)
    return arrays


def _draw_gru_cell(rng, dtype, d):
    I, H = _sizes(d)
    v = d["variant"]
    arrays = {"x": normal(rng, (d["B"], I), dtype), "h": normal(rng, (d["B"], H), dtype)}
    arrays.update(_draw_gru_weights(rng, dtype, I, H, v.bias_ih, v.bias_hh))
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


def _cell_differentiable(d) -> tuple[str, ...]:
    v = d["variant"]
    return (
        ("x", "h", "weight_ih", "weight_hh") + (("bias_ih",) if v.bias_ih else ()) + (("bias_hh",) if v.bias_hh else ())
    )


def _builtin_gru_cell(t, d):
    x, h = t["x"], t["h"]
    I, H = _sizes(d)
    v = d["variant"]
    weights = {"weight_ih": t["weight_ih"], "weight_hh": t["weight_hh"]}
    if v.bias_ih or v.bias_hh:  # nn.GRUCell has both biases or none: an absent one is zeros
        zeros = x.new_zeros(3 * H)
        weights["bias_ih"] = t["bias_ih"] if v.bias_ih else zeros
        weights["bias_hh"] = t["bias_hh"] if v.bias_hh else zeros
    cell = load_weights(nn.GRUCell(I, H, bias=v.bias_ih or v.bias_hh, dtype=x.dtype, device=x.device), weights)
    return cell(x, h), leaf_gradients(twin_leaves(cell, t, "x", "h"))


register(
    Case(
        name="gru_cell",
        kind="op",
        draw=_draw_gru_cell,
        differentiable=_cell_differentiable,
        numpy=_np_gru_cell,
        torch=lambda t, d: (tgru.gru_cell(t["x"], t["h"], *_gru_args(t)), t),
        variants=(
            CellVariant(bias_ih=True, bias_hh=True),
            CellVariant(bias_ih=False, bias_hh=False),
            CellVariant(bias_ih=False, bias_hh=True),
        ),
        uses=_USES,
        builtin=Builtin(name="nn.GRUCell", run=_builtin_gru_cell),
    )
)


# ---------------------------------------------------------------------------- gru (one direction over time)


@dataclass(frozen=True)
class GRUVariant:
    bias: bool
    lengths: bool  # rows of random lengths (some 0), or every row of length T
    reverse: bool  # read each row backwards within its length


def _draw_gru(rng, dtype, d):
    I, H = _sizes(d)
    B, T = d["B"], d["T"]
    v = d["variant"]
    arrays = {"x": normal(rng, (B, T, I), dtype), "h0": normal(rng, (B, H), dtype)}
    arrays.update(_draw_gru_weights(rng, dtype, I, H, v.bias, v.bias))
    if v.lengths:
        arrays["lengths"] = _draw_lengths(rng, B, T)
    return arrays


def _np_gru(a, d):
    (outputs, h_T), cache = F.gru_forward(
        a["x"], a["h0"], *_gru_args(a), lengths=a.get("lengths"), reverse=d["variant"].reverse
    )

    def backward(dout):
        doutputs, dh_n = _split(dout, 1)
        dx, dh0, *grads = F.gru_backward(doutputs, dh_n[0], cache)
        return {"x": dx, "h0": dh0, **_named_grads(grads)}

    return _join(outputs, h_T[None]), backward


def _t_gru(t, d):
    outputs, h_T = tgru.gru(t["x"], t["h0"], *_gru_args(t), lengths=t.get("lengths"), reverse=d["variant"].reverse)
    return _join(outputs, h_T[None]), t


def _builtin_gru(t, d):
    x, h0 = t["x"], t["h0"]
    I, H = _sizes(d)
    v = d["variant"]
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if v.bias else ("weight_ih", "weight_hh")
    gru = nn.GRU(I, H, bias=v.bias, batch_first=True, dtype=x.dtype, device=x.device)
    gru = load_weights(gru, {f"{n}_l0": t[n] for n in names})  # nn.GRU names layer 0 "_l0"
    outputs, h_n = _nn_gru(gru, x, h0[None], t.get("lengths"), reverse=v.reverse)

    def gradients():
        grads = {n.removesuffix("_l0"): p.grad for n, p in gru.named_parameters()}
        return {**grads, "x": x.grad, "h0": h0.grad}

    return _join(outputs, h_n), gradients


register(
    Case(
        name="gru",
        kind="op",
        draw=_draw_gru,
        differentiable=lambda d: (
            ("x", "h0", "weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if d["variant"].bias else ())
        ),
        numpy=_np_gru,
        torch=_t_gru,
        variants=(
            GRUVariant(bias=True, lengths=False, reverse=False),
            GRUVariant(bias=True, lengths=True, reverse=False),
            GRUVariant(bias=True, lengths=True, reverse=True),
            GRUVariant(bias=False, lengths=False, reverse=True),
            GRUVariant(bias=False, lengths=True, reverse=False),
        ),
        uses=_USES,
        builtin=Builtin(name="nn.GRU", run=_builtin_gru, unsupported=_empty_row),
    )
)


# ---------------------------------------------------------------------------- GRUCell


@dataclass(frozen=True)
class GRUCellVariant:
    bias: bool


def _make_np_cell(dtype, d):
    return nt.GRUCell(*_sizes(d), bias=d["variant"].bias, dtype=dtype, rng=np.random.default_rng(0))


def _cell_inputs(rng, dtype, d):
    I, H = _sizes(d)
    return {"x": normal(rng, (d["B"], I), dtype), "h": normal(rng, (d["B"], H), dtype)}


def _builtin_cell_module(t, d):
    x = t["x"]
    a = numpy_arrays(t)
    builtin = bridge.gru_cell_to_torch_builtin(load_weights(_make_np_cell(a["x"].dtype, d), a), device=x.device)
    return builtin(x, t["h"]), leaf_gradients(twin_leaves(builtin, t, "x", "h"))


register(
    module_case(
        name="GRUCell",
        numpy_module=_make_np_cell,
        twin_module=lambda dt, d: tgru.GRUCell(*_sizes(d), bias=d["variant"].bias, dtype=dt),
        draw_inputs=_cell_inputs,
        numpy_forward=lambda m, a, d: m.forward(a["x"], a["h"]),
        twin_forward=lambda m, t, d: m(t["x"], t["h"]),
        inputs=("x", "h"),
        variants=(GRUCellVariant(bias=True), GRUCellVariant(bias=False)),
        uses=_USES,
        builtin=Builtin(name="nn.GRUCell (bridge)", run=_builtin_cell_module),
    )
)


# ---------------------------------------------------------------------------- GRU (the layer)


@dataclass(frozen=True)
class GRULayerVariant:
    bidirectional: bool
    bias: bool
    lengths: bool  # rows of random lengths (some 0), or every row of length T
    h0: bool  # an initial state given, or zeros


def _make_np_gru(dtype, d):
    v = d["variant"]
    return nt.GRU(*_sizes(d), bidirectional=v.bidirectional, bias=v.bias, dtype=dtype, rng=np.random.default_rng(0))


def _layer_inputs(rng, dtype, d):
    I, H = _sizes(d)
    B, T = d["B"], d["T"]
    v = d["variant"]
    D = 2 if v.bidirectional else 1
    arrays = {"x": normal(rng, (B, T, I), dtype)}
    if v.h0:
        arrays["h0"] = normal(rng, (D, B, H), dtype)
    if v.lengths:
        arrays["lengths"] = _draw_lengths(rng, B, T)
    return arrays


def _layer_input_names(d) -> tuple[str, ...]:
    return ("x", "h0") if d["variant"].h0 else ("x",)


def _np_gru_layer(a, d):
    gru = load_weights(_make_np_gru(float_dtype(a), d), a)
    (outputs, h_n), cache = gru.forward(a["x"], a.get("h0"), a.get("lengths"))

    def backward(dout):
        gru.zero_grad()
        dx, dh0 = gru.backward(*_split(dout, gru.num_directions), cache)
        inputs = {"x": dx, "h0": dh0} if "h0" in a else {"x": dx}
        return module_grads(gru, **inputs)

    return _join(outputs, h_n), backward


def _t_gru_layer(t, d):
    x = t["x"]
    v = d["variant"]
    gru = tgru.GRU(*_sizes(d), bidirectional=v.bidirectional, bias=v.bias, dtype=x.dtype).to(x.device)
    gru = load_weights(gru, t)
    outputs, h_n = gru(x, t.get("h0"), t.get("lengths"))
    return _join(outputs, h_n), twin_leaves(gru, t, *_layer_input_names(d))


def _builtin_gru_layer(t, d):
    x = t["x"]
    a = numpy_arrays(t)
    builtin = bridge.gru_to_torch_builtin(load_weights(_make_np_gru(a["x"].dtype, d), a), device=x.device)
    outputs, h_n = _nn_gru(builtin, x, t.get("h0"), t.get("lengths"))
    return _join(outputs, h_n), leaf_gradients(twin_leaves(builtin, t, *_layer_input_names(d)))


register(
    Case(
        name="GRU",
        kind="module",
        draw=draw_module(_make_np_gru, _layer_inputs),
        differentiable=_layer_input_names,
        all_parameters=True,
        numpy=_np_gru_layer,
        torch=_t_gru_layer,
        variants=(
            GRULayerVariant(bidirectional=False, bias=True, lengths=False, h0=True),
            GRULayerVariant(bidirectional=False, bias=False, lengths=True, h0=True),
            GRULayerVariant(bidirectional=True, bias=True, lengths=True, h0=True),
            GRULayerVariant(bidirectional=True, bias=False, lengths=False, h0=False),
            GRULayerVariant(bidirectional=True, bias=True, lengths=True, h0=False),
        ),
        uses=_USES,
        builtin=Builtin(name="nn.GRU (bridge)", run=_builtin_gru_layer, unsupported=_empty_row),
    )
)
