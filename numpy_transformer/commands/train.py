"""``train``: the Transformer or a recurrent seq2seq model on a toy task (or ``--task charlm``: a GPT or a Llama).

``--backend torch`` and ``--compare`` import the twin, lazily.

Long runs: the checkpoint is written every ``--save-every`` steps, at the end, and when Ctrl-C or
SIGTERM stops the run (after the current step; exit status 130 / 143). ``--resume DIR`` continues
from it bit for bit: the file holds everything the run's future depends on (``training/resume.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..applications.charlm import (
    CHARLM_MODELS,
    CharData,
    CharLMConfig,
    CharLMRun,
    sample_text,
    start_charlm,
    train_charlm,
    unigram_entropy,
)
from ..applications.digit_captions import CAPTION_MODELS, CaptionsConfig
from ..applications.digits import (
    DIGIT_MODELS,
    DigitsConfig,
    DigitsRun,
    confusion_matrix,
    predict,
    start_digits,
    train_digits,
)
from ..inference.sampling import check_sampling_args
from ..optim import Adam
from ..training.allocator import keep_freed_memory
from ..training.atomic import atomic_write_text
from ..training.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_from_json,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ..training.loop import MODELS, History, NonFiniteError, TrainConfig
from ..training.resume import TRAIN_STATE_VERSION, check_train_state, generator_state, restore_generator
from ..training.tasks import TASKS
from .common import (
    StopOnSignal,
    check_output_dir,
    limit_threads,
    non_negative_int,
    positive_int,
    probability,
    require_module,
)

SAVE_EVERY = 250  # steps between checkpoints: a few minutes of the default runs, a second of writing
# What a resumed run takes from its checkpoint, never from the command line.
OTHER_TASKS = ("charlm", "digits", "digit-captions", "detect")  # the tasks that are not seq2seq toy tasks
RUN_OPTIONS = ("task", "model", "backend", "dtype", "steps", "epochs", "batch_size", "dropout", "device", "seed",
               "backbone_steps")  # fmt: skip


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
        choices=(*TASKS, "charlm", "digits", "digit-captions", "detect"),
        help="a seq2seq toy task (default reverse), charlm: a character-level language model (a GPT, or a Llama) on "
        "a generated English corpus, digits: a ViT (or a CNN) classifying scikit-learn's 8x8 handwritten digits, or "
        "digit-captions: CLIP's two encoders trained against each other on the digits and generated captions",
    )
    train.add_argument(
        "--model",
        choices=(*MODELS, *CHARLM_MODELS, *DIGIT_MODELS, *CAPTION_MODELS, "detr"),
        help="seq2seq tasks: the encoder-decoder Transformer (default), or a bidirectional-GRU encoder with a GRU "
        "decoder and Bahdanau (additive) or Luong (dot / general / concat) attention; charlm: gpt (default) or "
        "llama (RMSNorm, rotary positions, SwiGLU, grouped-query attention; about the same size); digits: vit "
        "(default) or cnn; digit-captions: clip",
    )
    train.add_argument("--backend", choices=("numpy", "torch"), help="default numpy")
    train.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help=f"updates to make (default {TrainConfig.steps})")
    length.add_argument("--epochs", type=positive_int, help="passes over the training set instead of --steps")
    train.add_argument(
        "--batch-size", type=positive_int, help=f"sequences per step (default {TrainConfig.batch_size}; charlm 32)"
    )
    train.add_argument("--dropout", type=probability, help="dropout probability in [0, 1) (default 0)")
    train.add_argument("--device", choices=("cpu", "cuda"), help="where the torch backend runs (default cpu)")
    train.add_argument("--seed", type=non_negative_int, help="default 0")
    train.add_argument("--out", type=Path, help="output folder (default runs/TASK-BACKEND; with --resume, DIR)")
    train.add_argument(
        "--compare",
        action="store_true",
        help="train both backends from the same weights on the same batches and dropout masks; "
        "print the largest per-step loss difference and overlay both curves",
    )
    train.add_argument(
        "--save-every",
        type=non_negative_int,
        default=SAVE_EVERY,
        metavar="N",
        help=f"write the checkpoint every N steps (default {SAVE_EVERY}; 0: only at the end), and always at the "
        "end or when stopped by Ctrl-C / SIGTERM",
    )
    train.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run whose checkpoint is DIR/checkpoint.npz exactly where it stopped (the same "
        "weights, optimizer, schedule, data order and random generators: bit for bit what an uninterrupted "
        "run gives); its configuration comes from the file",
    )
    train.add_argument("--threads", type=positive_int, default=1, help="BLAS / torch threads (default 1)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--log-every", type=non_negative_int, default=0, metavar="N", help="print the loss every N steps (0: never)"
    )
    train.add_argument("--temperature", type=float, default=0.8, help="charlm samples: temperature (0 = greedy)")
    train.add_argument("--top-k", type=positive_int, help="charlm samples: keep the k most likely characters")
    train.add_argument("--top-p", type=float, help="charlm samples: nucleus sampling, a probability in (0, 1]")
    train.add_argument("--samples", type=positive_int, default=3, help="charlm: samples printed at the end")
    train.add_argument(
        "--backbone-steps",
        type=non_negative_int,
        metavar="N",
        help="detect: first pre-train DETR's backbone N steps on single training digits (its frozen batch norms' "
        "statistics measured on 64 training canvases, a pooled linear head, batch 64), then train DETR with the "
        "backbone at a tenth of the learning rate, as the paper starts from a pre-trained ResNet (default 0: "
        "from scratch). Part of the run: saved in its checkpoint, never repeated by --resume",
    )


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    resumed = None
    if args.resume is not None:
        given = [f"--{n.replace('_', '-')}" for n in RUN_OPTIONS if getattr(args, n) is not None]
        given += ["--compare"] * args.compare
        if given:
            parser.error(f"--resume continues the run as it was configured; {', '.join(given)} cannot change it")
        resumed = _read_resumable(parser, args.resume)
        args.out = args.out or args.resume
    if args.out is not None:  # before any work: an --out that cannot be a writable folder is exit status 2
        check_output_dir(parser, "--out", args.out)
    if args.dtype is None:
        args.dtype = resumed.meta["dtype"] if resumed is not None else "float32"
    task = resumed.meta["train_state"]["task"] if resumed is not None else (args.task or "reverse")
    if task != "detect" and args.backbone_steps is not None:
        parser.error(f"--backbone-steps: pre-trains DETR's backbone, for --task detect (not {task})")
    # Every run ends by drawing loss_curves.png: find a missing matplotlib now, not after every step.
    require_module(
        parser, "matplotlib", "train draws its loss curves with matplotlib: pip install 'numpy-transformer[train]'"
    )
    keep_freed_memory()  # the steps' arrays stay in the heap instead of being page-faulted in anew each step
    if task == "charlm":
        limit_threads(args.threads)
        return _train_charlm(parser, args, resumed)
    if task == "digits":
        limit_threads(args.threads)
        return _train_digits(parser, args, resumed)
    if task == "digit-captions":
        limit_threads(args.threads)
        return _train_captions(parser, args, resumed)
    if task == "detect":  # DETR on generated digit canvases (applications/detection.py)
        limit_threads(args.threads)
        return _train_detect(parser, args, resumed)
    if args.model == "detr":
        parser.error("--model detr: a detector, for --task detect")
    if args.model in CAPTION_MODELS:
        parser.error(f"--model {args.model}: an image-and-text model, for --task digit-captions")
    if args.model in DIGIT_MODELS:
        parser.error(f"--model {args.model}: an image model, for --task digits")
    if args.model in CHARLM_MODELS:
        parser.error(f"--model {args.model}: a language model, for --task charlm")
    return _train_seq2seq(parser, args, resumed)


def _read_resumable(parser: argparse.ArgumentParser, folder: Path) -> Checkpoint:
    """``folder/checkpoint.npz``, read and checked, with a ``train_state`` that can continue; else exit status 2."""
    path = folder / "checkpoint.npz"
    if not folder.is_dir():
        parser.error(f"--resume: {folder} is not a folder (give the run's folder, the one holding checkpoint.npz)")
    try:
        ckpt = read_checkpoint(path)
        state = ckpt.meta.get("train_state")
        if state is None:
            raise CheckpointError(
                f"checkpoint: {path} holds no run state: it was written by a --compare run or by an older version; "
                "decode can read it, train cannot continue it"
            )
        task = state.get("task") if isinstance(state, dict) else None
        if task not in (*TASKS, *OTHER_TASKS):
            raise CheckpointError(f"checkpoint: {path}: meta.train_state.task: expected one of "
                                  f"{[*TASKS, *OTHER_TASKS]}, got {task!r:.80}")  # fmt: skip
        where = f"checkpoint: {path}: meta.train_config"
        kind = {"charlm": CharLMConfig, "digits": DigitsConfig, "digit-captions": CaptionsConfig,
                "detect": _detect_config()}.get(task, TrainConfig)  # fmt: skip
        cfg = config_from_json(kind, ckpt.meta.get("train_config"), where)
        backend = state.get("backend")
        if backend not in ("numpy", "torch"):
            raise CheckpointError(f"checkpoint: {path}: meta.train_state.backend: expected 'numpy' or 'torch', "
                                  f"got {backend!r:.80}")  # fmt: skip
        if task == "digits":
            generators = ("dropout", "batches")
        elif task in ("digit-captions", "detect"):
            generators = ("batches",)  # neither CLIP nor this DETR has dropout
        elif task == "charlm":
            generators = ("dropout", "windows") if backend == "numpy" else ("windows",)
        else:
            generators = ("dropout",) if backend == "numpy" else ()
        check_train_state(state, ckpt.state_arrays, cfg.steps, f"checkpoint: {path}: meta.train_state",
                          generators, (backend,), position=task in TASKS)  # fmt: skip
    except CheckpointError as exc:
        parser.error(f"--resume: {exc}")
    if state["steps_done"] == cfg.steps:
        parser.error(f"--resume: the run in {folder} already made all its {cfg.steps} steps; nothing to continue")
    if state.get("device") not in ("cpu", "cuda"):
        where = f"--resume: {path}: meta.train_state.device"
        parser.error(f"{where}: expected 'cpu' or 'cuda', got {state.get('device')!r:.80}")
    return ckpt


def _train_state(task: str, backend: str, device: str, steps_done: int, seconds: float, evals: list, **more) -> dict:
    """``meta["train_state"]``: the JSON part of what a resumed run needs (``training/resume.py``)."""
    return {"version": TRAIN_STATE_VERSION, "task": task, "backend": backend, "device": device,
            "steps_done": steps_done, "seconds": seconds, "evals": evals, **more}  # fmt: skip


class _Saver:
    """Writes the run's files; a failed write is reported and training goes on, with the last good file kept."""

    def __init__(self, out: Path, say) -> None:
        self.out, self.say = out, say
        self.saved_step: int | None = None  # the step of the last checkpoint written
        self.error: OSError | None = None  # the last write's error, None if it worked

    def __call__(self, step: int, write) -> None:
        try:
            write()
        except OSError as exc:
            self.error = exc
            kept = "no checkpoint yet" if self.saved_step is None else f"the one of step {self.saved_step} is kept"
            self.say(f"warning: step {step}: could not write the checkpoint ({exc}); {kept}")
            return
        self.error, self.saved_step = None, step

    def lost(self) -> int:
        """After the last save failed: say so (exit status 1)."""
        kept = (
            "no checkpoint was written"
            if self.saved_step is None
            else f"the last checkpoint written, {self.out / 'checkpoint.npz'}, is of step {self.saved_step} "
            f"(continue it with: python -m numpy_transformer train --resume {self.out})"
        )
        print(f"error: could not write the final checkpoint: {self.error}; {kept}", file=sys.stderr)
        return 1


