"""numpy-transformer: a Transformer whose every forward and backward pass is written by hand in NumPy.

``numpy_transformer.functional`` holds the forward/backward pairs,
``numpy_transformer.modules`` the parameter-owning layers (re-exported here),
``numpy_transformer.testing`` central finite differences and
``numpy_transformer.testing`` the parity contract (error measure and tolerances).
"""

from . import functional, testing
from .config import BertConfig, GPTConfig, RNNSeq2SeqConfig, TransformerConfig
from .models import (
    GPT,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    RNNSeq2Seq,
    Transformer,
)
from .modules import (
    GRU,
    AdditiveAttention,
    DecoderLayer,
    Dropout,
    Embedding,
    EncoderLayer,
    FeedForward,
    GRUCell,
    LayerNorm,
    Linear,
    LuongAttention,
    Module,
    MultiHeadAttention,
)

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GRU",
    "AdditiveAttention",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "DecoderLayer",
    "Dropout",
    "Embedding",
    "EncoderLayer",
    "FeedForward",
    "GPTConfig",
    "GRUCell",
    "LayerNorm",
    "Linear",
    "LuongAttention",
    "Module",
    "MultiHeadAttention",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "Transformer",
    "TransformerConfig",
    "functional",
    "testing",
]
