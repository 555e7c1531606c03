"""The cost model of a training step (``applications/step_cost.py``) and ``benchmark``'s side-by-side run."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_transformer.applications.step_cost import Product, time_products, total_flops, transformer_products
from numpy_transformer.config import TransformerConfig


def test_the_benchmark_step_is_3_36_gflop_of_products():
    """Issue 15 counts 3.36 GFLOP of matrix products in the default benchmark step; so must the list."""
    from numpy_transformer.commands.benchmark import BATCH, BENCH_CONFIG, LENGTH

    products = transformer_products(TransformerConfig(**BENCH_CONFIG), BATCH, LENGTH, LENGTH)
    assert total_flops(products) == pytest.approx(3.3628e9, rel=1e-4)


def test_products_by_hand_for_a_one_layer_model():
    config = TransformerConfig(src_vocab_size=7, tgt_vocab_size=5, d_model=4, n_heads=2, n_encoder_layers=1,
                               n_decoder_layers=0, d_ff=6)  # fmt: skip
    products = transformer_products(config, batch=3, src_len=2, tgt_len=1)
    N, C, F, V = 3 * 2, 4, 6, 5
    linear = 3 * (4 * N * C * C + N * C * F + N * F * C) + 3 * (3 * 1) * C * V  # fwd, dx, dW each
    attention = 6 * (3 * 2) * 2 * 2 * 2  # six products of T S D over B H heads
    assert total_flops(products) == 2 * (linear + attention)
    assert Product("x", 2, 3, 4, 5, count=3).flops == 2 * 3 * 2 * 3 * 4 * 5


def test_time_products_is_positive_and_grows_with_the_count():
    one = [Product("p", 1, 64, 64, 64)]
    assert time_products(one, np.float32) > 0
    many = [Product("p", 1, 64, 64, 64, count=50)]
    assert time_products(many, np.float32) > time_products(one, np.float32)
    with pytest.raises(TypeError, match="config: expected a TransformerConfig"):
        transformer_products("config", 1, 1, 1)


def test_side_by_side_runs_both_steps_and_formats_a_row():
    pytest.importorskip("torch")
    from numpy_transformer.commands.benchmark import format_side_by_side, side_by_side

    row = side_by_side("float32", pairs=1, warmup=0)
    assert row.numpy_ms > 0 and row.builtin_ms > 0 and row.gemm_ms > 0 and row.gflop == pytest.approx(3.36, abs=0.01)
    table = format_side_by_side([row], pairs=1)
    assert "| float32 |" in table and "NumPy / nn.Transformer" in table
