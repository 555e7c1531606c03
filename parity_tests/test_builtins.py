"""NumPy ops and modules vs PyTorch's own *built-ins* (not the twin), with mapped weights.

The twin (``torch_transformer``) is written from the same formulas as the NumPy half, so a
shared misunderstanding would pass a twin test. These tests compare against what PyTorch
itself ships. Every forward output and every gradient (inputs and parameters) is compared
under the parity contract, with a random upstream gradient (the fake loss ``(out * dout).sum()``).

* One test is generated from the registry: every case that declares a ``Builtin``
  (``F.softmax``, ``nn.LayerNorm``, ``nn.MultiheadAttention`` through the bridge,
  ``nn.TransformerEncoderLayer``, ``nn.Transformer``, ``nn.GRU`` ...) runs in it on the
  draws of ``test_twin_parity.py``. :data:`WITHOUT_BUILTIN` names the cases that have
  none, each with the reason; ``test_meta.py`` fails on a case in neither.
* The hand-written tests below go where a registry draw does not: any axis and huge
  logits, every ``ignore_index``, ``F.dropout``'s own mask recovered from its output,
  ``need_weights`` and packed biases of ``nn.MultiheadAttention``, torch-version facts.

Shape legend: B batch, H heads, T query length, S key length, D head width, C model
width, V classes / vocabulary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn
from torch.torch_version import TorchVersion

import numpy_transformer as nt
from numpy_transformer.functional import (
    causal_mask,
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    gelu_backward,
    gelu_forward,
    l2_normalize_backward,
    l2_normalize_forward,
    log_softmax_backward,
    log_softmax_forward,
    relu_backward,
    relu_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
    softmax_backward,
    softmax_forward,
    tanh_backward,
    tanh_forward,
)
from parity_tests.helpers import assert_matches
from parity_tests.strategies import dims_for
from torch_transformer import bridge
from torch_transformer.parity import CASES, run_case
from torch_transformer.parity.cases_boxes import HAS_TORCHVISION

TORCH_VERSION = TorchVersion(torch.__version__)
# Fully masked query rows in F.scaled_dot_product_attention: zeros (and zero gradients)
# from torch 2.5 on (observed on 2.13 CPU); NaN before.
SDPA_FULLY_MASKED_GIVES_ZEROS = TORCH_VERSION >= (2, 5)

dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 5)


def leaf(a: np.ndarray) -> torch.Tensor:
    """A fresh leaf tensor holding a copy of ``a`` that records its gradient."""
    return torch.from_numpy(a.copy()).requires_grad_(True)


def randn(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def randomize_parameters(module: nt.Module, rng: np.random.Generator) -> None:
    """Give every parameter random values (biases start at zero, which would hide a mapping bug)."""
    module.load_state_dict({name: randn(rng, p.shape, p.dtype) for name, p in module.named_parameters()})


def torch_builtin_with_weights(builtin: nn.Module, np_module: nt.Module) -> nn.Module:
    """Load a NumPy module's state dict into a built-in with the same keys (strict)."""
    builtin.load_state_dict(bridge.state_dict_to_torch(np_module.state_dict()), strict=True)
    return builtin


# --------------------------------------------------------------------------- every declared built-in

BUILTIN_CASES = sorted(name for name, case in CASES.items() if case.builtin is not None)

# The Llama family's cases without a built-in (cases_llama.py declares F.rms_norm / nn.RMSNorm only from
# torch 2.4 and enable_gqa only from 2.5, so older versions list those cases here instead).
LLAMA_WITHOUT_BUILTIN = {
    "rotary_embedding": "PyTorch has no rotary embedding; Hugging Face's rotate-half is compared in test_llama_hf.py",
    "swiglu": "PyTorch has no SwiGLU; its SiLU is compared with F.silu (silu)",
    "SwiGLUFeedForward": "PyTorch has no gated feed-forward module; transformers' LlamaMLP is in test_llama_hf.py",
    "LlamaAttention": "PyTorch has no rotary attention; its core is compared with F.sdpa (grouped_query_attention)",
    "LlamaDecoderLayer": "not a PyTorch built-in: transformers' LlamaDecoderLayer is compared in test_llama_hf.py",
    "Llama": "not a PyTorch built-in: transformers.LlamaForCausalLM is compared in test_llama_hf.py",
    **({} if hasattr(F, "rms_norm") else dict.fromkeys(("rms_norm", "RMSNorm"), "torch < 2.4 has no RMSNorm")),
    **({} if TORCH_VERSION >= (2, 5) else {"grouped_query_attention": "torch < 2.5 has no enable_gqa in F.sdpa"}),
}

