r"""The Vision Transformer (ViT): an image read as a sequence of patches, forward and backward by hand.

Shape legend: ``B`` batch, ``Cin`` image channels, ``I`` image size (``H = W = I`` pixels),
``P`` patch size, ``g = I // P`` patches along a side, ``N = g * g`` patches, ``L = N + 1``
positions (the class token first), ``C`` d_model, ``H`` heads, ``F`` feed-forward width,
``K`` classes.

The network, read top to bottom (our parameter names; Hugging Face's are in
:mod:`numpy_transformer.applications.vit_weights`)::

    tokens = patch_embed(pixels)                         (B, N, C)   conv2d, kernel = stride = P
    z_0    = drop([cls_token; tokens] + pos_embed)       (B, L, C)   cls_token (1, 1, C), pos_embed (1, L, C)
    z_l    = layers.l(z_{l-1})      for l = 0 .. n-1     pre-LN blocks with GELU:
                 h = z + drop1(SA(norm1(z)))
                 z = h + drop2(ff.linear2(gelu(ff.linear1(norm2(h)))))
    y      = norm(z_n)                                   (B, L, C)   last_hidden_state
    pooled = tanh(pooler(y[:, 0]))                       (B, C)      ViT's pooler (optional)

    ViTForImageClassification:  logits = classifier(y[:, 0])   (B, K)   (no pooler, as Hugging Face)

Three things make this a model of *images*:

* **Patches are tokens.** A convolution whose kernel equals its stride cuts the image into
  non-overlapping ``P x P`` patches and applies one linear map to each: it *is*
  "flatten every patch, then a linear layer" (``parity_tests/test_vit.py`` proves it). The
  ``g x g`` grid of patch vectors is read row by row, so patch ``n = a g + b`` sits at row
  ``a``, column ``b`` of the grid.
* **The class token.** A learned vector placed in front of the patches. It carries no pixels;
  through attention it gathers what the classifier needs, and the classifier reads only its
  row. Its gradient is the sum over the batch of the gradient arriving at row 0 of ``z_0``.
* **Learned positions.** Attention by itself does not know which patch is where (it is
  permutation equivariant): ``pos_embed`` adds one learned vector per position, and its
  gradient is that of ``z_0`` summed over the batch (it was broadcast over it).

Dropout sites, named for :class:`DropoutMasks` (so the twin can replay them): ``embed_dropout``
and, per layer ``i``, ``layers.i.self_attn`` (attention probabilities), ``layers.i.dropout1`` and
``layers.i.dropout2`` (the residual branches), the sites of :class:`EncoderLayer`. As in
Hugging Face's ViT there is none inside the feed-forward (``ff_dropout=0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ViTConfig
from ..functional.activations import TanhCache, tanh_backward, tanh_forward
from ..functional.checks import check_float_array, check_int_array, check_rng
from ..functional.dropout import DropoutCache, dropout_backward
from ..functional.layer_norm import LayerNormCache
from ..functional.linear import LinearCache
from ..functional.softmax import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.conv import PatchEmbedding, PatchEmbeddingCache
from ..modules.dropout_masks import DropoutMasks
from ..modules.layers import LayerNorm, Linear
from ..modules.transformer_layers import EncoderLayer, EncoderLayerCache

# ---------------------------------------------------------------------------- inputs


def check_pixel_values(pixel_values: object, config: ViTConfig, dtype: np.dtype) -> np.ndarray:
    """``pixel_values`` must be a float array (B, num_channels, image_size, image_size) of the model's dtype."""
    c = config
    if not isinstance(pixel_values, np.ndarray):
        raise TypeError(f"pixel_values: expected a numpy.ndarray (B, C, H, W), got {type(pixel_values).__name__}")
    if pixel_values.dtype != dtype:
        raise TypeError(
            f"pixel_values: expected dtype {dtype} (the model's dtype), got {pixel_values.dtype}; convert explicitly"
        )
    expected = f"(B, {c.num_channels}, {c.image_size}, {c.image_size})"
    if pixel_values.ndim != 4 or pixel_values.shape[0] < 1:
        raise ValueError(
            f"pixel_values: expected shape (B, C, H, W) = {expected} with B >= 1, got {pixel_values.shape}"
        )
    _, channels, height, width = pixel_values.shape
    if channels != c.num_channels:
        raise ValueError(
            f"pixel_values: expected num_channels={c.num_channels} channels at axis 1, got shape {pixel_values.shape}"
        )
    if (height, width) != (c.image_size, c.image_size):
        raise ValueError(
            f"pixel_values: expected H = W = image_size={c.image_size} (the position table has one row per "
            f"patch of that image), got H, W = {height}, {width}"
        )
    return pixel_values


