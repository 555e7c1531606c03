r"""Gated recurrent unit: one step (``torch.nn.GRUCell``) and a loop over time (``torch.nn.GRU``).

Shape legend: ``B`` batch, ``T`` time steps, ``I`` input features, ``H`` hidden size
(in this file ``H`` is the hidden width, not a number of heads).

Weights are stacked by gate on their rows in PyTorch's order **r, z, n**:
``weight_ih`` (3H, I) is ``[W_ir; W_iz; W_in]``, ``weight_hh`` (3H, H) is
``[W_hr; W_hz; W_hn]``, and ``bias_ih`` / ``bias_hh`` (3H,) likewise. The step is
the one ``torch.nn.GRU`` documents:

.. math::
    r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
    z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
    n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
    h' &= (1 - z) \odot n + z \odot h

``b_hn`` sits *inside* the reset-gate product, so the two bias vectors are not
redundant: ``b_ir + b_hr`` could be merged, ``b_in`` and ``b_hn`` cannot
(``parity_tests/test_gru.py::test_fact_gru_gate_order_and_b_hn_inside_the_reset_product``).

Variable lengths (``lengths``, as ``pack_padded_sequence``): row ``b`` runs its
first ``lengths[b]`` steps; afterwards its hidden state is frozen and its outputs
are zero. With ``reverse=True`` each row is read backwards *from its own last real
token*, which is what the backward direction of a bidirectional ``nn.GRU`` does
on a packed batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_bool, check_float_array, check_int_array, check_same_dtype, check_shape
from .intermediates import gradient_at


def _sigmoid(a: np.ndarray) -> np.ndarray:
    # exp of -|a| only: no overflow for large |a|, and the dtype of ``a`` is kept.
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_weights(
    weight_ih: np.ndarray, weight_hh: np.ndarray, bias_ih: np.ndarray | None, bias_hh: np.ndarray | None
) -> int:
    """Check the stacked gate weights; return the hidden size H."""
    check_float_array("weight_hh", weight_hh)
    if weight_hh.ndim != 2 or weight_hh.shape[0] != 3 * weight_hh.shape[1]:
        raise ValueError(f"weight_hh: expected shape (3H, H), rows stacked [r; z; n], got {weight_hh.shape}")
    H = weight_hh.shape[1]
    check_float_array("weight_ih", weight_ih)
    if weight_ih.ndim != 2 or weight_ih.shape[0] != 3 * H:
        raise ValueError(
            f"weight_ih: expected shape (3H, I) = ({3 * H}, I) (H={H} from weight_hh), got {weight_ih.shape}"
        )
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None:
            check_float_array(name, b)
            check_shape(name, b, (3 * H,))
    return H


def _check_grad(name: str, g: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An upstream gradient: ``None`` means zero; otherwise the forward output's shape and dtype."""
    if g is None:
        return np.zeros(shape, dtype)
    check_float_array(name, g)
    if g.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of the forward pass), got {g.dtype}")
    check_shape(name, g, shape)
    return g