# The registered cases with no PyTorch built-in to compare with, and why. test_meta.py fails
# on a case that neither declares a built-in nor appears here.
WITHOUT_BUILTIN = {
    "mean_pooling": "PyTorch has no masked mean pooling (sentence-transformers writes it out by hand)",
    "dropout": "F.dropout draws its own mask and takes none; a test below recovers that mask from its output",
    "Dropout": "nn.Dropout draws its own mask and takes none (in eval mode both are the identity)",
    "FeedForward": "PyTorch has no feed-forward module; nn.TransformerEncoderLayer's linear1/linear2 cover it",
    "BertModel": "not a PyTorch built-in: transformers.BertModel is compared in test_pretrained.py",
    "BertForMaskedLM": "not a PyTorch built-in: the transformers head is compared in test_bert_hf_heads.py",
    "BertForSequenceClassification": "not a PyTorch built-in: the transformers head is in test_bert_hf_heads.py",
    "GPT": "not a PyTorch built-in: transformers.GPT2LMHeadModel is compared in test_gpt_hf.py",
    "ViT": "not a PyTorch built-in: transformers.ViTModel is compared in test_vit_hf.py",
    "ViTForImageClassification": "not a PyTorch built-in: the transformers head is compared in test_vit_hf.py",
    "log_mel_spectrogram": "the twin is built on torch.stft; WhisperFeatureExtractor is compared in test_audio.py",
    "WhisperForConditionalGeneration": "not a PyTorch built-in: transformers' Whisper is in test_whisper_hf.py",
    "ImageCNN": "a model, not a built-in: torch.nn Conv2d, ReLU, MaxPool2d and Linear in turn are in test_cnn.py",
    "RNNSeq2Seq": "PyTorch has no attention RNN encoder-decoder; its GRUs are compared with nn.GRU (gru, GRU)",
    "additive_attention": "PyTorch has no additive (Bahdanau) attention",
    "AdditiveAttention": "PyTorch has no additive (Bahdanau) attention module",
    "quick_gelu": "PyTorch has no QuickGELU; transformers' QuickGELUActivation is compared in test_clip_hf.py",
    "clip_loss": "PyTorch has no contrastive loss; transformers' CLIPModel(return_loss=True) is in test_clip_hf.py",
    "CLIPModel": "not a PyTorch built-in: transformers.CLIPModel is compared in test_clip_hf.py",
    **LLAMA_WITHOUT_BUILTIN,
    "detr_loss": "PyTorch has no set loss; transformers' DETR ImageLoss and HungarianMatcher are in test_detr_loss.py",
    "DETR": "not a PyTorch built-in: transformers.DetrForObjectDetection is compared in test_detr_hf.py",
    **(
        {}
        if HAS_TORCHVISION
        else dict.fromkeys(
            ("box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_iou", "generalized_box_iou", "giou_loss"),
            "the built-in is torchvision.ops' (box_convert, box_iou, generalized_box_iou[_loss]) and torchvision "
            "is not installed; transformers' DETR box_iou / generalized_box_iou are compared in test_boxes.py",
        )
    ),
}


@pytest.mark.parametrize("name", BUILTIN_CASES)
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_forward_and_every_gradient_match_the_declared_pytorch_builtin(name, data, dtype, seed):
    case = CASES[name]
    dims = data.draw(dims_for(case), label="dims")
    result = run_case(case, dims, dtype, seed, finite_differences=False, twin=False)
    assume(result.builtin_skipped is None)  # a draw the built-in cannot take (it says why)
    assert result.builtin == case.builtin.name and result.gradients
    assert len(result.vs_builtin) == 1 + len(result.gradients), f"{name}: the output and every gradient"
    for cmp in result.vs_builtin:
        assert cmp.error <= result.tolerance, f"{cmp.describe()} exceeds tolerance {result.tolerance:.0e}"


# --------------------------------------------------------------------------- softmax family


