"""Inference: seq2seq decoding (greedy and beam search over a stepping protocol) and sampling from a GPT.

``search`` holds the two searches, the protocol and the seq2seq models' steppers; ``sampling`` generates text.
"""

from .sampling import (
    GenerationResult,
    GPTKVCache,
    check_sampling_args,
    filter_logits,
    generate,
    sample,
    sampling_distribution,
)
from .search import (
    BeamSearchResult,
    DecodeResult,
    FullPrefixStepper,
    IncrementalDecoder,
    RNNSeq2SeqStepping,
    RNNStepper,
    Steppable,
    Stepper,
    TransformerStepping,
    beam_search,
    check_step_ids,
    decode_last_position,
    greedy_decode,
    stepping,
)

__all__ = [
    "BeamSearchResult",
    "DecodeResult",
    "FullPrefixStepper",
    "GPTKVCache",
    "GenerationResult",
    "IncrementalDecoder",
    "RNNSeq2SeqStepping",
    "RNNStepper",
    "Steppable",
    "Stepper",
    "TransformerStepping",
    "beam_search",
    "check_sampling_args",
    "check_step_ids",
    "decode_last_position",
    "filter_logits",
    "generate",
    "greedy_decode",
    "sample",
    "sampling_distribution",
    "stepping",
]
