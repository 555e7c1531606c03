r"""Classic attention of RNN encoder–decoders: additive (Bahdanau) and multiplicative (Luong).

A decoder state ``q`` attends over the encoder states: one score per source
position, a softmax over the allowed positions, and the weighted sum of the
values is the context vector.

=========  ==========================================================  =========================
score      :math:`e_s`                                                  paper
=========  ==========================================================  =========================
additive   :math:`v_a^T \tanh(W_q q + W_k k_s)`                         Bahdanau et al., 2015
dot        :math:`q^T k_s`                                              Luong et al., 2015
general    :math:`q^T W k_s`                                            Luong et al., 2015
concat     :math:`v_c^T \tanh(W_c [q; k_s])`                            Luong et al., 2015
=========  ==========================================================  =========================

``concat`` is the additive score with :math:`W_c = [W_q \mid W_k]` split by
columns, and is computed that way. No score is scaled by :math:`1/\sqrt{D}`
(as in both papers).

Shape legend: ``B`` batch, ``T`` decoder steps (an optional axis: ``q`` is
``(B, Dq)`` for one step or ``(B, T, Dq)`` for several steps at once, e.g. under
teacher forcing), ``S`` source length, ``Dq`` query (decoder state) width, ``Dk``
key (encoder state) width, ``Dv`` value width, ``A`` attention (hidden) width.
Weights follow ``torch.nn.Linear``'s ``(out, in)`` layout.

Masks
-----
Boolean, ``True`` = may attend, as everywhere in the package: the source padding
mask ``(B, S)`` (shared by every decoder step), or, when ``q`` has a time axis,
anything of three dimensions broadcastable to ``(B, T, S)``.

A query row whose every source position is masked has no softmax (``0/0``);
its weights are defined as all zeros, so its context is zero and no gradient
flows through it -- exactly as in :mod:`numpy_transformer.functional.attention`.
A masked position gets weight exactly 0, so its key and value change nothing --
provided they are finite (``0 * nan`` is ``nan``, in PyTorch too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attention import masked_softmax
from .checks import check_broadcastable, check_dout, check_float_array, check_same_dtype
from .intermediates import gradient_at
from .linear import LinearCache, linear_backward, linear_forward
from .softmax import SoftmaxCache, softmax_backward, softmax_forward

LUONG_SCORES = ("dot", "general", "concat")


# ---------------------------------------------------------------------------- shared parts


@dataclass(frozen=True)
class _Inputs:
    q: np.ndarray  # (B, T, Dq) -- a single step gets T = 1
    allowed: np.ndarray | None  # (B, T, S) bool, or None when nothing is masked
    has_time: bool  # False: the caller's q was (B, Dq); outputs drop the T axis
    dtype: np.dtype


def _check_inputs(q: object, k: object, v: object, mask: object) -> _Inputs:
    """Check ``q`` (B, Dq) or (B, T, Dq), ``k`` (B, S, Dk), ``v`` (B, S, Dv) and the mask."""
    check_float_array("q", q)
    check_float_array("k", k)
    check_float_array("v", v)
    if q.ndim not in (2, 3):
        raise ValueError(f"q: expected shape (B, Dq) or (B, T, Dq), got {q.shape}")
    B = q.shape[0]
    if k.ndim != 3 or k.shape[0] != B:
        raise ValueError(f"k: expected shape ({B}, S, Dk) (batch of q {q.shape}), got {k.shape}")
    S = k.shape[1]
    if S < 1:
        raise ValueError(f"k: expected at least one source position, got shape {k.shape}")
    if v.ndim != 3 or v.shape[:2] != k.shape[:2]:
        raise ValueError(f"v: expected shape {k.shape[:2] + ('Dv',)} to match k {k.shape}, got {v.shape}")
    dtype = check_same_dtype(q=q, k=k, v=v)
    has_time = q.ndim == 3
    q3 = q if has_time else q[:, None, :]  # (B, T, Dq)
    T = q3.shape[1]
    allowed = None
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            raise TypeError(
                f"mask: expected a bool ndarray (True = may attend), got {getattr(mask, 'dtype', type(mask).__name__)}"
            )
        if mask.ndim == 2:
            check_broadcastable("mask", mask, (B, S))
            allowed = np.broadcast_to(mask[:, None, :], (B, T, S))  # one source mask for every step
        elif mask.ndim == 3 and has_time:
            check_broadcastable("mask", mask, (B, T, S))
            allowed = np.broadcast_to(mask, (B, T, S))
        else:
            expected = f"(B, S) = ({B}, {S})" + (
                f" or broadcastable to (B, T, S) = ({B}, {T}, {S})" if has_time else ""
            )
            raise ValueError(f"mask: expected shape {expected}, got {mask.shape}")
    return _Inputs(q=q3, allowed=allowed, has_time=has_time, dtype=dtype)


def _attend(scores: np.ndarray, allowed: np.ndarray | None, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked softmax over S, then the weighted sum of the values: (weights (B, T, S), context (B, T, Dv))."""
    if allowed is None:
        weights, _ = softmax_forward(scores, axis=-1)  # (B, T, S)
    else:
        weights = masked_softmax(scores, allowed)  # (B, T, S), zeros on a fully masked row
    context = weights @ v  # (B, T, Dv)
    return weights, context


