"""``decode``: run a checkpoint written by ``train`` on one input and save its attention heatmap.

Every kind of checkpoint ``train`` writes decodes: a seq2seq task's (the Transformer or a recurrent
model: greedy or beam search over ``--input`` symbols, the cross-attention heatmap) and
``--task charlm``'s (the GPT or the Llama continues the ``--input`` text greedily, the self-attention heatmap).
The file is read by :func:`~numpy_transformer.training.checkpoint.read_checkpoint`, which checks it
before allocating anything; every problem with it, or with its ``train_config`` and ``vocab``, is
exit status 2 with a message naming the file and the field.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..config import BertConfig, CNNConfig, GPTConfig, LlamaConfig, ViTConfig
from ..training.loop import TrainConfig
from .common import check_output_file, finite_float, positive_int, require_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    decode = sub.add_parser(
        "decode",
        help="run a trained checkpoint on one input sequence",
        description="Decode one input with a checkpoint written by `train` (greedy or beam search) and save "
        "the cross-attention heatmap. A `train --task charlm` checkpoint continues the --input text greedily "
        "and saves its self-attention heatmap.",
    )
    decode.add_argument("checkpoint", type=Path, help="checkpoint.npz written by train")
    decode.add_argument(
        "--input",
        required=True,
        help="the source symbols, e.g. '3 1 4 1 5' (each in [0, n_symbols)); for a charlm checkpoint, the text "
        "to continue, e.g. 'The '",
    )
    decode.add_argument("--beam", type=positive_int, default=1, help="beam size (1 = greedy; seq2seq only)")
    decode.add_argument("--length-penalty", type=finite_float, default=1.0, help="beam search: a finite number")
    decode.add_argument(
        "--heatmap",
        type=Path,
        help="PNG path in an existing folder, or an existing folder to write cross_attention.png (charlm: "
        "self_attention.png) in (default: next to the checkpoint)",
    )


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..training.checkpoint import CheckpointError, read_checkpoint

    require_module(
        parser, "matplotlib", "decode draws its heatmap with matplotlib: pip install 'numpy-transformer[train]'"
    )
    try:
        ckpt = read_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        parser.error(str(exc))
    if "train_config" not in ckpt.meta or ckpt.config is None or isinstance(ckpt.config, BertConfig):
        parser.error(
            f"checkpoint: {args.checkpoint} was not written by `train` (its metadata has no train_config); decode "
            "runs the checkpoints of `train` (the seq2seq tasks and --task charlm); load others with "
            "numpy_transformer.training.checkpoint.load_checkpoint"
        )
    if isinstance(ckpt.config, ViTConfig | CNNConfig):  # train --task digits: an image classifier, no decoding
        parser.error(
            f"checkpoint: {args.checkpoint} is a digits classifier ({type(ckpt.config).__name__}), which decode "
            "does not run: `train --task digits` prints its test accuracy, and `vit-attention CHECKPOINT` draws "
            "what a ViT looks at"
        )
    # The heatmap's path is checked before any model runs; a folder gets the default name inside it.
    language_model = isinstance(ckpt.config, GPTConfig | LlamaConfig)  # a charlm checkpoint: GPT or Llama
    default = "self_attention.png" if language_model else "cross_attention.png"
    heatmap = args.heatmap if args.heatmap is not None else args.checkpoint.with_name(default)
    if heatmap.is_dir():
        heatmap = heatmap / default
    args.heatmap = check_output_file(parser, "--heatmap", heatmap, ".png")
    try:
        if language_model:
            return _continue_text(parser, args, ckpt)
        return _decode_seq2seq(parser, args, ckpt)
    except CheckpointError as exc:
        parser.error(str(exc))


def _decode_seq2seq(parser: argparse.ArgumentParser, args: argparse.Namespace, ckpt) -> int:
    from ..applications.plots import plot_attention
    from ..inference.search import beam_search, greedy_decode
    from ..training.checkpoint import CheckpointError, config_from_json
    from ..training.tasks import BOS, EOS, N_SPECIAL, PAD

    where = f"checkpoint: {args.checkpoint}: meta.train_config"
    cfg = config_from_json(TrainConfig, ckpt.meta["train_config"], where)
    try:
        task = cfg.task_spec()
        implied = cfg.model_config()
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if implied != ckpt.config:
        raise CheckpointError(f"{where} implies the model {implied}, but meta.config is {ckpt.config}")
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
    heatmap = args.heatmap
    which = "last decoder layer's cross-attention" if cfg.model == "transformer" else f"{cfg.model} attention"
    plot_attention(weights, rows, cols, heatmap, title=f"{task.name}, {search}: {which}")
    print(f"wrote {heatmap}")
    return 0


def _continue_text(parser: argparse.ArgumentParser, args: argparse.Namespace, ckpt) -> int:
    """A ``train --task charlm`` checkpoint: the GPT (or Llama) continues ``--input`` greedily to the end of its
    context."""
    from ..applications.charlm import CharLMConfig, CharVocab, sample_text
    from ..applications.plots import plot_attention
    from ..training.checkpoint import CheckpointError, config_from_json

    where = f"checkpoint: {args.checkpoint}: meta"
    config: GPTConfig | LlamaConfig = ckpt.config
    cfg = config_from_json(CharLMConfig, ckpt.meta["train_config"], f"{where}.train_config")
    try:
        implied = cfg.model_config(config.vocab_size)
    except ValueError as exc:
        raise CheckpointError(f"{where}.train_config: {exc}") from None
    if implied != config:
        raise CheckpointError(f"{where}.train_config implies the model {implied}, but meta.config is {config}")
    chars = ckpt.meta.get("vocab")
    if not isinstance(chars, str) or len(chars) != config.vocab_size or len(set(chars)) != len(chars):
        got = f"{len(chars)} characters ({len(set(chars))} distinct)" if isinstance(chars, str) else repr(chars)[:40]
        raise CheckpointError(
            f"{where}.vocab: expected a string of the model's {config.vocab_size} distinct characters, got {got}"
        )
    vocab = CharVocab(chars)
    if args.beam > 1:
        parser.error(
            "--beam: a charlm checkpoint (a GPT or Llama language model) continues its --input greedily; beam search "
            "is for the seq2seq checkpoints"
        )
    prompt = args.input
    unknown = sorted(set(prompt) - set(chars))
    if not prompt or unknown or len(prompt) >= config.max_len:
        parser.error(
            f"--input: expected 1 to {config.max_len - 1} characters of the model's vocabulary {chars!r}, got "
            f"{prompt!r}" + (f" (unknown: {unknown!r})" if unknown else "")
        )
    model = cfg.build_model(config.vocab_size, np.dtype(ckpt.meta["dtype"]), np.random.default_rng(0))
    try:
        model.load_state_dict(ckpt.model_state)
    except (KeyError, TypeError, ValueError) as exc:
        parser.error(f"checkpoint: {args.checkpoint} does not fit its own config: {exc}")
    model.eval()
    text = sample_text(model, vocab, prompt, config.max_len, temperature=0.0)
    network = "Llama" if cfg.model == "llama" else "GPT"
    print(f"task:     charlm ({network}, {config.vocab_size} characters, context {config.max_len})")
    print(f"input:    {prompt!r}")
    print(f"output:   {text!r}  (greedy)")
    _, cache = model.forward(vocab.encode(text)[None, :])
    # The last layer's self-attention, averaged over its heads: one panel of up to max_len rows stays readable
    # (and quick to draw) where one per head would not.
    weights = cache.attention_weights()[0].mean(axis=0, keepdims=True)  # (1, T, T)
    labels = ["\u2423" if c == " " else c for c in text]  # an open box for each space
    heatmap = args.heatmap
    title = f"charlm, greedy: last layer's self-attention, mean over the {config.n_heads} heads"
    plot_attention(weights, labels, labels, heatmap, title=title, panel_titles=["mean over heads"])
    print(f"wrote {heatmap}")
    return 0
