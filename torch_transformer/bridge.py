"""Moving weights and masks between the NumPy half, the twin and PyTorch's built-ins.

* ``state_dict_to_torch`` / ``state_dict_to_numpy``: state dicts, bit for bit.
* ``twin_of``: build the twin of a NumPy module with the same weights.
* ``copy_numpy_to_torch`` / ``copy_torch_to_numpy``: into existing modules.
* ``mha_to_torch_builtin`` / ``mha_from_torch_builtin``: our ``MultiHeadAttention``
  <-> ``torch.nn.MultiheadAttention`` (packed ``in_proj_weight``).
* Mask conventions. Ours (and ``F.scaled_dot_product_attention``'s): ``True`` =
  may attend. ``nn.MultiheadAttention``'s ``attn_mask`` and ``key_padding_mask``:
  ``True`` = blocked. The helpers below convert, with shape checks.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

import numpy_transformer as nt
from numpy_transformer.models.clip import CLIPModel
from numpy_transformer.models.cnn import ImageCNN

from . import modules as tm
from . import transformer as ttransformer
from . import transformer_layers as tlayers

_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# The Llama blocks (numpy_transformer.modules.llama_layers), twinned in torch_transformer.llama.
LLAMA_FAMILY = (
    nt.modules.RMSNorm,
    nt.modules.SwiGLUFeedForward,
    nt.modules.LlamaAttention,
    nt.modules.LlamaDecoderLayer,
)


def torch_dtype(dtype: np.dtype | type | str) -> torch.dtype:
    """The torch dtype matching a NumPy float dtype."""
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return _DTYPES[dt]


def state_dict_to_torch(state: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """NumPy arrays -> tensors with the same keys, dtypes and bits."""
    return {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in state.items()}


def state_dict_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors (any device) -> NumPy arrays with the same keys, dtypes and bits."""
    return {name: t.detach().cpu().numpy().copy() for name, t in state.items()}


def copy_numpy_to_torch(np_module: nt.Module, torch_module: nn.Module) -> None:
    """Load a NumPy module's weights into its twin (strict: keys and shapes must match)."""
    device = next(torch_module.parameters()).device if any(True for _ in torch_module.parameters()) else "cpu"
    torch_module.load_state_dict(state_dict_to_torch(np_module.state_dict(), device), strict=True)


def copy_torch_to_numpy(torch_module: nn.Module, np_module: nt.Module) -> None:
    """Load a twin's weights into a NumPy module (strict, dtype must match)."""
    np_module.load_state_dict(state_dict_to_numpy(torch_module.state_dict()))


