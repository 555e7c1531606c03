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
from typing import Any

import numpy as np

from ..config import TransformerConfig
from ..functional.checks import check_rng, check_token_ids
from ..functional.dropout import DropoutCache, dropout_backward, dropout_forward
from ..functional.embedding import sinusoidal_positional_encoding
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..functional.masks import causal_mask, padding_mask
from ..modules.attention import MultiHeadAttention
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.dropout_masks import DropoutMasks
from ..modules.layers import Embedding, FeedForward, LayerNorm, Linear


def _drop(x: np.ndarray, p: float, masks: DropoutMasks, site: str, training: bool) -> tuple[np.ndarray, DropoutCache]:
    """Residual / embedding dropout at a named site."""
    keep = masks.mask(site, x.shape, p, training)
    return dropout_forward(x, p, mask=keep, training=keep is not None)


def _attend(mha: MultiHeadAttention, site: str, q: np.ndarray, kv: np.ndarray, mask, masks: DropoutMasks):
    """``mha(q, kv, kv)`` with the attention-weight dropout mask of ``site``, shape (B, H, T, S)."""
    keep = masks.mask(site, (q.shape[0], mha.n_heads, q.shape[1], kv.shape[1]), mha.dropout, mha.training)
    return mha.forward(q, kv, kv, mask=mask, dropout_mask=keep)


def _ff_at_site(ff: FeedForward, x: np.ndarray, masks: DropoutMasks):
    """``ff(x)`` with the hidden-layer dropout mask of site ``ff``, shape (..., F)."""
    keep = masks.mask("ff", x.shape[:-1] + (ff.linear1.out_features,), ff.dropout.p, ff.training)
    return ff.forward(x, dropout_mask=keep)


@dataclass(frozen=True)
class EncoderLayerCache:
    sa: Any  # MultiHeadAttentionCache
    drop1: DropoutCache
    norm1: Any  # LayerNormCache
    ff: Any  # FeedForwardCache
    drop2: DropoutCache
    norm2: Any