def _sum_outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^T b`` per batch element: (B, T, S), (B, T, D) -> (B, S, D), a sum of T outer products.

    For a single decoder step (T = 1) this is one outer product, done by
    broadcasting: NumPy's ``matmul`` leaves BLAS when the contracted dimension is 1
    and runs about five times slower.
    """
    if a.shape[1] == 1:
        return a[:, 0, :, None] * b  # (B, S, 1) * (B, 1, D) -> (B, S, D)
    return np.swapaxes(a, -1, -2) @ b  # (B, S, D)


def _attend_backward(dcontext: np.ndarray, weights: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward of :func:`_attend`: (dscores (B, T, S), dv (B, S, Dv))."""
    # context = weights @ v
    dweights = gradient_at("weights", dcontext @ np.swapaxes(v, -1, -2))  # (B, T, S)
    dv = _sum_outer(weights, dcontext)  # (B, S, Dv), summed over the decoder steps
    # weights = softmax(scores); a masked key has weight 0, so its score gradient is 0
    dscores = gradient_at("scores", softmax_backward(dweights, SoftmaxCache(y=weights, axis=-1)))  # (B, T, S)
    return dscores, dv


def _check_weight(name: str, w: object, shape: tuple[int | str, ...]) -> None:
    check_float_array(name, w)
    if w.ndim != len(shape) or any(isinstance(n, int) and n != m for n, m in zip(shape, w.shape, strict=False)):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {w.shape}")


def _user_shape(x: np.ndarray, has_time: bool) -> np.ndarray:
    """(B, T, ...) -> (B, ...) when the caller passed a single step."""
    return x if has_time else x[:, 0]


# ---------------------------------------------------------------------------- the additive score


@dataclass(frozen=True)
class AdditiveScoreCache:
    q_proj: LinearCache  # q (B, T, Dq) and W_q (A, Dq)
    k_proj: LinearCache  # k (B, S, Dk) and W_k (A, Dk)
    v_a: np.ndarray  # (A,)
    h: np.ndarray  # (B, T, S, A) tanh(W_q q_t + W_k k_s): the B*T*S*A activation additive attention costs


def _additive_scores(
    q: np.ndarray, k: np.ndarray, w_q: np.ndarray, w_k: np.ndarray, v_a: np.ndarray
) -> tuple[np.ndarray, AdditiveScoreCache]:
    """Scores :math:`e_{ts} = v_a^T \\tanh(W_q q_t + W_k k_s)`, shape (B, T, S)."""
    qp, cq = linear_forward(q, w_q)  # (B, T, A)
    kp, ck = linear_forward(k, w_k)  # (B, S, A), independent of the decoder step
    h = np.tanh(qp[:, :, None, :] + kp[:, None, :, :])  # (B, T, S, A)
    scores = h @ v_a  # (B, T, S)
    return scores, AdditiveScoreCache(q_proj=cq, k_proj=ck, v_a=v_a, h=h)


