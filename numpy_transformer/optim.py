r"""Optimizers, gradient clipping and learning-rate schedules, with PyTorch's update rules.

Everything here is plain NumPy and follows ``torch.optim`` and
``torch.nn.utils.clip_grad_norm_`` operation for operation, so a NumPy run and a
PyTorch run fed the same gradients stay within the parity contract step after step
(``parity_tests/test_optim.py`` checks every parameter and every state buffer).

Parameters and gradients
------------------------
An optimizer takes either a module (anything with ``named_parameters()`` and
``named_grads()`` yielding ``(name, array)`` pairs with the same names in the same
order, like :class:`numpy_transformer.Module`) or a list of ``(name, param, grad)``
triples. It keeps references to those arrays and updates the parameters **in place**,
so the module sees the new values without any copying back. Gradients are read, never
written, by :meth:`Optimizer.step`; :meth:`Optimizer.zero_grad` zeroes them in place.
Only the parameters given to the optimizer are ever read or written.

Parameter groups
----------------
As in ``torch.optim``, ``params`` may instead be a list of dicts, each
``{"params": <module or triples>, <hyper-parameter>: value, ...}``; a key a group leaves out
takes the constructor's value, so ``AdamW([{"params": body, "lr": 1e-4}, {"params": head}],
lr=1e-3)`` gives the body a tenth of the head's rate. ``opt.param_groups[i]`` is a dict-like
view of group ``i`` (``["lr"]``, ``["betas"]``, ``["params"]`` = its names, ``["initial_lr"]``);
assignments are checked like constructor arguments. Parameter names are unique over all
groups and no array is in two groups. A key the optimizer does not know is an error
(torch keeps it silently).

All arithmetic happens in each parameter's own dtype (float32 or float64): scalars such
as the learning rate stay Python floats, which NumPy applies in the array's dtype, the
same way PyTorch applies a Python scalar to a float32 tensor.

Learning rate and schedules
---------------------------
``optimizer.lr`` is an attribute (checked: >= 0), read at every :meth:`~Optimizer.step`. A schedule
is a pure function of the update number; set the rate just before each update::

    opt.lr = inverse_sqrt_warmup(opt.step_count + 1, d_model=512, warmup_steps=4000)
    opt.step()

``opt.lr`` exists only with one group; with several, reading or assigning it raises
``AttributeError`` (assigning one rate to all would silently erase a layer-wise decay).
Set ``opt.param_groups[i]["lr"]``, or scale every group's ``initial_lr`` at once with
:meth:`Optimizer.set_lr_scale` (``LambdaLR``'s rule)::

    opt.set_lr_scale(linear_warmup_cosine(opt.step_count + 1, 1.0, warmup_steps=100, total_steps=1000))
    opt.step()

Updates are numbered from 1 (the first ``step()`` is update 1), as in the Transformer
paper. In the usual PyTorch loop (``optimizer.step(); scheduler.step()``) a
``LambdaLR`` calls its function with ``last_epoch`` = 0 for the first update, so update
``s`` here is ``last_epoch = s - 1`` there. Both schedules give 0 for ``step=0`` (before any
update) when they have a warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, ClassVar

import numpy as np

from .functional.checks import check_bool, check_integer, check_real

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "ParamGroup",
    "clip_grad_norm",
    "inverse_sqrt_warmup",
    "linear_warmup_cosine",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------


def _beta(name: str, value: object) -> float:
    out = check_real(name, value)
    if not 0.0 <= out < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {out!r}")
    return out


def _check_pair(name: str, param: object, grad: object, label: str = "params") -> None:
    for what, a in (("parameter", param), ("gradient", grad)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label}: {what} {name!r} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{label}: {what} {name!r} must be float32 or float64, got {a.dtype}")
        if not a.flags.writeable:
            raise ValueError(f"{label}: {what} {name!r} is read-only; the optimizer updates it in place")
    if grad.shape != param.shape or grad.dtype != param.dtype:
        raise ValueError(
            f"{label}: gradient {name!r} must match its parameter, shape {param.shape} dtype {param.dtype}; "
            f"got shape {grad.shape} dtype {grad.dtype}"
        )


def _collect_refs(params: Any, label: str = "params") -> list[tuple]:
    """``(name, param, grad)`` triples from a module-like object or an iterable of triples, with the
    owning module as a 4th item where it is known (for freezing).

    A :class:`numpy_transformer.Module` gives ``(name, param, grad, owner)`` through
    ``named_parameter_refs()``; a triple may also carry its owner as a 4th item. ``label`` names
    the argument in error messages (``params``, or ``param_groups[i]['params']``).
    """
    if hasattr(params, "named_parameter_refs"):
        triples = list(params.named_parameter_refs())
    elif hasattr(params, "named_parameters") and hasattr(params, "named_grads"):
        named_p = list(params.named_parameters())
        named_g = list(params.named_grads())
        names_p = [n for n, _ in named_p]
        names_g = [n for n, _ in named_g]
        if names_p != names_g:
            raise ValueError(
                f"{label}: named_parameters() and named_grads() must give the same names in the same order, "
                f"got {names_p} and {names_g}"
            )
        triples = [(n, p, g) for (n, p), (_, g) in zip(named_p, named_g, strict=True)]
    else:
        if isinstance(params, (np.ndarray, str, Mapping)) or not isinstance(params, Iterable):
            raise TypeError(
                f"{label}: expected an object with named_parameters() and named_grads(), an iterable of "
                f"(name, param, grad) triples or a list of parameter-group dicts; got {type(params).__name__}"
            )
        triples = []
        for item in params:
            if not (isinstance(item, tuple) and len(item) in (3, 4) and isinstance(item[0], str)):
                raise TypeError(f"{label}: expected (name, param, grad) triples, got {item!r:.80}")
            if len(item) == 4 and not hasattr(item[3], "requires_grad"):
                raise TypeError(f"{label}: the 4th item of {item[0]!r} must be its owning module, got {item[3]!r:.80}")
            triples.append(item)
    if not triples:
        raise ValueError(f"{label}: got no parameters to optimize")
    seen: set[str] = set()
    for name, p, g, *_ in triples:
        if name in seen:
            raise ValueError(f"{label}: duplicate parameter name {name!r}")
        seen.add(name)
        _check_pair(name, p, g, label)
    return triples


def _is_group_list(params: Any) -> bool:
    """Whether ``params`` (already a list) is a list of parameter-group dicts, as torch.optim takes."""
    if not (isinstance(params, list) and params and isinstance(params[0], Mapping)):
        return False
    for i, item in enumerate(params):
        if not isinstance(item, Mapping):
            raise TypeError(
                f"params: item 0 is a parameter-group dict, so every item must be one; item {i} is "
                f"{type(item).__name__}"
            )
    return True


# ---------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------


class ParamGroup(MutableMapping):
    """One parameter group of an optimizer: a dict-like view of its hyper-parameters, as in ``torch.optim``.

    ``opt.param_groups[i]["lr"] = 1e-4`` sets group ``i``'s learning rate for the next
    :meth:`Optimizer.step`; every assignment is checked like the constructor's argument and
    raises naming the group and the key (``param_groups[1]['lr']: ...``), leaving the group
    unchanged. The keys are the constructor's (``lr``, ``betas``, ``eps``, ... for Adam),
    plus:

    * ``"params"`` -- the names of the group's parameters, a tuple (read-only: membership
      is fixed at construction);
    * ``"initial_lr"`` -- the base learning rate :meth:`Optimizer.set_lr_scale` multiplies
      (the group's ``lr`` at construction unless the group dict gave one; ``LambdaLR``'s
      ``initial_lr``).

    Hyper-parameters that decide which state buffers exist (SGD's ``momentum`` being zero or
    not, Adam's ``amsgrad``) can be changed only in ways that keep the buffers.
    """

    def __init__(self, optimizer: Optimizer, index: int, triples: list, hyper: dict[str, Any], initial_lr: float):
        self._opt = optimizer
        self._index = index
        self._triples = triples
        self._hyper = hyper  # checked, in the optimizer's flat form (Adam: beta1, beta2)
        self._initial_lr = initial_lr

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self._triples)

    def _label(self) -> str:
        return f"param_groups[{self._index}]"

    def __getitem__(self, key: str) -> Any:
        if key == "params":
            return self.names
        if key == "initial_lr":
            return self._initial_lr
        if key in self._opt._GROUP_KEYS:
            return self._opt._unflatten(self._hyper)[key]
        raise KeyError(f"{self._label()}: no key {key!r}; the keys are {list(self)}")

    def __setitem__(self, key: str, value: object) -> None:
        if key == "params":
            raise TypeError(f"{self._label()}['params']: a group's parameters are fixed at construction")
        if key == "initial_lr":
            self._initial_lr = check_real(f"{self._label()}['initial_lr']", value, low=0.0)
        elif key in self._opt._GROUP_KEYS:
            self._update(self._opt._flatten({key: value}, self._label()), self._label())
        else:
            raise KeyError(f"{self._label()}: no key {key!r}; the keys are {list(self)}")

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"{self._label()}: keys cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(("params", *self._opt._GROUP_KEYS, "initial_lr"))

    def __len__(self) -> int:
        return len(self._opt._GROUP_KEYS) + 2

    def _update(self, flat: Mapping[str, object], prefix: str) -> None:
        """Check ``flat`` (flat-form keys) together with the rest of the group, then commit it."""
        hyper = self._opt._validate({**self._hyper, **flat}, prefix)
        self._opt._check_same_structure(self._hyper, hyper, lambda key: self._opt._label(prefix, key))
        self._hyper = hyper

    def __repr__(self) -> str:
        return f"ParamGroup({dict(self)!r})"


class _OneGroup:
    """``opt.<key>``: a hyper-parameter of a one-group optimizer, read and assigned (checked) through the group.

    With several groups there is no single value: reading or assigning raises ``AttributeError``
    pointing to ``opt.param_groups``.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    def __get__(self, opt: Optimizer | None, owner: type | None = None) -> Any:
        if opt is None:
            return self
        return opt._only_group(self.key)._hyper[self.key]

    def __set__(self, opt: Optimizer, value: object) -> None:
        opt._only_group(self.key)._update({self.key: value}, "")


class Optimizer:
    """Shared machinery: parameter groups, ``lr``, ``zero_grad`` and the flat state dict.

    A subclass lists its hyper-parameters in ``_HYPER`` (flat form, the state-dict keys;
    validated by :meth:`_validate`), their constructor / group-dict names in ``_GROUP_KEYS``
    (:meth:`_flatten` / :meth:`_unflatten` convert) and its per-parameter buffers in
    :meth:`_buffer_names`.

    Parameter groups
    ----------------
    ``params`` may be a list of dicts ``{"params": <module or triples>, "lr": ..., ...}``, as
    in ``torch.optim``: a key a group leaves out takes the constructor's value. Unlike
    torch, a key the optimizer does not know is an error (torch keeps it silently), so a
    typo such as ``"weight_decy"`` cannot pass unnoticed. Every parameter name is unique
    over all groups (take the triples from the whole model, or give a sub-module's names a
    prefix: ``sub.named_parameters("encoder.")``) and no array may be in two groups.

    Attributes
    ----------
    param_groups : list[ParamGroup]
        One dict-like view per group; ``opt.param_groups[i]["lr"] = ...`` sets group ``i``'s rate.
    lr : float
        With one group: its learning rate, read at every :meth:`step`; schedules assign it
        (checked: >= 0). With several groups, reading or assigning ``opt.lr`` raises
        ``AttributeError``: use ``param_groups[i]["lr"]`` or :meth:`set_lr_scale`. The other
        hyper-parameters (``opt.momentum``, ``opt.eps``, ...) follow the same rule.
    step_count : int
        Number of updates made so far (``step()`` calls).
    state : dict[str, dict[str, numpy.ndarray]]
        ``state[buffer][param_name]``: the per-parameter buffers, e.g. ``state["exp_avg"]["weight"]``,
        allocated as zeros at construction in the parameter's shape and dtype, for the
        parameters whose group needs that buffer.
    """

    _HYPER: ClassVar[tuple[str, ...]] = ("lr",)
    _GROUP_KEYS: ClassVar[tuple[str, ...]] = ("lr",)
    # flat key -> (group key, index) where a group key holds several flat ones (Adam's betas)
    _PARTS: ClassVar[dict[str, tuple[str, int]]] = {}

    lr = _OneGroup()

    def __init__(self, params: Any, **defaults: object) -> None:
        module_like = hasattr(params, "named_parameters") and hasattr(params, "named_grads")
        if not module_like and isinstance(params, Iterable) and not isinstance(params, (np.ndarray, str, Mapping)):
            params = list(params)  # a generator is read once, here
        lr_required = defaults["lr"] is None  # torch's `required`: then every group must give its lr
        flat_defaults = self._flatten(defaults, "")
        self._validate({**flat_defaults, "lr": 0.0} if lr_required else flat_defaults, "")
        specs = list(params) if _is_group_list(params) else [{"params": params}]
        self.param_groups: list[ParamGroup] = []
        self._owners: dict[str, Any] = {}  # parameter name -> owning module, where known (for freezing)
        owner: dict[str, int] = {}  # parameter name -> group index
        arrays: dict[int, tuple[str, int]] = {}  # id(param) -> (name, group index)
        for i, spec in enumerate(specs):
            label = "params" if len(specs) == 1 and spec.get("params") is params else f"param_groups[{i}]"
            if "params" not in spec:
                raise ValueError(f"{label}: a parameter group needs a 'params' key, got keys {sorted(spec)}")
            unknown = [k for k in spec if k not in ("params", "initial_lr", *self._GROUP_KEYS)]
            if unknown:
                raise ValueError(
                    f"{label}: unknown key {unknown[0]!r}; a {type(self).__name__} group takes "
                    f"{['params', *self._GROUP_KEYS, 'initial_lr']}"
                )
            where = label if label == "params" else f"{label}['params']"
            refs = _collect_refs(spec["params"], where)
            triples = [r[:3] for r in refs]
            self._owners.update({r[0]: r[3] for r in refs if len(r) == 4})
            for name, p, _ in triples:
                if name in owner:
                    raise ValueError(
                        f"{where}: parameter {name!r} is already in param_groups[{owner[name]}]; names must be "
                        "unique over all groups (take the triples from the whole model's named_parameters() and "
                        "named_grads(), or give a sub-module's names a prefix)"
                    )
                if id(p) in arrays:
                    other, j = arrays[id(p)]
                    raise ValueError(
                        f"{where}: parameter {name!r} is the same array as {other!r} in param_groups[{j}]; "
                        "a parameter may be in one group only"
                    )
                owner[name] = i
                arrays[id(p)] = (name, i)
            prefix = "" if label == "params" else label
            given = {k: v for k, v in spec.items() if k in self._GROUP_KEYS}
            if lr_required and "lr" not in given:
                raise TypeError(
                    f"{prefix or 'lr'}: no learning rate; give {type(self).__name__} lr=..., or an 'lr' in every group"
                )
            hyper = self._validate({**flat_defaults, **self._flatten(given, prefix)}, prefix)
            initial_lr = spec.get("initial_lr", hyper["lr"])
            initial_lr = check_real(f"{prefix}['initial_lr']" if prefix else "initial_lr", initial_lr, low=0.0)
            self.param_groups.append(ParamGroup(self, i, triples, hyper, initial_lr))
        self._params = [t for group in self.param_groups for t in group._triples]
        self.step_count = 0
        # Updates each parameter has had: equal to step_count unless it was frozen for some steps.
        self.param_steps: dict[str, int] = {name: 0 for name, _, _ in self._params}
        self.state: dict[str, dict[str, np.ndarray]] = {}
        for group in self.param_groups:
            for buf in self._buffer_names(group._hyper):
                self.state.setdefault(buf, {}).update({name: np.zeros_like(p) for name, p, _ in group._triples})

    # -- to be provided by subclasses ------------------------------------------------
    def _validate(self, hyper: Mapping[str, object], prefix: str) -> dict[str, Any]:
        """Checked, normalised flat hyper-parameters (Python scalars); raise naming the bad one.

        ``prefix`` is ``""`` for the constructor's own arguments (messages say ``lr: ...``) or
        ``"param_groups[i]"`` for a group (``param_groups[i]['lr']: ...``).
        """
        return {"lr": check_real(self._label(prefix, "lr"), hyper["lr"], low=0.0)}

    def _buffer_names(self, hyper: Mapping[str, Any]) -> tuple[str, ...]:
        """The state buffers a group with these (flat) hyper-parameters needs."""
        return ()

    def _step_group(self, hyper: Mapping[str, Any], triples: list) -> None:
        raise NotImplementedError

    def _check_same_structure(self, old: Mapping[str, Any], new: Mapping[str, Any], label: Any) -> None:
        """Reject new hyper-parameters that would need other buffers than the group has (``label(key)`` names one)."""

    # -- shared ----------------------------------------------------------------------
    def _label(self, prefix: str, key: str) -> str:
        """How messages name flat ``key``: ``betas[0]`` on its own, ``param_groups[1]['betas'][0]`` in a group."""
        outer, index = self._PARTS.get(key, (key, None))
        if not prefix:
            return outer if index is None else f"{outer}[{index}]"
        return f"{prefix}[{outer!r}]" + ("" if index is None else f"[{index}]")

    def _flatten(self, group: Mapping[str, object], prefix: str) -> dict[str, object]:
        """Constructor / group-dict keys (``betas``) -> flat keys (``beta1``, ``beta2``); unchecked values."""
        return dict(group)

    def _unflatten(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        """Flat keys -> constructor / group-dict keys, in ``_GROUP_KEYS`` order."""
        return {key: hyper[key] for key in self._GROUP_KEYS}

    def _only_group(self, what: str) -> ParamGroup:
        if len(self.param_groups) != 1:
            key = self._PARTS.get(what, (what,))[0]
            hint = f"opt.param_groups[i][{key!r}]" if key in self._GROUP_KEYS else "opt.param_groups[i]"
            more = ", or scale every group's initial_lr with opt.set_lr_scale(factor)" if what == "lr" else ""
            raise AttributeError(
                f"{what}: this {type(self).__name__} has {len(self.param_groups)} parameter groups, each with its "
                f"own hyper-parameters; use {hint}{more}"
            )
        return self.param_groups[0]

    def step(self) -> None:
        """One update of every parameter of every group, in place (see the class docstring for the rule).

        A parameter whose module is frozen (``module.requires_grad_(False)``) is skipped: no
        update, no change to its buffers or to its own update count (``param_steps``), as
        ``torch.optim`` skips a parameter whose ``.grad`` is ``None``. Adam's bias correction
        uses that per-parameter count, so a layer unfrozen late starts its moments afresh,
        exactly as in PyTorch.
        """
        self.step_count += 1
        for group in self.param_groups:
            active = [t for t in group._triples if self.is_trainable(t[0])]
            for name, _, _ in active:
                self.param_steps[name] += 1
            self._step_group(group._hyper, active)

    def is_trainable(self, name: str) -> bool:
        """False when the parameter's owning module is known and frozen."""
        owner = self._owners.get(name)
        return owner is None or bool(owner.requires_grad)

    def set_lr_scale(self, factor: object) -> None:
        """Set every group's ``lr`` to its ``initial_lr`` times ``factor`` (one number, or one per group).

        The rule of ``torch.optim.lr_scheduler.LambdaLR``: ``lr_i = initial_lr_i * f(last_epoch)``.
        Its usual loop (``opt.step(); sched.step()``) corresponds to::

            opt.set_lr_scale(f(opt.step_count))   # LambdaLR's last_epoch = our step_count
            opt.step()

        so a layer-wise decay set through the groups' rates keeps its ratios under the schedule.
        Checked before anything is written (``factor`` >= 0, finite products).
        """
        n = len(self.param_groups)
        if isinstance(factor, (list, tuple)):
            if len(factor) != n:
                raise ValueError(f"factor: expected one factor per parameter group ({n}), got {len(factor)}")
            factors = [check_real(f"factor[{i}]", f, low=0.0) for i, f in enumerate(factor)]
        else:
            factors = [check_real("factor", factor, low=0.0)] * n
        new = [
            check_real(f"param_groups[{i}]['lr']", group._initial_lr * f, low=0.0)
            for i, (group, f) in enumerate(zip(self.param_groups, factors, strict=True))
        ]
        for group, lr in zip(self.param_groups, new, strict=True):
            group._hyper["lr"] = lr

    def hyperparameters(self) -> dict[str, Any]:
        """The only group's hyper-parameters, flat (betas split into beta1, beta2).

        With several groups: ``AttributeError``; read ``param_groups`` instead.
        """
        return dict(self._only_group("hyperparameters")._hyper)

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, p, _ in self._params:
            yield name, p

    def named_grads(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, _, g in self._params:
            yield name, g

    def zero_grad(self) -> None:
        """Set every gradient to zero, in place."""
        for _, _, g in self._params:
            g.fill(0)

    def _group_prefixes(self) -> list[str]:
        """State-dict key prefix of each group: ``""`` with one group, ``"param_groups.<i>."`` with several."""
        if len(self.param_groups) == 1:
            return [""]
        return [f"param_groups.{i}." for i in range(len(self.param_groups))]

    def state_dict(self) -> dict[str, Any]:
        """A flat dict of Python scalars and array copies, ready for ``np.savez(path, **state)``.

        Keys: ``"type"`` (the class name), ``"step"``, the hyper-parameters and
        ``"<buffer>.<param name>"`` for every buffer, e.g. ``"exp_avg.q_proj.weight"``.
        With one group the hyper-parameters are top-level keys (``"lr"``, ``"beta1"``, ...,
        ``"initial_lr"``), as before groups existed. With several, group ``i`` has
        ``"param_groups.<i>.<key>"`` for each of them and ``"param_groups.<i>.params"``, its
        parameter names as a string array.
        """
        out: dict[str, Any] = {"type": type(self).__name__, "step": self.step_count}
        for group, prefix in zip(self.param_groups, self._group_prefixes(), strict=True):
            if prefix:
                out[f"{prefix}params"] = np.array(group.names)
            out.update({f"{prefix}{key}": value for key, value in group._hyper.items()})
            out[f"{prefix}initial_lr"] = group._initial_lr
        for buf, arrays in self.state.items():
            for name, a in arrays.items():
                out[f"{buf}.{name}"] = a.copy()
        for name, count in self.param_steps.items():
            if count != self.step_count:  # only parameters that were frozen for some updates
                out[f"param_step.{name}"] = count
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore step count, hyper-parameters and buffers from :meth:`state_dict` (or its ``.npz``).

        Scalars may be Python scalars or 0-d arrays (what ``np.load`` gives back). The keys
        must be exactly those of this optimizer's own state dict (same number of groups,
        each with the same parameter names), every buffer must have its parameter's shape
        and dtype, and the hyper-parameters must pass the constructor's checks. A one-group
        state without ``"initial_lr"`` (saved before parameter groups existed) loads and
        keeps this optimizer's ``initial_lr``. Everything is checked before anything is
        written, so on error (``KeyError``, ``TypeError``, ``ValueError``) the optimizer is
        unchanged.
        """
        n = len(self.param_groups)
        saved = {key.split(".")[1] for key in state if key.startswith("param_groups.")}
        n_saved = len(saved) if saved else int("lr" in state)
        if n_saved != n:
            raise ValueError(
                f"state: saved from an optimizer with {n_saved} parameter group(s), this {type(self).__name__} has {n}"
            )
        prefixes = self._group_prefixes()
        buffer_keys = {f"{buf}.{name}": (buf, name) for buf, arrays in self.state.items() for name in arrays}
        group_keys = {
            f"{prefix}{key}"
            for prefix in prefixes
            for key in (*self._HYPER, "initial_lr", *(("params",) if prefix else ()))
        }
        step_keys = {f"param_step.{name}": name for name in self.param_steps}
        own_keys = {"type", "step", *group_keys, *buffer_keys, *step_keys}
        optional = ({"initial_lr"} if n == 1 else set()) | set(step_keys)
        missing = sorted(own_keys - set(state) - optional)
        extra = sorted(set(state) - own_keys)
        if missing or extra:
            raise KeyError(f"state: keys do not match {type(self).__name__}: missing {missing}, unexpected {extra}")
        kind = state["type"]
        kind = kind[()] if isinstance(kind, np.ndarray) and kind.ndim == 0 else kind
        if str(kind) != type(self).__name__:
            raise ValueError(f"state['type']: this is a {type(self).__name__}, the state is from a {kind!s}")
        step = check_integer("state['step']", state["step"])
        param_steps = {name: step for name in self.param_steps}
        for key, name in step_keys.items():
            if key in state:
                param_steps[name] = check_integer(f"state[{key!r}]", state[key])
                if param_steps[name] > step:
                    raise ValueError(f"state[{key!r}]: expected at most state['step']={step}, got {param_steps[name]}")
        new_groups = []
        for i, (group, prefix) in enumerate(zip(self.param_groups, prefixes, strict=True)):
            if prefix:
                names = state[f"{prefix}params"]
                names = np.asarray(names) if isinstance(names, (np.ndarray, list, tuple)) else None
                if names is None or names.ndim != 1 or names.dtype.kind not in "US":
                    raise TypeError(f"state['{prefix}params']: expected a 1-d array of parameter names")
                if [str(x) for x in names] != list(group.names):
                    raise ValueError(
                        f"state['{prefix}params']: the state's group {i} holds {[str(x) for x in names]}, "
                        f"this optimizer's holds {list(group.names)}"
                    )
            flat = {key: state[f"{prefix}{key}"] for key in self._HYPER}
            hyper = self._validate(flat, prefix and f"param_groups[{i}]")
            self._check_same_structure(group._hyper, hyper, lambda key, prefix=prefix: f"state['{prefix}{key}']")
            initial_lr = group._initial_lr
            if f"{prefix}initial_lr" in state:
                initial_lr = check_real(f"state['{prefix}initial_lr']", state[f"{prefix}initial_lr"], low=0.0)
            new_groups.append((hyper, initial_lr))
        for key, (_, name) in buffer_keys.items():
            value, param = state[key], self._param(name)
            if not isinstance(value, np.ndarray):
                raise TypeError(f"state[{key!r}]: expected a numpy.ndarray, got {type(value).__name__}")
            if value.shape != param.shape:
                raise ValueError(f"state[{key!r}]: expected shape {param.shape}, got {value.shape}")
            if value.dtype != param.dtype:
                raise TypeError(f"state[{key!r}]: expected dtype {param.dtype}, got {value.dtype}")
        # everything checked: commit
        self.step_count = step
        self.param_steps = param_steps
        for group, (hyper, initial_lr) in zip(self.param_groups, new_groups, strict=True):
            group._hyper, group._initial_lr = hyper, initial_lr
        for key, (buf, name) in buffer_keys.items():
            np.copyto(self.state[buf][name], state[key])

    def _param(self, name: str) -> np.ndarray:
        return next(p for n, p, _ in self._params if n == name)

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({len(self._params)} parameters, step_count={self.step_count}"
        if len(self.param_groups) == 1:
            hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
            return f"{head}, {hp})"
        groups = ", ".join(repr({k: v for k, v in g.items() if k != "params"}) for g in self.param_groups)
        return f"{head}, param_groups=[{groups}])"


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay.

    The same rule as ``torch.optim.SGD``. With gradient :math:`g_t`, parameter
    :math:`\theta`, learning rate :math:`\gamma`, momentum :math:`\mu`, dampening
    :math:`\tau` and weight decay :math:`\lambda`, update :math:`t = 1, 2, \dots` is::

        g_t = g_t + \lambda \theta_{t-1}                       (if \lambda \ne 0)
        b_t = g_t                                              (t = 1: the buffer starts at the gradient,
        b_t = \mu b_{t-1} + (1 - \tau) g_t                      t > 1:  not at (1 - \tau) g_1)
        g_t = g_t + \mu b_t   (Nesterov)   or   g_t = b_t       (if \mu \ne 0)
        \theta_t = \theta_{t-1} - \gamma g_t

    Parameters
    ----------
    params : module, iterable of (name, param, grad), or list of group dicts
        Anything with ``named_parameters()`` / ``named_grads()``, ``(name, param, grad)``
        triples of float32/float64 arrays of matching shape and dtype, or parameter groups
        ``[{"params": ..., "lr": ..., "momentum": ...}, ...]`` (see :class:`Optimizer`).
    lr : float
        Learning rate :math:`\gamma` >= 0. Required, unless every group gives its own
        (torch's ``required``; leave it ``None`` then).
    momentum : float, default 0
        :math:`\mu` >= 0. With 0 there is no buffer.
    dampening : float, default 0
        :math:`\tau` in [0, 1].
    weight_decay : float, default 0
        L2 coefficient :math:`\lambda` >= 0, added to the gradient.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0`` (as in PyTorch).

    State buffers: ``momentum_buffer`` (only for parameters in a group with ``momentum != 0``).
    """

    _HYPER: ClassVar[tuple[str, ...]] = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _GROUP_KEYS: ClassVar[tuple[str, ...]] = _HYPER

    momentum = _OneGroup()
    dampening = _OneGroup()
    weight_decay = _OneGroup()
    nesterov = _OneGroup()

    def __init__(
        self,
        params: Any,
        lr: float | None = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(
            params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
        )

    def _validate(self, hyper: Mapping[str, object], prefix: str) -> dict[str, Any]:
        out = super()._validate(hyper, prefix)
        label = self._label
        out["momentum"] = check_real(label(prefix, "momentum"), hyper["momentum"], low=0.0)
        out["dampening"] = check_real(label(prefix, "dampening"), hyper["dampening"], low=0.0)
        if out["dampening"] > 1.0:
            raise ValueError(f"{label(prefix, 'dampening')}: expected a number in [0, 1], got {out['dampening']!r}")
        out["weight_decay"] = check_real(label(prefix, "weight_decay"), hyper["weight_decay"], low=0.0)
        out["nesterov"] = check_bool(label(prefix, "nesterov"), hyper["nesterov"])
        if out["nesterov"] and (out["momentum"] == 0.0 or out["dampening"] != 0.0):
            raise ValueError(
                f"{label(prefix, 'nesterov')}: Nesterov momentum needs momentum > 0 and dampening == 0, "
                f"got momentum={out['momentum']!r}, dampening={out['dampening']!r}"
            )
        return out

    def _buffer_names(self, hyper: Mapping[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if hyper["momentum"] != 0.0 else ()

    def _check_same_structure(self, old: Mapping[str, Any], new: Mapping[str, Any], label: Any) -> None:
        if (new["momentum"] != 0.0) != (old["momentum"] != 0.0):
            raise ValueError(
                f"{label('momentum')}: {new['momentum']!r} and the group's {old['momentum']!r} disagree "
                "on whether there is a momentum buffer (fixed at construction)"
            )

    def _step_group(self, hyper: Mapping[str, Any], triples: list) -> None:
        lr, mu, tau, wd, nesterov = (hyper[k] for k in self._HYPER)
        for name, p, g in triples:
            d_p = g + wd * p if wd != 0.0 else g  # a new array: the stored gradient stays as backward wrote it
            if mu != 0.0:
                buf = self.state["momentum_buffer"][name]
                if self.param_steps[name] == 1:
                    np.copyto(buf, d_p)  # PyTorch starts the buffer at the gradient itself
                else:
                    buf *= mu
                    buf += (1.0 - tau) * d_p
                d_p = d_p + mu * buf if nesterov else buf
            p -= lr * d_p


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015) with L2 weight decay and optional AMSGrad, as ``torch.optim.Adam``.

    With gradient :math:`g_t`, learning rate :math:`\gamma`, betas :math:`\beta_1, \beta_2`,
    :math:`\epsilon` and weight decay :math:`\lambda`, update :math:`t = 1, 2, \dots` is::

        g_t      = g_t + \lambda \theta_{t-1}                  (L2: the decay goes through the moments)
        m_t      = \beta_1 m_{t-1} + (1 - \beta_1) g_t          (m_0 = 0)
        v_t      = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2        (v_0 = 0)
        \hat v_t = \max(\hat v_{t-1}, v_t)  (AMSGrad)  or  v_t
        \theta_t = \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \cdot
                   \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    :math:`\epsilon` is added **after** the bias-corrected square root. (Adding it to
    :math:`\sqrt{\hat v_t}` before dividing by :math:`\sqrt{1 - \beta_2^t}` is a different
    optimizer: early on, while :math:`1 - \beta_2^t` is small, its effective epsilon is
    many times larger.)

    Parameters
    ----------
    params : module, iterable of (name, param, grad), or list of group dicts
        Anything with ``named_parameters()`` / ``named_grads()``, ``(name, param, grad)``
        triples of float32/float64 arrays of matching shape and dtype, or parameter groups
        ``[{"params": ..., "lr": ..., "betas": ...}, ...]`` (see :class:`Optimizer`).
    lr : float, default 1e-3
        :math:`\gamma` >= 0.
    betas : (float, float), default (0.9, 0.999)
        :math:`\beta_1, \beta_2`, each in [0, 1).
    eps : float, default 1e-8
        :math:`\epsilon` > 0.
    weight_decay : float, default 0
        :math:`\lambda` >= 0, added to the gradient (L2 regularisation). See :class:`AdamW`
        for decoupled decay.
    amsgrad : bool, default False
        Normalise by the running maximum of :math:`v_t`.

    State buffers: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`) and, with AMSGrad,
    ``max_exp_avg_sq`` (:math:`\hat v`) -- PyTorch's names.
    """

    _HYPER: ClassVar[tuple[str, ...]] = ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad")
    _GROUP_KEYS: ClassVar[tuple[str, ...]] = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _PARTS: ClassVar[dict[str, tuple[str, int]]] = {"beta1": ("betas", 0), "beta2": ("betas", 1)}
    _DECOUPLED: ClassVar[bool] = False

    beta1 = _OneGroup()
    beta2 = _OneGroup()
    eps = _OneGroup()
    weight_decay = _OneGroup()
    amsgrad = _OneGroup()

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def _flatten(self, group: Mapping[str, object], prefix: str) -> dict[str, object]:
        out = dict(group)
        if "betas" in out:
            betas = out.pop("betas")
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
                raise TypeError(f"{self._label(prefix, 'betas')}: expected a pair (beta1, beta2), got {betas!r}")
            out["beta1"], out["beta2"] = betas
        return out

    def _unflatten(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        out = {key: hyper[key] for key in self._HYPER}
        out["betas"] = (out.pop("beta1"), out.pop("beta2"))
        return {key: out[key] for key in self._GROUP_KEYS}

    def _validate(self, hyper: Mapping[str, object], prefix: str) -> dict[str, Any]:
        out = super()._validate(hyper, prefix)
        label = self._label
        out["beta1"] = _beta(label(prefix, "beta1"), hyper["beta1"])
        out["beta2"] = _beta(label(prefix, "beta2"), hyper["beta2"])
        out["eps"] = check_real(label(prefix, "eps"), hyper["eps"], low=0.0, low_inclusive=False)
        out["weight_decay"] = check_real(label(prefix, "weight_decay"), hyper["weight_decay"], low=0.0)
        out["amsgrad"] = check_bool(label(prefix, "amsgrad"), hyper["amsgrad"])
        return out

    def _buffer_names(self, hyper: Mapping[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hyper["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _check_same_structure(self, old: Mapping[str, Any], new: Mapping[str, Any], label: Any) -> None:
        if new["amsgrad"] != old["amsgrad"]:
            raise ValueError(
                f"{label('amsgrad')}: {new['amsgrad']} but the group has {old['amsgrad']} "
                "(fixed at construction: it decides the max_exp_avg_sq buffer)"
            )

    def _step_group(self, hyper: Mapping[str, Any], triples: list) -> None:
        lr, beta1, beta2, eps, wd, amsgrad = (hyper[k] for k in self._HYPER)
        for name, p, g in triples:
            t = self.param_steps[name]  # = step_count unless the parameter was frozen for a while
            step_size = lr / (1.0 - beta1**t)  # gamma / (1 - beta1^t), a Python float
            bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
            buffers = [p, g, self.state["exp_avg"][name], self.state["exp_avg_sq"][name]]
            if amsgrad:
                buffers.append(self.state["max_exp_avg_sq"][name])
            # Element-wise, so it can run slice by slice: on a large parameter (an embedding
            # table) every temporary of a slice stays in cache. Same operations, same numbers.
            for p_s, g_s, m_s, v_s, *max_s in _slices(buffers):
                v_max = max_s[0] if max_s else None
                self._update_slice(
                    p_s, g_s, m_s, v_s, v_max, lr, beta1, beta2, eps, wd, step_size, bias_correction2_sqrt
                )

    def _update_slice(self, p, g, m, v, v_max, lr, beta1, beta2, eps, wd, step_size, bias_correction2_sqrt) -> None:
        """The rule of the class docstring on (a slice of) one parameter; ``v_max`` only with AMSGrad."""
        if wd != 0.0:
            if self._DECOUPLED:
                p *= 1.0 - lr * wd  # AdamW: shrink the parameter first, the moments never see it
            else:
                g = g + wd * p  # Adam: L2 term joins the gradient (a new array; the stored grad is kept)
        m += (1.0 - beta1) * (g - m)  # = beta1 m + (1 - beta1) g, written as a step towards g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        if v_max is not None:  # AMSGrad: the running maximum of v
            np.maximum(v_max, v, out=v_max)
            v_hat = v_max
        else:
            v_hat = v
        denom = np.sqrt(v_hat) / bias_correction2_sqrt + eps  # eps after the bias correction
        p -= step_size * (m / denom)


_SLICE = 1 << 15  # elements per slice of a large parameter's update


def _slices(arrays: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """Matching flat views of ``_SLICE`` elements of same-shaped arrays (the whole arrays if any is
    not contiguous: then no flat view exists)."""
    if not all(a.flags.c_contiguous for a in arrays):
        yield arrays
        return
    flat = [a.reshape(-1) for a in arrays]
    for start in range(0, flat[0].size, _SLICE):
        yield [f[start : start + _SLICE] for f in flat]


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    The parameter is shrunk by :math:`\gamma \lambda` **before** the Adam update, and the
    decay never enters the moments::

        \theta_{t-1}' = \theta_{t-1} (1 - \gamma \lambda)
        m_t, v_t, \hat v_t  as in Adam, from the raw gradient g_t
        \theta_t = \theta_{t-1}' - \frac{\gamma}{1 - \beta_1^t} \cdot
                   \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    So with a zero gradient an AdamW parameter decays geometrically, while an Adam
    parameter with L2 decay moves by about :math:`\gamma` per step whatever its size (its
    decay term is normalised like any gradient).

    Parameters are those of :class:`Adam`; only the default ``weight_decay=1e-2`` differs.
    """

    _DECOUPLED: ClassVar[bool] = True

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------


def _collect_grads(grads: Any) -> list[np.ndarray]:
    if hasattr(grads, "named_grads"):
        arrays = [g for _, g in grads.named_grads()]
    elif isinstance(grads, np.ndarray):
        arrays = [grads]
    elif isinstance(grads, Mapping):
        arrays = list(grads.values())
    elif isinstance(grads, Iterable) and not isinstance(grads, str):
        arrays = list(grads)
    else:
        raise TypeError(
            "grads: expected an object with named_grads(), a mapping or an iterable of arrays, "
            f"got {type(grads).__name__}"
        )
    for i, g in enumerate(arrays):
        if not isinstance(g, np.ndarray) or g.dtype not in _FLOAT_DTYPES:
            what = g.dtype if isinstance(g, np.ndarray) else type(g).__name__
            raise TypeError(f"grads: item {i} must be a float32 or float64 numpy.ndarray, got {what}")
    return arrays


def clip_grad_norm(grads: Any, max_norm: float, eps: float = 1e-6, error_if_nonfinite: bool = False) -> float:
    r"""Scale all gradients together so that their joint 2-norm is at most about ``max_norm``.

    The same rule as ``torch.nn.utils.clip_grad_norm_`` (2-norm)::

        N = \sqrt{\sum_i \lVert g_i \rVert_2^2}            (one norm over every gradient together)
        c = \min\left(\frac{\text{max\_norm}}{N + \epsilon}, 1\right),  \epsilon = 10^{-6}
        g_i \leftarrow c \, g_i                              (in place)

    Because of :math:`\epsilon`, a clipped norm ends slightly *below* ``max_norm``, and a
    norm exactly at ``max_norm`` is scaled by about :math:`1 - \epsilon / \text{max\_norm}`.
    When :math:`c = 1` the gradients are not touched (bit-identical). Each gradient's norm
    and :math:`c` are computed in the gradients' dtype, as PyTorch does.

    Parameters
    ----------
    grads : module, optimizer, mapping or iterable of arrays
        Anything with ``named_grads()`` (a module or an optimizer), a dict of gradients,
        a list of float32/float64 arrays, or one array. Scaled in place.
    max_norm : float
        Largest allowed total norm, > 0.
    eps : float, default 1e-6
        Added to the total norm in the coefficient's denominator (PyTorch fixes it at 1e-6).
    error_if_nonfinite : bool, default False
        Raise ``ValueError`` when the total norm is NaN or infinite. Otherwise, as in
        PyTorch, a NaN norm makes every gradient NaN and an infinite one multiplies them by 0.

    Returns
    -------
    float
        The total norm :math:`N` before clipping.
    """
    if not (isinstance(max_norm, (int, float, np.floating)) and max_norm == math.inf):
        max_norm = check_real("max_norm", max_norm, low=0.0, low_inclusive=False)  # inf: measure only, as in PyTorch
    eps = check_real("eps", eps, low=0.0)
    arrays = _collect_grads(grads)
    if not arrays:
        return 0.0
    dtype = np.result_type(*arrays)
    norms = np.array([np.linalg.norm(g.ravel()) for g in arrays], dtype=dtype)  # each in its own dtype first
    total = np.linalg.norm(norms)
    if error_if_nonfinite and not np.isfinite(total):
        raise ValueError(f"grads: the total gradient norm is {float(total)}; clipping would make it meaningless")
    coef = dtype.type(max_norm) / (total + dtype.type(eps))
    if not coef >= 1.0:  # c < 1, or NaN, which PyTorch's clamp lets through too
        with np.errstate(invalid="ignore"):  # inf * 0 = NaN is the defined (PyTorch) result here
            for g in arrays:
                g *= g.dtype.type(coef)
    return float(total)


# ---------------------------------------------------------------------------
# learning-rate schedules (pure functions of the update number)
# ---------------------------------------------------------------------------


def inverse_sqrt_warmup(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    r"""The schedule of "Attention Is All You Need": linear warm-up, then :math:`1/\sqrt{\text{step}}` decay.

    ::

        \text{lr}(s) = \text{factor} \cdot d_{\text{model}}^{-1/2} \cdot
                       \min\left(s^{-1/2},\; s \cdot w^{-3/2}\right),   s = 1, 2, \dots

    with :math:`w` = ``warmup_steps``. The two branches meet at :math:`s = w`, the peak,
    :math:`\text{factor} / \sqrt{d_{\text{model}} w}`. ``step=0`` (before any update)
    gives 0, the limit of the warm-up line.

    Parameters
    ----------
    step : int
        Number of the update about to be made, >= 0: ``optimizer.step_count + 1``. In a
        PyTorch loop with ``LambdaLR`` this is ``last_epoch + 1``, so the equivalent is
        ``LambdaLR(opt, lambda e: inverse_sqrt_warmup(e + 1, ...))`` with base lr 1.
    d_model : int
        Model width, >= 1.
    warmup_steps : int
        :math:`w` >= 1.
    factor : float, default 1.0
        Overall scale, >= 0.

    Returns
    -------
    float
        The learning rate for update ``step``.
    """
    step = check_integer("step", step)
    d_model = check_integer("d_model", d_model, low=1)
    warmup_steps = check_integer("warmup_steps", warmup_steps, low=1)
    factor = check_real("factor", factor, low=0.0)
    if step == 0:
        return 0.0
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def linear_warmup_cosine(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    r"""Linear warm-up to ``base_lr``, then half a cosine down to ``min_lr`` at ``total_steps``, then flat.

    ::

        \text{lr}(s) = \text{base\_lr} \cdot s / w                                  0 <= s < w
        \text{lr}(s) = \text{min\_lr} + (\text{base\_lr} - \text{min\_lr})
                       \cdot \tfrac12 \left(1 + \cos\left(\pi \frac{s - w}{T - w}\right)\right)   w <= s <= T
        \text{lr}(s) = \text{min\_lr}                                               s > T

    with :math:`w` = ``warmup_steps`` and :math:`T` = ``total_steps``. The peak
    ``base_lr`` is at :math:`s = w`; update 1 already gets ``base_lr / w``.

    In PyTorch the same rates (for ``w >= 2``, updates 1 to ``T``) come from
    ``SequentialLR(opt, [LinearLR(opt, 1/w, 1.0, total_iters=w-1),
    CosineAnnealingLR(opt, T_max=T-w, eta_min=min_lr)], milestones=[w-1])`` with base lr
    ``base_lr``. After ``T`` PyTorch's cosine rises again (it is periodic); this one stays
    at ``min_lr``.

    Parameters
    ----------
    step : int
        Number of the update about to be made, >= 0: ``optimizer.step_count + 1``
        (PyTorch's ``last_epoch + 1``).
    base_lr : float
        Peak learning rate, >= 0.
    warmup_steps : int
        :math:`w` >= 0; 0 means no warm-up.
    total_steps : int
        :math:`T` >= max(1, w): where the cosine reaches ``min_lr``.
    min_lr : float, default 0.0
        Final learning rate, in [0, base_lr].

    Returns
    -------
    float
        The learning rate for update ``step``.
    """
    step = check_integer("step", step)
    base_lr = check_real("base_lr", base_lr, low=0.0)
    warmup_steps = check_integer("warmup_steps", warmup_steps)
    total_steps = check_integer("total_steps", total_steps, low=max(1, warmup_steps))
    min_lr = check_real("min_lr", min_lr, low=0.0)
    if min_lr > base_lr:
        raise ValueError(f"min_lr: expected a number <= base_lr={base_lr!r}, got {min_lr!r}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step <= total_steps:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr
