"""``explain``: one op's backward, step by step, next to autograd's gradient at the same forward quantity.

For a registered parity case (``torch_transformer.parity``, kind "op" or "module") :func:`explain`
draws a small seeded input with the case's own ``draw``, runs its NumPy forward and, on a seeded
random upstream gradient, its backward inside ``numpy_transformer.functional.intermediates.recording``
(every ``gradient_at(name, value)`` of the backward is kept, in the order it is computed), and runs
the twin's forward inside :func:`torch_transformer.intermediates.tracking` (every ``expose(name,
tensor)`` retains its gradient). After autograd's backward each recorded step is set next to the
``.grad`` of the twin's tensor of the same name:

* a name recorded ``n`` times is paired occurrence by occurrence, NumPy's backward order against
  the *reverse* of the twin's forward order (a backward undoes the forward's steps last to first);
  a name the twin exposes a different number of times is "unpaired" and fails, so a pairing is
  made by name, never by luck;
* the verdict is ``exact`` (no difference), ``close`` (within the parity contract's tolerance,
  ``numpy_transformer.testing.tolerance``; the error is ``relative_error``'s) or ``differs``.

Then the final gradients, against autograd and (float64) against central finite differences.
An op whose backward has no named step in between (``linear``'s ``dx = dout W``) says so in
:data:`NO_INTERMEDIATE`, with the reason. :func:`explain_html` renders one explanation as a
self-contained HTML page or fragment: the formulas of the forward and the backward (their
docstrings' ``.. math::`` blocks), the table, and a heatmap (ours | autograd | difference) of
each step as an embedded PNG.
"""

from __future__ import annotations

import base64
import html
import inspect
import io
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from numpy_transformer.functional.intermediates import Recorded, recording
from numpy_transformer.testing import Comparison, numerical_gradient, relative_error, tolerance

from .intermediates import Exposed, tracking
from .parity import CASES, MASK_KINDS, Case, describe_variant
from .parity.registry import differentiable_names

KINDS = ("op", "module")  # what explain covers; models compose these and would only repeat their steps

# Small sizes: finite differences probe every element of every input and parameter.
EXPLAIN_DIMS: dict[str, object] = {"B": 2, "T": 3, "S": 4, "H": 2, "D": 3, "V": 5, "mask": "none"}
MAX_SIZE = 16  # the largest value --shape accepts for one size (finite differences grow with it)

# Cases whose backward has no step between dout and the input gradients worth naming: each says why.
NO_INTERMEDIATE: dict[str, str] = {
    "linear": "one product per gradient: dx = dout W, dW = dout^T x, db = sum(dout)",
    "Linear": "one product per gradient: dx = dout W, dW = dout^T x, db = sum(dout)",
    "embedding": "a scatter-add of dout into the rows that were looked up; nothing in between",
    "Embedding": "a scatter-add of dout into the rows that were looked up; nothing in between",
    "relu": "one mask: dx = dout * [x > 0]",
    "tanh": "one factor: dx = dout * (1 - y^2)",
    "silu": "one factor: dx = dout * s (1 + x (1 - s)), s = sigmoid(x)",
    "quick_gelu": "one factor: dx = dout * s (1 + 1.702 x (1 - s)), s = sigmoid(1.702 x)",
    "gelu": "one factor, the local derivative Phi(x) + x phi(x) (or its tanh form); the backward never "
    "forms the gradient at the inner erf / tanh argument",
    "l2_normalize": "one projection: dx = (dy - y (y . dy)) / |x|",
    "mean_pooling": "one weighting: dhidden = mask / count * dpooled, broadcast over the tokens",
    "dropout": "one mask: dx = dout * keep / (1 - p)",
    "Dropout": "one mask: dx = dout * keep / (1 - p)",
    "frozen_batch_norm": "one scale: dx = dout * weight / sqrt(running_var + eps)",
    "softmax": "one Jacobian-vector product: dx = y * (dy - sum(dy * y)); no other forward quantity in between",
    "log_softmax": "one Jacobian-vector product: dx = dy - softmax(x) * sum(dy)",
    "weighted_cross_entropy": "one formula: dlogits = (softmax(logits) - onehot) * w / sum(w)",
    "rotary_embedding": "one rotation back: dx = R(-phi) dout, the transpose of the forward's rotation",
    "box_cxcywh_to_xyxy": "a fixed linear map of the four coordinates",
    "box_xyxy_to_cxcywh": "a fixed linear map of the four coordinates",
    "l1_box_loss": "one sign: dpred = sign(pred - target) / num_boxes",
    "flash_attention": "the tiled backward never holds a whole step: each (Bq, Bk) tile of dP and dS lives only "
    "inside the loop; `explain scaled_dot_product_attention` shows the same steps at full size",
}


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Step:
    """One named step of the NumPy backward and autograd's gradient at the twin's quantity of that name."""

    name: str
    where: str  # the NumPy function that declared it (qualified name)
    ours: np.ndarray
    theirs: np.ndarray | None  # None when unpaired
    comparison: Comparison | None
    verdict: str  # "exact", "close", "differs" or "unpaired"
    note: str = ""
    occurrence: int = 1  # this name's n-th step in the backward (a GRU's gates, once per time step)
    occurrences: int = 1

    @property
    def label(self) -> str:
        """``z`` or, for a name met several times, ``z [1/3]`` (the first the backward meets: the last step)."""
        return self.name if self.occurrences == 1 else f"{self.name} [{self.occurrence}/{self.occurrences}]"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ours.shape)


