"""A BERT encoder with its pooler, masked-language-model and classification heads, backward by hand.

Shape legend: ``B`` batch, ``S`` sequence length, ``C`` hidden size, ``H`` heads,
``F`` intermediate size, ``V`` vocabulary size, ``K`` number of classes.

Layout (the names are our parameter names; Hugging Face's are in
:data:`numpy_transformer.applications.pretrained.HF_TO_OURS`)::

    embeddings:  x = dropout(norm(word_embeddings[ids] + position_embeddings[0..S-1]
                                  + token_type_embeddings[token_type_ids]))
    encoder:     layers.0 ... layers.{n-1}, each the post-LN EncoderLayer with GELU
                 h = norm1(x + drop1(self_attn(x)))
                 y = norm2(h + drop2(ff.linear2(gelu(ff.linear1(h)))))
    pooler:      pooled = tanh(dense(y[:, 0]))          (the [CLS] position)

    MLM head:    logits = norm(gelu(dense(y))) @ word_embeddings^T + bias   (tied decoder)
    classifier:  logits = classifier(dropout(pooled))

The attention mask follows Hugging Face: ``attention_mask`` (B, S) with 1 for real
tokens and 0 for padding; padded keys get exactly zero attention (a boolean mask,
where Hugging Face adds a very large negative number: the same probabilities).

Freezing: after ``model.requires_grad_(False)`` on the embeddings and the lower
layers, the backward stops at the lowest module that still trains: below it there is
nothing to compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import BertConfig
from ..functional.activations import GeluCache, TanhCache, gelu_backward, gelu_forward, tanh_backward, tanh_forward
from ..functional.checks import check_float_array, check_int_array, check_rng, check_token_ids
from ..functional.dropout import DropoutCache, dropout_backward
from ..functional.embedding import EmbeddingCache
from ..functional.layer_norm import LayerNormCache
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.dropout_masks import DropoutMasks
from ..modules.layers import Embedding, LayerNorm, Linear
from ..modules.transformer_layers import EncoderLayer, EncoderLayerCache

IGNORE_INDEX = -100  # label of a position that is not scored (as in PyTorch and Hugging Face)


def init_bert_weights(module: Module, rng: np.random.Generator, std: float) -> None:
    """BERT's initialisation, in place: every Linear weight and embedding table ~ N(0, std^2),
    biases 0, an embedding's padding row 0; LayerNorms keep weight 1, bias 0."""
    stack = [module]
    while stack:
        m = stack.pop()
        if isinstance(m, (Linear, Embedding)):
            m.weight[...] = rng.normal(0.0, std, m.weight.shape)
            if isinstance(m, Linear) and m.bias is not None:
                m.bias[...] = 0
            if isinstance(m, Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx] = 0
        stack.extend(child for _, child in m.children())


def _trains(module: Module) -> bool:
    """Whether any parameter of ``module`` is not frozen."""
    return any(True for _ in module.named_trainable())


