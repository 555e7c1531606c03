"""The weight and mask bridges of ``torch_transformer.bridge``, and where weights start.

* NumPy module -> twin (``twin_of``) -> NumPy (``copy_torch_to_numpy``): bit for bit,
  same dtype, same state-dict keys and shapes, for every module.
* ``mha_to_torch_builtin`` / ``mha_from_torch_builtin``: bit for bit, both directions.
* Mask converters: round trips, and wrong dtype / shape rejected.
* Initial distributions: NumPy modules, their twins and the ``torch.nn`` built-ins agree.

"Bit for bit" is checked on the raw bytes (``tobytes``), so even ``-0.0`` vs ``0.0`` or a
subnormal that was flushed would fail, and on the dtype.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import numpy_transformer as nt
import torch_transformer as tt
from numpy_transformer.functional import causal_mask
from parity_tests.helpers import to_numpy
from torch_transformer import bridge

DTYPES = [np.float32, np.float64]

MODULES = {
    "Linear": lambda dtype, rng: nt.Linear(3, 4, dtype=dtype, rng=rng),
    "Linear without bias": lambda dtype, rng: nt.Linear(3, 4, bias=False, dtype=dtype, rng=rng),
    "Embedding with padding_idx": lambda dtype, rng: nt.Embedding(7, 3, padding_idx=2, dtype=dtype, rng=rng),
    "LayerNorm": lambda dtype, rng: nt.LayerNorm(5, eps=1e-3, dtype=dtype),
    "FeedForward relu": lambda dtype, rng: nt.FeedForward(4, 8, activation="relu", dtype=dtype, rng=rng),
    "FeedForward gelu": lambda dtype, rng: nt.FeedForward(4, 8, activation="gelu", dropout=0.1, dtype=dtype, rng=rng),
    "FeedForward gelu_tanh without bias": lambda dtype, rng: nt.FeedForward(
        4, 6, activation="gelu_tanh", bias=False, dtype=dtype, rng=rng
    ),
    "MultiHeadAttention": lambda dtype, rng: nt.MultiHeadAttention(6, 3, dropout=0.1, dtype=dtype, rng=rng),
    "MultiHeadAttention without bias": lambda dtype, rng: nt.MultiHeadAttention(4, 2, bias=False, dtype=dtype, rng=rng),
}


def assert_bitwise_equal(name: str, actual, expected) -> None:
    a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    e = expected.detach().cpu().numpy() if isinstance(expected, torch.Tensor) else expected
    assert a.dtype == e.dtype, f"{name}: dtype {a.dtype} != {e.dtype}"
    assert a.shape == e.shape, f"{name}: shape {a.shape} != {e.shape}"
    assert np.array_equal(a, e) and a.tobytes() == e.tobytes(), f"{name}: not bit-for-bit equal"


def random_state(module: nt.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values with awkward bits: -0.0, a subnormal, a huge value."""
    state = {}
    for name, p in module.named_parameters():
        value = rng.standard_normal(p.shape).astype(p.dtype)
        flat = value.reshape(-1)
        specials = [-0.0, np.finfo(p.dtype).smallest_subnormal, -np.finfo(p.dtype).max / 3]
        flat[: len(specials)] = np.array(specials[: flat.size], dtype=p.dtype)
        state[name] = value
    return state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module_name", list(MODULES))
