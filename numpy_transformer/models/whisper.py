r"""Whisper: speech recognition as an encoder–decoder over a log-mel spectrogram, forward and backward by hand.

Shape legend: ``B`` batch, ``M`` mel bins (80), ``2S`` mel frames (3000 for 30 s), ``S`` encoder positions
(1500), ``T`` decoder tokens, ``C`` d_model, ``H`` heads, ``F`` feed-forward width, ``V`` vocabulary.

The network, read top to bottom (our parameter names; Hugging Face's and CTranslate2's are in
:mod:`numpy_transformer.applications.whisper_weights`)::

    encoder:
      u = gelu(conv1(mel))                       (B, C, 2S)  kernel 3, padding 1; exact GELU (erf) in the stem
      v = gelu(conv2(u))                         (B, C, S)   kernel 3, padding 1, stride 2: half the frames
      z = v^T + P                                (B, S, C)   P (S, C): Whisper's sinusoids, fixed
      z = layers.l(z)                            pre-LN encoder blocks (no mask: every frame sees every frame)
      m = norm(z)                                (B, S, C)   the memory
    decoder:
      x = embed_tokens[ids] + embed_positions[:T]           (B, T, C)  learned positions (448 rows)
      x = layers.l(x, m)                         pre-LN blocks: causal self-attention, cross-attention over m, FF
      y = norm(x)                                (B, T, C)
      logits = y embed_tokens^T                  (B, T, V)   the output projection tied to the embedding

Whisper's attention has **no bias on the key projection** (a key bias adds the same number to every
score of a query row, and softmax ignores it: it could only ever be zero-gradient weight). So every
``k_proj`` here is a bias-free :class:`Linear`, at the same place among its layer's children. OpenAI
scales both the query and the key by ``D^{-1/4}`` and Hugging Face the query by ``D^{-1/2}``: the same
scores as our ``q k^T / \sqrt D`` (up to rounding).

The encoder's positions ``P`` are not trained (Hugging Face freezes them; OpenAI registers them as a
buffer): :func:`whisper_sinusoids` computes them, and they are an attribute here, not a parameter
(``encoder.embed_positions``, loaded from a checkpoint by :meth:`WhisperEncoder.set_positions`).
Whisper has no dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import WhisperConfig
from ..functional.activations import GeluCache, gelu_backward, gelu_forward
from ..functional.checks import check_float_array, check_rng, check_token_ids
from ..functional.conv import Conv1dCache
from ..functional.embedding import EmbeddingCache, embedding_backward, embedding_forward
from ..functional.layer_norm import LayerNormCache
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..functional.masks import causal_mask
from ..functional.softmax import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward
from ..modules.attention import MultiHeadAttention
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.conv import Conv1d
from ..modules.layers import LayerNorm, Linear
from ..modules.transformer_layers import DecoderLayer, DecoderLayerCache, EncoderLayer, EncoderLayerCache

__all__ = [
    "WhisperCache",
    "WhisperDecoder",
    "WhisperDecoderCache",
    "WhisperEncoder",
    "WhisperEncoderCache",
    "WhisperForConditionalGeneration",
    "WhisperOutput",
    "drop_key_bias",
    "whisper_sinusoids",
]


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    r"""Whisper's encoder positions (length, channels): ``[sin(t w_i) | cos(t w_i)]``, the sines first.

    .. math:: w_i = \exp(-i \ln(\text{max\_timescale}) / (C/2 - 1)), \quad i = 0 .. C/2 - 1

    Unlike "Attention Is All You Need" the sines and cosines are two halves, not interleaved pairs,
    and the frequencies run from 1 to exactly ``1 / max_timescale`` (divided by ``C/2 - 1``, not ``C``).
    """
    if channels % 2 or channels < 4:
        raise ValueError(f"channels: expected an even number >= 4 (sine and cosine halves), got {channels}")
    inv = np.exp(-np.log(max_timescale) / (channels // 2 - 1) * np.arange(channels // 2))  # (C/2,)
    scaled = np.arange(length)[:, None] * inv[None, :]  # (S, C/2)
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)  # (S, C)


def drop_key_bias(attn: MultiHeadAttention, rng: np.random.Generator) -> None:
    """Give ``attn.k_proj`` no bias (Whisper's), keeping its weight, at the same place among the children."""
    old = attn.k_proj
    new = Linear(old.in_features, old.out_features, bias=False, dtype=old.dtype, rng=rng)
    new.weight[...] = old.weight
    attn.k_proj = new


def check_input_features(input_features: object, config: WhisperConfig, dtype: np.dtype) -> np.ndarray:
    """``input_features`` must be a float array (B, num_mel_bins, 2 max_source_positions) of the model's dtype."""
    c = config
    if not isinstance(input_features, np.ndarray):
        raise TypeError(f"input_features: expected a numpy.ndarray (B, M, frames), got {type(input_features).__name__}")
    if input_features.dtype != dtype:
        raise TypeError(f"input_features: expected dtype {dtype} (the model's dtype), got {input_features.dtype}")
    expected = (c.num_mel_bins, c.n_frames)
    if input_features.ndim != 3 or input_features.shape[0] < 1 or input_features.shape[1:] != expected:
        raise ValueError(
            f"input_features: expected shape (B, {c.num_mel_bins}, {c.n_frames}) (num_mel_bins, 2 x "
            f"max_source_positions: Whisper pads every clip to the same length), got {input_features.shape}"
        )
    return input_features


def check_labels(labels: object, shape: tuple[int, int], vocab_size: int) -> np.ndarray:
    """``labels`` (B, T) integer ids in ``[0, V)``, or ``-100`` where a position is not scored (HF's convention)."""
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"labels: expected an integer numpy.ndarray (B, T), got {getattr(labels, 'dtype', type(labels))}"
        )
    if labels.shape != shape:
        raise ValueError(f"labels: expected shape {shape} (one per decoder input), got {labels.shape}")
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bad.any():
        raise ValueError(f"labels: expected ids in [0, {vocab_size}) or -100, got {labels[bad][0]}")
    return labels