def _stopped(stop: StopOnSignal, saver: _Saver, step: int, steps: int, resumable: bool) -> int:
    """The run stopped on a signal at ``step``: say where its checkpoint is and how to continue."""
    if saver.error is not None:
        return saver.lost()
    print(f"\nstopped by {stop.name} after step {step} of {steps}; wrote {saver.out / 'checkpoint.npz'}")
    if resumable:
        print(f"continue with: python -m numpy_transformer train --resume {saver.out}")
    else:
        print("(a --compare run cannot be resumed: the file holds the NumPy model; train --backend numpy to go on)")
    return stop.exit_code


def _backend_and_device(parser: argparse.ArgumentParser, args: argparse.Namespace, resumed: Checkpoint | None):
    """(backend, device, the torch module or None): from the command line, or from the file a run resumes.

    ``--backend torch`` and ``--compare`` import torch here, so a missing PyTorch or CUDA is exit status 2.
    """
    if resumed is not None:
        args.backend, args.device = resumed.meta["train_state"]["backend"], resumed.meta["train_state"]["device"]
    backend, device = args.backend or "numpy", args.device or "cpu"
    if backend != "torch" and not args.compare:
        if device == "cuda":
            parser.error("--device cuda: only the torch backend (or --compare) runs on CUDA")
        return backend, device, None
    try:
        import torch
    except ImportError as exc:
        parser.error(f"--backend torch / --compare need PyTorch (pip install 'numpy-transformer[torch]'): {exc}")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    return backend, device, torch


