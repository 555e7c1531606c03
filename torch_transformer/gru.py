"""The twin of ``numpy_transformer``'s GRU: ``gru_cell``, ``gru``, ``GRUCell`` and ``GRU`` in plain tensor ops.

Written from the formula ``torch.nn.GRU`` documents (gates r, z, n stacked on the
rows of ``weight_ih`` / ``weight_hh``; ``b_hn`` inside the reset product), not by
calling ``nn.GRU``, so autograd differentiates the very formula the NumPy half
differentiates by hand; comparisons with the built-ins live in ``parity_tests/test_gru.py``.
Parameter names equal the NumPy modules' (and ``nn.GRU``'s): ``weight_ih_l0``, ...,
``*_l0_reverse``.

Shape legend: ``B`` batch, ``T`` time steps, ``I`` input size, ``H`` hidden size, ``D`` directions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .intermediates import expose, prefix


def gru_cell(
    x: torch.Tensor,
    h: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step: ``x`` (B, I), ``h`` (B, H) or None for zeros -> ``h'`` (B, H)."""
    if h is None:
        h = x.new_zeros(x.shape[0], weight_hh.shape[1])
    gi = x @ weight_ih.T  # (B, 3H)
    if bias_ih is not None:
        gi = gi + bias_ih
    return _step(gi, h, weight_hh, bias_hh)


def _step(gi: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor | None) -> torch.Tensor:
    gh = h @ weight_hh.T  # (B, 3H)
    if bias_hh is not None:
        gh = gh + bias_hh
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # (B, H) each
    h_r, h_z, h_n = gh.chunk(3, dim=-1)  # (B, H) each
    r = expose("r", torch.sigmoid(i_r + h_r))
    z = expose("z", torch.sigmoid(i_z + h_z))
    n = expose("n", torch.tanh(i_n + r * h_n))  # b_hn (in h_n) inside the reset product
    return n + z * (h - n)  # = (1 - z) n + z h


def gru(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction over time, batch first: ``x`` (B, T, I) -> ``outputs`` (B, T, H), ``h_T`` (B, H).

    ``lengths`` (B,): row ``b`` stops after ``lengths[b]`` steps (state frozen,
    outputs zero after). ``reverse`` reads each row backwards from its last real step.
    """
    B, T, I = x.shape
    H = weight_hh.shape[1]
    h = x.new_zeros(B, H) if h0 is None else h0
    steps = torch.arange(T, device=x.device)
    L = torch.full((B,), T, device=x.device) if lengths is None else torch.as_tensor(lengths, device=x.device)
    L = L.long()[:, None]  # (B, 1)
    mask = steps[None, :] < L  # (B, T)
    order = torch.where(mask, L - 1 - steps[None, :], steps[None, :])  # (B, T) reversal within each length
    if reverse:
        x = torch.gather(x, 1, order[:, :, None].expand(B, T, I))  # (B, T, I)
    gi = x @ weight_ih.T  # (B, T, 3H)
    if bias_ih is not None:
        gi = gi + bias_ih
    outs = []
    for t in range(T):
        h_new = _step(gi[:, t], h, weight_hh, bias_hh)  # (B, H)
        if lengths is None:
            h = h_new
            outs.append(h)
        else:
            m = mask[:, t, None]  # (B, 1)
            h = torch.where(m, h_new, h)
            outs.append(torch.where(m, h, torch.zeros_like(h)))
    outputs = torch.stack(outs, dim=1) if outs else x.new_zeros(B, 0, H)  # (B, T, H)
    if reverse:
        outputs = torch.gather(outputs, 1, order[:, :, None].expand(B, T, H))
    return outputs, h


def _gru_parameters(
    module: nn.Module, suffix: str, input_size: int, hidden_size: int, bias: bool, dtype, device
) -> None:
    bound = 1.0 / math.sqrt(hidden_size)
    shapes = {
        "weight_ih": (3 * hidden_size, input_size),
        "weight_hh": (3 * hidden_size, hidden_size),
        "bias_ih": (3 * hidden_size,),
        "bias_hh": (3 * hidden_size,),
    }
    for name, shape in shapes.items():
        if name.startswith("bias") and not bias:
            module.register_parameter(name + suffix, None)
            continue
        p = nn.Parameter(torch.empty(shape, dtype=dtype, device=device))
        with torch.no_grad():
            p.uniform_(-bound, bound)
        module.register_parameter(name + suffix, p)


class GRUCell(nn.Module):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        _gru_parameters(self, "", input_size, hidden_size, bias, dtype, device)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        return gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRU(nn.Module):
    """One layer, batch first; returns ``(outputs (B, T, D*H), h_n (D, B, H))`` like ``nn.GRU``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bidirectional: bool = False,
        bias: bool = True,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bidirectional = input_size, hidden_size, bidirectional
        _gru_parameters(self, "_l0", input_size, hidden_size, bias, dtype, device)
        if bidirectional:
            _gru_parameters(self, "_l0_reverse", input_size, hidden_size, bias, dtype, device)

    def _direction(self, suffix: str):
        return tuple(getattr(self, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with prefix("l0"):  # each direction's steps named apart, as in the NumPy backward
            out_f, h_f = gru(x, None if h0 is None else h0[0], *self._direction("_l0"), lengths=lengths)
        if not self.bidirectional:
            return out_f, h_f[None]  # (B, T, H), (1, B, H)
        with prefix("l0_reverse"):
            out_b, h_b = gru(
                x, None if h0 is None else h0[1], *self._direction("_l0_reverse"), lengths=lengths, reverse=True
            )
        return torch.cat([out_f, out_b], dim=-1), torch.stack([h_f, h_b])  # (B, T, 2H), (2, B, H)
