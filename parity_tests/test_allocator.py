"""``training/allocator.py``: freed arrays stay in the heap, so a training step stops page-faulting its
arrays in anew, and no number changes.

Each measurement runs in a fresh interpreter: the setting belongs to the process, and the test's own
worker must not carry it into other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from numpy_transformer.training import allocator
from numpy_transformer.training.allocator import LARGEST_THRESHOLD, keep_freed_memory

# Five training steps of the benchmark's Transformer (forward, cross-entropy, backward, Adam) after
# two untimed ones; prints the minor page faults per step and a digest of the loss and every parameter.
STEPS = textwrap.dedent(
    """
    import hashlib, json, resource, sys
    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    from numpy_transformer.training.allocator import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    from numpy_transformer.commands.benchmark import BENCH_CONFIG, BATCH, LENGTH
    from numpy_transformer.config import TransformerConfig
    from numpy_transformer.functional.softmax import cross_entropy_backward, cross_entropy_forward
    from numpy_transformer.models.transformer import Transformer
    from numpy_transformer.optim import Adam

    rng = np.random.default_rng(0)
    cfg = TransformerConfig(**BENCH_CONFIG)
    src, tgt_in, tgt_out = (rng.integers(1, 1000, size=(BATCH, LENGTH)) for _ in range(3))
    model = Transformer(cfg, dtype=np.float32, rng=rng)
    opt = Adam(model, lr=1e-3)
    losses = []

    def step():
        logits, cache = model.forward(src, tgt_in, rng=rng)
        loss, loss_cache = cross_entropy_forward(logits, tgt_out, ignore_index=0)
        model.zero_grad()
        model.backward(cross_entropy_backward(1.0, loss_cache), cache)
        opt.step()
        losses.append(float(loss))

    step(); step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    digest = hashlib.sha256(np.array(losses).tobytes())
    for _, p in model.named_parameters():
        digest.update(p.tobytes())
    print(json.dumps({"kept": kept, "faults": faults, "digest": digest.hexdigest()}))
    """
)


def _run(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_ends_the_page_faults_and_changes_no_number():
    default, kept = _run("default"), _run("keep")
    assert kept["kept"] is True
    # glibc's defaults give freed blocks back to the kernel: thousands of faults a step (about 8 400 here).
    assert default["faults"] > 1000, default
    # Kept: the heap already holds every page a step touches.
    assert kept["faults"] < 50, kept
    # The same losses and the same parameters after seven steps, bit for bit.
    assert kept["digest"] == default["digest"]


def test_it_says_false_where_there_is_no_glibc(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert keep_freed_memory() is False


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "max_block_bytes: expected 1 .. 33554432"),
        (LARGEST_THRESHOLD + 1, ValueError, "got 33554433"),
        (2.0**20, TypeError, "max_block_bytes: expected an int, got float"),
        (True, TypeError, "got bool"),
    ],
)
def test_bad_thresholds_are_refused(value, error, message):
    with pytest.raises(error, match=message):
        keep_freed_memory(value)