def twin_of(np_module: nt.Module, device: str | torch.device = "cpu") -> nn.Module:
    """The PyTorch twin of a NumPy module, same hyper-parameters and weights, on ``device``."""
    dtype = torch_dtype(np_module.dtype) if hasattr(np_module, "dtype") else torch.float64
    m = np_module
    if isinstance(m, nt.Linear):
        twin = tm.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
    elif isinstance(m, nt.Embedding):
        twin = tm.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx, dtype=dtype)
    elif isinstance(m, nt.LayerNorm):
        twin = tm.LayerNorm(m.normalized_shape, m.eps, dtype=dtype)
    elif isinstance(m, nt.Dropout):
        twin = tm.Dropout(m.p)
    elif isinstance(m, nt.FeedForward):
        twin = tm.FeedForward(
            m.linear1.in_features,
            m.linear1.out_features,
            m.activation,
            m.dropout.p,
            bias=m.linear1.bias is not None,
            dtype=dtype,
        )
    elif isinstance(m, nt.MultiHeadAttention):
        twin = tm.MultiHeadAttention(
            m.d_model, m.n_heads, bias=m.q_proj.bias is not None, dropout=m.dropout, dtype=dtype
        )
    elif isinstance(m, (nt.EncoderLayer, nt.DecoderLayer)):
        cls = tlayers.EncoderLayer if isinstance(m, nt.EncoderLayer) else tlayers.DecoderLayer
        twin = cls(m.self_attn.d_model, m.self_attn.n_heads, m.ff.linear1.out_features, m.p, m.ff.activation,
                   m.norm_first, m.norm1.eps, dtype=dtype)  # fmt: skip
        twin.ff.dropout.p = m.ff.dropout.p  # ff_dropout may differ from the layer's dropout
    elif isinstance(m, nt.Transformer):
        twin = ttransformer.Transformer(m.config, dtype=dtype)
    elif isinstance(m, (nt.BertModel, nt.BertForMaskedLM, nt.BertForSequenceClassification)):
        from . import bert as tbert

        if isinstance(m, nt.BertModel):
            twin = tbert.BertModel(m.config, dtype=dtype, add_pooler=m.pooler is not None)
        elif isinstance(m, nt.BertForMaskedLM):
            twin = tbert.BertForMaskedLM(m.config, dtype=dtype)
        else:
            twin = tbert.BertForSequenceClassification(m.config, m.num_labels, dtype=dtype)
    elif isinstance(m, nt.GPT):
        from .gpt import GPT

        twin = GPT(m.config, dtype=dtype)
    elif isinstance(m, (nt.Llama, *LLAMA_FAMILY)):
        from .llama import twin_of_llama

        twin = twin_of_llama(m, dtype)
    elif isinstance(m, ImageCNN):
        from .cnn import ImageCNN as TorchImageCNN

        twin = TorchImageCNN(m.config, dtype=dtype)
    elif isinstance(m, (nt.ViT, nt.ViTForImageClassification)):
        from . import vit as tvit

        if isinstance(m, nt.ViT):
            twin = tvit.ViT(m.config, dtype=dtype, add_pooling_layer=m.pooler is not None)
        else:
            twin = tvit.ViTForImageClassification(m.config, dtype=dtype)
    elif isinstance(m, CLIPModel):
        from .clip import CLIPModel as TorchCLIPModel

        twin = TorchCLIPModel(m.config, dtype=dtype)
    elif isinstance(m, (nt.AdditiveAttention, nt.LuongAttention)):
        from . import classic_attention as tca

        if isinstance(m, nt.AdditiveAttention):
            twin = tca.AdditiveAttention(m.query_dim, m.key_dim, m.attn_dim, dtype=dtype)
        else:
            attn_dim = m.attn_dim if m.score == "concat" else None
            twin = tca.LuongAttention(m.query_dim, m.key_dim, m.score, attn_dim, dtype=dtype)
    elif isinstance(m, nt.RNNSeq2Seq):
        from .rnn_seq2seq import RNNSeq2Seq

        twin = RNNSeq2Seq(m.config, dtype=dtype)
    elif isinstance(m, (nt.GRU, nt.GRUCell)):
        from . import gru as tgru

        if isinstance(m, nt.GRU):
            twin = tgru.GRU(m.input_size, m.hidden_size, m.bidirectional, bias=m.bias_ih_l0 is not None, dtype=dtype)
        else:
            twin = tgru.GRUCell(m.input_size, m.hidden_size, bias=getattr(m, "bias_ih", None) is not None, dtype=dtype)
    else:
        raise TypeError(f"np_module: no twin is known for {type(m).__name__}")
    twin = twin.to(device)
    twin.train(m.training)
    if any(True for _ in twin.parameters()):
        copy_numpy_to_torch(m, twin)
    return twin


def mha_to_torch_builtin(mha: nt.MultiHeadAttention, device: str | torch.device = "cpu") -> nn.MultiheadAttention:
    """Our ``MultiHeadAttention`` as ``nn.MultiheadAttention(batch_first=True)``.

    ``in_proj_weight`` is ``q_proj.weight``, ``k_proj.weight`` and ``v_proj.weight``
    stacked on rows, ``(3C, C)``; ``in_proj_bias`` likewise ``(3C,)``.
    """
    has_bias = mha.q_proj.bias is not None
    builtin = nn.MultiheadAttention(
        mha.d_model, mha.n_heads, dropout=mha.dropout, bias=has_bias, batch_first=True, dtype=torch_dtype(mha.dtype)
    )
    state = {
        "in_proj_weight": np.concatenate([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]),
        "out_proj.weight": mha.out_proj.weight,
    }
    if has_bias:
        state["in_proj_bias"] = np.concatenate([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias])
        state["out_proj.bias"] = mha.out_proj.bias
    builtin.load_state_dict(state_dict_to_torch(state), strict=True)
    builtin.train(mha.training)
    return builtin.to(device)


