"""Our ``Transformer`` and its layers inside PyTorch's own ``nn.Transformer``, ``nn.Transformer*Layer``.

``BuiltinTransformer`` wraps ``nn.Transformer(batch_first=True)`` with the pieces it
does not have (embeddings scaled by sqrt(d_model), sinusoidal positions, the output
projection), so that a NumPy ``Transformer`` can be checked against PyTorch's module
itself. ``transformer_to_torch_builtin``, ``encoder_layer_to_torch_builtin`` and
``decoder_layer_to_torch_builtin`` copy the weights in (``to_builtin_state`` renames
them); ``builtin_grads_to_numpy_names`` maps a built-in's gradients back to our
parameter names, for these three and for ``nn.MultiheadAttention`` (built by
``bridge.mha_to_torch_builtin``).

Two differences in layout that the mapping handles:

* ``nn.MultiheadAttention`` packs q/k/v into ``in_proj_weight`` (3C, C); we keep
  ``q_proj``, ``k_proj``, ``v_proj``. Our ``cross_attn`` is its ``multihead_attn``;
  our ``ff.linear1`` is its ``linear1``.
* ``nn.Transformer`` always builds a final LayerNorm after the encoder and after the
  decoder (``encoder.norm``, ``decoder.norm``), even when ``norm_first=False``. Our
  post-LN stacks have none, so the converter removes them (sets them to ``None``).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import numpy_transformer as nt

from .bridge import state_dict_to_numpy, state_dict_to_torch, torch_dtype
from .functional import sinusoidal_positional_encoding

_QKV = ("q_proj", "k_proj", "v_proj")
# Our FeedForward's activation names -> what nn.Transformer*Layer takes (a name or a callable).
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}
_ATTN_NAMES = {"self_attn": "self_attn", "cross_attn": "multihead_attn"}


class BuiltinTransformer(nn.Module):
    def __init__(self, config: nt.TransformerConfig, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        c = self.config = config
        C = c.d_model
        self.src_embed = nn.Embedding(c.src_vocab_size, C, dtype=dtype)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, C, dtype=dtype)
        with warnings.catch_warnings():  # the nested-tensor fast path is off for norm_first; that is fine
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(
                d_model=C,
                nhead=c.n_heads,
                num_encoder_layers=c.n_encoder_layers,
                num_decoder_layers=c.n_decoder_layers,
                dim_feedforward=c.d_ff,
                dropout=c.dropout,
                activation=c.activation,
                layer_norm_eps=c.layer_norm_eps,
                batch_first=True,
                norm_first=c.norm_first,
                dtype=dtype,
            )
        if not c.norm_first:
            self.transformer.encoder.norm = None
            self.transformer.decoder.norm = None
        self.out_proj = None if c.tie_embeddings else nn.Linear(C, c.tgt_vocab_size, bias=False, dtype=dtype)
        pe = sinusoidal_positional_encoding(c.max_len, C, dtype=dtype)
        self.register_buffer("pe", pe, persistent=False)

    def _embed(self, embed: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        return embed(ids) * math.sqrt(self.config.d_model) + self.pe[: ids.shape[1]]

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        return self.transformer.encoder(
            self._embed(self.src_embed, src), src_key_padding_mask=src == self.config.pad_id
        )

    def decode_hidden(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        T = tgt.shape[1]
        blocked_future = torch.ones(T, T, dtype=torch.bool, device=tgt.device).triu(1)  # True = blocked
        return self.transformer.decoder(
            self._embed(self.tgt_embed, tgt),
            memory,
            tgt_mask=blocked_future,
            tgt_key_padding_mask=tgt == self.config.pad_id,
            memory_key_padding_mask=src == self.config.pad_id,
        )

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        h = self.decode_hidden(tgt, self.encode(src), src)
        weight = self.tgt_embed.weight if self.out_proj is None else self.out_proj.weight
        return h @ weight.T


# ---------------------------------------------------------------------------- names
# One function per level maps one of our parameter names to the built-in's, and to the block
# of a packed ``in_proj_*`` it fills (0, 1, 2 for q, k, v; ``None`` when it is not packed).


def _mha_name(name: str) -> tuple[str, int | None]:
    """``MultiHeadAttention`` -> ``nn.MultiheadAttention``: ``q_proj.weight`` is block 0 of ``in_proj_weight``."""
    parts = name.split(".")
    if parts[0] in _QKV:
        return f"in_proj_{parts[1]}", _QKV.index(parts[0])
    return name, None  # out_proj.weight, out_proj.bias


def _layer_name(name: str) -> tuple[str, int | None]:
    """``EncoderLayer`` / ``DecoderLayer`` -> ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``."""
    head, _, rest = name.partition(".")
    if head in _ATTN_NAMES:
        inner, block = _mha_name(rest)
        return f"{_ATTN_NAMES[head]}.{inner}", block
    if head == "ff":
        return rest, None  # ff.linear1.weight -> linear1.weight
    return name, None  # norm1.weight ...


def _transformer_name(name: str) -> tuple[str, int | None]:
    """``Transformer`` -> ``BuiltinTransformer`` (``nn.Transformer`` under ``transformer.``)."""
    parts = name.split(".")
    if parts[0] in ("encoder", "decoder") and parts[1] == "layers":
        inner, block = _layer_name(".".join(parts[3:]))
        return "transformer." + ".".join(parts[:3]) + "." + inner, block
    if parts[0] in ("encoder", "decoder"):
        return "transformer." + name, None  # the final norm of a pre-LN stack
    return name, None  # src_embed, tgt_embed, out_proj


def _name_map(module: nt.Module):
    if isinstance(module, nt.MultiHeadAttention):
        return _mha_name
    if isinstance(module, (nt.EncoderLayer, nt.DecoderLayer)):
        return _layer_name
    if isinstance(module, nt.Transformer):
        return _transformer_name
    raise TypeError(f"module: no built-in is mapped for {type(module).__name__}")


def to_builtin_state(module: nt.Module) -> dict[str, np.ndarray]:
    """``module``'s state dict under the built-in's keys, q/k/v packed into ``in_proj_*``."""
    name_of = _name_map(module)
    out: dict[str, np.ndarray] = {}
    packed: dict[str, dict[int, np.ndarray]] = {}
    for name, value in module.state_dict().items():
        target, block = name_of(name)
        if block is None:
            out[target] = value
        else:
            packed.setdefault(target, {})[block] = value
    for target, blocks in packed.items():
        out[target] = np.concatenate([blocks[i] for i in range(len(_QKV))])  # rows q, k, v
    return out


def builtin_grads_to_numpy_names(builtin: nn.Module, model: nt.Module) -> dict[str, np.ndarray]:
    """The gradients autograd left on ``builtin``, keyed by ``model``'s parameter names.

    ``model`` is a ``MultiHeadAttention``, an ``EncoderLayer`` / ``DecoderLayer`` or a
    ``Transformer``; ``builtin`` the module its converter built.
    """
    name_of = _name_map(model)
    grads = state_dict_to_numpy({n: p.grad for n, p in builtin.named_parameters() if p.grad is not None})
    out = {}
    for name, param in model.named_parameters():
        target, block = name_of(name)
        g = grads[target]
        if block is not None:
            rows = param.shape[0]  # C for a q/k/v weight (C, C) and bias (C,)
            g = g[block * rows : (block + 1) * rows]
        out[name] = g
    return out


def transformer_to_torch_builtin(model: nt.Transformer, device: str | torch.device = "cpu") -> BuiltinTransformer:
    """A ``BuiltinTransformer`` (``nn.Transformer`` inside) holding ``model``'s weights."""
    builtin = BuiltinTransformer(model.config, dtype=torch_dtype(model.dtype))
    builtin.load_state_dict(state_dict_to_torch(to_builtin_state(model)), strict=True)
    builtin.train(model.training)
    return builtin.to(device)


