"""The cost model of a training step (``applications/step_cost.py``) and ``benchmark``'s side-by-side run."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_transformer.applications.step_cost import (
    Product,
    ProductClock,
    time_products,
    total_flops,
    transformer_products,
)
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
    assert row.in_step_ms > 0 and 0 < row.in_step_share < 1
    table = format_side_by_side([row], pairs=1)
    assert "| float32 |" in table and "NumPy / nn.Transformer" in table and "share, in the step" in table


def _small_step(dtype, clock=None, tie=False, norm_first=False):
    """One forward + backward of a small Transformer: (loss, the parameters' gradients, the model, its config)."""
    from numpy_transformer.functional.softmax import cross_entropy_backward, cross_entropy_forward
    from numpy_transformer.models.transformer import Transformer

    config = TransformerConfig(src_vocab_size=11, tgt_vocab_size=13, d_model=8, n_heads=2, n_encoder_layers=2,
                               n_decoder_layers=2, d_ff=12, tie_embeddings=tie, norm_first=norm_first)  # fmt: skip
    rng = np.random.default_rng(3)
    model = Transformer(config, dtype=dtype, rng=rng)
    if clock is not None:
        clock.mark(model)
    src, tgt_in, tgt_out = (rng.integers(1, 11, size=(3, 5)) for _ in range(3))
    logits, cache = model.forward(src, tgt_in, rng=rng)
    loss, loss_cache = cross_entropy_forward(logits, tgt_out, ignore_index=0)
    model.backward(cross_entropy_backward(1.0, loss_cache), cache)
    return float(loss), dict(model.named_grads()), model, config


@pytest.mark.parametrize("tie, norm_first", [(False, False), (True, True)])
def test_the_clock_times_every_product_the_cost_model_lists(tie, norm_first):
    """The clock counts the ``@`` the model really computes; the cost model lists them from the
    architecture. Equal counts check both: a product the list forgets, or one the clock misses."""
    clock = ProductClock()
    _, _, _, config = _small_step(np.float64, clock, tie, norm_first)
    listed = sum(p.count for p in transformer_products(config, batch=3, src_len=5, tgt_len=5))
    assert clock.count == listed == 135
    assert clock.seconds > 0


def test_a_clocked_model_computes_the_same_numbers_and_stays_clocked_through_adam():
    from numpy_transformer.optim import Adam

    clock = ProductClock()
    loss, grads, model, _ = _small_step(np.float32, None)
    loss_c, grads_c, model_c, _ = _small_step(np.float32, clock)
    assert loss_c == loss
    assert grads_c.keys() == grads.keys()
    for name, g in grads.items():
        np.testing.assert_array_equal(grads_c[name], g, err_msg=name)
    Adam(model, lr=1e-2).step()
    Adam(model_c, lr=1e-2).step()
    for (name, p), (_, p_c) in zip(model.named_parameters(), model_c.named_parameters(), strict=True):
        assert type(p_c) is not np.ndarray and isinstance(p_c, np.ndarray), name  # updated in place, still clocked
        np.testing.assert_array_equal(p_c.view(np.ndarray), p, err_msg=name)


def test_the_clock_times_a_product_from_either_side_and_leaves_its_values_alone():
    clock = ProductClock()
    a = np.arange(6.0).reshape(2, 3)
    marked = a.copy().view(clock._kind)
    left, right = marked @ a.T, a.T @ marked
    assert clock.count == 2
    np.testing.assert_array_equal(left.view(np.ndarray), a @ a.T)
    np.testing.assert_array_equal(right.view(np.ndarray), a.T @ a)
    assert type(left) is clock._kind and type(right) is clock._kind  # what is computed from them is clocked too
    a @ a.T
    assert clock.count == 2  # a product of plain arrays is not timed
    with pytest.raises(TypeError, match="model: expected a numpy_transformer Module, got dict"):
        clock.mark({"weight": a})
    v = marked[0]
    dot = v @ a[0]
    assert type(dot) is np.float64 and dot == a[0] @ a[0] and clock.count == 3  # vector · vector: a scalar
