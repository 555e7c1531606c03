"""Where a model's dropout masks come from, and a record of every one it used.

A model with dropout at many sites (after each attention, inside each feed-forward,
after the embeddings, ...) takes one :class:`DropoutMasks`. Each site asks it for a
keep-mask by its dotted name, e.g. ``encoder.layers.0.dropout1``:

* a mask given in ``given`` under that name is used as it is;
* otherwise one is drawn from ``rng``.

Every mask used is recorded in ``used``. Handing ``used`` to the PyTorch twin
makes it drop exactly the same units, which is how the two halves are compared
with dropout switched on.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..functional.dropout import DropoutCache, draw_dropout_mask, dropout_forward


class DropoutMasks:
    def __init__(self, rng: np.random.Generator | None = None, given: Mapping[str, np.ndarray] | None = None) -> None:
        self.rng = rng
        self.given = dict(given or {})
        self.used: dict[str, np.ndarray] = {}
        self._prefix = ""

    def child(self, name: str) -> DropoutMasks:
        """A view that prefixes ``name.`` to every site and shares ``given`` / ``used``."""
        view = DropoutMasks.__new__(DropoutMasks)
        view.rng, view.given, view.used = self.rng, self.given, self.used
        view._prefix = f"{self._prefix}{name}."
        return view

    def mask(self, site: str, shape: tuple[int, ...], p: float, training: bool) -> np.ndarray | None:
        """The keep-mask for ``site`` (True = keep), or ``None`` when dropout is off there."""
        if not training or p == 0.0:
            return None
        name = self._prefix + site
        if name in self.given:
            m = self.given[name]
            if not isinstance(m, np.ndarray) or m.dtype != np.bool_ or m.shape != tuple(shape):
                raise ValueError(
                    f"dropout_masks[{name!r}]: expected a bool array of shape {tuple(shape)}, "
                    f"got {getattr(m, 'dtype', type(m).__name__)} {getattr(m, 'shape', '')}"
                )
        else:
            m = draw_dropout_mask(tuple(shape), p, self.rng, name=f"rng (for dropout at {name})")
        self.used[name] = m
        return m

    def drop(self, x: np.ndarray, p: float, site: str, training: bool) -> tuple[np.ndarray, DropoutCache]:
        """Dropout of ``x`` at ``site`` with that site's mask: the one dropout-site helper of every model."""
        keep = self.mask(site, x.shape, p, training)
        return dropout_forward(x, p, mask=keep, training=keep is not None)