@given(
    shape=st.lists(small, min_size=1, max_size=4),
    data=st.data(),
    dtype=dtypes,
    seed=seeds,
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
)
def test_softmax_matches_f_softmax_forward_and_backward_on_any_axis(shape, data, dtype, seed, magnitude):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * magnitude).astype(dtype)
    dout = randn(rng, shape, dtype)

    y, cache = softmax_forward(x, axis=axis)
    dx = softmax_backward(dout, cache)

    xt = leaf(x)
    yt = F.softmax(xt, dim=axis)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype and dx.dtype == dtype
    assert np.isfinite(y).all()
    assert_matches("softmax y", y, yt, dtype)
    assert_matches("softmax dx", dx, xt.grad, dtype)


@given(
    shape=st.lists(small, min_size=1, max_size=4),
    data=st.data(),
    dtype=dtypes,
    seed=seeds,
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
)
def test_log_softmax_matches_f_log_softmax_forward_and_backward_on_any_axis(shape, data, dtype, seed, magnitude):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * magnitude).astype(dtype)
    dout = randn(rng, shape, dtype)

    y, cache = log_softmax_forward(x, axis=axis)
    dx = log_softmax_backward(dout, cache)

    xt = leaf(x)
    yt = F.log_softmax(xt, dim=axis)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype and dx.dtype == dtype
    assert np.isfinite(y).all()
    assert_matches("log_softmax y", y, yt, dtype)
    assert_matches("log_softmax dx", dx, xt.grad, dtype)


@given(dtype=dtypes, seed=seeds)
def test_softmax_and_log_softmax_match_torch_and_stay_finite_on_logits_of_plus_minus_1e4(dtype, seed):
    rng = np.random.default_rng(seed)
    # Rows mixing +1e4 and -1e4: a naive exp() overflows to inf (and log(0) = -inf).
    x = rng.choice([-1e4, 1e4, 0.0, 1e4 - 1.0], size=(4, 6)).astype(dtype)
    x[0] = 1e4  # a row of equal huge logits: uniform softmax
    x[1] = -1e4
    dout = randn(rng, x.shape, dtype)
    for name, fwd, bwd, ref in (
        ("softmax", softmax_forward, softmax_backward, F.softmax),
        ("log_softmax", log_softmax_forward, log_softmax_backward, F.log_softmax),
    ):
        y, cache = fwd(x, axis=-1)
        dx = bwd(dout, cache)
        xt = leaf(x)
        yt = ref(xt, dim=-1)
        (yt * torch.from_numpy(dout)).sum().backward()
        assert np.isfinite(y).all() and np.isfinite(dx).all(), name
        assert_matches(f"{name} y", y, yt, dtype)
        assert_matches(f"{name} dx", dx, xt.grad, dtype)


# --------------------------------------------------------------------------- cross-entropy


@st.composite
def cross_entropy_cases(draw):
    dtype = draw(dtypes)
    seed = draw(seeds)
    V = draw(st.integers(1, 7))
    lead = (draw(st.integers(1, 8)),) if draw(st.booleans()) else (draw(small), draw(small))  # (N,) or (B, T)
    ignore_index = draw(st.sampled_from([-100, -1, 0, 3]))
    label_smoothing = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    p_ignore = draw(st.sampled_from([0.0, 0.3, 0.7]))
    target_dtype = draw(st.sampled_from([np.int64, np.int32]))
    return dtype, seed, V, lead, ignore_index, label_smoothing, p_ignore, target_dtype


def torch_cross_entropy(logits_t, targets, ignore_index, label_smoothing):
    """``F.cross_entropy`` on (N, V) or (B, T, V) logits; torch wants the class axis second."""
    tt = torch.from_numpy(targets.astype(np.int64))
    if logits_t.ndim == 3:
        logits_t = logits_t.transpose(1, 2)  # (B, V, T)
    return F.cross_entropy(logits_t, tt, ignore_index=ignore_index, label_smoothing=label_smoothing)


@given(case=cross_entropy_cases())
def test_cross_entropy_matches_f_cross_entropy_with_ignore_index_and_label_smoothing(case):
    dtype, seed, V, lead, ignore_index, label_smoothing, p_ignore, target_dtype = case
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((*lead, V)) * 3).astype(dtype)
    targets = rng.integers(0, V, size=lead)
    targets = np.where(rng.random(lead) < p_ignore, ignore_index, targets).astype(target_dtype)
    dout = dtype(rng.standard_normal())

    loss, cache = cross_entropy_forward(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing)
    dlogits = cross_entropy_backward(dout, cache)

    lt = leaf(logits)
    loss_t = torch_cross_entropy(lt, targets, ignore_index, label_smoothing)
    (loss_t * float(dout)).backward()

    assert loss.dtype == dtype and dlogits.dtype == dtype and dlogits.shape == logits.shape
    assert_matches("cross_entropy loss", loss, loss_t, dtype)
    assert_matches("cross_entropy dlogits", dlogits, lt.grad, dtype)


