"""numpy-transformer: a Transformer whose every forward and backward pass is written by hand in NumPy.

Laid out by layer, lowest first: ``functional`` (forward/backward pairs), ``modules`` (parameter-owning
layers, re-exported here), ``models``, ``optim``, ``training`` and ``inference``, ``applications``,
``commands`` (the CLI); ``config`` holds the configs both halves share, ``testing`` the parity contract
(error measure, tolerances) and central finite differences.
"""

from . import functional, testing
from .config import BertConfig, GPTConfig, LlamaConfig, RNNSeq2SeqConfig, TransformerConfig, ViTConfig
from .models import (
    GPT,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    Llama,
    RNNSeq2Seq,
    Transformer,
    ViT,
    ViTForImageClassification,
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
    "Llama",
    "LlamaConfig",
    "LuongAttention",
    "Module",
    "MultiHeadAttention",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "Transformer",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "ViTForImageClassification",
    "functional",
    "testing",
]
