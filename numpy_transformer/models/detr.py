r"""DETR (DEtection TRansformer): a CNN backbone, an encoder-decoder Transformer, a fixed set of object queries.

Shape legend: ``B`` batch, ``Cin`` image channels, ``I`` image side (``H, W`` pixels), ``Cb`` the
backbone's output channels, ``h, w`` the feature map (``S = h w`` cells), ``C`` d_model, ``Q``
object queries, ``L`` decoder layers, ``V = num_labels + 1`` classes (the last = "no object").

Carion et al., "End-to-End Object Detection with Transformers" (2020). The network, top to bottom
(our parameter names; Hugging Face's are in :mod:`numpy_transformer.applications.detr_weights`)::

    f      = backbone(pixels)                              (B, Cb, h, w)  a small ResNet, frozen batch norm
    m_0    = flatten(input_projection(f))                  (B, S, C)      a 1 x 1 conv, cells read row by row
    p      = sine(h, w)                                    (S, C)         2-D positions, a constant
    m_i    = encoder.layers.i(m_{i-1}, p)                  post-LN; p is added to the queries and keys
    t_0    = 0,  e = query_position_embeddings             (Q, C)         learned, one per query
    t_l    = decoder.layers.l(t_{l-1}, e, m, p)            self-attention: e added to q and k;
                                                           cross-attention: e added to q, p to the keys
    y_l    = decoder_norm(t_l)                             (B, Q, C)      for every layer (auxiliary heads)
    logits_l = class_head(y_l)                             (B, Q, V)
    boxes_l  = sigmoid(box_head(y_l))                      (B, Q, 4)      cx, cy, w, h in [0, 1]

The outputs of every decoder layer share the heads and the decoder LayerNorm (as in DETR); the
set loss (:mod:`numpy_transformer.functional.detr_loss`) reads all of them with
``auxiliary_loss`` and the last one without. Queries start as zeros: what tells them apart is
their learned position ``e``, which is why its gradient collects from every layer.

The 2-D sine positions (DETR's ``PositionEmbeddingSine(normalize=True)``): with ``y = 1..h`` and
``x = 1..w`` scaled to ``(0, 2 pi]`` (``y / (h + 1e-6) * 2 pi``), ``F = C / 2`` features per axis,
``dim_k = 10000^{2 floor(k/2) / F}``, feature ``k`` of an axis is ``sin(y / dim_k)`` for even
``k`` and ``cos(y / dim_k)`` for odd ``k``; the ``y`` half comes first, then the ``x`` half.

The backbone is Hugging Face's ``ResNetBackbone`` with ``layer_type="basic"``, its batch norms
replaced by frozen ones (``DetrFrozenBatchNorm2d``) and the last stage's map used: a 7 x 7
stride-2 stem conv (no bias), frozen BN, ReLU, a 3 x 3 stride-2 max-pool (padding 1), then per
stage basic blocks ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` whose shortcut is a
1 x 1 conv + frozen BN where the width or the stride changes. Frozen batch norm has no gradient
of its own (its four arrays are frozen parameters here, buffers in torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DetrConfig
from ..functional.activations import ReluCache, relu_backward, relu_forward
from ..functional.checks import check_float_array, check_rng
from ..functional.conv import Conv2dCache, MaxPool2dCache, max_pool2d_backward, max_pool2d_forward
from ..functional.frozen_batch_norm import (
    FrozenBatchNormCache,
    frozen_batch_norm_backward,
    frozen_batch_norm_forward,
)
from ..functional.layer_norm import LayerNormCache
from ..functional.linear import LinearCache
from ..modules.attention import MultiHeadAttention, MultiHeadAttentionCache
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.conv import Conv2d
from ..modules.layers import FeedForward, FeedForwardCache, LayerNorm, Linear

# ---------------------------------------------------------------------------- positions


def detr_sine_position_embedding(height: int, width: int, d_model: int, dtype: np.dtype | type) -> np.ndarray:
    """DETR's normalised 2-D sine positions of an ``height x width`` grid, ``(h w, C)``, cells row by row."""
    F = d_model // 2  # features per axis
    dt = np.dtype(dtype).type
    scale, eps = dt(2 * np.pi), dt(1e-6)
    y = np.arange(1, height + 1, dtype=dtype) / (dt(height) + eps) * scale  # (h,)
    x = np.arange(1, width + 1, dtype=dtype) / (dt(width) + eps) * scale  # (w,)
    k = np.arange(F)
    dim = dt(10000) ** (dt(2) * (k // 2).astype(dtype) / dt(F))  # (F,)
    even = k % 2 == 0

    def encode(v: np.ndarray) -> np.ndarray:
        a = v[:, None] / dim  # (n, F)
        return np.where(even, np.sin(a), np.cos(a))

    py = np.broadcast_to(encode(y)[:, None, :], (height, width, F))  # (h, w, F)
    px = np.broadcast_to(encode(x)[None, :, :], (height, width, F))
    return np.concatenate([py, px], axis=-1).reshape(height * width, 2 * F).astype(dtype)  # (S, C)


# ---------------------------------------------------------------------------- backbone


class FrozenBatchNorm2d(Module):
    """Batch norm with fixed statistics: ``weight``, ``bias``, ``running_mean``, ``running_var`` (C,), frozen.

    Initialised as a fresh ``BatchNorm2d`` (1, 0, 0, 1); they are parameters only so that they load
    from a state dict -- frozen (``requires_grad`` False), and the backward never computes a
    gradient for them.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, dtype: np.dtype | type = np.float64) -> None:
        super().__init__()
        self.eps = eps
        self.dtype = check_module_dtype(dtype)
        ones, zeros = np.ones(num_features, self.dtype), np.zeros(num_features, self.dtype)
        self._init_parameters(weight=ones, bias=zeros, running_mean=zeros.copy(), running_var=ones.copy())
        self.requires_grad_(False)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, FrozenBatchNormCache]:
        return frozen_batch_norm_forward(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)

    def backward(self, dout: np.ndarray, cache: FrozenBatchNormCache) -> np.ndarray:
        return frozen_batch_norm_backward(dout, cache)


@dataclass(frozen=True)
class ConvNormCache:
    conv: Conv2dCache
    norm: FrozenBatchNormCache
    relu: ReluCache | None  # None without the activation


class ConvNorm(Module):
    """``relu(norm(conv(x)))`` (or without the ReLU): a bias-free conv, ``padding = k // 2``, frozen BN."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, relu=True, eps=1e-5, dtype=np.float64, rng=None) -> None:
        super().__init__()
        self.relu = relu
        self.conv = Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False, dtype=dtype, rng=rng)
        self.norm = FrozenBatchNorm2d(c_out, eps, dtype)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, ConvNormCache]:
        y, c_conv = self.conv.forward(x)
        y, c_norm = self.norm.forward(y)
        c_relu = None
        if self.relu:
            y, c_relu = relu_forward(y)
        return y, ConvNormCache(c_conv, c_norm, c_relu)

    def backward(self, dout: np.ndarray, cache: ConvNormCache) -> np.ndarray:
        if cache.relu is not None:
            dout = relu_backward(dout, cache.relu)
        return self.conv.backward(self.norm.backward(dout, cache.norm), cache.conv)

    def calibrate(self, x: np.ndarray) -> np.ndarray:
        """Set the frozen norm's statistics to those of ``conv(x)`` per channel; return the new output."""
        y, _ = self.conv.forward(x)  # (B, C, H, W)
        self.norm.running_mean[...] = y.mean(axis=(0, 2, 3))
        self.norm.running_var[...] = y.var(axis=(0, 2, 3))
        y, _ = self.norm.forward(y)
        return relu_forward(y)[0] if self.relu else y


