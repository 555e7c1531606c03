"""The mathematics of each op, checked on its own (no PyTorch involved).

These catch bugs that a twin written with the same misunderstanding would share.

Every registered parity case has at least one property test: a test here declares the
cases it is about with ``@property_of(...)``; the property tests that live in a model
family's own file are listed in :data:`ELSEWHERE`. Both fill :data:`PROPERTY_TESTS`,
and ``test_meta.py`` fails on a case without an entry or on an entry that names no test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpy_transformer as nt
import numpy_transformer.functional as F
from numpy_transformer.config import BertConfig, RNNSeq2SeqConfig
from torch_transformer.parity import CASES, draw_mask

from .helpers import assert_matches
from .strategies import dims_for, dtypes, seeds

# case name -> "file.py::test_name" of every test of that case's own mathematics
PROPERTY_TESTS: dict[str, list[str]] = defaultdict(list)


def property_of(*cases: str) -> Callable:
    """Declare the decorated test a property test of the parity ``cases`` it names."""

    def declare(test: Callable) -> Callable:
        for case in cases:
            PROPERTY_TESTS[case].append(f"test_properties.py::{test.__name__}")
        return test

    return declare


# The Llama family's property tests: its ops and blocks in test_llama_ops.py, the model in test_llama.py.
_OPS = "test_llama_ops.py::test_"
LLAMA_PROPERTY_TESTS: dict[str, tuple[str, ...]] = {
    "rms_norm": (
        _OPS + "rms_norm_backward_is_layer_norm_backward_without_the_mean_term",
        _OPS + "rms_norm_gradient_is_orthogonal_to_its_row_up_to_eps",
        _OPS + "rms_norm_output_has_unit_rms_and_ignores_the_rows_scale",
    ),
    "RMSNorm": (_OPS + "rms_norm_output_has_unit_rms_and_ignores_the_rows_scale",),
    "rotary_embedding": (
        _OPS + "rotary_query_key_score_depends_only_on_the_relative_position",
        _OPS + "rotary_keeps_every_pair_length_and_its_backward_rotates_back",
        _OPS + "permuting_query_and_key_rows_turns_metas_interleaved_layout_into_hfs_half_layout",
    ),
    "silu": (_OPS + "silu_is_x_sigmoid_x_and_stays_finite_and_exact_far_out",),
    "swiglu": (_OPS + "a_closed_swiglu_gate_passes_nothing_and_an_open_one_passes_up_times_gate",),
    "SwiGLUFeedForward": (_OPS + "swiglu_feed_forward_is_down_of_the_gated_product_one_position_at_a_time",),
    "grouped_query_attention": (
        _OPS + "grouped_query_attention_is_repeat_interleave_then_attention_with_group_summed_gradients",
        _OPS + "as_many_kv_heads_as_heads_is_multi_head_and_one_kv_head_is_multi_query",
    ),
    "LlamaAttention": (_OPS + "llama_attention_output_is_the_same_when_every_position_moves_by_the_same_amount",),
    "LlamaDecoderLayer": (_OPS + "a_causal_llama_layer_never_reads_the_future",),
    "Llama": (
        "test_llama.py::test_changing_a_future_token_does_not_change_earlier_logits",
        "test_llama.py::test_a_tied_head_is_the_embedding_and_collects_the_head_and_the_lookup_gradients",
        "test_llama.py::test_kv_cache_logits_equal_the_full_forward_however_the_tokens_are_fed",
    ),
}

# Property tests of a model family that live in that family's test file.
ELSEWHERE: dict[str, tuple[str, ...]] = {
    "ImageCNN": (
        "test_cnn.py::test_cnn_equals_torch_nn_conv_relu_maxpool_linear_on_the_same_weights",
        "test_cnn.py::test_shifting_a_digit_by_two_pixels_shifts_the_first_stage_feature_map_by_one_pixel",
    ),
    "conv2d": (
        "test_conv.py::test_conv2d_with_kernel_equal_to_stride_is_patches_then_a_linear_layer",
        "test_conv.py::test_a_1x1_conv2d_is_a_per_pixel_linear_layer_over_the_strided_pixels",
    ),
    "conv1d": ("test_conv.py::test_conv1d_equals_conv2d_with_height_one",),
    "max_pool2d": (
        "test_conv.py::test_max_pool2d_sends_each_upstream_value_to_exactly_one_input",
        "test_conv.py::test_max_pool2d_ties_go_where_torch_sends_them",
    ),
    "Transformer": (
        "test_transformer.py::test_padding_never_changes_the_real_positions",
        "test_transformer.py::test_tied_embeddings_share_one_matrix_and_collect_both_gradients",
    ),
    "BertModel": (
        "test_bert.py::test_padding_does_not_change_real_tokens_and_gets_zero_attention",
        "test_bert.py::test_pooler_reads_the_first_position_only",
    ),
    "BertForMaskedLM": ("test_bert.py::test_mlm_loss_and_gradient_live_on_selected_positions_only",),
    "GPT": (
        "test_gpt.py::test_changing_a_future_token_does_not_change_earlier_logits",
        "test_gpt.py::test_gradient_of_an_early_logit_reaches_no_later_position",
        "test_gpt.py::test_pad_keys_are_never_attended_to",
    ),
    "ViT": (
        "test_vit.py::test_permuting_patches_with_their_position_embeddings_permutes_the_outputs",
        "test_vit.py::test_the_patch_embedding_is_reshape_into_patches_then_a_linear_layer",
        "test_vit.py::test_the_pooler_reads_the_class_token_only",
    ),
    "ViTForImageClassification": (
        "test_vit.py::test_the_class_token_gradient_is_what_flows_back_through_row_zero",
        "test_vit.py::test_without_layers_only_row_zero_gets_a_gradient",
    ),
    "log_mel_spectrogram": (
        "test_audio.py::test_log_mel_floor_sends_its_gradient_to_the_loudest_cell_and_trimming_cuts_it",
        "test_audio.py::test_a_louder_clip_shifts_the_log_mel_by_half_the_gain_in_decades",
    ),
    "WhisperForConditionalGeneration": (
        "test_whisper.py::test_changing_a_later_token_changes_no_earlier_logit_and_no_decoder_layer_reads_no_audio",
        "test_whisper.py::test_kv_cache_stepper_gives_the_full_prefix_tokens_and_logits",
    ),
    "gru_cell": ("test_gru.py::test_gru_cell_with_update_gate_one_keeps_h_and_passes_its_gradient_straight",),
    "gru": (
        "test_gru.py::test_gru_backprop_through_time_reaches_the_first_input_from_the_last_state",
        "test_gru.py::test_gru_reverse_reads_each_row_backwards_within_its_length",
    ),
    "GRU": (
        "test_gru.py::test_gru_state_is_frozen_past_each_length_and_padding_is_ignored",
        "test_gru.py::test_gru_module_accumulates_gradients_over_two_calls_and_inits_like_torch",
    ),
    "additive_attention": (
        "test_classic_attention.py::test_weights_sum_to_one_over_allowed_keys_and_a_fully_masked_row_is_zero",
        "test_classic_attention.py::test_masked_keys_get_zero_gradient_and_changing_them_changes_nothing",
        "test_classic_attention.py::test_additive_score_with_precomputed_key_projection_equals_the_direct_formula",
    ),
    "luong_attention": (
        "test_classic_attention.py::test_weights_sum_to_one_over_allowed_keys_and_a_fully_masked_row_is_zero",
        "test_classic_attention.py::test_dot_score_equals_general_score_with_identity_weight",
        "test_classic_attention.py::test_concat_score_is_the_additive_score_with_split_weights",
    ),
    "AdditiveAttention": ("test_classic_attention.py::test_module_gradients_accumulate_over_two_backward_calls",),
    "LuongAttention": ("test_classic_attention.py::test_module_gradients_accumulate_over_two_backward_calls",),
    "quick_gelu": ("test_clip.py::test_quick_gelu_is_x_sigmoid_1702x_close_to_gelu_and_finite_far_out",),
    "clip_loss": (
        "test_clip.py::test_clip_loss_is_symmetric_under_swapping_images_and_texts",
        "test_clip.py::test_aligned_orthogonal_pairs_with_a_large_scale_give_a_loss_near_zero",
        "test_clip.py::test_clip_loss_dlogit_scale_is_the_sum_of_dlogits_times_logits",
        "test_clip.py::test_clip_loss_ignores_each_embeddings_length_so_its_gradient_is_orthogonal_to_it",
    ),
    "flash_attention": (
        "test_flash_attention.py::test_flash_attention_equals_standard_attention_for_any_tiles_masks_and_windows",
        "test_flash_attention.py::test_the_cache_keeps_one_log_sum_exp_per_row_and_no_score_sized_array",
        "test_flash_attention.py::test_keys_outside_the_sliding_window_change_nothing_and_get_no_gradient",
    ),
    "CLIPModel": (
        "test_clip.py::test_the_text_is_pooled_at_its_largest_id_and_nothing_after_it_matters",
        "test_clip.py::test_the_loss_gradient_meets_both_towers_only_through_the_logits_and_logit_scale",
        "test_clip.py::test_a_post_step_clamp_lets_a_saturated_scale_come_back_a_clamp_in_the_forward_does_not",
    ),
    **LLAMA_PROPERTY_TESTS,
    "box_cxcywh_to_xyxy": ("test_boxes.py::test_cxcywh_and_xyxy_are_inverse_maps_and_so_are_their_backwards",),
    "box_xyxy_to_cxcywh": ("test_boxes.py::test_cxcywh_and_xyxy_are_inverse_maps_and_so_are_their_backwards",),
    "box_iou": (
        "test_boxes.py::test_iou_is_symmetric_in_0_1_and_one_on_the_diagonal_of_a_box_with_itself",
        "test_boxes.py::test_disjoint_boxes_have_iou_zero_and_no_iou_gradient_but_giou_pulls_them_together",
        "test_boxes.py::test_two_boxes_of_zero_area_have_iou_and_penalty_zero_by_definition_where_transformers_gives_nan",
    ),
    "generalized_box_iou": (
        "test_boxes.py::test_giou_is_at_most_iou_in_minus_1_1_and_equals_iou_when_one_box_contains_the_other",
        "test_boxes.py::test_iou_and_giou_do_not_change_when_both_boxes_move_or_scale_together",
        "test_boxes.py::test_a_zero_width_box_has_iou_zero_and_a_defined_giou_gradient",
    ),
    "giou_loss": (
        "test_boxes.py::test_giou_loss_is_the_diagonal_of_one_minus_pairwise_giou_over_num_boxes",
        "test_boxes.py::test_identical_boxes_have_giou_one_loss_zero_and_send_min_max_ties_to_the_first_box",
    ),
    "l1_box_loss": (
        "test_boxes.py::test_l1_box_loss_divides_by_num_boxes_and_sends_no_gradient_where_pred_equals_target",
    ),
    "weighted_cross_entropy": (
        "test_detr_loss.py::test_weighted_cross_entropy_divides_by_the_sum_of_the_targets_weights_not_by_n",
        "test_detr_loss.py::test_weighted_cross_entropy_with_equal_weights_is_the_plain_mean",
    ),
    "detr_loss": (
        "test_detr_loss.py::test_permuting_the_queries_permutes_the_loss_gradients_and_leaves_the_loss_unchanged",
        "test_detr_loss.py::test_unmatched_queries_learn_no_object_and_get_no_box_gradient",
        "test_detr_loss.py::test_auxiliary_layers_are_matched_each_on_its_own_and_their_losses_add_up",
        "test_detr_loss.py::test_without_any_object_the_box_losses_are_zero_and_num_boxes_is_one",
    ),
    "frozen_batch_norm": (
        "test_detr.py::test_frozen_batch_norm_is_one_affine_map_per_channel_and_its_gradient_ignores_x",
        "test_detr.py::test_fresh_frozen_batch_norm_statistics_give_x_over_sqrt_1_plus_eps",
    ),
    "DETR": (
        "test_detr.py::test_permuting_the_query_position_embeddings_permutes_every_output_the_queries_form_a_set",
        "test_detr.py::test_every_parameter_gradient_and_every_layers_output_match_the_twin",
        "test_detr_hf.py::test_sine_positions_equal_transformers_detr_sine_position_embedding",
    ),
}
for _case, _tests in ELSEWHERE.items():
    PROPERTY_TESTS[_case].extend(_tests)

# --------------------------------------------------------------------------- softmax family


@property_of("softmax")
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 6)),
    dtype=dtypes,
    seed=seeds,
    shift=st.floats(-1e3, 1e3),
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
)
def test_softmax_rows_sum_to_one_and_are_shift_invariant(shape, dtype, seed, shift, magnitude):
    x = (magnitude * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    y, _ = F.softmax_forward(x)
    assert y.dtype == dtype
    assert np.all(np.isfinite(y)) and np.all(y >= 0)
    assert_matches("row sums", y.sum(axis=-1), np.ones(shape[0]), dtype)
    y_shifted, _ = F.softmax_forward(x + dtype(shift))
    # Adding the shift rounds each logit by up to half an ulp of |x| + |shift|;
    # softmax moves by at most twice that. The contract tolerance covers the rest.
    rounding = 2 * np.finfo(dtype).eps * (np.abs(x).max() + abs(shift))
    assert np.abs(y_shifted - y).max() <= rounding + (1e-10 if dtype == np.float64 else 1e-5)


@property_of("log_softmax")
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 6)), dtype=dtypes, seed=seeds)
def test_log_softmax_is_log_of_softmax_and_stays_finite_for_huge_logits(shape, dtype, seed):
    x = (1e4 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    logp, _ = F.log_softmax_forward(x)
    assert np.all(np.isfinite(logp)), "log_softmax must not produce -inf for very negative logits"
    assert_matches("sum exp(log_softmax)", np.exp(logp).sum(axis=-1), np.ones(shape[0]), dtype)


@property_of("cross_entropy")
@given(N=st.integers(1, 8), V=st.integers(2, 9), dtype=dtypes, seed=seeds)
def test_cross_entropy_without_smoothing_equals_nll_of_log_softmax(N, V, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((N, V))).astype(dtype)
    targets = rng.integers(0, V, size=N)
    targets[0] = -100 if N > 1 else targets[0]
    loss, _ = F.cross_entropy_forward(logits, targets)
    logp, _ = F.log_softmax_forward(logits)
    valid = targets != -100
    nll = -logp[np.arange(N)[valid], targets[valid]].mean()
    assert loss.dtype == dtype and loss.shape == ()
    assert_matches("loss", loss, nll, dtype)


@property_of("cross_entropy")
@given(N=st.integers(1, 8), V=st.integers(2, 9), eps=st.floats(0.0, 1.0), seed=seeds)
def test_cross_entropy_gradient_rows_sum_to_zero_and_ignored_rows_get_none(N, V, eps, seed):
    """dlogits = (p - q)/N_valid: p and q both sum to 1, so every row of the gradient sums to 0."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, V))
    targets = rng.integers(0, V, size=N)
    targets[rng.random(N) < 0.3] = -100
    _, cache = F.cross_entropy_forward(logits, targets, label_smoothing=eps)
    d = F.cross_entropy_backward(1.0, cache)
    assert np.abs(d.sum(axis=1)).max() < 1e-12
    assert np.all(d[targets == -100] == 0)


