"""Modules that own parameters and gradients and compose the functional ops.

Also the blocks several models share (encoder and decoder layers, the KV cache) and named dropout masks.
"""

from .attention import MultiHeadAttention, MultiHeadAttentionCache
from .base import Module
from .classic_attention import AdditiveAttention, LuongAttention
from .dropout_masks import DropoutMasks
from .gru import GRU, GRUCell, GRULayerCache
from .kv_cache import DecoderLayerKV, KVCache, cached_attention, cached_decoder_layer, cached_encoder_layer
from .layers import Dropout, Embedding, FeedForward, LayerNorm, Linear
from .llama_layers import (
    LlamaAttention,
    LlamaAttentionCache,
    LlamaDecoderLayer,
    LlamaDecoderLayerCache,
    RMSNorm,
    SwiGLUFeedForward,
    SwiGLUFeedForwardCache,
    cached_llama_layer,
)
from .transformer_layers import DecoderLayer, DecoderLayerCache, EncoderLayer, EncoderLayerCache

__all__ = [
    "GRU",
    "AdditiveAttention",
    "DecoderLayer",
    "DecoderLayerCache",
    "DecoderLayerKV",
    "Dropout",
    "DropoutMasks",
    "Embedding",
    "EncoderLayer",
    "EncoderLayerCache",
    "FeedForward",
    "GRUCell",
    "GRULayerCache",
    "KVCache",
    "LayerNorm",
    "Linear",
    "LlamaAttention",
    "LlamaAttentionCache",
    "LlamaDecoderLayer",
    "LlamaDecoderLayerCache",
    "LuongAttention",
    "Module",
    "MultiHeadAttention",
    "MultiHeadAttentionCache",
    "RMSNorm",
    "SwiGLUFeedForward",
    "SwiGLUFeedForwardCache",
    "cached_attention",
    "cached_decoder_layer",
    "cached_encoder_layer",
    "cached_llama_layer",
]