@dataclass(frozen=True)
class BasicBlockCache:
    conv1: ConvNormCache
    conv2: ConvNormCache
    shortcut: ConvNormCache | None  # None: the identity
    relu: ReluCache


class BasicBlock(Module):
    """ResNet's basic block: ``relu(conv2(conv1(x)) + shortcut(x))``, conv1 3 x 3 at ``stride`` with ReLU, conv2
    3 x 3 without; ``shortcut`` a 1 x 1 conv + frozen BN where the width or the stride changes, else the identity."""

    def __init__(self, c_in, c_out, stride=1, eps=1e-5, dtype=np.float64, rng=None) -> None:
        super().__init__()
        self.conv1 = ConvNorm(c_in, c_out, 3, stride, True, eps, dtype, rng)
        self.conv2 = ConvNorm(c_out, c_out, 3, 1, False, eps, dtype, rng)
        self.shortcut = (
            ConvNorm(c_in, c_out, 1, stride, False, eps, dtype, rng) if (c_in != c_out or stride != 1) else None
        )

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, BasicBlockCache]:
        h, c1 = self.conv1.forward(x)
        h, c2 = self.conv2.forward(h)
        r, cs = (x, None) if self.shortcut is None else self.shortcut.forward(x)
        y, c_relu = relu_forward(h + r)
        return y, BasicBlockCache(c1, c2, cs, c_relu)

    def backward(self, dout: np.ndarray, cache: BasicBlockCache) -> np.ndarray:
        ds = relu_backward(dout, cache.relu)  # into h + r: both branches get it
        dx = self.conv1.backward(self.conv2.backward(ds, cache.conv2), cache.conv1)
        return dx + (ds if self.shortcut is None else self.shortcut.backward(ds, cache.shortcut))

    def calibrate(self, x: np.ndarray) -> np.ndarray:
        """:meth:`ConvNorm.calibrate` of conv1, conv2 and the shortcut, in the order the forward runs them."""
        h = self.conv2.calibrate(self.conv1.calibrate(x))
        r = x if self.shortcut is None else self.shortcut.calibrate(x)
        return relu_forward(h + r)[0]


