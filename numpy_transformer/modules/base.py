"""``Module``: owns parameters and their gradients, never activations.

A module's ``forward(...)`` returns ``(out, cache)`` and its
``backward(dout, cache)`` returns the input gradients while *adding* parameter
gradients into ``module.grads[name]``. Accumulating (rather than assigning)
makes a module that is used twice in one step, like tied embeddings, correct.
Activations live only in the cache the caller holds, so nothing is hidden on
``self``.

Freezing: ``module.requires_grad_(False)`` (as in PyTorch) marks a module and all
its sub-modules frozen. A frozen module's backward still returns the input
gradient (layers below may be trainable) but adds nothing to its own
``grads``, and optimizers skip its parameters, so they get neither a gradient
nor an update.

Parameter names, nested with dots, equal the state-dict keys of the PyTorch
twin, e.g. ``q_proj.weight`` or ``norm1.bias``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from ..functional.checks import FLOAT_DTYPES, check_bool


def check_module_dtype(dtype: object) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


class Module:
    """Base class. Subclasses call :meth:`_init_parameters` once in ``__init__``."""

    def __init__(self) -> None:
        self.training = True
        self.requires_grad = True  # False: frozen (see requires_grad_)
        self._param_names: tuple[str, ...] = ()
        self.grads: dict[str, np.ndarray] = {}

    def _init_parameters(self, **params: np.ndarray | None) -> None:
        """Make each given array a parameter (``None`` = absent, e.g. ``bias=False``)."""
        self._param_names = tuple(name for name, value in params.items() if value is not None)
        for name, value in params.items():
            setattr(self, name, value)
        self.grads = {name: np.zeros_like(getattr(self, name)) for name in self._param_names}

    def accumulate_grad(self, name: str, grad: np.ndarray | None) -> None:
        """Add ``grad`` into ``grads[name]`` (nothing when frozen or ``grad`` is None).

        Adding, not assigning, is what makes a parameter used twice correct: a tied
        embedding gets the gradient of the lookup and of the output projection.
        """
        if grad is not None and self.requires_grad:
            self.grads[name] += grad

    def children(self) -> Iterator[tuple[str, Module]]:
        """Direct sub-modules, in the order they were assigned."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def modules(self) -> Iterator[Module]:
        """This module and every sub-module, depth first (as ``torch.nn.Module.modules``)."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    @contextmanager
    def eval_mode(self) -> Iterator[Module]:
        """Eval mode for a ``with`` block; afterwards every module gets back its own previous mode.

        Restoring each module's mode (not one flag for the whole tree) keeps a model
        whose parts were in different modes exactly as it was.
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield self
        finally:
            for m, training in modes:
                m.training = training

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name in self._param_names:
            yield prefix + name, getattr(self, name)
        for child_name, child in self.children():
            yield from child.named_parameters(prefix + child_name + ".")

    def named_grads(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name in self._param_names:
            yield prefix + name, self.grads[name]
        for child_name, child in self.children():
            yield from child.named_grads(prefix + child_name + ".")

    def named_trainable(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """``(name, param, grad)`` of every parameter of a module that is not frozen."""
        if self.requires_grad:
            for name in self._param_names:
                yield prefix + name, getattr(self, name), self.grads[name]
        for child_name, child in self.children():
            yield from child.named_trainable(prefix + child_name + ".")

    def named_parameter_refs(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray, np.ndarray, Module]]:
        """``(name, param, grad, owner)`` for every parameter: optimizers read ``owner.requires_grad``."""
        for name in self._param_names:
            yield prefix + name, getattr(self, name), self.grads[name], self
        for child_name, child in self.children():
            yield from child.named_parameter_refs(prefix + child_name + ".")

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (``False``) or unfreeze this module and every sub-module, like ``torch.nn.Module``."""
        self.requires_grad = check_bool("requires_grad", requires_grad)
        for _, child in self.children():
            child.requires_grad_(requires_grad)
        return self

    def parameters(self) -> list[np.ndarray]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for _, g in self.named_grads():
            g.fill(0)

    def train(self, mode: bool = True) -> Module:
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, keyed like the twin's ``state_dict()``."""
        return {name: p.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters, strictly.

        Every key must be present, no extra key is allowed, and each array must
        have the parameter's shape and dtype. Everything is checked before
        anything is written, so a bad state dict leaves the module unchanged.
        """
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise KeyError(f"state: keys do not match {type(self).__name__}: missing {missing}, unexpected {extra}")
        for name, param in own.items():
            value = state[name]
            if not isinstance(value, np.ndarray):
                raise TypeError(f"state[{name!r}]: expected a numpy.ndarray, got {type(value).__name__}")
            if value.shape != param.shape:
                raise ValueError(f"state[{name!r}]: expected shape {param.shape}, got {value.shape}")
            if value.dtype != param.dtype:
                raise TypeError(f"state[{name!r}]: expected dtype {param.dtype}, got {value.dtype}; convert explicitly")
        for name, param in own.items():
            np.copyto(param, state[name])


class ModuleList(Module):
    """An ordered list of sub-modules whose parameter names are ``0.``, ``1.``, ... (as ``torch.nn.ModuleList``)."""

    def __init__(self, modules: list[Module]) -> None:
        super().__init__()
        self._items = list(modules)

    def children(self) -> Iterator[tuple[str, Module]]:
        for i, m in enumerate(self._items):
            yield str(i), m

    def __getitem__(self, i: int) -> Module:
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)
