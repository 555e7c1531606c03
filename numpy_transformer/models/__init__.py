"""Full networks built from the modules, one file each."""

from .rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqCache
from .transformer import Decoder, DecoderLayer, Encoder, EncoderLayer, Transformer, TransformerCache

__all__ = [
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "RNNSeq2Seq",
    "RNNSeq2SeqCache",
    "Transformer",
    "TransformerCache",
]