@dataclass(frozen=True)
class BackboneCache:
    stem: ConvNormCache
    pool: MaxPool2dCache
    blocks: tuple[BasicBlockCache, ...]  # every block of every stage, in order


class ResNetBackbone(Module):
    """Stem (7 x 7 stride-2 conv, frozen BN, ReLU, 3 x 3 stride-2 max-pool) and the stages: ``(B, Cin, H, W) ->
    (B, hidden_sizes[-1], H / stride, W / stride)``. Parameters ``stem.*`` and ``stages.i.j.*``."""

    def __init__(self, config: DetrConfig, dtype: np.dtype | type = np.float64, rng=None) -> None:
        super().__init__()
        c, eps = config, config.batch_norm_eps
        self.stem = ConvNorm(c.num_channels, c.embedding_size, 7, 2, True, eps, dtype, rng)
        widths = (c.embedding_size, *c.hidden_sizes)
        stages = []
        for s, depth in enumerate(c.depths):
            stride = 1 if s == 0 else 2
            blocks = [BasicBlock(widths[s], widths[s + 1], stride, eps, dtype, rng)]
            blocks += [BasicBlock(widths[s + 1], widths[s + 1], 1, eps, dtype, rng) for _ in range(depth - 1)]
            stages.append(ModuleList(blocks))
        self.stages = ModuleList(stages)

    def blocks(self) -> list[BasicBlock]:
        return [b for stage in self.stages for b in stage]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, BackboneCache]:
        y, c_stem = self.stem.forward(x)
        y, c_pool = max_pool2d_forward(y, 3, 2, 1)
        caches = []
        for block in self.blocks():
            y, cb = block.forward(y)
            caches.append(cb)
        return y, BackboneCache(c_stem, c_pool, tuple(caches))

    def backward(self, dout: np.ndarray, cache: BackboneCache) -> np.ndarray:
        for block, cb in zip(reversed(self.blocks()), reversed(cache.blocks), strict=True):
            dout = block.backward(dout, cb)
        return self.stem.backward(max_pool2d_backward(dout, cache.pool), cache.stem)

    def calibrate_batch_norm(self, x: np.ndarray) -> np.ndarray:
        r"""Give every frozen batch norm the statistics of its input on the images ``x`` (B, Cin, H, W).

        Layer by layer in the forward's order, each conv's output on ``x`` gives the norm its
        ``running_mean`` and ``running_var`` (per channel over ``B, H, W``), so that

        .. math:: \mathrm{BN}(y)_c = (y_c - \bar y_c) / \sqrt{\mathrm{var}(y_c) + \varepsilon}

        has mean 0 and variance about 1 on these images -- what a trained ResNet's frozen statistics
        are: measured on data. Without it a backbone trained from scratch has no normalisation at all
        (a fresh frozen norm is the identity) and no bias either (its convs have none): the signal
        shrinks through every layer and black pixels can only give 0. ``weight`` and ``bias`` stay 1
        and 0. Returns the backbone's output on ``x`` with the new statistics.
        """
        y = self.stem.calibrate(x)
        y, _ = max_pool2d_forward(y, 3, 2, 1)
        for block in self.blocks():
            y = block.calibrate(y)
        return y


