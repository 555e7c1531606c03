r"""CLIP: a text encoder and an image encoder trained against each other, forward and backward by hand.

Shape legend: ``B`` images, ``Bt`` texts (``= B`` for the loss: pair ``i`` is image ``i`` with text ``i``),
``T`` text length, ``V`` vocabulary, ``Ct`` / ``Cv`` the widths of the two encoders, ``Cin`` image
channels, ``I`` image size, ``P`` patch size, ``N`` patches, ``L = N + 1`` image positions,
``E`` the shared embedding width (``projection_dim``).

The network, read top to bottom (our parameter names; Hugging Face's are in
:mod:`numpy_transformer.applications.clip_weights`)::

    text_model:
      x      = tok_embed[ids] + pos_embed[0..T-1]           (Bt, T, Ct)
      x      = layers.l(x, causal mask)   l = 0 .. n-1     pre-LN blocks with QuickGELU
      y      = final_norm(x)                                (Bt, T, Ct)   last_hidden_state
      pooled = y[b, eot_b],  eot_b = argmax_t ids[b, t]     (Bt, Ct)      the end-of-text token's state
    vision_model:
      z      = pre_norm([class_embedding; patch_embed(pixels)] + pos_embed[0..L-1])   (B, L, Cv)
      z      = layers.l(z)                                  pre-LN blocks with QuickGELU, no mask
      pooled = post_norm(z[:, 0])                           (B, Cv)       last_hidden_state is z itself
    text_features  = text_projection(text pooled)           (Bt, E)       no bias
    image_features = visual_projection(image pooled)        (B, E)        no bias
    logits_per_image = exp(logit_scale) norm(image_features) norm(text_features)^T   (B, Bt)
    logits_per_text  = logits_per_image^T                   (Bt, B)
    loss = (CE(logits_per_image, arange) + CE(logits_per_text, arange)) / 2

What differs from our GPT and ViT:

* **Pooling at the end-of-text token.** The text is read causally, so only the last real token
  has seen the whole caption. CLIP's tokenizer gives ``<|endoftext|>`` the largest id of the
  vocabulary, so its position in each row is ``argmax(ids)`` (the first one, if it repeats):
  :func:`eot_positions`. Padding after it changes nothing (the causal mask hides it from the
  end-of-text position), so the text encoder needs no padding mask.
* **The image side** is a ViT with a bias-free patch convolution, a LayerNorm *before* the blocks
  (``pre_norm``, HF's ``pre_layrnorm``) and the final LayerNorm on the class token only
  (``post_norm``).
* **One loss, two encoders.** The gradient of the loss reaches both projections through the L2
  normalisation and meets nowhere else: the two towers share no parameter, only ``logit_scale``.

There is no dropout (CLIP trains without; HF's ``attention_dropout`` defaults to 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from ..functional.checks import check_float_array, check_rng, check_token_ids
from ..functional.clip_loss import (
    ClipLossCache,
    ContrastiveLogitsCache,
    clip_loss_dlogits,
    clip_loss_forward,
    contrastive_logits_backward,
    contrastive_logits_forward,
)
from ..functional.embedding import EmbeddingCache
from ..functional.layer_norm import LayerNormCache
from ..functional.linear import LinearCache
from ..functional.masks import causal_mask
from ..functional.pooling import l2_normalize_backward
from ..modules.base import Module, ModuleList, check_module_dtype
from ..modules.conv import PatchEmbedding, PatchEmbeddingCache
from ..modules.layers import Embedding, LayerNorm, Linear
from ..modules.transformer_layers import EncoderLayer, EncoderLayerCache

# OpenCLIP keeps exp(logit_scale) <= 100: the log-scale is clamped to [0, ln 100] after each step.
LOGIT_SCALE_MAX = math.log(100.0)


def eot_positions(input_ids: np.ndarray) -> np.ndarray:
    """(Bt, T) token ids -> (Bt,) the position of each row's end-of-text token: its largest id (first if repeated).

    CLIP's convention: ``<|endoftext|>`` is the last id of the vocabulary, so no other token of a
    row outranks it (``np.argmax`` returns the first of equal maxima, as ``torch.argmax`` does).
    """
    return np.argmax(input_ids, axis=-1)


def _init_weights(module: Module, rng: np.random.Generator, std: float) -> None:
    """Every Linear, Embedding and patch weight ~ N(0, std^2), biases 0; LayerNorms stay (1, 0)."""
    for m in module.modules():
        if isinstance(m, (Linear, Embedding, PatchEmbedding)):
            m.weight[...] = rng.normal(0.0, std, m.weight.shape)
            if getattr(m, "bias", None) is not None:
                m.bias[...] = 0


def _blocks(config: CLIPTextConfig | CLIPVisionConfig, dtype, rng) -> ModuleList:
    """The pre-LN blocks of either tower: EncoderLayer(norm_first=True), no dropout anywhere."""
    c = config
    block = dict(
        norm_first=True, layer_norm_eps=c.layer_norm_eps, dtype=dtype, rng=rng, ff_dropout=0.0, attention=c.attention
    )
    return ModuleList(
        [EncoderLayer(c.d_model, c.n_heads, c.d_ff, 0.0, c.activation, **block) for _ in range(c.n_layers)]
    )


def _check_upstream(name: str, grad: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if grad is not None:
        check_float_array(name, grad)
        if grad.shape != shape or grad.dtype != dtype:
            raise ValueError(f"{name}: expected {dtype} of shape {shape}, got {grad.dtype} {grad.shape}")


@dataclass(frozen=True)
class CLIPEncoderOutput:
    last_hidden_state: np.ndarray  # (B, T, C) text after final_norm; (B, L, C) image before post_norm
    pooler_output: np.ndarray  # (B, C): the end-of-text token's state, or the class token after post_norm


# ---------------------------------------------------------------------------- the text encoder


@dataclass(frozen=True)
class CLIPTextCache:
    tok_embed: EmbeddingCache  # ids (Bt, T)
    pos_embed: EmbeddingCache  # positions (1, T)
    layers: tuple[EncoderLayerCache, ...]  # one per layer, each over (Bt, T, Ct)
    final_norm: LayerNormCache  # (Bt, T, Ct)
    eot: np.ndarray  # (Bt,) int: where each row was pooled
    hidden_shape: tuple[int, int, int]  # (Bt, T, Ct)


class CLIPTextTransformer(Module):
    """CLIP's text encoder (HF's ``CLIPTextTransformer``): ``tok_embed``, ``pos_embed``, ``layers``, ``final_norm``."""

    def __init__(
        self, config: CLIPTextConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, CLIPTextConfig):
            raise TypeError(f"config: expected a CLIPTextConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        self.tok_embed = Embedding(c.vocab_size, c.d_model, dtype=dtype, rng=rng)
        self.pos_embed = Embedding(c.max_len, c.d_model, dtype=dtype, rng=rng)
        self.layers = _blocks(c, dtype, rng)
        self.final_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    def forward(self, input_ids: np.ndarray) -> tuple[CLIPEncoderOutput, CLIPTextCache]:
        """``input_ids`` (Bt, T) -> every position's final state (Bt, T, Ct) and the end-of-text state (Bt, Ct)."""
        ids = check_token_ids("input_ids", input_ids, self.config.vocab_size, self.config.max_len)
        Bt, T = ids.shape
        e, c_tok = self.tok_embed.forward(ids)  # (Bt, T, Ct)
        p, c_pos = self.pos_embed.forward(np.arange(T)[None, :])  # (1, T, Ct), broadcast over the batch
        x = e + p
        mask = causal_mask(T)[None, None]  # (1, 1, T, T): query t sees keys 0..t
        layer_caches = []
        for layer in self.layers:
            x, c_layer = layer.forward(x, mask)  # (Bt, T, Ct)
            layer_caches.append(c_layer)
        y, c_norm = self.final_norm.forward(x)  # (Bt, T, Ct)
        eot = eot_positions(ids)  # (Bt,)
        pooled = y[np.arange(Bt), eot]  # (Bt, Ct): one row per caption
        cache = CLIPTextCache(
            tok_embed=c_tok, pos_embed=c_pos, layers=tuple(layer_caches), final_norm=c_norm, eot=eot,
            hidden_shape=y.shape,
        )  # fmt: skip
        return CLIPEncoderOutput(y, pooled), cache

    def backward(self, d_hidden: np.ndarray | None, d_pooled: np.ndarray | None, cache: CLIPTextCache) -> None:
        r"""Accumulate every parameter gradient from ``d_hidden`` (Bt, T, Ct) and/or ``d_pooled`` (Bt, Ct).

        .. math::
            \text{pooled}_b = y_{b, e_b} \Rightarrow dy_{b, e_b} \mathrel{+}= d\text{pooled}_b

            x_0 = W[\text{ids}] + P[0..T-1] \Rightarrow
            dW[\text{ids}_{bt}] \mathrel{+}= dx_{0,bt},\quad dP[t] \mathrel{+}= \textstyle\sum_b dx_{0,bt}

        Token ids have no gradient, so nothing is returned.
        """
        Bt, T, C = cache.hidden_shape
        _check_upstream("d_hidden", d_hidden, (Bt, T, C), self.dtype)
        _check_upstream("d_pooled", d_pooled, (Bt, C), self.dtype)
        dy = np.zeros((Bt, T, C), dtype=self.dtype) if d_hidden is None else d_hidden.copy()
        if d_pooled is not None:
            # pooled = y[arange(Bt), eot]: one position per row receives the gradient
            dy[np.arange(Bt), cache.eot] += d_pooled
        # y = final_norm(x_n)
        dx = self.final_norm.backward(dy, cache.final_norm)  # (Bt, T, Ct)
        # x_{i+1} = layers.i(x_i)
        for layer, c_layer in zip(reversed(list(self.layers)), reversed(cache.layers), strict=True):
            dx = layer.backward(dx, c_layer)
        # x_0 = tok_embed[ids] + pos_embed[0..T-1]
        self.tok_embed.backward(dx, cache.tok_embed)
        self.pos_embed.backward(dx.sum(axis=0, keepdims=True), cache.pos_embed)  # (1, T, Ct): broadcast over Bt


