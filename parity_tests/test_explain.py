"""``explain``: every op's declared intermediates match autograd's, wrong declarations are caught, the command works.

* For every registered op and module (float64): no step differs or goes unpaired, every final gradient
  matches autograd and central finite differences, and the case records at least one step or is listed
  in ``NO_INTERMEDIATE`` with a reason.
* A wrong declaration (a perturbed NumPy value, a twin tensor under the wrong name, a step the twin
  never exposes) shows as "differs" / "unpaired", never as a pass.
* Outside ``recording()`` / ``tracking()`` the declarations are identities that keep nothing.
* The command end to end: its table, ``--html`` (self-contained: data URIs, no ``http``), ``--list``,
  and the errors (unknown op, bad ``--shape``, bad ``--dtype``) exit 2 with a message.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import numpy_transformer.functional.layer_norm as np_layer_norm
from numpy_transformer.commands import main
from numpy_transformer.functional.intermediates import gradient_at, is_recording, prefix, recording
from torch_transformer import explain as ex
from torch_transformer import functional as TF
from torch_transformer.intermediates import expose, is_tracking, tracking

CASES = list(ex.explainable())


def test_explain_covers_every_registered_op_and_module():
    from torch_transformer.parity import CASES as ALL

    expected = [n for n, c in ALL.items() if c.kind in ("op", "module")]
    assert expected == CASES and len(CASES) >= 51
    stale = sorted(set(ex.NO_INTERMEDIATE) - set(CASES))
    assert not stale, f"NO_INTERMEDIATE names no registered op: {stale}"
    assert all(reason.strip() for reason in ex.NO_INTERMEDIATE.values())


@pytest.mark.parametrize("op", CASES)
def test_explain_every_step_and_gradient_matches_autograd_and_finite_differences(op):
    e = ex.explain(op, "float64", seed=0)
    assert not e.failures(), f"{op}: {e.failures()}"
    assert e.gradients, f"{op}: compares no gradient"
    assert all(g.vs_fd is not None for g in e.gradients), f"{op}: a gradient without finite differences"
    if op in ex.NO_INTERMEDIATE:
        assert not e.steps, f"{op} records steps, so it should not be in NO_INTERMEDIATE"
    else:
        assert e.steps, f"{op}: records no intermediate and NO_INTERMEDIATE gives no reason"
    # The table names every step in the order the backward computed it.
    text = ex.format_text(e)
    positions = [text.index(f"  {s.label} ") for s in e.steps]
    assert positions == sorted(positions)


def test_every_other_variant_pairs_every_step_with_autograd():
    """Bidirectional GRUs, two-layer DETR losses, masks, dropout ...: the pairing holds in every variant."""
    failures = []
    for op, case in ex.explainable().items():
        for variant in range(1, len(case.variants)):
            e = ex.explain(op, variant=variant, finite_differences=False)
            failures += [f"{op} [{e.variant}] {f}" for f in e.failures()]
    assert not failures, "\n".join(failures)


def test_explain_in_float32_compares_with_the_float32_tolerance_and_says_finite_differences_are_float64_only():
    e = ex.explain("layer_norm", "float32")
    assert e.tolerance == 1e-5 and not e.failures()
    assert [s.name for s in e.steps] == ["xhat"] and e.steps[0].ours.dtype == np.float32
    assert all(g.vs_fd is None and g.fd_verdict == "float64 only" for g in e.gradients)


def test_explain_layer_norm_step_is_the_gradient_at_xhat():
    """The recorded value is dout * weight, computed here independently of the backward."""
    e = ex.explain("layer_norm")
    (step,) = e.steps
    case = ex.CASES["layer_norm"]
    dims = {**ex.EXPLAIN_DIMS, "variant": case.variants[0], "dtype": "float64"}
    rng = np.random.default_rng(0)
    arrays = case.draw(rng, np.dtype(np.float64), dims)
    out, _ = case.numpy(arrays, dims)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_array_equal(step.ours, dout * arrays["weight"])
    assert step.where == "layer_norm_backward" and step.verdict == "exact"


def test_explain_shape_overrides_the_draw_and_a_size_outside_the_case_is_refused():
    e = ex.explain("scaled_dot_product_attention", sizes={"T": 2, "S": 5, "mask": "causal"})
    assert e.dims["T"] == 2 and e.dims["S"] == 5 and e.dims["mask"] == "causal"
    assert e.steps[0].shape[-2:] == (2, 5) and not e.failures()
    with pytest.raises(ValueError, match="unknown size 'V'"):
        ex.explain("layer_norm", sizes={"V": 3})
    with pytest.raises(ValueError, match=r"B: expected an integer in \[1, 16\]"):
        ex.explain("layer_norm", sizes={"B": 0})
    with pytest.raises(ValueError, match="mask: expected one of"):
        ex.explain("MultiHeadAttention", sizes={"mask": "diagonal"})


# ---------------------------------------------------------------------------- wrong declarations are caught


def test_a_perturbed_numpy_step_differs(monkeypatch):
    original = np_layer_norm.gradient_at

    def wrong_record(name, value):  # records a value 1% off; the backward goes on with the right one
        original(name, value * 1.01)
        return value

    monkeypatch.setattr(np_layer_norm, "gradient_at", wrong_record)
    e = ex.explain("layer_norm")
    assert [s.verdict for s in e.steps] == ["differs"]
    assert any(f.startswith("xhat: differs") for f in e.failures())
    assert all(g.twin_verdict != "differs" for g in e.gradients)  # only the declaration is wrong
    assert "1 outside the parity contract" in ex.format_text(e)


def test_a_twin_tensor_exposed_under_the_wrong_name_differs(monkeypatch):
    import torch_transformer.functional as twin

    original = twin.expose

    def swapped(name, tensor):  # the twin calls the unscaled product "scores", and the scaled one "qk"
        return original({"qk": "scores", "scores": "qk"}.get(name, name), tensor)

    monkeypatch.setattr(twin, "expose", swapped)
    e = ex.explain("scaled_dot_product_attention")
    verdicts = {s.name: s.verdict for s in e.steps}
    assert verdicts["scores"] == verdicts["qk"] == "differs", verdicts
    assert verdicts["weights"] != "differs"
    assert e.failures()


def test_a_step_the_twin_does_not_expose_is_unpaired(monkeypatch):
    import torch_transformer.functional as twin

    original = twin.expose
    monkeypatch.setattr(twin, "expose", lambda name, t: t if name == "xhat" else original(name, t))
    e = ex.explain("layer_norm")
    assert [(s.verdict, s.note) for s in e.steps] == [("unpaired", "NumPy records 1, the twin exposes 0")]
    assert e.failures()


def test_pairing_goes_by_occurrence_in_reverse_forward_order():
    """A GRU records z, n, r once per step, last step first: paired with the twin's steps reversed."""
    e = ex.explain("gru", sizes={"T": 3})
    zs = [s for s in e.steps if s.name == "z"]
    assert [s.label for s in zs] == ["z [1/3]", "z [2/3]", "z [3/3]"]
    assert all(s.verdict in ("exact", "close") for s in zs)
    # Pairing in forward order instead would compare different time steps: they differ.
    errors = [np.abs(zs[0].ours - zs[2].theirs).max(), np.abs(zs[2].ours - zs[0].theirs).max()]
    assert min(errors) > 1e-3


