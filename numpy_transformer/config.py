"""Frozen configuration dataclasses, shared by the NumPy models and their PyTorch twins."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .functional.checks import (
    check_dropout_p,
    check_int,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)
from .functional.flash_attention import check_attention_kind
from .functional.rotary import ROPE_LAYOUTS


@dataclass(frozen=True)
class TransformerConfig:
    """The encoder–decoder Transformer of "Attention Is All You Need".

    The defaults are the configuration the built-in reverse task trains with.
    """

    src_vocab_size: int  # V_src, including the special tokens
    tgt_vocab_size: int  # V_tgt, including the special tokens
    d_model: int = 64  # C: width of every residual stream
    n_heads: int = 4  # H; head width D = d_model // n_heads
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 256  # F: hidden width of each feed-forward block
    dropout: float = 0.1  # on embeddings, attention weights, sub-layer outputs, feed-forward hidden
    activation: str = "relu"  # "relu" or "gelu" (exact erf)
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN, with a final LayerNorm per stack
    max_len: int = 128  # longest sequence the positional encoding covers
    pad_id: int = 0  # padded positions are never attended to and never scored
    tie_embeddings: bool = False  # output projection shares the target embedding matrix
    layer_norm_eps: float = 1e-5
    attention: str = "standard"  # the kernel: "standard" keeps the (B, H, T, S) weights, "flash" tiles (same numbers)

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            check_positive_int(name, getattr(self, name))
        for name in ("n_encoder_layers", "n_decoder_layers"):
            check_non_negative_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={self.d_model}, got {self.n_heads}")
        check_dropout_p(self.dropout, "dropout")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation: expected 'relu' or 'gelu', got {self.activation!r}")
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id: expected an id inside both vocabularies, got {self.pad_id}")
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        check_attention_kind(self.attention)


RNN_ATTENTIONS = ("bahdanau", "luong-dot", "luong-general", "luong-concat")


@dataclass(frozen=True)
class RNNSeq2SeqConfig:
    """The recurrent encoder–decoder with classic attention.

    Encoder: a bidirectional GRU with ``hidden_size // 2`` units per direction, so its
    outputs (the keys and values of the attention) are ``hidden_size`` wide.
    Decoder, by ``attention``:

    * ``bahdanau``: attention from the *previous* decoder state (additive score), the
      context fed into the GRU input with the embedding; logits from ``[s_t; c_t]``.
    * ``luong-dot`` / ``luong-general`` / ``luong-concat``: the GRU runs first, attention
      from the *current* state with that score, attentional state
      ``tanh(W_c [c_t; s_t])`` gives the logits (no input feeding).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    embed_dim: int = 32
    hidden_size: int = 64  # decoder state; encoder outputs (both directions together)
    attention: str = "bahdanau"
    attn_dim: int = 64  # A: the additive / concat scores' hidden width
    pad_id: int = 0
    max_len: int = 128  # longest sequence decoding produces

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "embed_dim", "hidden_size", "attn_dim", "max_len"):
            check_positive_int(name, getattr(self, name))
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size: expected an even number (two encoder directions), got {self.hidden_size}")
        if self.attention not in RNN_ATTENTIONS:
            raise ValueError(f"attention: expected one of {RNN_ATTENTIONS}, got {self.attention!r}")
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id: expected an id inside both vocabularies, got {self.pad_id}")


def check_special_ids(config: TransformerConfig, bos_id: object, eos_id: object) -> None:
    """Decoding arguments: ``bos_id`` and ``eos_id`` must be target ids other than ``pad_id``."""
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        check_int(name, value, 0, config.tgt_vocab_size - 1)
        if value == config.pad_id:
            raise ValueError(f"{name}: expected an id other than pad_id={config.pad_id}, got {value}")


