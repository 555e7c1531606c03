"""Twin of ``numpy_transformer.models.rnn_seq2seq``: the same network and state-dict keys, autograd backward."""

from __future__ import annotations

import torch
from torch import nn

from numpy_transformer.config import RNNSeq2SeqConfig

from .classic_attention import AdditiveAttention, LuongAttention
from .gru import GRU, GRUCell, gru_cell
from .modules import Embedding, Linear, as_tensor, module_device


class RNNSeq2Seq(nn.Module):
    def __init__(self, config: RNNSeq2SeqConfig, dtype: torch.dtype = torch.float64, device=None) -> None:
        super().__init__()
        c = self.config = config
        E, H = c.embed_dim, c.hidden_size
        self.src_embed = Embedding(c.src_vocab_size, E, dtype=dtype, device=device)
        self.encoder = GRU(E, H // 2, bidirectional=True, dtype=dtype, device=device)
        self.init_proj = Linear(H, H, dtype=dtype, device=device)
        self.tgt_embed = Embedding(c.tgt_vocab_size, E, dtype=dtype, device=device)
        if c.attention == "bahdanau":
            self.attention = AdditiveAttention(H, H, c.attn_dim, dtype=dtype, device=device)
            self.decoder = GRUCell(E + H, H, dtype=dtype, device=device)
            self.out_proj = Linear(2 * H, c.tgt_vocab_size, dtype=dtype, device=device)
        else:
            score = c.attention.split("-")[1]
            self.decoder = GRU(E, H, dtype=dtype, device=device)
            self.attention = LuongAttention(
                H, H, score, c.attn_dim if score == "concat" else None, dtype=dtype, device=device
            )
            self.combine = Linear(2 * H, H, bias=False, dtype=dtype, device=device)
            self.out_proj = Linear(H, c.tgt_vocab_size, dtype=dtype, device=device)

    def encode(self, src: torch.Tensor):
        mask = src != self.config.pad_id  # (B, S)
        enc, h_n = self.encoder(self.src_embed(src), lengths=mask.sum(dim=1))  # (B, S, H), (2, B, H/2)
        s0 = torch.tanh(self.init_proj(torch.cat([h_n[0], h_n[1]], dim=-1)))  # (B, H)
        return enc, s0, mask

    def decode_step(
        self, y_t: torch.Tensor, s: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder step: ``y_t`` (B, E), ``s`` (B, H) -> logits (B, V), the new state (B, H), weights (B, S)."""
        if self.config.attention == "bahdanau":
            ctx, w = self.attention(s, enc, enc, mask, return_weights=True)
            s = self.decoder(torch.cat([y_t, ctx], dim=-1), s)
            return self.out_proj(torch.cat([s, ctx], dim=-1)), s, w
        g = self.decoder
        s = gru_cell(y_t, s, g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0)
        ctx, w = self.attention(s, enc, enc, mask, return_weights=True)
        return self.out_proj(torch.tanh(self.combine(torch.cat([ctx, s], dim=-1)))), s, w

    def forward(
        self, src: torch.Tensor, tgt: torch.Tensor, dropout_masks=None, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing -> logits (B, T, V), and with ``return_weights`` the attention weights (B, T, S).

        ``dropout_masks`` is accepted for the trainer (no dropout here). NumPy ids are converted
        to tensors on the model's device.
        """
        device = module_device(self)
        src, tgt = as_tensor(src, device), as_tensor(tgt, device)
        enc, s, mask = self.encode(src)
        y = self.tgt_embed(tgt)  # (B, T, E)
        if self.config.attention == "bahdanau":
            logits, weights = [], []
            for t in range(tgt.shape[1]):
                out, s, w = self.decode_step(y[:, t], s, enc, mask)
                logits.append(out)
                weights.append(w)
            out, w = torch.stack(logits, dim=1), torch.stack(weights, dim=1)  # (B, T, V), (B, T, S)
            return (out, w) if return_weights else out
        states, _ = self.decoder(y, s[None])  # (B, T, H)
        ctx, w = self.attention(states, enc, enc, mask, return_weights=True)  # (B, T, H), (B, T, S)
        out = self.out_proj(torch.tanh(self.combine(torch.cat([ctx, states], dim=-1))))
        return (out, w) if return_weights else out