def test_twin_of_then_copy_torch_to_numpy_round_trips_every_parameter_bit_for_bit(module_name, dtype):
    rng = np.random.default_rng(0)
    ours = MODULES[module_name](dtype, rng)
    ours.load_state_dict(random_state(ours, rng))
    ours.eval()

    twin = bridge.twin_of(ours)
    twin_state = twin.state_dict()
    our_state = ours.state_dict()
    assert list(twin_state) == list(our_state), "state-dict keys (and their order) differ"
    assert not twin.training
    for name, value in our_state.items():
        assert twin_state[name].dtype == bridge.torch_dtype(dtype)
        assert tuple(twin_state[name].shape) == value.shape
        assert_bitwise_equal(f"twin {name}", twin_state[name], value)

    # Back into a fresh module whose weights all differ.
    fresh = MODULES[module_name](dtype, np.random.default_rng(1))
    assert any(not np.array_equal(p, our_state[n]) for n, p in fresh.named_parameters())
    bridge.copy_torch_to_numpy(twin, fresh)
    for name, p in fresh.named_parameters():
        assert_bitwise_equal(f"round trip {name}", p, our_state[name])

    # And the twin -> NumPy direction really reads the twin: change it, copy again.
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(-2).add_(0.5)
    bridge.copy_torch_to_numpy(twin, fresh)
    for name, p in fresh.named_parameters():
        assert_bitwise_equal(f"after changing the twin {name}", p, twin.state_dict()[name])


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_numpy_to_torch_loads_into_an_existing_twin_bit_for_bit(dtype):
    rng = np.random.default_rng(2)
    ours = nt.MultiHeadAttention(6, 2, dtype=dtype, rng=rng)
    ours.load_state_dict(random_state(ours, rng))
    twin = tt.MultiHeadAttention(6, 2, dtype=bridge.torch_dtype(dtype))
    bridge.copy_numpy_to_torch(ours, twin)
    for name, value in ours.state_dict().items():
        assert_bitwise_equal(name, twin.state_dict()[name], value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_mha_to_torch_builtin_then_back_round_trips_bit_for_bit(dtype, bias):
    rng = np.random.default_rng(3)
    C, H = 6, 3
    ours = nt.MultiHeadAttention(C, H, bias=bias, dropout=0.25, dtype=dtype, rng=rng)
    ours.load_state_dict(random_state(ours, rng))
    ours.eval()

    builtin = bridge.mha_to_torch_builtin(ours)
    assert isinstance(builtin, nn.MultiheadAttention) and builtin.batch_first
    assert builtin.num_heads == H and builtin.embed_dim == C and builtin.dropout == 0.25
    assert not builtin.training
    state = builtin.state_dict()
    expected_keys = {"in_proj_weight", "out_proj.weight"} | ({"in_proj_bias", "out_proj.bias"} if bias else set())
    assert set(state) == expected_keys
    packed = np.concatenate([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])  # (3C, C)
    assert_bitwise_equal("in_proj_weight", state["in_proj_weight"], packed)
    assert_bitwise_equal("out_proj.weight", state["out_proj.weight"], ours.out_proj.weight)
    if bias:
        packed_bias = np.concatenate([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias])
        assert_bitwise_equal("in_proj_bias", state["in_proj_bias"], packed_bias)
        assert_bitwise_equal("out_proj.bias", state["out_proj.bias"], ours.out_proj.bias)

    back = bridge.mha_from_torch_builtin(builtin)
    assert (back.d_model, back.n_heads, back.dropout, back.dtype) == (C, H, 0.25, np.dtype(dtype))
    assert not back.training
    back_state = back.state_dict()
    assert list(back_state) == list(ours.state_dict())
    for name, value in ours.state_dict().items():
        assert_bitwise_equal(f"round trip {name}", back_state[name], value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mha_from_torch_builtin_takes_torchs_own_init_and_maps_it_back_bit_for_bit(dtype):
    torch.manual_seed(0)
    builtin = nn.MultiheadAttention(8, 2, batch_first=True, dtype=dtype)
    with torch.no_grad():
        builtin.in_proj_bias.normal_()  # zero at init: give it values so a slicing error shows
        builtin.out_proj.bias.normal_()
    ours = bridge.mha_from_torch_builtin(builtin)
    C = 8
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert_bitwise_equal(f"{name}.weight", getattr(ours, name).weight, builtin.in_proj_weight[i * C : (i + 1) * C])
        assert_bitwise_equal(f"{name}.bias", getattr(ours, name).bias, builtin.in_proj_bias[i * C : (i + 1) * C])
    again = bridge.mha_to_torch_builtin(ours)
    for name, value in builtin.state_dict().items():
        assert_bitwise_equal(f"builtin round trip {name}", again.state_dict()[name], value)


def test_mha_from_torch_builtin_rejects_what_our_module_cannot_hold():
    with pytest.raises(ValueError, match="builtin"):
        bridge.mha_from_torch_builtin(nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True))
    with pytest.raises(ValueError, match="builtin"):
        bridge.mha_from_torch_builtin(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True))