def mha_from_torch_builtin(builtin: nn.MultiheadAttention) -> nt.MultiHeadAttention:
    """A NumPy ``MultiHeadAttention`` with the weights of a built-in one (packed in-projection only)."""
    if not builtin._qkv_same_embed_dim:
        raise ValueError("builtin: expected kdim == vdim == embed_dim (a packed in_proj_weight)")
    state = state_dict_to_numpy(builtin.state_dict())
    C = builtin.embed_dim
    has_bias = "in_proj_bias" in state
    if "bias_k" in state or "bias_v" in state:
        raise ValueError("builtin: add_bias_kv=True has no counterpart in our MultiHeadAttention")
    dtype = state["in_proj_weight"].dtype
    mha = nt.MultiHeadAttention(
        C, builtin.num_heads, bias=has_bias, dropout=builtin.dropout, dtype=dtype, rng=np.random.default_rng(0)
    )
    ours = {}
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        ours[f"{name}.weight"] = state["in_proj_weight"][i * C : (i + 1) * C]
        if has_bias:
            ours[f"{name}.bias"] = state["in_proj_bias"][i * C : (i + 1) * C]
    ours["out_proj.weight"] = state["out_proj.weight"]
    if has_bias:
        ours["out_proj.bias"] = state["out_proj.bias"]
    mha.load_state_dict({k: np.ascontiguousarray(v) for k, v in ours.items()})
    mha.train(builtin.training)
    return mha


def _bool_array(name: str, mask: np.ndarray, ndim: int) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"{name}: expected a bool numpy.ndarray, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {mask.shape}")
    return mask


def mask_to_attn_mask(mask: np.ndarray, batch: int, n_heads: int, T: int, S: int) -> torch.Tensor:
    """Our mask (True = may attend, broadcastable to (B, H, T, S)) -> MHA ``attn_mask``.

    Returns a bool tensor ``(B * H, T, S)``, ``True`` = blocked, the 3-D form
    ``nn.MultiheadAttention`` accepts (batch-major, then heads).
    """
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"mask: expected a bool numpy.ndarray, got {getattr(mask, 'dtype', type(mask).__name__)}")
    try:
        full = np.broadcast_to(mask, (batch, n_heads, T, S))
    except ValueError:
        raise ValueError(
            f"mask: expected a shape broadcastable to {(batch, n_heads, T, S)}, got {mask.shape}"
        ) from None
    return torch.from_numpy(~full.reshape(batch * n_heads, T, S).copy())


def attn_mask_to_mask(
    attn_mask: torch.Tensor | np.ndarray, batch: int | None = None, n_heads: int | None = None
) -> np.ndarray:
    """MHA ``attn_mask`` (bool, True = blocked; ``(T, S)`` or ``(B*H, T, S)``) -> our mask.

    Returns ``(1, 1, T, S)`` (4-D, as ``MultiHeadAttention`` takes masks) or, for the 3-D
    form, ``(B, H, T, S)`` (``batch`` and ``n_heads`` required). Float (additive) masks are not converted: they can
    carry values other than 0 / -inf.
    """
    a = attn_mask.detach().cpu().numpy() if isinstance(attn_mask, torch.Tensor) else np.asarray(attn_mask)
    if a.dtype != np.bool_:
        raise TypeError(f"attn_mask: expected a bool mask (True = blocked), got {a.dtype}")
    if a.ndim == 2:
        return ~a[None, None]  # (1, 1, T, S)
    if a.ndim == 3:
        if batch is None or n_heads is None or a.shape[0] != batch * n_heads:
            raise ValueError(
                f"attn_mask: a 3-D mask needs batch * n_heads == {a.shape[0]}, got batch={batch}, n_heads={n_heads}"
            )
        return ~a.reshape(batch, n_heads, *a.shape[1:])
    raise ValueError(f"attn_mask: expected shape (T, S) or (B*H, T, S), got {a.shape}")