@dataclass(frozen=True)
class BertConfig:
    """A BERT encoder: token + position + segment embeddings, post-LN layers with GELU, a pooler.

    The defaults are all-MiniLM-L6-v2's (``numpy_transformer.applications.pretrained.load_minilm``).
    ``dropout`` is used on the embeddings, the attention probabilities and both
    sub-layer outputs, as BERT's ``hidden_dropout_prob`` and
    ``attention_probs_dropout_prob`` (equal in every released BERT); there is none
    inside the feed-forward.
    """

    vocab_size: int = 30522
    hidden_size: int = 384  # C
    n_layers: int = 6
    n_heads: int = 12
    intermediate_size: int = 1536  # F
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_id: int = 0
    activation: str = "gelu"  # exact erf, as BERT's "gelu"
    initializer_range: float = 0.02  # std of the normal initialisation of weights and embeddings
    attention: str = "standard"  # the kernel: "standard" keeps the (B, H, T, S) weights, "flash" tiles (same numbers)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_heads", "intermediate_size", "max_position_embeddings"):
            check_positive_int(name, getattr(self, name))
        for name in ("n_layers", "type_vocab_size"):
            check_non_negative_int(name, getattr(self, name))
        check_positive_int("type_vocab_size", self.type_vocab_size)
        if self.hidden_size % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of hidden_size={self.hidden_size}, got {self.n_heads}")
        check_dropout_p(self.dropout, "dropout")
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"activation: expected 'gelu', 'gelu_tanh' or 'relu', got {self.activation!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id: expected an id in [0, {self.vocab_size}), got {self.pad_id}")
        check_positive_float("initializer_range", self.initializer_range)
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        check_attention_kind(self.attention)


@dataclass(frozen=True)
class GPTConfig:
    """A GPT-style decoder: token + learned position embeddings, pre-LN causal blocks, a final LayerNorm,
    and an LM head tied to the token embeddings.

    The defaults are the character-level model of ``python -m numpy_transformer train --task charlm``.
    """

    vocab_size: int  # V
    max_len: int = 128  # rows of the learned position table: the longest sequence the model reads
    d_model: int = 128  # C
    n_heads: int = 4  # H; head width D = d_model // n_heads
    n_layers: int = 4
    d_ff: int = 512  # F, hidden width of each feed-forward block (4 * C, as GPT-2)
    dropout: float = 0.0  # embeddings, attention weights, residual branches (none inside the feed-forward)
    activation: str = "gelu"  # "gelu" (exact erf) or "gelu_tanh" (GPT-2's approximation)
    layer_norm_eps: float = 1e-5
    pad_id: int | None = None  # None: no padding. Set: keys holding pad_id are never attended to
    attention: str = "standard"  # the kernel: "standard" keeps the (B, H, T, S) weights, "flash" tiles (same numbers)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "d_ff"):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("n_layers", self.n_layers)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={self.d_model}, got {self.n_heads}")
        check_dropout_p(self.dropout, "dropout")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"activation: expected 'gelu' or 'gelu_tanh', got {self.activation!r}")
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        if self.pad_id is not None and (
            not isinstance(self.pad_id, int) or isinstance(self.pad_id, bool) or not 0 <= self.pad_id < self.vocab_size
        ):
            raise ValueError(f"pad_id: expected None or an id in [0, {self.vocab_size}), got {self.pad_id!r}")
        check_attention_kind(self.attention)