class EncoderLayer(Module):
    """Self-attention and feed-forward, each wrapped in a residual connection and a LayerNorm."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        ff_dropout: float | None = None,
    ) -> None:
        """``ff_dropout``: dropout inside the feed-forward (after the activation); ``None`` = ``dropout``.

        BERT and GPT-2 have none there (``ff_dropout=0.0``).
        """
        super().__init__()
        rng = check_rng(rng)
        self.dtype = check_module_dtype(dtype)
        self.norm_first = norm_first
        self.p = dropout
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, dtype=dtype, rng=rng)
        ff_p = dropout if ff_dropout is None else ff_dropout
        self.ff = FeedForward(d_model, d_ff, activation, ff_p, dtype=dtype, rng=rng)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)

    def forward(
        self, x: np.ndarray, mask: np.ndarray | None = None, masks: DropoutMasks | None = None
    ) -> tuple[np.ndarray, EncoderLayerCache]:
        """``x`` (B, S, C) -> (B, S, C); ``mask`` True = may attend, broadcastable to (B, H, S, S)."""
        masks = masks or DropoutMasks()
        if self.norm_first:
            n1, c_n1 = self.norm1.forward(x)
            a, c_sa = _attend(self.self_attn, "self_attn", n1, n1, mask, masks)
            a, c_d1 = _drop(a, self.p, masks, "dropout1", self.training)
            h = x + a  # (B, S, C)
            n2, c_n2 = self.norm2.forward(h)
            f, c_ff = _ff_at_site(self.ff, n2, masks)
            f, c_d2 = _drop(f, self.p, masks, "dropout2", self.training)
            y = h + f
        else:
            a, c_sa = _attend(self.self_attn, "self_attn", x, x, mask, masks)
            a, c_d1 = _drop(a, self.p, masks, "dropout1", self.training)
            h, c_n1 = self.norm1.forward(x + a)  # (B, S, C)
            f, c_ff = _ff_at_site(self.ff, h, masks)
            f, c_d2 = _drop(f, self.p, masks, "dropout2", self.training)
            y, c_n2 = self.norm2.forward(h + f)
        return y, EncoderLayerCache(c_sa, c_d1, c_n1, c_ff, c_d2, c_n2)

    def backward(self, dy: np.ndarray, cache: EncoderLayerCache) -> np.ndarray:
        """Return dx; the layout is the forward read bottom-up."""
        c = cache
        if self.norm_first:
            # y = h + drop2(ff(norm2(h)))
            dh = dy + self.norm2.backward(self.ff.backward(dropout_backward(dy, c.drop2), c.ff), c.norm2)
            # h = x + drop1(sa(n1, n1, n1)), n1 = norm1(x): n1 feeds query, key and value
            dq, dk, dv = self.self_attn.backward(dropout_backward(dh, c.drop1), c.sa)
            return dh + self.norm1.backward(dq + dk + dv, c.norm1)
        # y = norm2(h + drop2(ff(h)))
        dsum2 = self.norm2.backward(dy, c.norm2)
        dh = dsum2 + self.ff.backward(dropout_backward(dsum2, c.drop2), c.ff)
        # h = norm1(x + drop1(sa(x, x, x)))
        dsum1 = self.norm1.backward(dh, c.norm1)
        dq, dk, dv = self.self_attn.backward(dropout_backward(dsum1, c.drop1), c.sa)
        return dsum1 + dq + dk + dv


@dataclass(frozen=True)
class DecoderLayerCache:
    sa: Any
    drop1: DropoutCache
    norm1: Any
    ca: Any
    drop2: DropoutCache
    norm2: Any
    ff: Any
    drop3: DropoutCache
    norm3: Any


class DecoderLayer(Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward; each residual + LayerNorm."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = check_rng(rng)
        self.dtype = check_module_dtype(dtype)
        self.norm_first = norm_first
        self.p = dropout
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, dtype=dtype, rng=rng)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, dtype=dtype, rng=rng)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, dtype=dtype, rng=rng)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm3 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)

    def forward(
        self,
        x: np.ndarray,
        memory: np.ndarray,
        tgt_mask: np.ndarray | None = None,
        memory_mask: np.ndarray | None = None,
        masks: DropoutMasks | None = None,
    ) -> tuple[np.ndarray, DecoderLayerCache]:
        """``x`` (B, T, C), ``memory`` (B, S, C) -> (B, T, C).

        ``tgt_mask`` broadcastable to (B, H, T, T) (causal and padding), ``memory_mask``
        to (B, H, T, S) (source padding); True = may attend.
        """
        masks = masks or DropoutMasks()
        p, tr = self.p, self.training
        if self.norm_first:
            n1, c_n1 = self.norm1.forward(x)
            a, c_sa = _attend(self.self_attn, "self_attn", n1, n1, tgt_mask, masks)
            a, c_d1 = _drop(a, p, masks, "dropout1", tr)
            h1 = x + a
            n2, c_n2 = self.norm2.forward(h1)
            b, c_ca = _attend(self.cross_attn, "cross_attn", n2, memory, memory_mask, masks)
            b, c_d2 = _drop(b, p, masks, "dropout2", tr)
            h2 = h1 + b
            n3, c_n3 = self.norm3.forward(h2)
            f, c_ff = _ff_at_site(self.ff, n3, masks)
            f, c_d3 = _drop(f, p, masks, "dropout3", tr)
            y = h2 + f
        else:
            a, c_sa = _attend(self.self_attn, "self_attn", x, x, tgt_mask, masks)
            a, c_d1 = _drop(a, p, masks, "dropout1", tr)
            h1, c_n1 = self.norm1.forward(x + a)
            b, c_ca = _attend(self.cross_attn, "cross_attn", h1, memory, memory_mask, masks)
            b, c_d2 = _drop(b, p, masks, "dropout2", tr)
            h2, c_n2 = self.norm2.forward(h1 + b)
            f, c_ff = _ff_at_site(self.ff, h2, masks)
            f, c_d3 = _drop(f, p, masks, "dropout3", tr)
            y, c_n3 = self.norm3.forward(h2 + f)
        return y, DecoderLayerCache(c_sa, c_d1, c_n1, c_ca, c_d2, c_n2, c_ff, c_d3, c_n3)

    def backward(self, dy: np.ndarray, cache: DecoderLayerCache) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(dx, dmemory)``; ``dmemory`` sums the key and value paths of the cross-attention."""
        c = cache
        if self.norm_first:
            # y = h2 + drop3(ff(norm3(h2)))
            dh2 = dy + self.norm3.backward(self.ff.backward(dropout_backward(dy, c.drop3), c.ff), c.norm3)
            # h2 = h1 + drop2(ca(norm2(h1), m, m))
            dq, dk, dv = self.cross_attn.backward(dropout_backward(dh2, c.drop2), c.ca)
            dh1 = dh2 + self.norm2.backward(dq, c.norm2)
            dmemory = dk + dv
            # h1 = x + drop1(sa(n1, n1, n1)), n1 = norm1(x)
            dq, dk, dv = self.self_attn.backward(dropout_backward(dh1, c.drop1), c.sa)
            return dh1 + self.norm1.backward(dq + dk + dv, c.norm1), dmemory
        # y = norm3(h2 + drop3(ff(h2)))
        dsum3 = self.norm3.backward(dy, c.norm3)
        dh2 = dsum3 + self.ff.backward(dropout_backward(dsum3, c.drop3), c.ff)
        # h2 = norm2(h1 + drop2(ca(h1, m, m)))
        dsum2 = self.norm2.backward(dh2, c.norm2)
        dq, dk, dv = self.cross_attn.backward(dropout_backward(dsum2, c.drop2), c.ca)
        dh1 = dsum2 + dq
        dmemory = dk + dv
        # h1 = norm1(x + drop1(sa(x, x, x)))
        dsum1 = self.norm1.backward(dh1, c.norm1)
        dq, dk, dv = self.self_attn.backward(dropout_backward(dsum1, c.drop1), c.sa)
        return dsum1 + dq + dk + dv, dmemory


