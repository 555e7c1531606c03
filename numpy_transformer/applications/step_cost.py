"""What one training step of the encoder–decoder Transformer costs in matrix products.

:func:`transformer_products` lists every matrix product a forward + backward of
:class:`~numpy_transformer.models.transformer.Transformer` makes, written out from the model
(the products, not the code that runs them), and :func:`time_products` times each one alone, on
fresh contiguous arrays, with the BLAS the step itself uses. Their sum is the step's **GEMM time**:
what the step would take if everything that is not a product were free. ``benchmark`` divides it
by the measured step to report the share of the step spent in products.

Timed alone, the fastest of several runs on warm caches, the products are a floor: inside the step
each is timed once, and meets operands that other work may have pushed out of cache.
:class:`ProductClock` measures them where they run:
it marks a model's parameters so that every ``@`` computed from them adds its seconds to the
clock, and ``benchmark`` divides that by the same step's time. The clock also counts the products,
so a test can check the list above against what the model really computes.

Per ``Linear(I -> O)`` over ``N`` rows: the forward ``(N, I)·(I, O)``, and in the backward
``dx = dy·W`` ``(N, O)·(O, I)`` and ``dW = dyᵀ·x`` ``(O, N)·(N, I)``: three products of
``N·I·O`` multiply-adds each. Per attention over ``B·H`` heads of width ``D`` with ``T``
queries and ``S`` keys: ``Q·Kᵀ`` and ``P·V`` forward, ``dO·Vᵀ``, ``Pᵀ·dO``, ``dS·K`` and
``dSᵀ·Q`` backward: six batched products of ``T·S·D`` each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..config import TransformerConfig


@dataclass(frozen=True)
class Product:
    """``count`` products of ``batch`` independent ``(m, k) · (k, n)`` matrices."""

    name: str
    batch: int
    m: int
    k: int
    n: int
    count: int = 1

    @property
    def flops(self) -> int:
        """Multiply and add counted apart: ``2·batch·m·k·n`` per product."""
        return 2 * self.count * self.batch * self.m * self.k * self.n


def _linear(name: str, rows: int, n_in: int, n_out: int, count: int) -> list[Product]:
    return [
        Product(f"{name} forward", 1, rows, n_in, n_out, count),
        Product(f"{name} dx", 1, rows, n_out, n_in, count),
        Product(f"{name} dW", 1, n_out, rows, n_in, count),
    ]


def _attention(name: str, heads: int, T: int, S: int, D: int, count: int) -> list[Product]:
    return [
        Product(f"{name} Q·Kᵀ", heads, T, D, S, count),
        Product(f"{name} P·V", heads, T, S, D, count),
        Product(f"{name} dO·Vᵀ", heads, T, D, S, count),
        Product(f"{name} Pᵀ·dO", heads, S, T, D, count),
        Product(f"{name} dS·K", heads, T, S, D, count),
        Product(f"{name} dSᵀ·Q", heads, S, T, D, count),
    ]


def transformer_products(config: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> list[Product]:
    """Every matrix product of one forward + backward of the Transformer on ``(batch, src_len)`` sources
    and ``(batch, tgt_len)`` targets (the embeddings' gathers and scatters are not products)."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config: expected a TransformerConfig, got {type(config).__name__}")
    C, F, H = config.d_model, config.d_ff, config.n_heads
    D = C // H
    ns, nt = batch * src_len, batch * tgt_len  # rows on each side
    Le, Ld = config.n_encoder_layers, config.n_decoder_layers
    products = []
    # encoder layer: self-attention's q, k, v, out and the two feed-forward layers
    products += _linear("encoder q/k/v/out", ns, C, C, 4 * Le)
    products += _linear("encoder ff1", ns, C, F, Le)
    products += _linear("encoder ff2", ns, F, C, Le)
    products += _attention("encoder self-attention", batch * H, src_len, src_len, D, Le)
    # decoder layer: self-attention, cross-attention (keys and values from the memory), feed-forward
    products += _linear("decoder self q/k/v/out", nt, C, C, 4 * Ld)
    products += _linear("decoder cross q/out", nt, C, C, 2 * Ld)
    products += _linear("decoder cross k/v", ns, C, C, 2 * Ld)
    products += _linear("decoder ff1", nt, C, F, Ld)
    products += _linear("decoder ff2", nt, F, C, Ld)
    products += _attention("decoder self-attention", batch * H, tgt_len, tgt_len, D, Ld)
    products += _attention("decoder cross-attention", batch * H, tgt_len, src_len, D, Ld)
    products += _linear("output projection", nt, C, config.tgt_vocab_size, 1)
    return products


def total_flops(products: list[Product]) -> int:
    return sum(p.flops for p in products)


def time_products(products: list[Product], dtype: np.dtype | type, repeats: int = 5, seed: int = 0) -> float:
    """Seconds the products take run alone: for each, the fastest of ``repeats`` runs, times its count."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    total = 0.0
    for p in products:
        shape_a = (p.batch, p.m, p.k) if p.batch > 1 else (p.m, p.k)
        shape_b = (p.batch, p.k, p.n) if p.batch > 1 else (p.k, p.n)
        a = rng.standard_normal(shape_a).astype(dtype)
        b = rng.standard_normal(shape_b).astype(dtype)
        out = np.empty(shape_a[:-1] + (p.n,), dtype=dtype)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - start)
        total += best * p.count
    return total


class _ClockedArray(np.ndarray):
    """An ndarray whose ``@`` reports its seconds to ``clock`` (set on a subclass made per clock).

    The arrays computed from a clocked one are clocked too (NumPy keeps the subclass through
    ufuncs, views and reshapes), so marking a model's parameters reaches every activation and
    gradient. The product itself runs on plain views: the same BLAS call, the same numbers.
    """

    clock: ProductClock

    def __matmul__(self, other):
        return self.clock.matmul(self, other)

    def __rmatmul__(self, other):
        return self.clock.matmul(other, self)


class ProductClock:
    """Seconds and number of the matrix products computed from the parameters it has marked.

    ``clock.mark(model)`` turns every parameter of ``model`` into a view that reports to the clock
    (the values and the arrays' memory are unchanged; an optimizer built afterwards updates the
    views in place as usual). ``seconds`` and ``count`` then grow with every ``@`` of a forward or
    backward; read them before and after a step. Every ``@`` counts once: a tiled attention
    (``attention="flash"``) makes one per tile, more than :func:`transformer_products` lists.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0
        self._kind = type("Clocked", (_ClockedArray,), {"clock": self})

    def mark(self, model) -> None:
        """Make every parameter of ``model`` (a :class:`~numpy_transformer.modules.base.Module`) report here."""
        if not hasattr(model, "named_parameter_refs"):
            raise TypeError(f"model: expected a numpy_transformer Module, got {type(model).__name__}")
        for name, param, _, owner in list(model.named_parameter_refs()):
            setattr(owner, name.rsplit(".", 1)[-1], param.view(self._kind))

    def matmul(self, a, b) -> np.ndarray:
        """``a @ b`` on plain views, timed and counted; the result is marked like its operands."""
        plain_a = a.view(np.ndarray) if isinstance(a, np.ndarray) else a
        plain_b = b.view(np.ndarray) if isinstance(b, np.ndarray) else b
        start = time.perf_counter()
        out = plain_a @ plain_b
        self.seconds += time.perf_counter() - start
        self.count += 1
        return out.view(self._kind)  # (a NumPy scalar, from vector · vector, stays a scalar)