@dataclass(frozen=True)
class LlamaConfig:
    """A Llama-style decoder: token embeddings, pre-RMSNorm blocks with rotary grouped-query attention and a
    SwiGLU feed-forward, a final RMSNorm, and an LM head (tied to the embeddings or not). No biases, no dropout.

    The names of Hugging Face's ``LlamaConfig`` fields are in ``models.llama.hf_llama_config``.
    """

    vocab_size: int  # V
    max_len: int = 128  # the longest sequence read (RoPE has no table; this bounds inputs and the KV cache)
    d_model: int = 128  # C
    n_heads: int = 4  # H query heads; head width D = d_model // n_heads, even (RoPE turns pairs)
    n_kv_heads: int = 2  # Hkv key/value heads, a divisor of n_heads: H is MHA, 1 is multi-query
    n_layers: int = 4
    d_ff: int = 344  # F: the SwiGLU width, about 2/3 of 4C so that three matrices cost what GPT's two do
    rms_norm_eps: float = 1e-6  # inside the square root, as Llama; torch.nn.RMSNorm's default is the dtype's eps
    rope_theta: float = 10000.0  # base of the rotary frequencies theta^(-2i/D): 1e4 in Llama 2, 5e5 in Llama 3
    rope_layout: str = "half"  # "half": Hugging Face's rotate-half pairs (i, i + D/2); "interleaved": Meta's (2i, 2i+1)
    tie_embeddings: bool = False  # True: the LM head is tok_embed.weight (no lm_head.weight)
    initializer_range: float = 0.02  # std of the normal initialisation of every weight matrix, as Hugging Face
    attention: str = "standard"  # "standard" or "flash": the grouped-query kernel (same numbers, see grouped_attention)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_kv_heads", "d_ff"):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("n_layers", self.n_layers)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={self.d_model}, got {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"n_heads: expected an even head width d_model // n_heads (RoPE turns coordinates in pairs), "
                f"got {self.d_model} // {self.n_heads} = {self.d_model // self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads: expected a divisor of n_heads={self.n_heads} (every group of query heads "
                f"the same size), got {self.n_kv_heads}"
            )
        check_positive_float("rms_norm_eps", self.rms_norm_eps)
        check_positive_float("rope_theta", self.rope_theta)
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope_layout: expected one of {ROPE_LAYOUTS}, got {self.rope_layout!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings: expected a bool, got {self.tie_embeddings!r}")
        check_positive_float("initializer_range", self.initializer_range)
        check_attention_kind(self.attention)


@dataclass(frozen=True)
class ViTConfig:
    """A Vision Transformer: an image cut into patches, each patch a token, a class token in front.

    The defaults are those of ``transformers.ViTConfig()`` (ViT-Base/16 at 224 x 224), so that one
    config reads the same on both sides (``numpy_transformer.applications.vit_weights`` converts).
    The image is square, ``image_size`` pixels a side, cut into ``(image_size // patch_size) ** 2``
    patches of ``patch_size`` pixels a side: the sequence has ``num_patches + 1`` positions.

    ``dropout`` is used after the embeddings, on the attention probabilities and on both residual
    branches of every layer, as Hugging Face's ``hidden_dropout_prob`` and
    ``attention_probs_dropout_prob`` together; there is none inside the feed-forward (nor in HF's).
    """

    image_size: int = 224  # H = W, pixels
    patch_size: int = 16  # P: the patch is P x P pixels, the conv kernel and its stride
    num_channels: int = 3  # input channels of the image (1 for grey digits, 3 for RGB)
    d_model: int = 768  # C, HF's hidden_size
    n_heads: int = 12  # H; head width D = d_model // n_heads
    n_layers: int = 12
    d_ff: int = 3072  # F, HF's intermediate_size
    dropout: float = 0.0  # HF's default: ViT is usually trained with strong augmentation instead
    layer_norm_eps: float = 1e-12  # HF's ViT; torch.nn.LayerNorm's default would be 1e-5
    num_labels: int = 2  # K classes of the classification head (HF's default)
    qkv_bias: bool = True  # biases on the query, key and value projections (the output projection always has one)
    activation: str = "gelu"  # HF's hidden_act "gelu": exact erf
    initializer_range: float = 0.02  # std of the normal initialisation of weights, class token and positions
    attention: str = "standard"  # the kernel: "standard" keeps the (B, H, T, S) weights, "flash" tiles (same numbers)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "num_channels", "d_model", "n_heads", "d_ff"):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("n_layers", self.n_layers)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size, patch_size: expected image_size to be a multiple of patch_size, got "
                f"image_size={self.image_size} and patch_size={self.patch_size} "
                f"({self.image_size} % {self.patch_size} = {self.image_size % self.patch_size} pixels left over)"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={self.d_model}, got {self.n_heads}")
        check_dropout_p(self.dropout, "dropout")
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        check_int("num_labels", self.num_labels, low=2)  # 1 would be Hugging Face's regression head
        if not isinstance(self.qkv_bias, bool):
            raise TypeError(f"qkv_bias: expected a bool, got {type(self.qkv_bias).__name__} {self.qkv_bias!r}")
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"activation: expected 'gelu', 'gelu_tanh' or 'relu', got {self.activation!r}")
        check_positive_float("initializer_range", self.initializer_range)
        check_attention_kind(self.attention)

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N: the number of patch tokens; the sequence is N + 1 long with the class token."""
        return self.grid_size**2


@dataclass(frozen=True)
class CNNConfig:
    """A small convolutional image classifier, the baseline the ViT is measured against on the digits.

    Each stage is ``conv kxk (padding k // 2) -> ReLU -> max-pool 2x2``, halving the image; then the
    feature map is flattened (channel, row, column) and a linear layer gives the logits.
    """

    image_size: int = 8  # H = W
    num_channels: int = 1
    channels: tuple[int, ...] = (16, 32)  # output channels of each stage
    kernel_size: int = 3
    num_labels: int = 10

    def __post_init__(self) -> None:
        for name in ("image_size", "num_channels", "kernel_size", "num_labels"):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.channels, tuple) or not self.channels:
            raise ValueError(f"channels: expected a non-empty tuple of positive ints, got {self.channels!r}")
        for i, c in enumerate(self.channels):
            check_positive_int(f"channels[{i}]", c)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size (padding k//2 keeps the size): got {self.kernel_size}")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(
                f"image_size, channels: {len(self.channels)} stages halve the image {len(self.channels)} times, so "
                f"image_size must be a multiple of {2 ** len(self.channels)}; got {self.image_size}"
            )

    @property
    def flat_features(self) -> int:
        """Features the linear head reads: last channels x (image_size / 2^stages)^2."""
        side = self.image_size // 2 ** len(self.channels)
        return self.channels[-1] * side * side


def _check_clip_tower(config: CLIPTextConfig | CLIPVisionConfig) -> None:
    """What the two CLIP encoders share: sizes, heads dividing the width, the activation, eps."""
    for name in ("d_model", "n_heads", "d_ff"):
        check_positive_int(name, getattr(config, name))
    check_non_negative_int("n_layers", config.n_layers)
    if config.d_model % config.n_heads:
        raise ValueError(f"n_heads: expected a divisor of d_model={config.d_model}, got {config.n_heads}")
    if config.activation not in ("quick_gelu", "gelu", "gelu_tanh", "relu"):
        raise ValueError(f"activation: expected 'quick_gelu', 'gelu', 'gelu_tanh' or 'relu', got {config.activation!r}")
    check_positive_float("layer_norm_eps", config.layer_norm_eps)
    check_attention_kind(config.attention)


@dataclass(frozen=True)
class CLIPTextConfig:
    """CLIP's text encoder: token + learned positions, causal pre-LN blocks, a final LayerNorm.

    Defaults are ``transformers.CLIPTextConfig()``'s (the text tower of ViT-B/32) but for ``vocab_size``,
    which has none here: the tokenizer decides it. The pooled output is the hidden state at the
    end-of-text token, found as the position of the *largest* id in each row (CLIP's vocabulary puts
    ``<|endoftext|>`` last; :func:`numpy_transformer.models.clip.eot_positions`).
    """

    vocab_size: int  # V, the end-of-text token is V - 1 in CLIP's convention
    max_len: int = 77  # rows of the position table (HF's max_position_embeddings)
    d_model: int = 512  # C (HF's hidden_size)
    n_heads: int = 8  # H; head width D = d_model // n_heads
    n_layers: int = 12
    d_ff: int = 2048  # F (HF's intermediate_size)
    activation: str = "quick_gelu"  # x sigmoid(1.702 x), what OpenAI's CLIP was trained with
    layer_norm_eps: float = 1e-5
    attention: str = "standard"  # the kernel: "standard" keeps the (B, H, T, S) weights, "flash" tiles (same numbers)

    def __post_init__(self) -> None:
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("max_len", self.max_len)
        _check_clip_tower(self)


@dataclass(frozen=True)
class CLIPVisionConfig:
    """CLIP's image encoder: a ViT with a bias-free patch conv, a LayerNorm before the blocks
    (``pre_layrnorm``, HF's spelling) and one on the class token after them (``post_layernorm``).

    Defaults are ``transformers.CLIPVisionConfig()``'s (ViT-B/32 at 224 x 224).
    """

    image_size: int = 224  # H = W, pixels
    patch_size: int = 32  # P
    num_channels: int = 3
    d_model: int = 768  # C
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072  # F
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention: str = "standard"  # the kernel: "standard" keeps the (B, H, T, S) weights, "flash" tiles (same numbers)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "num_channels"):
            check_positive_int(name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size, patch_size: expected image_size to be a multiple of patch_size, got "
                f"image_size={self.image_size} and patch_size={self.patch_size}"
            )
        _check_clip_tower(self)

    @property
    def num_patches(self) -> int:
        """N: the patch tokens; the sequence is N + 1 long with the class token."""
        return (self.image_size // self.patch_size) ** 2


# CLIP's initial temperature: logits are cosines times 1 / 0.07, learned as its log.
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP: a text and an image encoder, each projected without bias into one ``projection_dim`` space.

    Split as ``transformers.CLIPConfig`` splits it: ``text`` and ``vision`` sub-configs, and the
    fields of the joint model here. ``logit_scale_init`` is ``ln(1/0.07) = 2.6593``
    (HF's ``logit_scale_init_value`` rounds it to 2.6592).
    """

    text: CLIPTextConfig
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    projection_dim: int = 512  # E, the shared embedding space
    logit_scale_init: float = CLIP_LOGIT_SCALE_INIT
    initializer_range: float = 0.02  # std of the normal initialisation of every weight

    def __post_init__(self) -> None:
        if not isinstance(self.text, CLIPTextConfig):
            raise TypeError(f"text: expected a CLIPTextConfig, got {type(self.text).__name__}")
        if not isinstance(self.vision, CLIPVisionConfig):
            raise TypeError(f"vision: expected a CLIPVisionConfig, got {type(self.vision).__name__}")
        check_positive_int("projection_dim", self.projection_dim)
        if not isinstance(self.logit_scale_init, (int, float)) or not math.isfinite(self.logit_scale_init):
            raise ValueError(f"logit_scale_init: expected a finite number, got {self.logit_scale_init!r}")
        check_positive_float("initializer_range", self.initializer_range)


@dataclass(frozen=True)
class WhisperConfig:
    """Whisper: a log-mel spectrogram read by a convolutional stem and pre-LN encoder, a pre-LN decoder with
    cross-attention writing text tokens, the output projection tied to the token embedding.

    The defaults are OpenAI's **tiny.en** (``numpy_transformer.applications.whisper_weights.load_whisper_tiny_en``):
    4 + 4 layers, width 384, 6 heads, 51864 tokens. The encoder reads ``2 * max_source_positions`` mel frames
    (3000 = 30 s) and the stride-2 convolution halves them to 1500 positions. Whisper has no dropout (it was
    trained without; Hugging Face's dropout fields default to 0) and neither has this model.
    """

    vocab_size: int = 51864  # V (51865 for the multilingual models)
    num_mel_bins: int = 80  # M, the channels of the first convolution
    d_model: int = 384  # C
    encoder_layers: int = 4
    decoder_layers: int = 4
    encoder_attention_heads: int = 6  # H; head width D = d_model // H
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536  # F, 4 C
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500  # S, the encoder's sinusoidal table; it reads 2 S mel frames
    max_target_positions: int = 448  # rows of the decoder's learned position table: the longest token sequence
    layer_norm_eps: float = 1e-5
    activation: str = "gelu"  # exact erf, as Whisper's
    decoder_start_token_id: int = 50257  # <|startoftranscript|>
    eos_token_id: int = 50256  # <|endoftext|>

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_mel_bins", "d_model", "encoder_attention_heads", "decoder_attention_heads",
                     "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions", "max_target_positions"):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        for name in ("encoder_layers", "decoder_layers"):
            check_non_negative_int(name, getattr(self, name))
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"{name}: expected a divisor of d_model={self.d_model}, got {getattr(self, name)}")
        if self.d_model % 2:
            raise ValueError(f"d_model: expected an even width (sine and cosine halves), got {self.d_model}")
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"activation: expected 'gelu', 'gelu_tanh' or 'relu', got {self.activation!r}")
        for name in ("decoder_start_token_id", "eos_token_id"):
            check_int(name, getattr(self, name), 0, self.vocab_size - 1)

    @property
    def n_frames(self) -> int:
        """Mel frames the encoder reads: two per position (the second convolution has stride 2)."""
        return 2 * self.max_source_positions