@dataclass(frozen=True)
class FinalGradient:
    name: str  # the input or parameter
    ours: np.ndarray
    vs_twin: Comparison
    twin_verdict: str
    vs_fd: Comparison | None  # None in float32
    fd_verdict: str  # "exact" / "close" / "differs", or "float64 only"


@dataclass(frozen=True)
class Explanation:
    op: str
    kind: str
    dtype: str
    seed: int
    dims: dict  # the sizes the draw used (without the variant)
    variant: str  # its fields, "" for a case of one form
    output_shape: tuple[int, ...]
    steps: list[Step]
    gradients: list[FinalGradient]
    twin_only: list[tuple[str, tuple[int, ...]]]  # exposed by the twin, recorded by no NumPy step
    no_intermediate: str | None  # the reason, for a case in NO_INTERMEDIATE
    tolerance: float
    fd_tolerance: float

    def failures(self) -> list[str]:
        bad = [
            f"{s.label}: {describe_verdict(s.verdict, s.comparison)}{' (' + s.note + ')' if s.note else ''}"
            for s in self.steps
            if s.verdict in ("differs", "unpaired")
        ]
        for g in self.gradients:
            if g.twin_verdict == "differs":
                bad.append(f"d{g.name} vs autograd: {g.vs_twin.describe()}")
            if g.fd_verdict == "differs":
                bad.append(f"d{g.name} vs finite differences: {g.vs_fd.describe()}")
        return bad


def verdict(cmp: Comparison, tol: float) -> str:
    if cmp.error == 0.0:
        return "exact"
    return "close" if cmp.error <= tol else "differs"


def describe_verdict(v: str, cmp: Comparison | None) -> str:
    """``exact``, ``close (3.1e-16)``, ``differs (2.0e-01 at (0, 1))``, ``unpaired``."""
    if cmp is None or v in ("exact", "unpaired", "float64 only"):
        return v
    if v == "close":
        return f"close ({cmp.error:.1e})"
    return f"differs ({cmp.error:.1e} at {cmp.worst_index})"


# ---------------------------------------------------------------------------- choosing a case


def explainable() -> dict[str, Case]:
    """Every registered case explain covers, in registration order."""
    return {name: case for name, case in CASES.items() if case.kind in KINDS}


def allowed_sizes(case: Case) -> tuple[str, ...]:
    """The size keys ``--shape`` accepts for ``case``: those its draw reads."""
    return tuple(case.uses)


