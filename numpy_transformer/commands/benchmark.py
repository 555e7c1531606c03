"""Time one training step (forward + backward + Adam) of the NumPy model and of its twin on the CPU.

Two models: the encoder–decoder Transformer of ``BENCH_CONFIG`` (``--model transformer``,
the default) and all-MiniLM-L6-v2 fine-tuned with a classification head (``--model minilm``).

Both backends get the same configuration, dtype, batch and number of threads. Each
(backend, dtype) runs in a fresh subprocess, so that its peak memory is its own:
the figure reported is the process's peak resident set over the warm-up and timed
steps, minus its size once the model and the batch exist -- so it counts the
optimizer state (PyTorch allocates Adam's moments lazily, we allocate them up
front), the activations kept for the backward, and the gradients.

``--attention`` instead sweeps the sequence length for the attention op alone: standard, flash
and sliding-window NumPy attention and ``torch.nn.functional.scaled_dot_product_attention``,
forward + backward, time and peak memory, as a table and a log-log PNG (``--out``). The sweep
lives in :mod:`numpy_transformer.applications.attention_benchmark`; the torch kernel is measured
here (:func:`sdpa_row`), the only layer that may import torch.

``--device cuda`` times the twin's training step on the GPU against ``torch.nn.Transformer``'s,
side by side as on the CPU, at the size of the paper's base model (:data:`GPU_CONFIG`: d 512,
8 heads, 6 + 6 layers, batch 64 x 128), in float32 and bfloat16, the twin's attention dispatched
to ``F.scaled_dot_product_attention`` (``MultiHeadAttention.use_sdpa``). ``parity_tests/gpu_check.sh``
runs it after the ``gpu`` tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..training.allocator import keep_freed_memory
from .common import check_output_file, is_installed, limit_threads, positive_int

BENCH_CONFIG = dict(
    src_vocab_size=1000, tgt_vocab_size=1000, d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
    d_ff=512, dropout=0.1, max_len=64,
)  # fmt: skip
BATCH, LENGTH = 16, 32
# --device cuda: the base model of "Attention Is All You Need" (d_ff 2048), batch 64 x 128.
GPU_CONFIG = dict(BENCH_CONFIG, d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048, max_len=128)
GPU_BATCH, GPU_LENGTH = 64, 128


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
    """This process's own peak resident set, ``VmHWM``.

    Not ``ru_maxrss``: Linux carries a parent's peak into the child across fork and exec, so a worker
    started by a process that had imported torch (about 150 MB) reported that as its own peak.
    """
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


MODELS = ("transformer", "minilm")


def _transformer_step(backend: str, dtype: str, clock=None):
    """(step, rss before the optimizer) for the encoder–decoder Transformer of ``BENCH_CONFIG``.

    ``clock`` (a :class:`~numpy_transformer.applications.step_cost.ProductClock`, NumPy only) is
    given the model's parameters, so that it times the step's matrix products where they run."""
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
        if clock is not None:
            clock.mark(model)
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


# ---------------------------------------------------------------------------- against torch.nn.Transformer


def _builtin_transformer_step(
    dtype: str, config: dict | None = None, batch: int = BATCH, length: int = LENGTH, device: str = "cpu"
):
    """One training step of ``torch.nn.Transformer`` at ``config`` (default ``BENCH_CONFIG``): the module a
    user would pick.

    Around it, what our model has too: token embeddings scaled by sqrt(C), sinusoidal positions,
    dropout on their sum, the causal target mask and the output projection (our model also builds
    key-padding masks; the batch has no padding, so torch is given none);
    cross-entropy with ``ignore_index=0`` and ``torch.optim.Adam``.
    """
    import torch
    from torch import nn

    from ..functional.embedding import sinusoidal_positional_encoding

    c, td = config or BENCH_CONFIG, getattr(torch, dtype)
    C = c["d_model"]

    class Builtin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.src_embed = nn.Embedding(c["src_vocab_size"], C, dtype=td)
            self.tgt_embed = nn.Embedding(c["tgt_vocab_size"], C, dtype=td)
            self.transformer = nn.Transformer(C, c["n_heads"], c["n_encoder_layers"], c["n_decoder_layers"], c["d_ff"],
                                              c["dropout"], batch_first=True, dtype=td)  # fmt: skip
            self.out_proj = nn.Linear(C, c["tgt_vocab_size"], dtype=td)
            pe = sinusoidal_positional_encoding(c["max_len"], C, dtype=np.float64)
            self.register_buffer("pe", torch.from_numpy(pe).to(td))
            self.dropout = nn.Dropout(c["dropout"])

        def forward(self, src, tgt):
            T = tgt.shape[1]
            x = self.dropout(self.src_embed(src) * C**0.5 + self.pe[: src.shape[1]])
            y = self.dropout(self.tgt_embed(tgt) * C**0.5 + self.pe[:T])
            causal = torch.ones(T, T, dtype=torch.bool, device=tgt.device).triu(1)  # True = blocked
            # No key-padding masks: the batch has no padding, and masks would only slow torch down
            # (about 6 % here): a comparison that would flatter us.
            h = self.transformer(x, y, tgt_mask=causal, tgt_is_causal=True)
            return self.out_proj(h)

    rng = np.random.default_rng(0)
    src, tgt_in, tgt_out = (torch.from_numpy(rng.integers(1, c["src_vocab_size"], size=(batch, length))).to(device)
                            for _ in range(3))  # fmt: skip
    torch.manual_seed(0)
    model = Builtin().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = model(src, tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1),
                                                 ignore_index=0)  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


@dataclass(frozen=True)
class SideBySide:
    dtype: str
    numpy_ms: float  # medians over the pairs
    builtin_ms: float
    ratio: float  # the median of the per-pair ratios NumPy / nn.Transformer
    gemm_ms: float  # the step's matrix products timed alone
    gflop: float
    in_step_ms: float  # the median time of the products inside a clocked NumPy step
    in_step_share: float  # the median over the clocked steps of their products' share of the step


def side_by_side(dtype: str, pairs: int, warmup: int) -> SideBySide:
    """The NumPy step and ``torch.nn.Transformer``'s in one process, alternating, ``pairs`` times.

    Each pair is followed by a step of a second NumPy model whose products a
    :class:`~numpy_transformer.applications.step_cost.ProductClock` times where they run; the ratio
    is taken on the plain model, since the clock's bookkeeping costs its step a few percent.
    """
    from ..applications.step_cost import ProductClock, time_products, total_flops, transformer_products
    from ..config import TransformerConfig

    clock = ProductClock()
    ours, _ = _transformer_step("numpy", dtype)
    clocked, _ = _transformer_step("numpy", dtype, clock=clock)
    theirs = _builtin_transformer_step(dtype)
    for _ in range(warmup):
        ours()
        theirs()
        clocked()
    t_ours, t_theirs, t_clocked, t_products = [], [], [], []
    for _ in range(pairs):
        start = time.perf_counter()
        ours()
        middle = time.perf_counter()
        theirs()
        t_ours.append(middle - start)
        t_theirs.append(time.perf_counter() - middle)
        before, start = clock.seconds, time.perf_counter()
        clocked()
        t_clocked.append(time.perf_counter() - start)
        t_products.append(clock.seconds - before)
    a, b = np.array(t_ours) * 1000, np.array(t_theirs) * 1000
    products = transformer_products(TransformerConfig(**BENCH_CONFIG), BATCH, LENGTH, LENGTH)
    gemm = time_products(products, np.dtype(dtype)) * 1000
    share = np.array(t_products) / np.array(t_clocked)
    return SideBySide(dtype, float(np.median(a)), float(np.median(b)), float(np.median(a / b)), gemm,
                      total_flops(products) / 1e9, float(np.median(t_products)) * 1000,
                      float(np.median(share)))  # fmt: skip


def format_side_by_side(rows: list[SideBySide], pairs: int) -> str:
    lines = [
        f"against torch.nn.Transformer, in one process, steps alternating, median of {pairs} pairs "
        "(products alone: the step's matrix products timed one by one on warm caches, "
        "applications/step_cost.py; in the step: the same products timed where they run, by a ProductClock)",
        "",
        "| dtype | NumPy step (ms) | nn.Transformer step (ms) | NumPy / nn.Transformer | products alone (ms) "
        "| share, alone | products in the step (ms) | share, in the step | GFLOP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.dtype} | {r.numpy_ms:.1f} | {r.builtin_ms:.1f} | {r.ratio:.2f} | {r.gemm_ms:.1f} "
                     f"| {r.gemm_ms / r.numpy_ms:.0%} | {r.in_step_ms:.1f} | {r.in_step_share:.0%} "
                     f"| {r.gflop:.2f} |")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------- --device cuda


def _twin_step(dtype: str, config: dict, batch: int, length: int, device: str, sdpa: bool = True):
    """One training step of the twin Transformer at ``config``: forward, cross-entropy, backward, Adam."""
    import torch
    import torch.nn.functional as F

    from torch_transformer.modules import use_sdpa
    from torch_transformer.transformer import Transformer as TwinTransformer

    from ..config import TransformerConfig

    cfg = TransformerConfig(**config)
    rng = np.random.default_rng(0)
    src, tgt_in, tgt_out = (torch.from_numpy(rng.integers(1, cfg.src_vocab_size, size=(batch, length))).to(device)
                            for _ in range(3))  # fmt: skip
    torch.manual_seed(0)
    model = use_sdpa(TwinTransformer(cfg, dtype=getattr(torch, dtype), device=device), sdpa)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


@dataclass(frozen=True)
class DeviceSideBySide:
    dtype: str
    twin_ms: float  # medians over the pairs
    builtin_ms: float
    ratio: float  # the median of the per-pair ratios twin / nn.Transformer


def device_side_by_side(
    dtype: str, pairs: int, warmup: int, device: str = "cuda", config: dict | None = None,
    batch: int = GPU_BATCH, length: int = GPU_LENGTH,
) -> DeviceSideBySide:  # fmt: skip
    """The twin's step and ``torch.nn.Transformer``'s on ``device``, alternating, each timed to its end
    (``torch.cuda.synchronize``: CUDA kernels run asynchronously)."""
    import torch

    config = config or GPU_CONFIG
    ours = _twin_step(dtype, config, batch, length, device)
    theirs = _builtin_transformer_step(dtype, config, batch, length, device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        ours()
        theirs()
    sync()
    t_ours, t_theirs = [], []
    for _ in range(pairs):
        start = time.perf_counter()
        ours()
        sync()
        middle = time.perf_counter()
        theirs()
        sync()
        t_ours.append(middle - start)
        t_theirs.append(time.perf_counter() - middle)
    a, b = np.array(t_ours) * 1000, np.array(t_theirs) * 1000
    return DeviceSideBySide(dtype, float(np.median(a)), float(np.median(b)), float(np.median(a / b)))


def format_device_side_by_side(rows: list[DeviceSideBySide], pairs: int, device: str, config: dict | None = None,
                               batch: int = GPU_BATCH, length: int = GPU_LENGTH) -> str:  # fmt: skip
    c = config or GPU_CONFIG
    lines = [
        f"the twin's training step on {device} (attention through F.scaled_dot_product_attention) against "
        f"torch.nn.Transformer's, d_model {c['d_model']}, {c['n_heads']} heads, {c['n_encoder_layers']}+"
        f"{c['n_decoder_layers']} layers, d_ff {c['d_ff']}, batch {batch} x {length}, dropout {c['dropout']}, "
        f"Adam; alternating, median of {pairs} pairs",
        "",
        "| dtype | twin step (ms) | nn.Transformer step (ms) | twin / nn.Transformer |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.dtype} | {r.twin_ms:.1f} | {r.builtin_ms:.1f} | {r.ratio:.2f} |")
    return "\n".join(lines)


def run_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError as exc:
        parser.error(f"--device cuda needs PyTorch (pip install 'numpy-transformer[torch]'): {exc}")
    if not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    if args.model != "transformer":
        parser.error("--model: --device cuda times the Transformer only")
    dtypes = ("float32", "bfloat16") if args.dtype in (None, "both") else (args.dtype,)
    pairs, warmup = args.steps or 20, args.warmup or 3
    rows = [device_side_by_side(dtype, pairs, warmup) for dtype in dtypes]
    print(format_device_side_by_side(rows, pairs, "cuda"))
    return 0


# ---------------------------------------------------------------------------- --attention: the length sweep


def sdpa_row(inputs, T: int, config):
    """Measure ``F.scaled_dot_product_attention`` forward + backward (autograd) on the CPU at length ``T``.

    Time and RSS as the NumPy kernels (``attention_benchmark.measure``). ``peak_mib``: torch allocates
    in C++, out of ``tracemalloc``'s sight, so it is the bytes autograd saves for the backward
    (``torch.autograd.graph.saved_tensors_hooks``; storages of the inputs not counted, each storage
    once) plus the output and the three gradients -- what the backward holds, not the kernel's
    transient buffers (those show in the RSS column).
    """
    import torch
    import torch.nn.functional as F

    from ..applications.attention_benchmark import MIB, measure

    q, k, v = (torch.from_numpy(x).requires_grad_() for x in inputs[:3])
    dout = torch.from_numpy(inputs[3])
    inputs_storage = {t.untyped_storage().data_ptr() for t in (q, k, v, dout)}
    held: dict[int, int] = {}  # storage address -> bytes

    def hold(t: torch.Tensor) -> None:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in inputs_storage:
            held[ptr] = t.untyped_storage().nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        hold(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=config.causal)
    out.backward(dout)
    for t in (out, q.grad, k.grad, v.grad):
        hold(t)
    held_mib = sum(held.values()) / MIB
    del out
    q.grad = k.grad = v.grad = None

    def kernel(*_arrays) -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=config.causal).backward(dout)
        q.grad = k.grad = v.grad = None

    return replace(measure("sdpa", kernel, inputs, config, T, traced=False), peak_mib=held_mib)


def _memory_available_bytes() -> float:
    """MemAvailable from /proc/meminfo; inf where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