def _step(
    gi: np.ndarray, h: np.ndarray, weight_hh: np.ndarray, bias_hh: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One GRU step from the input projections ``gi = x W_ih^T + b_ih`` (B, 3H).

    Returns ``h_new, r, z, n, hn``, each (B, H); ``hn = W_hn h + b_hn`` is kept
    because the backward needs it for ``dr``.
    """
    H = h.shape[-1]
    gh = h @ weight_hh.T  # (B, 3H) the three hidden projections in one matmul
    if bias_hh is not None:
        gh += bias_hh
    rz = _sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])  # (B, 2H) both sigmoid gates in one pass
    r, z = rz[:, :H], rz[:, H:]  # (B, H) reset gate, (B, H) update gate
    hn = gh[:, 2 * H :]  # (B, H) W_hn h + b_hn: b_hn inside the reset product
    n = np.tanh(gi[:, 2 * H :] + r * hn)  # (B, H) candidate
    # (1 - z) n + z h, written as torch's kernel writes it: n + z (h - n).
    h_new = n + z * (h - n)  # (B, H)
    return h_new, r, z, n, hn


def _step_backward(
    dh_new: np.ndarray, h: np.ndarray, r: np.ndarray, z: np.ndarray, n: np.ndarray, hn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undo one step: gradients of the stacked pre-activations ``gi``, ``gh`` (..., 3H) and the direct path to ``h``."""
    # in the forward pass this was: h' = n + z (h - n)
    dz = gradient_at("z", dh_new * (h - n))  # (..., H)
    dn = gradient_at("n", dh_new * (1 - z))  # (..., H)
    dh_direct = dh_new * z  # (..., H) the path that skips every gate
    # n = tanh(a_n), a_n = gi_n + r * hn
    da_n = dn * (1 - n * n)  # (..., H)
    dr = gradient_at("r", da_n * hn)  # (..., H)
    dhn = da_n * r  # (..., H) reaches W_hn h + b_hn through the reset gate
    # r = sigmoid(a_r), z = sigmoid(a_z); a_r, a_z are sums of an input and a hidden projection
    da_r = dr * r * (1 - r)  # (..., H)
    da_z = dz * z * (1 - z)  # (..., H)
    dgi = np.concatenate([da_r, da_z, da_n], axis=-1)  # (..., 3H)
    dgh = np.concatenate([da_r, da_z, dhn], axis=-1)  # (..., 3H)
    return dgi, dgh, dh_direct


# ---------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class GRUCellCache:
    x: np.ndarray  # (B, I) for dweight_ih
    h: np.ndarray  # (B, H) for dweight_hh and dz
    weight_ih: np.ndarray  # (3H, I) for dx
    weight_hh: np.ndarray  # (3H, H) for dh
    r: np.ndarray  # (B, H) reset gate
    z: np.ndarray  # (B, H) update gate
    n: np.ndarray  # (B, H) candidate
    hn: np.ndarray  # (B, H) W_hn h + b_hn (the pre-activations themselves are not kept)
    has_bias_ih: bool
    has_bias_hh: bool


def gru_cell_forward(
    x: np.ndarray,
    h: np.ndarray | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
) -> tuple[np.ndarray, GRUCellCache]:
    """One GRU step, as ``torch.nn.GRUCell``.

    Parameters
    ----------
    x : ndarray, shape (B, I)
    h : ndarray, shape (B, H), or None for zeros
    weight_ih : ndarray, shape (3H, I), rows ``[W_ir; W_iz; W_in]``
    weight_hh : ndarray, shape (3H, H), rows ``[W_hr; W_hz; W_hn]``
    bias_ih, bias_hh : ndarray, shape (3H,), optional (each one independently)

    Returns
    -------
    h_next : ndarray, shape (B, H)
    cache : GRUCellCache
    """
    H = _check_weights(weight_ih, weight_hh, bias_ih, bias_hh)
    check_float_array("x", x)
    if x.ndim != 2 or x.shape[1] != weight_ih.shape[1]:
        raise ValueError(f"x: expected shape (B, I) with I={weight_ih.shape[1]} (from weight_ih), got {x.shape}")
    if h is None:
        h = np.zeros((x.shape[0], H), x.dtype)
    check_float_array("h", h)
    check_shape("h", h, (x.shape[0], H))
    check_same_dtype(x=x, h=h, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)

    gi = x @ weight_ih.T  # (B, 3H) the three input projections in one matmul
    if bias_ih is not None:
        gi += bias_ih
    h_next, r, z, n, hn = _step(gi, h, weight_hh, bias_hh)
    cache = GRUCellCache(x, h, weight_ih, weight_hh, r, z, n, hn, bias_ih is not None, bias_hh is not None)
    return h_next, cache


def gru_cell_backward(
    dout: np.ndarray, cache: GRUCellCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of one GRU step.

    Forward, with :math:`g^i = x W_{ih}^T + b_{ih}` and :math:`g^h = h W_{hh}^T + b_{hh}`
    split into their r, z, n thirds:

    .. math::
        r = \sigma(g^i_r + g^h_r),\quad z = \sigma(g^i_z + g^h_z),\quad
        n = \tanh(g^i_n + r \odot g^h_n),\quad h' = n + z \odot (h - n)

    Backward, with :math:`\delta = dh'`:

    .. math::
        dz &= \delta \odot (h - n),\quad dn = \delta \odot (1 - z) \\
        da_n &= dn \odot (1 - n^2),\quad dr = da_n \odot g^h_n \\
        da_r &= dr \odot r(1-r),\quad da_z = dz \odot z(1-z) \\
        dg^i &= [da_r;\ da_z;\ da_n],\quad dg^h = [da_r;\ da_z;\ da_n \odot r] \\
        dx &= dg^i W_{ih},\quad dh = dg^h W_{hh} + \delta \odot z \\
        dW_{ih} &= (dg^i)^T x,\quad dW_{hh} = (dg^h)^T h,\quad
        db_{ih} = \textstyle\sum_b dg^i,\quad db_{hh} = \textstyle\sum_b dg^h

    The n-third of :math:`dg^h` carries the factor :math:`r` because
    :math:`b_{hn}` and :math:`W_{hn} h` sit inside the reset product.

    Returns
    -------
    dx : ndarray, shape (B, I)
    dh : ndarray, shape (B, H)
    dweight_ih : ndarray, shape (3H, I)
    dweight_hh : ndarray, shape (3H, H)
    dbias_ih, dbias_hh : ndarray, shape (3H,), or None where the forward had none
    """
    dout = _check_grad("dout", dout, cache.h.shape, cache.h.dtype)
    dgi, dgh, dh_direct = _step_backward(dout, cache.h, cache.r, cache.z, cache.n, cache.hn)  # (B, 3H) each
    dx = dgi @ cache.weight_ih  # (B, I)
    dh = dgh @ cache.weight_hh + dh_direct  # (B, H)
    dweight_ih = dgi.T @ cache.x  # (3H, I)
    dweight_hh = dgh.T @ cache.h  # (3H, H)
    dbias_ih = dgi.sum(axis=0) if cache.has_bias_ih else None  # (3H,)
    dbias_hh = dgh.sum(axis=0) if cache.has_bias_hh else None  # (3H,)
    return dx, dh, dweight_ih, dweight_hh, dbias_ih, dbias_hh


# ---------------------------------------------------------------------------- over time


@dataclass(frozen=True)
class GRUCache:
    x: np.ndarray  # (B, T, I) the input in processing order (each row reversed within its length if reverse)
    h_prev: np.ndarray  # (B, T, H) the state entering each step, for dweight_hh and dz
    r: np.ndarray  # (B, T, H)
    z: np.ndarray  # (B, T, H)
    n: np.ndarray  # (B, T, H)
    hn: np.ndarray  # (B, T, H) W_hn h + b_hn per step
    weight_ih: np.ndarray  # (3H, I)
    weight_hh: np.ndarray  # (3H, H)
    mask: np.ndarray | None  # (B, T) bool, True = a real step; None = every step is real
    order: np.ndarray | None  # (B, T) int, the per-row time permutation of reverse=True (its own inverse)
    has_bias_ih: bool
    has_bias_hh: bool


def _check_lengths(lengths: object, B: int, T: int) -> np.ndarray:
    check_int_array("lengths", lengths)
    check_shape("lengths", lengths, (B,))
    if B and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(
            f"lengths: expected values in [0, T] = [0, {T}], got min {lengths.min()} and max {lengths.max()}"
        )
    return lengths


def _reverse_order(lengths: np.ndarray | None, B: int, T: int) -> np.ndarray:
    """Per-row time index that reads each row backwards within its length: (B, T).

    ``order[b, s] = lengths[b] - 1 - s`` for ``s < lengths[b]``, and ``s`` (padding
    stays in place) after. Applying it twice is the identity.
    """
    s = np.arange(T)[None, :]  # (1, T)
    L = np.full((B, 1), T) if lengths is None else np.asarray(lengths).reshape(B, 1)  # (B, 1)
    return np.where(s < L, L - 1 - s, s)  # (B, T)


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    reverse: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray], GRUCache]:
    """Run a GRU over time (batch first), as one direction of ``torch.nn.GRU(batch_first=True)``.

    Parameters
    ----------
    x : ndarray, shape (B, T, I)
    h0 : ndarray, shape (B, H), or None for zeros
    weight_ih, weight_hh, bias_ih, bias_hh : as in :func:`gru_cell_forward`
    lengths : int ndarray, shape (B,), optional
        Real steps per row, each in ``[0, T]``. Row ``b`` stops after
        ``lengths[b]`` steps: its state is frozen and ``outputs[b, t]`` is zero for
        ``t >= lengths[b]``, as with ``pack_padded_sequence``. (PyTorch's packing
        rejects a length of 0; here it simply gives ``h_T = h0`` and zero outputs.)
    reverse : bool
        Read each row from its last real step back to step 0. ``outputs[b, t]`` is
        still the state after reading position ``t``.

    Returns
    -------
    (outputs, h_T) : ndarray, shape (B, T, H), and ndarray, shape (B, H)
        Every step's state, and the state after each row's last real step. The
        pair is the ``out`` of the ``(out, cache)`` convention, like
        ``output, h_n = nn.GRU(...)(x)``: ``(outputs, h_T), cache = gru_forward(...)``.
    cache : GRUCache
    """
    H = _check_weights(weight_ih, weight_hh, bias_ih, bias_hh)
    check_float_array("x", x)
    if x.ndim != 3 or x.shape[2] != weight_ih.shape[1]:
        raise ValueError(f"x: expected shape (B, T, I) with I={weight_ih.shape[1]} (from weight_ih), got {x.shape}")
    B, T, I = x.shape
    if h0 is None:
        h0 = np.zeros((B, H), x.dtype)
    check_float_array("h0", h0)
    check_shape("h0", h0, (B, H))
    dtype = check_same_dtype(x=x, h0=h0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    check_bool("reverse", reverse)
    mask = None
    if lengths is not None:
        _check_lengths(lengths, B, T)
        mask = np.arange(T)[None, :] < lengths[:, None]  # (B, T)
    order = _reverse_order(lengths, B, T) if reverse else None
    if order is not None:
        x = np.take_along_axis(x, order[:, :, None], axis=1)  # (B, T, I) rows reversed within their lengths

    # Every input projection at once: one (B*T, I) @ (I, 3H) matmul; only h @ W_hh^T is sequential.
    gi = (x.reshape(B * T, I) @ weight_ih.T).reshape(B, T, 3 * H)  # (B, T, 3H)
    if bias_ih is not None:
        gi += bias_ih
    zero = dtype.type(0)
    outputs = np.zeros((B, T, H), dtype)
    h_prev, r, z, n, hn = (np.empty((B, T, H), dtype) for _ in range(5))
    h = h0
    for t in range(T):
        h_prev[:, t] = h
        h_new, r[:, t], z[:, t], n[:, t], hn[:, t] = _step(gi[:, t], h, weight_hh, bias_hh)
        if mask is None:
            outputs[:, t] = h = h_new
        else:
            m = mask[:, t, None]  # (B, 1) rows past their length keep their state
            h = np.where(m, h_new, h)  # (B, H)
            outputs[:, t] = np.where(m, h, zero)
    if order is not None:
        outputs = np.take_along_axis(outputs, order[:, :, None], axis=1)  # back to reading positions
    cache = GRUCache(
        x, h_prev, r, z, n, hn, weight_ih, weight_hh, mask, order, bias_ih is not None, bias_hh is not None
    )
    return (outputs, h), cache


def gru_backward(
    doutputs: np.ndarray | None, dh_T: np.ndarray | None, cache: GRUCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Backpropagation through time for :func:`gru_forward`.

    Forward, per real step :math:`t` (with :math:`m_t` = "step t is real"):
    :math:`\tilde h_t = \mathrm{cell}(x_t, h_{t-1})`,
    :math:`h_t = m_t\,\tilde h_t + (1 - m_t)\,h_{t-1}`, :math:`o_t = m_t\,h_t`.

    Backward, from :math:`t = T-1` down to 0, with :math:`\delta` the gradient
    reaching :math:`h_t` (starting at :math:`dh_T`):

    .. math::
        \delta &\leftarrow \delta + m_t\,do_t \\
        dg^i_t, dg^h_t, \delta^{z}_t &= \text{cell backward of } m_t\,\delta
            \text{ (see :func:`gru_cell_backward`)} \\
        \delta &\leftarrow m_t\,(dg^h_t W_{hh} + \delta^{z}_t) + (1 - m_t)\,\delta

    and, once the loop is done, over every step at once:
    :math:`dx_t = dg^i_t W_{ih}`, :math:`dW_{ih} = \sum_t (dg^i_t)^T x_t`,
    :math:`dW_{hh} = \sum_t (dg^h_t)^T h_{t-1}`, :math:`db = \sum_{b,t} dg`;
    :math:`dh_0` is the final :math:`\delta`. Padded steps pass :math:`\delta`
    through untouched and contribute nothing to the weights.

    Parameters
    ----------
    doutputs : ndarray, shape (B, T, H), or None for zeros
        Entries at padded positions are ignored (those outputs are constant zeros).
    dh_T : ndarray, shape (B, H), or None for zeros
    cache : GRUCache

    Returns
    -------
    dx : ndarray, shape (B, T, I)
    dh0 : ndarray, shape (B, H)
    dweight_ih : ndarray, shape (3H, I)
    dweight_hh : ndarray, shape (3H, H)
    dbias_ih, dbias_hh : ndarray, shape (3H,), or None where the forward had none
    """
    x, h_prev, mask, order = cache.x, cache.h_prev, cache.mask, cache.order
    B, T, H = h_prev.shape
    I = x.shape[2]
    dtype = h_prev.dtype
    doutputs = _check_grad("doutputs", doutputs, (B, T, H), dtype)
    dh = _check_grad("dh_T", dh_T, (B, H), dtype).copy()
    if order is not None:
        doutputs = np.take_along_axis(doutputs, order[:, :, None], axis=1)  # into processing order
    zero = dtype.type(0)
    if mask is not None:
        doutputs = np.where(mask[:, :, None], doutputs, zero)  # padded outputs are constants

    dgi = np.empty((B, T, 3 * H), dtype)
    dgh = np.empty((B, T, 3 * H), dtype)
    for t in reversed(range(T)):
        dh += doutputs[:, t]  # (B, H) from the output at t, and from the step after t
        # in the forward pass this was: h_t = where(m_t, cell(x_t, h_{t-1}), h_{t-1})
        dcell = dh if mask is None else np.where(mask[:, t, None], dh, zero)  # (B, H)
        dgi[:, t], dgh[:, t], dh_direct = _step_backward(
            dcell, h_prev[:, t], cache.r[:, t], cache.z[:, t], cache.n[:, t], cache.hn[:, t]
        )
        dh_through = dgh[:, t] @ cache.weight_hh + dh_direct  # (B, H)
        dh = dh_through if mask is None else np.where(mask[:, t, None], dh_through, dh)

    # The non-recurrent products over every step at once.
    dgi_2d = dgi.reshape(B * T, 3 * H)  # (B*T, 3H)
    dgh_2d = dgh.reshape(B * T, 3 * H)  # (B*T, 3H)
    dx = (dgi_2d @ cache.weight_ih).reshape(B, T, I)  # (B, T, I)
    dweight_ih = dgi_2d.T @ x.reshape(B * T, I)  # (3H, I)
    dweight_hh = dgh_2d.T @ h_prev.reshape(B * T, H)  # (3H, H)
    dbias_ih = dgi_2d.sum(axis=0) if cache.has_bias_ih else None  # (3H,)
    dbias_hh = dgh_2d.sum(axis=0) if cache.has_bias_hh else None  # (3H,)
    if order is not None:
        dx = np.take_along_axis(dx, order[:, :, None], axis=1)  # back to reading positions
    return dx, dh, dweight_ih, dweight_hh, dbias_ih, dbias_hh