@property_of("cross_entropy")
def test_cross_entropy_with_every_row_ignored_is_nan_with_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((3, 4))
    loss, cache = F.cross_entropy_forward(logits, np.full(3, -100))
    assert np.isnan(loss)
    assert np.array_equal(F.cross_entropy_backward(1.0, cache), np.zeros((3, 4)))


# --------------------------------------------------------------------------- layer norm


@property_of("layer_norm")
@given(B=st.integers(1, 4), C=st.integers(2, 16), dtype=dtypes, seed=seeds)
def test_layer_norm_rows_have_zero_mean_and_unit_variance_before_the_affine(B, C, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (5 * rng.standard_normal((B, C)) + 3).astype(dtype)
    x = x + np.linspace(-1, 1, C, dtype=dtype)  # keep rows from being nearly constant
    eps = 1e-5
    y, cache = F.layer_norm_forward(x, rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype), eps)
    xhat = cache.xhat
    assert_matches("row mean of xhat", xhat.mean(axis=-1), np.zeros(B), dtype)
    var = x.astype(np.float64).var(axis=-1)
    assert_matches("row variance of xhat", xhat.var(axis=-1), var / (var + eps), dtype)
    # and the affine is applied per feature
    assert y.dtype == dtype


@property_of("layer_norm")
def test_layer_norm_gradient_is_orthogonal_to_constant_shifts():
    """LayerNorm ignores adding c to a row, so dx is orthogonal to the all-ones vector (sums to 0)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 7))
    _, cache = F.layer_norm_forward(x, rng.standard_normal(7), rng.standard_normal(7))
    dx, _, _ = F.layer_norm_backward(rng.standard_normal((4, 7)), cache)
    assert np.abs(dx.sum(axis=-1)).max() < 1e-12


# --------------------------------------------------------------------------- attention


@property_of("scaled_dot_product_attention")
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_attention_weights_are_distributions_over_allowed_keys(data, dtype, seed):
    dims = data.draw(dims_for(CASES["scaled_dot_product_attention"]))
    B, H, T, S, D = dims["B"], dims["H"], dims["T"], dims["S"], dims["D"]
    rng = np.random.default_rng(seed)
    mask, is_causal = draw_mask(rng, dims["mask"], B, H, T, S)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in [(B, H, T, D), (B, H, S, D), (B, H, S, D)])
    _, cache = F.scaled_dot_product_attention_forward(q, k, v, mask=mask, is_causal=is_causal)
    allowed = np.ones((B, H, T, S), bool)
    if mask is not None:
        allowed &= mask
    if is_causal:
        allowed &= F.causal_mask(T, S)
    w = cache.weights
    assert np.all(w[~allowed] == 0), "a masked key received weight"
    row_has_key = allowed.any(axis=-1)
    expected = np.where(row_has_key, 1.0, 0.0)  # fully masked rows: all-zero weights (documented)
    assert_matches("row sums", w.sum(axis=-1), expected, dtype)


@property_of("MultiHeadAttention")
@given(B=st.integers(1, 2), T=st.integers(2, 6), H=st.sampled_from([1, 2]), seed=seeds, t=st.integers(0, 5))
def test_causal_output_never_depends_on_later_positions(B, T, H, seed, t):
    """Under a causal mask the gradient of output t with respect to inputs after t is exactly zero."""
    t = t % T
    rng = np.random.default_rng(seed)
    C = 4 * H
    mha = nt.MultiHeadAttention(C, H, rng=rng)
    x = rng.standard_normal((B, T, C))
    out, cache = mha.forward(x, x, x, is_causal=True)
    dout = np.zeros_like(out)
    dout[:, t] = rng.standard_normal((B, C))  # only output position t matters
    dq, dk, dv = mha.backward(dout, cache)
    dx = dq + dk + dv
    assert np.all(dx[:, t + 1 :] == 0), "gradient leaked to future positions"
    assert np.abs(dx[:, : t + 1]).max() > 0
    # and changing the future changes nothing at or before t
    x2 = x.copy()
    x2[:, t + 1 :] += rng.standard_normal(x2[:, t + 1 :].shape)
    out2, _ = mha.forward(x2, x2, x2, is_causal=True)
    assert np.array_equal(out2[:, : t + 1], out[:, : t + 1])


@property_of("MultiHeadAttention")
@given(B=st.integers(1, 2), T=st.integers(1, 6), H=st.sampled_from([1, 2, 4]), dtype=dtypes, seed=seeds)
def test_self_attention_without_positions_is_permutation_equivariant(B, T, H, dtype, seed):
    rng = np.random.default_rng(seed)
    C = 8
    mha = nt.MultiHeadAttention(C, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((B, T, C)).astype(dtype)
    perm = rng.permutation(T)
    out, _ = mha.forward(x, x, x)
    out_p, _ = mha.forward(x[:, perm], x[:, perm], x[:, perm])
    assert_matches("attention(x[perm]) vs attention(x)[perm]", out_p, out[:, perm], dtype)


@property_of("scaled_dot_product_attention")
def test_fully_masked_query_row_gives_zero_output_and_zero_gradient():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 1, 3, 4)), rng.standard_normal((1, 1, 5, 4)), rng.standard_normal((1, 1, 5, 2))
    mask = np.ones((3, 5), bool)
    mask[1] = False
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, mask=mask)
    assert np.all(out[..., 1, :] == 0) and np.all(cache.weights[..., 1, :] == 0)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(dout, cache)
    assert np.all(dq[..., 1, :] == 0)
    # keys receive gradient only from the rows that could see them: dropping row 1's dout changes nothing
    dout2 = dout.copy()
    dout2[..., 1, :] = 0
    _, dk2, dv2 = F.scaled_dot_product_attention_backward(dout2, cache)
    assert np.array_equal(dk, dk2) and np.array_equal(dv, dv2)


# --------------------------------------------------------------------------- positional encoding


@given(
    d_model=st.integers(1, 32), k=st.integers(0, 50), length=st.integers(1, 64), base=st.sampled_from([10000.0, 100.0])
)
def test_positional_encoding_shift_is_a_fixed_rotation_per_frequency(d_model, k, length, base):
    """PE(pos + k) = R_k PE(pos) with R_k block-diagonal, one 2x2 rotation per frequency, for every pos."""
    pe = F.sinusoidal_positional_encoding(length + k, d_model, base=base)
    R = np.zeros((d_model, d_model))
    for i in range(0, d_model, 2):
        phi = k / base ** (i / d_model)
        if i + 1 < d_model:
            # [sin(a+phi), cos(a+phi)] = [[cos, sin], [-sin, cos]] @ [sin a, cos a]
            R[i : i + 2, i : i + 2] = [[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]]
        else:
            break  # odd d_model: the last sine column has no cosine partner
    even = d_model - (d_model % 2)
    shifted = pe[:length, :even] @ R[:even, :even].T
    assert_matches(f"PE(pos + {k})", shifted, pe[k : k + length, :even], np.float64)


def test_positional_encoding_matches_the_formula_at_sample_points():
    pe = F.sinusoidal_positional_encoding(10, 6)
    for pos, i in [(0, 0), (3, 1), (9, 2)]:
        angle = pos / 10000 ** (2 * i / 6)
        assert pe[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-15)
        assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-15)


# --------------------------------------------------------------------------- the rest


@property_of("dropout")
@given(dtype=dtypes, seed=seeds, p=st.sampled_from([0.1, 0.5, 0.9]))
def test_dropout_keeps_about_one_minus_p_and_preserves_the_mean(dtype, seed, p):
    rng = np.random.default_rng(seed)
    x = np.ones((200, 200), dtype)
    y, cache = F.dropout_forward(x, p, rng=rng)
    kept = cache.keep.mean()
    n = x.size
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # 5 standard deviations
    assert set(np.unique(y)) <= {0.0, dtype(1 / (1 - p))}
    y_eval, _ = F.dropout_forward(x, p, rng=rng, training=False)
    assert y_eval is x


@property_of("dropout")
def test_dropout_with_the_same_seed_drops_the_same_units():
    x = np.random.default_rng(0).standard_normal((5, 7))
    a, _ = F.dropout_forward(x, 0.5, rng=np.random.default_rng(42))
    b, _ = F.dropout_forward(x, 0.5, rng=np.random.default_rng(42))
    assert np.array_equal(a, b)


@property_of("embedding")
def test_embedding_gradient_accumulates_repeated_ids():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 3))
    ids = np.array([[1, 1, 4], [1, 0, 4]])
    _, cache = F.embedding_forward(ids, W)
    dout = rng.standard_normal((2, 3, 3))
    dW = F.embedding_backward(dout, cache)
    assert_matches("dW[1]", dW[1], dout[0, 0] + dout[0, 1] + dout[1, 0], np.float64)
    assert_matches("dW[4]", dW[4], dout[0, 2] + dout[1, 2], np.float64)
    assert np.all(dW[[2, 3]] == 0)


@property_of("gelu")
@given(seed=seeds)
def test_gelu_limits_and_tanh_approximation_is_close_to_exact(seed):
    x = np.random.default_rng(seed).uniform(-6, 6, 50)
    exact, _ = F.gelu_forward(x)
    approx, _ = F.gelu_forward(x, "tanh")
    assert np.abs(exact - approx).max() < 1e-3
    big, _ = F.gelu_forward(np.array([30.0, -30.0]))
    assert big[0] == 30.0 and abs(big[1]) < 1e-30


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_and_module_keeps_the_input_dtype(name, dtype):
    case = CASES[name]
    dims = {"B": 2, "T": 3, "S": 4, "H": 2, "D": 3, "V": 5, "mask": "padding", "variant": case.variants[-1]}
    arrays = case.draw(np.random.default_rng(0), np.dtype(dtype), dims)
    out, backward = case.numpy(arrays, dims)
    assert out.dtype == dtype, f"{name}: output dtype {out.dtype}"
    grads = backward(np.random.default_rng(1).standard_normal(np.shape(out)).astype(dtype))
    for g_name, g in grads.items():
        assert g.dtype == dtype, f"{name}: d{g_name} has dtype {g.dtype}"


@property_of("Linear")
def test_module_gradients_accumulate_and_zero_grad_resets_them():
    rng = np.random.default_rng(0)
    lin = nt.Linear(3, 2, rng=rng)
    x = rng.standard_normal((4, 3))
    dout = rng.standard_normal((4, 2))
    for _ in range(2):
        _, cache = lin.forward(x)
        lin.backward(dout, cache)
    assert_matches("grad after two calls", lin.grads["weight"], 2 * (dout.T @ x), np.float64)
    lin.zero_grad()
    assert all(np.all(g == 0) for _, g in lin.named_grads())


def test_named_parameters_and_named_grads_share_the_state_dict_keys():
    mha = nt.MultiHeadAttention(8, 2, rng=np.random.default_rng(0))
    keys = list(mha.state_dict())
    assert keys == [n for n, _ in mha.named_parameters()] == [n for n, _ in mha.named_grads()]
    assert keys == [
        "q_proj.weight",
        "q_proj.bias",
        "k_proj.weight",
        "k_proj.bias",
        "v_proj.weight",
        "v_proj.bias",
        "out_proj.weight",
        "out_proj.bias",
    ]


@property_of("FeedForward")
def test_train_and_eval_switch_every_submodule():
    ff = nt.FeedForward(4, 8, dropout=0.5, rng=np.random.default_rng(0))
    ff.eval()
    assert not ff.training and not ff.dropout.training and not ff.linear1.training
    x = np.random.default_rng(1).standard_normal((2, 4))
    a, _ = ff.forward(x)  # eval: dropout is the identity, no rng needed
    b, _ = ff.forward(x)
    assert np.array_equal(a, b)
    ff.train()
    assert ff.dropout.training


@property_of("MultiHeadAttention")
def test_key_projection_bias_has_no_effect_and_a_zero_gradient_up_to_rounding():
    """softmax(q (k + b)^T) = softmax(q k^T + q.b): the same shift for every key of a row, which softmax ignores."""
    rng = np.random.default_rng(0)
    mha = nt.MultiHeadAttention(8, 2, rng=rng)
    x = rng.standard_normal((2, 5, 8))
    out, cache = mha.forward(x, x, x, is_causal=True)
    mha.backward(rng.standard_normal(out.shape), cache)
    assert np.abs(mha.k_proj.grads["bias"]).max() < 1e-14
    assert np.abs(mha.q_proj.grads["bias"]).max() > 1e-3  # the other biases do matter
    mha.k_proj.bias[...] = rng.standard_normal(8)
    out2, _ = mha.forward(x, x, x, is_causal=True)
    assert_matches("output with another key bias", out2, out, np.float64)


@property_of("Dropout")
def test_dropout_module_draws_from_its_own_generator_unless_given_one():
    x = np.ones((4, 50))
    a, _ = nt.Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    b, _ = nt.Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    c, _ = nt.Dropout(0.5, rng=np.random.default_rng(7)).forward(x, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(TypeError, match="rng"):
        nt.Dropout(0.5).forward(x)  # training mode, p > 0, no generator anywhere
    with pytest.raises(TypeError, match="rng"):
        nt.Dropout(0.5, rng=7)


# --------------------------------------------------------------------------- ops without a test above


@property_of("linear")
@given(bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_linear_backward_is_the_transpose_of_the_forward(bias, dtype, seed):
    """y - b = x W^T is bilinear: <dout, y - b> = <dx, x> = <dW, W>, and db sums dout over every row."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((2, 3, 4)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if bias else None
    y, cache = F.linear_forward(x, w, b)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = F.linear_backward(dout, cache)
    pairing = np.sum(dout * (y - (b if bias else 0)), dtype=np.float64)
    assert_matches("<dx, x>", np.sum(dx * x, dtype=np.float64), pairing, dtype)
    assert_matches("<dW, W>", np.sum(dw * w, dtype=np.float64), pairing, dtype)
    assert (db is None) == (not bias)
    if bias:
        assert_matches("db", db, dout.reshape(-1, 5).sum(axis=0), dtype)