# ---------------------------------------------------------------------------- the Transformer layers


def attend_with_positions(
    attn: MultiHeadAttention, x_q, pos_q, x_kv, pos_k
) -> tuple[np.ndarray, MultiHeadAttentionCache]:
    """``attn(x_q + pos_q, x_kv + pos_k, x_kv)``: positions on queries and keys, never on values."""
    return attn.forward(x_q + pos_q, x_kv + pos_k, x_kv)


@dataclass(frozen=True)
class DetrEncoderLayerCache:
    self_attn: MultiHeadAttentionCache
    norm1: LayerNormCache
    ff: FeedForwardCache
    norm2: LayerNormCache


class DetrEncoderLayer(Module):
    """Post-LN: ``h = norm1(x + SA(x + p, x + p, x))``, ``out = norm2(h + ff(h))``."""

    def __init__(self, config: DetrConfig, dtype=np.float64, rng=None) -> None:
        super().__init__()
        c = config
        self.self_attn = MultiHeadAttention(c.d_model, c.encoder_attention_heads, dtype=dtype, rng=rng)
        self.norm1 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.ff = FeedForward(c.d_model, c.encoder_ffn_dim, "relu", dtype=dtype, rng=rng)
        self.norm2 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    def forward(self, x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, DetrEncoderLayerCache]:
        a, c_sa = attend_with_positions(self.self_attn, x, pos, x, pos)  # (B, S, C)
        h, c_n1 = self.norm1.forward(x + a)
        f, c_ff = self.ff.forward(h)
        y, c_n2 = self.norm2.forward(h + f)
        return y, DetrEncoderLayerCache(c_sa, c_n1, c_ff, c_n2)

    def backward(self, dout: np.ndarray, cache: DetrEncoderLayerCache) -> np.ndarray:
        """The gradient of ``x`` (the positions are a constant)."""
        dz = self.norm2.backward(dout, cache.norm2)  # into h + f
        dh = dz + self.ff.backward(dz, cache.ff)
        dz = self.norm1.backward(dh, cache.norm1)  # into x + a
        dq, dk, dv = self.self_attn.backward(dz, cache.self_attn)
        return dz + dq + dk + dv  # x feeds the residual, the query, the key and the value


@dataclass(frozen=True)
class DetrDecoderLayerCache:
    self_attn: MultiHeadAttentionCache
    norm1: LayerNormCache
    cross_attn: MultiHeadAttentionCache
    norm2: LayerNormCache
    ff: FeedForwardCache
    norm3: LayerNormCache