@given(
    dtype=dtypes,
    seed=seeds,
    shape=st.sampled_from([(3, 5), (2, 3, 4), (1, 1)]),
    label_smoothing=st.sampled_from([0.0, 0.2]),
)
def test_cross_entropy_with_every_row_ignored_gives_nan_loss_and_zero_grad_like_f_cross_entropy(
    dtype, seed, shape, label_smoothing
):
    rng = np.random.default_rng(seed)
    logits = randn(rng, shape, dtype)
    targets = np.full(shape[:-1], -100, dtype=np.int64)

    loss, cache = cross_entropy_forward(logits, targets, label_smoothing=label_smoothing)
    dlogits = cross_entropy_backward(dtype(rng.standard_normal()), cache)

    lt = leaf(logits)
    loss_t = torch_cross_entropy(lt, targets, -100, label_smoothing)
    (loss_t * float(rng.standard_normal())).backward()

    assert torch.isnan(loss_t) and np.isnan(loss)  # 0 / 0 in both
    assert_matches("cross_entropy loss (all ignored)", loss, loss_t, dtype)
    assert_matches("cross_entropy dlogits (all ignored)", dlogits, lt.grad, dtype)
    assert not np.any(dlogits) and not torch.any(lt.grad)


# --------------------------------------------------------------------------- layers with weights


