"""Hypothesis profiles and the ``gpu`` marker.

Profiles (choose with ``HYPOTHESIS_PROFILE``):

* ``ci`` (default): derandomized, so every CI run draws the same examples; few examples.
* ``dev``: random, more examples.
* ``thorough``: many examples, for a long local run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from threadpoolctl import threadpool_limits

from numpy_transformer.training.allocator import keep_freed_memory

# One BLAS thread for NumPy and for PyTorch: on small matrices a second thread costs far
# more in synchronisation than it gains (10x slower on the 2-core CI machine), and the
# two halves then run under the same conditions.
threadpool_limits(1)
# Freed arrays stay in the process's heap instead of going back to the kernel after every step, to be
# page-faulted in again by the next (numpy_transformer/training/allocator.py): the same numbers, bit for
# bit (test_allocator.py); test_training.py and test_vit.py together went from 156 s to 128 s.
keep_freed_memory()
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a test dependency
    pass

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=50, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------- screenshots

_SCREENSHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "site-screenshots")
_SESSION_STARTED: list[float] = []


def pytest_sessionstart(session):
    import time

    _SESSION_STARTED.append(time.time())


def pytest_terminal_summary(terminalreporter):
    """List the screenshots ``test_site.py`` wrote in this run (its own print is lost in an xdist worker)."""
    if not (_SESSION_STARTED and os.path.isdir(_SCREENSHOTS)):
        return
    written = sorted(
        os.path.join(_SCREENSHOTS, name)
        for name in os.listdir(_SCREENSHOTS)
        if name.endswith(".png") and os.path.getmtime(os.path.join(_SCREENSHOTS, name)) >= _SESSION_STARTED[0]
    )
    if written:
        terminalreporter.write_line("screenshots of three site pages (test_site.py): " + ", ".join(written))
