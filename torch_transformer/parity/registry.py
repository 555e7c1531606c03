"""The parity machinery: what a case is, how one registers, how one draw of it runs, and its result.

A :class:`Case` knows how to draw inputs for given sizes, run the NumPy forward and
backward, and run the twin's forward (autograd gives its backward); it may also name
the PyTorch :class:`Builtin` it matches. :func:`run_case` compares, for one draw:

* the forward output, NumPy vs twin, and every gradient (inputs and parameters);
* in float64, every gradient vs central finite differences;
* where the case declares a built-in (and the draw is one the built-in can take), the
  output and every gradient vs that built-in, with our weights mapped in.

This module holds no case: the ``cases_*`` modules of this package register theirs with
:func:`register` and import nothing of the package but this module.

Sizes (``dims``): B batch, T query length, S key length, H heads, D head width, V
vocabulary / classes, ``mask`` one of :data:`MASK_KINDS`, ``variant`` one of the case's
``variants``: a frozen dataclass whose fields name what the variant changes, so a
failure report reads ``GRUVariant(bias=True, lengths=False, reverse=True)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

import numpy_transformer as nt
from numpy_transformer.modules.dropout_masks import DropoutMasks
from numpy_transformer.testing import Comparison, numerical_gradient, relative_error, tolerance

from ..bridge import torch_dtype

MASK_KINDS = ("none", "padding", "causal", "padding+causal", "random", "fully_masked_row")
KINDS = ("op", "module", "model")  # a functional pair, a layer, or layers composed

Arrays = dict[str, Any]  # name -> ndarray (float inputs/parameters, int ids, bool masks)
Backward = Callable[[np.ndarray], dict[str, np.ndarray]]
# Read after the backward: our name -> gradient (a tensor, an array, or None for zeros).
Gradients = Callable[[], Mapping[str, "torch.Tensor | np.ndarray | None"]]


# ---------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class NoVariant:
    """The variant of a case that comes in one form only."""


NO_VARIANT = NoVariant()


def describe_variant(variant: object) -> str:
    """``"bias=True, lengths=False"``: every field of a variant by name ("" for :data:`NO_VARIANT`)."""
    return ", ".join(f"{f.name}={getattr(variant, f.name)!r}" for f in dataclasses.fields(variant))


def _check_variants(name: str, variants: tuple) -> None:
    if not isinstance(variants, tuple) or not variants:
        raise TypeError(f"{name}: variants must be a non-empty tuple, got {variants!r}")
    kinds = {type(v) for v in variants}
    if len(kinds) != 1:
        raise TypeError(f"{name}: every variant must be of one type, got {sorted(k.__name__ for k in kinds)}")
    (kind,) = kinds
    if not (dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen):
        raise TypeError(f"{name}: a variant must be a frozen dataclass with named fields, got {variants[0]!r}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"{name}: variants repeat: {variants}")


# ---------------------------------------------------------------------------- cases


def _always_supported(arrays: Arrays, dims: dict) -> str | None:
    return None


@dataclass(frozen=True, kw_only=True)
class Builtin:
    """The PyTorch built-in a case also matches (the fourth row of the parity contract).

    ``run(tensors, dims)`` returns ``(out, gradients)``: the built-in's output for the
    draw, with our weights mapped in, and a function that, after the backward, maps
    each differentiable name of the case to its gradient (``None`` counts as zeros).
    ``unsupported(arrays, dims)`` says why the built-in cannot take a draw (it draws
    its own dropout mask, it rejects a row of length 0, ...), or returns ``None``.
    """

    name: str  # as the table and the tests print it: "F.softmax", "nn.MultiheadAttention (bridge)"
    run: Callable[[dict[str, torch.Tensor], dict], tuple[torch.Tensor, Gradients]]
    unsupported: Callable[[Arrays, dict], str | None] = _always_supported


@dataclass(frozen=True, kw_only=True)
class Case:
    """One op or module under test.

    ``draw(rng, dtype, dims)`` returns the arrays; ``differentiable(dims)`` names the
    float arrays whose gradients are compared, and with ``all_parameters=True`` every
    other float array of the draw (a module's parameters) is compared too. ``numpy(arrays,
    dims)`` returns ``(out, backward)`` where ``backward(dout)`` maps each differentiable
    name to its gradient. ``torch(tensors, dims)`` returns ``(out, leaves)`` with
    ``leaves[name]`` the tensor whose ``.grad`` autograd fills.
    """

    name: str
    kind: str  # one of KINDS
    draw: Callable[[np.random.Generator, np.dtype, dict], Arrays]
    differentiable: Callable[[dict], tuple[str, ...]]
    numpy: Callable[[Arrays, dict], tuple[np.ndarray, Backward]]
    torch: Callable[[dict[str, torch.Tensor], dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    all_parameters: bool = False
    variants: tuple[Any, ...] = (NO_VARIANT,)  # frozen dataclasses of one type
    uses: tuple[str, ...] = field(default=())  # dims keys this case reads (for Hypothesis)
    # Where a gradient is zero by *convention* rather than by calculus (the
    # ``padding_idx`` row of an embedding), finite differences see the true
    # derivative; this hook zeroes those entries of the numeric estimate.
    conventional_zeros: Callable[[str, np.ndarray, dict], np.ndarray] | None = None
    builtin: Builtin | None = None


_CASES: dict[str, Case] = {}
CASES: Mapping[str, Case] = MappingProxyType(_CASES)  # read-only: cases enter through register()


def register(case: Case) -> Case:
    """Add ``case`` to :data:`CASES` (in registration order: the order of the ``parity`` table)."""
    if not isinstance(case, Case):
        raise TypeError(f"case: expected a Case, got {type(case).__name__}")
    if case.name in _CASES:
        raise ValueError(f"case {case.name!r} is registered twice")
    if case.kind not in KINDS:
        raise ValueError(f"{case.name}: kind must be one of {KINDS}, got {case.kind!r}")
    _check_variants(case.name, case.variants)
    _CASES[case.name] = case
    return case


# ---------------------------------------------------------------------------- drawing


def draw_mask(rng: np.random.Generator, kind: str, B: int, H: int, T: int, S: int) -> tuple[np.ndarray | None, bool]:
    """A mask of the given kind (True = may attend) and the ``is_causal`` flag."""
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    if kind in ("padding", "padding+causal"):
        lengths = rng.integers(1, S + 1, size=B)  # at least key 0 stays visible
        keep = np.arange(S)[None, :] < lengths[:, None]  # (B, S)
        return keep[:, None, None, :], kind == "padding+causal"  # (B, 1, 1, S)
    if kind == "random":
        mask = rng.random((B, H, T, S)) < 0.7
        mask[..., 0] = True  # no fully masked row here
        return mask, False
    if kind == "fully_masked_row":
        mask = rng.random((B, H, T, S)) < 0.7
        mask[..., 0] = True
        mask[rng.integers(B), rng.integers(H), rng.integers(T), :] = False
        return mask, False
    raise ValueError(f"mask: expected one of {MASK_KINDS}, got {kind!r}")


def normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(dtype)


def spread_rows(x: np.ndarray) -> np.ndarray:
    """Give every row of the last axis a standard deviation of at least ~0.7.

    LayerNorm amplifies rounding by ``rstd = 1/sqrt(var + eps)``: on a nearly
    constant row, float32 results of *any* two implementations (ours, the twin,
    ``nn.LayerNorm``) differ by far more than 1e-5, because the problem itself is
    ill-conditioned. The contract is about rounding on well-conditioned inputs,
    so the draw keeps rows spread out (``parity_tests`` shows the ill-conditioned
    case separately).
    """
    C = x.shape[-1]
    if C < 2:
        return x
    narrow = x.std(axis=-1, keepdims=True) < 0.3
    return np.where(narrow, x + np.linspace(-1.0, 1.0, C), x).astype(x.dtype)


def layer_dims(d: dict) -> tuple[int, int, int]:
    """Heads, d_model, d_ff for layer and model cases: small, so finite differences can probe every parameter.

    d_model is 4 in float64 (finite differences probe every parameter, so every width
    costs) and 8 in float32. LayerNorm amplifies rounding by ``1/σ`` of its row, and
    over 4 features a row inside a layer is now and then nearly constant: then two
    float32 implementations part by more than rounding (measured over 300 random
    BertModel draws at d_model 4: worst 1.6e-5, one draw over the 1e-5 contract;
    at 8: worst 4.2e-6). The float32 contract is about rounding on well-conditioned
    inputs, as :func:`spread_rows` says for the LayerNorm op itself.
    """
    H = min(d["H"], 2)
    C = 8 if d.get("dtype") == "float32" else 4
    return H, C, C + 1


def float_dtype(a: Arrays) -> np.dtype:
    """The dtype of a draw: that of its first float array."""
    return next(v.dtype for v in a.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f")


def twin_float_dtype(t: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype of a draw's tensors: that of its first float tensor."""
    return next(v.dtype for v in t.values() if v.is_floating_point())


