r"""CLIP's contrastive loss: a symmetric cross-entropy over a batch's scaled cosine similarities.

Shape legend: ``B`` pairs in the batch (image ``i`` belongs with text ``i``), ``E`` the width of the
shared embedding space (``projection_dim``).

Radford et al. ("Learning Transferable Visual Models From Natural Language Supervision", 2021)::

    u = I / |I|,  v = T / |T|                 (B, E) each: rows on the unit sphere
    logits_per_image = exp(logit_scale) u v^T    (B, B): row i scores image i against every text
    logits_per_text  = logits_per_image^T        (B, B): row j scores text j against every image
    loss = (CE(logits_per_image, arange(B)) + CE(logits_per_text, arange(B))) / 2

The right partner of every row sits on the diagonal, so each row of either matrix is a
B-way classification problem: "which text is mine?" and "which image is mine?".
``logit_scale`` is the log of an inverse temperature: it is learned in log space so that the
scale ``exp(logit_scale)`` stays positive.

Two ops live here: :func:`contrastive_logits_forward` (embeddings to the logit matrix, which the
CLIP model also returns) and :func:`clip_loss_forward`, which adds the two cross-entropies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_float_array, check_same_dtype
from .intermediates import gradient_at, prefix
from .pooling import L2NormalizeCache, l2_normalize_backward, l2_normalize_forward
from .softmax import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward


def _check_embeddings(image_embeds: object, text_embeds: object, logit_scale: object) -> None:
    check_float_array("image_embeds", image_embeds)
    check_float_array("text_embeds", text_embeds)
    check_float_array("logit_scale", logit_scale)
    if image_embeds.ndim != 2 or min(image_embeds.shape) < 1:
        raise ValueError(f"image_embeds: expected shape (B, E) with B, E >= 1, got {image_embeds.shape}")
    if text_embeds.ndim != 2 or text_embeds.shape[1] != image_embeds.shape[1] or text_embeds.shape[0] < 1:
        raise ValueError(
            f"text_embeds: expected shape (B_text, E) with E = {image_embeds.shape[1]} (that of image_embeds), "
            f"got {text_embeds.shape}"
        )
    if logit_scale.shape != ():
        raise ValueError(f"logit_scale: expected a 0-d array (one learned log-scale), got shape {logit_scale.shape}")
    check_same_dtype(image_embeds=image_embeds, text_embeds=text_embeds, logit_scale=logit_scale)


@dataclass(frozen=True)
class ContrastiveLogitsCache:
    image_norm: L2NormalizeCache  # (B_img, E): u = I / |I| is its output
    text_norm: L2NormalizeCache  # (B_txt, E): v = T / |T|
    scale: np.ndarray  # () exp(logit_scale)
    logits_per_image: np.ndarray  # (B_img, B_txt) s u v^T: d logit_scale is read off it


def contrastive_logits_forward(
    image_embeds: np.ndarray, text_embeds: np.ndarray, logit_scale: np.ndarray
) -> tuple[np.ndarray, ContrastiveLogitsCache]:
    r"""``logits_per_image = exp(logit_scale) · norm(I) · norm(T)^T`` (B_img, B_txt); its transpose is per text.

    Parameters
    ----------
    image_embeds : ndarray, shape (B_img, E)
    text_embeds : ndarray, shape (B_txt, E)
    logit_scale : ndarray, shape ()
        The log of the scale; all three of one float dtype.
    """
    _check_embeddings(image_embeds, text_embeds, logit_scale)
    u, c_u = l2_normalize_forward(image_embeds)  # (B_img, E)
    v, c_v = l2_normalize_forward(text_embeds)  # (B_txt, E)
    scale = np.exp(logit_scale)  # ()
    logits = scale * (u @ v.T)  # (B_img, B_txt): cosine similarities, scaled
    return logits, ContrastiveLogitsCache(image_norm=c_u, text_norm=c_v, scale=scale, logits_per_image=logits)


def contrastive_logits_backward(
    dlogits_per_image: np.ndarray, cache: ContrastiveLogitsCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients ``(dimage_embeds, dtext_embeds, dlogit_scale)`` of :math:`L = e^{s}\,u v^T`.

    With :math:`G` = ``dlogits_per_image`` (add the transpose of a ``dlogits_per_text`` first):

    .. math::
        du = e^{s}\, G\, v, \qquad dv = e^{s}\, G^T u, \qquad
        ds = \textstyle\sum_{ij} G_{ij}\, \partial L_{ij}/\partial s = \sum_{ij} G_{ij} L_{ij},

    since :math:`\partial e^{s}/\partial s = e^{s}`. Then each of :math:`du, dv` goes back through
    the L2 normalisation, which keeps only its part orthogonal to the row
    (:func:`~numpy_transformer.functional.pooling.l2_normalize_backward`).
    """
    L = cache.logits_per_image
    check_float_array("dlogits_per_image", dlogits_per_image)
    if dlogits_per_image.shape != L.shape or dlogits_per_image.dtype != L.dtype:
        raise ValueError(
            f"dlogits_per_image: expected {L.dtype} of shape {L.shape} (that of logits_per_image), "
            f"got {dlogits_per_image.dtype} {dlogits_per_image.shape}"
        )
    G = gradient_at("logits_per_image", dlogits_per_image)  # (B_img, B_txt)
    u, v, s = cache.image_norm.y, cache.text_norm.y, cache.scale
    # In the forward pass this was: logits = scale * (u @ v.T), scale = exp(logit_scale)
    du = s * (G @ v)  # (B_img, E)
    dv = s * (G.T @ u)  # (B_txt, E)
    dlogit_scale = np.asarray((G * L).sum(), dtype=L.dtype)  # ()
    # In the forward pass this was: u = I / |I|, v = T / |T|
    dimage = l2_normalize_backward(gradient_at("u", du), cache.image_norm)  # through the normalised features
    dtext = l2_normalize_backward(gradient_at("v", dv), cache.text_norm)
    return dimage, dtext, dlogit_scale