def rows_with_spread(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Random rows whose standard deviation lies in [0.5, 3] (and whose mean is random).

    LayerNorm's backward amplifies rounding by ``1/sqrt(var + eps)``: a float32 row of
    two or three nearly equal values with eps = 1e-5 loses ~1e-4 in *both* our result
    and PyTorch's against the float64 truth (seen while writing this test). Rows with
    a real spread keep the comparison about the formula, not about conditioning.
    """
    x = rng.standard_normal(shape)
    x -= x.mean(axis=-1, keepdims=True)
    x /= np.sqrt((x * x).mean(axis=-1, keepdims=True))  # zero mean, unit (biased) variance
    std = rng.uniform(0.5, 3.0, size=(*shape[:-1], 1))
    return (x * std + rng.normal(0, 2, size=(*shape[:-1], 1))).astype(dtype)


@given(
    lead=st.lists(small, min_size=0, max_size=3),
    C=st.integers(2, 8),
    dtype=dtypes,
    seed=seeds,
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
)
def test_layer_norm_matches_nn_layer_norm_forward_and_backward(lead, C, dtype, seed, eps):
    rng = np.random.default_rng(seed)
    x = rows_with_spread(rng, (*lead, C), dtype)
    dout = randn(rng, x.shape, dtype)
    ln = nt.LayerNorm(C, eps=eps, dtype=dtype)
    randomize_parameters(ln, rng)
    ref = torch_builtin_with_weights(nn.LayerNorm(C, eps=eps, dtype=bridge.torch_dtype(dtype)), ln)

    y, cache = ln.forward(x)
    dx = ln.backward(dout, cache)

    xt = leaf(x)
    yt = ref(xt)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype and dx.dtype == dtype
    assert_matches("layer_norm y", y, yt, dtype)
    assert_matches("layer_norm dx", dx, xt.grad, dtype)
    assert_matches("layer_norm dweight", ln.grads["weight"], ref.weight.grad, dtype)
    assert_matches("layer_norm dbias", ln.grads["bias"], ref.bias.grad, dtype)


@given(lead=st.lists(small, min_size=1, max_size=3), seed=seeds, eps=st.sampled_from([1e-5, 0.1]))
def test_layer_norm_of_one_feature_gives_the_bias_and_zero_gradients_like_nn_layer_norm_float64(lead, seed, eps):
    """With C = 1 every row has zero variance: ``xhat = 0``, so ``y = bias``, ``dx = 0``,
    ``dweight = 0``. float64 only: PyTorch's float32 CPU backward recomputes ``xhat`` as
    ``rstd * x - rstd * mean`` and leaves rounding noise of about ``|x| / sqrt(eps) * 2**-24``
    in ``dweight`` (3e-5 for eps = 1e-5, seen on torch 2.13), while ours is exactly 0."""
    dtype = np.float64
    rng = np.random.default_rng(seed)
    x = randn(rng, (*lead, 1), dtype) * 2 + 0.5
    dout = randn(rng, x.shape, dtype)
    ln = nt.LayerNorm(1, eps=eps, dtype=dtype)
    randomize_parameters(ln, rng)
    ref = torch_builtin_with_weights(nn.LayerNorm(1, eps=eps, dtype=torch.float64), ln)

    y, cache = ln.forward(x)
    dx = ln.backward(dout, cache)
    xt = leaf(x)
    yt = ref(xt)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert np.array_equal(y, np.broadcast_to(ln.bias, y.shape)) and not np.any(dx) and not np.any(ln.grads["weight"])
    assert_matches("layer_norm y (C=1)", y, yt, dtype)
    assert_matches("layer_norm dx (C=1)", dx, xt.grad, dtype)
    assert_matches("layer_norm dweight (C=1)", ln.grads["weight"], ref.weight.grad, dtype)
    assert_matches("layer_norm dbias (C=1)", ln.grads["bias"], ref.bias.grad, dtype)


@given(
    lead=st.lists(small, min_size=0, max_size=3),
    n_in=st.integers(1, 7),
    n_out=st.integers(1, 7),
    bias=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_linear_matches_nn_linear_forward_and_backward(lead, n_in, n_out, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    lin = nt.Linear(n_in, n_out, bias=bias, dtype=dtype, rng=rng)
    ref = torch_builtin_with_weights(nn.Linear(n_in, n_out, bias=bias, dtype=bridge.torch_dtype(dtype)), lin)
    x = randn(rng, (*lead, n_in), dtype)
    dout = randn(rng, (*lead, n_out), dtype)

    y, cache = lin.forward(x)
    dx = lin.backward(dout, cache)

    xt = leaf(x)
    yt = ref(xt)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype and dx.dtype == dtype
    assert_matches("linear y", y, yt, dtype)
    assert_matches("linear dx", dx, xt.grad, dtype)
    assert_matches("linear dweight", lin.grads["weight"], ref.weight.grad, dtype)
    assert set(lin.grads) == ({"weight", "bias"} if bias else {"weight"})
    if bias:
        assert_matches("linear dbias", lin.grads["bias"], ref.bias.grad, dtype)


@given(
    V=st.integers(1, 9),
    C=st.integers(1, 5),
    ids_shape=st.lists(small, min_size=1, max_size=3),
    use_padding=st.booleans(),
    data=st.data(),
    dtype=dtypes,
    seed=seeds,
    ids_dtype=st.sampled_from([np.int64, np.int32]),
)
def test_embedding_matches_nn_embedding_with_repeated_ids_and_padding_idx(
    V, C, ids_shape, use_padding, data, dtype, seed, ids_dtype
):
    padding_idx = data.draw(st.integers(0, V - 1), label="padding_idx") if use_padding else None
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(*ids_shape, 2))  # at least two ids ...
    ids[..., 1] = ids[..., 0]  # ... and every id repeated, so gradients must accumulate
    if padding_idx is not None:
        ids.flat[0] = padding_idx  # the pad id is looked up at least once
    ids = ids.astype(ids_dtype)
    emb = nt.Embedding(V, C, padding_idx=padding_idx, dtype=dtype, rng=rng)
    randomize_parameters(emb, rng)  # the pad row too: the forward must still return it
    ref = torch_builtin_with_weights(nn.Embedding(V, C, padding_idx=padding_idx, dtype=bridge.torch_dtype(dtype)), emb)
    dout = randn(rng, (*ids.shape, C), dtype)

    y, cache = emb.forward(ids)
    emb.backward(dout, cache)

    yt = ref(torch.from_numpy(ids.astype(np.int64)))
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype
    assert_matches("embedding y", y, yt, dtype)
    assert_matches("embedding dweight", emb.grads["weight"], ref.weight.grad, dtype)


@given(
    shape=st.lists(small, min_size=1, max_size=3),
    approximate=st.sampled_from(["none", "tanh"]),
    dtype=dtypes,
    seed=seeds,
)
def test_gelu_matches_f_gelu_erf_and_tanh_forms_forward_and_backward(shape, approximate, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dout = randn(rng, shape, dtype)

    y, cache = gelu_forward(x, approximate=approximate)
    dx = gelu_backward(dout, cache)

    xt = leaf(x)
    yt = F.gelu(xt, approximate=approximate)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype and dx.dtype == dtype
    assert_matches(f"gelu[{approximate}] y", y, yt, dtype)
    assert_matches(f"gelu[{approximate}] dx", dx, xt.grad, dtype)


@given(shape=st.lists(small, min_size=1, max_size=3), dtype=dtypes, seed=seeds)
def test_relu_matches_f_relu_forward_and_backward_including_exact_zeros(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, shape, dtype)
    x[rng.random(shape) < 0.3] = 0  # the kink: PyTorch's derivative at 0 is 0
    dout = randn(rng, shape, dtype)

    y, cache = relu_forward(x)
    dx = relu_backward(dout, cache)

    xt = leaf(x)
    yt = F.relu(xt)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype and dx.dtype == dtype
    assert_matches("relu y", y, yt, dtype)
    assert_matches("relu dx", dx, xt.grad, dtype)


@given(shape=st.lists(small, min_size=1, max_size=3), dtype=dtypes, seed=seeds)
def test_l2_normalize_matches_f_normalize_including_a_zero_row(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, shape, dtype)
    x[(0,) * (len(shape) - 1)] = 0  # a zero row: F.normalize divides by eps there, and so do we
    dout = randn(rng, shape, dtype)

    y, cache = l2_normalize_forward(x)
    dx = l2_normalize_backward(dout, cache)

    xt = leaf(x)
    yt = F.normalize(xt, p=2.0, dim=-1, eps=1e-12)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert_matches("l2_normalize y", y, yt, dtype)
    assert_matches("l2_normalize dx", dx, xt.grad, dtype)


@given(shape=st.lists(small, min_size=1, max_size=3), dtype=dtypes, seed=seeds)
def test_tanh_matches_torch_tanh_forward_and_backward_including_saturation(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, shape, dtype) * 3
    x[rng.random(shape) < 0.2] = 40.0  # saturated: y = 1, derivative 0, no overflow
    dout = randn(rng, shape, dtype)

    y, cache = tanh_forward(x)
    dx = tanh_backward(dout, cache)

    xt = leaf(x)
    yt = torch.tanh(xt)
    (yt * torch.from_numpy(dout)).sum().backward()

    assert y.dtype == dtype and dx.dtype == dtype
    assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1)
    assert_matches("tanh y", y, yt, dtype)
    assert_matches("tanh dx", dx, xt.grad, dtype)


@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    p=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    dtype=dtypes,
    seed=seeds,
)
def test_dropout_with_the_keep_mask_of_f_dropout_matches_f_dropout_forward_and_backward(shape, p, dtype, seed):
    rng = np.random.default_rng(seed)
    # No zeros in x, so "output != 0" recovers exactly the units F.dropout kept.
    x = (rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)
    dout = randn(rng, shape, dtype)

    xt = leaf(x)
    torch.manual_seed(seed)
    yt = F.dropout(xt, p=p, training=True)
    (yt * torch.from_numpy(dout)).sum().backward()
    keep = yt.detach().numpy() != 0

    y, cache = dropout_forward(x, p, mask=keep, training=True)
    dx = dropout_backward(dout, cache)

    assert y.dtype == dtype and dx.dtype == dtype
    assert_matches("dropout y", y, yt, dtype)
    assert_matches("dropout dx", dx, xt.grad, dtype)


# --------------------------------------------------------------------------- attention


def ensure_every_row_attends(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Set one random key per query row to True, so no row is fully masked."""
    mask = mask.copy()
    idx = rng.integers(0, mask.shape[-1], size=(*mask.shape[:-1], 1))
    np.put_along_axis(mask, idx, True, axis=-1)
    return mask


def padding_keep(rng: np.random.Generator, B: int, S: int) -> np.ndarray:
    """(B, 1, 1, S) key-padding mask, True = real token; each sequence keeps its first key."""
    lengths = rng.integers(1, S + 1, size=B)
    return (np.arange(S)[None, :] < lengths[:, None])[:, None, None, :]


@st.composite
def attention_cases(draw):
    B, H, T, S = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(small), draw(small)
    D, Dv = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    mask_kind = draw(st.sampled_from(["none", "causal", "full", "per_query_TS", "padding", "per_head"]))
    scale = draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    return B, H, T, S, D, Dv, mask_kind, scale, draw(dtypes), draw(seeds)


@given(case=attention_cases())
def test_sdpa_matches_f_scaled_dot_product_attention_with_masks_causal_and_scale(case):
    B, H, T, S, D, Dv, mask_kind, scale, dtype, seed = case
    rng = np.random.default_rng(seed)
    q, k, v = randn(rng, (B, H, T, D), dtype), randn(rng, (B, H, S, D), dtype), randn(rng, (B, H, S, Dv), dtype)
    dout = randn(rng, (B, H, T, Dv), dtype)
    mask, is_causal = None, False
    if mask_kind == "causal":
        is_causal = True  # top-left aligned when T != S, in both
    elif mask_kind == "full":
        mask = ensure_every_row_attends(rng, rng.random((B, H, T, S)) < 0.5)
    elif mask_kind == "per_query_TS":
        mask = ensure_every_row_attends(rng, rng.random((T, S)) < 0.5)  # broadcast over B, H
    elif mask_kind == "padding":
        mask = padding_keep(rng, B, S)  # (B, 1, 1, S)
    elif mask_kind == "per_head":
        mask = ensure_every_row_attends(rng, rng.random((1, H, T, S)) < 0.5)

    out, cache = scaled_dot_product_attention_forward(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
    dq, dk, dv = scaled_dot_product_attention_backward(dout, cache)

    qt, kt, vt = leaf(q), leaf(k), leaf(v)
    # attn_mask and is_causal are never passed together: older torch versions reject it.
    out_t = F.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=None if mask is None else torch.from_numpy(mask), is_causal=is_causal, scale=scale
    )
    (out_t * torch.from_numpy(dout)).sum().backward()

    assert out.dtype == dtype and dq.dtype == dtype and dk.dtype == dtype and dv.dtype == dtype
    assert_matches("sdpa out", out, out_t, dtype)
    assert_matches("sdpa dq", dq, qt.grad, dtype)
    assert_matches("sdpa dk", dk, kt.grad, dtype)
    assert_matches("sdpa dv", dv, vt.grad, dtype)


@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(2, 5), S=small, dtype=dtypes, seed=seeds)
def test_sdpa_fully_masked_rows_match_f_sdpa_zeros_on_torch_2_5_plus_and_are_nan_before(B, H, T, S, dtype, seed):
    """torch >= 2.5: a query row with no allowed key gives a zero output row and zero
    gradients (observed on 2.13 CPU), which is our documented choice. Older torch gives NaN."""
    rng = np.random.default_rng(seed)
    q, k, v = randn(rng, (B, H, T, 3), dtype), randn(rng, (B, H, S, 3), dtype), randn(rng, (B, H, S, 2), dtype)
    dout = randn(rng, (B, H, T, 2), dtype)
    mask = ensure_every_row_attends(rng, rng.random((B, H, T, S)) < 0.5)
    mask[..., 0, :] = False  # query 0 of every (batch, head) sees nothing
    mask[0, 0, -1, :] = False  # and the last query of the first head

    out, cache = scaled_dot_product_attention_forward(q, k, v, mask=mask)
    dq, dk, dv = scaled_dot_product_attention_backward(dout, cache)
    assert not np.any(out[..., 0, :]) and not np.any(dq[..., 0, :])

    qt, kt, vt = leaf(q), leaf(k), leaf(v)
    out_t = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(mask))
    if not SDPA_FULLY_MASKED_GIVES_ZEROS:
        assert torch.isnan(out_t[..., 0, :]).all()
        return
    (out_t * torch.from_numpy(dout)).sum().backward()
    assert_matches("sdpa out (fully masked rows)", out, out_t, dtype)
    assert_matches("sdpa dq (fully masked rows)", dq, qt.grad, dtype)
    assert_matches("sdpa dk (fully masked rows)", dk, kt.grad, dtype)
    assert_matches("sdpa dv (fully masked rows)", dv, vt.grad, dtype)


