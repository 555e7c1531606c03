"""The PyTorch twin of numpy_transformer: the same modules, autograd for the backward."""

from numpy_transformer.config import TransformerConfig

from . import bridge, functional
from .models import DecoderLayer, EncoderLayer, Transformer
from .modules import Dropout, Embedding, FeedForward, LayerNorm, Linear, MultiHeadAttention

__all__ = [
    "DecoderLayer",
    "Dropout",
    "Embedding",
    "EncoderLayer",
    "FeedForward",
    "LayerNorm",
    "Linear",
    "MultiHeadAttention",
    "Transformer",
    "TransformerConfig",
    "bridge",
    "functional",
]
