"""The twin of ``numpy_transformer.functional``: the same ops, forward only, in PyTorch.

Each op is written out from elementary tensor operations (not PyTorch's fused
built-ins), so autograd differentiates the very formula the NumPy backward
differentiates by hand. Comparisons against the built-ins live in ``parity_tests``.
Works on any device the inputs live on.
"""

from __future__ import annotations

import math

import torch

from .intermediates import expose, prefix


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = x @ weight.T  # (..., O)
    return y if bias is None else y + bias


def embedding(ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    if padding_idx is None:
        return weight[ids]
    # The pad row is looked up through a detached copy, so it receives no gradient.
    is_pad = (ids == padding_idx).unsqueeze(-1)
    return torch.where(is_pad, weight.detach()[ids], weight[ids])


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's ``x * sigmoid(1.702 x)``, with the sigmoid written out: ``1 / (1 + exp(-1.702 x))``."""
    return x / (1.0 + torch.exp(-1.702 * x))


def tanh(x: torch.Tensor) -> torch.Tensor:
    e2 = torch.exp(-2.0 * x.abs())  # tanh|x| = (1 - e^{-2|x|}) / (1 + e^{-2|x|}), no overflow
    return torch.sign(x) * (1.0 - e2) / (1.0 + e2)


def mean_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S, C), (B, S) 1 = token -> (B, C): the mean over real tokens."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, S, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True)).clamp(min=eps)


def contrastive_logits(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP: (B_img, E), (B_txt, E), () -> logits_per_image (B_img, B_txt) = exp(s) norm(I) norm(T)^T."""
    u = expose("u", l2_normalize(image_embeds))  # (B_img, E)
    v = expose("v", l2_normalize(text_embeds))  # (B_txt, E)
    return logit_scale.exp() * (u @ v.T)


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss: (CE(logits_per_image, arange) + CE(logits_per_text, arange)) / 2."""
    logits = expose("logits_per_image", contrastive_logits(image_embeds, text_embeds, logit_scale))  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    with prefix("per_image"):  # named apart, as in the NumPy backward
        loss_image = cross_entropy(logits, targets)
    with prefix("per_text"):
        loss_text = cross_entropy(logits.T, targets)
    return (loss_image + loss_text) / 2


def dropout(x: torch.Tensor, p: float, mask: torch.Tensor | None = None, training: bool = True) -> torch.Tensor:
    """Inverted dropout with an explicit keep-mask (True = kept), or a fresh one from torch."""
    if not training or p == 0.0:
        return x
    if mask is None:
        mask = torch.rand_like(x) >= p
    return torch.where(mask, x / (1.0 - p), torch.zeros_like(x))


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=axis, keepdim=True).detach())
    return e / e.sum(dim=axis, keepdim=True)


def log_softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    shifted = x - x.amax(dim=axis, keepdim=True).detach()
    return shifted - torch.log(torch.exp(shifted).sum(dim=axis, keepdim=True))


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, label_smoothing: float = 0.0
) -> torch.Tensor:
    V = logits.shape[-1]
    logp = log_softmax(expose("logits", logits.reshape(-1, V)))  # (N, V)
    t = targets.reshape(-1)
    valid = t != ignore_index
    safe = torch.where(valid, t, torch.zeros_like(t))
    nll = -logp.gather(1, safe[:, None])[:, 0]  # (N,)
    if label_smoothing == 0:
        per_row = nll  # no smoothing term: 0 * inf would be NaN for a row holding -inf, as in F.cross_entropy
    else:
        smooth = -logp.mean(dim=1)  # (N,)
        per_row = (1 - label_smoothing) * nll + label_smoothing * smooth
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    return per_row.sum() / valid.sum()


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, eps inside the sqrt
    xhat = expose("xhat", (x - mean) / torch.sqrt(var + eps))
    return xhat * weight + bias


