"""Time one training step (forward + backward + Adam) of the NumPy model and of its twin on the CPU.

Two models: the encoder–decoder Transformer of ``BENCH_CONFIG`` (``--model transformer``,
the default) and all-MiniLM-L6-v2 fine-tuned with a classification head (``--model minilm``).

Both backends get the same configuration, dtype, batch and number of threads. Each
(backend, dtype) runs in a fresh subprocess, so that its peak memory is its own:
the figure reported is the process's peak resident set over the warm-up and timed
steps, minus its size once the model and the batch exist -- so it counts the
optimizer state (PyTorch allocates Adam's moments lazily, we allocate them up
front), the activations kept for the backward, and the gradients.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .common import positive_int

BENCH_CONFIG = dict(
    src_vocab_size=1000, tgt_vocab_size=1000, d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
    d_ff=512, dropout=0.1, max_len=64,
)  # fmt: skip
BATCH, LENGTH = 16, 32


@dataclass(frozen=True)
class BenchResult:
    backend: str
    dtype: str
    threads: int
    median_ms: float
    min_ms: float
    peak_mb: float  # peak RSS over the steps minus RSS with model and batch built


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


MODELS = ("transformer", "minilm")


def _transformer_step(backend: str, dtype: str):
    """(step, rss before the optimizer) for the encoder–decoder Transformer of ``BENCH_CONFIG``."""
    from ..config import TransformerConfig
    from ..functional.softmax import cross_entropy_backward, cross_entropy_forward

    cfg = TransformerConfig(**BENCH_CONFIG)
    rng = np.random.default_rng(0)
    src = rng.integers(1, cfg.src_vocab_size, size=(BATCH, LENGTH))
    tgt_in = rng.integers(1, cfg.tgt_vocab_size, size=(BATCH, LENGTH))
    tgt_out = rng.integers(1, cfg.tgt_vocab_size, size=(BATCH, LENGTH))

    if backend == "numpy":
        from ..models.transformer import Transformer
        from ..optim import Adam

        model = Transformer(cfg, dtype=np.dtype(dtype), rng=rng)
        before = _rss_mb()
        opt = Adam(model, lr=1e-4)

        def step() -> None:
            logits, cache = model.forward(src, tgt_in, rng=rng)
            _, loss_cache = cross_entropy_forward(logits, tgt_out, ignore_index=0)
            model.zero_grad()
            model.backward(cross_entropy_backward(1.0, loss_cache), cache)
            opt.step()

        return step, before

    import torch
    import torch.nn.functional as F

    from torch_transformer.transformer import Transformer as TwinTransformer

    model = TwinTransformer(cfg, dtype=getattr(torch, dtype))
    src_t, tgt_in_t, tgt_out_t = (torch.from_numpy(a) for a in (src, tgt_in, tgt_out))
    before = _rss_mb()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = model(src_t, tgt_in_t)
        loss = F.cross_entropy(logits.transpose(1, 2), tgt_out_t, ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, before


def _minilm_step(backend: str, dtype: str):
    """(step, rss before the optimizer) for one full fine-tuning step of all-MiniLM-L6-v2 with a
    2-class head: forward, cross-entropy, backward through every layer, AdamW."""
    from ..applications.finetune import classifier_from_pretrained
    from ..applications.pretrained import load_minilm
    from ..functional.softmax import cross_entropy_backward, cross_entropy_forward
    from ..optim import AdamW

    model = classifier_from_pretrained(load_minilm(np.dtype(dtype)).model, 2, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, model.config.vocab_size, size=(BATCH, LENGTH))
    ids[:, 0] = 101  # [CLS]
    mask = np.ones_like(ids)
    labels = rng.integers(0, 2, size=BATCH)

    if backend == "numpy":
        before = _rss_mb()
        opt = AdamW(model, lr=5e-5)

        def step() -> None:
            logits, cache = model.forward(ids, mask, rng=rng)
            _, loss_cache = cross_entropy_forward(logits, labels)
            model.zero_grad()
            model.backward(cross_entropy_backward(1.0, loss_cache), cache)
            opt.step()

        return step, before

    import torch
    import torch.nn.functional as F

    from torch_transformer.bridge import twin_of

    twin = twin_of(model)  # the NumPy model stays alive; "before" counts it, so the peak does not
    ids_t, mask_t, labels_t = (torch.from_numpy(a) for a in (ids, mask, labels))
    before = _rss_mb()
    opt = torch.optim.AdamW(twin.parameters(), lr=5e-5)

    def step() -> None:
        loss = F.cross_entropy(twin(ids_t, mask_t), labels_t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, before


def run_worker(
    backend: str, dtype: str, threads: int, steps: int, warmup: int, model: str = "transformer"
) -> BenchResult:
    """One backend in this process: build, warm up, time ``steps`` training steps."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    step, before = (_transformer_step if model == "transformer" else _minilm_step)(backend, dtype)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _peak_rss_mb() - before
    ms = np.array(times) * 1000
    return BenchResult(backend, dtype, threads, float(np.median(ms)), float(ms.min()), max(peak, 0.0))


