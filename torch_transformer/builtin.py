"""Our ``Transformer``'s weights inside PyTorch's own ``torch.nn.Transformer``.

``BuiltinTransformer`` wraps ``nn.Transformer(batch_first=True)`` with the pieces it
does not have (embeddings scaled by sqrt(d_model), sinusoidal positions, the output
projection), so that a NumPy ``Transformer`` can be checked against PyTorch's module
itself. ``transformer_to_torch_builtin`` copies the weights in;
``builtin_grads_to_numpy_names`` maps its gradients back to our parameter names.

Two differences in layout that the mapping handles:

* ``nn.MultiheadAttention`` packs q/k/v into ``in_proj_weight`` (3C, C); we keep
  ``q_proj``, ``k_proj``, ``v_proj``. Our ``cross_attn`` is its ``multihead_attn``;
  our ``ff.linear1`` is its ``linear1``.
* ``nn.Transformer`` always builds a final LayerNorm after the encoder and after the
  decoder (``encoder.norm``, ``decoder.norm``), even when ``norm_first=False``. Our
  post-LN stacks have none, so the converter removes them (sets them to ``None``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

import numpy_transformer as nt

from .bridge import state_dict_to_numpy, state_dict_to_torch, torch_dtype
from .functional import sinusoidal_positional_encoding

_QKV = ("q_proj", "k_proj", "v_proj")
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


def _to_builtin_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our state dict -> BuiltinTransformer's keys (q/k/v packed)."""
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] in ("encoder", "decoder") and parts[1] == "layers":
            prefix = "transformer." + ".".join(parts[:3])
            rest = parts[3:]
            if rest[0] in _ATTN_NAMES and rest[1] in _QKV:
                continue  # packed below
            if rest[0] in _ATTN_NAMES:
                rest = [_ATTN_NAMES[rest[0]], *rest[1:]]
            if rest[0] == "ff":
                rest = rest[1:]  # ff.linear1.weight -> linear1.weight
            out[prefix + "." + ".".join(rest)] = value
        elif parts[0] in ("encoder", "decoder"):
            out["transformer." + name] = value  # the final norm of a pre-LN stack
        else:
            out[name] = value
    for name in state:
        parts = name.split(".")
        if len(parts) > 4 and parts[1] == "layers" and parts[3] in _ATTN_NAMES and parts[4] == "q_proj":
            base = ".".join(parts[:4])
            target = "transformer." + ".".join(parts[:3]) + "." + _ATTN_NAMES[parts[3]]
            kind = parts[5]  # weight or bias
            packed = np.concatenate([state[f"{base}.{p}.{kind}"] for p in _QKV])
            out[f"{target}.in_proj_{kind}"] = packed
    return out


def transformer_to_torch_builtin(model: nt.Transformer, device: str | torch.device = "cpu") -> BuiltinTransformer:
    """A ``BuiltinTransformer`` (``nn.Transformer`` inside) holding ``model``'s weights."""
    builtin = BuiltinTransformer(model.config, dtype=torch_dtype(model.dtype))
    builtin.load_state_dict(state_dict_to_torch(_to_builtin_names(model.state_dict())), strict=True)
    builtin.train(model.training)
    return builtin.to(device)


def builtin_grads_to_numpy_names(builtin: BuiltinTransformer, model: nt.Transformer) -> dict[str, np.ndarray]:
    """The gradients autograd left on ``builtin``, keyed by ``model``'s parameter names."""
    grads = state_dict_to_numpy({n: p.grad for n, p in builtin.named_parameters() if p.grad is not None})
    out = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        if len(parts) > 4 and parts[1] == "layers" and parts[3] in _ATTN_NAMES and parts[4] in _QKV:
            packed_name = "transformer." + ".".join(parts[:3]) + f".{_ATTN_NAMES[parts[3]]}.in_proj_{parts[5]}"
            i = _QKV.index(parts[4])
            C = param.shape[-1] if parts[5] == "weight" else param.shape[0]
            out[name] = grads[packed_name][i * C : (i + 1) * C]
        else:
            (target,) = _to_builtin_names({name: param})
            out[name] = grads[target]
    return out