# ---------------------------------------------------------------------------- the image encoder


@dataclass(frozen=True)
class CLIPVisionCache:
    patch_embed: PatchEmbeddingCache  # the unfolded patches and the (g, g) grid
    pos_embed: EmbeddingCache  # positions (1, L)
    pre_norm: LayerNormCache  # (B, L, Cv)
    layers: tuple[EncoderLayerCache, ...]  # one per layer, each over (B, L, Cv)
    post_norm: LayerNormCache  # (B, Cv) the class token's row
    hidden_shape: tuple[int, int, int]  # (B, L, Cv)


def check_clip_pixel_values(pixel_values: object, config: CLIPVisionConfig, dtype: np.dtype) -> np.ndarray:
    """``pixel_values`` must be a float array (B, num_channels, image_size, image_size) of the model's dtype."""
    c = config
    check_float_array("pixel_values", pixel_values)
    if pixel_values.dtype != dtype:
        raise TypeError(f"pixel_values: expected dtype {dtype} (the model's dtype), got {pixel_values.dtype}")
    expected = (c.num_channels, c.image_size, c.image_size)
    if pixel_values.ndim != 4 or pixel_values.shape[0] < 1 or pixel_values.shape[1:] != expected:
        raise ValueError(f"pixel_values: expected shape (B, {', '.join(map(str, expected))}), got {pixel_values.shape}")
    return pixel_values