def _additive_scores_backward(
    dscores: np.ndarray, cache: AdditiveScoreCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return dq (B, T, Dq), dk (B, S, Dk), dw_q (A, Dq), dw_k (A, Dk), dv_a (A,)."""
    h, v_a = cache.h, cache.v_a
    # scores = h @ v_a
    dv_a = np.tensordot(dscores, h, axes=([0, 1, 2], [0, 1, 2]))  # (A,)
    dh = gradient_at("h", dscores[..., None] * v_a)  # (B, T, S, A)
    # h = tanh(z), z = qp_t + kp_s: tanh' = 1 - h^2, and z broadcasts qp over S and kp over T
    dz = gradient_at("z", dh * (1 - h * h))  # (B, T, S, A)
    dqp = dz.sum(axis=2)  # (B, T, A)
    dkp = dz.sum(axis=1)  # (B, S, A)
    # qp = q W_q^T, kp = k W_k^T
    dq, dw_q, _ = linear_backward(dqp, cache.q_proj)
    dk, dw_k, _ = linear_backward(dkp, cache.k_proj)
    return dq, dk, dw_q, dw_k, dv_a


def additive_attention_scores(q: np.ndarray, keys_proj: np.ndarray, w_q: np.ndarray, v_a: np.ndarray) -> np.ndarray:
    r"""Additive scores from precomputed key projections: :math:`e_{s} = v_a^T \tanh(W_q q + \text{keys\_proj}_s)`.

    The classic optimisation: ``keys_proj = k @ w_k.T`` (B, S, A) does not depend on
    the decoder step, so a decoder computes it once per source sentence and each
    step then costs only :math:`W_q q` and the ``(B, S, A)`` tanh. Forward only
    (for inference and inspection); :func:`additive_attention_forward` gives the
    same scores with a backward.

    Parameters
    ----------
    q : ndarray, shape (B, Dq) or (B, T, Dq)
    keys_proj : ndarray, shape (B, S, A)
    w_q : ndarray, shape (A, Dq)
    v_a : ndarray, shape (A,)

    Returns
    -------
    scores : ndarray, shape (B, S) or (B, T, S), before the softmax
    """
    check_float_array("q", q)
    check_float_array("keys_proj", keys_proj)
    if q.ndim not in (2, 3):
        raise ValueError(f"q: expected shape (B, Dq) or (B, T, Dq), got {q.shape}")
    if keys_proj.ndim != 3 or keys_proj.shape[0] != q.shape[0]:
        raise ValueError(f"keys_proj: expected shape ({q.shape[0]}, S, A), got {keys_proj.shape}")
    A, Dq = keys_proj.shape[2], q.shape[-1]
    _check_weight("w_q", w_q, (A, Dq))
    _check_weight("v_a", v_a, (A,))
    check_same_dtype(q=q, keys_proj=keys_proj, w_q=w_q, v_a=v_a)
    q3 = q if q.ndim == 3 else q[:, None, :]  # (B, T, Dq)
    qp, _ = linear_forward(q3, w_q)  # (B, T, A)
    scores = np.tanh(qp[:, :, None, :] + keys_proj[:, None, :, :]) @ v_a  # (B, T, S)
    return _user_shape(scores, q.ndim == 3)


@dataclass(frozen=True)
class AdditiveAttentionCache:
    score: AdditiveScoreCache
    v: np.ndarray  # (B, S, Dv)
    weights: np.ndarray  # (B, S) or (B, T, S): the attention probabilities
    has_time: bool


def additive_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    w_q: np.ndarray,
    w_k: np.ndarray,
    v_a: np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, AdditiveAttentionCache]:
    r"""Additive (Bahdanau) attention.

    .. math::
        e_s = v_a^T \tanh(W_q q + W_k k_s),\quad
        w = \mathrm{softmax}_s(e)\ \text{(masked)},\quad
        c = \textstyle\sum_s w_s v_s

    :math:`W_k k_s` does not depend on the decoder step: over a decoding loop it is
    computed once per source sentence (see :func:`additive_attention_scores`). Given
    ``q`` with a time axis, this forward computes it once for all ``T`` steps.

    Parameters
    ----------
    q : ndarray, shape (B, Dq) or (B, T, Dq)
        Decoder state(s).
    k : ndarray, shape (B, S, Dk)
        Encoder states (keys).
    v : ndarray, shape (B, S, Dv)
        Values (usually the same encoder states).
    w_q : ndarray, shape (A, Dq)
    w_k : ndarray, shape (A, Dk)
    v_a : ndarray, shape (A,)
    mask : bool ndarray, shape (B, S), optional
        ``True`` = may attend. With a time axis, also broadcastable to (B, T, S).
        A fully masked row gets all-zero weights and a zero context.

    Returns
    -------
    context : ndarray, shape (B, Dv) or (B, T, Dv)
    cache : AdditiveAttentionCache
        ``cache.weights`` (B, S) or (B, T, S) holds the attention probabilities.
    """
    inputs = _check_inputs(q, k, v, mask)
    _check_weight("v_a", v_a, ("A",))
    A = v_a.shape[0]
    _check_weight("w_q", w_q, (A, inputs.q.shape[-1]))
    _check_weight("w_k", w_k, (A, k.shape[-1]))
    check_same_dtype(q=q, w_q=w_q, w_k=w_k, v_a=v_a)

    scores, score_cache = _additive_scores(inputs.q, k, w_q, w_k, v_a)  # (B, T, S)
    weights, context = _attend(scores, inputs.allowed, v)  # (B, T, S), (B, T, Dv)
    cache = AdditiveAttentionCache(
        score=score_cache, v=v, weights=_user_shape(weights, inputs.has_time), has_time=inputs.has_time
    )
    return _user_shape(context, inputs.has_time), cache


def additive_attention_backward(
    dout: np.ndarray, cache: AdditiveAttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Backward of additive attention, the forward in reverse.

    Forward (per batch element and decoder step):
    :math:`h_s = \tanh(W_q q + W_k k_s)`, :math:`e_s = v_a^T h_s`,
    :math:`w = \mathrm{softmax}(e)`, :math:`c = \sum_s w_s v_s`.

    Backward:

    .. math::
        dw_s = dc^T v_s,\quad dv_s = w_s\, dc,\quad
        de_s = w_s\,(dw_s - \textstyle\sum_{s'} w_{s'} dw_{s'}),\\
        dv_a = \textstyle\sum_s de_s\, h_s,\quad
        dz_s = de_s\, v_a \odot (1 - h_s^2),\\
        dq = W_q^T \textstyle\sum_s dz_s,\quad dk_s = W_k^T dz_s,\quad
        dW_q = (\textstyle\sum_s dz_s)\, q^T,\quad dW_k = \textstyle\sum_s dz_s k_s^T

    (summed over the batch, and over the decoder steps for everything that does
    not depend on the step: ``dk``, ``dv``, ``dW_q``, ``dW_k``, ``dv_a``). A masked
    position has :math:`w_s = 0`, hence :math:`de_s = 0`: its key and value get no
    gradient from that row.

    Returns
    -------
    dq : ndarray, shape of ``q``
    dk : ndarray, shape (B, S, Dk)
    dv : ndarray, shape (B, S, Dv)
    dw_q : ndarray, shape (A, Dq)
    dw_k : ndarray, shape (A, Dk)
    dv_a : ndarray, shape (A,)
    """
    sc, v = cache.score, cache.v
    B, T = sc.q_proj.x.shape[:2]
    check_dout(dout, (B, T, v.shape[-1]) if cache.has_time else (B, v.shape[-1]), v.dtype)
    dcontext = dout if cache.has_time else dout[:, None, :]  # (B, T, Dv)
    weights = cache.weights if cache.has_time else cache.weights[:, None, :]  # (B, T, S)
    dscores, dv = _attend_backward(dcontext, weights, v)
    dq, dk, dw_q, dw_k, dv_a = _additive_scores_backward(dscores, sc)
    return _user_shape(dq, cache.has_time), dk, dv, dw_q, dw_k, dv_a


# ---------------------------------------------------------------------------- Luong's scores


@dataclass(frozen=True)
class DotScoreCache:
    q: np.ndarray  # (B, T, D)
    k: np.ndarray  # (B, S, D)


@dataclass(frozen=True)
class GeneralScoreCache:
    k: np.ndarray  # (B, S, Dk)
    q_w: np.ndarray  # (B, T, Dk) = q W: the query is projected (T rows), never the S keys
    q_proj: LinearCache  # q (B, T, Dq) and W^T (Dk, Dq), so q_w = linear(q, W^T)


@dataclass(frozen=True)
class LuongAttentionCache:
    score_name: str  # "dot", "general" or "concat"
    score: DotScoreCache | GeneralScoreCache | AdditiveScoreCache
    v: np.ndarray  # (B, S, Dv)
    weights: np.ndarray  # (B, S) or (B, T, S): the attention probabilities
    has_time: bool
    dq_width: int  # Dq, to split dW_c = [dW_q | dW_k] for the concat score


def luong_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    score: str = "dot",
    w: np.ndarray | None = None,
    w_c: np.ndarray | None = None,
    v_c: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, LuongAttentionCache]:
    r"""Multiplicative (Luong) attention with the ``dot``, ``general`` or ``concat`` score.

    .. math::
        e_s = q^T k_s \ (\text{dot}),\quad q^T W k_s \ (\text{general}),\quad
        v_c^T \tanh(W_c [q; k_s]) \ (\text{concat}),\\
        w = \mathrm{softmax}_s(e)\ \text{(masked)},\quad c = \textstyle\sum_s w_s v_s

    ``general`` computes :math:`(q^T W) k_s`: one ``(Dq, Dk)`` product per decoder
    step instead of one per source position. ``concat`` is the additive score with
    :math:`W_c = [W_q \mid W_k]`.

    Parameters
    ----------
    q : ndarray, shape (B, Dq) or (B, T, Dq)
    k : ndarray, shape (B, S, Dk); ``dot`` needs ``Dk == Dq``
    v : ndarray, shape (B, S, Dv)
    score : {"dot", "general", "concat"}
    w : ndarray, shape (Dq, Dk)
        Only (and required) for ``general``.
    w_c : ndarray, shape (A, Dq + Dk)
        Only (and required) for ``concat``, with ``v_c`` of shape (A,).
    v_c : ndarray, shape (A,)
    mask : bool ndarray, shape (B, S), optional
        ``True`` = may attend. With a time axis, also broadcastable to (B, T, S).
        A fully masked row gets all-zero weights and a zero context.

    Returns
    -------
    context : ndarray, shape (B, Dv) or (B, T, Dv)
    cache : LuongAttentionCache
        ``cache.weights`` (B, S) or (B, T, S) holds the attention probabilities.
    """
    if score not in LUONG_SCORES:
        raise ValueError(f"score: expected one of {LUONG_SCORES}, got {score!r}")
    inputs = _check_inputs(q, k, v, mask)
    Dq, Dk = inputs.q.shape[-1], k.shape[-1]
    given = {"w": w, "w_c": w_c, "v_c": v_c}
    needed = {"dot": (), "general": ("w",), "concat": ("w_c", "v_c")}[score]
    for name, value in given.items():
        if name in needed and value is None:
            raise ValueError(f"{name}: required for score={score!r}")
        if name not in needed and value is not None:
            raise ValueError(f"{name}: not used by score={score!r}; pass None")

    if score == "dot":
        if Dk != Dq:
            raise ValueError(f"k: score='dot' needs Dk == Dq = {Dq} (k is {k.shape}); use 'general' otherwise")
        scores = inputs.q @ np.swapaxes(k, -1, -2)  # (B, T, S)
        score_cache = DotScoreCache(q=inputs.q, k=k)
    elif score == "general":
        _check_weight("w", w, (Dq, Dk))
        check_same_dtype(q=q, w=w)
        q_w, cq = linear_forward(inputs.q, w.T)  # (B, T, Dk) = q W
        scores = q_w @ np.swapaxes(k, -1, -2)  # (B, T, S)
        score_cache = GeneralScoreCache(k=k, q_w=q_w, q_proj=cq)
    else:
        _check_weight("v_c", v_c, ("A",))
        A = v_c.shape[0]
        _check_weight("w_c", w_c, (A, Dq + Dk))
        check_same_dtype(q=q, w_c=w_c, v_c=v_c)
        # W_c [q; k_s] = W_c[:, :Dq] q + W_c[:, Dq:] k_s: the additive score, split by columns
        scores, score_cache = _additive_scores(inputs.q, k, w_c[:, :Dq], w_c[:, Dq:], v_c)  # (B, T, S)

    weights, context = _attend(scores, inputs.allowed, v)  # (B, T, S), (B, T, Dv)
    cache = LuongAttentionCache(
        score_name=score,
        score=score_cache,
        v=v,
        weights=_user_shape(weights, inputs.has_time),
        has_time=inputs.has_time,
        dq_width=Dq,
    )
    return _user_shape(context, inputs.has_time), cache


def luong_attention_backward(
    dout: np.ndarray, cache: LuongAttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    r"""Backward of Luong attention: ``(dq, dk, dv, dw, dw_c, dv_c)``, ``None`` for absent weights.

    The order is the forward's arguments: ``dw`` only for ``general``, ``dw_c``
    and ``dv_c`` only for ``concat``. With :math:`dw_s = dc^T v_s`,
    :math:`dv_s = w_s\,dc` and
    :math:`de_s = w_s\,(dw_s - \sum_{s'} w_{s'} dw_{s'})` (the softmax Jacobian):

    .. math::
        \text{dot:}\quad dq = \textstyle\sum_s de_s k_s,\quad dk_s = de_s\, q\\
        \text{general:}\quad u = W^T q,\ du = \textstyle\sum_s de_s k_s,\
        dq = W du,\ dW = q\, du^T,\ dk_s = de_s\, u\\
        \text{concat:}\quad \text{the additive backward with } W_q = W_c[:, :D_q],\ W_k = W_c[:, D_q:],\
        dW_c = [dW_q \mid dW_k]

    summed over the batch (and over the decoder steps for ``dk``, ``dv`` and the
    weights). Masked positions have :math:`w_s = 0`, so :math:`de_s = 0`.
    """
    v, sc = cache.v, cache.score
    weights = cache.weights if cache.has_time else cache.weights[:, None, :]  # (B, T, S)
    B, T = weights.shape[:2]
    check_dout(dout, (B, T, v.shape[-1]) if cache.has_time else (B, v.shape[-1]), v.dtype)
    dcontext = dout if cache.has_time else dout[:, None, :]  # (B, T, Dv)
    dscores, dv = _attend_backward(dcontext, weights, v)  # (B, T, S), (B, S, Dv)
    dw = dw_c = dv_c = None
    if cache.score_name == "dot":
        # scores = q @ k^T
        dq = dscores @ sc.k  # (B, T, D)
        dk = _sum_outer(dscores, sc.q)  # (B, S, D)
    elif cache.score_name == "general":
        # scores = q_w @ k^T
        dq_w = dscores @ sc.k  # (B, T, Dk)
        dk = _sum_outer(dscores, sc.q_w)  # (B, S, Dk)
        # q_w = q @ W = linear(q, W^T)
        dq, dw_t, _ = linear_backward(dq_w, sc.q_proj)  # (B, T, Dq), (Dk, Dq)
        dw = dw_t.T  # (Dq, Dk)
    else:
        dq, dk, dw_q, dw_k, dv_c = _additive_scores_backward(dscores, sc)
        dw_c = np.concatenate([dw_q, dw_k], axis=1)  # (A, Dq + Dk)
    return _user_shape(dq, cache.has_time), dk, dv, dw, dw_c, dv_c