def test_a_backward_that_calls_an_op_twice_names_the_calls_apart():
    e = ex.explain("clip_loss")
    names = [s.name for s in e.steps]
    assert names[:2] == ["per_image/logits", "per_text/logits"] and not e.failures()


# ---------------------------------------------------------------------------- identities when off


def test_outside_recording_gradient_at_is_an_identity_that_keeps_nothing():
    x = np.arange(6.0).reshape(2, 3)
    assert not is_recording()
    assert gradient_at("x", x) is x
    with recording() as record:
        assert is_recording()
        y = gradient_at("x", x)
        with prefix("inner"):
            gradient_at("y", x)
        x[0, 0] = 100.0  # a later in-place update does not reach the record
    assert y is x and not is_recording()
    assert [r.name for r in record] == ["x", "inner/y"]
    assert record[0].value[0, 0] == 0.0
    assert record[0].where == "test_outside_recording_gradient_at_is_an_identity_that_keeps_nothing"
    gradient_at("after", x)
    assert len(record) == 2


def test_outside_tracking_expose_is_an_identity_that_keeps_nothing():
    t = torch.ones(3, requires_grad=True) * 2
    assert not is_tracking()
    assert expose("t", t) is t and not t.retains_grad
    with tracking() as exposed:
        assert expose("t", t) is t
        expose("constant", torch.ones(2))  # no gradient to retain: not listed
    assert [e.name for e in exposed] == ["t"] and t.retains_grad
    x = torch.randn(2, 3, dtype=torch.float64)
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    assert torch.equal(TF.layer_norm(x, w, b), TF.layer_norm(x, w, b))


