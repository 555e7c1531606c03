"""Modules that own parameters and gradients and compose the functional ops."""

from .attention import MultiHeadAttention, MultiHeadAttentionCache
from .base import Module
from .classic_attention import AdditiveAttention, LuongAttention
from .gru import GRU, GRUCell, GRULayerCache
from .layers import Dropout, Embedding, FeedForward, LayerNorm, Linear

__all__ = [
    "GRU",
    "AdditiveAttention",
    "Dropout",
    "Embedding",
    "FeedForward",
    "GRUCell",
    "GRULayerCache",
    "LayerNorm",
    "Linear",
    "LuongAttention",
    "Module",
    "MultiHeadAttention",
    "MultiHeadAttentionCache",
]
