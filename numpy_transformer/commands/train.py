"""``train``: the Transformer or a recurrent seq2seq model on a toy task (or ``--task charlm``, the GPT).

``--backend torch`` and ``--compare`` import the twin, lazily.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..applications.charlm import CharData, CharLMConfig, sample_text, train_charlm, unigram_entropy
from ..inference.sampling import check_sampling_args
from ..models.gpt import GPT
from ..training.atomic import atomic_write_text
from ..training.checkpoint import save_checkpoint
from ..training.loop import MODELS, NonFiniteError, TrainConfig
from ..training.tasks import TASKS
from .common import check_output_dir, limit_threads, non_negative_int, positive_int, require_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train the Transformer (or a recurrent seq2seq model, --model) on a built-in toy task",
        description="Train the encoder-decoder Transformer or a recurrent seq2seq model on a toy task (no download), "
        "print per-epoch train/validation loss and accuracy, and save a checkpoint, the history and a PNG "
        "of the loss curves in --out.",
    )
    train.add_argument(
        "--task",
        choices=(*TASKS, "charlm"),
        default="reverse",
        help="a seq2seq toy task, or charlm: a GPT character-level language model on a generated English corpus",
    )
    train.add_argument(
        "--model",
        choices=MODELS,
        default="transformer",
        help="the encoder-decoder Transformer, or a bidirectional-GRU encoder with a GRU decoder and "
        "Bahdanau (additive) or Luong (dot / general / concat) attention",
    )
    train.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help=f"updates to make (default {TrainConfig.steps})")
    length.add_argument("--epochs", type=positive_int, help="passes over the training set instead of --steps")
    train.add_argument(
        "--batch-size", type=positive_int, help=f"sequences per step (default {TrainConfig.batch_size}; charlm 32)"
    )
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the torch backend runs")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--out", type=Path, help="output folder (default runs/TASK-BACKEND)")
    train.add_argument(
        "--compare",
        action="store_true",
        help="train both backends from the same weights on the same batches and dropout masks; "
        "print the largest per-step loss difference and overlay both curves",
    )
    train.add_argument("--threads", type=positive_int, default=1, help="BLAS / torch threads (default 1)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--temperature", type=float, default=0.8, help="charlm samples: temperature (0 = greedy)")
    train.add_argument("--top-k", type=positive_int, help="charlm samples: keep the k most likely characters")
    train.add_argument("--top-p", type=float, help="charlm samples: nucleus sampling, a probability in (0, 1]")
    train.add_argument("--samples", type=positive_int, default=3, help="charlm: samples printed at the end")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.out is not None:  # before any work: an --out that cannot be a writable folder is exit status 2
        check_output_dir(parser, "--out", args.out)
    if args.task == "charlm":
        limit_threads(args.threads)
        return _train_charlm(parser, args)
    # The seq2seq tasks end by drawing loss_curves.png: find a missing matplotlib now, not after every step.
    require_module(
        parser, "matplotlib", "train draws its loss curves with matplotlib: pip install 'numpy-transformer[train]'"
    )
    from ..training.checkpoint import save_checkpoint
    from ..training.loop import NumpyTrainer, fit
    from ..training.tasks import ToyDataset

    needs_torch = args.backend == "torch" or args.compare
    if needs_torch:
        try:
            import torch

            from torch_transformer.bridge import copy_torch_to_numpy, twin_of
            from torch_transformer.training import TorchTrainer
        except ImportError as exc:
            parser.error(f"--backend torch / --compare need PyTorch (pip install 'numpy-transformer[torch]'): {exc}")
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available here")
    elif args.device == "cuda":
        parser.error("--device cuda: only the torch backend (or --compare) runs on CUDA")
    limit_threads(args.threads)

    defaults = TrainConfig()
    common = dict(task=args.task, model=args.model, batch_size=args.batch_size or defaults.batch_size, seed=args.seed)
    cfg = TrainConfig(**common)
    steps = args.epochs * cfg.steps_per_epoch() if args.epochs else (args.steps or defaults.steps)
    cfg = TrainConfig(**common, steps=steps)
    label = "compare" if args.compare else args.backend
    name = args.task if args.model == "transformer" else f"{args.task}-{args.model}"
    out = args.out or Path("runs") / f"{name}-{label}"
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(cfg.seed)
    model = cfg.build_model(np.dtype(args.dtype), rng)
    dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
    trainers = []
    if args.backend == "numpy" or args.compare:
        trainers.append(NumpyTrainer(model, cfg, rng))
    if needs_torch:
        twin = twin_of(model, device=args.device)  # the same initial weights
        trainers.append(TorchTrainer(twin, cfg, device=args.device))

    n_params = sum(p.size for p in model.parameters())
    print(
        f"task {cfg.task}: {cfg.n_train} training / {cfg.n_val} validation sequences, lengths "
        f"{cfg.min_len}-{cfg.max_len}, {cfg.n_symbols} symbols"
    )
    if cfg.model == "transformer":
        print(
            f"model: d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_layers}+{cfg.n_layers} layers, "
            f"d_ff {cfg.d_ff}, {'pre' if cfg.norm_first else 'post'}-LN, {n_params} parameters, {args.dtype}"
        )
    else:
        print(
            f"model: {cfg.model}, bidirectional GRU encoder, GRU decoder, embeddings {cfg.rnn_embed_dim}, "
            f"hidden {cfg.rnn_hidden}, {n_params} parameters, {args.dtype}"
        )
    print(
        f"training: {' and '.join(t.backend for t in trainers)}, {steps} steps of batch {cfg.batch_size} "
        f"({steps / cfg.steps_per_epoch():.1f} epochs), Adam, warm-up {cfg.warmup_steps}, clip {cfg.clip_norm}, "
        f"label smoothing {cfg.label_smoothing}, {args.threads} thread(s)"
    )
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=steps, unit="step", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            bar = None
    say = bar.write if bar is not None else print

    def on_step(step: int, results) -> None:
        if bar is not None:
            bar.set_postfix({t.backend: f"{r.loss:.4f}" for t, r in zip(trainers, results, strict=True)})
            bar.update(1)

    def on_eval(row: dict) -> None:
        say(
            f"epoch {row['epoch']:>3} step {row['step']:>6} [{row['backend']}]  train loss {row['train_loss']:.4f}"
            f" | val loss {row['val_loss']:.4f}  token acc {row['val_token_accuracy']:.4f}"
            f"  sequence acc {row['val_sequence_accuracy']:.4f}"
        )

    try:
        history = fit(trainers, dataset, cfg, steps, on_step=on_step, on_eval=on_eval)
    except NonFiniteError as exc:
        if bar is not None:
            bar.close()
        return _report_divergence(exc)
    if bar is not None:
        bar.close()

    if args.backend == "torch" and not args.compare:
        copy_torch_to_numpy(trainers[0].model, model)  # save the trained twin in the same format
    optimizer = trainers[0].optimizer if trainers[0].backend == "numpy" else None
    ckpt = save_checkpoint(out / "checkpoint.npz", model, optimizer, train_config=history.config, steps=steps)
    atomic_write_text(out / "history.json", json.dumps(history.to_json(), indent=1, default=float))
    from ..applications.plots import plot_loss_curves

    png = plot_loss_curves(history, out / "loss_curves.png", title=f"{cfg.task}: {label}, {args.dtype}")
    final = [e for e in history.evals if e["step"] == steps]
    print(f"\ntrained {steps} steps in {history.seconds:.1f} s")
    for row in final:
        print(
            f"final [{row['backend']}]: val loss {row['val_loss']:.4f}, token accuracy {row['val_token_accuracy']:.4f}"
            f", exact-sequence accuracy {row['val_sequence_accuracy']:.4f}"
        )
    diff = history.max_loss_difference()
    if diff is not None:
        print(f"largest per-step loss difference numpy vs torch: {diff[0]:.3e} (relative, at step {diff[1]})")
        _print_final_weight_difference(model, trainers[1].model)
    print(f"wrote {ckpt}, {out / 'history.json'}, {png}")
    return 0


def _report_divergence(exc: NonFiniteError) -> int:
    """A non-finite loss or gradient stopped training: say where, and that nothing was saved."""
    print(f"error: training diverged: {exc}", file=sys.stderr)
    print(
        f"no checkpoint written; the run diverged at step {exc.step} (this command saves only after the last "
        "step, and the NaN/inf weights are not saved)",
        file=sys.stderr,
    )
    return 1


def _print_final_weight_difference(model, twin) -> None:
    """After --compare: how far apart the two backends' final weights are."""
    from torch_transformer.bridge import state_dict_to_numpy

    from ..testing import relative_error

    theirs = state_dict_to_numpy(twin.state_dict())
    rest = [relative_error(n, p, theirs[n]) for n, p in model.named_parameters() if not n.endswith("k_proj.bias")]
    worst = max(rest, key=lambda c: c.error)
    print(f"largest final-weight difference: {worst.error:.3e} (relative, {worst.name})")
    k_bias = [float(np.abs(p - theirs[n]).max()) for n, p in model.named_parameters() if n.endswith("k_proj.bias")]
    if not k_bias:  # the recurrent models have no key projection
        return
    drift = max(k_bias)
    print(
        f"  k_proj.bias, left out above: differs by up to {drift:.1e}. Shifting every key's score by the same "
        "amount changes nothing, so its true gradient is 0; Adam scales the rounding noise each backend "
        "computes instead into tiny, different steps"
    )


