"""The same parity on CUDA (TF32 off): float32 within 1e-4, float64 within 1e-10. Skipped without a GPU.

Also the twin's SDPA dispatch (``MultiHeadAttention.use_sdpa``, for speed on CUDA): forced on the
CPU in float64 it must give the written-out attention's numbers (these tests run everywhere), and
on CUDA the same. ``parity_tests/gpu_check.sh`` runs this file and the GPU benchmark.
"""

from __future__ import annotations

import numpy as np
import pytest

from numpy_transformer.testing import assert_close, tolerance
from torch_transformer.parity import CASES, default_dims, enable_exact_cuda_matmul, run_case


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_matches_twin_on_cuda(name, dtype):
    enable_exact_cuda_matmul()
    case = CASES[name]
    for dims in default_dims(case):
        result = run_case(case, dims, dtype, seed=0, device="cuda", finite_differences=False, builtin=False)
        assert not result.failures(), result.failures()


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case.builtin is not None))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_matches_the_declared_builtin_on_cuda(name, dtype):
    """The built-ins' own CUDA kernels (cuDNN's GRU, fused attention), our weights mapped in."""
    enable_exact_cuda_matmul()
    case = CASES[name]
    compared = 0
    for dims in default_dims(case):
        result = run_case(case, dims, dtype, seed=0, device="cuda", finite_differences=False)
        compared += bool(result.vs_builtin)
        assert not result.failures(), result.failures()
    assert compared, f"{name}: the built-in took none of the default draws"


@pytest.mark.gpu
def test_twin_module_runs_on_cuda_and_keeps_its_weights():
    import torch

    import numpy_transformer as nt
    from torch_transformer.bridge import state_dict_to_numpy, twin_of

    mha = nt.MultiHeadAttention(16, 4, rng=np.random.default_rng(0))
    twin = twin_of(mha, device="cuda")
    assert all(p.device.type == "cuda" for p in twin.parameters())
    back = state_dict_to_numpy(twin.state_dict())
    for name, value in mha.state_dict().items():
        assert np.array_equal(back[name], value), name
    assert torch.cuda.is_available()


# ---------------------------------------------------------------------------- the SDPA dispatch


def _twin_transformer(device: str, dtype, sdpa: bool, dropout: float = 0.0):
    """A small twin Transformer (the NumPy model's weights, float64 or float32) with or without the dispatch."""
    import torch

    import numpy_transformer as nt
    from torch_transformer.bridge import twin_of
    from torch_transformer.modules import use_sdpa

    cfg = nt.TransformerConfig(
        src_vocab_size=11, tgt_vocab_size=13, d_model=16, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
        d_ff=32, dropout=dropout, max_len=16,
    )  # fmt: skip
    model = nt.Transformer(cfg, dtype=dtype, rng=np.random.default_rng(0))
    twin = twin_of(model, device=device)
    twin.train(dropout > 0)
    return use_sdpa(twin, sdpa), torch


def _step_of(twin, torch, device: str, padded: bool):
    """Logits and every parameter gradient of one forward + backward, random upstream gradient, fixed ids."""
    rng = np.random.default_rng(1)
    src = rng.integers(1, 11, (3, 7))
    tgt = rng.integers(1, 13, (3, 6))
    if padded:
        src[1, 4:] = 0  # key padding in the encoder and the cross-attention
        tgt[2, 0] = 0  # a pad at position 0: that decoder query row sees no key at all
    logits = twin(torch.from_numpy(src).to(device), torch.from_numpy(tgt).to(device))
    upstream = torch.from_numpy(rng.standard_normal(tuple(logits.shape))).to(device=device, dtype=logits.dtype)
    twin.zero_grad()
    (logits * upstream).sum().backward()
    return logits.detach().cpu().numpy(), {k: p.grad.detach().cpu().numpy() for k, p in twin.named_parameters()}


@pytest.mark.parametrize("padded", [False, True])
def test_the_sdpa_dispatch_gives_the_written_out_attentions_numbers_on_the_cpu(padded):
    """Forced on the CPU, float64: logits and every gradient within the CPU contract (1e-10), causal
    masks, key padding and a fully masked query row included."""
    logits_w, grads_w = _step_of(*_twin_transformer("cpu", np.float64, sdpa=False), "cpu", padded)
    twin, torch = _twin_transformer("cpu", np.float64, sdpa=True)
    from torch_transformer import functional as TF

    calls = []
    real = TF.fused_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    TF.fused_attention = counting
    try:
        logits_f, grads_f = _step_of(twin, torch, "cpu", padded)
    finally:
        TF.fused_attention = real
    assert len(calls) == 6, f"the dispatch ran {len(calls)} times, expected 6 (2 encoder + 2 x 2 decoder attentions)"
    tol = tolerance("cpu", np.float64)
    assert_close("logits", logits_f, logits_w, tol)
    for key, g in grads_w.items():
        assert_close(f"grad {key}", grads_f[key], g, tol)


def test_the_sdpa_dispatch_is_skipped_where_the_written_out_path_is_needed():
    """An explicit dropout mask (replaying NumPy's), asked-for weights: the written-out path, the same numbers."""
    import torch

    from torch_transformer.modules import MultiHeadAttention

    mha = MultiHeadAttention(8, 2, dropout=0.5)
    mha.use_sdpa = True
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 5, 8)))
    keep = torch.from_numpy(np.random.default_rng(3).random((2, 2, 5, 5)) >= 0.5)
    out_mask = mha(x, x, x, dropout_mask=keep)
    mha.use_sdpa = False
    np.testing.assert_array_equal(out_mask.detach().numpy(), mha(x, x, x, dropout_mask=keep).detach().numpy())
    mha.use_sdpa = True
    _, weights = mha.eval()(x, x, x, return_weights=True)
    assert weights.shape == (2, 2, 5, 5)


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [False, True])
def test_the_sdpa_dispatch_gives_the_written_out_attentions_numbers_on_cuda(padded):
    """On CUDA (TF32 off) in float32: within the CUDA contract (1e-4 relative), PyTorch's fused kernels included."""
    enable_exact_cuda_matmul()
    logits_w, grads_w = _step_of(*_twin_transformer("cuda", np.float32, sdpa=False), "cuda", padded)
    logits_f, grads_f = _step_of(*_twin_transformer("cuda", np.float32, sdpa=True), "cuda", padded)
    tol = tolerance("cuda", np.float32)
    assert_close("logits", logits_f, logits_w, tol)
    for key, g in grads_w.items():
        assert_close(f"grad {key}", grads_f[key], g, tol)


def test_the_gpu_benchmark_runs_at_a_tiny_size_on_the_cpu():
    """``benchmark --device cuda``'s code path (twin with the dispatch vs nn.Transformer), tiny and on the CPU,
    in both of its dtypes: so that a GPU machine's only news is the timing."""
    from numpy_transformer.commands.benchmark import BENCH_CONFIG, device_side_by_side, format_device_side_by_side

    cfg = dict(BENCH_CONFIG, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32)
    rows = [device_side_by_side(d, 1, 0, device="cpu", config=cfg, batch=2, length=8) for d in ("float32", "bfloat16")]
    assert all(r.twin_ms > 0 and r.builtin_ms > 0 and r.ratio > 0 for r in rows)
    table = format_device_side_by_side(rows, 1, "cpu", cfg, 2, 8)
    assert "| bfloat16 |" in table and "twin / nn.Transformer" in table