class CLIPVisionTransformer(Module):
    """CLIP's image encoder (HF's ``CLIPVisionTransformer``).

    Parameters: ``class_embedding`` (Cv,), ``patch_embed.weight`` (Cv, Cin, P, P), ``pos_embed.weight`` (L, Cv),
    ``pre_norm.*``, ``layers.i.*``, ``post_norm.*``.
    """

    def __init__(
        self, config: CLIPVisionConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, CLIPVisionConfig):
            raise TypeError(f"config: expected a CLIPVisionConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        self._init_parameters(class_embedding=rng.normal(0.0, c.d_model**-0.5, (c.d_model,)).astype(self.dtype))
        self.patch_embed = PatchEmbedding(c.num_channels, c.d_model, c.patch_size, dtype=dtype, rng=rng, bias=False)
        self.pos_embed = Embedding(c.num_patches + 1, c.d_model, dtype=dtype, rng=rng)
        self.pre_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.layers = _blocks(c, dtype, rng)
        self.post_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)

    def forward(self, pixel_values: np.ndarray) -> tuple[CLIPEncoderOutput, CLIPVisionCache]:
        """``pixel_values`` (B, Cin, I, I) -> the blocks' output (B, L, Cv) and the normalised class token (B, Cv)."""
        x = check_clip_pixel_values(pixel_values, self.config, self.dtype)
        tokens, c_patch = self.patch_embed.forward(x)  # (B, N, Cv)
        B, N, C = tokens.shape
        cls = np.broadcast_to(self.class_embedding, (B, 1, C))  # the same learned vector in front of every image
        p, c_pos = self.pos_embed.forward(np.arange(N + 1)[None, :])  # (1, L, Cv)
        z, c_pre = self.pre_norm.forward(np.concatenate([cls, tokens], axis=1) + p)  # (B, L, Cv)
        layer_caches = []
        for layer in self.layers:
            z, c_layer = layer.forward(z)  # (B, L, Cv): every patch sees every patch
            layer_caches.append(c_layer)
        pooled, c_post = self.post_norm.forward(z[:, 0])  # (B, Cv): the class token's row only
        cache = CLIPVisionCache(
            patch_embed=c_patch, pos_embed=c_pos, pre_norm=c_pre, layers=tuple(layer_caches), post_norm=c_post,
            hidden_shape=(B, N + 1, C),
        )  # fmt: skip
        return CLIPEncoderOutput(z, pooled), cache

    def backward(self, d_hidden: np.ndarray | None, d_pooled: np.ndarray | None, cache: CLIPVisionCache) -> np.ndarray:
        r"""Accumulate every parameter gradient; return the gradient of ``pixel_values`` (B, Cin, I, I).

        .. math::
            \text{pooled} = \mathrm{LN}_{post}(z_{n,:,0})
            \Rightarrow dz_{n,:,0} \mathrel{+}= \mathrm{LN}_{post}'(d\text{pooled})

            z_0 = \mathrm{LN}_{pre}([c; t] + P) \Rightarrow
            da = \mathrm{LN}_{pre}'(dz_0),\quad dP = \textstyle\sum_b da_b,\quad
            dc = \textstyle\sum_b da_{b,0},\quad dt = da_{:,1:}
        """
        B, L, C = cache.hidden_shape
        _check_upstream("d_hidden", d_hidden, (B, L, C), self.dtype)
        _check_upstream("d_pooled", d_pooled, (B, C), self.dtype)
        dz = np.zeros((B, L, C), dtype=self.dtype) if d_hidden is None else d_hidden.copy()
        if d_pooled is not None:
            # pooled = post_norm(z[:, 0])
            dz[:, 0] += self.post_norm.backward(d_pooled, cache.post_norm)
        # z_{i+1} = layers.i(z_i)
        for layer, c_layer in zip(reversed(list(self.layers)), reversed(cache.layers), strict=True):
            dz = layer.backward(dz, c_layer)
        # z_0 = pre_norm([class_embedding; tokens] + pos_embed[0..L-1])
        da = self.pre_norm.backward(dz, cache.pre_norm)  # (B, L, Cv)
        self.pos_embed.backward(da.sum(axis=0, keepdims=True), cache.pos_embed)  # (1, L, Cv): broadcast over B
        self.accumulate_grad("class_embedding", da[:, 0].sum(axis=0))  # (Cv,): row 0 of every image
        return self.patch_embed.backward(np.ascontiguousarray(da[:, 1:]), cache.patch_embed)


