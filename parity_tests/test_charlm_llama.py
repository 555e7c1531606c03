"""``train --task charlm --model llama``: the character-level task with the Llama-style decoder in place of the GPT.

The command runs, its loss falls, it samples and writes its files; the twin trains the same Llama
step for step (``--compare``); its checkpoint decodes; a file whose ``train_config`` names another
model than its weights is refused by ``decode`` and by ``--resume``. (The bit-for-bit resume of a
Llama run after a signal is in ``test_resume.py``, next to the GPT's.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import numpy_transformer as nt
from numpy_transformer.applications.charlm import CharData, CharLMConfig, start_charlm
from numpy_transformer.commands import main
from numpy_transformer.training.checkpoint import CheckpointError, config_from_json, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "HOME", "VIRTUAL_ENV", "PATH"))}
    return {**keep, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "numpy_transformer", *argv], capture_output=True, text=True, env=_env(), timeout=300
    )


def _exit_code(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in this process: its exit status and stderr (an escaping exception fails the test)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _with_meta(src: Path, dst: Path, meta: dict) -> Path:
    """A copy of the checkpoint ``src`` whose JSON metadata is ``meta``; every array as it was."""
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["meta"] = np.asarray(json.dumps(meta))
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The real command: a few steps of the default Llama on small batches (about two seconds)."""
    out = tmp_path_factory.mktemp("charlm-llama")
    proc = _cli("train", "--task", "charlm", "--model", "llama", "--steps", str(STEPS), "--batch-size", "4",
                "--top-k", "5", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc


# --------------------------------------------------------------------------- the config


def test_the_charlm_llama_has_about_the_gpts_parameter_count_and_an_old_config_means_the_gpt():
    gpt_cfg, llama_cfg = CharLMConfig(), CharLMConfig(model="llama")
    vocab = CharData(gpt_cfg).vocab.size
    gpt = gpt_cfg.build_model(vocab, np.float32, np.random.default_rng(0))
    llama = llama_cfg.build_model(vocab, np.float32, np.random.default_rng(0))
    assert isinstance(gpt, nt.GPT) and isinstance(llama, nt.Llama)
    n_gpt, n_llama = (sum(p.size for p in m.parameters()) for m in (gpt, llama))
    assert abs(n_llama - n_gpt) < 0.01 * n_gpt, (n_gpt, n_llama)
    c = llama.config
    assert (c.d_model, c.n_heads, c.n_layers, c.max_len) == (128, 4, 3, gpt_cfg.block_size)
    assert c.n_kv_heads == 2 and c.tie_embeddings and c.d_ff == llama_cfg.llama_d_ff
    # A train_config written before the Llama existed has no "model" and no llama_* fields: it is the GPT's.
    old = {k: v for k, v in asdict(gpt_cfg).items() if k != "model" and not k.startswith("llama_")}
    assert config_from_json(CharLMConfig, old, "train_config") == gpt_cfg
    with pytest.raises(CheckpointError, match=r"train_config: model: expected one of \('gpt', 'llama'\)"):
        config_from_json(CharLMConfig, {**old, "model": "bert"}, "train_config")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "rnn"}, r"model: expected one of \('gpt', 'llama'\), got 'rnn'"),
        ({"model": "llama", "dropout": 0.1}, r"dropout: the Llama has no dropout"),
        ({"llama_n_kv_heads": 0}, r"llama_n_kv_heads: expected a positive int, got 0"),
        ({"llama_d_ff": 2.5}, r"llama_d_ff: expected a positive int, got 2.5"),
        ({"llama_rope_theta": -1.0}, r"llama_rope_theta: expected a finite number > 0, got -1.0"),
    ],
)
def test_charlm_config_rejects_bad_model_fields_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CharLMConfig(**kwargs)


def test_start_charlm_builds_a_llama_whose_norm_gains_are_not_decayed():
    cfg = CharLMConfig(model="llama", corpus_chars=5000, block_size=16)
    run = start_charlm(cfg, np.float32)
    assert isinstance(run.model, nt.Llama) and run.model.dtype == np.float32
    decayed, kept = (set(g["params"]) for g in run.optimizer.param_groups)
    assert kept == {n for n, _ in run.model.named_parameters() if n == "norm.weight" or ".norm" in n}
    assert "tok_embed.weight" in decayed and "layers.0.ff.gate_proj.weight" in decayed
    x, y = CharData(cfg).batch(run.batch_rng, 4, cfg.block_size)
    loss, masks = run.trainers[0].train_step(x, y, lr=1e-3, step=1)
    assert np.isfinite(loss) and masks == {}  # a Llama has no dropout: nothing drawn, nothing to replay


# --------------------------------------------------------------------------- the command


