"""Inference: seq2seq decoding (greedy and beam search over a stepping protocol) and sampling from a GPT.

``search`` holds the two searches, ``protocol`` what they step, ``steppers`` each model's stepper,
``sampling`` the GPT's generation.
"""

from .protocol import FullPrefixStepper, Steppable, Stepper, check_step_ids
from .sampling import (
    GenerationResult,
    GPTKVCache,
    check_sampling_args,
    filter_logits,
    generate,
    sample,
    sampling_distribution,
)
from .search import BeamSearchResult, DecodeResult, beam_search, greedy_decode
from .steppers import (
    IncrementalDecoder,
    RNNSeq2SeqStepping,
    RNNStepper,
    TransformerStepping,
    decode_last_position,
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