# The standard attention's forward + backward holds about this many (B, H, T, S) arrays at its peak
# (measured: 1.7 with dropout, parity_tests/test_attention_memory.py; 2 leaves room).
STANDARD_SCORE_ARRAYS = 2


def run_attention(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..applications.attention_benchmark import (
        DEFAULT_LENGTHS,
        AttentionBenchConfig,
        describe,
        markdown_table,
        plot,
        run_sweep,
        score_array_mib,
    )

    if args.dtype == "both":
        parser.error("--dtype: --attention sweeps one dtype; expected float32 or float64, got 'both'")
    if args.model != "transformer":
        parser.error("--model: not used with --attention (the sweep times the attention op alone)")
    out = check_output_file(parser, "--out", args.out or Path("attention_benchmark.png"), ".png")
    config = AttentionBenchConfig(
        lengths=tuple(args.lengths or DEFAULT_LENGTHS),
        batch=args.batch or 1,
        heads=args.heads or 1,
        head_dim=args.head_dim or 64,
        window=args.window or 256,
        block_size=args.block_size or AttentionBenchConfig.block_size,
        causal=args.causal,
        dtype=args.dtype or "float32",
        repeats=args.steps or 3,
        warmup=args.warmup or 1,
        threads=args.threads,
    )
    longest = max(config.lengths)
    need = STANDARD_SCORE_ARRAYS * score_array_mib(config, longest) * 2**20
    if need > 0.8 * _memory_available_bytes():
        parser.error(
            f"--lengths: T = {longest} needs about {need / 2**30:.1f} GiB for the standard attention's "
            f"(B, H, T, T) arrays, more than this machine has available ({_memory_available_bytes() / 2**30:.1f} GiB)"
        )
    extra = {}
    if is_installed("torch"):
        import torch  # noqa: F401  (so that limit_threads pins torch's threads too)

        extra["sdpa"] = lambda inputs, T: sdpa_row(inputs, T, config)
    else:
        print("benchmark: PyTorch is not installed: the sdpa column is left out", file=sys.stderr)
    limit_threads(config.threads)
    rows = run_sweep(config, extra)
    print(describe(config))
    print()
    print(markdown_table(rows, config))
    print()
    print(
        "time: median of forward + backward; peak: tracemalloc over one forward + backward (NumPy), "
        "saved-for-backward + output + gradients (sdpa); RSS: rise of the peak resident set over the first run"
    )
    print(f"wrote {plot(rows, config, out)}")
    return 0


# ---------------------------------------------------------------------------- the command


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "benchmark",
        help="time one training step of the NumPy model and of the PyTorch twin on the CPU",
        description="Time forward + backward + Adam of the NumPy Transformer and of its twin (d_model 128, 4 heads, "
        "2+2 layers, d_ff 512, batch 16, lengths 32), same dtype and threads, and print a table with the "
        "ratio and the peak memory of each.",
    )
    bench.add_argument(
        "--dtype",
        choices=("float32", "float64", "bfloat16", "both"),
        default=None,
        help="default: both (float32 and float64; --device cuda: float32 and bfloat16; --attention: float32)",
    )
    bench.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: the twin's step on the GPU against torch.nn.Transformer's, at d 512, 8 heads, 6+6 layers, "
        "batch 64 x 128 (default cpu)",
    )
    bench.add_argument("--threads", type=positive_int, default=1)
    bench.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="timed steps, the median is reported (default 20; --attention 3)",
    )
    bench.add_argument(
        "--warmup", type=positive_int, default=None, help="untimed steps first (default 3; --attention 1)"
    )
    bench.add_argument(
        "--model",
        choices=("transformer", "minilm"),
        default="transformer",
        help="transformer (default) or minilm: a full fine-tuning step of all-MiniLM-L6-v2 (needs its package)",
    )
    bench.add_argument("--worker", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    att = bench.add_argument_group(
        "--attention", "sweep the sequence length for the attention op alone (standard, flash, window, torch SDPA)"
    )
    att.add_argument(
        "--attention",
        action="store_true",
        help="time and measure the memory of attention forward + backward against T = S, print a table, write --out",
    )
    att.add_argument("--lengths", type=positive_int, nargs="+", help="T = S values (default 512 1024 2048 4096 8192)")
    att.add_argument("--batch", type=positive_int, help="B (default 1)")
    att.add_argument("--heads", type=positive_int, help="H (default 1)")
    att.add_argument("--head-dim", type=positive_int, help="D (default 64)")
    att.add_argument("--window", type=positive_int, help="the sliding window of the window kernel (default 256)")
    att.add_argument("--block-size", type=positive_int, help="tile size of the flash and window kernels (default 128)")
    att.add_argument("--causal", action="store_true", help="standard, flash and sdpa causal (default: full attention)")
    att.add_argument("--out", type=Path, help="the log-log PNG (default attention_benchmark.png)")


ATTENTION_ONLY = ("lengths", "batch", "heads", "head_dim", "window", "block_size", "out")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.device == "cuda":
        if args.attention:
            parser.error("--device cuda: not used with --attention (the sweep runs on the CPU)")
        return run_device(parser, args)
    if args.dtype == "bfloat16":
        parser.error("--dtype bfloat16: only with --device cuda (NumPy has no bfloat16)")
    if args.attention:
        return run_attention(parser, args)
    given = [name for name in ATTENTION_ONLY if getattr(args, name) is not None] + (["causal"] if args.causal else [])
    if given:
        parser.error(f"--{given[0].replace('_', '-')}: only used with --attention")
    # Both backends, in the workers and side by side: torch's CPU tensors come from the same malloc.
    kept = keep_freed_memory()
    args.dtype = args.dtype or "both"
    args.steps = args.steps or 20
    args.warmup = args.warmup or 3
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
    if args.model == "transformer":
        limit_threads(args.threads)
        rows = [side_by_side(dtype, args.steps, args.warmup) for dtype in dtypes]
        print()
        print(format_side_by_side(rows, args.steps))
    print()
    print(
        "freed memory kept in the heap between steps (training/allocator.py)"
        if kept
        else "glibc's mallopt is not available here: each step page-faults its arrays in anew (training/allocator.py)"
    )
    return 0