def check_labels(labels: object, batch: int, num_labels: int) -> np.ndarray:
    """``labels`` must be (B,) integer class ids in ``[0, num_labels)``."""
    check_int_array("labels", labels)
    if labels.shape != (batch,):
        raise ValueError(f"labels: expected shape ({batch},) (one class per image), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(f"labels: expected ids in [0, {num_labels}), got range [{labels.min()}, {labels.max()}]")
    return labels


def init_vit_weights(module: Module, rng: np.random.Generator, std: float) -> None:
    """Hugging Face's ViT initialisation, in place: every Linear and patch-embedding weight ~ N(0, std^2),
    biases 0, LayerNorms weight 1 and bias 0 (as built).

    (The class token and the position table are drawn by :class:`ViT` itself; HF draws them from a normal
    truncated at +-2, which for std 0.02 is a normal.)
    """
    for m in module.modules():
        if isinstance(m, (Linear, PatchEmbedding)):
            m.weight[...] = rng.normal(0.0, std, m.weight.shape)
            if m.bias is not None:
                m.bias[...] = 0


def drop_qkv_bias(layer: EncoderLayer, rng: np.random.Generator) -> None:
    """Give a layer's query, key and value projections no bias (HF's ``qkv_bias=False``); ``out_proj`` keeps its.

    Each projection is replaced by a bias-free :class:`Linear` holding the same weight, at the same
    place among the layer's children, so the parameter names stay ``self_attn.q_proj.weight`` ...
    """
    attn = layer.self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        new = Linear(old.in_features, old.out_features, bias=False, dtype=old.dtype, rng=rng)
        new.weight[...] = old.weight
        setattr(attn, name, new)


# ---------------------------------------------------------------------------- the patch embedding
# ``PatchEmbedding`` (a conv2d with kernel = stride = P, with a bias here) lives in ``modules/conv.py``,
# shared with CLIP's image tower (no bias there).


# ---------------------------------------------------------------------------- the encoder model


@dataclass(frozen=True)
class ViTOutput:
    last_hidden_state: np.ndarray  # (B, L, C), after the final LayerNorm
    pooler_output: np.ndarray | None  # (B, C), None without a pooler
    attentions: tuple[np.ndarray, ...] | None  # per layer (B, H, L, L), when asked for


@dataclass(frozen=True)
class ViTPoolerCache:
    dense: LinearCache  # the class token's final state (B, C) into ``pooler``
    tanh: TanhCache  # (B, C) the pooled output


@dataclass(frozen=True)
class ViTCache:
    patch_embed: PatchEmbeddingCache
    embed_dropout: DropoutCache  # (B, L, C) keep-mask on the embeddings
    layers: tuple[EncoderLayerCache, ...]  # one per layer, first to last, each over (B, L, C)
    norm: LayerNormCache  # (B, L, C) the final LayerNorm
    pooler: ViTPoolerCache | None  # None without a pooler
    hidden_shape: tuple[int, int, int]  # (B, L, C)
    dropout_masks: dict[str, np.ndarray]  # every mask used, by site name: replay them in the twin

    @property
    def attentions(self) -> tuple[np.ndarray, ...]:
        """One (B, H, L, L) array of attention probabilities per layer (before dropout)."""
        return tuple(c.sa.weights for c in self.layers)


class ViT(Module):
    """The ViT encoder (Hugging Face's ``ViTModel``): patch embedding, class token, positions, pre-LN layers,
    a final LayerNorm and (``add_pooling_layer``) the pooler.

    Parameters, named like the twin's state dict: ``cls_token`` (1, 1, C), ``pos_embed`` (1, L, C),
    ``patch_embed.weight`` (C, Cin, P, P), ``patch_embed.bias``, ``layers.0.self_attn.q_proj.weight``, ...,
    ``layers.0.norm1.weight``, ``layers.0.ff.linear1.weight``, ..., ``norm.weight``, ``norm.bias``,
    ``pooler.weight``, ``pooler.bias``.
    """

    def __init__(
        self,
        config: ViTConfig,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
        add_pooling_layer: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config: expected a ViTConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        std = c.initializer_range
        self._init_parameters(
            cls_token=rng.normal(0.0, std, (1, 1, c.d_model)).astype(self.dtype),
            pos_embed=rng.normal(0.0, std, (1, c.num_patches + 1, c.d_model)).astype(self.dtype),
        )
        self.patch_embed = PatchEmbedding(c.num_channels, c.d_model, c.patch_size, dtype=dtype, rng=rng, bias=True)
        block = dict(
            activation=c.activation, norm_first=True, layer_norm_eps=c.layer_norm_eps, dtype=dtype, rng=rng,
            ff_dropout=0.0,  # as HF's ViTMLP: no dropout between fc1 and fc2
            attention=c.attention,
        )  # fmt: skip
        self.layers = ModuleList(
            [EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, **block) for _ in range(c.n_layers)]
        )
        if not c.qkv_bias:
            for layer in self.layers:
                drop_qkv_bias(layer, rng)
        self.norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.pooler = Linear(c.d_model, c.d_model, dtype=dtype, rng=rng) if add_pooling_layer else None
        init_vit_weights(self, rng, std)

    def forward(
        self,
        pixel_values: np.ndarray,
        rng: np.random.Generator | None = None,
        dropout_masks: dict[str, np.ndarray] | None = None,
        output_attentions: bool = False,
        masks: DropoutMasks | None = None,
    ) -> tuple[ViTOutput, ViTCache]:
        """``pixel_values`` (B, Cin, I, I) -> ``last_hidden_state`` (B, L, C) and the pooled class token (B, C).

        ``output_attentions``: also return every layer's (B, H, L, L) attention probabilities (the
        cache holds them either way). Dropout masks come from ``rng`` or by name from
        ``dropout_masks`` (a head passes its own ``masks`` so that the names stay under ``vit.``).
        """
        x = check_pixel_values(pixel_values, self.config, self.dtype)
        masks = masks if masks is not None else DropoutMasks(rng, dropout_masks)
        tokens, c_patch = self.patch_embed.forward(x)  # (B, N, C)
        B, N, C = tokens.shape
        cls = np.broadcast_to(self.cls_token, (B, 1, C))  # the same learned vector in front of every image
        z = np.concatenate([cls, tokens], axis=1) + self.pos_embed  # (B, L, C); pos_embed broadcasts over B
        z, c_drop = masks.drop(z, self.config.dropout, "embed_dropout", self.training)
        layer_caches = []
        for i, layer in enumerate(self.layers):
            z, c_layer = layer.forward(z, None, masks.child(f"layers.{i}"))  # (B, L, C); no mask: all patches seen
            layer_caches.append(c_layer)
        y, c_norm = self.norm.forward(z)  # (B, L, C)
        pooled, c_pool = None, None
        if self.pooler is not None:
            u, c_dense = self.pooler.forward(y[:, 0])  # (B, C): the class token's row only
            pooled, c_tanh = tanh_forward(u)
            c_pool = ViTPoolerCache(dense=c_dense, tanh=c_tanh)
        cache = ViTCache(
            patch_embed=c_patch,
            embed_dropout=c_drop,
            layers=tuple(layer_caches),
            norm=c_norm,
            pooler=c_pool,
            hidden_shape=(B, N + 1, C),
            dropout_masks=masks.used,
        )
        return ViTOutput(y, pooled, cache.attentions if output_attentions else None), cache

    def backward(self, d_hidden: np.ndarray | None, d_pooled: np.ndarray | None, cache: ViTCache) -> np.ndarray:
        r"""Accumulate every parameter gradient from ``d_hidden`` (B, L, C) and/or ``d_pooled`` (B, C).

        Returns the gradient of ``pixel_values`` (B, Cin, I, I). The forward read bottom-up:

        .. math::
            \text{pooled} = \tanh(W_p\, y_0 + b_p) \Rightarrow
            dy_0 \mathrel{+}= W_p^T\,(d\text{pooled} \odot (1 - \text{pooled}^2))

            z_0 = \text{drop}([c; t] + E) \Rightarrow
            dE = \textstyle\sum_b dz_{0,b},\quad dc = \textstyle\sum_b dz_{0,b,0},\quad dt = dz_{0,:,1:}

        where :math:`dz_0` has been through the dropout mask, :math:`c` is ``cls_token``,
        :math:`E` is ``pos_embed`` and :math:`t` the patch tokens, whose gradient goes back through
        the convolution (:func:`~numpy_transformer.functional.conv.conv2d_backward`).
        """
        if d_hidden is None and d_pooled is None:
            raise ValueError("d_hidden, d_pooled: expected at least one upstream gradient, got neither")
        B, L, C = cache.hidden_shape
        for name, grad, shape in (("d_hidden", d_hidden, (B, L, C)), ("d_pooled", d_pooled, (B, C))):
            if grad is not None:
                check_float_array(name, grad)
                if grad.shape != shape or grad.dtype != self.dtype:
                    raise ValueError(f"{name}: expected {self.dtype} of shape {shape}, got {grad.dtype} {grad.shape}")
        dy = np.zeros((B, L, C), dtype=self.dtype) if d_hidden is None else d_hidden.copy()
        if d_pooled is not None:
            if cache.pooler is None:
                raise ValueError("d_pooled: this model has no pooler (add_pooling_layer=False)")
            # pooled = tanh(pooler(y[:, 0])): only the class token's row receives this gradient
            dy[:, 0] += self.pooler.backward(tanh_backward(d_pooled, cache.pooler.tanh), cache.pooler.dense)
        # y = norm(z_n)
        dz = self.norm.backward(dy, cache.norm)  # (B, L, C)
        # z_{i+1} = layers.i(z_i)
        for layer, c_layer in zip(reversed(list(self.layers)), reversed(cache.layers), strict=True):
            dz = layer.backward(dz, c_layer)
        # z_0 = drop([cls; tokens] + pos_embed)
        dz0 = dropout_backward(dz, cache.embed_dropout)  # (B, L, C)
        self.accumulate_grad("pos_embed", dz0.sum(axis=0, keepdims=True))  # (1, L, C): broadcast over B
        self.accumulate_grad("cls_token", dz0[:, :1].sum(axis=0, keepdims=True))  # (1, 1, C): row 0, every image
        return self.patch_embed.backward(dz0[:, 1:], cache.patch_embed)  # (B, Cin, I, I)


# ---------------------------------------------------------------------------- the classifier


@dataclass(frozen=True)
class ViTClassifierOutput:
    logits: np.ndarray  # (B, K)
    loss: np.ndarray | None  # 0-d mean cross-entropy, when labels were given
    attentions: tuple[np.ndarray, ...] | None  # per layer (B, H, L, L), when asked for


@dataclass(frozen=True)
class ViTClassifierCache:
    vit: ViTCache
    classifier: LinearCache  # the class token's final state (B, C) into ``classifier``
    loss: CrossEntropyCache | None  # None without labels


class ViTForImageClassification(Module):
    """``logits = classifier(vit(pixels).last_hidden_state[:, 0])``: a linear head on the class token.

    As Hugging Face's ``ViTForImageClassification``: the encoder has no pooler and the head reads
    the class token's row after the final LayerNorm, without dropout. With ``labels`` the forward
    also returns the mean cross-entropy. Parameters: ``vit.*`` and ``classifier.weight`` / ``.bias``.
    """

    def __init__(
        self, config: ViTConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config: expected a ViTConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = config
        self.num_labels = config.num_labels
        self.dtype = check_module_dtype(dtype)
        self.vit = ViT(config, dtype, rng, add_pooling_layer=False)
        self.classifier = Linear(config.d_model, config.num_labels, dtype=dtype, rng=rng)
        init_vit_weights(self.classifier, rng, config.initializer_range)

    def forward(
        self,
        pixel_values: np.ndarray,
        labels: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        dropout_masks: dict[str, np.ndarray] | None = None,
        output_attentions: bool = False,
    ) -> tuple[ViTClassifierOutput, ViTClassifierCache]:
        """``pixel_values`` (B, Cin, I, I) -> logits (B, K); with ``labels`` (B,) also the mean cross-entropy."""
        masks = DropoutMasks(rng, dropout_masks)
        out, c_vit = self.vit.forward(pixel_values, output_attentions=output_attentions, masks=masks.child("vit"))
        logits, c_cls = self.classifier.forward(out.last_hidden_state[:, 0])  # (B, K)
        loss, c_loss = None, None
        if labels is not None:
            loss, c_loss = cross_entropy_forward(logits, check_labels(labels, logits.shape[0], self.num_labels))
        cache = ViTClassifierCache(vit=c_vit, classifier=c_cls, loss=c_loss)
        return ViTClassifierOutput(logits, loss, out.attentions), cache

    def backward(self, dlogits: np.ndarray | None, cache: ViTClassifierCache, dloss: float = 1.0) -> np.ndarray:
        r"""Accumulate every parameter gradient; return the gradient of ``pixel_values``.

        ``dlogits`` (B, K) is the upstream gradient of the logits; ``None`` means "of the loss"
        (the forward must have had ``labels``): :math:`d\text{logits} = d\text{loss}\,(p - \text{onehot}(y)) / B`.
        The head read only row 0, so only row 0 of ``last_hidden_state`` gets a gradient:

        .. math:: dy_{b,0} = W_{cls}^T\, d\text{logits}_b, \qquad dy_{b,l} = 0 \ (l \ge 1).
        """
        if dlogits is None:
            if cache.loss is None:
                raise ValueError("dlogits: expected an array (the forward had no labels, so there is no loss)")
            dlogits = cross_entropy_backward(np.asarray(dloss, dtype=self.dtype), cache.loss)
        check_float_array("dlogits", dlogits)
        B, L, C = cache.vit.hidden_shape
        if dlogits.shape != (B, self.num_labels) or dlogits.dtype != self.dtype:
            raise ValueError(
                f"dlogits: expected {self.dtype} of shape {(B, self.num_labels)} (those of the logits), "
                f"got {dlogits.dtype} {dlogits.shape}"
            )
        dy = np.zeros((B, L, C), dtype=self.dtype)
        dy[:, 0] = self.classifier.backward(dlogits, cache.classifier)  # (B, C) at the class token's row
        return self.vit.backward(dy, None, cache.vit)
