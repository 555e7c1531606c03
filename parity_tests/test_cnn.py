"""The CNN baseline and the digits task: an outside reference, properties, the data split, the command.

* ``ImageCNN`` against ``torch.nn.Sequential(Conv2d, ReLU, MaxPool2d, ..., Flatten, Linear)`` built by
  PyTorch on the same weights: logits, the loss and every gradient in float64 (the registry case
  ``ImageCNN`` compares the twin and finite differences).
* The digits split (stratified, disjoint, seeded), the random shift (a real translation), and
  ``train --task digits`` end to end: accuracy printed, loss curves and a confusion matrix written.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from numpy_transformer.config import CNNConfig
from numpy_transformer.models.cnn import ImageCNN
from numpy_transformer.testing import relative_error, tolerance

torch = pytest.importorskip("torch")


def _reference(model: ImageCNN) -> torch.nn.Module:
    """The same network from PyTorch's own modules, carrying ``model``'s weights."""
    c = model.config
    layers, widths = [], (c.num_channels, *c.channels)
    for c_in, c_out in itertools.pairwise(widths):
        layers += [torch.nn.Conv2d(c_in, c_out, c.kernel_size, padding=c.kernel_size // 2, dtype=torch.float64),
                   torch.nn.ReLU(), torch.nn.MaxPool2d(2)]  # fmt: skip
    layers += [torch.nn.Flatten(), torch.nn.Linear(c.flat_features, c.num_labels, dtype=torch.float64)]
    ref = torch.nn.Sequential(*layers)
    state = model.state_dict()
    names = [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        for name, p in zip(names, ref.parameters(), strict=True):
            p.copy_(torch.from_numpy(state[name]))
    return ref


@pytest.mark.parametrize(
    "config",
    [CNNConfig(), CNNConfig(image_size=8, num_channels=2, channels=(3,), kernel_size=5, num_labels=4)],
    ids=["digits", "one-stage-5x5"],
)
def test_cnn_equals_torch_nn_conv_relu_maxpool_linear_on_the_same_weights(config):
    rng = np.random.default_rng(0)
    model = ImageCNN(config, np.float64, rng)
    x = rng.standard_normal((5, config.num_channels, config.image_size, config.image_size))
    labels = rng.integers(0, config.num_labels, 5)
    out, cache = model.forward(x, labels=labels)
    model.backward(None, cache)
    ref = _reference(model)
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = ref(xt)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    loss.backward()
    tol = tolerance("cpu", np.float64)
    checks = [relative_error("logits", out.logits, logits.detach().numpy()),
              relative_error("loss", out.loss, loss.detach().numpy())]  # fmt: skip
    grads = dict(model.named_grads())
    for (name, _), p in zip(model.named_parameters(), ref.parameters(), strict=True):
        checks.append(relative_error(name, grads[name], p.grad.numpy()))
    _, cache = model.forward(x, labels=labels)
    checks.append(relative_error("pixel_values", model.backward(None, cache), xt.grad.numpy()))
    worst = max(checks, key=lambda c: c.error)
    assert worst.error <= tol, worst


def test_shifting_a_digit_by_two_pixels_shifts_the_first_stage_feature_map_by_one_pixel():
    """Conv commutes with translation; a 2x2 pool turns a 2-pixel shift into a 1-pixel shift of its output."""
    rng = np.random.default_rng(1)
    model = ImageCNN(CNNConfig(image_size=16, channels=(4,)), np.float64, rng)
    x = np.zeros((1, 1, 16, 16))
    x[0, 0, 3:9, 3:9] = rng.random((6, 6))  # a blob well inside, so no border effect reaches it
    moved = np.roll(x, 2, axis=3)
    a, _ = model.stages[0].forward(x)
    b, _ = model.stages[0].forward(moved)
    np.testing.assert_array_equal(np.roll(a, 1, axis=3)[..., 1:-1], b[..., 1:-1])


def test_bad_inputs_name_the_argument():
    model = ImageCNN(CNNConfig(), np.float32, np.random.default_rng(0))
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(TypeError, match=r"pixel_values: expected a float32 array"):
        model.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"pixel_values: expected shape \(B, 1, 8, 8\), got \(2, 1, 8, 7\)"):
        model.forward(x[..., :7])
    with pytest.raises(ValueError, match=r"labels: expected 2 class ids in \[0, 10\)"):
        model.forward(x, labels=np.array([0, 10]))
    _, cache = model.forward(x)
    with pytest.raises(ValueError, match=r"dlogits: expected float32 of shape \(2, 10\)"):
        model.backward(np.zeros((2, 9), np.float32), cache)
    with pytest.raises(ValueError, match=r"image_size must be a multiple of 4"):
        CNNConfig(image_size=6)
    with pytest.raises(ValueError, match=r"kernel_size: expected an odd size"):
        CNNConfig(kernel_size=2)


# ---------------------------------------------------------------------------- the digits task


def test_the_digits_split_is_stratified_disjoint_and_seeded():
    pytest.importorskip("sklearn")
    from numpy_transformer.applications.datasets import digits_dataset

    d = digits_dataset(0)
    assert d.x_train.shape == (1438, 1, 8, 8) and d.x_test.shape == (359, 1, 8, 8)
    assert d.x_train.dtype == np.float32 and d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    train = {row.tobytes() for row in d.x_train.reshape(len(d.x_train), -1)}
    test_rows = [row.tobytes() for row in d.x_test.reshape(len(d.x_test), -1)]
    assert sum(r in train for r in test_rows) == 0  # no test image in the training set
    counts = np.bincount(d.y_test, minlength=10) / np.bincount(np.r_[d.y_train, d.y_test], minlength=10)
    assert np.all(np.abs(counts - 0.2) < 0.01)  # every digit split 80 / 20
    again, other = digits_dataset(0), digits_dataset(1)
    np.testing.assert_array_equal(again.y_train, d.y_train)
    assert not np.array_equal(other.y_train, d.y_train)


def test_the_random_shift_translates_each_image_and_fills_with_zeros():
    from numpy_transformer.applications.digits import shifted

    rng = np.random.default_rng(3)
    x = rng.random((50, 2, 8, 8))
    y = shifted(x, 1, np.random.default_rng(4))
    dy, dx = np.random.default_rng(4).integers(0, 3, size=(2, 50))
    for i in range(50):
        padded = np.pad(x[i], ((0, 0), (1, 1), (1, 1)))
        np.testing.assert_array_equal(y[i], padded[:, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8])
    assert len({(a, b) for a, b in zip(dy, dx, strict=True)}) == 9  # all nine offsets occur


@pytest.mark.parametrize("model", ["vit", "cnn"])
def test_train_digits_command_reports_accuracy_and_writes_the_figures(tmp_path, capsys, model):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from numpy_transformer.commands import main

    argv = ["train", "--task", "digits", "--model", model, "--steps", "150", "--batch-size", "32",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    line = next(x for x in captured.out.splitlines() if x.startswith("trained 150 steps"))
    accuracy = float(line.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.2, line  # ten classes: chance is 0.1
    assert "per digit: 0:" in captured.out and "150/150" in captured.err
    for name in ("checkpoint.npz", "history.json", "loss_curves.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    from numpy_transformer.training.checkpoint import read_checkpoint

    ckpt = read_checkpoint(tmp_path / "checkpoint.npz")
    assert type(ckpt.config).__name__ == ("ViTConfig" if model == "vit" else "CNNConfig")
    assert ckpt.meta["train_state"]["task"] == "digits"
    with pytest.raises(SystemExit) as exc:  # decode says which command serves a digits checkpoint
        main(["decode", str(tmp_path / "checkpoint.npz"), "--input", "3 4"])
    assert exc.value.code == 2 and "is a digits classifier" in capsys.readouterr().err


def test_train_digits_refuses_what_it_does_not_do(capsys):
    from numpy_transformer.commands import main

    for argv, message in [
        (["--task", "digits", "--backend", "torch"], "--task digits trains in NumPy only"),
        (["--task", "reverse", "--model", "vit"], "--model vit: an image model, for --task digits"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["train", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err