def _train_charlm(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``train --task charlm``: train, print the validation loss as it falls, print samples, save the run."""
    if args.backend != "numpy" or args.compare or args.model != "transformer" or args.device != "cpu":
        parser.error("--task charlm trains the NumPy GPT only (no --backend torch, --compare, --model or --device)")
    try:
        check_sampling_args(args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        parser.error(f"sampling options (--temperature, --top-k, --top-p): {exc}")
    defaults = CharLMConfig()
    batch_size = args.batch_size or defaults.batch_size
    cfg = CharLMConfig(batch_size=batch_size, seed=args.seed, steps=args.steps or defaults.steps)
    if args.epochs:
        per_epoch = math.ceil(0.9 * cfg.corpus_chars / (cfg.batch_size * cfg.block_size))
        cfg = CharLMConfig(batch_size=batch_size, seed=args.seed, steps=args.epochs * per_epoch)
    out = args.out or Path("runs") / "charlm-numpy"
    out.mkdir(parents=True, exist_ok=True)
    data_preview = CharData(cfg)
    n_params = sum(
        p.size for p in GPT(cfg.model_config(data_preview.vocab.size), rng=np.random.default_rng(0)).parameters()
    )
    print(
        f"corpus: {cfg.corpus_chars} generated characters ({data_preview.train.size} train / "
        f"{data_preview.val.size} validation), {data_preview.vocab.size} distinct; unigram entropy "
        f"{unigram_entropy(data_preview.train, data_preview.vocab.size):.3f} nats/char"
    )
    print(
        f"model: GPT, d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_layers} layers, d_ff {cfg.d_ff}, "
        f"context {cfg.block_size}, {n_params} parameters, {args.dtype}"
    )
    print(
        f"training: {cfg.steps} steps of {cfg.batch_size} x {cfg.block_size} characters, AdamW, peak lr "
        f"{cfg.peak_lr}, warm-up {cfg.warmup_steps}, clip {cfg.clip_norm}, {args.threads} thread(s)"
    )

    def on_eval(row: dict[str, float]) -> None:
        train = "" if math.isnan(row["train_loss"]) else f"train loss {row['train_loss']:.4f} | "
        print(f"step {row['step']:>5}  {train}val loss {row['val_loss']:.4f}", flush=True)

    try:
        run = train_charlm(cfg, np.dtype(args.dtype), on_eval=on_eval)
    except NonFiniteError as exc:
        return _report_divergence(exc)
    first, last = run.evals[0]["val_loss"], run.evals[-1]["val_loss"]
    print(
        f"\ntrained {cfg.steps} steps in {run.seconds:.1f} s: validation loss {first:.3f} -> {last:.3f} nats/char "
        f"(unigram entropy {run.unigram_entropy:.3f})"
    )
    filters = f"temperature {args.temperature}" + (f", top-k {args.top_k}" if args.top_k else "")
    filters += f", top-p {args.top_p}" if args.top_p else ""
    print(f"samples ({filters}):")
    rng = np.random.default_rng([cfg.seed, 2])
    samples = []
    for prompt in ("The ", "Anna ", "In the morning, ")[: args.samples] + ("",) * max(0, args.samples - 3):
        prompt = prompt or run.vocab.chars[rng.integers(run.vocab.size)]
        text = sample_text(run.model, run.vocab, prompt, cfg.block_size, args.temperature, args.top_k, args.top_p, rng)
        samples.append(text)
        print(f"  {text!r}")
    ckpt = save_checkpoint(
        out / "checkpoint.npz", run.model, run.optimizer, train_config=asdict(cfg), vocab=run.vocab.chars
    )
    history = {"config": asdict(cfg), "evals": run.evals, "seconds": run.seconds, "samples": samples}
    atomic_write_text(out / "history.json", json.dumps(history, indent=1, default=float))
    print(f"wrote {ckpt}, {out / 'history.json'}")
    return 0