def check_bert_inputs(
    input_ids: object, attention_mask: object, token_type_ids: object, config: BertConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the three inputs; return ``(ids, keep (B, S) bool, token_type_ids)``."""
    ids = check_token_ids(
        "input_ids", input_ids, config.vocab_size, config.max_position_embeddings, length_name="max_position_embeddings"
    )
    if attention_mask is None:
        keep = np.ones(ids.shape, dtype=bool)
    else:
        if not isinstance(attention_mask, np.ndarray) or attention_mask.dtype.kind not in "biu":
            raise TypeError(
                f"attention_mask: expected a bool or integer array of 0/1, got {type(attention_mask).__name__}"
                f" {getattr(attention_mask, 'dtype', '')}"
            )
        if attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask: expected shape {ids.shape} (that of input_ids), got {attention_mask.shape}"
            )
        if attention_mask.dtype != np.bool_ and not np.isin(attention_mask, (0, 1)).all():
            raise ValueError("attention_mask: expected only 0 (padding) and 1 (token)")
        keep = attention_mask.astype(bool)
    if token_type_ids is None:
        types = np.zeros(ids.shape, dtype=np.int64)
    else:
        check_int_array("token_type_ids", token_type_ids)
        if token_type_ids.shape != ids.shape:
            raise ValueError(
                f"token_type_ids: expected shape {ids.shape} (that of input_ids), got {token_type_ids.shape}"
            )
        if token_type_ids.size and (token_type_ids.min() < 0 or token_type_ids.max() >= config.type_vocab_size):
            raise ValueError(
                f"token_type_ids: expected ids in [0, {config.type_vocab_size}), "
                f"got range [{token_type_ids.min()}, {token_type_ids.max()}]"
            )
        types = token_type_ids
    return ids, keep, types


# ---------------------------------------------------------------------------- embeddings


@dataclass(frozen=True)
class BertEmbeddingsCache:
    word: EmbeddingCache  # input ids (B, S)
    position: EmbeddingCache  # positions (1, S), shared by the batch
    token_type: EmbeddingCache  # segment ids (B, S)
    norm: LayerNormCache  # (B, S, C) of word + position + token_type
    drop: DropoutCache  # (B, S, C) keep-mask after the norm


class BertEmbeddings(Module):
    """``dropout(norm(word + position + token_type))``; positions are learned, 0 .. S-1."""

    def __init__(self, config: BertConfig, dtype: np.dtype | type = np.float64, rng=None) -> None:
        super().__init__()
        rng = check_rng(rng)
        c = config
        self.p = c.dropout
        self.word_embeddings = Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_id, dtype=dtype, rng=rng)
        self.position_embeddings = Embedding(c.max_position_embeddings, c.hidden_size, dtype=dtype, rng=rng)
        self.token_type_embeddings = Embedding(c.type_vocab_size, c.hidden_size, dtype=dtype, rng=rng)
        self.norm = LayerNorm(c.hidden_size, c.layer_norm_eps, dtype=dtype)

    def forward(
        self, ids: np.ndarray, token_type_ids: np.ndarray, masks: DropoutMasks
    ) -> tuple[np.ndarray, BertEmbeddingsCache]:
        """``ids``, ``token_type_ids`` (B, S) -> (B, S, C)."""
        S = ids.shape[1]
        w, c_w = self.word_embeddings.forward(ids)  # (B, S, C)
        pos, c_p = self.position_embeddings.forward(np.arange(S)[None, :])  # (1, S, C)
        t, c_t = self.token_type_embeddings.forward(token_type_ids)  # (B, S, C)
        x, c_n = self.norm.forward(w + pos + t)
        x, c_d = masks.drop(x, self.p, "dropout", self.training)
        return x, BertEmbeddingsCache(word=c_w, position=c_p, token_type=c_t, norm=c_n, drop=c_d)

    def backward(self, dx: np.ndarray, cache: BertEmbeddingsCache) -> None:
        """The ids are integers: this ends the backward, accumulating the three tables' gradients."""
        dsum = self.norm.backward(dropout_backward(dx, cache.drop), cache.norm)  # (B, S, C)
        self.word_embeddings.backward(dsum, cache.word)
        self.position_embeddings.backward(dsum.sum(axis=0, keepdims=True), cache.position)  # shared by the batch
        self.token_type_embeddings.backward(dsum, cache.token_type)


# ---------------------------------------------------------------------------- the encoder model


@dataclass(frozen=True)
class BertOutput:
    last_hidden_state: np.ndarray  # (B, S, C)
    pooler_output: np.ndarray | None  # (B, C), None without a pooler


@dataclass(frozen=True)
class BertPoolerCache:
    dense: LinearCache  # the [CLS] hidden state (B, C) into ``pooler``
    tanh: TanhCache  # (B, C) the pooled output


@dataclass(frozen=True)
class BertCache:
    embeddings: BertEmbeddingsCache
    layers: tuple[EncoderLayerCache, ...]  # one per layer, first to last, each over (B, S, C)
    pooler: BertPoolerCache | None  # None without a pooler
    keep: np.ndarray  # (B, S) bool, True at real tokens
    dropout_masks: dict[str, np.ndarray]  # every mask used, by site name: replay them in the twin

    @property
    def attentions(self) -> list[np.ndarray]:
        """One (B, H, S, S) array of attention probabilities per layer (after masking, before dropout)."""
        return [c.sa.weights for c in self.layers]


class BertModel(Module):
    """Embeddings, ``config.n_layers`` post-LN encoder layers and (optionally) the pooler."""

    def __init__(
        self,
        config: BertConfig,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        add_pooler: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config: expected a BertConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        c = config
        self.config = config
        self.dtype = check_module_dtype(dtype)
        self.embeddings = BertEmbeddings(c, dtype, rng)
        self.layers = ModuleList(
            [
                EncoderLayer(
                    c.hidden_size,
                    c.n_heads,
                    c.intermediate_size,
                    c.dropout,
                    c.activation,
                    norm_first=False,
                    layer_norm_eps=c.layer_norm_eps,
                    dtype=dtype,
                    rng=rng,
                    ff_dropout=0.0,
                    attention=c.attention,
                )
                for _ in range(c.n_layers)
            ]
        )
        self.pooler = Linear(c.hidden_size, c.hidden_size, dtype=dtype, rng=rng) if add_pooler else None
        init_bert_weights(self, rng, c.initializer_range)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        token_type_ids: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        dropout_masks: dict[str, np.ndarray] | None = None,
        masks: DropoutMasks | None = None,
    ) -> tuple[BertOutput, BertCache]:
        """``input_ids`` (B, S) -> hidden states (B, S, C) and the pooled [CLS] vector (B, C).

        ``attention_mask`` (B, S): 1 (or True) at tokens, 0 at padding; default all tokens.
        ``token_type_ids`` (B, S): the segment of each token; default all 0.
        Dropout masks come from ``rng`` or by name from ``dropout_masks`` (a head passes its
        own ``masks`` so that the names stay under ``bert.``).
        """
        ids, keep, types = check_bert_inputs(input_ids, attention_mask, token_type_ids, self.config)
        masks = masks if masks is not None else DropoutMasks(rng, dropout_masks)
        x, c_emb = self.embeddings.forward(ids, types, masks.child("embeddings"))
        attn_mask = keep[:, None, None, :]  # (B, 1, 1, S): no query looks at a padded key
        caches = []
        for i, layer in enumerate(self.layers):
            x, c = layer.forward(x, attn_mask, masks.child(f"layers.{i}"))
            caches.append(c)
        pooled, c_pool = None, None
        if self.pooler is not None:
            z, c_lin = self.pooler.forward(x[:, 0])  # (B, C), the first ([CLS]) position
            pooled, c_tanh = tanh_forward(z)
            c_pool = BertPoolerCache(dense=c_lin, tanh=c_tanh)
        cache = BertCache(embeddings=c_emb, layers=tuple(caches), pooler=c_pool, keep=keep, dropout_masks=masks.used)
        return BertOutput(x, pooled), cache

    def backward(self, d_hidden: np.ndarray | None, d_pooled: np.ndarray | None, cache: BertCache) -> np.ndarray | None:
        """Accumulate parameter gradients from ``d_hidden`` (B, S, C) and/or ``d_pooled`` (B, C).

        Returns the gradient at the embedding output (None when the backward stopped
        early because everything below is frozen).
        """
        if d_hidden is None and d_pooled is None:
            raise ValueError("d_hidden, d_pooled: expected at least one upstream gradient, got neither")
        B, S = cache.keep.shape
        C = self.config.hidden_size
        for name, grad, shape in (("d_hidden", d_hidden, (B, S, C)), ("d_pooled", d_pooled, (B, C))):
            if grad is not None:
                check_float_array(name, grad)
                if grad.shape != shape or grad.dtype != self.dtype:
                    raise ValueError(f"{name}: expected {self.dtype} of shape {shape}, got {grad.dtype} {grad.shape}")
        dx = np.zeros((B, S, C), dtype=self.dtype) if d_hidden is None else d_hidden.copy()
        if d_pooled is not None:
            if cache.pooler is None:
                raise ValueError("d_pooled: this model has no pooler")
            dx[:, 0] += self.pooler.backward(tanh_backward(d_pooled, cache.pooler.tanh), cache.pooler.dense)
        # Walk down the layers; stop below the lowest module that still trains.
        lowest = 0 if _trains(self.embeddings) else next(
            (i for i, layer in enumerate(self.layers) if _trains(layer)), len(self.layers)
        )  # fmt: skip
        for i in range(len(self.layers) - 1, lowest - 1, -1):
            dx = self.layers[i].backward(dx, cache.layers[i])
        if lowest > 0 or not _trains(self.embeddings):
            return None
        self.embeddings.backward(dx, cache.embeddings)
        return dx


# ---------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class MaskedLMCache:
    bert: BertCache
    dense: LinearCache  # last hidden state (B, S, C) into ``mlm_dense``
    gelu: GeluCache  # (B, S, C)
    norm: LayerNormCache  # (B, S, C) ``mlm_norm``
    decoder: LinearCache  # logits = h @ word_embeddings^T + mlm_bias; holds h (B, S, C)


class BertForMaskedLM(Module):
    """BERT (no pooler) + the MLM head; the decoder matrix is the word-embedding table.

    Parameters: ``bert.*``, ``mlm_dense.*``, ``mlm_norm.*``, ``mlm_bias`` (V,).
    """

    def __init__(self, config: BertConfig, dtype: np.dtype | type = np.float64, rng=None) -> None:
        super().__init__()
        rng = check_rng(rng)
        self.config = config
        self.dtype = check_module_dtype(dtype)
        C = config.hidden_size
        self.bert = BertModel(config, dtype, rng, add_pooler=False)
        self.mlm_dense = Linear(C, C, dtype=dtype, rng=rng)
        self.mlm_norm = LayerNorm(C, config.layer_norm_eps, dtype=dtype)
        self._init_parameters(mlm_bias=np.zeros(config.vocab_size, dtype=self.dtype))
        init_bert_weights(self.mlm_dense, rng, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, rng=None, dropout_masks=None):
        """-> logits (B, S, V) and the cache. Score them with ``cross_entropy_forward(logits, labels)``:
        labels are :data:`IGNORE_INDEX` wherever no token was selected (see :func:`mask_tokens`)."""
        masks = DropoutMasks(rng, dropout_masks)
        out, c_bert = self.bert.forward(input_ids, attention_mask, token_type_ids, masks=masks.child("bert"))
        z, c_dense = self.mlm_dense.forward(out.last_hidden_state)  # (B, S, C)
        a, c_gelu = gelu_forward(z, "none")
        h, c_norm = self.mlm_norm.forward(a)
        logits, c_dec = linear_forward(h, self.bert.embeddings.word_embeddings.weight, self.mlm_bias)  # (B, S, V)
        return logits, MaskedLMCache(bert=c_bert, dense=c_dense, gelu=c_gelu, norm=c_norm, decoder=c_dec)

    def backward(self, dlogits: np.ndarray, cache: MaskedLMCache) -> None:
        dh, dweight, dbias = linear_backward(dlogits, cache.decoder)
        self.bert.embeddings.word_embeddings.accumulate_grad("weight", dweight)  # the tied table, use 1 of 2
        self.accumulate_grad("mlm_bias", dbias)
        dz = gelu_backward(self.mlm_norm.backward(dh, cache.norm), cache.gelu)
        self.bert.backward(self.mlm_dense.backward(dz, cache.dense), None, cache.bert)


@dataclass(frozen=True)
class SequenceClassificationCache:
    bert: BertCache
    drop: DropoutCache  # (B, C) keep-mask on the pooled output
    classifier: LinearCache  # (B, C) into ``classifier``


class BertForSequenceClassification(Module):
    """BERT + pooler + ``classifier(dropout(pooled))`` -> logits (B, K).

    Parameters: ``bert.*`` and ``classifier.weight`` / ``classifier.bias``.
    """

    def __init__(self, config: BertConfig, num_labels: int, dtype: np.dtype | type = np.float64, rng=None) -> None:
        super().__init__()
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2:
            raise ValueError(f"num_labels: expected an int >= 2, got {num_labels!r}")
        rng = check_rng(rng)
        self.config = config
        self.num_labels = num_labels
        self.dtype = check_module_dtype(dtype)
        self.bert = BertModel(config, dtype, rng, add_pooler=True)
        self.classifier = Linear(config.hidden_size, num_labels, dtype=dtype, rng=rng)
        init_bert_weights(self.classifier, rng, config.initializer_range)  # a new head: N(0, 0.02^2), bias 0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, rng=None, dropout_masks=None):
        masks = DropoutMasks(rng, dropout_masks)
        out, c_bert = self.bert.forward(input_ids, attention_mask, token_type_ids, masks=masks.child("bert"))
        x, c_drop = masks.drop(out.pooler_output, self.config.dropout, "dropout", self.training)
        logits, c_cls = self.classifier.forward(x)  # (B, K)
        return logits, SequenceClassificationCache(bert=c_bert, drop=c_drop, classifier=c_cls)

    def backward(self, dlogits: np.ndarray, cache: SequenceClassificationCache) -> None:
        dpooled = dropout_backward(self.classifier.backward(dlogits, cache.classifier), cache.drop)
        if _trains(self.bert):
            self.bert.backward(None, dpooled, cache.bert)


# ---------------------------------------------------------------------------- MLM masking


def mask_tokens(
    input_ids: np.ndarray,
    rng: np.random.Generator,
    mask_id: int,
    vocab_size: int,
    special_ids: tuple[int, ...] = (),
    select_prob: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-LM corruption: returns ``(corrupted_ids, labels)``.

    Each token that is not special is selected with probability ``select_prob``
    (independently, so 15 % on average). A selected token becomes ``mask_id`` with
    probability 0.8, a random non-special token with 0.1, and stays as it is with
    0.1. ``labels`` holds the original id at selected positions and
    :data:`IGNORE_INDEX` everywhere else, so the loss is taken on the selected
    positions only — including those left unchanged, which is what forces the model
    to keep a good representation of every input token.
    """
    check_int_array("input_ids", input_ids)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if not 0.0 < select_prob < 1.0:
        raise ValueError(f"select_prob: expected a probability in (0, 1), got {select_prob!r}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id: expected an id in [0, {vocab_size}), got {mask_id}")
    special = np.isin(input_ids, np.asarray(special_ids, dtype=np.int64))
    selected = (rng.random(input_ids.shape) < select_prob) & ~special
    action = rng.random(input_ids.shape)  # < 0.8: [MASK]; 0.8 .. 0.9: random token; >= 0.9: unchanged
    ordinary = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids, dtype=np.int64))
    random_tokens = ordinary[rng.integers(0, ordinary.size, size=input_ids.shape)]
    corrupted = input_ids.copy()
    corrupted[selected & (action < 0.8)] = mask_id
    to_random = selected & (action >= 0.8) & (action < 0.9)
    corrupted[to_random] = random_tokens[to_random]
    labels = np.where(selected, input_ids, IGNORE_INDEX)
    return corrupted, labels