class DetrDecoderLayer(Module):
    """Post-LN, no causal mask: ``t1 = norm1(t + SA(t + e, t + e, t))``,
    ``t2 = norm2(t1 + CA(t1 + e, m + p, m))``, ``out = norm3(t2 + ff(t2))``."""

    def __init__(self, config: DetrConfig, dtype=np.float64, rng=None) -> None:
        super().__init__()
        c = config
        self.self_attn = MultiHeadAttention(c.d_model, c.decoder_attention_heads, dtype=dtype, rng=rng)
        self.norm1 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.cross_attn = MultiHeadAttention(c.d_model, c.decoder_attention_heads, dtype=dtype, rng=rng)
        self.norm2 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.ff = FeedForward(c.d_model, c.decoder_ffn_dim, "relu", dtype=dtype, rng=rng)
        self.norm3 = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    def forward(self, t, query_pos, memory, memory_pos) -> tuple[np.ndarray, DetrDecoderLayerCache]:
        a, c_sa = attend_with_positions(self.self_attn, t, query_pos, t, query_pos)  # (B, Q, C)
        t1, c_n1 = self.norm1.forward(t + a)
        b, c_ca = attend_with_positions(self.cross_attn, t1, query_pos, memory, memory_pos)  # (B, Q, C)
        t2, c_n2 = self.norm2.forward(t1 + b)
        f, c_ff = self.ff.forward(t2)
        y, c_n3 = self.norm3.forward(t2 + f)
        return y, DetrDecoderLayerCache(c_sa, c_n1, c_ca, c_n2, c_ff, c_n3)

    def backward(self, dout, cache: DetrDecoderLayerCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dt, dquery_pos, dmemory)``, each of its input's shape."""
        dz = self.norm3.backward(dout, cache.norm3)
        dt2 = dz + self.ff.backward(dz, cache.ff)
        dz = self.norm2.backward(dt2, cache.norm2)  # into t1 + b
        dq, dk, dv = self.cross_attn.backward(dz, cache.cross_attn)
        dt1 = dz + dq
        dpos = dq.copy()  # e is added to the cross-attention's query
        dmemory = dk + dv
        dz = self.norm1.backward(dt1, cache.norm1)  # into t + a
        dq, dk, dv = self.self_attn.backward(dz, cache.self_attn)
        return dz + dq + dk + dv, dpos + dq + dk, dmemory


# ---------------------------------------------------------------------------- the detector


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow: ``exp(x) / (1 + exp(x))`` where ``x < 0``."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


@dataclass(frozen=True)
class DetrOutput:
    logits: np.ndarray  # (L, B, Q, V): every decoder layer's, the last one last
    pred_boxes: np.ndarray  # (L, B, Q, 4) cxcywh in [0, 1]
    cross_attentions: tuple[np.ndarray, ...]  # per decoder layer (B, H, Q, S) over the h x w cells
    feature_size: tuple[int, int]  # (h, w)


@dataclass(frozen=True)
class DetrHeadCache:
    norm: LayerNormCache  # decoder_norm of this layer's output
    class_head: LinearCache
    box_layers: tuple[LinearCache, LinearCache, LinearCache]
    box_relus: tuple[ReluCache, ReluCache]
    boxes: np.ndarray  # (B, Q, 4) the sigmoid's output: its derivative is boxes (1 - boxes)


@dataclass(frozen=True)
class DetrCache:
    backbone: BackboneCache
    projection: Conv2dCache
    encoder: tuple[DetrEncoderLayerCache, ...]
    decoder: tuple[DetrDecoderLayerCache, ...]
    heads: tuple[DetrHeadCache, ...]  # one per decoder layer
    feature_shape: tuple[int, int, int, int]  # (B, C, h, w) after the projection


