r"""SiLU and the SwiGLU gate: the activation of Llama's feed-forward.

Shape legend: ``...`` any leading dimensions, ``F`` the feed-forward width.

Llama's feed-forward is ``down(silu(gate(x)) * up(x))`` (Shazeer, "GLU Variants Improve
Transformer", 2020): two projections of the same input, one passed through SiLU and used as
a soft, per-unit gate on the other. This file holds the two element-wise pieces,

* :func:`silu_forward`: :math:`\mathrm{silu}(x) = x\,\sigma(x)`, as ``torch.nn.functional.silu``;
* :func:`swiglu_forward`: :math:`h = \mathrm{silu}(g) \odot u` of the two projections,

and ``modules/llama_layers.SwiGLUFeedForward`` adds the three linear layers around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from .checks import check_dout, check_float_array, check_same_dtype, check_shape
from .intermediates import gradient_at


@dataclass(frozen=True)
class SiluCache:
    x: np.ndarray  # (...) the input
    sigmoid: np.ndarray  # (...) sigma(x), computed once: the forward and the backward both use it


def silu_forward(x: np.ndarray) -> tuple[np.ndarray, SiluCache]:
    r"""SiLU (swish): :math:`y = x\,\sigma(x) = x / (1 + e^{-x})`; shape and dtype kept.

    :math:`\sigma` is SciPy's ``expit``, which does not overflow for large ``|x|`` and keeps float32.
    """
    check_float_array("x", x)
    s = expit(x).astype(x.dtype, copy=False)  # (...) sigma(x)
    return x * s, SiluCache(x=x, sigmoid=s)


def silu_backward(dout: np.ndarray, cache: SiluCache) -> np.ndarray:
    r"""Derivative of SiLU.

    Forward :math:`y = x\,\sigma(x)`; with :math:`\sigma' = \sigma(1 - \sigma)`,

    .. math::
        dx = dy\,\big(\sigma(x) + x\,\sigma(x)(1 - \sigma(x))\big)
           = dy\,\sigma(x)\,\big(1 + x\,(1 - \sigma(x))\big).
    """
    x, s = cache.x, cache.sigmoid
    check_dout(dout, x.shape, x.dtype)
    return dout * (s * (1.0 + x * (1.0 - s)))


@dataclass(frozen=True)
class SwiGLUCache:
    up: np.ndarray  # (..., F) the gated input u
    silu_gate: np.ndarray  # (..., F) silu(g), the gate itself
    silu: SiluCache  # g and sigma(g), for the derivative of the gate


def swiglu_forward(gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, SwiGLUCache]:
    r"""The gated product :math:`h = \mathrm{silu}(g) \odot u`.

    Parameters
    ----------
    gate : ndarray, shape (..., F)
        :math:`g`, the output of ``gate_proj``.
    up : ndarray, shape (..., F)
        :math:`u`, the output of ``up_proj``; same shape and dtype as ``gate``.

    Returns
    -------
    h : ndarray, shape (..., F)
    cache : SwiGLUCache
    """
    check_float_array("gate", gate)
    check_float_array("up", up)
    check_shape("up", up, gate.shape)
    check_same_dtype(gate=gate, up=up)
    a, c_silu = silu_forward(gate)  # (..., F)
    return a * up, SwiGLUCache(up=up, silu_gate=a, silu=c_silu)


def swiglu_backward(dout: np.ndarray, cache: SwiGLUCache) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients of :math:`h = \mathrm{silu}(g) \odot u`: ``(dgate, dup)``.

    A product rule, element by element:

    .. math:: du = dh \odot \mathrm{silu}(g),\qquad dg = \mathrm{silu}'(g) \odot (dh \odot u).

    The gate passes gradient to :math:`u` in proportion to how open it is, and receives
    gradient in proportion to what it gates.
    """
    check_dout(dout, cache.up.shape, cache.up.dtype)
    # in the forward pass this was: h = a * up, a = silu(gate)
    dup = dout * cache.silu_gate  # (..., F)
    dgate = silu_backward(gradient_at("a", dout * cache.up), cache.silu)  # (..., F) through a = silu(gate)
    return dgate, dup
