"""A GPT-style decoder-only language model, forward and backward by hand.

Shape legend: ``B`` batch, ``T`` sequence length (``<= max_len``), ``C`` d_model,
``H`` heads, ``F`` feed-forward width, ``V`` vocabulary size.

The network, read top to bottom::

    x      = drop(tok_embed[ids] + pos_embed[0..T-1])      (B, T, C)
    x      = layers.i(x, causal mask)   for i = 0 .. L-1   pre-LN blocks:
                 h = x + drop1(SA(norm1(x)))               (the encoder layer of transformer.py,
                 x = h + drop2(FF(norm2(h)))                norm_first=True, driven with a causal mask)
    h      = norm(x)                                        (B, T, C)
    logits = h @ tok_embed.weight^T                         (B, T, V)  the LM head is the embedding

Two things make it a *language model* rather than an encoder:

* **The causal mask.** Position ``t`` attends to keys ``0..t`` only, so ``logits[:, t]``
  depends on ``ids[:, :t + 1]`` and nothing later: one forward pass scores every
  next-token prediction of the sequence at once (``logits[:, t]`` predicts ``ids[:, t + 1]``).
* **The tied head.** The output projection *is* the token-embedding matrix. It is used
  twice in one forward pass, so its gradient has two terms, one from each use, and
  :meth:`GPT.backward` adds both into ``tok_embed.grads["weight"]``.

Dropout sites, named for :class:`DropoutMasks` (so the twin can replay them):
``embed_dropout`` and, per layer ``i``, ``layers.i.self_attn`` (attention weights),
``layers.i.dropout1`` / ``layers.i.dropout2`` (residual branches), the sites of
:class:`EncoderLayer`. As in GPT-2 there is none inside the feed-forward (``ff_dropout=0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import GPTConfig
from ..functional.checks import check_float_array, check_rng, check_token_ids
from ..functional.dropout import DropoutCache, dropout_backward
from ..functional.embedding import EmbeddingCache
from ..functional.layer_norm import LayerNormCache
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..functional.masks import causal_mask, padding_mask
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.dropout_masks import DropoutMasks
from ..modules.layers import Embedding, LayerNorm
from ..modules.transformer_layers import EncoderLayer, EncoderLayerCache

# GPT-2 draws both embedding tables from N(0, 0.02^2). torch.nn.Embedding's N(0, 1) would make the
# tied logits h . e ~ N(0, C) at initialisation (h is LayerNorm'd, so |h| ~ sqrt(C)): a model that
# starts out sure of random answers.
EMBED_INIT_STD = 0.02


@dataclass(frozen=True)
class GPTCache:
    tok_embed: EmbeddingCache  # ids (B, T)
    pos_embed: EmbeddingCache  # positions (1, T)
    embed_dropout: DropoutCache  # (B, T, C) keep-mask on the embeddings
    layers: tuple[EncoderLayerCache, ...]  # one per layer, first to last, each over (B, T, C)
    norm: LayerNormCache  # (B, T, C) the final LayerNorm
    head: LinearCache  # logits = h @ tok_embed.weight^T; holds h (B, T, C)
    dropout_masks: dict[str, np.ndarray]  # every mask used, by site name: replay them in the twin

    def attention_weights(self, layer: int = -1) -> np.ndarray:
        """(B, H, T, T) self-attention probabilities of one layer; zero above the diagonal."""
        return self.layers[layer].sa.weights


class GPT(Module):
    """Decoder-only Transformer language model (see the module docstring for the layout).

    Parameters are named like the twin's state dict: ``tok_embed.weight`` (V, C),
    ``pos_embed.weight`` (max_len, C), ``layers.0.self_attn.q_proj.weight``, ...,
    ``layers.0.norm1.weight``, ``norm.weight``, ``norm.bias``. There is no separate
    output matrix: the logits use ``tok_embed.weight``.
    """

    def __init__(
        self, config: GPTConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected a GPTConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = config
        self.dtype = check_module_dtype(dtype)
        c = config
        self.tok_embed = Embedding(c.vocab_size, c.d_model, dtype=dtype, rng=rng)
        self.pos_embed = Embedding(c.max_len, c.d_model, dtype=dtype, rng=rng)
        for table in (self.tok_embed, self.pos_embed):
            table.weight[...] = rng.normal(0.0, EMBED_INIT_STD, table.weight.shape)
        block = dict(
            activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps, dtype=dtype, rng=rng,
            ff_dropout=0.0,  # as GPT-2: dropout on the residual branches, none inside the feed-forward
            attention=c.attention,
        )  # fmt: skip
        self.layers = ModuleList(
            [EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, **block) for _ in range(c.n_layers)]
        )
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    # -------------------------------------------------------------- inputs and masks

    def check_ids(self, ids: object, name: str = "ids") -> np.ndarray:
        """``ids`` must be (B, T) integer token ids, ``B, T >= 1``, ``T <= max_len``, inside the vocabulary."""
        return check_token_ids(name, ids, self.config.vocab_size, self.config.max_len)

    def attention_mask(self, ids: np.ndarray) -> np.ndarray:
        """(1, 1, T, T) causal mask, or (B, 1, T, T) causal and not-a-pad-key when ``pad_id`` is set."""
        mask = causal_mask(ids.shape[1])[None, None]  # (1, 1, T, T): query t sees keys 0..t
        if self.config.pad_id is not None:
            mask = padding_mask(ids, self.config.pad_id) & mask  # (B, 1, T, T)
        return mask

    # -------------------------------------------------------------- forward / backward

    def forward(
        self,
        ids: np.ndarray,
        rng: np.random.Generator | None = None,
        dropout_masks: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, GPTCache]:
        """``ids`` (B, T) integer token ids -> logits (B, T, V); ``logits[:, t]`` scores ``ids[:, t + 1]``.

        In training mode with ``dropout > 0``, masks are drawn from ``rng`` unless
        given by name in ``dropout_masks``; ``cache.dropout_masks`` holds every mask used.
        """
        ids = self.check_ids(ids)
        masks = DropoutMasks(rng, dropout_masks)
        T = ids.shape[1]
        e, c_tok = self.tok_embed.forward(ids)  # (B, T, C)
        p, c_pos = self.pos_embed.forward(np.arange(T)[None, :])  # (1, T, C), broadcast over the batch
        x, c_drop = masks.drop(e + p, self.config.dropout, "embed_dropout", self.training)  # (B, T, C)
        mask = self.attention_mask(ids)
        layer_caches = []
        for i, layer in enumerate(self.layers):
            x, c_layer = layer.forward(x, mask, masks.child(f"layers.{i}"))  # (B, T, C)
            layer_caches.append(c_layer)
        h, c_norm = self.norm.forward(x)  # (B, T, C)
        logits, c_head = linear_forward(h, self.tok_embed.weight)  # (B, T, V): h @ W_tok^T
        cache = GPTCache(
            tok_embed=c_tok,
            pos_embed=c_pos,
            embed_dropout=c_drop,
            layers=tuple(layer_caches),
            norm=c_norm,
            head=c_head,
            dropout_masks=masks.used,
        )
        return logits, cache

    def backward(self, dlogits: np.ndarray, cache: GPTCache) -> None:
        r"""Accumulate every parameter gradient from ``dlogits`` (B, T, V); token ids have none.

        The forward read bottom-up:

        .. math::
            \text{logits} = h W^T \Rightarrow dh = d\text{logits}\, W,\quad dW \mathrel{+}= d\text{logits}^T h

            x_0 = \text{drop}(W[\text{ids}] + P[0..T-1]) \Rightarrow
            dW[\text{ids}_{bt}] \mathrel{+}= dx_{0,bt},\quad dP[t] \mathrel{+}= \textstyle\sum_b dx_{0,bt}

        where :math:`dx_0` has been through the dropout mask. :math:`W` (``tok_embed.weight``)
        receives both terms: the head's and the lookup's.
        """
        c = cache
        expected = c.head.x.shape[:-1] + (self.config.vocab_size,)  # (B, T, V)
        check_float_array("dlogits", dlogits)
        if dlogits.shape != expected or dlogits.dtype != self.dtype:
            raise ValueError(
                f"dlogits: expected shape {expected} and dtype {self.dtype} (those of the logits), "
                f"got {dlogits.shape} {dlogits.dtype}"
            )
        # logits = h @ W^T, W = tok_embed.weight: the head's share of W's gradient
        dh, dweight, _ = linear_backward(dlogits, c.head)  # (B, T, C), (V, C)
        self.tok_embed.accumulate_grad("weight", dweight)
        # h = norm(x_L)
        dx = self.norm.backward(dh, c.norm)  # (B, T, C)
        # x_{i+1} = layers.i(x_i)
        for layer, c_layer in zip(reversed(list(self.layers)), reversed(c.layers), strict=True):
            dx = layer.backward(dx, c_layer)
        # x_0 = drop(e + p): e = tok_embed[ids] (B, T, C), p = pos_embed[0..T-1] (1, T, C)
        de = dropout_backward(dx, c.embed_dropout)  # (B, T, C)
        self.tok_embed.backward(de, c.tok_embed)  # the lookup's share of W's gradient, added to the head's
        self.pos_embed.backward(de.sum(axis=0, keepdims=True), c.pos_embed)  # (1, T, C): p was broadcast over B