def test_state_dict_bridges_keep_bits_dtype_and_do_not_share_memory():
    a = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4) / 7)  # non-contiguous in C order
    b = np.array([-0.0, np.finfo(np.float32).smallest_subnormal], dtype=np.float32)
    torch_state = bridge.state_dict_to_torch({"a": a, "b": b})
    assert torch_state["a"].dtype == torch.float64 and torch_state["b"].dtype == torch.float32
    assert_bitwise_equal("a", torch_state["a"], np.ascontiguousarray(a))
    assert_bitwise_equal("b", torch_state["b"], b)
    back = bridge.state_dict_to_numpy(torch_state)
    assert_bitwise_equal("a back", back["a"], np.ascontiguousarray(a))
    back["b"][0] = 5.0
    assert torch_state["b"][0].item() == 0.0  # a copy, not a view


def test_torch_dtype_and_twin_of_reject_what_they_cannot_map():
    assert bridge.torch_dtype(np.float32) is torch.float32 and bridge.torch_dtype("float64") is torch.float64
    with pytest.raises(TypeError, match="dtype"):
        bridge.torch_dtype(np.float16)
    with pytest.raises(TypeError, match="np_module"):
        bridge.twin_of(nt.Module())


# --------------------------------------------------------------------------- mask converters


@st.composite
def masks(draw):
    B, H, T, S = (draw(st.integers(1, 4)) for _ in range(4))
    shape = draw(st.sampled_from([(T, S), (B, 1, 1, S), (B, H, T, S), (1, H, T, S), (B, 1, T, S), (S,)]))
    seed = draw(st.integers(0, 2**32 - 1))
    return B, H, T, S, np.random.default_rng(seed).random(shape) < 0.5


@given(case=masks())
def test_mask_to_attn_mask_and_back_round_trips_and_flips_the_convention(case):
    B, H, T, S, mask = case
    full = np.broadcast_to(mask, (B, H, T, S))
    attn_mask = bridge.mask_to_attn_mask(mask, B, H, T, S)
    assert attn_mask.dtype == torch.bool and tuple(attn_mask.shape) == (B * H, T, S)
    # Batch-major then heads, True = blocked: exactly how nn.MultiheadAttention reads it.
    for b in range(B):
        for h in range(H):
            assert np.array_equal(attn_mask[b * H + h].numpy(), ~full[b, h])
    back = bridge.attn_mask_to_mask(attn_mask, batch=B, n_heads=H)
    assert back.dtype == np.bool_ and np.array_equal(back, full)