class DETR(Module):
    """DETR for object detection (Hugging Face's ``DetrForObjectDetection``), every decoder layer's outputs.

    Parameters: ``backbone.*``, ``input_projection.weight`` / ``.bias`` (C, Cb, 1, 1), ``query_position_embeddings``
    (Q, C), ``encoder.i.*``, ``decoder.l.*``, ``decoder_norm.*``, ``class_head.*`` (V, C), ``box_head.i.*``.
    """

    def __init__(self, config: DetrConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None):
        super().__init__()
        if not isinstance(config, DetrConfig):
            raise TypeError(f"config: expected a DetrConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        self._init_parameters(
            query_position_embeddings=rng.standard_normal((c.num_queries, c.d_model)).astype(self.dtype)
        )  # as nn.Embedding: N(0, 1)
        self.backbone = ResNetBackbone(c, dtype, rng)
        self.input_projection = Conv2d(c.hidden_sizes[-1], c.d_model, 1, dtype=dtype, rng=rng)
        self.encoder = ModuleList([DetrEncoderLayer(c, dtype, rng) for _ in range(c.encoder_layers)])
        self.decoder = ModuleList([DetrDecoderLayer(c, dtype, rng) for _ in range(c.decoder_layers)])
        self.decoder_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.class_head = Linear(c.d_model, c.num_labels + 1, dtype=dtype, rng=rng)
        self.box_head = ModuleList([Linear(c.d_model, c.d_model, dtype=dtype, rng=rng) for _ in range(2)]
                                   + [Linear(c.d_model, 4, dtype=dtype, rng=rng)])  # fmt: skip

    def check_pixel_values(self, pixel_values: object) -> np.ndarray:
        check_float_array("pixel_values", pixel_values)
        c = self.config
        if pixel_values.dtype != self.dtype:
            raise TypeError(f"pixel_values: expected dtype {self.dtype} (the model's dtype), got {pixel_values.dtype}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != c.num_channels or pixel_values.shape[0] < 1:
            raise ValueError(
                f"pixel_values: expected shape (B, {c.num_channels}, H, W) with B >= 1, got {pixel_values.shape}"
            )
        if min(pixel_values.shape[2:]) < c.stride:
            raise ValueError(
                f"pixel_values: expected H, W >= {c.stride} (the backbone's stride), got {pixel_values.shape[2:]}"
            )
        return pixel_values

    def forward(self, pixel_values: np.ndarray) -> tuple[DetrOutput, DetrCache]:
        """``pixel_values`` (B, Cin, H, W) -> logits (L, B, Q, V) and boxes (L, B, Q, 4) of every decoder layer."""
        x = self.check_pixel_values(pixel_values)
        f, c_bb = self.backbone.forward(x)  # (B, Cb, h, w)
        g, c_proj = self.input_projection.forward(f)  # (B, C, h, w)
        B, C, h, w = g.shape
        m = np.ascontiguousarray(g.reshape(B, C, h * w).transpose(0, 2, 1))  # (B, S, C): cells row by row
        pos = detr_sine_position_embedding(h, w, C, self.dtype)[None]  # (1, S, C), broadcast over B
        enc = []
        for layer in self.encoder:
            m, cl = layer.forward(m, pos)
            enc.append(cl)
        Q = self.config.num_queries
        t = np.zeros((B, Q, C), dtype=self.dtype)
        e = np.broadcast_to(self.query_position_embeddings, (B, Q, C))
        dec, heads, logits, boxes = [], [], [], []
        for layer in self.decoder:
            t, cl = layer.forward(t, e, m, pos)
            dec.append(cl)
            z, b, ch = self._heads(t)
            heads.append(ch)
            logits.append(z)
            boxes.append(b)
        cache = DetrCache(c_bb, c_proj, tuple(enc), tuple(dec), tuple(heads), (B, C, h, w))
        cross = tuple(cl.cross_attn.weights for cl in dec)
        return DetrOutput(np.stack(logits), np.stack(boxes), cross, (h, w)), cache

    def _heads(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, DetrHeadCache]:
        y, c_norm = self.decoder_norm.forward(t)  # (B, Q, C)
        z, c_cls = self.class_head.forward(y)  # (B, Q, V)
        u, c0 = self.box_head[0].forward(y)
        u, r0 = relu_forward(u)
        u, c1 = self.box_head[1].forward(u)
        u, r1 = relu_forward(u)
        u, c2 = self.box_head[2].forward(u)  # (B, Q, 4)
        b = sigmoid(u)
        return z, b, DetrHeadCache(c_norm, c_cls, (c0, c1, c2), (r0, r1), b)

    def _heads_backward(self, dz: np.ndarray, db: np.ndarray, c: DetrHeadCache) -> np.ndarray:
        one = self.dtype.type(1)
        du = db * c.boxes * (one - c.boxes)  # sigmoid' = b (1 - b)
        du = self.box_head[2].backward(du, c.box_layers[2])
        du = self.box_head[1].backward(relu_backward(du, c.box_relus[1]), c.box_layers[1])
        dy = self.box_head[0].backward(relu_backward(du, c.box_relus[0]), c.box_layers[0])
        dy = dy + self.class_head.backward(dz, c.class_head)
        return self.decoder_norm.backward(dy, c.norm)

    def backward(self, dlogits: np.ndarray, dboxes: np.ndarray, cache: DetrCache) -> np.ndarray:
        r"""Accumulate every parameter gradient from ``dlogits`` (L, B, Q, V) and ``dboxes`` (L, B, Q, 4).

        Returns the gradient of ``pixel_values``. The decoder layers are a chain whose every link also
        feeds the heads, so layer ``l``'s output gets its head's gradient plus what comes back from
        layer ``l + 1``:

        .. math:: dt_l = \mathrm{norm}'(dy_l) + \partial t_{l+1} / \partial t_l \cdot dt_{l+1}

        The query positions ``e`` enter every decoder layer (three times each): their gradient is the
        sum over layers and images. The memory ``m`` feeds every cross-attention: its gradient is the
        sum over decoder layers, then it goes back through the encoder, the projection and the backbone.
        """
        B, C, h, w = cache.feature_shape
        L, Q, V = len(cache.decoder), self.config.num_queries, self.config.num_labels + 1
        for name, g, shape in (("dlogits", dlogits, (L, B, Q, V)), ("dboxes", dboxes, (L, B, Q, 4))):
            check_float_array(name, g)
            if g.shape != shape or g.dtype != self.dtype:
                raise ValueError(f"{name}: expected {self.dtype} of shape {shape}, got {g.dtype} {g.shape}")
        dt = np.zeros((B, Q, C), dtype=self.dtype)
        de = np.zeros((B, Q, C), dtype=self.dtype)
        dm = np.zeros((B, h * w, C), dtype=self.dtype)
        for l in reversed(range(L)):
            dt = dt + self._heads_backward(dlogits[l], dboxes[l], cache.heads[l])
            dt, de_l, dm_l = self.decoder[l].backward(dt, cache.decoder[l])
            de += de_l
            dm += dm_l
        self.accumulate_grad("query_position_embeddings", de.sum(axis=0))  # broadcast over the batch
        for layer, cl in zip(reversed(list(self.encoder)), reversed(cache.encoder), strict=True):
            dm = layer.backward(dm, cl)
        dg = np.ascontiguousarray(dm.transpose(0, 2, 1)).reshape(B, C, h, w)  # undo the flatten
        df = self.input_projection.backward(dg, cache.projection)
        return self.backbone.backward(df, cache.backbone)

    def supervised(self, output: DetrOutput) -> tuple[np.ndarray, np.ndarray]:
        """The layers the set loss reads: all of them with ``auxiliary_loss``, else the last one."""
        if self.config.auxiliary_loss:
            return output.logits, output.pred_boxes
        return output.logits[-1:], output.pred_boxes[-1:]

    def full_gradients(self, dlogits: np.ndarray, dboxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gradients of :meth:`supervised`'s layers, padded with zeros to every layer (for :meth:`backward`)."""
        L = self.config.decoder_layers
        if dlogits.shape[0] == L:
            return dlogits, dboxes
        z = np.zeros((L, *dlogits.shape[1:]), dtype=dlogits.dtype)
        b = np.zeros((L, *dboxes.shape[1:]), dtype=dboxes.dtype)
        z[-1], b[-1] = dlogits[-1], dboxes[-1]
        return z, b