@st.composite
def mha_cases(draw):
    B, H, D = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    self_attention = draw(st.booleans())
    T = draw(small)
    S = T if self_attention else draw(small)
    mask_kind = draw(st.sampled_from(["none", "padding", "attn", "causal", "padding+attn"]))
    return dict(
        B=B,
        H=H,
        D=D,
        T=T,
        S=S,
        self_attention=self_attention,
        mask_kind=mask_kind,
        bias=draw(st.booleans()),
        need_weights=draw(st.booleans()),
        training=draw(st.booleans()),
        dtype=draw(dtypes),
        seed=draw(seeds),
    )


@given(case=mha_cases())
def test_multi_head_attention_matches_nn_multihead_attention_outputs_weights_and_all_gradients(case):
    B, H, D, T, S, dtype = case["B"], case["H"], case["D"], case["T"], case["S"], case["dtype"]
    C = H * D
    rng = np.random.default_rng(case["seed"])
    mha = nt.MultiHeadAttention(C, H, bias=case["bias"], dtype=dtype, rng=rng)
    # Weights keep their (random) init scale; the biases, zero at init, get random values
    # of the same scale so a wrong mapping of in_proj_bias would show. N(0, 1) weights
    # would saturate the softmax and leave ~1e-5 float32 rounding on both sides.
    bound = 1.0 / np.sqrt(C)
    mha.load_state_dict(
        {
            name: rng.uniform(-bound, bound, p.shape).astype(dtype) if name.endswith("bias") else p
            for name, p in mha.named_parameters()
        }
    )
    mha.train(case["training"])
    builtin = bridge.mha_to_torch_builtin(mha)
    assert builtin.training == case["training"]

    query = randn(rng, (B, T, C), dtype)
    key, value = (
        (query, query) if case["self_attention"] else (randn(rng, (B, S, C), dtype), randn(rng, (B, S, C), dtype))
    )
    dout = randn(rng, (B, T, C), dtype)

    # Our masks (True = may attend) and their nn.MultiheadAttention forms (True = blocked).
    kind = case["mask_kind"]
    mask, is_causal, attn_mask, key_padding_mask = None, False, None, None
    pad = padding_keep(rng, B, S)  # keeps key 0, so causal + padding never blanks a row
    if "padding" in kind:
        key_padding_mask = bridge.mask_to_key_padding_mask(pad)
        mask = pad
    if "attn" in kind:
        allowed = ensure_every_row_attends(rng, rng.random((B, H, T, S)) < 0.5)
        if mask is not None:
            allowed[..., 0] = True  # key 0 is never padded: every row keeps a key
        attn_mask = bridge.mask_to_attn_mask(allowed, B, H, T, S)  # (B*H, T, S)
        mask = allowed if mask is None else (mask & allowed)
    if kind == "causal":
        is_causal = True
        attn_mask = bridge.mask_to_attn_mask(causal_mask(T, S), B, H, T, S)

    out, cache = mha.forward(query, key, value, mask=mask, is_causal=is_causal)
    dquery, dkey, dvalue = mha.backward(dout, cache)

    if case["self_attention"]:
        xt = leaf(query)
        qt = kt = vt = xt
    else:
        qt, kt, vt = leaf(query), leaf(key), leaf(value)
    out_t, weights_t = builtin(
        qt,
        kt,
        vt,
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask,
        need_weights=case["need_weights"],
        average_attn_weights=False,
    )
    (out_t * torch.from_numpy(dout)).sum().backward()

    assert out.dtype == dtype
    assert_matches("mha out", out, out_t, dtype)
    if case["need_weights"]:
        assert_matches("mha weights (B, H, T, S)", cache.weights, weights_t, dtype)
    if case["self_attention"]:
        assert_matches("mha dx (query = key = value)", dquery + dkey + dvalue, xt.grad, dtype)
    else:
        assert_matches("mha dquery", dquery, qt.grad, dtype)
        assert_matches("mha dkey", dkey, kt.grad, dtype)
        assert_matches("mha dvalue", dvalue, vt.grad, dtype)
    grads = dict(mha.named_grads())
    assert_matches(
        "mha in_proj_weight grad",
        np.concatenate([grads["q_proj.weight"], grads["k_proj.weight"], grads["v_proj.weight"]]),
        builtin.in_proj_weight.grad,
        dtype,
    )
    assert_matches("mha out_proj.weight grad", grads["out_proj.weight"], builtin.out_proj.weight.grad, dtype)
    if case["bias"]:
        assert_matches(
            "mha in_proj_bias grad",
            np.concatenate([grads["q_proj.bias"], grads["k_proj.bias"], grads["v_proj.bias"]]),
            builtin.in_proj_bias.grad,
            dtype,
        )
        assert_matches("mha out_proj.bias grad", grads["out_proj.bias"], builtin.out_proj.bias.grad, dtype)
    else:
        assert builtin.in_proj_bias is None and builtin.out_proj.bias is None
        assert not any(name.endswith("bias") for name in grads)