def test_train_charlm_llama_runs_prints_falling_loss_and_samples_and_writes_its_files(llama_run):
    out, proc = llama_run
    text = proc.stdout
    assert "model: Llama, d_model 128, 4 query / 2 key-value heads, 3 layers, SwiGLU d_ff 224" in text
    assert "411904 parameters" in text and "unigram entropy" in text
    assert "samples (temperature 0.8, top-k 5)" in text
    vals = [
        float(line.split("val loss ")[1])
        for line in text.splitlines()
        if line.startswith("step") and "val loss" in line
    ]
    assert len(vals) == 2 and vals[1] < vals[0], vals
    assert abs(vals[0] - np.log(43)) < 0.1  # uniform guessing at initialisation: ln V
    for name in ("checkpoint.npz", "history.json", "loss_curves.png"):
        assert (out / name).is_file(), name
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["model"] == "llama" and len(history["losses"]["numpy"]) == STEPS
    assert history["losses"]["numpy"][-1] < history["losses"]["numpy"][0]
    assert len(history["samples"]) == 3 and all(s.startswith(("The ", "Anna ", "In the")) for s in history["samples"])
    ckpt = read_checkpoint(out / "checkpoint.npz")
    assert isinstance(ckpt.config, nt.LlamaConfig) and ckpt.meta["train_config"]["model"] == "llama"
    assert ckpt.meta["train_state"]["steps_done"] == STEPS


def test_train_charlm_model_gpt_is_the_default(tmp_path, capsys):
    argv = ["train", "--task", "charlm", "--steps", "1", "--batch-size", "2", "--samples", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    assert main([*argv, "--model", "gpt", "--out", str(tmp_path / "gpt")]) == 0
    assert capsys.readouterr().out.count("model: GPT, d_model 128") == 2
    with np.load(tmp_path / "default" / "checkpoint.npz") as a, np.load(tmp_path / "gpt" / "checkpoint.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "meta")


def test_train_charlm_llama_compare_trains_numpy_and_the_twin_step_for_step(tmp_path, capsys):
    """--compare: the same windows, torch's AdamW / clipping / cross-entropy on the twin Llama, float64."""
    pytest.importorskip("torch")
    args = ["train", "--task", "charlm", "--model", "llama", "--compare", "--dtype", "float64", "--steps", "3",
            "--batch-size", "2", "--no-progress", "--out", str(tmp_path), "--samples", "1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("largest per-step loss difference numpy vs torch"))
    assert float(line.split(": ")[1].split()[0]) < 1e-12, line
    assert "[numpy] trained 3 steps" in out and "[torch] trained 3 steps" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "charlm", "--model", "llama", "--dropout", "0.1"], "--dropout 0.1: the Llama has no dropout"),
        (["--task", "charlm", "--model", "vit"], "--model vit: --task charlm trains one of gpt, llama"),
        (["--task", "charlm", "--model", "rnn-bahdanau"], "--task charlm trains one of gpt, llama"),
        (["--model", "llama"], "--model llama: a language model, for --task charlm"),
        (["--task", "digits", "--model", "gpt"], "--task digits trains one of vit, cnn"),
    ],
)
def test_charlm_model_options_that_do_not_fit_exit_2(argv, message, tmp_path, capsys):
    code, err = _exit_code(["train", *argv, "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


# --------------------------------------------------------------------------- its checkpoint


def test_decode_continues_the_text_of_a_llama_charlm_checkpoint(llama_run, tmp_path, capsys):
    out, _ = llama_run
    heatmap = tmp_path / "self_attention.png"
    assert main(["decode", str(out / "checkpoint.npz"), "--input", "The ", "--heatmap", str(heatmap)]) == 0
    text = capsys.readouterr().out
    assert "task:     charlm (Llama, 43 characters, context 64)" in text and "output:   'The " in text
    assert heatmap.read_bytes()[:4] == b"\x89PNG"
    code, err = _exit_code(["decode", str(out / "checkpoint.npz"), "--input", "The ", "--beam", "2"], capsys)
    assert code == 2 and "--beam" in err, err


def test_a_llama_checkpoint_whose_train_config_names_the_gpt_is_refused_by_decode_and_resume(
    llama_run, tmp_path, capsys
):
    out, _ = llama_run
    meta = read_checkpoint(out / "checkpoint.npz").meta
    meta["train_config"] = {**meta["train_config"], "model": "gpt", "steps": 10}  # 10: a run that could go on
    bad = _with_meta(out / "checkpoint.npz", tmp_path / "checkpoint.npz", meta)
    code, err = _exit_code(["decode", str(bad), "--input", "The ", "--heatmap", str(tmp_path / "h.png")], capsys)
    assert code == 2 and "meta.train_config implies the model GPTConfig(" in err and "LlamaConfig(" in err, err
    code, err = _exit_code(["train", "--resume", str(tmp_path), "--no-progress"], capsys)
    assert code == 2 and "--resume" in err and "implies the model GPTConfig(" in err, err
    assert "Traceback" not in err and not (tmp_path / "history.json").exists()