def sinusoidal_positional_encoding(
    length: int,
    d_model: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)
    angle = pos / base ** (two_i / d_model)
    pe = torch.empty(length, d_model, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.to(dtype)


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis among ``allowed`` positions; a row with none allowed gets zeros."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    return_weights: bool = False,
):
    """Explicit attention with the package's convention: mask True = may attend.

    A fully masked query row gets all-zero weights (so a zero output and no
    gradient), as in ``numpy_transformer.functional.attention``.
    """
    T, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = expose("scores", expose("qk", q @ k.transpose(-1, -2)) * scale)  # (..., T, S)
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device)
    if mask is not None:
        allowed = allowed & mask
    if is_causal:
        allowed = allowed & torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    weights = expose("weights", masked_softmax(scores, allowed.expand(scores.shape)))
    attn = weights
    if dropout_p > 0:
        if dropout_mask is None:
            dropout_mask = torch.rand_like(weights) >= dropout_p
        attn = torch.where(dropout_mask, weights / (1.0 - dropout_p), torch.zeros_like(weights))
    out = expose("attn", attn) @ v
    return (out, weights) if return_weights else out


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``scaled_dot_product_attention``'s numbers from PyTorch's own kernel, ``F.scaled_dot_product_attention``
    (flash or memory-efficient attention on CUDA): no (T, S) weights kept, none returned.

    The same conventions: ``mask`` bool, True = may attend (SDPA's own); ``is_causal`` top-left
    aligned, combined with ``mask`` into one (SDPA takes one or the other); a query row with no
    allowed key gives a zero output and no gradient (it is computed over every key, to stay finite
    in every kernel, then zeroed). Dropout (``dropout_p > 0``) draws PyTorch's own mask: to replay a
    NumPy mask use ``scaled_dot_product_attention`` with ``dropout_mask``.
    """
    import torch.nn.functional as F

    T, S = q.shape[-2], k.shape[-2]
    if mask is not None and is_causal:
        mask, is_causal = mask & torch.ones(T, S, dtype=torch.bool, device=q.device).tril(), False
    seen = None
    if mask is not None:
        seen = mask.any(dim=-1, keepdim=True)  # (..., T | 1, 1), False on a fully masked row
        if bool(seen.all()):
            seen = None
        else:
            mask = mask | ~seen  # such a row attends everywhere (finite numbers), then is zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    return out if seen is None else out.masked_fill(~seen, 0.0)


# ---------------------------------------------------------------------------- convolution and pooling
# im2col, as in numpy_transformer.functional.conv: pad, unfold the windows with Tensor.unfold
# (a strided view, like NumPy's sliding_window_view), then one matmul. Autograd differentiates
# the unfold (its backward is the fold) and the matmul; F.conv2d / F.max_pool2d are never used,
# so comparing against them tests something.


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _windows(xp: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """(N, C, Hp, Wp) -> (N, C, Ho, Wo, kh, kw): every window at the stride, a view."""
    return xp.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1])


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """(N, C, H, W), (O, C, kh, kw) -> (N, O, Ho, Wo): ``Y = W_mat @ col`` over the unfolded patches."""
    ph, pw = _pair(padding)
    O, C, kh, kw = weight.shape
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))  # zeros; (N, C, Hp, Wp)
    windows = _windows(xp, (kh, kw), _pair(stride))  # (N, C, Ho, Wo, kh, kw)
    N, _, Ho, Wo = windows.shape[:4]
    col = windows.permute(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, N * Ho * Wo)  # (K, P), rows (c, i, j)
    y = (weight.reshape(O, C * kh * kw) @ expose("col", col)).reshape(O, N, Ho, Wo).transpose(0, 1)  # (N, O, Ho, Wo)
    return y if bias is None else y + bias[:, None, None]


def conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] = 0,
) -> torch.Tensor:
    """(N, C, L), (O, C, k) -> (N, O, Lo): conv2d over a height of 1."""
    s = stride if isinstance(stride, int) else stride[0]
    p = padding if isinstance(padding, int) else padding[0]
    return conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, stride=(1, s), padding=(0, p)).squeeze(2)


def max_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, Ho, Wo): the maximum of each window, padding counting as -inf.

    The gradient reaches the element ``gather`` reads: the first maximum of the flattened
    window in row-major order (``torch.argmax`` returns the first of equal maxima). That is
    ``F.max_pool2d``'s tie rule too, unless a window's real elements are all ``-inf``.
    """
    kernel = _pair(kernel_size)
    ph, pw = _pair(padding)
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=float("-inf"))  # (N, C, Hp, Wp)
    windows = _windows(xp, kernel, kernel if stride is None else _pair(stride))  # (N, C, Ho, Wo, kh, kw)
    flat = expose("windows", windows.flatten(start_dim=4))  # (N, C, Ho, Wo, kh*kw)
    first_max = flat.detach().argmax(dim=-1, keepdim=True)  # (N, C, Ho, Wo, 1)
    return flat.gather(-1, first_max).squeeze(-1)


# ---------------------------------------------------------------------------- Llama's ops
# RMSNorm, rotary embeddings in both layouts, SiLU / SwiGLU and grouped-query attention, as in
# numpy_transformer.functional.rms_norm / rotary / swiglu / grouped_attention. Grouped-query
# attention is written differently from the NumPy half on purpose: here the key/value heads are
# copied with repeat_interleave (Hugging Face's repeat_kv), there they are broadcast views.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xhat = expose("xhat", x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps))  # eps inside the root
    return xhat * weight


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``positions * theta ** (-2i / D)``, each (T, D/2): angles in float64, then ``dtype``."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, P)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def rotary_embedding(
    x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0, layout: str = "half"
) -> torch.Tensor:
    """(..., T, D) -> (..., T, D): pair i turned by ``positions * theta ** (-2i / D)``."""
    D = x.shape[-1]
    cos, sin = rotary_cos_sin(positions, D, theta, x.dtype)  # (T, P)
    if layout == "half":  # pairs (i, i + D/2)
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    if layout == "interleaved":  # pairs (2i, 2i + 1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    raise ValueError(f"layout: expected 'half' or 'interleaved', got {layout!r}")


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return expose("a", silu(gate)) * up


def grouped_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
):
    """q (B, H, T, D) over k, v (B, Hkv, S, D|Dv): each key/value head repeated for its group of H // Hkv."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, H, S, D): head h reads key head h // group
    v = v.repeat_interleave(group, dim=1)
    return scaled_dot_product_attention(
        q, k, v, mask=mask, is_causal=is_causal, scale=scale, return_weights=return_weights
    )


# ---------------------------------------------------------------------------- flash-style attention
# The twin of numpy_transformer.functional.flash_attention. Tiling changes the memory, not the
# numbers, so the twin is the plain formula: autograd then differentiates the standard attention,
# and a match says the tiled forward and the hand-written tiled backward compute the same thing.


def sliding_window_mask(T: int, window: int, S: int | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """(T, S) bool, True where ``t - window < s <= t``: the last ``window`` positions, the query's own included."""
    S = T if S is None else S
    t = torch.arange(T, device=device)[:, None]
    s = torch.arange(S, device=device)[None, :]
    return (s <= t) & (s > t - window)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Attention as ``scaled_dot_product_attention``, with an optional sliding ``window`` (causal local)."""
    if window is not None:
        local = sliding_window_mask(q.shape[-2], window, k.shape[-2], device=q.device)
        mask = local if mask is None else mask & local
    return scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
