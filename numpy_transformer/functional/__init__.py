"""Pure forward/backward pairs, one file per op family.

Every ``*_forward`` returns ``(out, cache)``; the matching ``*_backward(dout, cache)``
returns the gradients of the differentiable inputs, in the order of the forward's
arguments. Every op keeps its input dtype (float32 or float64).
"""

from .activations import gelu_backward, gelu_forward, relu_backward, relu_forward, tanh_backward, tanh_forward
from .attention import masked_softmax, scaled_dot_product_attention_backward, scaled_dot_product_attention_forward
from .boxes import (
    box_cxcywh_to_xyxy_backward,
    box_cxcywh_to_xyxy_forward,
    box_iou_backward,
    box_iou_forward,
    box_xyxy_to_cxcywh_backward,
    box_xyxy_to_cxcywh_forward,
    generalized_box_iou_backward,
    generalized_box_iou_forward,
    giou_loss_backward,
    giou_loss_forward,
    l1_box_loss_backward,
    l1_box_loss_forward,
)
from .classic_attention import (
    additive_attention_backward,
    additive_attention_forward,
    additive_attention_scores,
    luong_attention_backward,
    luong_attention_forward,
)
from .clip_loss import clip_loss_backward, clip_loss_forward
from .conv import (
    conv1d_backward,
    conv1d_forward,
    conv2d_backward,
    conv2d_forward,
    fold_windows,
    max_pool2d_backward,
    max_pool2d_forward,
    sliding_windows,
)
from .detr_loss import (
    detr_loss_backward,
    detr_loss_forward,
    hungarian_match,
    matching_cost,
    weighted_cross_entropy_backward,
    weighted_cross_entropy_forward,
)
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward, sinusoidal_positional_encoding
from .flash_attention import flash_attention_backward, flash_attention_forward
from .frozen_batch_norm import frozen_batch_norm_backward, frozen_batch_norm_forward
from .grouped_attention import grouped_query_attention_backward, grouped_query_attention_forward
from .gru import gru_backward, gru_cell_backward, gru_cell_forward, gru_forward
from .layer_norm import layer_norm_backward, layer_norm_forward
from .linear import linear_backward, linear_forward
from .masks import causal_mask, padding_mask, sliding_window_mask
from .pooling import l2_normalize_backward, l2_normalize_forward, mean_pooling_backward, mean_pooling_forward
from .quick_gelu import quick_gelu_backward, quick_gelu_forward
from .rms_norm import rms_norm_backward, rms_norm_forward
from .rotary import (
    half_to_interleaved_rows,
    interleaved_to_half_rows,
    rotary_cos_sin,
    rotary_embedding_backward,
    rotary_embedding_forward,
    rotary_frequencies,
)
from .softmax import (
    cross_entropy_backward,
    cross_entropy_forward,
    log_softmax_backward,
    log_softmax_forward,
    softmax_backward,
    softmax_forward,
)
from .swiglu import silu_backward, silu_forward, swiglu_backward, swiglu_forward

__all__ = [
    "additive_attention_backward",
    "additive_attention_forward",
    "additive_attention_scores",
    "box_cxcywh_to_xyxy_backward",
    "box_cxcywh_to_xyxy_forward",
    "box_iou_backward",
    "box_iou_forward",
    "box_xyxy_to_cxcywh_backward",
    "box_xyxy_to_cxcywh_forward",
    "causal_mask",
    "clip_loss_backward",
    "clip_loss_forward",
    "conv1d_backward",
    "conv1d_forward",
    "conv2d_backward",
    "conv2d_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "detr_loss_backward",
    "detr_loss_forward",
    "dropout_backward",
    "dropout_forward",
    "embedding_backward",
    "embedding_forward",
    "flash_attention_backward",
    "flash_attention_forward",
    "fold_windows",
    "frozen_batch_norm_backward",
    "frozen_batch_norm_forward",
    "gelu_backward",
    "gelu_forward",
    "generalized_box_iou_backward",
    "generalized_box_iou_forward",
    "giou_loss_backward",
    "giou_loss_forward",
    "grouped_query_attention_backward",
    "grouped_query_attention_forward",
    "gru_backward",
    "gru_cell_backward",
    "gru_cell_forward",
    "gru_forward",
    "half_to_interleaved_rows",
    "hungarian_match",
    "interleaved_to_half_rows",
    "l1_box_loss_backward",
    "l1_box_loss_forward",
    "l2_normalize_backward",
    "l2_normalize_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "linear_backward",
    "linear_forward",
    "log_softmax_backward",
    "log_softmax_forward",
    "luong_attention_backward",
    "luong_attention_forward",
    "masked_softmax",
    "matching_cost",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "mean_pooling_backward",
    "mean_pooling_forward",
    "padding_mask",
    "quick_gelu_backward",
    "quick_gelu_forward",
    "relu_backward",
    "relu_forward",
    "rms_norm_backward",
    "rms_norm_forward",
    "rotary_cos_sin",
    "rotary_embedding_backward",
    "rotary_embedding_forward",
    "rotary_frequencies",
    "scaled_dot_product_attention_backward",
    "scaled_dot_product_attention_forward",
    "silu_backward",
    "silu_forward",
    "sinusoidal_positional_encoding",
    "sliding_window_mask",
    "sliding_windows",
    "softmax_backward",
    "softmax_forward",
    "swiglu_backward",
    "swiglu_forward",
    "tanh_backward",
    "tanh_forward",
    "weighted_cross_entropy_backward",
    "weighted_cross_entropy_forward",
]
