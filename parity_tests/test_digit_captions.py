"""CLIP on the digits (``applications/digit_captions.py``): the captions, the tokenizer, training, evaluation,
``train --task digit-captions`` and the ``zero-shot`` command.

The model's forward and backward are proven in ``test_clip.py`` / ``test_clip_hf.py``; here, what
the task adds: the pairs are right, the tokenizer follows CLIP's end-of-text convention, the
zero-shot prompt is held out, the metrics mean what they say, and the commands work end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tokenizers")

from numpy_transformer.applications import digit_captions as dc
from numpy_transformer.applications.datasets import digits_dataset
from numpy_transformer.commands import main
from numpy_transformer.functional.softmax import softmax_forward
from numpy_transformer.models.clip import eot_positions

TINY = dict(vision_d_model=16, vision_heads=2, vision_layers=1, vision_d_ff=32, text_d_model=16, text_heads=2,
            text_layers=1, text_d_ff=32, projection_dim=8)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return dc.build_tokenizer()


@pytest.fixture(scope="module")
def data():
    return digits_dataset(0, dtype=np.float64)


def test_captions_name_the_digit_and_the_zero_shot_prompt_is_never_a_training_caption():
    assert dc.caption("a handwritten {word}", 7) == "a handwritten seven"
    assert dc.caption("a {n} written by hand", 7) == "a 7 written by hand"
    training = {dc.caption(t, k) for t in dc.TRAIN_TEMPLATES for k in range(10)}
    assert len(training) == 10 * len(dc.TRAIN_TEMPLATES)  # every phrasing of every digit is distinct
    prompts = {dc.caption(dc.ZERO_SHOT_TEMPLATE, k) for k in range(10)}
    assert prompts.isdisjoint(training) and "a photo of the digit 3" in prompts
    with pytest.raises(ValueError, match="digit: expected an int from 0 to 9, got 10"):
        dc.caption("{n}", 10)


def test_the_tokenizer_puts_end_of_text_last_and_is_rebuilt_identically(tokenizer):
    V = tokenizer.get_vocab_size()
    assert tokenizer.token_to_id(dc.END) == V - 1 and tokenizer.token_to_id(dc.PAD) == 0
    assert dc.build_tokenizer().to_str() == tokenizer.to_str()  # deterministic: a resumed run rebuilds nothing
    assert "photo" not in tokenizer.get_vocab()  # the held-out prompt's word reaches the model as pieces
    ids = dc.encode_captions(tokenizer, ["seven", "a photo of the digit 7"], max_len=16)
    assert ids.shape == (2, 16) and ids.dtype == np.int64
    start = tokenizer.token_to_id(dc.START)
    for row, text in zip(ids, ["seven", "a photo of the digit 7"], strict=True):
        pieces = tokenizer.encode(text).ids
        n = len(pieces) + 2
        assert row[0] == start and list(row[1 : n - 1]) == pieces and row[n - 1] == V - 1 and not row[n:].any()
    # the pooling rule finds the end-of-text token in every row, padding or not
    assert list(eot_positions(ids)) == [len(tokenizer.encode(t).ids) + 1 for t in ["seven", "a photo of the digit 7"]]
    assert dc.tokenizer_from_json(tokenizer.to_str()).to_str() == tokenizer.to_str()


def test_bad_captions_and_tokenizers_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match=r"texts\[1\]: .* is 82 tokens .* at most max_len=16"):
        dc.encode_captions(tokenizer, ["seven", "seven " * 40], max_len=16)
    with pytest.raises(TypeError, match="texts: expected a sequence of strings, got one string"):
        dc.encode_captions(tokenizer, "seven", max_len=16)
    with pytest.raises(ValueError, match=r"texts\[0\]: expected a non-empty string"):
        dc.encode_captions(tokenizer, [" "], max_len=16)
    with pytest.raises(ValueError, match=r"meta\.tokenizer: not a tokenizer saved by the tokenizers library"):
        dc.tokenizer_from_json('{"no": "tokenizer"}', "meta.tokenizer")


def test_each_training_caption_id_row_is_its_digit_in_its_phrasing(tokenizer):
    run = dc.start_captions(dc.CaptionsConfig(**TINY), np.float64, tokenizer)
    assert run.caption_ids.shape == (10, len(dc.TRAIN_TEMPLATES), 16)
    for k in (0, 7):
        for t, template in enumerate(dc.TRAIN_TEMPLATES):
            row = run.caption_ids[k, t]
            text = tokenizer.decode([int(i) for i in row[1 : eot_positions(row[None])[0]]])
            assert text.replace(" ", "") == dc.caption(template, k).replace(" ", "")


def test_zero_shot_probabilities_are_the_full_models_logits_softmaxed(tokenizer, data):
    """Two paths to one number: the towers run apart (zero_shot_probabilities) and CLIPModel.forward."""
    run = dc.start_captions(dc.CaptionsConfig(**TINY), np.float64, tokenizer)
    model = run.model
    model.logit_scale[...] = 1.3  # not the initial value, so a missing exp() or scale shows
    prompts = [dc.caption(dc.ZERO_SHOT_TEMPLATE, k) for k in range(10)]
    got = dc.zero_shot_probabilities(model, tokenizer, data.x_test[:5], prompts)
    out, _ = model.forward(dc.encode_captions(tokenizer, prompts, 16), data.x_test[:5])
    want = softmax_forward(out.logits_per_image, axis=-1)[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_recall_at_k_counts_a_query_with_an_item_of_its_label_among_its_k_nearest():
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    labels = np.array([0, 1, 2])
    # query 0: nearest item 0 (label 0) -> hit; query 1: items 2, 1 -> miss at 1, hit at 2; query 2: 0, 1, 2
    assert dc.recall_at(sim, labels, labels, 1) == pytest.approx(1 / 3)
    assert dc.recall_at(sim, labels, labels, 2) == pytest.approx(2 / 3)
    assert dc.recall_at(sim, labels, labels, 3) == 1.0
    assert dc.recall_at(sim, labels, np.array([2, 2, 2]), 1) == pytest.approx(1 / 3)  # only query 2's label exists


def test_a_short_run_lowers_the_loss_and_clamps_the_temperature(tokenizer, data):
    cfg = dc.CaptionsConfig(**TINY, steps=60, batch_size=32, peak_lr=3e-3, warmup_steps=5, eval_every=60)
    run = dc.train_captions(cfg, data, np.float64)
    losses = np.asarray(run.losses["numpy"])
    assert losses[:10].mean() > losses[-10:].mean() + 0.2, losses
    assert len(run.logit_scales) == 60 and all(0.0 <= s <= np.log(100.0) for s in run.logit_scales)
    row = run.evals[-1]
    assert row["step"] == 60 and 0.0 <= row["zero_shot_accuracy"] <= 1.0
    for name in ("image_to_text_r1", "text_to_image_r1"):
        assert row[name] <= row[name.replace("r1", "r5")]


def test_the_post_step_clamp_holds_logit_scale_at_ln_100():
    cfg = dc.CaptionsConfig(**TINY, steps=1)
    data = digits_dataset(0)
    run = dc.start_captions(cfg)
    run.model.logit_scale[...] = 4.8  # above ln 100 = 4.605
    dc.train_captions(cfg, data, run=run)
    assert float(run.model.logit_scale) == pytest.approx(np.log(100.0), abs=1e-6)
    unclamped = dc.CaptionsConfig(**TINY, steps=1, clamp_logit_scale=False)
    run = dc.start_captions(unclamped)
    run.model.logit_scale[...] = 4.8
    dc.train_captions(unclamped, data, run=run)
    assert float(run.model.logit_scale) > 4.7


def test_a_png_of_a_test_digit_reads_back_as_that_digit(tmp_path, data):
    from PIL import Image

    image = data.x_test[0, 0]
    paper = np.round(255 * (1 - image)).astype(np.uint8)  # dark ink on white, as a scan would be
    Image.fromarray(np.kron(paper, np.ones((4, 4), np.uint8))).save(tmp_path / "digit.png")  # 32 x 32
    got = dc.read_digit_png(tmp_path / "digit.png", np.float64)
    assert got.shape == (1, 8, 8)
    np.testing.assert_allclose(got[0], image, atol=1 / 255 + 1e-12)
    (tmp_path / "not.png").write_text("no picture")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        dc.read_digit_png(tmp_path / "not.png")


@pytest.mark.slow
def test_train_and_zero_shot_commands_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "digit-captions", "--steps", "3", "--batch-size", "8", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "tokenizer: byte-pair encoding trained on the captions" in text
    assert "zero-shot accuracy" in text and "image->text R@1" in text
    for name in ("checkpoint.npz", "tokenizer.json", "history.json", "loss_curves.png", "similarity.png",
                 "temperature.png", "nearest_captions.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name

    assert main(["zero-shot", str(out), "--index", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("test image 5: a ")
    probs = [float(line.split()[-2]) if line.strip().endswith("#") else float(line.split()[-1]) for line in lines[1:11]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-3) and probs == sorted(probs, reverse=True)
    assert lines[-1].startswith("predicted: 'a photo of the digit ")

    assert main(["zero-shot", str(out / "checkpoint.npz"), "--prompt", "seven", "--prompt", "the digit 1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and {line.split()[0] for line in lines[1:3]} == {"seven", "the"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--task", "digit-captions", "--model", "vit"], "--task digit-captions trains one of clip"),
        (["train", "--task", "digit-captions", "--backend", "torch"], "trains in NumPy only"),
        (["train", "--task", "digit-captions", "--dropout", "0.1"], "CLIP trains without dropout"),
        (["train", "--task", "digits", "--model", "clip"], "--task digits trains one of vit, cnn"),
        (["train", "--model", "clip"], "an image-and-text model, for --task digit-captions"),
        (["zero-shot", "missing.npz"], "checkpoint"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