def key_padding_mask_to_mask(key_padding_mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """MHA ``key_padding_mask`` (B, S), True = padded -> our (B, 1, 1, S), True = may attend."""
    a = key_padding_mask.detach().cpu().numpy() if isinstance(key_padding_mask, torch.Tensor) else key_padding_mask
    a = _bool_array("key_padding_mask", np.asarray(a), 2)
    return ~a[:, None, None, :]


def mask_to_key_padding_mask(mask: np.ndarray) -> torch.Tensor:
    """Our per-key mask (B, 1, 1, S) or (B, S) -> MHA ``key_padding_mask`` (B, S), True = padded.

    Only a mask that is the same for every head and query is a key-padding mask;
    anything else (e.g. causal) must go through :func:`mask_to_attn_mask`.
    """
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"mask: expected a bool numpy.ndarray, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.ndim == 4 and mask.shape[1:3] == (1, 1):
        mask = mask[:, 0, 0, :]
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (B, 1, 1, S) or (B, S) for a key-padding mask, got {mask.shape}")
    return torch.from_numpy(~mask)


# ---------------------------------------------------------------------------- GRU
# Our GRUCell / GRU use torch.nn.GRUCell's / torch.nn.GRU's parameter names, shapes and gate
# order (rows stacked r, z, n; both bias vectors, b_hn inside the reset product), so these
# converters are identities on names and bits; what they add is the choice of built-in and its
# hyper-parameters (one layer, batch_first=True), and checks on what we cannot represent.


def gru_cell_to_torch_builtin(cell: nt.GRUCell, device: str | torch.device = "cpu") -> nn.GRUCell:
    """Our ``GRUCell`` as ``torch.nn.GRUCell`` with the same weights (names unchanged)."""
    builtin = nn.GRUCell(
        cell.input_size, cell.hidden_size, bias=cell.bias_ih is not None, dtype=torch_dtype(cell.dtype)
    )
    builtin.load_state_dict(state_dict_to_torch(cell.state_dict()), strict=True)
    return builtin.to(device)


def gru_cell_from_torch_builtin(builtin: nn.GRUCell) -> nt.GRUCell:
    """A NumPy ``GRUCell`` with the weights of ``torch.nn.GRUCell`` (names unchanged)."""
    if not isinstance(builtin, nn.GRUCell):
        raise TypeError(f"builtin: expected a torch.nn.GRUCell, got {type(builtin).__name__}")
    state = state_dict_to_numpy(builtin.state_dict())
    cell = nt.GRUCell(
        builtin.input_size, builtin.hidden_size, bias=builtin.bias, dtype=state["weight_ih"].dtype,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    cell.load_state_dict(state)
    return cell


def gru_to_torch_builtin(gru: nt.GRU, device: str | torch.device = "cpu") -> nn.GRU:
    """Our ``GRU`` as ``torch.nn.GRU(num_layers=1, batch_first=True, bidirectional=...)``.

    The state-dict keys are the same on both sides (``weight_ih_l0``, ``weight_hh_l0``,
    ``bias_ih_l0``, ``bias_hh_l0`` and, bidirectional, ``*_l0_reverse``): nothing is
    renamed, re-ordered or merged.
    """
    builtin = nn.GRU(
        gru.input_size, gru.hidden_size, num_layers=1, bias=gru.bias_ih_l0 is not None, batch_first=True,
        bidirectional=gru.bidirectional, dtype=torch_dtype(gru.dtype),
    )  # fmt: skip
    builtin.load_state_dict(state_dict_to_torch(gru.state_dict()), strict=True)
    return builtin.to(device)


def gru_from_torch_builtin(builtin: nn.GRU) -> nt.GRU:
    """A NumPy ``GRU`` with the weights of a one-layer ``torch.nn.GRU`` (names unchanged).

    Ours is always batch first; a built-in made with ``batch_first=False`` converts too
    (the weights do not depend on it), but its inputs are then ``(T, B, I)`` where ours
    take ``(B, T, I)``. Several layers raise ``ValueError``: stack one ``GRU`` per layer.
    """
    if not isinstance(builtin, nn.GRU):
        raise TypeError(f"builtin: expected a torch.nn.GRU, got {type(builtin).__name__}")
    if builtin.num_layers != 1:
        raise ValueError(f"builtin: expected num_layers=1 (ours is one layer), got {builtin.num_layers}")
    state = state_dict_to_numpy(builtin.state_dict())
    gru = nt.GRU(
        builtin.input_size, builtin.hidden_size, bidirectional=builtin.bidirectional, bias=builtin.bias,
        dtype=state["weight_ih_l0"].dtype, rng=np.random.default_rng(0),
    )  # fmt: skip
    gru.load_state_dict(state)
    return gru