def check_sizes(case: Case, sizes: Mapping[str, object]) -> dict:
    """Check ``--shape`` overrides for ``case``: a ``ValueError`` names the key, what it expects and what came."""
    allowed = allowed_sizes(case)
    out = {}
    for key, value in sizes.items():
        if key not in allowed:
            raise ValueError(f"unknown size {key!r} for {case.name}: its draw reads {', '.join(allowed) or 'no size'}")
        if key == "mask":
            if value not in MASK_KINDS:
                raise ValueError(f"mask: expected one of {', '.join(MASK_KINDS)}, got {value!r}")
        elif not (isinstance(value, int) and 1 <= value <= MAX_SIZE):
            raise ValueError(f"{key}: expected an integer in [1, {MAX_SIZE}], got {value!r}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------- running one explanation


def _to_torch(arrays: Mapping[str, object], diff: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The draw as CPU tensors (a fresh copy each), the differentiable ones requiring grad."""
    tensors = {}
    for name, value in arrays.items():
        t = torch.from_numpy(np.array(value, copy=True))
        if name in diff:
            t.requires_grad_(True)
        tensors[name] = t
    return tensors


def _grad_of(exposed: Exposed) -> np.ndarray:
    g = exposed.tensor.grad
    return np.zeros(tuple(exposed.tensor.shape)) if g is None else g.detach().cpu().numpy()


def pair_steps(
    record: list[Recorded], exposed: list[Exposed], tol: float
) -> tuple[list[Step], list[tuple[str, tuple[int, ...]]]]:
    """Pair each NumPy step with the twin's tensor of its name (see the module docstring); compare."""
    twin_by_name: dict[str, list[Exposed]] = {}
    for e in exposed:
        twin_by_name.setdefault(e.name, []).append(e)
    ours_count: dict[str, int] = {}
    for r in record:
        ours_count[r.name] = ours_count.get(r.name, 0) + 1
    seen: dict[str, int] = {}
    steps = []
    for r in record:
        i = seen.get(r.name, 0)
        seen[r.name] = i + 1
        twins = twin_by_name.get(r.name, [])
        if len(twins) != ours_count[r.name]:
            note = f"NumPy records {ours_count[r.name]}, the twin exposes {len(twins)}"
            steps.append(Step(r.name, r.where, r.value, None, None, "unpaired", note, i + 1, ours_count[r.name]))
            continue
        twin = twins[::-1][i]  # the backward meets the forward's steps last to first
        theirs = _grad_of(twin)
        ours, note = r.value, ""
        if ours.shape != theirs.shape:
            if ours.size != theirs.size:
                note = f"shape {ours.shape} here, {theirs.shape} in the twin"
                steps.append(Step(r.name, r.where, ours, theirs, None, "differs", note, i + 1, ours_count[r.name]))
                continue
            # The same quantity in another layout of the same row-major order (grouped-query
            # attention's (B, Hkv, G, T, S) is the twin's (B, H, T, S)): compare element by element.
            note = f"{ours.shape} read as the twin's {theirs.shape}"
            ours = ours.reshape(theirs.shape)
        cmp = relative_error(r.name, ours, theirs)
        steps.append(Step(r.name, r.where, r.value, theirs, cmp, verdict(cmp, tol), note, i + 1, ours_count[r.name]))
    twin_only = [(e.name, tuple(e.tensor.shape)) for e in exposed if e.name not in ours_count]
    return steps, twin_only


def explain(
    op: str,
    dtype: str = "float64",
    sizes: Mapping[str, object] | None = None,
    seed: int = 0,
    variant: int = 0,
    finite_differences: bool = True,
) -> Explanation:
    """Run ``op``'s backward once, recording its steps; compare every step and gradient (see the module docstring)."""
    cases = explainable()
    if op not in cases:
        raise KeyError(op)
    case = cases[op]
    np_dtype = np.dtype(dtype)
    if np_dtype.name not in ("float32", "float64"):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
    if not 0 <= variant < len(case.variants):
        raise ValueError(f"variant: expected an index in [0, {len(case.variants) - 1}] for {op}, got {variant}")
    sizes = check_sizes(case, dict(sizes or {}))
    dims = {**EXPLAIN_DIMS, **sizes}
    run_dims = {**dims, "variant": case.variants[variant], "dtype": np_dtype.name}
    tol = tolerance("cpu", np_dtype)
    fd_tol = tolerance("finite_differences", np.float64)

    # The draw and the upstream gradient as the parity command makes them (run_case), from ``seed`` alone.
    rng = np.random.default_rng(seed)
    arrays = case.draw(rng, np_dtype, run_dims)
    diff = differentiable_names(case, arrays, run_dims)
    out, backward = case.numpy(arrays, run_dims)
    dout = np.asarray(rng.standard_normal(np.shape(out)), dtype=np_dtype)  # random, never all-ones
    with recording() as record:
        grads = backward(dout)

    tensors = _to_torch(arrays, diff)
    with tracking() as exposed:
        out_t, leaves = case.torch(tensors, run_dims)
    out_t.backward(torch.from_numpy(dout))
    steps, twin_only = pair_steps(record, exposed, tol)

    finals = []
    for name in diff:
        g_t = leaves[name].grad
        expected = np.zeros_like(arrays[name]) if g_t is None else g_t.detach().cpu().numpy()
        vs_twin = relative_error(f"d{name}", grads[name], expected)
        vs_fd, fd_verdict = None, "float64 only"
        if finite_differences and np_dtype == np.float64:
            numeric = numerical_gradient(lambda _x: case.numpy(arrays, run_dims)[0], arrays[name], dout)
            if case.conventional_zeros is not None:
                numeric = case.conventional_zeros(name, numeric, run_dims)
            vs_fd = relative_error(f"d{name} (finite differences)", grads[name], numeric)
            fd_verdict = verdict(vs_fd, fd_tol)
        elif np_dtype == np.float64:
            fd_verdict = "skipped"
        finals.append(FinalGradient(name, np.asarray(grads[name]), vs_twin, verdict(vs_twin, tol), vs_fd, fd_verdict))

    return Explanation(
        op=op,
        kind=case.kind,
        dtype=np_dtype.name,
        seed=seed,
        dims={k: dims[k] for k in case.uses},
        variant=describe_variant(case.variants[variant]),
        output_shape=tuple(np.shape(out)),
        steps=steps,
        gradients=finals,
        twin_only=twin_only,
        no_intermediate=NO_INTERMEDIATE.get(op),
        tolerance=tol,
        fd_tolerance=fd_tol,
    )


# ---------------------------------------------------------------------------- text


def _norm(a: np.ndarray | None) -> str:
    return "-" if a is None else f"{float(np.linalg.norm(np.asarray(a, dtype=np.float64).ravel())):.4e}"


def format_text(e: Explanation) -> str:
    """The explanation as the command prints it."""
    sizes = ", ".join(f"{k}={v}" for k, v in e.dims.items())
    lines = [
        f"explain {e.op} ({e.kind}), {e.dtype}, seed {e.seed}: {sizes}"
        + (f"; variant {e.variant}" if e.variant else ""),
        f"upstream gradient: random N(0, 1) of the output's shape {e.output_shape}",
        f"verdicts: exact, close (relative error <= {e.tolerance:.0e}, {e.dtype} on CPU), or differs; "
        "error = max|ours - autograd| / max(1, max|autograd|)",
        "",
    ]
    if e.steps:
        lines.append("intermediates, in the order the NumPy backward computes them (gradient of the loss at each):")
        w = max(12, *(len(s.label) for s in e.steps))
        header = f"  {'#':>2}  {'gradient at':<{w}} {'shape':<18} {'|ours|':>11} {'|autograd|':>11}  {'verdict':<22} in"
        lines += [header, "  " + "-" * (len(header) - 2)]
        for i, s in enumerate(e.steps, 1):
            v = describe_verdict(s.verdict, s.comparison)
            lines.append(
                f"  {i:>2}  {s.label:<{w}} {s.shape!s:<18} {_norm(s.ours):>11} {_norm(s.theirs):>11}  "
                f"{v:<22} {s.where}" + (f"  [{s.note}]" if s.note else "")
            )
    else:
        reason = e.no_intermediate or "NONE DECLARED: this op records no step and gives no reason"
        lines.append(f"intermediates: none, because {reason}")
    if e.twin_only:
        names = ", ".join(f"{n} {shape}" for n, shape in e.twin_only)
        lines.append(f"  (exposed by the twin, with no NumPy step of that name: {names})")
    lines += ["", "final gradients:"]
    w = max(8, *(len(g.name) + 1 for g in e.gradients)) if e.gradients else 8
    header = f"  {'gradient':<{w}} {'shape':<18} {'|ours|':>11}  {'vs autograd':<24} vs finite differences (float64)"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for g in e.gradients:
        fd = describe_verdict(g.fd_verdict, g.vs_fd)
        if g.fd_verdict == "float64 only":
            fd = "float64 only: rerun with --dtype float64"
        lines.append(
            f"  {'d' + g.name:<{w}} {g.ours.shape!s:<18} {_norm(g.ours):>11}  "
            f"{describe_verdict(g.twin_verdict, g.vs_twin):<24} {fd}"
        )
    lines.append("")
    failures = e.failures()
    if failures:
        lines.append(f"{len(failures)} outside the parity contract:")
        lines += [f"  {f}" for f in failures]
    else:
        lines.append("every step and every gradient within the parity contract")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- formulas

# Where a module's formulas are written: the functional op it is built on.
FORMULA_OPS: dict[str, str] = {
    "Linear": "linear",
    "Embedding": "embedding",
    "LayerNorm": "layer_norm",
    "Dropout": "dropout",
    "MultiHeadAttention": "scaled_dot_product_attention",
    "AdditiveAttention": "additive_attention",
    "LuongAttention": "luong_attention",
    "GRUCell": "gru_cell",
    "GRU": "gru",
    "RMSNorm": "rms_norm",
    "SwiGLUFeedForward": "swiglu",
    "LlamaAttention": "grouped_query_attention",
}


def formulas(e: Explanation) -> tuple[str | None, str | None, str]:
    """``(forward docstring, backward docstring, source)`` of the NumPy code the op's formulas are written in.

    The functional pair ``<op>_forward`` / ``<op>_backward`` (a module: the op of :data:`FORMULA_OPS`);
    failing that, the NumPy module class and its ``backward``.
    """
    import numpy_transformer as nt
    import numpy_transformer.functional as F

    base = FORMULA_OPS.get(e.op, e.op)
    fwd = getattr(F, f"{base}_forward", None)
    bwd = getattr(F, f"{base}_backward", None)
    if fwd is None and inspect.isclass(getattr(nt, e.op, None)):
        fwd = getattr(nt, e.op)
        bwd = fwd.backward
    source = ", ".join(f.__module__ + "." + f.__qualname__ for f in (fwd, bwd) if f is not None)
    return getattr(fwd, "__doc__", None), getattr(bwd, "__doc__", None), source


# ---------------------------------------------------------------------------- HTML

_CSS = """
.explain { font-family: sans-serif; max-width: 60em; }
.explain table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
.explain th, .explain td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; }
.explain td.num { text-align: right; font-family: monospace; }
.explain .exact, .explain .close { color: #1a7f37; }
.explain .differs, .explain .unpaired { color: #cf222e; font-weight: bold; }
.explain .arithmatex { overflow-x: auto; margin: 0.3em 0; font-family: monospace; }
.explain figure { margin: 0.5em 0 1em; }
.explain figcaption { font-size: 0.85em; }
"""


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1])  # leading axes flattened into rows