class Encoder(Module):
    """A stack of encoder layers (``layers.0`` ...), plus a final ``norm`` when pre-LN."""

    def __init__(self, config: TransformerConfig, dtype: np.dtype | type = np.float64, rng=None) -> None:
        super().__init__()
        rng = check_rng(rng)
        c = config
        self.layers = ModuleList(
            [
                EncoderLayer(
                    c.d_model, c.n_heads, c.d_ff, c.dropout, c.activation, c.norm_first, c.layer_norm_eps, dtype, rng
                )
                for _ in range(c.n_encoder_layers)
            ]
        )
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype) if c.norm_first else None

    def forward(self, x, mask=None, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks()
        caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer.forward(x, mask, masks.child(f"layers.{i}"))
            caches.append(cache)
        norm_cache = None
        if self.norm is not None:
            x, norm_cache = self.norm.forward(x)
        return x, (caches, norm_cache)

    def backward(self, dy, cache):
        caches, norm_cache = cache
        if self.norm is not None:
            dy = self.norm.backward(dy, norm_cache)
        for layer, c in zip(reversed(list(self.layers)), reversed(caches), strict=True):
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
                    c.d_model, c.n_heads, c.d_ff, c.dropout, c.activation, c.norm_first, c.layer_norm_eps, dtype, rng
                )
                for _ in range(c.n_decoder_layers)
            ]
        )
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype) if c.norm_first else None

    def forward(self, x, memory, tgt_mask=None, memory_mask=None, masks: DropoutMasks | None = None):
        masks = masks or DropoutMasks()
        caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer.forward(x, memory, tgt_mask, memory_mask, masks.child(f"layers.{i}"))
            caches.append(cache)
        norm_cache = None
        if self.norm is not None:
            x, norm_cache = self.norm.forward(x)
        return x, (caches, norm_cache)

    def backward(self, dy, cache):
        """Return ``(dx, dmemory)``: every layer reads the same memory, so their gradients add up."""
        caches, norm_cache = cache
        if self.norm is not None:
            dy = self.norm.backward(dy, norm_cache)
        dmemory = None
        for layer, c in zip(reversed(list(self.layers)), reversed(caches), strict=True):
            dy, dm = layer.backward(dy, c)
            dmemory = dm if dmemory is None else dmemory + dm
        return dy, dmemory


