"""The encoder–decoder Transformer, forward and backward by hand.

Shape legend: ``B`` batch, ``S`` source length, ``T`` target length, ``C`` d_model,
``H`` heads, ``F`` feed-forward width, ``V`` vocabulary size.

Layer layouts (``norm_first=False`` is post-LN, as in the paper; ``True`` is pre-LN)::

    post-LN encoder layer            pre-LN encoder layer
    h = norm1(x + drop1(SA(x)))      h = x + drop1(SA(norm1(x)))
    y = norm2(h + drop2(FF(h)))      y = h + drop2(FF(norm2(h)))

    post-LN decoder layer            pre-LN decoder layer
    h1 = norm1(x + drop1(SA(x)))     h1 = x + drop1(SA(norm1(x)))
    h2 = norm2(h1 + drop2(CA(h1,m))) h2 = h1 + drop2(CA(norm2(h1), m))
    y = norm3(h2 + drop3(FF(h2)))    y = h2 + drop3(FF(norm3(h2)))

A pre-LN stack ends with one more LayerNorm (``encoder.norm`` / ``decoder.norm``);
a post-LN stack does not (its last layer already ends in a LayerNorm).

Every dropout mask comes from a :class:`DropoutMasks`, named by its place in
the model (``decoder.layers.1.cross_attn``), so the twin can replay it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import TransformerConfig
from ..functional.checks import check_rng, check_token_ids
from ..functional.dropout import DropoutCache, dropout_backward
from ..functional.embedding import EmbeddingCache, sinusoidal_positional_encoding
from ..functional.layer_norm import LayerNormCache
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..functional.masks import causal_mask, padding_mask
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.dropout_masks import DropoutMasks
from ..modules.layers import Embedding, LayerNorm, Linear
from ..modules.transformer_layers import DecoderLayer, DecoderLayerCache, EncoderLayer, EncoderLayerCache


@dataclass(frozen=True)
class EncoderCache:
    layers: tuple[EncoderLayerCache, ...]  # one per layer, first to last, each over (B, S, C)
    norm: LayerNormCache | None  # (B, S, C) the final LayerNorm (pre-LN); None for post-LN


@dataclass(frozen=True)
class DecoderCache:
    layers: tuple[DecoderLayerCache, ...]  # one per layer, first to last, each over (B, T, C)
    norm: LayerNormCache | None  # (B, T, C) the final LayerNorm (pre-LN); None for post-LN

    def cross_attention_weights(self, layer: int = -1) -> np.ndarray:
        """(B, H, T, S) cross-attention probabilities of one decoder layer."""
        return self.layers[layer].ca.weights


class Encoder(Module):
    """A stack of encoder layers (``layers.0`` ...), plus a final ``norm`` when pre-LN."""

    def __init__(self, config: TransformerConfig, dtype: np.dtype | type = np.float64, rng=None) -> None:
        super().__init__()
        rng = check_rng(rng)
        c = config
        self.layers = ModuleList(
            [
                EncoderLayer(
                    c.d_model,
                    c.n_heads,
                    c.d_ff,
                    c.dropout,
                    c.activation,
                    c.norm_first,
                    c.layer_norm_eps,
                    dtype,
                    rng,
                    attention=c.attention,
                )
                for _ in range(c.n_encoder_layers)
            ]
        )
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype) if c.norm_first else None

    def forward(
        self, x: np.ndarray, mask: np.ndarray | None = None, masks: DropoutMasks | None = None
    ) -> tuple[np.ndarray, EncoderCache]:
        """``x`` (B, S, C) -> (B, S, C); ``mask`` True = may attend, broadcastable to (B, H, S, S)."""
        masks = masks or DropoutMasks()
        caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer.forward(x, mask, masks.child(f"layers.{i}"))
            caches.append(cache)
        norm_cache = None
        if self.norm is not None:
            x, norm_cache = self.norm.forward(x)
        return x, EncoderCache(layers=tuple(caches), norm=norm_cache)

    def backward(self, dy: np.ndarray, cache: EncoderCache) -> np.ndarray:
        """Return dx (B, S, C)."""
        if self.norm is not None:
            dy = self.norm.backward(dy, cache.norm)
        for layer, c in zip(reversed(list(self.layers)), reversed(cache.layers), strict=True):
            dy = layer.backward(dy, c)
        return dy


class Decoder(Module):
    """A stack of decoder layers (``layers.0`` ...), plus a final ``norm`` when pre-LN."""

    def __init__(self, config: TransformerConfig, dtype: np.dtype | type = np.float64, rng=None) -> None:
        super().__init__()
        rng = check_rng(rng)
        c = config
        self.layers = ModuleList(
            [
                DecoderLayer(
                    c.d_model,
                    c.n_heads,
                    c.d_ff,
                    c.dropout,
                    c.activation,
                    c.norm_first,
                    c.layer_norm_eps,
                    dtype,
                    rng,
                    attention=c.attention,
                )
                for _ in range(c.n_decoder_layers)
            ]
        )
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype) if c.norm_first else None

    def forward(
        self,
        x: np.ndarray,
        memory: np.ndarray,
        tgt_mask: np.ndarray | None = None,
        memory_mask: np.ndarray | None = None,
        masks: DropoutMasks | None = None,
    ) -> tuple[np.ndarray, DecoderCache]:
        """``x`` (B, T, C) over ``memory`` (B, S, C) -> (B, T, C); the masks as :meth:`DecoderLayer.forward`'s."""
        masks = masks or DropoutMasks()
        caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer.forward(x, memory, tgt_mask, memory_mask, masks.child(f"layers.{i}"))
            caches.append(cache)
        norm_cache = None
        if self.norm is not None:
            x, norm_cache = self.norm.forward(x)
        return x, DecoderCache(layers=tuple(caches), norm=norm_cache)

    def backward(self, dy: np.ndarray, cache: DecoderCache) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ``(dx, dmemory)``: every layer reads the same memory, so their gradients add up."""
        if self.norm is not None:
            dy = self.norm.backward(dy, cache.norm)
        dmemory = None
        for layer, c in zip(reversed(list(self.layers)), reversed(cache.layers), strict=True):
            dy, dm = layer.backward(dy, c)
            dmemory = dm if dmemory is None else dmemory + dm
        return dy, dmemory


@dataclass(frozen=True)
class EncodeCache:
    """What :meth:`Transformer.encode` keeps for the backward."""

    embed: EmbeddingCache  # src ids (B, S)
    drop: DropoutCache  # (B, S, C) keep-mask after the embeddings + positions
    encoder: EncoderCache


@dataclass(frozen=True)
class DecodeCache:
    """What :meth:`Transformer.decode` keeps for the backward."""

    embed: EmbeddingCache  # tgt ids (B, T)
    drop: DropoutCache  # (B, T, C) keep-mask after the embeddings + positions
    decoder: DecoderCache
    head: LinearCache  # logits = h @ W^T; holds h (B, T, C) and W (V, C)

    def cross_attention_weights(self, layer: int = -1) -> np.ndarray:
        """(B, H, T, S) cross-attention probabilities of one decoder layer."""
        return self.decoder.cross_attention_weights(layer)


@dataclass(frozen=True)
class TransformerCache:
    encode: EncodeCache  # the source side
    decode: DecodeCache  # the target side and the output projection
    memory: np.ndarray  # (B, S, C) encoder output, kept for inspection and decoding
    dropout_masks: dict[str, np.ndarray]  # every mask used, by site name: replay them in the twin

    def cross_attention_weights(self, layer: int = -1) -> np.ndarray:
        """(B, H, T, S) cross-attention probabilities of one decoder layer."""
        return self.decode.cross_attention_weights(layer)


class Transformer(Module):
    r"""Token embeddings (scaled by :math:`\sqrt{C}`) + sinusoidal positions + dropout,
    encoder, decoder, and an output projection to target-vocabulary logits.

    Parameters are named like the twin's state dict: ``src_embed.weight``,
    ``encoder.layers.0.self_attn.q_proj.weight``, ``decoder.layers.1.cross_attn...``,
    ``decoder.norm.weight`` (pre-LN), ``out_proj.weight`` (absent when
    ``tie_embeddings``: the logits then use ``tgt_embed.weight``).
    """

    def __init__(
        self, config: TransformerConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config: expected a TransformerConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = config
        self.dtype = check_module_dtype(dtype)
        C = config.d_model
        self.src_embed = Embedding(config.src_vocab_size, C, dtype=dtype, rng=rng)
        self.tgt_embed = Embedding(config.tgt_vocab_size, C, dtype=dtype, rng=rng)
        self.encoder = Encoder(config, dtype, rng)
        self.decoder = Decoder(config, dtype, rng)
        self.out_proj = (
            None if config.tie_embeddings else Linear(C, config.tgt_vocab_size, bias=False, dtype=dtype, rng=rng)
        )
        # A constant, not a parameter: it is not in the state dict. Names as the twin's (``pe``, ``embed_scale``).
        self.pe = sinusoidal_positional_encoding(config.max_len, C, dtype=self.dtype)  # (max_len, C)
        self.embed_scale = self.dtype.type(math.sqrt(C))

    # -------------------------------------------------------------- masks

    def source_mask(self, src: np.ndarray) -> np.ndarray:
        """(B, 1, 1, S): padded source positions are never attended to."""
        return padding_mask(src, self.config.pad_id)

    def target_mask(self, tgt: np.ndarray) -> np.ndarray:
        """(B, 1, T, T): causal, and padded target positions are never attended to."""
        return padding_mask(tgt, self.config.pad_id) & causal_mask(tgt.shape[1])

    # -------------------------------------------------------------- pieces

    def _check_ids(self, name: str, ids: np.ndarray, vocab: int) -> None:
        check_token_ids(name, ids, vocab, self.config.max_len)

    def _embed(
        self, embed: Embedding, ids: np.ndarray, masks: DropoutMasks, site: str
    ) -> tuple[np.ndarray, EmbeddingCache, DropoutCache]:
        """``dropout(embed(ids) * sqrt(C) + PE)``: ``ids`` (B, L) -> (B, L, C) and the two caches."""
        e, c_e = embed.forward(ids)  # (B, L, C)
        x = e * self.embed_scale + self.pe[: ids.shape[1]]
        x, c_d = masks.drop(x, self.config.dropout, site, self.training)
        return x, c_e, c_d

    def encode(self, src: np.ndarray, masks: DropoutMasks | None = None) -> tuple[np.ndarray, EncodeCache]:
        """``src`` (B, S) ids -> memory (B, S, C) and the cache needed for the backward."""
        masks = masks or DropoutMasks()
        self._check_ids("src", src, self.config.src_vocab_size)
        x, c_e, c_d = self._embed(self.src_embed, src, masks, "src_dropout")
        memory, c_enc = self.encoder.forward(x, self.source_mask(src), masks.child("encoder"))
        return memory, EncodeCache(embed=c_e, drop=c_d, encoder=c_enc)

    def decode(
        self, tgt: np.ndarray, memory: np.ndarray, src: np.ndarray, masks: DropoutMasks | None = None
    ) -> tuple[np.ndarray, DecodeCache]:
        """``tgt`` (B, T) ids over ``memory`` (B, S, C) -> logits (B, T, V) and the cache."""
        masks = masks or DropoutMasks()
        self._check_ids("tgt", tgt, self.config.tgt_vocab_size)
        x, c_e, c_d = self._embed(self.tgt_embed, tgt, masks, "tgt_dropout")
        h, c_dec = self.decoder.forward(
            x, memory, self.target_mask(tgt), self.source_mask(src), masks.child("decoder")
        )  # (B, T, C)
        weight = self.tgt_embed.weight if self.out_proj is None else self.out_proj.weight  # (V, C)
        logits, c_head = linear_forward(h, weight)  # (B, T, V)
        return logits, DecodeCache(embed=c_e, drop=c_d, decoder=c_dec, head=c_head)

    # -------------------------------------------------------------- forward / backward

    def forward(
        self,
        src: np.ndarray,
        tgt: np.ndarray,
        rng: np.random.Generator | None = None,
        dropout_masks: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, TransformerCache]:
        """``src`` (B, S), ``tgt`` (B, T) integer ids -> logits (B, T, V_tgt).

        In training mode with ``dropout > 0``, masks are drawn from ``rng`` unless
        given by name in ``dropout_masks``; ``cache.dropout_masks`` holds every mask used.
        """
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"tgt: expected batch size {src.shape[0]} (that of src), got {tgt.shape[0]}")
        masks = DropoutMasks(rng, dropout_masks)
        memory, c_enc = self.encode(src, masks)
        logits, c_dec = self.decode(tgt, memory, src, masks)
        return logits, TransformerCache(encode=c_enc, decode=c_dec, memory=memory, dropout_masks=masks.used)

    def backward(self, dlogits: np.ndarray, cache: TransformerCache) -> None:
        """Accumulate every parameter gradient from ``dlogits`` (B, T, V)."""
        dec, enc = cache.decode, cache.encode
        # logits = h @ W^T, W = out_proj.weight or (tied) tgt_embed.weight
        dh, dweight, _ = linear_backward(dlogits, dec.head)  # (B, T, C), (V, C)
        if self.out_proj is None:
            self.tgt_embed.accumulate_grad("weight", dweight)  # the tied matrix collects both of its uses
        else:
            self.out_proj.accumulate_grad("weight", dweight)
        dx_tgt, dmemory = self.decoder.backward(dh, dec.decoder)  # (B, T, C), (B, S, C)
        # x = dropout(embed(tgt) * sqrt(C) + PE): the positions are constants
        de = dropout_backward(dx_tgt, dec.drop) * self.embed_scale
        self.tgt_embed.backward(de, dec.embed)
        dx_src = self.encoder.backward(dmemory, enc.encoder)
        de = dropout_backward(dx_src, enc.drop) * self.embed_scale
        self.src_embed.backward(de, enc.embed)