def numpy_dtype(dtype: torch.dtype) -> type:
    return np.float32 if dtype == torch.float32 else np.float64


# ---------------------------------------------------------------------------- dropout masks
# Dropout masks of a layer or model are drawn once per case by a throwaway NumPy
# forward and stored under "dropout:<site>", so that every evaluation (NumPy, the
# twin, each finite-difference probe) drops the same units.

DROPOUT_PREFIX = "dropout:"


def given_masks(a: Mapping[str, Any]) -> dict:
    """The recorded dropout masks of a draw, by site (arrays or tensors, as stored)."""
    return {k[len(DROPOUT_PREFIX) :]: v for k, v in a.items() if k.startswith(DROPOUT_PREFIX)}


def record_masks(run: Callable[[DropoutMasks], Any], rng: np.random.Generator) -> dict:
    """Run ``run`` once with fresh masks from ``rng``; return them, keyed ``dropout:<site>``."""
    masks = DropoutMasks(rng)
    run(masks)
    return stored_masks(masks.used)


def stored_masks(used: Mapping[str, np.ndarray]) -> dict:
    """A model's record of the masks it used, keyed ``dropout:<site>`` for a draw."""
    return {DROPOUT_PREFIX + k: v for k, v in used.items()}


# ---------------------------------------------------------------------------- modules and twins