def _train_seq2seq(parser: argparse.ArgumentParser, args: argparse.Namespace, resumed: Checkpoint | None) -> int:
    from ..training.loop import NumpyTrainer, fit
    from ..training.tasks import ToyDataset

    backend, device, torch = _backend_and_device(parser, args, resumed)
    needs_torch = torch is not None
    if needs_torch:
        from torch_transformer.bridge import copy_torch_to_numpy, twin_of
        from torch_transformer.training import TorchTrainer, generator_states, restore_generators
    limit_threads(args.threads)

    if resumed is not None:
        cfg = config_from_json(TrainConfig, resumed.meta["train_config"], "train_config")
        steps = cfg.steps
    else:
        defaults = TrainConfig()
        common = dict(task=args.task or defaults.task, model=args.model or defaults.model,
                      batch_size=args.batch_size or defaults.batch_size, seed=args.seed or 0,
                      dropout=defaults.dropout if args.dropout is None else args.dropout)  # fmt: skip
        cfg = TrainConfig(**common)
        steps = args.epochs * cfg.steps_per_epoch() if args.epochs else (args.steps or defaults.steps)
        cfg = TrainConfig(**common, steps=steps)
    label = "compare" if args.compare else backend
    name = cfg.task if cfg.model == "transformer" else f"{cfg.task}-{cfg.model}"
    out = args.out or Path("runs") / f"{name}-{label}"
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(cfg.seed)  # draws the initial weights, then every dropout mask
    model = cfg.build_model(np.dtype(args.dtype), rng)
    dataset = ToyDataset(cfg.task_spec(), cfg.n_train, cfg.n_val, cfg.seed)
    trainers = []
    if backend == "numpy" or args.compare:
        trainers.append(NumpyTrainer(model, cfg, rng))
    resume_from = None
    if resumed is not None:
        path = args.resume / "checkpoint.npz"
        state = resumed.meta["train_state"]
        if backend == "numpy":
            load_checkpoint(path, model, trainers[0].optimizer)
            restore_generator(rng, state["generators"]["dropout"])
        else:
            numpy_adam = Adam(model, lr=0.0, betas=cfg.betas, eps=cfg.eps)
            load_checkpoint(path, model, numpy_adam)
        losses = {backend: resumed.state_arrays[f"losses.{backend}"].tolist()}
        history = History(asdict(cfg), losses, state["evals"], state["seconds"], state["steps_done"])
        resume_from = (history, state["position"])
    if needs_torch:
        torch.manual_seed(cfg.seed)  # the torch backend's own dropout masks
        twin = twin_of(model, device=device)  # the same initial (or resumed) weights
        trainers.append(TorchTrainer(twin, cfg, device=device))
        if resumed is not None:
            trainers[-1].load_numpy_optimizer_state(numpy_adam.state_dict())
            try:
                restore_generators(resumed.state_arrays, device)
            except ValueError as exc:
                parser.error(f"--resume: {path}: {exc}")

    n_params = sum(p.size for p in model.parameters())
    print(
        f"task {cfg.task}: {cfg.n_train} training / {cfg.n_val} validation sequences, lengths "
        f"{cfg.min_len}-{cfg.max_len}, {cfg.n_symbols} symbols"
    )
    if cfg.model == "transformer":
        print(
            f"model: d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_layers}+{cfg.n_layers} layers, "
            f"d_ff {cfg.d_ff}, {'pre' if cfg.norm_first else 'post'}-LN, dropout {cfg.dropout}, {n_params} parameters, "
            f"{args.dtype}"
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
    if resume_from is not None:
        print(f"resuming after step {resume_from[0].steps_done} from {args.resume / 'checkpoint.npz'}")
    done = 0 if resume_from is None else resume_from[0].steps_done
    bar = _progress_bar(args, steps, done)
    say = bar.write if bar is not None else print
    saver = _Saver(out, say)

    def on_step(step: int, results) -> None:
        if bar is not None:
            bar.set_postfix({t.backend: f"{r.loss:.4f}" for t, r in zip(trainers, results, strict=True)})
            bar.update(1)
        if args.log_every and step % args.log_every == 0:
            losses = "  ".join(f"{t.backend} {r.loss:.6f}" for t, r in zip(trainers, results, strict=True))
            say(f"step {step}/{steps}  loss {losses}")
            sys.stdout.flush()

    def on_eval(row: dict) -> None:
        say(
            f"epoch {row['epoch']:>3} step {row['step']:>6} [{row['backend']}]  train loss {row['train_loss']:.4f}"
            f" | val loss {row['val_loss']:.4f}  token acc {row['val_token_accuracy']:.4f}"
            f"  sequence acc {row['val_sequence_accuracy']:.4f}"
        )

    torch_only = backend == "torch" and not args.compare

    def write(history: History, position: dict) -> None:
        if torch_only:  # the file holds the NumPy model and a NumPy Adam: one format for both backends
            copy_torch_to_numpy(trainers[0].model, model)
            optimizer = Adam(model, lr=0.0, betas=cfg.betas, eps=cfg.eps)
            optimizer.load_state_dict(trainers[0].numpy_optimizer_state(model))
        else:
            optimizer = trainers[0].optimizer
        arrays = {f"losses.{b}": np.asarray(v, dtype=np.float64) for b, v in history.losses.items()}
        extra = {}
        if not args.compare:
            generators = {"dropout": generator_state(rng)} if backend == "numpy" else {}
            extra["train_state"] = _train_state(cfg.task, backend, device, history.steps_done, history.seconds,
                                                history.evals, generators=generators, position=position)  # fmt: skip
            if torch_only:
                arrays.update(generator_states(device))
        save_checkpoint(out / "checkpoint.npz", model, optimizer, arrays, train_config=history.config, steps=steps,
                        **extra)  # fmt: skip
        atomic_write_text(out / "history.json", json.dumps(history.to_json(), indent=1, default=float))

    with StopOnSignal() as stop:
        try:
            history = fit(trainers, dataset, cfg, steps, on_step=on_step, on_eval=on_eval, resume_from=resume_from,
                          save_every=args.save_every, on_save=lambda h, p: saver(h.steps_done, lambda: write(h, p)),
                          should_stop=stop.stop)  # fmt: skip
        except NonFiniteError as exc:
            if bar is not None:
                bar.close()
            return _report_divergence(exc, saver)
        finally:
            if bar is not None:
                bar.close()
        if history.stopped:
            return _stopped(stop, saver, history.steps_done, steps, resumable=not args.compare)
    if saver.error is not None:
        return saver.lost()

    from ..applications.plots import plot_loss_curves

    png = out / "loss_curves.png"
    try:
        plot_loss_curves(history, png, title=f"{cfg.task}: {label}, {args.dtype}")
    except OSError as exc:
        print(f"warning: could not write {png}: {exc}", file=sys.stderr)
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
    print(f"wrote {out / 'checkpoint.npz'}, {out / 'history.json'}, {png}")
    return 0


def _progress_bar(args: argparse.Namespace, steps: int, done: int):
    """A tqdm bar on stderr (None with --no-progress or without tqdm)."""
    if args.no_progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=steps, initial=done, unit="step", dynamic_ncols=True, file=sys.stderr)


def _train_until_done(train, write, saver: _Saver, bar, steps: int):
    """Run ``train(on_save, should_stop)`` of a NumPy-only task under :class:`StopOnSignal`.

    Returns ``(run, None)`` when it made all its ``steps`` and the last checkpoint was written, else
    ``(None, exit status)``: after a divergence (1), a signal (130 / 143, the checkpoint written) or a
    failed final write (1).
    """
    with StopOnSignal() as stop:
        try:
            run = train(lambda r: saver(r.steps_done, lambda: write(r)), stop.stop)
        except NonFiniteError as exc:
            return None, _report_divergence(exc, saver)
        finally:
            if bar is not None:
                bar.close()
        if run.stopped:
            return None, _stopped(stop, saver, run.steps_done, steps, resumable=True)
    if saver.error is not None:
        return None, saver.lost()
    return run, None