# ---------------------------------------------------------------------------- the encoder


@dataclass(frozen=True)
class WhisperEncoderCache:
    conv1: Conv1dCache  # the mel (B, M, 2S) unfolded
    gelu1: GeluCache  # (B, C, 2S)
    conv2: Conv1dCache  # (B, C, 2S) unfolded, stride 2
    gelu2: GeluCache  # (B, C, S)
    layers: tuple[EncoderLayerCache, ...]  # one per layer, each over (B, S, C)
    norm: LayerNormCache  # (B, S, C)


class WhisperEncoder(Module):
    """The audio encoder: conv stem, fixed sinusoidal positions, pre-LN blocks, a final LayerNorm.

    Parameters: ``conv1.weight`` (C, M, 3), ``conv1.bias``, ``conv2.weight`` (C, C, 3), ``conv2.bias``,
    ``layers.i.self_attn.{q,k,v,out}_proj.*`` (``k_proj`` without bias), ``layers.i.norm1.*``,
    ``layers.i.ff.linear{1,2}.*``, ``layers.i.norm2.*``, ``norm.*``. Not a parameter: ``embed_positions`` (S, C).
    """

    def __init__(
        self, config: WhisperConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        self.conv1 = Conv1d(c.num_mel_bins, c.d_model, 3, padding=1, dtype=dtype, rng=rng)
        self.conv2 = Conv1d(c.d_model, c.d_model, 3, stride=2, padding=1, dtype=dtype, rng=rng)
        block = dict(dropout=0.0, activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps)
        self.layers = ModuleList(
            [
                EncoderLayer(c.d_model, c.encoder_attention_heads, c.encoder_ffn_dim, **block, dtype=dtype, rng=rng)
                for _ in range(c.encoder_layers)
            ]
        )
        for layer in self.layers:
            drop_key_bias(layer.self_attn, rng)
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.embed_positions = whisper_sinusoids(c.max_source_positions, c.d_model).astype(self.dtype)  # (S, C)

    def set_positions(self, positions: np.ndarray) -> None:
        """Replace the fixed position table (S, C), e.g. by a checkpoint's copy of it."""
        check_float_array("positions", positions)
        if positions.shape != self.embed_positions.shape:
            raise ValueError(f"positions: expected shape {self.embed_positions.shape}, got {positions.shape}")
        self.embed_positions = np.asarray(positions, dtype=self.dtype).copy()

    def forward(self, input_features: np.ndarray) -> tuple[np.ndarray, WhisperEncoderCache]:
        """``input_features`` (B, M, 2S) -> the memory (B, S, C)."""
        x = check_input_features(input_features, self.config, self.dtype)
        u, c_conv1 = self.conv1.forward(x)  # (B, C, 2S)
        u, c_gelu1 = gelu_forward(u)  # exact GELU in the stem, whatever config.activation (OpenAI's and HF's)
        v, c_conv2 = self.conv2.forward(u)  # (B, C, S): stride 2
        v, c_gelu2 = gelu_forward(v)
        z = v.transpose(0, 2, 1) + self.embed_positions  # (B, S, C)
        layer_caches = []
        for layer in self.layers:
            z, c_layer = layer.forward(z)  # (B, S, C); no mask
            layer_caches.append(c_layer)
        m, c_norm = self.norm.forward(z)
        cache = WhisperEncoderCache(
            conv1=c_conv1, gelu1=c_gelu1, conv2=c_conv2, gelu2=c_gelu2, layers=tuple(layer_caches), norm=c_norm
        )
        return m, cache

    def backward(self, dmemory: np.ndarray, cache: WhisperEncoderCache) -> np.ndarray:
        r"""Accumulate the encoder's gradients from ``dmemory`` (B, S, C); return d input_features (B, M, 2S).

        .. math::
            z_0 = \mathrm{gelu}(W_2 * \mathrm{gelu}(W_1 * x))^T + P \Rightarrow
            dv = dz_0^T \odot \mathrm{gelu}'(\cdot),\ du = \mathrm{conv2}^T(dv) \odot \mathrm{gelu}'(\cdot),\
            dx = \mathrm{conv1}^T(du)

        ``P`` is fixed: the gradient of ``z_0`` only flows into the convolutions. The stride-2 conv's
        transpose scatters each output's gradient onto three frames ``2s - 1, 2s, 2s + 1``: even frames are
        read by one output (the kernel's centre), odd frames by two (its edges), so the gradient of the
        first convolution's output alternates between one and two contributions per frame.
        """
        dz = self.norm.backward(dmemory, cache.norm)  # (B, S, C)
        for layer, c_layer in zip(reversed(list(self.layers)), reversed(cache.layers), strict=True):
            dz = layer.backward(dz, c_layer)
        dv = gelu_backward(np.ascontiguousarray(dz.transpose(0, 2, 1)), cache.gelu2)  # (B, C, S)
        du = gelu_backward(self.conv2.backward(dv, cache.conv2), cache.gelu1)  # (B, C, 2S)
        return self.conv1.backward(du, cache.conv1)  # (B, M, 2S)


# ---------------------------------------------------------------------------- the decoder


@dataclass(frozen=True)
class WhisperDecoderCache:
    embed: EmbeddingCache  # the ids (B, T)
    layers: tuple[DecoderLayerCache, ...]  # one per layer, (B, T, C) and cross-attention (B, H, T, S)
    norm: LayerNormCache  # (B, T, C)
    head: LinearCache  # y (B, T, C) into the tied projection
    length: int  # T

    @property
    def cross_attentions(self) -> tuple[np.ndarray, ...]:
        """One (B, H, T, S) array of cross-attention probabilities per layer: which frames each token read."""
        return tuple(c.ca.weights for c in self.layers)


class WhisperDecoder(Module):
    """The text decoder: tokens + learned positions, pre-LN blocks with cross-attention, LayerNorm, tied logits.

    Parameters: ``embed_tokens`` (V, C) (also the output projection), ``embed_positions`` (448, C),
    ``layers.i.self_attn.*`` / ``layers.i.cross_attn.*`` (``k_proj`` without bias), ``layers.i.norm{1,2,3}.*``,
    ``layers.i.ff.*``, ``norm.*``.
    """

    def __init__(
        self, config: WhisperConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        self._init_parameters(
            embed_tokens=rng.normal(0.0, 0.02, (c.vocab_size, c.d_model)).astype(self.dtype),
            embed_positions=rng.normal(0.0, 0.02, (c.max_target_positions, c.d_model)).astype(self.dtype),
        )
        block = dict(dropout=0.0, activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps)
        self.layers = ModuleList(
            [
                DecoderLayer(c.d_model, c.decoder_attention_heads, c.decoder_ffn_dim, **block, dtype=dtype, rng=rng)
                for _ in range(c.decoder_layers)
            ]
        )
        for layer in self.layers:
            drop_key_bias(layer.self_attn, rng)
            drop_key_bias(layer.cross_attn, rng)
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    def check_ids(self, decoder_input_ids: object) -> np.ndarray:
        """(B, T) token ids in ``[0, V)``, ``1 <= T <= max_target_positions``."""
        return check_token_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size,
                               self.config.max_target_positions)  # fmt: skip

    def forward(self, decoder_input_ids: np.ndarray, memory: np.ndarray) -> tuple[np.ndarray, WhisperDecoderCache]:
        """``decoder_input_ids`` (B, T), ``memory`` (B, S, C) -> logits (B, T, V)."""
        ids = self.check_ids(decoder_input_ids)
        B, T = ids.shape
        check_float_array("memory", memory)
        if memory.ndim != 3 or memory.shape[0] != B or memory.shape[2] != self.config.d_model:
            raise ValueError(f"memory: expected shape ({B}, S, {self.config.d_model}), got {memory.shape}")
        x, c_embed = embedding_forward(ids, self.embed_tokens)  # (B, T, C)
        x = x + self.embed_positions[:T]
        mask = causal_mask(T)[None, None]  # (1, 1, T, T)
        layer_caches = []
        for layer in self.layers:
            x, c_layer = layer.forward(x, memory, tgt_mask=mask)  # (B, T, C)
            layer_caches.append(c_layer)
        y, c_norm = self.norm.forward(x)
        logits, c_head = linear_forward(y, self.embed_tokens)  # (B, T, V): tied
        cache = WhisperDecoderCache(embed=c_embed, layers=tuple(layer_caches), norm=c_norm, head=c_head, length=T)
        return logits, cache

    def backward(self, dlogits: np.ndarray, cache: WhisperDecoderCache) -> np.ndarray:
        r"""Accumulate the decoder's gradients from ``dlogits`` (B, T, V); return d memory (B, S, C).

        The tied table collects two gradients, as in every tied model:

        .. math:: dE = dlogits^T y \ (\text{the head}) + \textstyle\sum_{(b,t): ids_{bt} = v} dx_{bt}
           \ (\text{the lookup}), \qquad dP_{t} = \textstyle\sum_b dx_{bt}\ (t < T).

        The memory's gradient sums over the layers: each cross-attention reads all of it.
        """
        dy, dweight, _ = linear_backward(dlogits, cache.head)  # (B, T, C), (V, C)
        self.accumulate_grad("embed_tokens", dweight)
        dx = self.norm.backward(dy, cache.norm)
        dmemory = None
        for layer, c_layer in zip(reversed(list(self.layers)), reversed(cache.layers), strict=True):
            dx, dm = layer.backward(dx, c_layer)
            dmemory = dm if dmemory is None else dmemory + dm
        dpos = np.zeros_like(self.embed_positions)
        dpos[: cache.length] = dx.sum(axis=0)  # (T, C): broadcast over B
        self.accumulate_grad("embed_positions", dpos)
        self.accumulate_grad("embed_tokens", embedding_backward(dx, cache.embed))
        return dmemory


# ---------------------------------------------------------------------------- the whole model


@dataclass(frozen=True)
class WhisperOutput:
    logits: np.ndarray  # (B, T, V)
    loss: np.ndarray | None  # 0-d mean cross-entropy over labels != -100, when labels were given
    encoder_last_hidden_state: np.ndarray  # (B, S, C)
    cross_attentions: tuple[np.ndarray, ...]  # per decoder layer (B, H, T, S)


@dataclass(frozen=True)
class WhisperCache:
    encoder: WhisperEncoderCache
    decoder: WhisperDecoderCache
    loss: CrossEntropyCache | None
    memory_shape: tuple[int, int, int]  # (B, S, C)


class WhisperForConditionalGeneration(Module):
    """Whisper (Hugging Face's ``WhisperForConditionalGeneration``): ``encoder.*`` and ``decoder.*``.

    ``forward(input_features, decoder_input_ids, labels=None)``: logits (B, T, V) of the token after each
    input token and, with ``labels`` (B, T) (``-100`` = not scored), their mean cross-entropy, as
    Hugging Face computes it. ``backward`` returns the gradient of ``input_features``.
    """

    def __init__(
        self, config: WhisperConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, WhisperConfig):
            raise TypeError(f"config: expected a WhisperConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = config
        self.dtype = check_module_dtype(dtype)
        self.encoder = WhisperEncoder(config, dtype, rng)
        self.decoder = WhisperDecoder(config, dtype, rng)

    def forward(
        self, input_features: np.ndarray, decoder_input_ids: np.ndarray, labels: np.ndarray | None = None
    ) -> tuple[WhisperOutput, WhisperCache]:
        memory, c_enc = self.encoder.forward(input_features)  # (B, S, C)
        logits, c_dec = self.decoder.forward(decoder_input_ids, memory)  # (B, T, V)
        loss, c_loss = None, None
        if labels is not None:
            B, T, V = logits.shape
            labels = check_labels(labels, (B, T), V)
            loss, c_loss = cross_entropy_forward(logits.reshape(B * T, V), labels.reshape(B * T), ignore_index=-100)
        cache = WhisperCache(encoder=c_enc, decoder=c_dec, loss=c_loss, memory_shape=memory.shape)
        out = WhisperOutput(logits, loss, memory, c_dec.cross_attentions)
        return out, cache

    def backward(self, dlogits: np.ndarray | None, cache: WhisperCache, dloss: float = 1.0) -> np.ndarray:
        r"""Accumulate every parameter gradient; return d input_features (B, M, 2S).

        ``dlogits`` (B, T, V) is the upstream gradient of the logits; ``None`` means "of the loss"
        (the forward must have had ``labels``): :math:`d\text{logits} = d\text{loss}\,(p - \text{onehot}(y)) / n`
        on the ``n`` scored positions, zero on the others.
        """
        B, T, V = cache.memory_shape[0], cache.decoder.length, self.config.vocab_size
        if dlogits is None:
            if cache.loss is None:
                raise ValueError("dlogits: expected an array (the forward had no labels, so there is no loss)")
            dlogits = cross_entropy_backward(np.asarray(dloss, dtype=self.dtype), cache.loss).reshape(B, T, V)
        check_float_array("dlogits", dlogits)
        if dlogits.dtype != self.dtype or dlogits.shape != (B, T, V):
            raise ValueError(
                f"dlogits: expected {self.dtype} of shape {(B, T, V)} (those of the logits), "
                f"got {dlogits.dtype} {dlogits.shape}"
            )
        dmemory = self.decoder.backward(dlogits, cache.decoder)
        if dmemory is None:  # no decoder layer: the logits never read the memory
            dmemory = np.zeros(cache.memory_shape, self.dtype)
        return self.encoder.backward(dmemory, cache.encoder)
