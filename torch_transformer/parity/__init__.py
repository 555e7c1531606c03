"""The parity registry: every op and module in NumPy, in the twin, by finite differences and in its built-in.

``registry`` holds the machinery (``Case``, ``register``, ``run_case``); each ``cases_*`` module registers on import.
"""

# isort: off
# Imported for their registrations, in the order of the ``parity`` table: keep this order.
from . import cases_ops, cases_modules, cases_transformer, cases_bert  # noqa: F401
from . import cases_classic_attention, cases_gpt, cases_gru, cases_rnn_seq2seq  # noqa: F401
from . import cases_conv  # noqa: F401
from . import cases_llama  # noqa: F401
from . import cases_vit  # noqa: F401
from . import cases_cnn  # noqa: F401
from . import cases_flash  # noqa: F401
from . import cases_clip  # noqa: F401
from . import cases_whisper  # noqa: F401
from . import cases_boxes, cases_detr  # noqa: F401

# isort: on
from .registry import (
    CASES,
    MASK_KINDS,
    NO_VARIANT,
    Builtin,
    Case,
    CaseResult,
    NoVariant,
    default_dims,
    describe_variant,
    draw_mask,
    enable_exact_cuda_matmul,
    register,
    run_case,
    tolerance,
    torch_dtype,
)

__all__ = [
    "CASES",
    "MASK_KINDS",
    "NO_VARIANT",
    "Builtin",
    "Case",
    "CaseResult",
    "NoVariant",
    "default_dims",
    "describe_variant",
    "draw_mask",
    "enable_exact_cuda_matmul",
    "register",
    "run_case",
    "tolerance",
    "torch_dtype",
]
