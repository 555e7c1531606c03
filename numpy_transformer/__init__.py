"""numpy-transformer: a Transformer whose every forward and backward pass is written by hand in NumPy.

``numpy_transformer.functional`` holds the forward/backward pairs,
``numpy_transformer.modules`` the parameter-owning layers (re-exported here),
``numpy_transformer.gradcheck`` central finite differences and
``numpy_transformer.testing`` the parity contract (error measure and tolerances).
"""

from . import functional, gradcheck, testing
from .config import TransformerConfig
from .models import DecoderLayer, EncoderLayer, Transformer
from .modules import Dropout, Embedding, FeedForward, LayerNorm, Linear, Module, MultiHeadAttention

__version__ = "0.1.0"

__all__ = [
    "DecoderLayer",
    "Dropout",
    "Embedding",
    "EncoderLayer",
    "FeedForward",
    "LayerNorm",
    "Linear",
    "Module",
    "MultiHeadAttention",
    "Transformer",
    "TransformerConfig",
    "functional",
    "gradcheck",
    "testing",
]
