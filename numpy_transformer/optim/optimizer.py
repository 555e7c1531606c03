r"""The machinery every optimizer shares: parameters and gradients, parameter groups, the state dict.

Everything in ``optim/`` is plain NumPy and follows ``torch.optim`` and
``torch.nn.utils.clip_grad_norm_`` operation for operation, so a NumPy run and a
PyTorch run fed the same gradients stay within the parity contract step after step
(``parity_tests/test_optim.py`` checks every parameter and every state buffer). The update
rules themselves live in ``sgd.py``, ``adam.py`` and ``adamw.py``, one function each; this
file only decides which arrays each rule sees, with which hyper-parameters.

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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, ClassVar

import numpy as np

from ..functional.checks import (
    FLOAT_DTYPES,
    check_float_array,
    check_integer,
    check_real,
    check_same_dtype,
    check_shape,
)

# ---------------------------------------------------------------------------
# which arrays an optimizer updates
# ---------------------------------------------------------------------------


def _check_pair(name: str, param: object, grad: object, label: str = "params") -> None:
    for what, a in (("parameter", param), ("gradient", grad)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label}: {what} {name!r} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
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
# parameter groups and the optimizer base class
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


class HyperParameter:
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
    :meth:`_buffer_names`; its :meth:`_step_group` hands each parameter and its buffers to the
    file's update rule (:func:`~numpy_transformer.optim.sgd_update`, ...).

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

    lr = HyperParameter()

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
        """Apply the update rule to each ``(name, param, grad)`` of one group, with its flat ``hyper``."""
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


# ---------------------------------------------------------------------------
# for the update rules: their arrays, checked, and slices of a large parameter
# ---------------------------------------------------------------------------


def check_update_arrays(param: object, grad: object, **buffers: object) -> None:
    """The arrays of an update rule: ``param``, ``grad`` and each buffer (``None`` skipped) float32/float64
    ndarrays of ``param``'s shape and dtype; ``param`` and the buffers writeable (updated in place)."""
    check_float_array("param", param)
    given = {name: a for name, a in buffers.items() if a is not None}
    for name, a in {"grad": grad, **given}.items():
        check_float_array(name, a)
        check_shape(name, a, param.shape)
    check_same_dtype(param=param, grad=grad, **given)
    for name, a in {"param": param, **given}.items():
        if not a.flags.writeable:
            raise ValueError(f"{name}: the array is read-only; the update writes it in place")


SLICE_SIZE = 1 << 15  # elements per slice of a large parameter's update


def flat_slices(arrays: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """Matching flat views of ``SLICE_SIZE`` elements of same-shaped arrays (the whole arrays if any is
    not contiguous: then no flat view exists).

    An element-wise update rule gives the same numbers on the slices as on the whole arrays; on a
    large parameter (an embedding table) every temporary of a slice stays in cache.
    """
    if not all(a.flags.c_contiguous for a in arrays):
        yield arrays
        return
    flat = [a.reshape(-1) for a in arrays]
    for start in range(0, flat[0].size, SLICE_SIZE):
        yield [f[start : start + SLICE_SIZE] for f in flat]
