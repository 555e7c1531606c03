"""Softmax, log-softmax and cross-entropy (with ``ignore_index`` and label smoothing).

Shape legend: ``N`` rows (positions), ``V`` classes (vocabulary), ``B`` batch,
``T`` time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import (
    check_axis,
    check_dout,
    check_float_array,
    check_int_array,
    check_integer,
    check_nonempty_axis,
    check_real,
    check_shape,
)
from .intermediates import gradient_at


@dataclass(frozen=True)
class SoftmaxCache:
    y: np.ndarray  # (...) the softmax output; the backward needs only it
    axis: int


def softmax_forward(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, SoftmaxCache]:
    r"""Softmax along ``axis``: :math:`y_i = e^{x_i - m} / \sum_j e^{x_j - m}`.

    Subtracting the row maximum ``m`` changes nothing mathematically (softmax is
    shift-invariant) but keeps ``exp`` from overflowing, so logits of any
    magnitude are fine. A row of all ``-inf`` has no defined softmax and gives NaN.
    """
    check_float_array("x", x, ndim_min=1)
    axis = check_axis(axis, x.ndim)
    check_nonempty_axis("x", x, axis, "the softmax axis")
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    y = e / e.sum(axis=axis, keepdims=True)
    return y, SoftmaxCache(y=y, axis=axis)


def softmax_backward(dout: np.ndarray, cache: SoftmaxCache) -> np.ndarray:
    r"""Jacobian-vector product of softmax.

    The Jacobian is :math:`\partial y_i/\partial x_j = y_i(\delta_{ij} - y_j)`, so
    :math:`dx_j = \sum_i dy_i\, y_i (\delta_{ij} - y_j) = y_j\,(dy_j - \sum_i dy_i y_i)`.
    The full Jacobian is never formed.
    """
    y = cache.y
    check_dout(dout, y.shape, y.dtype)
    return y * (dout - (dout * y).sum(axis=cache.axis, keepdims=True))


@dataclass(frozen=True)
class LogSoftmaxCache:
    y: np.ndarray  # (...) the log-softmax output; exp(y) is the softmax
    axis: int


def log_softmax_forward(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, LogSoftmaxCache]:
    r"""Log-softmax along ``axis``: :math:`y_i = x_i - m - \log\sum_j e^{x_j - m}`.

    Computed directly (never ``log(softmax(x))``), so a very negative logit gives
    a large finite negative number instead of ``log(0) = -inf``.
    """
    check_float_array("x", x, ndim_min=1)
    axis = check_axis(axis, x.ndim)
    check_nonempty_axis("x", x, axis, "the softmax axis")
    shifted = x - x.max(axis=axis, keepdims=True)
    # y = shifted - log(sum(exp(shifted))), subtracted in place in shifted's array
    y = np.subtract(shifted, np.log(np.exp(shifted).sum(axis=axis, keepdims=True)), out=shifted)
    return y, LogSoftmaxCache(y=y, axis=axis)


def log_softmax_backward(dout: np.ndarray, cache: LogSoftmaxCache) -> np.ndarray:
    r"""Forward :math:`y_i = x_i - \log\sum_j e^{x_j}`; :math:`\partial y_i/\partial x_j = \delta_{ij} - p_j`.

    Hence :math:`dx_j = dy_j - p_j \sum_i dy_i` with :math:`p = e^{y}`.
    """
    y = cache.y
    check_dout(dout, y.shape, y.dtype)
    return dout - np.exp(y) * dout.sum(axis=cache.axis, keepdims=True)


@dataclass(frozen=True)
class CrossEntropyCache:
    probs: np.ndarray  # (N, V) softmax of the logits, rows flattened
    targets: np.ndarray  # (N,) int64, ignored rows already replaced by 0
    valid: np.ndarray  # (N,) bool, False where target == ignore_index
    n_valid: int  # number of valid rows: the denominator of the mean
    label_smoothing: float
    logits_shape: tuple[int, ...]  # (N, V) or (B, T, V), to restore dlogits' shape


def cross_entropy_forward(
    logits: np.ndarray,
    targets: np.ndarray,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> tuple[np.ndarray, CrossEntropyCache]:
    r"""Mean cross-entropy, the same number as ``torch.nn.functional.cross_entropy``.

    With :math:`\varepsilon` = ``label_smoothing`` the target distribution of a
    row with class :math:`y` is :math:`q = (1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon/V`,
    and the loss of the row is
    :math:`\ell = -\sum_v q_v \log p_v = (1-\varepsilon)(-\log p_y) + \varepsilon\,\tfrac1V\sum_v(-\log p_v)`.
    The result is the mean of :math:`\ell` over rows whose target is not
    ``ignore_index``: both the NLL term and the smoothing term are averaged over
    those rows only (as PyTorch does).

    If every row is ignored the mean is ``0/0``: the loss is NaN and the
    gradient is zero, exactly what PyTorch returns.

    Infinite logits give what ``F.cross_entropy`` gives (pinned in
    ``parity_tests/test_framework_facts.py``). A logit of ``-inf`` (or a large negative
    one such as ``np.finfo(dtype).min``, Hugging Face's masking value) is a class of
    probability 0: without smoothing the loss stays finite unless that class is the
    target (then ``-log 0 = inf``). With ``label_smoothing > 0`` the uniform term averages
    :math:`-\log p_v` over every class, so the loss is ``inf`` (in float32 two
    ``finfo.min`` logits already overflow that sum); at ``label_smoothing == 1`` with the
    target at ``-inf`` it is ``0 * inf = NaN``, as in torch. A ``+inf`` logit gives NaN
    (``inf - inf``). The gradient :math:`p - q` stays finite wherever the loss is ``inf``.

    Parameters
    ----------
    logits : ndarray, shape (N, V) or (B, T, V)
    targets : integer ndarray, shape (N,) or (B, T)
        Class indices in ``[0, V)`` or ``ignore_index``.

    Returns
    -------
    loss : 0-d ndarray of the logits' dtype
    cache : CrossEntropyCache
    """
    check_float_array("logits", logits)
    if logits.ndim not in (2, 3):
        raise ValueError(f"logits: expected shape (N, V) or (B, T, V), got {logits.shape}")
    check_nonempty_axis("logits", logits, -1, "classes V")
    check_int_array("targets", targets)
    check_shape("targets", targets, logits.shape[:-1])
    ignore_index = check_integer("ignore_index", ignore_index, low=None)
    label_smoothing = check_real("label_smoothing", label_smoothing, low=0, high=1)
    V = logits.shape[-1]
    flat_logits = logits.reshape(-1, V)  # (N, V)
    flat_targets = targets.reshape(-1).astype(np.int64)  # (N,)
    valid = flat_targets != ignore_index  # (N,)
    bad = valid & ((flat_targets < 0) | (flat_targets >= V))
    if bad.any():
        raise ValueError(
            f"targets: expected class indices in [0, {V}) or ignore_index={ignore_index}, got {flat_targets[bad][0]}"
        )
    safe_targets = np.where(valid, flat_targets, 0)  # (N,) any index works for ignored rows

    # log p_v = s_v - log Z, with s = z - max_v z (the shift keeps exp from overflowing) and
    # Z = sum_v exp(s_v): one exp gives the probabilities and the loss, and the (N, V) array of
    # log-probabilities is never formed (log_softmax_forward forms it, and then its exp).
    shifted = flat_logits - flat_logits.max(axis=1, keepdims=True)  # (N, V) s
    probs = np.exp(shifted)  # (N, V) exp(s), divided by Z below
    z_sum = probs.sum(axis=1, keepdims=True)  # (N, 1) Z
    log_z = np.log(z_sum[:, 0])  # (N,)
    nll = log_z - np.take_along_axis(shifted, safe_targets[:, None], axis=1)[:, 0]  # (N,) -log p_y
    if label_smoothing == 0:
        # No smoothing term at all, as in PyTorch: computing it and multiplying by eps = 0
        # would turn the +inf of a row holding a -inf logit into 0 * inf = NaN.
        per_row = nll  # (N,)
    else:
        smooth = log_z - shifted.mean(axis=1)  # (N,) -mean_v log p_v, against the uniform distribution
        eps = logits.dtype.type(label_smoothing)
        per_row = (1 - eps) * nll + eps * smooth  # (N,)
    n_valid = int(valid.sum())
    total = np.where(valid, per_row, 0).sum()
    # 0/0 -> NaN when every row is ignored, as in PyTorch (without a warning).
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.asarray(total / logits.dtype.type(n_valid), dtype=logits.dtype)
    cache = CrossEntropyCache(
        probs=np.divide(probs, z_sum, out=probs),  # (N, V) p = exp(s) / Z, in place
        targets=safe_targets,
        valid=valid,
        n_valid=n_valid,
        label_smoothing=label_smoothing,
        logits_shape=logits.shape,
    )
    return loss, cache


def cross_entropy_backward(dout: np.ndarray | float, cache: CrossEntropyCache) -> np.ndarray:
    r"""Gradient of the mean cross-entropy with respect to the logits.

    For a valid row the fused softmax + cross-entropy gradient is
    :math:`\partial\ell/\partial z = p - q`, with :math:`q` the (smoothed) target
    distribution; the mean divides by the number of valid rows :math:`N_v`, and
    ignored rows get zero:

    .. math:: dz_n = dout \cdot [n\ \mathrm{valid}]\,(p_n - q_n) / N_v
    """
    dout = np.asarray(dout)
    if dout.shape != ():
        raise ValueError(f"dout: expected a scalar (the loss is a scalar), got shape {dout.shape}")
    probs = cache.probs
    dtype = probs.dtype
    if cache.n_valid == 0:
        return np.zeros(cache.logits_shape, dtype=dtype)
    N, V = probs.shape
    eps = dtype.type(cache.label_smoothing)
    # The smoothed target distribution q is eps / V everywhere but at the target, where it is
    # eps / V + (1 - eps). (p - q) * scale is formed without an (N, V) array for q: first with
    # q = eps / V everywhere, then the N target entries again with their own q (the same numbers).
    scale = dtype.type(dout) / dtype.type(cache.n_valid)
    rows = np.arange(N)
    q_target = dtype.type(eps / V) + (1 - eps)
    dlogits = probs - eps / V  # (N, V)
    dlogits *= scale
    dlogits[rows, cache.targets] = (probs[rows, cache.targets] - q_target) * scale
    dlogits[~cache.valid] = 0
    return gradient_at("logits", dlogits).reshape(cache.logits_shape)  # (N, V) gradient at the logits
