"""A small convolutional classifier, forward and backward by hand: the baseline next to the ViT.

Shape legend: ``B`` batch, ``Cin`` image channels, ``I`` image side, ``C_s`` channels of stage ``s``,
``K`` classes.

The network, read top to bottom (``CNNConfig``; the default is two stages on 8 x 8 digits)::

    x_0    = pixels                                      (B, Cin, I, I)
    x_s+1  = maxpool2(relu(conv_s(x_s)))  s = 0 .. S-1   (B, C_s, I / 2^(s+1), I / 2^(s+1))
    f      = flatten(x_S)                                (B, C_S * side^2)  channel, row, column order
    logits = head(f)                                     (B, K)

Backward runs the same chain in reverse: the head's transpose, a reshape, then per stage the pool
(each upstream value to the window's arg-max), ReLU's 0/1 gate and the conv's ``col2im``.
Parameter names match the twin and a ``torch.nn`` model with ``stages.<s>.conv`` and ``head``.

Where a ViT learns which patches to mix from data, a conv layer has that prior built in: each output
sees a ``k x k`` neighbourhood and every position shares the same weights. On 1 437 training images
that prior is worth a lot (the README's vision section compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CNNConfig
from ..functional.activations import ReluCache, relu_backward, relu_forward
from ..functional.checks import check_int_array, check_rng
from ..functional.conv import Conv2dCache, MaxPool2dCache
from ..functional.linear import LinearCache
from ..functional.softmax import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.conv import Conv2d, MaxPool2d
from ..modules.layers import Linear


@dataclass(frozen=True)
class StageCache:
    conv: Conv2dCache
    relu: ReluCache
    pool: MaxPool2dCache


class Stage(Module):
    """``maxpool2(relu(conv(x)))`` with a ``k x k`` conv, padding ``k // 2`` (the image keeps its size)."""

    def __init__(self, c_in: int, c_out: int, k: int, dtype: np.dtype, rng: np.random.Generator) -> None:
        super().__init__()
        self.conv = Conv2d(c_in, c_out, k, padding=k // 2, dtype=dtype, rng=rng)
        self.pool = MaxPool2d(2)
        self._init_parameters()

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, StageCache]:
        y, c_conv = self.conv.forward(x)
        a, c_relu = relu_forward(y)
        out, c_pool = self.pool.forward(a)
        return out, StageCache(c_conv, c_relu, c_pool)

    def backward(self, dout: np.ndarray, cache: StageCache) -> np.ndarray:
        da = self.pool.backward(dout, cache.pool)
        dy = relu_backward(da, cache.relu)
        return self.conv.backward(dy, cache.conv)


@dataclass(frozen=True)
class CNNOutput:
    logits: np.ndarray  # (B, K)
    loss: np.ndarray | None  # 0-d mean cross-entropy, when labels were given


@dataclass(frozen=True)
class CNNCache:
    stages: tuple[StageCache, ...]
    feature_shape: tuple[int, ...]  # (B, C_S, side, side), before flattening
    head: LinearCache
    loss: CrossEntropyCache | None


class ImageCNN(Module):
    """``CNNConfig``'s classifier: conv stages, flatten, a linear head; the API of ``ViTForImageClassification``."""

    def __init__(
        self, config: CNNConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, CNNConfig):
            raise TypeError(f"config: expected a CNNConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config, self.dtype = config, check_module_dtype(dtype)
        widths = (config.num_channels, *config.channels)
        self.stages = ModuleList(
            [Stage(widths[s], widths[s + 1], config.kernel_size, self.dtype, rng) for s in range(len(config.channels))]
        )
        self.head = Linear(config.flat_features, config.num_labels, dtype=self.dtype, rng=rng)
        self._init_parameters()

    def forward(
        self, pixel_values: np.ndarray, labels: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[CNNOutput, CNNCache]:
        """``pixel_values`` (B, Cin, I, I) -> logits (B, K); with ``labels`` (B,) also the mean cross-entropy.

        ``rng`` is accepted for the same call as the ViT's and unused (no dropout).
        """
        x = self._check_pixels(pixel_values)
        caches = []
        for stage in self.stages:
            x, c = stage.forward(x)
            caches.append(c)
        logits, c_head = self.head.forward(x.reshape(x.shape[0], -1))
        loss, c_loss = None, None
        if labels is not None:
            labels = check_int_array("labels", labels)
            if labels.shape != (x.shape[0],) or labels.min() < 0 or labels.max() >= self.config.num_labels:
                raise ValueError(
                    f"labels: expected {x.shape[0]} class ids in [0, {self.config.num_labels}), one per image; got "
                    f"shape {labels.shape}, range [{labels.min()}, {labels.max()}]"
                )
            loss, c_loss = cross_entropy_forward(logits, labels)
        return CNNOutput(logits, loss), CNNCache(tuple(caches), x.shape, c_head, c_loss)

    def _check_pixels(self, pixel_values: object) -> np.ndarray:
        c = self.config
        want = (c.num_channels, c.image_size, c.image_size)
        if not isinstance(pixel_values, np.ndarray) or pixel_values.dtype != self.dtype:
            got = pixel_values.dtype if isinstance(pixel_values, np.ndarray) else type(pixel_values).__name__
            raise TypeError(f"pixel_values: expected a {self.dtype} array (the model's dtype), got {got}")
        if pixel_values.ndim != 4 or pixel_values.shape[0] < 1 or pixel_values.shape[1:] != want:
            raise ValueError(f"pixel_values: expected shape (B, {', '.join(map(str, want))}), got {pixel_values.shape}")
        return pixel_values

    def backward(self, dlogits: np.ndarray | None, cache: CNNCache, dloss: float = 1.0) -> np.ndarray:
        """Accumulate every parameter gradient; return d pixel_values. ``dlogits=None``: of the loss."""
        if dlogits is None:
            if cache.loss is None:
                raise ValueError("dlogits: expected an array (the forward had no labels, so there is no loss)")
            dlogits = cross_entropy_backward(np.asarray(dloss, dtype=self.dtype), cache.loss)
        B, K = cache.feature_shape[0], self.config.num_labels
        if not isinstance(dlogits, np.ndarray) or dlogits.shape != (B, K) or dlogits.dtype != self.dtype:
            got = f"{dlogits.dtype} {dlogits.shape}" if isinstance(dlogits, np.ndarray) else type(dlogits).__name__
            raise ValueError(f"dlogits: expected {self.dtype} of shape {(B, K)} (those of the logits), got {got}")
        dx = self.head.backward(dlogits, cache.head).reshape(cache.feature_shape)
        for stage, c in zip(list(self.stages)[::-1], cache.stages[::-1], strict=True):
            dx = stage.backward(dx, c)
        return dx