@dataclass(frozen=True)
class TransformerCache:
    src_embed: Any  # EmbeddingCache
    src_drop: DropoutCache
    encoder: Any
    tgt_embed: Any
    tgt_drop: DropoutCache
    decoder: Any
    head: LinearCache  # the output projection
    memory: np.ndarray  # (B, S, C) encoder output, kept for inspection and decoding
    dropout_masks: dict[str, np.ndarray]  # every mask used, by site name: replay them in the twin

    def cross_attention_weights(self, layer: int = -1) -> np.ndarray:
        """(B, H, T, S) cross-attention probabilities of one decoder layer."""
        return self.decoder[0][layer].ca.weights


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
        # A constant, not a parameter: it is not in the state dict.
        self._pe = sinusoidal_positional_encoding(config.max_len, C, dtype=self.dtype)  # (max_len, C)
        self._embed_scale = self.dtype.type(math.sqrt(C))

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

    def _embed(self, embed: Embedding, ids: np.ndarray, masks: DropoutMasks, site: str):
        e, c_e = embed.forward(ids)  # (B, L, C)
        x = e * self._embed_scale + self._pe[: ids.shape[1]]
        x, c_d = _drop(x, self.config.dropout, masks, site, self.training)
        return x, c_e, c_d

    def encode(self, src: np.ndarray, masks: DropoutMasks | None = None):
        """``src`` (B, S) ids -> memory (B, S, C) and the caches needed for the backward."""
        masks = masks or DropoutMasks()
        self._check_ids("src", src, self.config.src_vocab_size)
        x, c_e, c_d = self._embed(self.src_embed, src, masks, "src_dropout")
        memory, c_enc = self.encoder.forward(x, self.source_mask(src), masks.child("encoder"))
        return memory, (c_e, c_d, c_enc)

    def decode(self, tgt: np.ndarray, memory: np.ndarray, src: np.ndarray, masks: DropoutMasks | None = None):
        """``tgt`` (B, T) ids over ``memory`` (B, S, C) -> logits (B, T, V)."""
        masks = masks or DropoutMasks()
        self._check_ids("tgt", tgt, self.config.tgt_vocab_size)
        x, c_e, c_d = self._embed(self.tgt_embed, tgt, masks, "tgt_dropout")
        h, c_dec = self.decoder.forward(
            x, memory, self.target_mask(tgt), self.source_mask(src), masks.child("decoder")
        )  # (B, T, C)
        weight = self.tgt_embed.weight if self.out_proj is None else self.out_proj.weight  # (V, C)
        logits, c_head = linear_forward(h, weight)  # (B, T, V)
        return logits, (c_e, c_d, c_dec, c_head)

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
        memory, (c_se, c_sd, c_enc) = self.encode(src, masks)
        logits, (c_te, c_td, c_dec, c_head) = self.decode(tgt, memory, src, masks)
        cache = TransformerCache(c_se, c_sd, c_enc, c_te, c_td, c_dec, c_head, memory, masks.used)
        return logits, cache

    def backward(self, dlogits: np.ndarray, cache: TransformerCache) -> None:
        """Accumulate every parameter gradient from ``dlogits`` (B, T, V)."""
        c = cache
        # logits = h @ W^T, W = out_proj.weight or (tied) tgt_embed.weight
        dh, dweight, _ = linear_backward(dlogits, c.head)  # (B, T, C), (V, C)
        if self.out_proj is None:
            self.tgt_embed._accumulate("weight", dweight)  # the tied matrix collects both of its uses
        else:
            self.out_proj._accumulate("weight", dweight)
        dx_tgt, dmemory = self.decoder.backward(dh, c.decoder)  # (B, T, C), (B, S, C)
        # x = dropout(embed(tgt) * sqrt(C) + PE): the positions are constants
        de = dropout_backward(dx_tgt, c.tgt_drop) * self._embed_scale
        self.tgt_embed.backward(de, c.tgt_embed)
        dx_src = self.encoder.backward(dmemory, c.encoder)
        de = dropout_backward(dx_src, c.src_drop) * self._embed_scale
        self.src_embed.backward(de, c.src_embed)
