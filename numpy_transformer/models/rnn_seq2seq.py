"""The recurrent encoder–decoder with classic attention (Bahdanau or Luong), forward and backward by hand.

Shape legend: ``B`` batch, ``S`` source length, ``T`` target length, ``E`` embedding
width, ``H`` hidden size (decoder state = encoder output width), ``V`` vocabulary.

Encoder (both styles)::

    enc, h_n = BiGRU(src_embed(src), lengths)          # (B, S, H): [forward; backward], H/2 each
    s_0 = tanh(init_proj([h_n forward; h_n backward]))  # (B, H) the decoder's first state

Bahdanau decoder (attention from the previous state, context into the GRU input)::

    c_t = attention(s_{t-1}, enc, enc)                   # additive score
    s_t = GRUCell([tgt_embed(y_{t-1}); c_t], s_{t-1})
    logits_t = out_proj([s_t; c_t])

Luong decoder (attention from the current state, attentional hidden state)::

    s_1..s_T = GRU(tgt_embed(y_0..y_{T-1}), s_0)         # the whole sequence at once
    c_t = attention(s_t, enc, enc)                       # dot / general / concat score
    logits_t = out_proj(tanh(W_c [c_t; s_t]))

The Luong decoder's recurrence does not depend on the attention (no input feeding),
so its GRU, attention and output run over all steps at once; the Bahdanau decoder
feeds each context back in and runs step by step, forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import RNNSeq2SeqConfig
from ..functional.checks import check_rng, check_token_ids
from ..functional.classic_attention import AdditiveAttentionCache, LuongAttentionCache
from ..functional.embedding import EmbeddingCache
from ..functional.gru import GRUCellCache, gru_cell_forward
from ..functional.linear import LinearCache
from ..modules.base import Module, check_module_dtype
from ..modules.classic_attention import AdditiveAttention, LuongAttention
from ..modules.gru import GRU, GRUCell, GRULayerCache
from ..modules.layers import Embedding, Linear


@dataclass(frozen=True)
class RNNEncodeCache:
    """What :meth:`RNNSeq2Seq.encode` keeps for the backward."""

    src_embed: EmbeddingCache  # src ids (B, S)
    encoder: GRULayerCache  # the bidirectional GRU over (B, S, E)
    init_proj: LinearCache  # [h_n forward; h_n backward] (B, H) into init_proj
    s0: np.ndarray  # (B, H) the tanh output, for its derivative


@dataclass(frozen=True)
class BahdanauStepCache:
    attention: AdditiveAttentionCache  # query s_{t-1} (B, H), weights (B, S)
    cell: GRUCellCache  # input [y_t; c_t] (B, E + H), state s_{t-1} (B, H)


@dataclass(frozen=True)
class BahdanauDecoderCache:
    steps: tuple[BahdanauStepCache, ...]  # one per decoder step, first to last: each context feeds the next


@dataclass(frozen=True)
class LuongDecoderCache:
    gru: GRULayerCache  # the decoder GRU over (B, T, E), every step at once
    attention: LuongAttentionCache  # queries s_1..s_T (B, T, H), weights (B, T, S)
    combine: LinearCache  # [c; s] (B, T, 2H) into W_c
    attentional: np.ndarray  # (B, T, H) the tanh output, for its derivative


@dataclass(frozen=True)
class RNNSeq2SeqCache:
    encode: RNNEncodeCache  # the source side
    tgt_embed: EmbeddingCache  # decoder input ids (B, T)
    decoder: BahdanauDecoderCache | LuongDecoderCache  # by ``config.attention``
    out: LinearCache  # features (B, T, 2H) (Bahdanau) or (B, T, H) (Luong) into out_proj
    weights: np.ndarray  # (B, T, S) attention weights at every decoder step
    dropout_masks: dict[str, np.ndarray] = field(default_factory=dict)  # none in this model: the trainer's interface

    def cross_attention_weights(self) -> np.ndarray:
        """(B, 1, T, S): the attention of every step, as one 'head' for the heatmap tools."""
        return self.weights[:, None]


class RNNSeq2Seq(Module):
    """Bidirectional-GRU encoder, GRU decoder with Bahdanau or Luong attention (see the module docstring)."""

    def __init__(
        self, config: RNNSeq2SeqConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, RNNSeq2SeqConfig):
            raise TypeError(f"config: expected an RNNSeq2SeqConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        c = self.config = config
        self.dtype = check_module_dtype(dtype)
        E, H = c.embed_dim, c.hidden_size
        self.src_embed = Embedding(c.src_vocab_size, E, dtype=dtype, rng=rng)
        self.encoder = GRU(E, H // 2, bidirectional=True, dtype=dtype, rng=rng)
        self.init_proj = Linear(H, H, dtype=dtype, rng=rng)
        self.tgt_embed = Embedding(c.tgt_vocab_size, E, dtype=dtype, rng=rng)
        if c.attention == "bahdanau":
            self.attention = AdditiveAttention(H, H, c.attn_dim, dtype=dtype, rng=rng)
            self.decoder = GRUCell(E + H, H, dtype=dtype, rng=rng)
            self.out_proj = Linear(2 * H, c.tgt_vocab_size, dtype=dtype, rng=rng)
        else:
            score = c.attention.split("-")[1]
            attn_dim = c.attn_dim if score == "concat" else None
            self.decoder = GRU(E, H, dtype=dtype, rng=rng)
            self.attention = LuongAttention(H, H, score, attn_dim, dtype=dtype, rng=rng)
            self.combine = Linear(2 * H, H, bias=False, dtype=dtype, rng=rng)  # W_c
            self.out_proj = Linear(H, c.tgt_vocab_size, dtype=dtype, rng=rng)

    # -------------------------------------------------------------- pieces

    def _check_ids(self, name: str, ids: np.ndarray, vocab: int) -> None:
        check_token_ids(name, ids, vocab)  # no length limit: a recurrent model has no position table

    def encode(self, src: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, RNNEncodeCache]:
        """``src`` (B, S) -> encoder outputs (B, S, H), the first decoder state (B, H), source mask (B, S), cache."""
        c = self.config
        self._check_ids("src", src, c.src_vocab_size)
        mask = src != c.pad_id  # (B, S) True = may attend
        lengths = mask.sum(axis=1)  # right-padded: the real tokens come first
        x, c_emb = self.src_embed.forward(src)  # (B, S, E)
        (enc, h_n), c_enc = self.encoder.forward(x, lengths=lengths)  # (B, S, H), (2, B, H/2)
        pre, c_init = self.init_proj.forward(np.concatenate([h_n[0], h_n[1]], axis=-1))  # (B, H)
        s0 = np.tanh(pre)
        return enc, s0, mask, RNNEncodeCache(src_embed=c_emb, encoder=c_enc, init_proj=c_init, s0=s0)

    # -------------------------------------------------------------- forward / backward

    def forward(
        self, src: np.ndarray, tgt: np.ndarray, rng: np.random.Generator | None = None, dropout_masks=None
    ) -> tuple[np.ndarray, RNNSeq2SeqCache]:
        """Teacher forcing: ``src`` (B, S), ``tgt`` (B, T) decoder inputs (BOS first) -> logits (B, T, V).

        ``rng`` and ``dropout_masks`` are accepted for the trainer's interface; this model has no dropout.
        """
        c = self.config
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"tgt: expected batch size {src.shape[0]} (that of src), got {tgt.shape[0]}")
        self._check_ids("tgt", tgt, c.tgt_vocab_size)
        enc, s0, mask, c_src = self.encode(src)
        y, c_temb = self.tgt_embed.forward(tgt)  # (B, T, E)
        if c.attention == "bahdanau":
            features, c_dec, weights = self._bahdanau_forward(y, enc, s0, mask)  # (B, T, 2H)
        else:
            features, c_dec, weights = self._luong_forward(y, enc, s0, mask)  # (B, T, H)
        logits, c_out = self.out_proj.forward(features)  # (B, T, V)
        cache = RNNSeq2SeqCache(encode=c_src, tgt_embed=c_temb, decoder=c_dec, out=c_out, weights=weights)
        return logits, cache

    def _bahdanau_forward(
        self, y: np.ndarray, enc: np.ndarray, s0: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, BahdanauDecoderCache, np.ndarray]:
        """``y`` (B, T, E) -> features [s_t; c_t] (B, T, 2H), the cache, weights (B, T, S)."""
        s, steps, states, contexts, weights = s0, [], [], [], []
        for t in range(y.shape[1]):
            ctx, c_att = self.attention.forward(s, enc, enc, mask)  # (B, H) from the previous state
            s, c_cell = self.decoder.forward(np.concatenate([y[:, t], ctx], axis=-1), s)  # (B, H)
            steps.append(BahdanauStepCache(attention=c_att, cell=c_cell))
            states.append(s)
            contexts.append(ctx)
            weights.append(c_att.weights)
        features = np.concatenate([np.stack(states, 1), np.stack(contexts, 1)], axis=-1)  # (B, T, 2H)
        return features, BahdanauDecoderCache(steps=tuple(steps)), np.stack(weights, 1)  # (B, T, S)

    def _luong_forward(
        self, y: np.ndarray, enc: np.ndarray, s0: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, LuongDecoderCache, np.ndarray]:
        """``y`` (B, T, E) -> attentional states (B, T, H), the cache, weights (B, T, S)."""
        (states, _), c_gru = self.decoder.forward(y, s0[None])  # (B, T, H)
        ctx, c_att = self.attention.forward(states, enc, enc, mask)  # (B, T, H), every step at once
        pre, c_comb = self.combine.forward(np.concatenate([ctx, states], axis=-1))  # (B, T, H)
        attentional = np.tanh(pre)
        cache = LuongDecoderCache(gru=c_gru, attention=c_att, combine=c_comb, attentional=attentional)
        return attentional, cache, c_att.weights

    def backward(self, dlogits: np.ndarray, cache: RNNSeq2SeqCache) -> None:
        """Accumulate every parameter gradient from ``dlogits`` (B, T, V)."""
        H = self.config.hidden_size
        dfeatures = self.out_proj.backward(dlogits, cache.out)
        if self.config.attention == "bahdanau":
            dy, denc, ds0 = self._bahdanau_backward(dfeatures, cache.decoder)
        else:
            dy, denc, ds0 = self._luong_backward(dfeatures, cache.decoder)
        self.tgt_embed.backward(dy, cache.tgt_embed)
        src = cache.encode
        # s_0 = tanh(init_proj([h_f; h_b]))
        dhcat = self.init_proj.backward(ds0 * (1 - src.s0 * src.s0), src.init_proj)  # (B, H)
        dh_n = np.stack([dhcat[:, : H // 2], dhcat[:, H // 2 :]])  # (2, B, H/2)
        dx, _ = self.encoder.backward(denc, dh_n, src.encoder)  # encoder h0 was zeros: its gradient is unused
        self.src_embed.backward(dx, src.src_embed)

    def _bahdanau_backward(
        self, dfeatures: np.ndarray, cache: BahdanauDecoderCache
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Back through the steps in reverse; ``ds`` carries the gradient of the state into the step before."""
        H = self.config.hidden_size
        E = self.config.embed_dim
        B, T, _ = dfeatures.shape
        dy = np.zeros((B, T, E), dtype=dfeatures.dtype)
        denc = None
        ds = np.zeros((B, H), dtype=dfeatures.dtype)  # from step t + 1 into s_t
        for t in reversed(range(T)):
            step = cache.steps[t]
            # logits_t = out_proj([s_t; c_t]); s_t also feeds step t + 1
            ds_t = dfeatures[:, t, :H] + ds
            dctx = dfeatures[:, t, H:]
            # s_t = GRUCell([y_t; c_t], s_{t-1})
            dx, ds_prev = self.decoder.backward(ds_t, step.cell)
            dy[:, t] = dx[:, :E]
            dctx = dctx + dx[:, E:]
            # c_t = attention(s_{t-1}, enc, enc)
            dq, dk, dv = self.attention.backward(dctx, step.attention)
            denc = dk + dv if denc is None else denc + dk + dv
            ds = ds_prev + dq
        return dy, denc, ds

    def _luong_backward(
        self, dfeatures: np.ndarray, cache: LuongDecoderCache
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        H = self.config.hidden_size
        # attentional = tanh(combine([c; s]))
        attentional = cache.attentional  # (B, T, H)
        dcat = self.combine.backward(dfeatures * (1 - attentional * attentional), cache.combine)  # (B, T, 2H)
        dctx, dstates = dcat[..., :H], dcat[..., H:]
        # c = attention(s, enc, enc): s is the query
        dq, dk, dv = self.attention.backward(np.ascontiguousarray(dctx), cache.attention)
        dstates = dstates + dq
        # s_1..s_T = GRU(y, s_0)
        dy, ds0 = self.decoder.backward(dstates, None, cache.gru)
        return dy, dk + dv, ds0[0]

    # -------------------------------------------------------------- decoding

    def decode_step(
        self, y: np.ndarray, s: np.ndarray, enc: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder step, forward only (the searches in ``inference.search`` call it once per token).

        ``y`` (B, E) the embedded input token, ``s`` (B, H) the previous state, ``enc`` (B, S, H)
        and ``mask`` (B, S) from :meth:`encode` -> logits (B, V), the new state (B, H), weights (B, S).
        """
        if self.config.attention == "bahdanau":
            ctx, c_att = self.attention.forward(s, enc, enc, mask)  # (B, H) from the previous state
            s, _ = self.decoder.forward(np.concatenate([y, ctx], axis=-1), s)
            logits, _ = self.out_proj.forward(np.concatenate([s, ctx], axis=-1))
        else:
            gru = self.decoder  # one step of the decoder GRU, as a cell
            s, _ = gru_cell_forward(y, s, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
            ctx, c_att = self.attention.forward(s, enc, enc, mask)  # from the current state
            pre, _ = self.combine.forward(np.concatenate([ctx, s], axis=-1))
            logits, _ = self.out_proj.forward(np.tanh(pre))
        return logits, s, c_att.weights