def heatmap_png(ours: np.ndarray, theirs: np.ndarray | None) -> tuple[bytes, str]:
    """A small PNG (in memory) of ours | autograd | ours - autograd, and a caption of the colour scales.

    Leading axes are flattened into rows; each cell is a block of pixels, blue negative, red positive
    (matplotlib's ``RdBu_r``). Ours and autograd share one scale; the difference has its own, so
    rounding-level differences are visible. Written with ``matplotlib.image.imsave`` (no figure: fast).
    """
    from numpy_transformer.applications.plots import pyplot

    pyplot()  # matplotlib on the Agg backend, with an install hint when it is missing
    import matplotlib

    a = _as_2d(ours)
    panels = [a]
    scale = float(np.abs(a).max()) or 1.0
    caption = f"ours | autograd: colour scale \u00b1{scale:.3g}"
    if theirs is not None and np.size(theirs) == a.size:
        b = _as_2d(np.reshape(theirs, np.shape(ours)))
        diff = a - b
        dscale = float(np.abs(diff).max())
        panels += [b, diff]
        caption += f"; difference: \u00b1{dscale:.3g}" if dscale else "; difference: zero everywhere"
    rows, cols = a.shape
    cell = int(np.clip(160 // max(rows, cols), 2, 24))  # pixels per element: about 160 px a panel
    cmap = matplotlib.colormaps["RdBu_r"]
    gap = np.ones((rows * cell, 6, 4))  # white between panels
    images = []
    for i, m in enumerate(panels):
        lim = scale if i < 2 else (float(np.abs(m).max()) or 1.0)
        rgba = cmap(0.5 + 0.5 * np.clip(m / lim, -1.0, 1.0))  # (rows, cols, 4)
        images += [np.kron(rgba, np.ones((cell, cell, 1))), gap]
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, np.concatenate(images[:-1], axis=1), format="png")
    return buffer.getvalue(), caption


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_ROLE = re.compile(r":math:`([^`]*)`|``([^`]*)``")


def _inline_html(text: str) -> str:
    """Docstring prose as HTML: ``:math:`x``` as inline KaTeX, double-backquoted code as ``<code>``."""
    out, last = [], 0
    for m in _ROLE.finditer(text):
        out.append(html.escape(text[last : m.start()]))
        if m.group(1) is not None:
            out.append(f'<span class="arithmatex">\\( {html.escape(m.group(1))} \\)</span>')
        else:
            out.append(f"<code>{html.escape(m.group(2))}</code>")
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def _math_html(doc: str | None) -> str:
    """A docstring's formulas as HTML: its first paragraph, every paragraph with math, each ``.. math::`` block.

    Display blocks become ``<div class="arithmatex">\\[ … \\]</div>`` and ``:math:`…``` roles
    ``<span class="arithmatex">\\( … \\)</span>``: KaTeX (the site's, through arithmatex) typesets
    them, and without JavaScript the LaTeX stays legible. Numpydoc sections (Parameters ...) are left out.
    """
    if not doc:
        return "<p><em>(no docstring)</em></p>"
    parts = []
    for i, paragraph in enumerate(inspect.cleandoc(doc).split("\n\n")):
        if paragraph.lstrip().startswith(("Parameters\n", "Returns\n", "Raises\n")):
            break  # the formulas come before the numpydoc sections
        prose, marker, block = paragraph.partition(".. math::")
        if prose.strip() and (i == 0 or ":math:" in prose or marker):
            parts.append(f"<p>{_inline_html(prose.strip().replace(chr(10), ' '))}</p>")
        if marker:  # the block: the rest of the marker's line and the indented lines under it
            block = textwrap.dedent(block).strip()
            parts.append(f'<div class="arithmatex">\\[ {html.escape(block)} \\]</div>')
    return "\n".join(parts)


def _verdict_cell(v: str, cmp: Comparison | None) -> str:
    return f'<td class="{html.escape(v.split()[0])}">{html.escape(describe_verdict(v, cmp))}</td>'


def explain_html(
    op: str,
    dtype: str = "float64",
    sizes: Mapping[str, object] | None = None,
    seed: int = 0,
    variant: int = 0,
    fragment: bool = True,
    explanation: Explanation | None = None,
) -> str:
    """One op's explanation as HTML: the body fragment (``fragment=True``, for the site) or a whole page.

    Self-contained: the heatmaps are ``data:image/png;base64`` URIs, the style is inline, no script,
    font or image is fetched from anywhere. Pass ``explanation`` to render one already computed.
    """
    e = explanation if explanation is not None else explain(op, dtype, sizes, seed, variant)
    fwd, bwd, source = formulas(e)
    sizes_text = ", ".join(f"{k}={v}" for k, v in e.dims.items())
    esc = html.escape
    parts = [
        f'<section class="explain" id="explain-{esc(re.sub(r"[^A-Za-z0-9_-]", "-", e.op))}">',
        f"<style>{_CSS}</style>",
        f"<h2><code>{esc(e.op)}</code>: the backward, step by step</h2>",
        f"<p>{esc(e.kind)}, {esc(e.dtype)}, seed {e.seed}, sizes {esc(sizes_text)}"
        + (f", variant {esc(e.variant)}" if e.variant else "")
        + f"; upstream gradient random N(0, 1) of shape {esc(str(e.output_shape))}. "
        f"Verdicts: exact, close (relative error &le; {e.tolerance:.0e}) or differs.</p>",
        "<h3>Forward</h3>",
        _math_html(fwd),
        "<h3>Backward</h3>",
        _math_html(bwd),
        f"<p><small>formulas from the docstrings of {esc(source or 'no functional pair')}</small></p>",
        "<h3>Intermediates, in the order the NumPy backward computes them</h3>",
    ]
    if e.steps:
        parts.append(
            "<table><tr><th>#</th><th>gradient at</th><th>shape</th><th>|ours|</th><th>|autograd|</th>"
            "<th>verdict</th><th>declared in</th></tr>"
        )
        for i, s in enumerate(e.steps, 1):
            parts.append(
                f"<tr><td>{i}</td><td><code>{esc(s.label)}</code></td><td>{esc(str(s.shape))}</td>"
                f'<td class="num">{_norm(s.ours)}</td><td class="num">{_norm(s.theirs)}</td>'
                f"{_verdict_cell(s.verdict, s.comparison)}<td><code>{esc(s.where)}</code>"
                f"{' ' + esc(s.note) if s.note else ''}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append(f"<p>None, because {esc(e.no_intermediate or 'no step is declared')}.</p>")
    parts += [
        "<h3>Final gradients</h3>",
        "<table><tr><th>gradient</th><th>shape</th><th>|ours|</th><th>vs autograd</th>"
        "<th>vs finite differences</th></tr>",
    ]
    for g in e.gradients:
        parts.append(
            f"<tr><td><code>d{esc(g.name)}</code></td><td>{esc(str(g.ours.shape))}</td>"
            f'<td class="num">{_norm(g.ours)}</td>{_verdict_cell(g.twin_verdict, g.vs_twin)}'
            f"{_verdict_cell(g.fd_verdict, g.vs_fd)}</tr>"
        )
    parts.append("</table>")
    if e.steps:
        parts.append("<h3>Each step: ours | autograd | difference</h3>")
        for i, s in enumerate(e.steps, 1):
            alt = f"heatmap of the gradient at {s.name}: ours, autograd and their difference"
            png, scales = heatmap_png(s.ours, s.theirs)
            parts.append(
                f'<figure><img alt="{esc(alt)}" src="{_data_uri(png)}">'
                f"<figcaption>{i}. gradient at <code>{esc(s.label)}</code> {esc(str(s.shape))}, leading axes "
                f"flattened into rows: ours | autograd | difference ({esc(scales)}); "
                f"{esc(describe_verdict(s.verdict, s.comparison))}</figcaption></figure>"
            )
    failures = e.failures()
    parts.append(
        f"<p><strong>{len(failures)} outside the parity contract.</strong></p>"
        if failures
        else "<p>Every step and every gradient within the parity contract.</p>"
    )
    parts.append("</section>")
    body = "\n".join(parts)
    if fragment:
        return body
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>explain {esc(e.op)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


__all__ = [
    "EXPLAIN_DIMS",
    "FORMULA_OPS",
    "KINDS",
    "MAX_SIZE",
    "NO_INTERMEDIATE",
    "Explanation",
    "FinalGradient",
    "Step",
    "allowed_sizes",
    "check_sizes",
    "describe_verdict",
    "explain",
    "explain_html",
    "explainable",
    "format_text",
    "formulas",
    "heatmap_png",
    "pair_steps",
    "verdict",
]