def module_grads(module: nt.Module, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every parameter gradient of a NumPy module (copies), and the given input gradients."""
    grads = {name: g.copy() for name, g in module.named_grads()}
    grads.update(inputs)
    return grads


def load_weights(module, arrays: Mapping[str, Any]):
    """Load the parameter entries of ``arrays`` into a NumPy module, a twin or a built-in; return it."""
    if isinstance(module, nt.Module):
        module.load_state_dict({n: arrays[n] for n, _ in module.named_parameters()})
        return module
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.copy_(arrays[n])
    return module


def twin_leaves(module: torch.nn.Module, tensors: dict[str, torch.Tensor], *inputs: str) -> dict[str, torch.Tensor]:
    """A twin's parameters and the named input tensors: where autograd leaves the gradients."""
    leaves = dict(module.named_parameters())
    leaves.update({name: tensors[name] for name in inputs})
    return leaves


def leaf_gradients(leaves: Mapping[str, torch.Tensor]) -> Gradients:
    """For a built-in: after the backward, the ``.grad`` of each leaf, by our name."""
    return lambda: {name: leaf.grad for name, leaf in leaves.items()}


def numpy_arrays(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The draw's tensors back as arrays (to build a NumPy module a bridge converts)."""
    return {name: t.detach().cpu().numpy() for name, t in tensors.items()}


def draw_module(make_np: Callable[[np.dtype, dict], nt.Module], draw_inputs: Callable) -> Callable:
    """A draw: random parameters for the module ``make_np`` builds, then its inputs."""

    def draw(rng, dtype, d):
        module = make_np(dtype, d)
        arrays = {name: normal(rng, p.shape, dtype, scale=0.5) for name, p in module.named_parameters()}
        arrays.update(draw_inputs(rng, dtype, d))
        return arrays

    return draw


def module_case(
    *,
    name: str,
    numpy_module: Callable[[np.dtype, dict], nt.Module],
    twin_module: Callable[[torch.dtype, dict], torch.nn.Module],
    draw_inputs: Callable[[np.random.Generator, np.dtype, dict], Arrays],
    numpy_forward: Callable[[nt.Module, Arrays, dict], tuple[np.ndarray, Any]],
    twin_forward: Callable[[torch.nn.Module, dict, dict], torch.Tensor],
    inputs: tuple[str, ...],
    variants: tuple = (NO_VARIANT,),
    uses: tuple[str, ...] = (),
    conventional_zeros: Callable[[str, np.ndarray, dict], np.ndarray] | None = None,
    builtin: Builtin | None = None,
) -> Case:
    """A case for a module: random parameters, the ``inputs`` it differentiates, every parameter compared.

    ``module.backward`` returns the input gradients in the order of ``inputs`` (one array
    for one input; nothing is read when ``inputs`` is empty, e.g. token ids).
    """

    def run_numpy(a, d):
        module = load_weights(numpy_module(float_dtype(a), d), a)
        out, cache = numpy_forward(module, a, d)

        def backward(dout):
            module.zero_grad()
            dins = module.backward(dout, cache)
            if not inputs:
                return module_grads(module)
            if not isinstance(dins, tuple):
                dins = (dins,)
            return module_grads(module, **dict(zip(inputs, dins, strict=True)))

        return out, backward

    def run_twin(t, d):
        x = next(v for v in t.values() if v.is_floating_point())
        module = load_weights(twin_module(x.dtype, d).to(x.device), t)
        return twin_forward(module, t, d), twin_leaves(module, t, *inputs)

    return Case(
        name=name,
        kind="module",
        draw=draw_module(numpy_module, draw_inputs),
        differentiable=lambda d: inputs,
        all_parameters=True,
        numpy=run_numpy,
        torch=run_twin,
        variants=variants,
        uses=uses,
        conventional_zeros=conventional_zeros,
        builtin=builtin,
    )


def module_builtin(
    *,
    name: str,
    make: Callable[[torch.dtype, dict], torch.nn.Module],
    forward: Callable[[torch.nn.Module, dict, dict], torch.Tensor],
    inputs: tuple[str, ...],
    unsupported: Callable[[Arrays, dict], str | None] = _always_supported,
) -> Builtin:
    """A built-in module whose parameter names are ours (``nn.Linear``, ``nn.LayerNorm``, ``nn.GRU`` ...).

    ``make(dtype, dims)`` builds it; the draw's weights are copied in by name, and the
    gradients are read off its parameters and the ``inputs``.
    """

    def run(t, d):
        x = next(v for v in t.values() if v.is_floating_point())
        module = load_weights(make(x.dtype, d).to(x.device), t)
        return forward(module, t, d), leaf_gradients(twin_leaves(module, t, *inputs))

    return Builtin(name=name, run=run, unsupported=unsupported)


def layer_norm_of_one_feature(a: Arrays, dims: dict) -> str | None:
    """Why ``F.layer_norm`` / ``nn.LayerNorm`` cannot take a draw whose rows have one feature.

    A row of one feature has zero variance: ``xhat = 0``, so ``y = bias`` and ``dweight = 0``
    exactly, ours included. PyTorch's backward recomputes ``xhat`` as ``rstd * x - rstd * mean``
    and leaves rounding noise of about ``|x| / sqrt(eps) * ulp`` in ``dweight``: beyond the
    contract for eps = 1e-12 even in float64. (``test_builtins.py`` checks C = 1 by hand.)
    """
    if a["x"].shape[-1] == 1:
        return "C = 1: PyTorch's dweight carries rounding noise ~|x|/sqrt(eps)*ulp where the exact value is 0"
    return None


# ---------------------------------------------------------------------------- running a case


def differentiable_names(case: Case, arrays: Arrays, dims: dict) -> tuple[str, ...]:
    """The names whose gradients are compared: with ``all_parameters``, the parameters first."""
    inputs = case.differentiable(dims)
    if not case.all_parameters:
        return inputs
    params = tuple(
        n for n, v in arrays.items() if n not in inputs and isinstance(v, np.ndarray) and v.dtype.kind == "f"
    )
    return params + inputs


@dataclass(frozen=True)
class CaseResult:
    case: str
    dtype: str
    device: str
    forward: Comparison | None  # NumPy vs twin; None when the twin did not run
    vs_twin: list[Comparison]  # one per gradient
    vs_finite_differences: list[Comparison]  # float64 only
    gradients: tuple[str, ...] = ()  # the names whose gradients are compared
    builtin: str | None = None  # the built-in's name, where the case declares one
    vs_builtin: list[Comparison] = field(default_factory=list)  # the output, then one per gradient
    builtin_skipped: str | None = None  # why the built-in could not take this draw

    @property
    def tolerance(self) -> float:
        return tolerance(self.device, self.dtype)

    @property
    def worst_twin(self) -> Comparison | None:
        return max(self.vs_twin, key=lambda c: c.error, default=None)

    @property
    def worst_finite_differences(self) -> Comparison | None:
        return max(self.vs_finite_differences, key=lambda c: c.error, default=None)

    @property
    def worst_builtin(self) -> Comparison | None:
        return max(self.vs_builtin, key=lambda c: c.error, default=None)

    def failures(self) -> list[str]:
        compared = [*([self.forward] if self.forward else []), *self.vs_twin, *self.vs_builtin]
        bad = [c.describe() for c in compared if not c.error <= self.tolerance]
        fd_tol = tolerance("finite_differences", np.float64)
        bad += [c.describe() for c in self.vs_finite_differences if not c.error <= fd_tol]
        return bad


def _to_torch(arrays: Arrays, diff: tuple[str, ...], device: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, value in arrays.items():
        t = torch.from_numpy(np.array(value, copy=True)).to(device)  # a fresh copy per name
        if name in diff:
            t.requires_grad_(True)
        tensors[name] = t
    return tensors


def _compare_with_builtin(case: Case, arrays, diff, dims, out, grads, dout, device) -> list[Comparison]:
    builtin = case.builtin
    tensors = _to_torch(arrays, diff, device)
    out_b, gradients = builtin.run(tensors, dims)
    out_b.backward(torch.from_numpy(dout).to(device))
    theirs = gradients()
    missing = [name for name in diff if name not in theirs]
    if missing:
        raise KeyError(f"{case.name}: the built-in {builtin.name} gives no gradient for {missing}")
    result = [relative_error(f"{case.name} output (vs {builtin.name})", out, out_b.detach().cpu().numpy())]
    for name in diff:
        g = theirs[name]
        if g is None:
            expected = np.zeros_like(arrays[name])
        else:
            expected = g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
        result.append(relative_error(f"{case.name} d{name} (vs {builtin.name})", grads[name], expected))
    return result


def run_case(
    case: Case,
    dims: dict,
    dtype: np.dtype | type | str,
    seed: int,
    device: str = "cpu",
    finite_differences: bool = True,
    builtin: bool = True,
    twin: bool = True,
) -> CaseResult:
    """Run one draw of ``case`` in NumPy, in the twin (on ``device``), by finite differences and in its built-in.

    ``finite_differences``, ``builtin`` and ``twin`` switch those comparisons off; the draw
    and the upstream gradient stay the same (they come from ``seed`` alone).
    """
    dtype = np.dtype(dtype)
    dims = {**dims, "dtype": dtype.name}  # a case may size itself by dtype (see layer_dims)
    rng = np.random.default_rng(seed)
    arrays = case.draw(rng, dtype, dims)
    diff = differentiable_names(case, arrays, dims)

    out, backward = case.numpy(arrays, dims)
    dout = np.asarray(rng.standard_normal(np.shape(out)), dtype=dtype)  # random upstream gradient
    grads = backward(dout)

    forward, vs_twin = None, []
    if twin:
        tensors = _to_torch(arrays, diff, device)
        out_t, leaves = case.torch(tensors, dims)
        out_t.backward(torch.from_numpy(dout).to(device))
        forward = relative_error(f"{case.name} output", out, out_t.detach().cpu().numpy())
        for name in diff:
            g_t = leaves[name].grad
            expected = np.zeros_like(arrays[name]) if g_t is None else g_t.detach().cpu().numpy()
            vs_twin.append(relative_error(f"{case.name} d{name}", grads[name], expected))

    vs_builtin: list[Comparison] = []
    skipped = None
    if builtin and case.builtin is not None:
        skipped = case.builtin.unsupported(arrays, dims)
        if skipped is None:
            vs_builtin = _compare_with_builtin(case, arrays, diff, dims, out, grads, dout, device)

    vs_fd = []
    if finite_differences and dtype == np.float64:
        for name in diff:
            numeric = numerical_gradient(lambda _x: case.numpy(arrays, dims)[0], arrays[name], dout)
            if case.conventional_zeros is not None:
                numeric = case.conventional_zeros(name, numeric, dims)
            vs_fd.append(relative_error(f"{case.name} d{name} (finite differences)", grads[name], numeric))
    return CaseResult(
        case.name,
        dtype.name,
        device,
        forward,
        vs_twin,
        vs_fd,
        gradients=diff,
        builtin=case.builtin.name if case.builtin is not None else None,
        vs_builtin=vs_builtin,
        builtin_skipped=skipped,
    )


DEFAULT_DIMS = {"B": 2, "T": 5, "S": 4, "H": 2, "D": 3, "V": 6}


# The fixed draws the ``parity`` command runs: every variant, and for attention every mask kind.
def default_dims(case: Case) -> list[dict]:
    if "mask" not in case.uses:
        masks = ("none",)
    elif case.kind == "model":  # composed layers: the mask kinds that differ most, to keep the run short
        masks = ("padding+causal", "fully_masked_row")
    else:
        masks = MASK_KINDS
    return [dict(DEFAULT_DIMS, mask=m, variant=v) for v in case.variants for m in masks]


def enable_exact_cuda_matmul() -> None:
    """Turn TF32 off, so CUDA float32 matmuls are real float32 (the parity contract needs it)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


__all__ = [
    "CASES",
    "DEFAULT_DIMS",
    "DROPOUT_PREFIX",
    "KINDS",
    "MASK_KINDS",
    "NO_VARIANT",
    "Builtin",
    "Case",
    "CaseResult",
    "NoVariant",
    "default_dims",
    "describe_variant",
    "differentiable_names",
    "draw_mask",
    "draw_module",
    "enable_exact_cuda_matmul",
    "float_dtype",
    "given_masks",
    "layer_dims",
    "layer_norm_of_one_feature",
    "leaf_gradients",
    "load_weights",
    "module_builtin",
    "module_case",
    "module_grads",
    "normal",
    "numpy_arrays",
    "numpy_dtype",
    "record_masks",
    "register",
    "run_case",
    "spread_rows",
    "stored_masks",
    "tolerance",
    "torch_dtype",
    "twin_float_dtype",
    "twin_leaves",
]
