"""``decode``: run a checkpoint written by ``train`` on one input and save its attention heatmap."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..training.loop import TrainConfig
from .common import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    decode = sub.add_parser(
        "decode",
        help="run a trained checkpoint on one input sequence",
        description="Decode one input with a checkpoint written by `train` (greedy or beam search) and save "
        "the cross-attention heatmap.",
    )
    decode.add_argument("checkpoint", type=Path, help="checkpoint.npz written by train")
    decode.add_argument("--input", required=True, help="the source symbols, e.g. '3 1 4 1 5' (each in [0, n_symbols))")
    decode.add_argument("--beam", type=positive_int, default=1, help="beam size (1 = greedy)")
    decode.add_argument("--length-penalty", type=float, default=1.0)
    decode.add_argument("--heatmap", type=Path, help="PNG path (default: next to the checkpoint)")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
    if args.beam > 1:
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
    which = "last decoder layer's cross-attention" if cfg.model == "transformer" else f"{cfg.model} attention"
    plot_attention(weights, rows, cols, heatmap, title=f"{task.name}, {search}: {which}")
    print(f"wrote {heatmap}")
    return 0
