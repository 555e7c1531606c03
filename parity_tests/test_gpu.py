"""The same parity on CUDA (TF32 off): float32 within 1e-4, float64 within 1e-10. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from torch_transformer.parity import CASES, default_dims, enable_exact_cuda_matmul, run_case

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_matches_twin_on_cuda(name, dtype):
    enable_exact_cuda_matmul()
    case = CASES[name]
    for dims in default_dims(case):
        result = run_case(case, dims, dtype, seed=0, device="cuda", finite_differences=False, builtin=False)
        assert not result.failures(), result.failures()


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