@dataclass(frozen=True)
class ClipLossCache:
    logits: ContrastiveLogitsCache  # the (B, B) logit matrix and the normalisations under it
    per_image: CrossEntropyCache  # CE over the rows of logits_per_image
    per_text: CrossEntropyCache  # CE over the rows of logits_per_text (the columns of logits_per_image)


def clip_loss_forward(
    image_embeds: np.ndarray, text_embeds: np.ndarray, logit_scale: np.ndarray
) -> tuple[np.ndarray, ClipLossCache]:
    r"""The symmetric contrastive loss (a 0-d array) of ``B`` matching pairs.

    .. math::
        \ell = \tfrac12\Big(\mathrm{CE}(L, \mathrm{arange}(B)) + \mathrm{CE}(L^T, \mathrm{arange}(B))\Big),
        \qquad L = e^{s}\,\frac{I}{|I|}\Big(\frac{T}{|T|}\Big)^T,

    each CE the mean over its ``B`` rows. ``image_embeds`` and ``text_embeds`` are (B, E), the same
    ``B``: pair ``i`` is image ``i`` with text ``i``. The logit matrix is in ``cache.logits``.
    """
    _check_embeddings(image_embeds, text_embeds, logit_scale)
    if text_embeds.shape[0] != image_embeds.shape[0]:
        raise ValueError(
            f"text_embeds: expected B = {image_embeds.shape[0]} rows (one per image: pair i is image i with "
            f"text i), got shape {text_embeds.shape}"
        )
    logits, c_logits = contrastive_logits_forward(image_embeds, text_embeds, logit_scale)  # (B, B)
    targets = np.arange(logits.shape[0])  # (B,) the partner of row i is column i
    loss_img, c_img = cross_entropy_forward(logits, targets)
    loss_txt, c_txt = cross_entropy_forward(np.ascontiguousarray(logits.T), targets)
    loss = ((loss_img + loss_txt) / 2).astype(logits.dtype, copy=False)
    return loss, ClipLossCache(logits=c_logits, per_image=c_img, per_text=c_txt)


def clip_loss_backward(dout: np.ndarray | float, cache: ClipLossCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients ``(dimage_embeds, dtext_embeds, dlogit_scale)`` of the symmetric loss.

    Each cross-entropy gives :math:`(p - \mathrm{onehot})/B` on its own rows; the text term's rows are
    the columns of :math:`L`, so its gradient is transposed back before the two meet:

    .. math::
        dL = \tfrac{d\ell}{2}\Big(\frac{P^{row} - \mathbb{1}}{B} + \Big(\frac{P^{col} - \mathbb{1}}{B}\Big)^T\Big),

    with :math:`P^{row}` the row-wise softmax of :math:`L` and :math:`P^{col}` that of :math:`L^T`.
    From there :func:`contrastive_logits_backward`; in particular
    :math:`d\,\mathrm{logit\_scale} = \sum_{ij} dL_{ij}\,L_{ij}`.
    """
    return contrastive_logits_backward(clip_loss_dlogits(dout, cache), cache.logits)


def clip_loss_dlogits(dout: np.ndarray | float, cache: ClipLossCache) -> np.ndarray:
    """The loss's gradient with respect to ``logits_per_image`` (B, B): the first step of :func:`clip_loss_backward`.

    (The CLIP model adds the upstream gradients of its returned logit matrices to it.)
    """
    dtype = cache.logits.logits_per_image.dtype
    half = np.asarray(dout, dtype=dtype) / 2
    with prefix("per_image"):  # named apart: this backward takes the two cross-entropies in forward order
        dlogits = cross_entropy_backward(half, cache.per_image)  # (B, B) over the rows
    with prefix("per_text"):
        dlogits_text = cross_entropy_backward(half, cache.per_text)  # (B, B) over the columns
    return dlogits + dlogits_text.T  # (B, B) the text rows, transposed back
