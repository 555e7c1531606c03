"""Modules that own parameters and gradients and compose the functional ops."""

from .attention import MultiHeadAttention, MultiHeadAttentionCache
from .base import Module
from .layers import Dropout, Embedding, FeedForward, LayerNorm, Linear

__all__ = [
    "Dropout",
    "Embedding",
    "FeedForward",
    "LayerNorm",
    "Linear",
    "Module",
    "MultiHeadAttention",
    "MultiHeadAttentionCache",
]
