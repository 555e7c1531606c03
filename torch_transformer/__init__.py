"""The PyTorch twin of numpy_transformer: the same modules, autograd for the backward, on CPU or CUDA.

Each file is named as the NumPy file it twins; ``bridge`` moves weights and masks between the halves, ``parity``
holds the registry of cases the tests and the ``parity`` command run.
"""

from numpy_transformer.config import BertConfig, GPTConfig, LlamaConfig, RNNSeq2SeqConfig, TransformerConfig, ViTConfig

from . import bridge, functional
from .bert import BertForMaskedLM, BertForSequenceClassification, BertModel
from .classic_attention import AdditiveAttention, LuongAttention
from .gpt import GPT
from .gru import GRU, GRUCell
from .llama import Llama
from .modules import Dropout, Embedding, FeedForward, LayerNorm, Linear, MultiHeadAttention
from .rnn_seq2seq import RNNSeq2Seq
from .transformer import Transformer
from .transformer_layers import DecoderLayer, EncoderLayer
from .vit import ViT, ViTForImageClassification

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
    "MultiHeadAttention",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "Transformer",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "ViTForImageClassification",
    "bridge",
    "functional",
]
