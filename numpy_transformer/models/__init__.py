"""Full networks built from the modules, one file each: the encoder–decoder Transformer, BERT, GPT, RNN seq2seq, ViT.

A model imports modules and functional ops, never another model; its caches are named frozen dataclasses.
"""

from .bert import BertForMaskedLM, BertForSequenceClassification, BertModel, mask_tokens
from .gpt import GPT, GPTCache
from .llama import Llama, LlamaCache, LlamaKVCache
from .rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqCache
from .transformer import (
    DecodeCache,
    Decoder,
    DecoderCache,
    EncodeCache,
    Encoder,
    EncoderCache,
    Transformer,
    TransformerCache,
)
from .vit import ViT, ViTForImageClassification

__all__ = [
    "GPT",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "DecodeCache",
    "Decoder",
    "DecoderCache",
    "EncodeCache",
    "Encoder",
    "EncoderCache",
    "GPTCache",
    "Llama",
    "LlamaCache",
    "LlamaKVCache",
    "RNNSeq2Seq",
    "RNNSeq2SeqCache",
    "Transformer",
    "TransformerCache",
    "ViT",
    "ViTForImageClassification",
    "mask_tokens",
]
