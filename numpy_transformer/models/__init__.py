"""Full networks built from the modules, one file each."""

from .transformer import Decoder, DecoderLayer, Encoder, EncoderLayer, Transformer, TransformerCache

__all__ = ["Decoder", "DecoderLayer", "Encoder", "EncoderLayer", "Transformer", "TransformerCache"]