# ---------------------------------------------------------------------------- HTML


def test_explain_html_is_self_contained_with_formulas_table_and_heatmaps():
    page = ex.explain_html("layer_norm", fragment=False)
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert '<div class="arithmatex">\\[' in page and "\\hat x" in page  # the forward's .. math:: block
    assert "<table>" in page and "<code>xhat</code>" in page and "exact" in page
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == 1 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http" not in page and "<script" not in page
    fragment = ex.explain_html("layer_norm")
    assert fragment.startswith("<section") and "<html" not in fragment


# ---------------------------------------------------------------------------- the command


def test_explain_command_prints_the_steps_and_the_final_gradients(capsys):
    assert main(["explain", "layer_norm", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "explain layer_norm (op), float64, seed 3" in out
    assert re.search(r"^\s+1\s+xhat\s+\(2, 3, 6\)\s+\S+\s+\S+\s+exact\s+layer_norm_backward", out, re.M)
    for g in ("dx", "dweight", "dbias"):
        assert re.search(rf"^\s+{g}\s+\(\d", out, re.M), g
    assert "every step and every gradient within the parity contract" in out
    assert main(["explain", "linear"]) == 0
    assert "intermediates: none, because one product per gradient" in capsys.readouterr().out


def test_explain_command_exits_1_when_a_step_differs(monkeypatch, capsys):
    original = np_layer_norm.gradient_at

    def wrong(name, value):
        original(name, value + 1.0)
        return value

    monkeypatch.setattr(np_layer_norm, "gradient_at", wrong)
    assert main(["explain", "LayerNorm"]) == 1
    assert "xhat: differs" in capsys.readouterr().out


def test_explain_command_writes_a_self_contained_html_page(tmp_path, capsys):
    path = tmp_path / "mha.html"
    assert main(["explain", "MultiHeadAttention", "--dtype", "float32", "--html", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    page = path.read_text()
    assert "<table>" in page and "q_heads" in page and "merged" in page
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == 9 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http" not in page


def test_explain_list_names_every_op_and_module(capsys):
    assert main(["explain", "--list"]) == 0
    out = capsys.readouterr().out
    for name in CASES:
        assert re.search(rf"^{re.escape(name)}\s", out, re.M), name
    assert "none: one product per gradient" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "layernorm"], "unknown op 'layernorm'; did you mean layer_norm"),
        (["explain", "frobnicate"], "unknown op 'frobnicate'"),
        (["explain"], "give an OP"),
        (["explain", "layer_norm", "--shape", "B=2,X=3"], "unknown size 'X' for layer_norm"),
        (["explain", "layer_norm", "--shape", "B=two"], "B: expected an integer, got 'two'"),
        (["explain", "layer_norm", "--shape", "B"], "expected KEY=VALUE"),
        (["explain", "layer_norm", "--shape", "B=0"], "B: expected an integer in [1, 16]"),
        (["explain", "layer_norm", "--shape", "B=2,B=3"], "given twice"),
        (["explain", "MultiHeadAttention", "--shape", "mask=diagonal"], "mask: expected one of"),
        (["explain", "layer_norm", "--dtype", "float16"], "--dtype: invalid choice"),
        (["explain", "layer_norm", "--variant", "9"], "--variant: layer_norm has 3 variant(s)"),
        (["explain", "layer_norm", "--seed", "-1"], "--seed"),
        (["explain", "layer_norm", "--html", "out.txt"], "--html: expected a .html file"),
    ],
)
def test_explain_command_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err and "Traceback" not in err
