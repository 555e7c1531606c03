"""``GRUCell`` and a one-layer, optionally bidirectional, batch-first ``GRU``.

Shape legend: ``B`` batch, ``T`` time steps, ``I`` input_size, ``H`` hidden_size,
``D`` directions (1, or 2 when bidirectional).

Parameter names, shapes and gate order (r, z, n) are ``torch.nn.GRUCell``'s and
``torch.nn.GRU``'s (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
and ``*_l0_reverse`` for the backward direction), so a state dict moves to the
built-ins with no renaming: ``torch_transformer.bridge.gru_to_torch_builtin`` and
``gru_from_torch_builtin`` are identities on names and bits. Initialisation is
torch's too: every parameter uniform in ``±1/sqrt(H)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.checks import check_bool, check_float_array, check_positive_int, check_rng, check_shape
from ..functional.gru import GRUCache, GRUCellCache, gru_backward, gru_cell_backward, gru_cell_forward, gru_forward
from ..functional.intermediates import prefix
from .base import Module, check_module_dtype


def _uniform_gru_parameters(
    suffix: str, input_size: int, hidden_size: int, bias: bool, dtype: np.dtype, rng: np.random.Generator
) -> dict[str, np.ndarray | None]:
    """``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (+ suffix), uniform ``±1/sqrt(H)`` as torch."""
    bound = 1.0 / np.sqrt(hidden_size)
    H3 = 3 * hidden_size

    def draw(shape):
        return rng.uniform(-bound, bound, shape).astype(dtype)

    return {
        "weight_ih" + suffix: draw((H3, input_size)),
        "weight_hh" + suffix: draw((H3, hidden_size)),
        "bias_ih" + suffix: draw((H3,)) if bias else None,
        "bias_hh" + suffix: draw((H3,)) if bias else None,
    }


class GRUCell(Module):
    """One GRU step, as ``torch.nn.GRUCell(input_size, hidden_size, bias)``.

    Parameters ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` and
    ``bias_hh`` (3H,), rows stacked by gate ``[r; z; n]``. ``forward(x, h=None)``
    takes ``x`` (B, I) and ``h`` (B, H) (zeros when None) and returns
    ``(h_next, cache)``; ``backward(dout, cache)`` returns ``(dx, dh)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.dtype = check_module_dtype(dtype)
        self._init_parameters(**_uniform_gru_parameters("", input_size, hidden_size, bias, self.dtype, check_rng(rng)))

    def forward(self, x: np.ndarray, h: np.ndarray | None = None) -> tuple[np.ndarray, GRUCellCache]:
        return gru_cell_forward(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def backward(self, dout: np.ndarray, cache: GRUCellCache) -> tuple[np.ndarray, np.ndarray]:
        dx, dh, dweight_ih, dweight_hh, dbias_ih, dbias_hh = gru_cell_backward(dout, cache)
        self.accumulate_grad("weight_ih", dweight_ih)
        self.accumulate_grad("weight_hh", dweight_hh)
        self.accumulate_grad("bias_ih", dbias_ih)
        self.accumulate_grad("bias_hh", dbias_hh)
        return dx, dh


@dataclass(frozen=True)
class GRULayerCache:
    forward_direction: GRUCache
    backward_direction: GRUCache | None  # None unless bidirectional


class GRU(Module):
    """One GRU layer over time, batch first, as ``torch.nn.GRU(I, H, batch_first=True, bidirectional=...)``.

    ``forward(x, h0=None, lengths=None)`` takes ``x`` (B, T, I), ``h0`` (D, B, H)
    (zeros when None) and ``lengths`` (B,) ints in ``[0, T]`` (None = all T), and
    returns ``((outputs, h_n), cache)``:

    * ``outputs`` (B, T, D*H): each step's state; bidirectional concatenates
      ``[forward; backward]`` on the last axis, as torch does. Positions at or past
      a row's length are zero, as ``pad_packed_sequence`` gives them.
    * ``h_n`` (D, B, H): index 0 the forward direction's state after each row's
      last real token, index 1 (bidirectional) the backward direction's state after
      reading position 0 -- torch's layout (``num_layers * num_directions``, B, H),
      so a single direction gives (1, B, H), not (B, H).

    The backward direction starts at each row's last real token (not at
    ``T - 1``), like ``nn.GRU`` on a ``pack_padded_sequence`` batch.

    ``backward(doutputs, dh_n, cache)`` takes the gradients of both outputs (either
    may be None for zero) and returns ``(dx, dh0)``, ``dh0`` (D, B, H) even when
    ``h0`` was None.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bidirectional: bool = False,
        bias: bool = True,
        dtype: np.dtype | type = np.float64,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        check_bool("bidirectional", bidirectional)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.dtype = check_module_dtype(dtype)
        rng = check_rng(rng)
        params = _uniform_gru_parameters("_l0", input_size, hidden_size, bias, self.dtype, rng)
        if bidirectional:
            params.update(_uniform_gru_parameters("_l0_reverse", input_size, hidden_size, bias, self.dtype, rng))
        self._init_parameters(**params)

    def _direction(self, suffix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        return tuple(getattr(self, name + suffix, None) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward(
        self, x: np.ndarray, h0: np.ndarray | None = None, lengths: np.ndarray | None = None
    ) -> tuple[tuple[np.ndarray, np.ndarray], GRULayerCache]:
        check_float_array("x", x)
        if x.ndim != 3:
            raise ValueError(f"x: expected shape (B, T, I) (batch first), got {x.shape}")
        D, B, H = self.num_directions, x.shape[0], self.hidden_size
        if h0 is not None:
            check_float_array("h0", h0)
            check_shape("h0", h0, (D, B, H))
        (out_f, h_f), cache_f = gru_forward(
            x, None if h0 is None else h0[0], *self._direction("_l0"), lengths=lengths
        )  # (B, T, H), (B, H)
        if not self.bidirectional:
            return (out_f, h_f[None]), GRULayerCache(cache_f, None)  # (B, T, H), (1, B, H)
        (out_b, h_b), cache_b = gru_forward(
            x, None if h0 is None else h0[1], *self._direction("_l0_reverse"), lengths=lengths, reverse=True
        )  # (B, T, H), (B, H)
        outputs = np.concatenate([out_f, out_b], axis=-1)  # (B, T, 2H) [forward; backward]
        return (outputs, np.stack([h_f, h_b])), GRULayerCache(cache_f, cache_b)  # h_n: (2, B, H)

    def _accumulate_direction(self, suffix: str, grads: tuple) -> None:
        for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), grads, strict=True):
            self.accumulate_grad(name + suffix, g)

    def backward(
        self, doutputs: np.ndarray | None, dh_n: np.ndarray | None, cache: GRULayerCache
    ) -> tuple[np.ndarray, np.ndarray]:
        """BPTT through each direction (:func:`~numpy_transformer.functional.gru.gru_backward`).

        ``doutputs[..., :H]`` and ``dh_n[0]`` flow into the forward direction, ``doutputs[..., H:]``
        and ``dh_n[1]`` into the backward one; both read the same ``x``, so ``dx`` is their sum.
        """
        cache_f = cache.forward_direction
        B, T, H = cache_f.h_prev.shape
        D = self.num_directions
        for name, g, shape in (("doutputs", doutputs, (B, T, D * H)), ("dh_n", dh_n, (D, B, H))):
            if g is not None:
                check_float_array(name, g)
                if g.dtype != cache_f.h_prev.dtype:
                    raise TypeError(f"{name}: expected dtype {cache_f.h_prev.dtype} (the forward's), got {g.dtype}")
                check_shape(name, g, shape)
        with prefix("l0"):  # each direction's steps named apart: they are undone forward direction first
            dx, dh0_f, *grads_f = gru_backward(
                None if doutputs is None else doutputs[..., :H], None if dh_n is None else dh_n[0], cache_f
            )
        self._accumulate_direction("_l0", grads_f)
        if cache.backward_direction is None:
            return dx, dh0_f[None]  # (B, T, I), (1, B, H)
        with prefix("l0_reverse"):
            dx_b, dh0_b, *grads_b = gru_backward(
                None if doutputs is None else doutputs[..., H:],
                None if dh_n is None else dh_n[1],
                cache.backward_direction,
            )
        self._accumulate_direction("_l0_reverse", grads_b)
        return dx + dx_b, np.stack([dh0_f, dh0_b])  # (B, T, I), (2, B, H)
