"""The twin of ``numpy_transformer.models.bert``: same layout, same state-dict keys, autograd backward.

Forward only; ``dropout_masks`` (site name -> bool keep-mask, e.g. a NumPy cache's
``dropout_masks`` as it is) replays the NumPy model's dropout exactly. NumPy ids,
``attention_mask``, ``token_type_ids`` and masks are converted to tensors on the model's device.
"""

from __future__ import annotations

import torch
from torch import nn

from numpy_transformer.config import BertConfig

from . import functional as TF
from .dropout_masks import DropoutMasks
from .modules import Embedding, LayerNorm, Linear, as_tensor, as_tensor_masks, module_device
from .transformer_layers import EncoderLayer


def _tensors(model: nn.Module, input_ids, attention_mask, token_type_ids, dropout_masks):
    """NumPy inputs (ids, the 0/1 attention mask, segments, dropout masks) -> tensors on the model's device."""
    device = module_device(model)
    return (
        as_tensor(input_ids, device),
        as_tensor(attention_mask, device),
        as_tensor(token_type_ids, device),
        as_tensor_masks(dropout_masks, device),
    )


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        c = config
        self.p = c.dropout
        self.word_embeddings = Embedding(c.vocab_size, c.hidden_size, c.pad_id, dtype=dtype, device=device)
        self.position_embeddings = Embedding(c.max_position_embeddings, c.hidden_size, dtype=dtype, device=device)
        self.token_type_embeddings = Embedding(c.type_vocab_size, c.hidden_size, dtype=dtype, device=device)
        self.norm = LayerNorm(c.hidden_size, c.layer_norm_eps, dtype=dtype, device=device)

    def forward(self, ids, token_type_ids, masks: DropoutMasks):
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]  # (1, S)
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return masks.drop(self.norm(x), self.p, "dropout", self.training)


class BertModel(nn.Module):
    def __init__(self, config: BertConfig, dtype=torch.float64, device=None, add_pooler: bool = True) -> None:
        super().__init__()
        c = config
        self.config = config
        self.embeddings = BertEmbeddings(c, dtype, device)
        self.layers = nn.ModuleList(
            [
                EncoderLayer(
                    c.hidden_size,
                    c.n_heads,
                    c.intermediate_size,
                    c.dropout,
                    c.activation,
                    False,
                    c.layer_norm_eps,
                    dtype=dtype,
                    device=device,
                    ff_dropout=0.0,
                )
                for _ in range(c.n_layers)
            ]
        )
        self.pooler = Linear(c.hidden_size, c.hidden_size, dtype=dtype, device=device) if add_pooler else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, dropout_masks=None, masks=None):
        """-> ``(last_hidden_state (B, S, C), pooler_output (B, C) or None)``."""
        input_ids, attention_mask, token_type_ids, dropout_masks = _tensors(
            self, input_ids, attention_mask, token_type_ids, dropout_masks
        )
        masks = masks if masks is not None else DropoutMasks(dropout_masks)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, masks.child("embeddings"))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, masks.child(f"layers.{i}"))
        pooled = None if self.pooler is None else TF.tanh(self.pooler(x[:, 0]))
        return x, pooled


class BertForMaskedLM(nn.Module):
    def __init__(self, config: BertConfig, dtype=torch.float64, device=None) -> None:
        super().__init__()
        C = config.hidden_size
        self.config = config
        self.bert = BertModel(config, dtype, device, add_pooler=False)
        self.mlm_dense = Linear(C, C, dtype=dtype, device=device)
        self.mlm_norm = LayerNorm(C, config.layer_norm_eps, dtype=dtype, device=device)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size, dtype=dtype, device=device))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, dropout_masks=None):
        input_ids, attention_mask, token_type_ids, dropout_masks = _tensors(
            self, input_ids, attention_mask, token_type_ids, dropout_masks
        )
        masks = DropoutMasks(dropout_masks)
        h, _ = self.bert(input_ids, attention_mask, token_type_ids, masks=masks.child("bert"))
        h = self.mlm_norm(TF.gelu(self.mlm_dense(h)))
        return TF.linear(h, self.bert.embeddings.word_embeddings.weight, self.mlm_bias)  # (B, S, V), tied


class BertForSequenceClassification(nn.Module):
    def __init__(self, config: BertConfig, num_labels: int, dtype=torch.float64, device=None) -> None:
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config, dtype, device, add_pooler=True)
        self.classifier = Linear(config.hidden_size, num_labels, dtype=dtype, device=device)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, dropout_masks=None):
        input_ids, attention_mask, token_type_ids, dropout_masks = _tensors(
            self, input_ids, attention_mask, token_type_ids, dropout_masks
        )
        masks = DropoutMasks(dropout_masks)
        _, pooled = self.bert(input_ids, attention_mask, token_type_ids, masks=masks.child("bert"))
        return self.classifier(masks.drop(pooled, self.config.dropout, "dropout", self.training))