@dataclass(frozen=True)
class DetrConfig:
    """DETR: a small ResNet backbone, a post-LN encoder-decoder over its feature map, ``num_queries`` object queries.

    The defaults are a toy sized for the generated digit canvases (48 x 48 grey images), not
    Hugging Face's ResNet-50 DETR; ``numpy_transformer.applications.detr_weights`` builds the
    matching ``transformers.DetrConfig(use_timm_backbone=False, backbone_config=ResNetConfig(
    layer_type="basic", ...))``. The backbone: a 7 x 7 stride-2 stem conv, frozen batch norm, ReLU,
    a 3 x 3 stride-2 max-pool, then one stage of basic residual blocks per entry of
    ``hidden_sizes`` (the first at stride 1, the others at stride 2): the feature map is
    ``image / (4 * 2 ** (len(hidden_sizes) - 1))`` a side. No dropout (Hugging Face's default is
    0.1: set it to 0 to compare); no pixel mask (every image of a batch has the same size).
    """

    num_channels: int = 1  # input channels (1 for grey digits)
    embedding_size: int = 16  # the stem's output channels (HF ResNet's embedding_size)
    hidden_sizes: tuple[int, ...] = (16, 32)  # channels of each backbone stage
    depths: tuple[int, ...] = (1, 1)  # basic residual blocks per stage
    d_model: int = 64  # C
    encoder_layers: int = 2
    decoder_layers: int = 2
    encoder_attention_heads: int = 4
    decoder_attention_heads: int = 4
    encoder_ffn_dim: int = 128
    decoder_ffn_dim: int = 128
    num_queries: int = 10  # Q predictions per image (HF: 100)
    num_labels: int = 10  # K object classes; the class head has K + 1 outputs, the last = "no object"
    layer_norm_eps: float = 1e-5  # torch.nn.LayerNorm's default, as HF's DETR
    batch_norm_eps: float = 1e-5  # HF's DetrFrozenBatchNorm2d
    auxiliary_loss: bool = True  # supervise every decoder layer's output (HF's default: False)
    eos_coefficient: float = 0.1  # the weight of "no object" in the cross-entropy
    class_cost: float = 1.0  # matching cost weights
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    bbox_loss_coefficient: float = 5.0  # loss weights
    giou_loss_coefficient: float = 2.0

    def __post_init__(self) -> None:
        for name in ("num_channels", "embedding_size", "d_model", "encoder_attention_heads",
                     "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_queries"):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("encoder_layers", self.encoder_layers)
        check_positive_int("decoder_layers", self.decoder_layers)  # the heads read decoder outputs
        check_int("num_labels", self.num_labels, low=1)
        for name in ("hidden_sizes", "depths"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value:
                raise TypeError(f"{name}: expected a non-empty tuple of ints, got {value!r}")
            for v in value:
                check_positive_int(name, v)
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"depths: expected one depth per stage ({len(self.hidden_sizes)} hidden_sizes), got {self.depths}"
            )
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"{name}: expected a divisor of d_model={self.d_model}, got {getattr(self, name)}")
        if self.d_model % 4:
            raise ValueError(f"d_model: expected a multiple of 4 (sine and cosine for y and x), got {self.d_model}")
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        check_positive_float("batch_norm_eps", self.batch_norm_eps)
        if not isinstance(self.auxiliary_loss, bool):
            raise TypeError(f"auxiliary_loss: expected a bool, got {type(self.auxiliary_loss).__name__}")
        for name in ("eos_coefficient", "class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient",
                     "giou_loss_coefficient"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")

    @property
    def stride(self) -> int:
        """Pixels per feature-map cell along a side: 2 (stem) x 2 (max-pool) x 2 per stage after the first."""
        return 4 * 2 ** (len(self.hidden_sizes) - 1)