@given(T=st.integers(1, 5), S=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_two_d_attn_mask_converts_to_our_four_d_mask(T, S, seed):
    blocked = np.random.default_rng(seed).random((T, S)) < 0.5
    ours = bridge.attn_mask_to_mask(torch.from_numpy(blocked))
    assert ours.shape == (1, 1, T, S) and np.array_equal(ours[0, 0], ~blocked)  # 4-D, as MultiHeadAttention takes
    assert np.array_equal(bridge.attn_mask_to_mask(blocked), ours)  # NumPy input too
    # The causal mask becomes torch's triu(…, 1) "blocked" form.
    causal_blocked = bridge.mask_to_attn_mask(causal_mask(T, S), 1, 1, T, S)[0]
    assert torch.equal(causal_blocked, torch.ones(T, S, dtype=torch.bool).triu(1))


@given(B=st.integers(1, 4), S=st.integers(1, 6), seed=st.integers(0, 2**32 - 1), four_d=st.booleans())
def test_key_padding_mask_converters_round_trip_and_flip_the_convention(B, S, seed, four_d):
    keep = np.random.default_rng(seed).random((B, S)) < 0.6  # True = real token
    ours = keep[:, None, None, :] if four_d else keep
    kpm = bridge.mask_to_key_padding_mask(ours)
    assert kpm.dtype == torch.bool and tuple(kpm.shape) == (B, S)
    assert np.array_equal(kpm.numpy(), ~keep)  # True = padded
    back = bridge.key_padding_mask_to_mask(kpm)
    assert back.shape == (B, 1, 1, S) and np.array_equal(back, keep[:, None, None, :])
    assert np.array_equal(bridge.key_padding_mask_to_mask(kpm.numpy()), back)


BAD_MASKS = [
    ("mask_to_attn_mask float", lambda: bridge.mask_to_attn_mask(np.ones((2, 3)), 1, 1, 2, 3), TypeError, "mask"),
    (
        "mask_to_attn_mask int",
        lambda: bridge.mask_to_attn_mask(np.ones((2, 3), dtype=int), 1, 1, 2, 3),
        TypeError,
        "mask",
    ),
    (
        "mask_to_attn_mask torch tensor",
        lambda: bridge.mask_to_attn_mask(torch.ones(2, 3, dtype=torch.bool), 1, 1, 2, 3),
        TypeError,
        "mask",
    ),
    (
        "mask_to_attn_mask not broadcastable",
        lambda: bridge.mask_to_attn_mask(np.ones((3, 2), dtype=bool), 1, 1, 2, 3),
        ValueError,
        "mask",
    ),
    ("attn_mask_to_mask float", lambda: bridge.attn_mask_to_mask(torch.zeros(2, 3)), TypeError, "attn_mask"),
    (
        "attn_mask_to_mask 1-D",
        lambda: bridge.attn_mask_to_mask(torch.zeros(3, dtype=torch.bool)),
        ValueError,
        "attn_mask",
    ),
    (
        "attn_mask_to_mask 4-D",
        lambda: bridge.attn_mask_to_mask(torch.zeros(1, 1, 2, 3, dtype=torch.bool)),
        ValueError,
        "attn_mask",
    ),
    (
        "attn_mask_to_mask 3-D without batch",
        lambda: bridge.attn_mask_to_mask(torch.zeros(4, 2, 3, dtype=torch.bool)),
        ValueError,
        "attn_mask",
    ),
    (
        "attn_mask_to_mask 3-D wrong batch*heads",
        lambda: bridge.attn_mask_to_mask(torch.zeros(4, 2, 3, dtype=torch.bool), batch=3, n_heads=2),
        ValueError,
        "attn_mask",
    ),
    (
        "key_padding_mask_to_mask int",
        lambda: bridge.key_padding_mask_to_mask(torch.zeros(2, 3, dtype=torch.int64)),
        TypeError,
        "key_padding_mask",
    ),
    (
        "key_padding_mask_to_mask 3-D",
        lambda: bridge.key_padding_mask_to_mask(torch.zeros(1, 2, 3, dtype=torch.bool)),
        ValueError,
        "key_padding_mask",
    ),
    (
        "mask_to_key_padding_mask float",
        lambda: bridge.mask_to_key_padding_mask(np.ones((2, 1, 1, 3))),
        TypeError,
        "mask",
    ),
    (
        "mask_to_key_padding_mask per-query (causal)",
        lambda: bridge.mask_to_key_padding_mask(causal_mask(3)[None, None]),
        ValueError,
        "mask",
    ),
    (
        "mask_to_key_padding_mask per-head",
        lambda: bridge.mask_to_key_padding_mask(np.ones((2, 4, 1, 3), dtype=bool)),
        ValueError,
        "mask",
    ),
    (
        "mask_to_key_padding_mask 3-D",
        lambda: bridge.mask_to_key_padding_mask(np.ones((2, 1, 3), dtype=bool)),
        ValueError,
        "mask",
    ),
]


@pytest.mark.parametrize(("call", "error", "argument"), [c[1:] for c in BAD_MASKS], ids=[c[0] for c in BAD_MASKS])
def test_mask_converters_reject_wrong_dtype_and_shape_naming_the_argument(call, error, argument):
    with pytest.raises(error, match=rf"^{argument}:"):
        call()


# --------------------------------------------------------------------------- initialisation


def assert_uniform_within(name: str, values: np.ndarray, bound: float) -> None:
    """All values in [-bound, bound], and the sample fills the range like U(-bound, bound)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    assert np.abs(v).max() <= bound * (1 + 1e-6), f"{name}: max |w| {np.abs(v).max():.4g} > bound {bound:.4g}"
    assert np.abs(v).max() >= bound * (1 - 20 / n), f"{name}: max |w| {np.abs(v).max():.4g} far below {bound:.4g}"
    # U(-b, b): mean 0, variance b^2/3; six standard errors of each statistic.
    assert abs(v.mean()) <= 6 * bound / math.sqrt(3 * n), f"{name}: mean {v.mean():.4g}"
    assert abs(v.var() / (bound**2 / 3) - 1) <= 6 * math.sqrt(0.8 / n), f"{name}: variance {v.var():.4g}"


def assert_standard_normal(name: str, values: np.ndarray) -> None:
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    assert abs(v.mean()) <= 6 / math.sqrt(n), f"{name}: mean {v.mean():.4g}"
    assert abs(v.std() - 1) <= 6 / math.sqrt(2 * n), f"{name}: std {v.std():.4g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_init_is_uniform_within_one_over_sqrt_in_like_the_twin_and_nn_linear(dtype):
    n_in, n_out = 50, 400
    bound = 1 / math.sqrt(n_in)
    ours = nt.Linear(n_in, n_out, dtype=dtype, rng=np.random.default_rng(4))
    assert ours.weight.dtype == dtype and ours.bias.dtype == dtype
    torch.manual_seed(4)
    twin = tt.Linear(n_in, n_out, dtype=bridge.torch_dtype(dtype))
    builtin = nn.Linear(n_in, n_out, dtype=bridge.torch_dtype(dtype))
    for who, weight in (("ours", ours.weight), ("twin", twin.weight), ("nn.Linear", builtin.weight)):
        assert_uniform_within(f"{who} Linear.weight", to_numpy(weight), bound)
    big_bias = nt.Linear(n_in, 20000, dtype=dtype, rng=np.random.default_rng(5)).bias
    assert_uniform_within("ours Linear.bias", big_bias, bound)
    assert_uniform_within("nn.Linear bias", to_numpy(nn.Linear(n_in, 20000).bias), bound)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_head_attention_init_matches_nn_multihead_attention_bounds(dtype):
    C, H = 64, 4
    in_bound = math.sqrt(6 / (4 * C))  # Xavier-uniform over the packed (3C, C) in_proj_weight
    ours = nt.MultiHeadAttention(C, H, dtype=dtype, rng=np.random.default_rng(6))
    torch.manual_seed(6)
    twin = tt.MultiHeadAttention(C, H, dtype=bridge.torch_dtype(dtype))
    builtin = nn.MultiheadAttention(C, H, batch_first=True, dtype=bridge.torch_dtype(dtype))
    ours_in = np.concatenate([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
    twin_in = torch.cat([twin.q_proj.weight, twin.k_proj.weight, twin.v_proj.weight])
    for who, w in (("ours", ours_in), ("twin", twin_in), ("nn.MultiheadAttention", builtin.in_proj_weight)):
        assert_uniform_within(f"{who} q/k/v weights", to_numpy(w), in_bound)
    for name, p in ours.named_parameters():
        assert p.dtype == dtype
        if name.endswith("bias"):
            assert not np.any(p), f"ours {name} should start at zero"
    for name, p in twin.named_parameters():
        if name.endswith("bias"):
            assert not torch.any(p), f"twin {name} should start at zero"
    assert not torch.any(builtin.in_proj_bias) and not torch.any(builtin.out_proj.bias)
    # out_proj is initialised as an nn.Linear(C, C) weight: uniform in 1/sqrt(C). With
    # C * C = 4096 values the range check is loose (max within 20/n of the bound).
    for who, w in (
        ("ours", ours.out_proj.weight),
        ("twin", twin.out_proj.weight),
        ("nn.MultiheadAttention", builtin.out_proj.weight),
    ):
        v = to_numpy(w).astype(np.float64)
        assert np.abs(v).max() <= 1 / math.sqrt(C) * (1 + 1e-6), f"{who} out_proj.weight exceeds 1/sqrt(C)"
        assert np.abs(v).max() >= 0.95 / math.sqrt(C), f"{who} out_proj.weight does not fill 1/sqrt(C)"


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_init_is_standard_normal_with_a_zero_pad_row_like_the_twin_and_nn_embedding(dtype):
    V, C, pad = 2000, 32, 3
    ours = nt.Embedding(V, C, padding_idx=pad, dtype=dtype, rng=np.random.default_rng(7))
    assert ours.weight.dtype == dtype
    torch.manual_seed(7)
    twin = tt.Embedding(V, C, padding_idx=pad, dtype=bridge.torch_dtype(dtype))
    builtin = nn.Embedding(V, C, padding_idx=pad, dtype=bridge.torch_dtype(dtype))
    for who, w in (("ours", ours.weight), ("twin", to_numpy(twin.weight)), ("nn.Embedding", to_numpy(builtin.weight))):
        assert not np.any(w[pad]), f"{who}: the padding row should start at zero"
        assert_standard_normal(f"{who} Embedding.weight", np.delete(w, pad, axis=0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_init_is_ones_and_zeros_like_the_twin_and_nn_layer_norm(dtype):
    ours = nt.LayerNorm(6, dtype=dtype)
    twin = tt.LayerNorm(6, dtype=bridge.torch_dtype(dtype))
    builtin = nn.LayerNorm(6, dtype=bridge.torch_dtype(dtype))
    for who, m in (("twin", twin), ("nn.LayerNorm", builtin)):
        assert_bitwise_equal(f"{who} weight", m.weight, ours.weight)
        assert_bitwise_equal(f"{who} bias", m.bias, ours.bias)
    assert np.array_equal(ours.weight, np.ones(6)) and np.array_equal(ours.bias, np.zeros(6))


@pytest.mark.parametrize(
    "make",
    [
        lambda: nt.AdditiveAttention(4, 6, 5, rng=np.random.default_rng(0)),
        lambda: nt.LuongAttention(4, 6, "general", rng=np.random.default_rng(0)),
        lambda: nt.LuongAttention(4, 6, "concat", 3, rng=np.random.default_rng(0)),
        lambda: nt.GRU(3, 4, bidirectional=True, rng=np.random.default_rng(0)),
        lambda: nt.GRUCell(3, 4, rng=np.random.default_rng(0)),
        lambda: nt.EncoderLayer(8, 2, 16, rng=np.random.default_rng(0)),
        lambda: nt.DecoderLayer(8, 2, 16, norm_first=True, rng=np.random.default_rng(0)),
        lambda: nt.Transformer(nt.TransformerConfig(7, 7, d_model=8, n_heads=2, d_ff=8), rng=np.random.default_rng(0)),
        lambda: nt.RNNSeq2Seq(nt.RNNSeq2SeqConfig(7, 7, embed_dim=4, hidden_size=4), rng=np.random.default_rng(0)),
    ],
)
def test_twin_of_builds_every_layer_and_model_with_the_same_weights(make):
    module = make()
    twin = bridge.twin_of(module)
    back = bridge.state_dict_to_numpy(twin.state_dict())
    assert list(back) == list(module.state_dict())
    for name, p in module.named_parameters():
        assert back[name].dtype == p.dtype and np.array_equal(back[name], p), name