# ---------------------------------------------------------------------------- the joint model


@dataclass(frozen=True)
class CLIPOutput:
    logits_per_image: np.ndarray  # (B, Bt)
    logits_per_text: np.ndarray  # (Bt, B), the transpose
    text_embeds: np.ndarray  # (Bt, E) the projected text features, L2-normalised (as HF's CLIPOutput)
    image_embeds: np.ndarray  # (B, E) the projected image features, L2-normalised
    loss: np.ndarray | None  # () the symmetric contrastive loss, with return_loss
    text_model_output: CLIPEncoderOutput
    vision_model_output: CLIPEncoderOutput


@dataclass(frozen=True)
class CLIPCache:
    text: CLIPTextCache
    vision: CLIPVisionCache
    text_projection: LinearCache  # (Bt, Ct) -> (Bt, E)
    visual_projection: LinearCache  # (B, Cv) -> (B, E)
    logits: ContrastiveLogitsCache  # the normalisations and the (B, Bt) logit matrix
    loss: ClipLossCache | None  # with return_loss (its ``logits`` is ``logits`` above)


class CLIPModel(Module):
    """CLIP (HF's ``CLIPModel``): both encoders, their bias-free projections and ``logit_scale``.

    Parameters: ``text_model.*``, ``vision_model.*``, ``text_projection.weight`` (E, Ct),
    ``visual_projection.weight`` (E, Cv) and ``logit_scale`` (a 0-d array, ``ln(1/0.07)`` at first).
    """

    def __init__(
        self, config: CLIPConfig, dtype: np.dtype | type = np.float64, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, CLIPConfig):
            raise TypeError(f"config: expected a CLIPConfig, got {type(config).__name__}")
        rng = check_rng(rng)
        self.config = c = config
        self.dtype = check_module_dtype(dtype)
        self._init_parameters(logit_scale=np.asarray(c.logit_scale_init, dtype=self.dtype))
        self.text_model = CLIPTextTransformer(c.text, dtype, rng)
        self.vision_model = CLIPVisionTransformer(c.vision, dtype, rng)
        self.text_projection = Linear(c.text.d_model, c.projection_dim, bias=False, dtype=dtype, rng=rng)
        self.visual_projection = Linear(c.vision.d_model, c.projection_dim, bias=False, dtype=dtype, rng=rng)
        _init_weights(self, rng, c.initializer_range)

    def forward(
        self, input_ids: np.ndarray, pixel_values: np.ndarray, return_loss: bool = False
    ) -> tuple[CLIPOutput, CLIPCache]:
        """Captions (Bt, T) and images (B, Cin, I, I) -> both logit matrices, both embeddings, (the loss)."""
        text_out, c_text = self.text_model.forward(input_ids)
        vision_out, c_vision = self.vision_model.forward(pixel_values)
        text_features, c_tproj = self.text_projection.forward(text_out.pooler_output)  # (Bt, E)
        image_features, c_vproj = self.visual_projection.forward(vision_out.pooler_output)  # (B, E)
        loss, c_loss = None, None
        if return_loss:
            loss, c_loss = clip_loss_forward(image_features, text_features, self.logit_scale)
            c_logits = c_loss.logits
        else:
            _, c_logits = contrastive_logits_forward(image_features, text_features, self.logit_scale)
        logits = c_logits.logits_per_image  # (B, Bt)
        out = CLIPOutput(
            logits_per_image=logits, logits_per_text=logits.T, text_embeds=c_logits.text_norm.y,
            image_embeds=c_logits.image_norm.y, loss=loss, text_model_output=text_out, vision_model_output=vision_out,
        )  # fmt: skip
        cache = CLIPCache(
            text=c_text, vision=c_vision, text_projection=c_tproj, visual_projection=c_vproj, logits=c_logits,
            loss=c_loss,
        )  # fmt: skip
        return out, cache

    def backward(
        self,
        cache: CLIPCache,
        dloss: float | np.ndarray | None = None,
        d_logits_per_image: np.ndarray | None = None,
        d_logits_per_text: np.ndarray | None = None,
        d_image_embeds: np.ndarray | None = None,
        d_text_embeds: np.ndarray | None = None,
    ) -> np.ndarray:
        r"""Accumulate every parameter gradient from any of the outputs' upstream gradients; return d pixel_values.

        All gradients meet first on the logit matrix :math:`L` (B, Bt) and on the unit rows :math:`u, v`:

        .. math::
            G = dL_{img} + dL_{txt}^T
                + d\ell\,\tfrac12\Big(\tfrac{P^{row} - 1}{B} + \big(\tfrac{P^{col} - 1}{B}\big)^T\Big),
            \qquad d\,\mathrm{logit\_scale} = \textstyle\sum_{ij} G_{ij} L_{ij},

        then :math:`du = e^{s} G v + d u_{out}`, :math:`dv = e^{s} G^T u + d v_{out}`, each through its L2
        normalisation, its projection and its encoder. The two towers meet only here.
        """
        c = cache
        B, Bt = c.logits.logits_per_image.shape
        if dloss is None and all(g is None for g in (d_logits_per_image, d_logits_per_text)):
            G = None
        else:
            G = np.zeros((B, Bt), dtype=self.dtype)
        if dloss is not None:
            if c.loss is None:
                raise ValueError("dloss: the forward had no return_loss=True, so there is no loss")
            G += clip_loss_dlogits(dloss, c.loss)  # (B, B)
        _check_upstream("d_logits_per_image", d_logits_per_image, (B, Bt), self.dtype)
        _check_upstream("d_logits_per_text", d_logits_per_text, (Bt, B), self.dtype)
        _check_upstream("d_image_embeds", d_image_embeds, c.logits.image_norm.y.shape, self.dtype)
        _check_upstream("d_text_embeds", d_text_embeds, c.logits.text_norm.y.shape, self.dtype)
        if d_logits_per_image is not None:
            G += d_logits_per_image
        if d_logits_per_text is not None:
            G += d_logits_per_text.T  # logits_per_text = logits_per_image^T
        d_image_features = np.zeros(c.visual_projection.x.shape[:-1] + (self.config.projection_dim,), self.dtype)
        d_text_features = np.zeros(c.text_projection.x.shape[:-1] + (self.config.projection_dim,), self.dtype)
        if G is not None:
            # logits_per_image = exp(logit_scale) norm(image_features) norm(text_features)^T
            d_image_features, d_text_features, dscale = contrastive_logits_backward(G, c.logits)
            self.accumulate_grad("logit_scale", dscale)
        # image_embeds = norm(image_features), text_embeds = norm(text_features): the same normalisations
        if d_image_embeds is not None:
            d_image_features = d_image_features + l2_normalize_backward(d_image_embeds, c.logits.image_norm)
        if d_text_embeds is not None:
            d_text_features = d_text_features + l2_normalize_backward(d_text_embeds, c.logits.text_norm)
        # text_features = text_projection(text pooled), image_features = visual_projection(image pooled)
        d_text_pooled = self.text_projection.backward(d_text_features, c.text_projection)  # (Bt, Ct)
        d_image_pooled = self.visual_projection.backward(d_image_features, c.visual_projection)  # (B, Cv)
        self.text_model.backward(None, d_text_pooled, c.text)
        return self.vision_model.backward(None, d_image_pooled, c.vision)


def clamp_logit_scale(model: CLIPModel, low: float = 0.0, high: float = LOGIT_SCALE_MAX) -> None:
    """After an optimizer step, clamp ``model.logit_scale`` into ``[low, high]`` in place (OpenCLIP's rule).

    The clamp acts on the parameter, not inside the forward: the next forward's gradient of
    ``logit_scale`` stays the true one, so a scale pushed to the bound can come back. A clamp inside
    the forward (``exp(clip(s, low, high))``) would have derivative 0 while ``s`` is outside the
    range and leave it stuck there (``parity_tests/test_clip.py`` shows both).
    """
    if not isinstance(model, CLIPModel):
        raise TypeError(f"model: expected a CLIPModel, got {type(model).__name__}")
    if not low <= high:
        raise ValueError(f"low, high: expected low <= high, got {low} and {high}")
    np.clip(model.logit_scale, low, high, out=model.logit_scale)