def run_all(
    dtypes: tuple[str, ...], threads: int, steps: int, warmup: int, model: str = "transformer"
) -> list[BenchResult]:
    """Each (backend, dtype) in its own subprocess; backends alternate so drift hits both alike."""
    results = []
    for dtype in dtypes:
        for backend in ("numpy", "torch"):
            cmd = [sys.executable, "-m", "numpy_transformer", "benchmark", "--worker", backend, "--dtype", dtype,
                   "--threads", str(threads), "--steps", str(steps), "--warmup", str(warmup),
                   "--model", model]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"the {backend} {dtype} benchmark worker failed:\n{proc.stderr.strip()}")
            results.append(BenchResult(**json.loads(proc.stdout.strip().splitlines()[-1])))
    return results


def format_table(results: list[BenchResult], model: str = "transformer") -> str:
    c = BENCH_CONFIG
    if model == "transformer":
        title = (
            f"one training step (forward + backward + Adam), d_model {c['d_model']}, {c['n_heads']} heads, "
            f"{c['n_encoder_layers']}+{c['n_decoder_layers']} layers, d_ff {c['d_ff']}, batch {BATCH}, "
            f"lengths {LENGTH}, vocab {c['src_vocab_size']}, dropout {c['dropout']}, {results[0].threads} thread(s)"
        )
    else:
        title = (
            f"one full fine-tuning step of all-MiniLM-L6-v2 + a 2-class head (forward + backward through all 6 "
            f"layers + AdamW), batch {BATCH}, length {LENGTH}, dropout 0.1, {results[0].threads} thread(s)"
        )
    lines = [
        title,
        "",
        "| dtype | NumPy step (ms) | PyTorch step (ms) | NumPy / PyTorch | NumPy peak (MB) | PyTorch peak (MB) |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r.backend, r.dtype): r for r in results}
    for dtype in dict.fromkeys(r.dtype for r in results):
        n, t = by[("numpy", dtype)], by[("torch", dtype)]
        lines.append(
            f"| {dtype} | {n.median_ms:.1f} | {t.median_ms:.1f} | {n.median_ms / t.median_ms:.2f} "
            f"| {n.peak_mb:.1f} | {t.peak_mb:.1f} |"
        )
    return "\n".join(lines)


def worker_json(result: BenchResult) -> str:
    return json.dumps(asdict(result))


# ---------------------------------------------------------------------------- the command


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "benchmark",
        help="time one training step of the NumPy model and of the PyTorch twin on the CPU",
        description="Time forward + backward + Adam of the NumPy Transformer and of its twin (d_model 128, 4 heads, "
        "2+2 layers, d_ff 512, batch 16, lengths 32), same dtype and threads, and print a table with the "
        "ratio and the peak memory of each.",
    )
    bench.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    bench.add_argument("--threads", type=positive_int, default=1)
    bench.add_argument("--steps", type=positive_int, default=20, help="timed steps (the median is reported)")
    bench.add_argument("--warmup", type=positive_int, default=3)
    bench.add_argument(
        "--model",
        choices=("transformer", "minilm"),
        default="transformer",
        help="transformer (default) or minilm: a full fine-tuning step of all-MiniLM-L6-v2 (needs its package)",
    )
    bench.add_argument("--worker", choices=("numpy", "torch"), help=argparse.SUPPRESS)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.worker:
        dtype = "float32" if args.dtype == "both" else args.dtype
        result = run_worker(args.worker, dtype, args.threads, args.steps, args.warmup, args.model)
        print(worker_json(result))
        return 0
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        parser.error(f"benchmark needs PyTorch (pip install 'numpy-transformer[torch]'): {exc}")
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    try:
        results = run_all(dtypes, args.threads, args.steps, args.warmup, args.model)
    except RuntimeError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1
    print(format_table(results, args.model))
    return 0
