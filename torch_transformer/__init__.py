"""The PyTorch twin of numpy_transformer: the same modules, autograd for the backward."""

from . import bridge, functional
from .modules import Dropout, Embedding, FeedForward, LayerNorm, Linear, MultiHeadAttention

__all__ = ["Dropout", "Embedding", "FeedForward", "LayerNorm", "Linear", "MultiHeadAttention", "bridge", "functional"]