@property_of("relu")
@given(dtype=dtypes, seed=seeds, scale=st.floats(0.01, 100.0))
def test_relu_is_positively_homogeneous_and_its_gradient_gates_dout_where_x_is_positive(dtype, seed, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 7)).astype(dtype)
    x[0, :3] = 0  # the kink: derivative 0, as PyTorch
    y, cache = F.relu_forward(x)
    y_scaled, _ = F.relu_forward(x * dtype(scale))
    assert np.all(y >= 0)
    assert_matches("relu(a x) = a relu(x)", y_scaled, y * dtype(scale), dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    assert np.array_equal(F.relu_backward(dout, cache), np.where(x > 0, dout, 0))


@property_of("tanh")
@given(dtype=dtypes, seed=seeds)
def test_tanh_is_odd_bounded_and_its_derivative_is_one_minus_tanh_squared(dtype, seed):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((4, 6))).astype(dtype)
    y, cache = F.tanh_forward(x)
    y_neg, _ = F.tanh_forward(-x)
    assert np.all(np.abs(y) <= 1)
    assert_matches("tanh(-x) = -tanh(x)", y_neg, -y, dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    assert_matches("dx = dout (1 - y^2)", F.tanh_backward(dout, cache), dout * (1 - y * y), dtype)


@property_of("l2_normalize")
@given(dtype=dtypes, seed=seeds, scale=st.floats(0.1, 10.0))
def test_l2_normalize_gives_unit_rows_ignores_row_scale_and_its_gradient_is_orthogonal_to_x(dtype, seed, scale):
    """y(a x) = y(x) for a > 0, so (Euler, degree 0) every row of dx is orthogonal to its row of x."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 5)) + 0.5).astype(dtype)
    y, cache = F.l2_normalize_forward(x)
    assert_matches("row norms", np.linalg.norm(y, axis=-1), np.ones(3), dtype)
    assert_matches("y(a x) = y(x)", F.l2_normalize_forward(x * dtype(scale))[0], y, dtype)
    dx = F.l2_normalize_backward(rng.standard_normal(x.shape).astype(dtype), cache)
    assert_matches("<dx, x> per row", np.sum(dx * x, axis=-1), np.zeros(3), dtype)


@property_of("mean_pooling")
@given(dtype=dtypes, seed=seeds)
def test_mean_pooling_averages_the_real_tokens_and_padding_changes_nothing(dtype, seed):
    rng = np.random.default_rng(seed)
    B, T, C = 3, 5, 4
    lengths = rng.integers(1, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)
    hidden = rng.standard_normal((B, T, C)).astype(dtype)
    y, cache = F.mean_pooling_forward(hidden, mask)
    expected = np.stack([hidden[b, : lengths[b]].mean(axis=0) for b in range(B)])
    assert_matches("mean of the real tokens", y, expected, dtype)
    other = np.where(mask[..., None] == 1, hidden, dtype(1e3))  # rewrite every padded position
    assert np.array_equal(F.mean_pooling_forward(other, mask)[0], y)
    dhidden = F.mean_pooling_backward(rng.standard_normal(y.shape).astype(dtype), cache)
    assert np.all(dhidden[mask == 0] == 0), "a padded position received gradient"


# --------------------------------------------------------------------------- modules without a test above


@property_of("Embedding")
def test_embedding_module_looks_up_rows_and_never_updates_the_pad_row():
    rng = np.random.default_rng(3)
    emb = nt.Embedding(6, 3, padding_idx=2, rng=rng)
    ids = np.array([[2, 5, 5], [0, 2, 1]])
    y, cache = emb.forward(ids)
    assert np.array_equal(y, emb.weight[ids])
    dout = rng.standard_normal(y.shape)
    emb.backward(dout, cache)
    g = emb.grads["weight"]
    assert np.all(g[2] == 0), "the pad row was updated"
    assert_matches("dW[5]", g[5], dout[0, 1] + dout[0, 2], np.float64)
    assert np.all(g[[3, 4]] == 0)


@property_of("LayerNorm")
@given(seed=seeds, shift=st.floats(-100, 100), scale=st.floats(0.1, 10.0))
def test_layer_norm_module_ignores_a_shift_and_a_positive_scale_of_each_row(seed, shift, scale):
    """LN(a x + c) = LN(x) for a > 0 (eps = 1e-20 vanishes against the variance), and dx sums to 0 per row."""
    rng = np.random.default_rng(seed)
    ln = nt.LayerNorm(6, eps=1e-20)
    ln.load_state_dict({"weight": rng.standard_normal(6), "bias": rng.standard_normal(6)})
    x = rng.standard_normal((2, 3, 6)) + np.linspace(-1, 1, 6)  # every row spread out
    y, cache = ln.forward(x)
    assert_matches("LN(a x + c) = LN(x)", ln.forward(scale * x + shift)[0], y, np.float64)
    dx = ln.backward(rng.standard_normal(y.shape), cache)
    assert np.abs(dx.sum(axis=-1)).max() < 1e-12


@property_of("Dropout")
def test_dropout_module_in_eval_mode_is_the_identity_and_passes_dout_through():
    drop = nt.Dropout(0.5).eval()
    x = np.random.default_rng(0).standard_normal((3, 4))
    y, cache = drop.forward(x)
    assert np.array_equal(y, x)
    dout = np.random.default_rng(1).standard_normal(x.shape)
    assert np.array_equal(drop.backward(dout, cache), dout)


@property_of("FeedForward")
@given(activation=st.sampled_from(["relu", "gelu", "gelu_tanh"]), seed=seeds)
def test_feed_forward_acts_on_each_position_alone(activation, seed):
    rng = np.random.default_rng(seed)
    ff = nt.FeedForward(4, 9, activation, dropout=0.0, rng=rng)
    x = rng.standard_normal((2, 5, 4))
    perm = rng.permutation(5)
    y, _ = ff.forward(x)
    assert_matches("ff(x[perm]) = ff(x)[perm]", ff.forward(x[:, perm])[0], y[:, perm], np.float64)
    assert_matches("one position alone", ff.forward(x[:, 2:3])[0], y[:, 2:3], np.float64)


@property_of("GRUCell", "GRU")
@given(bidirectional=st.booleans(), seed=seeds)
def test_gru_layer_is_its_cell_unrolled_over_time_in_each_direction(bidirectional, seed):
    """outputs[:, t] = h_t of the cell fed x_0 .. x_t; the backward direction reads x_{T-1} .. x_0."""
    rng = np.random.default_rng(seed)
    B, T, I, H = 2, 4, 3, 2
    gru = nt.GRU(I, H, bidirectional=bidirectional, rng=rng)
    x, h0 = rng.standard_normal((B, T, I)), rng.standard_normal((2 if bidirectional else 1, B, H))
    (outputs, h_n), _ = gru.forward(x, h0)
    for d, suffix in enumerate(["_l0", "_l0_reverse"][: gru.num_directions]):
        cell = nt.GRUCell(I, H, rng=rng)
        cell.load_state_dict({name: gru.state_dict()[name + suffix] for name, _ in cell.named_parameters()})
        h, steps = h0[d], range(T - 1, -1, -1) if d else range(T)
        for t in steps:
            h, _ = cell.forward(x[:, t], h)
            assert_matches(f"direction {d}, step {t}", outputs[:, t, d * H : (d + 1) * H], h, np.float64)
        assert_matches(f"h_n of direction {d}", h_n[d], h, np.float64)


@property_of("AdditiveAttention", "LuongAttention")
@pytest.mark.parametrize("score", ["additive", "dot", "general", "concat"])
def test_source_attention_module_is_blind_to_the_order_of_the_source(score):
    """Permuting the source positions with their mask keeps the context and permutes the weights."""
    rng = np.random.default_rng(4)
    B, T, S, Dq, Dv = 2, 3, 5, 4, 3
    Dk = Dq if score == "dot" else 5
    if score == "additive":
        m = nt.AdditiveAttention(Dq, Dk, 6, rng=rng)
    else:
        m = nt.LuongAttention(Dq, Dk, score, attn_dim=6 if score == "concat" else None, rng=rng)
    q, k, v = rng.standard_normal((B, T, Dq)), rng.standard_normal((B, S, Dk)), rng.standard_normal((B, S, Dv))
    mask = rng.random((B, S)) < 0.7
    mask[:, 0] = True
    perm = rng.permutation(S)
    out, cache = m.forward(q, k, v, mask=mask)
    out_p, cache_p = m.forward(q, k[:, perm], v[:, perm], mask=mask[:, perm])
    assert_matches("context", out_p, out, np.float64)
    assert_matches("weights", cache_p.weights, cache.weights[..., perm], np.float64)


# --------------------------------------------------------------------------- layers and models


@property_of("EncoderLayer")
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_without_a_mask_is_permutation_equivariant(norm_first):
    rng = np.random.default_rng(5)
    layer = nt.EncoderLayer(8, 2, 12, dropout=0.0, norm_first=norm_first, rng=rng)
    x = rng.standard_normal((2, 6, 8))
    perm = rng.permutation(6)
    y, _ = layer.forward(x)
    assert_matches("layer(x[perm]) = layer(x)[perm]", layer.forward(x[:, perm])[0], y[:, perm], np.float64)


@property_of("DecoderLayer")
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_is_causal_in_the_target_and_blind_to_the_order_of_the_memory(norm_first):
    rng = np.random.default_rng(6)
    B, T, S, C = 2, 5, 4, 8
    layer = nt.DecoderLayer(C, 2, 12, dropout=0.0, norm_first=norm_first, rng=rng)
    x, memory = rng.standard_normal((B, T, C)), rng.standard_normal((B, S, C))
    memory_mask, _ = draw_mask(rng, "padding", B, 2, T, S)  # (B, 1, 1, S)
    causal = F.causal_mask(T)[None, None]  # (1, 1, T, T)
    y, _ = layer.forward(x, memory, causal, memory_mask)
    perm = rng.permutation(S)
    y_p, _ = layer.forward(x, memory[:, perm], causal, memory_mask[..., perm])
    assert_matches("memory permuted with its mask", y_p, y, np.float64)
    x2 = x.copy()
    x2[:, 3:] += rng.standard_normal(x2[:, 3:].shape)  # change the future of position 2
    y2, _ = layer.forward(x2, memory, causal, memory_mask)
    assert np.array_equal(y2[:, :3], y[:, :3])


@property_of("Transformer")
def test_transformer_logit_at_step_t_never_depends_on_later_target_tokens():
    cfg = nt.TransformerConfig(9, 9, d_model=8, n_heads=2, d_ff=16, dropout=0.0)
    model = nt.Transformer(cfg, rng=np.random.default_rng(0))
    src, tgt = np.array([[3, 4, 5, 6]]), np.array([[1, 6, 7, 8, 2]])
    logits, _ = model.forward(src, tgt)
    later = tgt.copy()
    later[:, 3:] = [[4, 5]]
    logits2, _ = model.forward(src, later)
    assert np.array_equal(logits2[:, :3], logits[:, :3])
    assert np.abs(logits2[:, 3:] - logits[:, 3:]).max() > 1e-6


@property_of("BertForSequenceClassification")
def test_sequence_classification_logits_ignore_what_the_padded_positions_hold():
    cfg = BertConfig(vocab_size=20, hidden_size=8, n_layers=2, n_heads=2, intermediate_size=12, dropout=0.0)
    rng = np.random.default_rng(7)
    model = nt.BertForSequenceClassification(cfg, 3, np.float64, rng)
    ids = rng.integers(4, 20, size=(2, 6))
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    logits, _ = model.forward(ids, mask)
    other = np.where(mask == 1, ids, rng.integers(4, 20, size=ids.shape))
    logits2, _ = model.forward(other, mask)
    assert logits.shape == (2, 3)
    assert_matches("logits with other padded tokens", logits2, logits, np.float64)


@property_of("RNNSeq2Seq")
@pytest.mark.parametrize("attention", ["bahdanau", "luong-dot", "luong-general", "luong-concat"])
def test_rnn_seq2seq_logit_at_step_t_never_depends_on_later_target_tokens(attention):
    cfg = RNNSeq2SeqConfig(src_vocab_size=9, tgt_vocab_size=9, embed_dim=4, hidden_size=6, attention=attention)
    model = nt.RNNSeq2Seq(cfg, rng=np.random.default_rng(8))
    src, tgt = np.array([[3, 4, 5, 6], [5, 6, 7, 0]]), np.array([[1, 6, 7, 8, 2], [1, 3, 4, 5, 2]])
    logits, _ = model.forward(src, tgt)
    later = tgt.copy()
    later[:, 3:] = 5
    logits2, _ = model.forward(src, later)
    assert np.array_equal(logits2[:, :3], logits[:, :3])
    assert np.abs(logits2[:, 3:] - logits[:, 3:]).max() > 1e-6


@property_of("cross_entropy")
@given(N=st.integers(1, 6), V=st.integers(2, 7), dtype=dtypes, seed=seeds, hf_style=st.booleans())
def test_cross_entropy_a_class_masked_to_minus_inf_is_the_same_as_a_class_removed(N, V, dtype, seed, hf_style):
    """Without smoothing, a logit of ``-inf`` (or ``finfo.min``, Hugging Face's masking value) off
    the target is a class of probability 0: the loss is that of the logits without the class, and
    its gradient there is 0 (it used to be NaN: 0 * inf from the unused smoothing term)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, V + 1)).astype(dtype)
    logits[:, V] = np.finfo(dtype).min if hf_style else -np.inf  # the masked class is the last one
    targets = rng.integers(0, V, N)
    loss, cache = F.cross_entropy_forward(logits, targets)
    ref, ref_cache = F.cross_entropy_forward(np.ascontiguousarray(logits[:, :V]), targets)
    assert np.isfinite(loss)
    assert_matches("loss with a masked class", loss, ref, dtype)
    dlogits = F.cross_entropy_backward(dtype(1.0), cache)
    assert (dlogits[:, V] == 0).all()
    assert_matches(
        "dlogits of the other classes", dlogits[:, :V], F.cross_entropy_backward(dtype(1.0), ref_cache), dtype
    )
