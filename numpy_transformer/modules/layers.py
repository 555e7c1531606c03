"""Parameter-owning layers: Linear, Embedding, LayerNorm, Dropout, FeedForward.

Initialisation follows the matching ``torch.nn`` module, so a model built here
starts from the same distribution as its PyTorch twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.activations import GeluCache, ReluCache, gelu_backward, gelu_forward, relu_backward, relu_forward
from ..functional.checks import check_dropout_p, check_padding_idx, check_positive_float, check_positive_int, check_rng
from ..functional.dropout import DropoutCache, dropout_backward, dropout_forward
from ..functional.embedding import EmbeddingCache, embedding_backward, embedding_forward
from ..functional.intermediates import gradient_at
from ..functional.layer_norm import LayerNormCache, layer_norm_backward, layer_norm_forward
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..functional.quick_gelu import QuickGeluCache, quick_gelu_backward, quick_gelu_forward
from .base import Module, check_module_dtype


class Linear(Module):
    """``y = x W^T + b``; ``weight`` is ``(out_features, in_features)`` as in ``torch.nn.Linear``.

    Init as ``torch.nn.Linear``: weight and bias uniform in ``±1/sqrt(in_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(self.dtype)
        b = rng.uniform(-bound, bound, (out_features,)).astype(self.dtype) if bias else None
        self._init_parameters(weight=weight, bias=b)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, LinearCache]:
        return linear_forward(x, self.weight, self.bias)

    def backward(self, dout: np.ndarray, cache: LinearCache) -> np.ndarray:
        dx, dweight, dbias = linear_backward(dout, cache)
        self.accumulate_grad("weight", dweight)
        self.accumulate_grad("bias", dbias)
        return dx


class Embedding(Module):
    """Lookup table ``(num_embeddings, embedding_dim)``; init N(0, 1) as ``torch.nn.Embedding``.

    With ``padding_idx`` that row starts at zero and never receives a gradient.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.padding_idx = padding_idx = check_padding_idx(padding_idx, num_embeddings)
        self.dtype = check_module_dtype(dtype)
        weight = check_rng(rng).standard_normal((num_embeddings, embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self._init_parameters(weight=weight)

    def forward(self, ids: np.ndarray) -> tuple[np.ndarray, EmbeddingCache]:
        return embedding_forward(ids, self.weight, self.padding_idx)

    def backward(self, dout: np.ndarray, cache: EmbeddingCache) -> None:
        """Accumulates ``grads['weight']``; token ids have no gradient, so returns None."""
        self.accumulate_grad("weight", embedding_backward(dout, cache))


class LayerNorm(Module):
    """LayerNorm over the last dimension; ``weight`` ones and ``bias`` zeros at init."""

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        """``rng`` is accepted like every module's, and unused: the initial values are fixed (1 and 0)."""
        super().__init__()
        self.normalized_shape = check_positive_int("normalized_shape", normalized_shape)
        self.eps = check_positive_float("eps", eps)
        self.dtype = check_module_dtype(dtype)
        self._init_parameters(weight=np.ones(normalized_shape, self.dtype), bias=np.zeros(normalized_shape, self.dtype))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, LayerNormCache]:
        return layer_norm_forward(x, self.weight, self.bias, self.eps)

    def backward(self, dout: np.ndarray, cache: LayerNormCache) -> np.ndarray:
        dx, dweight, dbias = layer_norm_backward(dout, cache)
        self.accumulate_grad("weight", dweight)
        self.accumulate_grad("bias", dbias)
        return dx


class Dropout(Module):
    """Inverted dropout, active only in training mode.

    ``rng`` given here is the default generator for ``forward``'s masks; a generator or
    an explicit ``mask`` passed to ``forward`` takes precedence.
    """

    def __init__(self, p: float = 0.1, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.p = check_dropout_p(p)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
        self.rng = rng

    def forward(
        self, x: np.ndarray, rng: np.random.Generator | None = None, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, DropoutCache]:
        return dropout_forward(x, self.p, rng=rng or self.rng, mask=mask, training=self.training)

    def backward(self, dout: np.ndarray, cache: DropoutCache) -> np.ndarray:
        return dropout_backward(dout, cache)


@dataclass(frozen=True)
class FeedForwardCache:
    linear1: LinearCache
    activation: ReluCache | GeluCache | QuickGeluCache
    dropout: DropoutCache
    linear2: LinearCache


class FeedForward(Module):
    """Position-wise feed-forward: ``linear2(dropout(activation(linear1(x))))``.

    Shapes: ``x`` (..., C) -> hidden (..., F) -> out (..., C).
    ``activation`` is ``"relu"``, ``"gelu"`` (exact erf), ``"gelu_tanh"`` or ``"quick_gelu"`` (CLIP's).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("relu", "gelu", "gelu_tanh", "quick_gelu"):
            raise ValueError(f"activation: expected 'relu', 'gelu', 'gelu_tanh' or 'quick_gelu', got {activation!r}")
        self.activation = activation
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        self.linear1 = Linear(d_model, d_ff, bias=bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(d_ff, d_model, bias=bias, dtype=dtype, rng=rng)

    def forward(
        self, x: np.ndarray, rng: np.random.Generator | None = None, dropout_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, FeedForwardCache]:
        h, c1 = self.linear1.forward(x)  # (..., F)
        if self.activation == "relu":
            a, ca = relu_forward(h)
        elif self.activation == "quick_gelu":
            a, ca = quick_gelu_forward(h)
        else:
            a, ca = gelu_forward(h, "none" if self.activation == "gelu" else "tanh")
        a, cd = self.dropout.forward(a, rng=rng, mask=dropout_mask)  # (..., F)
        y, c2 = self.linear2.forward(a)  # (..., C)
        return y, FeedForwardCache(linear1=c1, activation=ca, dropout=cd, linear2=c2)

    def backward(self, dout: np.ndarray, cache: FeedForwardCache) -> np.ndarray:
        da = self.linear2.backward(dout, cache.linear2)
        da = gradient_at("a", self.dropout.backward(da, cache.dropout))  # (..., F) gradient at the activation
        if isinstance(cache.activation, ReluCache):
            dh = relu_backward(da, cache.activation)
        elif isinstance(cache.activation, QuickGeluCache):
            dh = quick_gelu_backward(da, cache.activation)
        else:
            dh = gelu_backward(da, cache.activation)
        return self.linear1.backward(gradient_at("h", dh), cache.linear1)  # (..., F) gradient at h = linear1(x)