def _numpy_step_logger(args: argparse.Namespace, bar, say, steps: int):
    """``on_step(step, loss)`` of a NumPy-only run: the progress bar, and the loss every ``--log-every`` steps."""

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)
        if args.log_every and step % args.log_every == 0:
            say(f"step {step}/{steps}  loss numpy {loss:.6f}")
            sys.stdout.flush()

    return on_step


def _report_divergence(exc: NonFiniteError, saver: _Saver) -> int:
    """A non-finite loss or gradient stopped training: say where, and which checkpoint is the last good one."""
    print(f"error: training diverged: {exc}", file=sys.stderr)
    if saver.saved_step is None:
        kept = "no checkpoint was written before it (the NaN/inf weights are not saved)"
    else:
        kept = (
            f"the last good checkpoint, {saver.out / 'checkpoint.npz'}, is of step {saver.saved_step} "
            "(the NaN/inf weights are not saved)"
        )
    print(f"the run diverged at step {exc.step}; {kept}", file=sys.stderr)
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


def _train_charlm(parser: argparse.ArgumentParser, args: argparse.Namespace, resumed: Checkpoint | None) -> int:
    """``train --task charlm``: train, print the validation loss as it falls, print samples, save the run.

    ``--model gpt`` (the default) or ``llama``; every other setting (data, steps, schedule) is the same for both.
    """
    if args.model is not None and args.model not in CHARLM_MODELS:
        parser.error(f"--model {args.model}: --task charlm trains one of {', '.join(CHARLM_MODELS)}")
    if args.model == "llama" and args.dropout:
        parser.error(f"--dropout {args.dropout}: the Llama has no dropout (RMSNorm, RoPE attention and SwiGLU "
                     "without any); leave --dropout out, or train --model gpt")  # fmt: skip
    backend, device, torch = _backend_and_device(parser, args, resumed)
    needs_torch = torch is not None
    if needs_torch:
        from torch_transformer.bridge import copy_torch_to_numpy, twin_of
        from torch_transformer.charlm import TorchCharLMTrainer
        from torch_transformer.training import generator_states, restore_generators

        limit_threads(args.threads)  # again, now that torch is loaded
    try:
        check_sampling_args(args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        parser.error(f"sampling options (--temperature, --top-k, --top-p): {exc}")
    if resumed is not None:
        cfg = config_from_json(CharLMConfig, resumed.meta["train_config"], "train_config")
    else:
        defaults = CharLMConfig()
        batch_size = args.batch_size or defaults.batch_size
        dropout = defaults.dropout if args.dropout is None else args.dropout
        common = dict(batch_size=batch_size, seed=args.seed or 0, dropout=dropout, model=args.model or defaults.model)
        cfg = CharLMConfig(**common, steps=args.steps or defaults.steps)
        if args.epochs:
            per_epoch = math.ceil(0.9 * cfg.corpus_chars / (cfg.batch_size * cfg.block_size))
            cfg = CharLMConfig(**common, steps=args.epochs * per_epoch)
    label = "compare" if args.compare else backend
    name = "charlm" if cfg.model == "gpt" else f"charlm-{cfg.model}"
    out = args.out or Path("runs") / f"{name}-{label}"
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(args.dtype)
    data_preview = CharData(cfg)
    path = None if args.resume is None else args.resume / "checkpoint.npz"
    if resumed is not None:  # before the model is built: the file's config bounds what it may allocate
        try:
            implied = cfg.model_config(data_preview.vocab.size)
        except ValueError as exc:
            parser.error(f"--resume: {path}: meta.train_config: {exc}")
        if implied != resumed.config:
            parser.error(f"--resume: {path}: meta.train_config implies the model {implied}, but meta.config is "
                         f"{resumed.config}")  # fmt: skip
    run = start_charlm(cfg, dtype)
    n_params = sum(p.size for p in run.model.parameters())
    print(
        f"corpus: {cfg.corpus_chars} generated characters ({data_preview.train.size} train / "
        f"{data_preview.val.size} validation), {data_preview.vocab.size} distinct; unigram entropy "
        f"{unigram_entropy(data_preview.train, data_preview.vocab.size):.3f} nats/char"
    )
    if cfg.model == "llama":
        model_text = (
            f"Llama, d_model {cfg.d_model}, {cfg.n_heads} query / {cfg.llama_n_kv_heads} key-value heads, "
            f"{cfg.n_layers} layers, SwiGLU d_ff {cfg.llama_d_ff}, RoPE theta {cfg.llama_rope_theta:g}, RMSNorm, "
            f"tied head, context {cfg.block_size}"
        )
    else:
        model_text = (
            f"GPT, d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_layers} layers, d_ff {cfg.d_ff}, "
            f"context {cfg.block_size}, dropout {cfg.dropout}"
        )
    print(f"model: {model_text}, {n_params} parameters, {args.dtype}")
    if resumed is not None:
        if resumed.meta.get("vocab") != run.vocab.chars:
            parser.error(f"--resume: {path}: meta.vocab is not the vocabulary of the corpus its train_config makes")
        load_checkpoint(path, run.model, run.optimizer)  # the torch backend's state too, in the NumPy format
    if needs_torch:
        torch.manual_seed(cfg.seed)  # the torch backend's own dropout masks
        twin = twin_of(run.model, device=device)  # the same initial (or resumed) weights
        torch_trainer = TorchCharLMTrainer(twin, cfg.weight_decay, cfg.clip_norm, device)
        run.trainers = [*run.trainers, torch_trainer] if args.compare else [torch_trainer]
    if resumed is not None:
        state = resumed.meta["train_state"]
        restore_generator(run.batch_rng, state["generators"]["windows"])
        if backend == "numpy":
            restore_generator(run.rng, state["generators"]["dropout"])
        else:
            torch_trainer.load_numpy_optimizer_state(run.optimizer.state_dict())
            try:
                restore_generators(resumed.state_arrays, device)
            except ValueError as exc:
                parser.error(f"--resume: {path}: {exc}")
        run.losses = {backend: resumed.state_arrays[f"losses.{backend}"].tolist()}
        run.evals, run.seconds, run.steps_done = state["evals"], state["seconds"], state["steps_done"]
    print(
        f"training: {' and '.join(t.backend for t in run.trainers)}, {cfg.steps} steps of {cfg.batch_size} x "
        f"{cfg.block_size} characters, AdamW, peak lr {cfg.peak_lr}, warm-up {cfg.warmup_steps}, clip "
        f"{cfg.clip_norm}, {args.threads} thread(s)"
    )
    if resumed is not None:
        print(f"resuming after step {run.steps_done} from {path}")
    bar = _progress_bar(args, cfg.steps, run.steps_done)
    say = bar.write if bar is not None else print
    saver = _Saver(out, say)
    torch_only = backend == "torch" and not args.compare

    def on_step(step: int, losses: dict[str, float]) -> None:
        if bar is not None:
            bar.set_postfix({b: f"{v:.4f}" for b, v in losses.items()})
            bar.update(1)
        if args.log_every and step % args.log_every == 0:
            say(f"step {step}/{cfg.steps}  loss " + "  ".join(f"{b} {v:.6f}" for b, v in losses.items()))
            sys.stdout.flush()

    def on_eval(row: dict) -> None:
        train = "" if math.isnan(row["train_loss"]) else f"train loss {row['train_loss']:.4f} | "
        who = f" [{row['backend']}]" if args.compare else ""
        say(f"step {row['step']:>5}{who}  {train}val loss {row['val_loss']:.4f}")
        sys.stdout.flush()

    def sync() -> None:
        """The torch backend trains the twin: copy its weights and AdamW into the NumPy model and AdamW."""
        if torch_only:
            copy_torch_to_numpy(twin, run.model)
            run.optimizer.load_state_dict(torch_trainer.numpy_optimizer_state(run.optimizer.state_dict()))

    def write(run: CharLMRun, samples: list[str] | None = None) -> None:
        sync()
        arrays = {f"losses.{b}": np.asarray(v, dtype=np.float64) for b, v in run.losses.items()}
        extra = {}
        if not args.compare:
            generators = {"windows": generator_state(run.batch_rng)}
            if backend == "numpy":
                generators["dropout"] = generator_state(run.rng)
            else:
                arrays.update(generator_states(device))
            extra["train_state"] = _train_state("charlm", backend, device, run.steps_done, run.seconds, run.evals,
                                                generators=generators)  # fmt: skip
        save_checkpoint(out / "checkpoint.npz", run.model, run.optimizer, arrays, train_config=asdict(cfg),
                        vocab=run.vocab.chars, steps=cfg.steps, **extra)  # fmt: skip
        history = {"config": asdict(cfg), "losses": run.losses, "evals": run.evals, "seconds": run.seconds}
        if samples is not None:
            history["samples"] = samples
        atomic_write_text(out / "history.json", json.dumps(history, indent=1, default=float))

    def on_save(r: CharLMRun) -> None:
        if r.steps_done < cfg.steps:  # the final file is written after the samples, with them
            saver(r.steps_done, lambda: write(r))

    with StopOnSignal() as stop:
        try:
            run = train_charlm(cfg, dtype, on_eval=on_eval, on_step=on_step, run=run, save_every=args.save_every,
                               on_save=on_save, should_stop=stop.stop)  # fmt: skip
        except NonFiniteError as exc:
            return _report_divergence(exc, saver)
        finally:
            if bar is not None:
                bar.close()
        if run.stopped:
            return _stopped(stop, saver, run.steps_done, cfg.steps, resumable=not args.compare)
    sync()  # the samples come from the NumPy model, holding the twin's weights for the torch backend
    for trainer in run.trainers:
        rows = [e for e in run.evals if e["backend"] == trainer.backend]
        print(
            f"\n[{trainer.backend}] trained {cfg.steps} steps in {run.seconds:.1f} s: validation loss "
            f"{rows[0]['val_loss']:.3f} -> {rows[-1]['val_loss']:.3f} nats/char (unigram entropy "
            f"{run.unigram_entropy:.3f})"
        )
    diff = History(asdict(cfg), run.losses).max_loss_difference()
    if diff is not None:
        print(f"largest per-step loss difference numpy vs torch: {diff[0]:.3e} (relative, at step {diff[1]})")
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
    saver(run.steps_done, lambda: write(run, samples))  # the final file, with the samples in history.json
    if saver.error is not None:
        return saver.lost()
    from ..applications.plots import plot_loss_curves

    history = History(asdict(cfg), run.losses, run.evals)
    png = out / "loss_curves.png"
    try:
        title = f"charlm ({cfg.model}): {label}, {args.dtype}"
        plot_loss_curves(history, png, title=title, loss_label="training loss (nats/char)")
    except OSError as exc:
        print(f"warning: could not write {png}: {exc}", file=sys.stderr)
    print(f"wrote {out / 'checkpoint.npz'}, {out / 'history.json'}, {png}")
    return 0


def _train_digits(parser: argparse.ArgumentParser, args: argparse.Namespace, resumed: Checkpoint | None) -> int:
    """``train --task digits``: a ViT (or the CNN) on the 8x8 digits; accuracy, loss curves, a confusion matrix."""
    from ..applications.datasets import digits_dataset

    if (args.backend or "numpy") != "numpy" or args.compare or (args.device or "cpu") != "cpu":
        parser.error("--task digits trains in NumPy only (no --backend torch, --compare or --device)")
    if args.model is not None and args.model not in DIGIT_MODELS:
        parser.error(f"--model {args.model}: --task digits trains one of {', '.join(DIGIT_MODELS)}")
    require_module(parser, "sklearn", "the digits come from scikit-learn: pip install 'numpy-transformer[vision]'")
    if resumed is not None:
        cfg = config_from_json(DigitsConfig, resumed.meta["train_config"], "train_config")
    else:
        defaults = DigitsConfig()
        options = dict(model=args.model or defaults.model, seed=args.seed or 0,
                       batch_size=args.batch_size or defaults.batch_size)  # fmt: skip
        if args.dropout is not None:
            options["dropout"] = args.dropout
        cfg = DigitsConfig(**options, steps=args.steps or defaults.steps)
        if args.epochs:
            cfg = DigitsConfig(**options, steps=math.ceil(args.epochs * 1438 / cfg.batch_size))
    out = args.out or Path("runs") / f"digits-{cfg.model}"
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(args.dtype)
    data = digits_dataset(cfg.seed, dtype=dtype)
    run = start_digits(cfg, dtype)
    n_params = sum(p.size for p in run.model.parameters())
    print(
        f"data: scikit-learn's digits, 8x8 grey images, {len(data.y_train)} training / {len(data.y_test)} test "
        f"(stratified, seed {cfg.seed}); training images shifted by up to {cfg.shift} pixel(s)"
    )
    mc = cfg.model_config()
    if cfg.model == "vit":
        model_text = (
            f"ViT, {mc.num_patches} patches of {mc.patch_size}x{mc.patch_size} + a class token, d_model "
            f"{mc.d_model}, {mc.n_heads} heads, {mc.n_layers} layers, d_ff {mc.d_ff}, dropout {mc.dropout}"
        )
    else:
        model_text = (
            f"CNN, {len(mc.channels)} stages of conv {mc.kernel_size}x{mc.kernel_size} + ReLU + max-pool 2x2, channels "
            f"{'/'.join(map(str, mc.channels))}"
        )
    print(f"model: {model_text}, {n_params} parameters, {args.dtype}")
    print(
        f"training: {cfg.steps} steps of batch {cfg.batch_size} ({cfg.steps * cfg.batch_size / len(data.y_train):.0f} "
        f"epochs), AdamW, peak lr {cfg.peak_lr}, warm-up {cfg.warmup_steps}, label smoothing {cfg.label_smoothing}, "
        f"{args.threads} thread(s)"
    )  # fmt: skip
    path = None if args.resume is None else args.resume / "checkpoint.npz"
    if resumed is not None:
        load_checkpoint(path, run.model, run.optimizer)
        state = resumed.meta["train_state"]
        restore_generator(run.rng, state["generators"]["dropout"])
        restore_generator(run.batch_rng, state["generators"]["batches"])
        run.losses = {"numpy": resumed.state_arrays["losses.numpy"].tolist()}
        run.evals, run.seconds, run.steps_done = state["evals"], state["seconds"], state["steps_done"]
        print(f"resuming after step {run.steps_done} from {path}")
    bar = _progress_bar(args, cfg.steps, run.steps_done)
    say = bar.write if bar is not None else print
    saver = _Saver(out, say)

    on_step = _numpy_step_logger(args, bar, say, cfg.steps)

    def on_eval(row: dict) -> None:
        say(f"step {row['step']:>5}  train loss {row['train_loss']:.4f} | test loss {row['test_loss']:.4f}  "
            f"test accuracy {row['test_accuracy']:.4f}  ({row['seconds']:.1f} s)")  # fmt: skip
        sys.stdout.flush()

    def write(run: DigitsRun) -> None:
        generators = {"dropout": generator_state(run.rng), "batches": generator_state(run.batch_rng)}
        state = _train_state("digits", "numpy", "cpu", run.steps_done, run.seconds, run.evals, generators=generators)
        save_checkpoint(out / "checkpoint.npz", run.model, run.optimizer,
                        {"losses.numpy": np.asarray(run.losses["numpy"], dtype=np.float64)},
                        train_config=asdict(cfg), steps=cfg.steps, train_state=state)  # fmt: skip
        history = {"config": asdict(cfg), "losses": run.losses, "evals": run.evals, "seconds": run.seconds}
        atomic_write_text(out / "history.json", json.dumps(history, indent=1, default=float))

    def train(on_save, should_stop) -> DigitsRun:
        return train_digits(cfg, dtype, on_step=on_step, on_eval=on_eval, run=run, data=data,
                            save_every=args.save_every, on_save=on_save, should_stop=should_stop)  # fmt: skip

    run, code = _train_until_done(train, write, saver, bar, cfg.steps)
    if code is not None:
        return code
    predicted = predict(run.model, data.x_test).argmax(1)
    matrix = confusion_matrix(data.y_test, predicted)
    accuracy = float(np.mean(predicted == data.y_test))
    print(f"\ntrained {cfg.steps} steps in {run.seconds:.1f} s: test accuracy {accuracy:.4f} "
          f"({int(np.sum(predicted == data.y_test))} of {len(data.y_test)})")  # fmt: skip
    per_class = np.diag(matrix) / matrix.sum(1)
    print("per digit: " + "  ".join(f"{k}: {a:.2f}" for k, a in enumerate(per_class)))
    from ..applications.plots import plot_confusion_matrix, plot_loss_curves

    rows = [{**e, "val_loss": e["test_loss"]} for e in run.evals]
    pngs = [out / "loss_curves.png", out / "confusion_matrix.png"]
    try:
        plot_loss_curves(History(asdict(cfg), run.losses, rows), pngs[0], title=f"digits: {cfg.model}, {args.dtype}",
                         held_out="test")  # fmt: skip
        plot_confusion_matrix(matrix, pngs[1], title=f"digits, {cfg.model}: test accuracy {accuracy:.4f}")
    except OSError as exc:
        print(f"warning: could not write a figure: {exc}", file=sys.stderr)
    print(f"wrote {out / 'checkpoint.npz'}, {out / 'history.json'}, {pngs[0]}, {pngs[1]}")
    return 0


def _train_captions(parser: argparse.ArgumentParser, args: argparse.Namespace, resumed: Checkpoint | None) -> int:
    """``train --task digit-captions``: CLIP on the digits and their captions; zero-shot accuracy, recall, pictures."""
    from ..applications.datasets import digits_dataset
    from ..applications.digit_captions import (
        ZERO_SHOT_TEMPLATE,
        CaptionsRun,
        caption,
        plot_nearest_captions,
        plot_similarity,
        plot_temperature,
        save_tokenizer,
        start_captions,
        tokenizer_from_json,
        train_captions,
    )

    if (args.backend or "numpy") != "numpy" or args.compare or (args.device or "cpu") != "cpu":
        parser.error("--task digit-captions trains in NumPy only (no --backend torch, --compare or --device)")
    if args.model is not None and args.model not in CAPTION_MODELS:
        parser.error(f"--model {args.model}: --task digit-captions trains one of {', '.join(CAPTION_MODELS)}")
    if args.dropout:
        parser.error(f"--dropout {args.dropout}: CLIP trains without dropout (--task digit-captions)")
    require_module(parser, "sklearn", "the digits come from scikit-learn: pip install 'numpy-transformer[vision]'")
    require_module(parser, "tokenizers", "the captions' tokenizer is trained with tokenizers: pip install tokenizers")
    tokenizer = None
    if resumed is not None:
        cfg = config_from_json(CaptionsConfig, resumed.meta["train_config"], "train_config")
        try:
            tokenizer = tokenizer_from_json(resumed.meta.get("tokenizer"), f"--resume: {args.resume}: meta.tokenizer")
        except (ValueError, TypeError) as exc:
            parser.error(str(exc))
    else:
        defaults = CaptionsConfig()
        options = dict(seed=args.seed or 0, batch_size=args.batch_size or defaults.batch_size)
        cfg = CaptionsConfig(**options, steps=args.steps or defaults.steps)
        if args.epochs:
            cfg = CaptionsConfig(**options, steps=math.ceil(args.epochs * 1438 / cfg.batch_size))
    out = args.out or Path("runs") / "digit-captions-clip"
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(args.dtype)
    data = digits_dataset(cfg.seed, dtype=dtype)
    run = start_captions(cfg, dtype, tokenizer)
    mc = run.model.config
    n_params = sum(p.size for p in run.model.parameters())
    print(f"data: scikit-learn's digits, {len(data.y_train)} training / {len(data.y_test)} test images (stratified, "
          f"seed {cfg.seed}), each drawn with a caption in one of {run.caption_ids.shape[1]} phrasings "
          f"(e.g. {caption('a {n} written by hand', 7)!r}); held out: the test images and "
          f"{ZERO_SHOT_TEMPLATE.format(n='k')!r}")  # fmt: skip
    print(f"tokenizer: byte-pair encoding trained on the captions, {run.tokenizer.get_vocab_size()} tokens "
          f"(<|endoftext|> = {run.tokenizer.get_vocab_size() - 1}, the largest id)")  # fmt: skip
    side = f"{mc.vision.patch_size}x{mc.vision.patch_size}"
    print(f"model: CLIP, image encoder {mc.vision.num_patches} patches of {side} "
          f"+ a class token, d_model {mc.vision.d_model}, {mc.vision.n_layers} layers; text encoder d_model "
          f"{mc.text.d_model}, {mc.text.n_layers} layers, {mc.text.max_len} positions; projection {mc.projection_dim}; "
          f"{n_params} parameters, {args.dtype}")  # fmt: skip
    clamp = "clamped to [0, ln 100] after each step" if cfg.clamp_logit_scale else "not clamped"
    print(f"training: {cfg.steps} steps of {cfg.batch_size} pairs, AdamW, peak lr {cfg.peak_lr}, warm-up "
          f"{cfg.warmup_steps}, logit_scale {clamp}, {args.threads} thread(s)")  # fmt: skip
    path = None if args.resume is None else args.resume / "checkpoint.npz"
    if resumed is not None:
        load_checkpoint(path, run.model, run.optimizer)
        state = resumed.meta["train_state"]
        restore_generator(run.batch_rng, state["generators"]["batches"])
        run.losses = {"numpy": resumed.state_arrays["losses.numpy"].tolist()}
        scales = resumed.state_arrays.get("logit_scales")
        if scales is None or scales.shape != (state["steps_done"],):
            got = None if scales is None else scales.shape
            parser.error(f"--resume: {path}: state/logit_scales: expected ({state['steps_done']},), got {got}")
        run.logit_scales = scales.tolist()
        run.evals, run.seconds, run.steps_done = state["evals"], state["seconds"], state["steps_done"]
        print(f"resuming after step {run.steps_done} from {path}")
    bar = _progress_bar(args, cfg.steps, run.steps_done)
    say = bar.write if bar is not None else print
    saver = _Saver(out, say)

    on_step = _numpy_step_logger(args, bar, say, cfg.steps)

    def on_eval(row: dict) -> None:
        say(f"step {row['step']:>5}  train loss {row['train_loss']:.4f} | test loss {row['test_loss']:.4f}  zero-shot "
            f"{row['zero_shot_accuracy']:.4f}  R@1 image->text {row['image_to_text_r1']:.3f} text->image "
            f"{row['text_to_image_r1']:.3f}  exp(logit_scale) {row['temperature']:.1f}  "
            f"({row['seconds']:.1f} s)")  # fmt: skip
        sys.stdout.flush()

    def write(run: CaptionsRun) -> None:
        generators = {"batches": generator_state(run.batch_rng)}
        state = _train_state("digit-captions", "numpy", "cpu", run.steps_done, run.seconds, run.evals,
                             generators=generators)  # fmt: skip
        arrays = {"losses.numpy": np.asarray(run.losses["numpy"], dtype=np.float64),
                  "logit_scales": np.asarray(run.logit_scales, dtype=np.float64)}  # fmt: skip
        save_checkpoint(out / "checkpoint.npz", run.model, run.optimizer, arrays, train_config=asdict(cfg),
                        steps=cfg.steps, train_state=state, tokenizer=run.tokenizer.to_str())  # fmt: skip
        save_tokenizer(run.tokenizer, out / "tokenizer.json")
        history = {"config": asdict(cfg), "losses": run.losses, "logit_scales": run.logit_scales, "evals": run.evals,
                   "seconds": run.seconds}  # fmt: skip
        atomic_write_text(out / "history.json", json.dumps(history, indent=1, default=float))

    def train(on_save, should_stop) -> CaptionsRun:
        return train_captions(cfg, data, dtype, on_step=on_step, on_eval=on_eval, run=run,
                              save_every=args.save_every, on_save=on_save, should_stop=should_stop)  # fmt: skip

    run, code = _train_until_done(train, write, saver, bar, cfg.steps)
    if code is not None:
        return code
    last = run.evals[-1]
    print(f"\ntrained {cfg.steps} steps in {run.seconds:.1f} s: zero-shot accuracy {last['zero_shot_accuracy']:.4f} "
          f"on the {len(data.y_test)} test images with {ZERO_SHOT_TEMPLATE.format(n='k')!r}")  # fmt: skip
    print(f"retrieval over the test pairs: image->text R@1 {last['image_to_text_r1']:.3f} R@5 "
          f"{last['image_to_text_r5']:.3f} | text->image R@1 {last['text_to_image_r1']:.3f} R@5 "
          f"{last['text_to_image_r5']:.3f}; exp(logit_scale) {last['temperature']:.2f}")  # fmt: skip
    from ..applications.plots import plot_loss_curves

    run.model.eval()
    rows = [{**e, "val_loss": e["test_loss"]} for e in run.evals]
    pngs = [out / name for name in ("loss_curves.png", "similarity.png", "temperature.png", "nearest_captions.png")]
    try:
        plot_loss_curves(History(asdict(cfg), run.losses, rows), pngs[0], title=f"digit captions: CLIP, {args.dtype}",
                         loss_label="contrastive loss", held_out="test")  # fmt: skip
        plot_similarity(run.model, run.tokenizer, data, pngs[1])
        plot_temperature(run.logit_scales, pngs[2], cfg.clamp_logit_scale)
        plot_nearest_captions(run.model, run.tokenizer, data, pngs[3])
    except OSError as exc:
        print(f"warning: could not write a figure: {exc}", file=sys.stderr)
    print(
        f"wrote {out / 'checkpoint.npz'}, {out / 'tokenizer.json'}, {out / 'history.json'}, "
        + ", ".join(map(str, pngs))
    )
    print(f"classify a test image with: python -m numpy_transformer zero-shot {out} --index 0")
    return 0


def _detect_config():
    from ..applications.detection import DetectConfig

    return DetectConfig


def _prepare_detect_backbone(cfg, run) -> int | None:
    """A fresh detect run's backbone preparation (``--backbone-steps``): None when done, else the exit status.

    A signal during it stops it without a checkpoint (no DETR step was made): run the command again.
    """
    from ..applications import detection

    if not (cfg.calibrate_norms or cfg.backbone_steps):
        return None
    n = cfg.backbone_steps
    print(f"backbone: frozen batch norms measured on 64 training canvases; {n} pre-training steps of batch "
          f"{cfg.backbone_batch_size} on single training digits, then DETR with the backbone at lr x "
          f"{cfg.backbone_lr_scale}")  # fmt: skip

    def on_step(step: int, row: dict) -> None:
        if step % max(1, n // 10) == 0:
            print(f"  backbone step {step}/{n}  loss {row['loss']:.4f}  batch accuracy {row['accuracy']:.3f}")
            sys.stdout.flush()

    with StopOnSignal() as stop:
        done = detection.prepare_backbone(run, cfg, on_step, stop.stop)
    if not done:
        print(f"\nstopped by {stop.name} during the backbone's pre-training (step {len(run.pretrain)} of {n}); "
              "nothing was written: run the command again")  # fmt: skip
        return stop.exit_code
    if n:
        print(f"backbone: {run.pretrain_accuracy:.3f} accuracy on held-out digits ({run.pretrain_seconds:.0f} s)")
    return None


def _restore_detect_backbone(parser, path: Path, cfg, run, state: dict, arrays: dict) -> None:
    """A resumed detect run's record of its backbone's pre-training (its weights came with the model's)."""
    terms = arrays.get("backbone_terms", np.zeros((0, 2)))  # absent: written before --backbone-steps existed
    backbone = state.get("backbone", {"held_out_accuracy": None, "seconds": 0.0})
    if terms.shape != (cfg.backbone_steps, 2) or not isinstance(backbone, dict):
        parser.error(f"--resume: {path}: state/backbone_terms: expected ({cfg.backbone_steps}, 2) (one row per "
                     f"pre-training step), got {terms.shape}")  # fmt: skip
    run.pretrain = [{"step": i + 1, "loss": float(a), "accuracy": float(b)} for i, (a, b) in enumerate(terms)]
    run.pretrain_accuracy, run.pretrain_seconds = backbone.get("held_out_accuracy"), backbone.get("seconds", 0.0)


def _train_detect(parser: argparse.ArgumentParser, args: argparse.Namespace, resumed: Checkpoint | None) -> int:
    """``train --task detect``: DETR on digit canvases (``--backbone-steps``: its backbone pre-trained first)."""
    from ..applications import detection

    if args.model not in (None, "detr"):
        parser.error(f"--model {args.model}: --task detect trains detr")
    refused = [f"--{n}" for n in ("backend", "epochs", "dropout", "device") if getattr(args, n, None)]
    refused += ["--compare"] * bool(args.compare)
    if refused:
        parser.error(f"--task detect trains DETR in NumPy: {', '.join(refused)} does not apply")
    for module, what in (("sklearn", "scikit-learn"), ("pycocotools", "pycocotools")):
        require_module(parser, module, f"--task detect needs {what}: pip install 'numpy-transformer[detection]'")
    if resumed is not None:
        cfg = config_from_json(detection.DetectConfig, resumed.meta["train_config"], "train_config")
    else:
        defaults = detection.DetectConfig()
        changes = {k: getattr(args, k) for k in ("steps", "batch_size", "seed") if getattr(args, k) is not None}
        cfg = replace(defaults, **changes)
        cfg = replace(cfg, eval_every=min(cfg.eval_every, cfg.steps))
        cfg = detection.with_pretrained_backbone(cfg, args.backbone_steps or 0)
    out = args.out or Path("runs") / "detect-detr"
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(args.dtype)
    train_data, test_data = detection.detection_dataset(cfg.seed, cfg.n_train, cfg.n_test, dtype=dtype)
    side = train_data.images.shape[-1]
    print(f"data: {len(train_data)} training / {len(test_data)} test canvases of {side} x {side} pixels, 1 to 4 "
          f"digits each (the test canvases' digits are never in a training canvas)")  # fmt: skip
    run = detection.start(cfg, dtype)
    mc = cfg.model
    n_params = sum(p.size for p in run.model.parameters())
    print(f"model: DETR, backbone stages {'/'.join(map(str, mc.hidden_sizes))}, {mc.num_queries} object queries, "
          f"{n_params} parameters, {args.dtype}; {cfg.steps} steps of batch {cfg.batch_size}, AdamW, peak lr "
          f"{cfg.lr}, {args.threads} thread(s)")  # fmt: skip
    path = None if args.resume is None else args.resume / "checkpoint.npz"
    if resumed is not None:
        load_checkpoint(path, run.model, run.optimizer)
        state = resumed.meta["train_state"]
        restore_generator(run.rng, state["generators"]["batches"])
        terms = resumed.state_arrays.get("loss_terms")
        done = state["steps_done"]
        if terms is None or terms.shape != (done, len(detection.LOSS_TERMS)):
            got = None if terms is None else terms.shape
            parser.error(f"--resume: {path}: state/loss_terms: expected ({done}, {len(detection.LOSS_TERMS)}), "
                         f"got {got}")  # fmt: skip
        run.losses = [{"step": i + 1, **dict(zip(detection.LOSS_TERMS, map(float, row), strict=True))}
                      for i, row in enumerate(terms)]  # fmt: skip
        run.evals, run.seconds, run.steps_done = state["evals"], state["seconds"], done
        _restore_detect_backbone(parser, path, cfg, run, state, resumed.state_arrays)
        print(f"resuming after step {run.steps_done} from {path}")
    else:
        code = _prepare_detect_backbone(cfg, run)
        if code is not None:
            return code
    bar = _progress_bar(args, cfg.steps, run.steps_done)
    say = bar.write if bar is not None else print
    saver = _Saver(out, say)
    log_every = args.log_every

    def on_step(step: int, row: dict) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
        if log_every and step % log_every == 0:
            say(f"step {step}/{cfg.steps}  loss numpy {row['loss']:.6f}  ce {row['loss_ce']:.4f}  l1 "
                f"{row['loss_bbox']:.4f}  giou {row['loss_giou']:.4f}")  # fmt: skip
            sys.stdout.flush()

    def on_eval(row: dict) -> None:
        say(f"step {row['step']:>5}  AP {row['AP']:.3f}  AP50 {row['AP50']:.3f}  ({row['seconds']:.0f} s)")
        sys.stdout.flush()

    def write(run) -> None:
        backbone = {"held_out_accuracy": run.pretrain_accuracy, "seconds": run.pretrain_seconds}
        state = _train_state("detect", "numpy", "cpu", run.steps_done, run.seconds, run.evals,
                             generators={"batches": generator_state(run.rng)}, backbone=backbone)  # fmt: skip
        terms = np.array([[r[k] for k in detection.LOSS_TERMS] for r in run.losses], dtype=np.float64)
        arrays = {"losses.numpy": terms[:, 0].copy(), "loss_terms": terms.reshape(-1, len(detection.LOSS_TERMS))}
        arrays["backbone_terms"] = np.array([[r["loss"], r["accuracy"]] for r in run.pretrain]).reshape(-1, 2)
        save_checkpoint(out / "checkpoint.npz", run.model, run.optimizer, arrays, train_config=asdict(cfg),
                        steps=cfg.steps, train_state=state, loss_terms=list(detection.LOSS_TERMS))  # fmt: skip
        history = {"config": asdict(cfg), "losses": run.losses, "evals": run.evals, "seconds": run.seconds,
                   "backbone": {**backbone, "steps": run.pretrain}}  # fmt: skip
        atomic_write_text(out / "history.json", json.dumps(history, indent=1, default=float))

    def train(on_save, should_stop) -> detection.DetectRun:
        return detection.train(cfg, train_data, test_data, dtype, on_step, on_eval, run=run,
                               save_every=args.save_every, on_save=on_save, should_stop=should_stop)  # fmt: skip

    run, code = _train_until_done(train, write, saver, bar, cfg.steps)
    if code is not None:
        return code
    last = run.evals[-1]
    before = f" (after {run.pretrain_seconds:.1f} s preparing the backbone)" if run.pretrain_seconds else ""
    print(f"\ntrained {cfg.steps} steps in {run.seconds:.1f} s{before}: AP@[.5:.95] {last['AP']:.3f}, AP50 "
          f"{last['AP50']:.3f} on the {len(test_data)} held-out canvases (pycocotools)")  # fmt: skip
    png = out / "loss_curves.png"
    try:
        detection.plot_losses(run.losses, png, f"DETR on digit canvases ({args.dtype})")
    except OSError as exc:
        print(f"warning: could not write a figure: {exc}", file=sys.stderr)
    print(f"wrote {out / 'checkpoint.npz'}, {out / 'history.json'}, {png}")
    print(f"draw its detections with: python -m numpy_transformer detect --run {out}")
    return 0