def _layer_kwargs(layer: nt.EncoderLayer | nt.DecoderLayer) -> dict:
    ln = layer.norm1
    return dict(
        d_model=layer.self_attn.d_model,
        nhead=layer.self_attn.n_heads,
        dim_feedforward=layer.ff.linear1.out_features,
        dropout=layer.p,
        activation=_ACTIVATIONS[layer.ff.activation],
        layer_norm_eps=ln.eps,
        batch_first=True,
        norm_first=layer.norm_first,
        dtype=torch_dtype(layer.dtype),
    )


def encoder_layer_to_torch_builtin(
    layer: nt.EncoderLayer, device: str | torch.device = "cpu"
) -> nn.TransformerEncoderLayer:
    """Our ``EncoderLayer`` as ``nn.TransformerEncoderLayer(batch_first=True)`` with the same weights.

    Its ``forward(src, src_mask)`` takes the mask as ``attn_mask`` does: ``True`` = blocked,
    ``(S, S)`` or ``(B * H, S, S)`` (``bridge.mask_to_attn_mask``).
    """
    if layer.ff.dropout.p != layer.p:
        raise ValueError(f"layer: nn.TransformerEncoderLayer has one dropout p, got {layer.p} and {layer.ff.dropout.p}")
    builtin = nn.TransformerEncoderLayer(**_layer_kwargs(layer))
    builtin.load_state_dict(state_dict_to_torch(to_builtin_state(layer)), strict=True)
    builtin.train(layer.training)
    return builtin.to(device)


def decoder_layer_to_torch_builtin(
    layer: nt.DecoderLayer, device: str | torch.device = "cpu"
) -> nn.TransformerDecoderLayer:
    """Our ``DecoderLayer`` as ``nn.TransformerDecoderLayer(batch_first=True)``: ``cross_attn`` is its
    ``multihead_attn``; masks as for :func:`encoder_layer_to_torch_builtin`."""
    builtin = nn.TransformerDecoderLayer(**_layer_kwargs(layer))
    builtin.load_state_dict(state_dict_to_torch(to_builtin_state(layer)), strict=True)
    builtin.train(layer.training)
    return builtin.to(device)
