"""Execute the walkthroughs cell by cell, for the site and for ``parity_tests/test_walkthroughs.py``.

One walkthrough runs in a process of its own (``python docs/hooks/executor.py SCRIPT OUT``), as a reader
running its cells top to bottom in one notebook kernel would: one namespace, ``__file__`` set, the
repository root as working folder, ``MPLBACKEND=Agg``, ``WALKTHROUGH_OUT`` pointing at ``OUT/pictures``
and one BLAS thread (as ``conftest.py`` pins it). Each code cell's printed output is captured, and the
pictures that appear in ``OUT/pictures`` while a cell runs are attached to that cell. The record of the
run, ``OUT/record.json``, holds every cell (markdown source, code, output, pictures), the error if a cell
raised (the run stops there) and every printed line that reports a "mismatch".

A record is reused while it is *fresh*: its key is a hash of the walkthrough, of this file and of every
Python file of both packages, so any change to the code a lesson runs executes it again. That is how CI
executes each walkthrough once: the site build writes the records into ``build/walkthroughs/`` and the
test reads them (:func:`fresh_record`), executing a lesson itself only when no fresh record exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / "build" / "walkthroughs"  # git-ignored (build/)
PATTERN = "[0-9][0-9]_*.py"
# each takes seconds to a minute on an idle machine; the limit only stops a hung run (DOCS_TIMEOUT_S on a busy one)
TIMEOUT_S = int(os.environ.get("DOCS_TIMEOUT_S", "300"))
_HASHED_PACKAGES = ("numpy_transformer", "torch_transformer")


def walkthroughs(folder: Path = REPO_ROOT / "walkthroughs") -> list[Path]:
    """The lessons, in their numbered order."""
    return sorted(folder.glob(PATTERN))


def source_key(script: Path) -> str:
    """Hash of everything a lesson's numbers depend on in this repository (the lesson, the packages, this file)."""
    digest = hashlib.sha256()
    files = [Path(script), Path(__file__)]
    for package in _HASHED_PACKAGES:
        files += sorted((REPO_ROOT / package).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name).encode())
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def record_dir(script: Path, cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / Path(script).stem


def fresh_record(script: Path, cache_dir: Path = CACHE_DIR, any_age: bool = False) -> dict | None:
    """The stored record of ``script`` if it was made from the current sources (or ``any_age``), else None."""
    path = record_dir(script, cache_dir) / "record.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("error") or (not any_age and record.get("key") != source_key(script)):
        return None  # only a clean run is reused: a failure is always executed again
    return record


def _pictures(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def execute(script: Path, out: Path) -> dict:
    """Run ``script``'s cells in this process; write and return its record (see the module docstring)."""
    import jupytext  # the walkthroughs extra; imported here so that reading records needs nothing

    from numpy_transformer.training.allocator import keep_freed_memory

    keep_freed_memory()  # as the commands do: the lessons' training steps stop page-faulting their arrays

    script, out = Path(script).resolve(), Path(out).resolve()
    pictures = out / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["WALKTHROUGH_OUT"] = str(pictures)
    os.chdir(REPO_ROOT)
    sys.path.insert(0, str(script.parent))  # as `python walkthroughs/NN_name.py` would have it
    notebook = jupytext.read(script, fmt="py:percent")
    namespace: dict = {"__name__": "__main__", "__file__": str(script)}
    cells, error, started = [], None, time.perf_counter()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            cells.append({"kind": "markdown", "source": cell.source})
            continue
        before = _pictures(pictures)
        stdout, stderr = io.StringIO(), io.StringIO()
        cell_started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                exec(compile(cell.source, f"{script.name} (cell {index})", "exec"), namespace)
        except BaseException:  # any failure, SystemExit included, ends the lesson and is reported
            error = {"cell": index, "traceback": traceback.format_exc()}
        after = _pictures(pictures)
        new = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
        cells.append(
            {
                "kind": "code",
                "source": cell.source,
                "stdout": stdout.getvalue(),
                "stderr": stderr.getvalue(),
                "pictures": new,
                "seconds": round(time.perf_counter() - cell_started, 3),
            }
        )
        if error is not None:
            break
    printed = "\n".join(c.get("stdout", "") + c.get("stderr", "") for c in cells)
    record = {
        "script": script.name,
        "key": source_key(script),
        "cells": cells,
        "error": error,
        "mismatches": [line for line in printed.splitlines() if "mismatch" in line.lower()],
        "pictures": sorted(_pictures(pictures)),
        "seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 2),  # the process, imports included
    }
    (out / "record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def run(script: Path, out: Path, timeout_s: int = TIMEOUT_S) -> dict:
    """Execute ``script`` in a fresh process into ``out``; a crash or a hang becomes the record's error."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "record.json").unlink(missing_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # the repository first, so the lesson runs this tree's packages whatever is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(script), str(out)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        problem = None if result.returncode == 0 else f"exit status {result.returncode}:\n{result.stderr[-6000:]}"
    except subprocess.TimeoutExpired:
        problem = f"did not finish within {timeout_s} s"
    path = out / "record.json"
    if problem is not None or not path.is_file():
        return {
            "script": Path(script).name,
            "key": None,
            "cells": [],
            "error": {"cell": None, "traceback": problem or "no record written"},
            "mismatches": [],
            "pictures": [],
            "seconds": round(time.perf_counter() - started, 2),
        }
    return json.loads(path.read_text(encoding="utf-8"))


def run_all(scripts: list[Path], cache_dir: Path = CACHE_DIR, jobs: int | None = None) -> dict[str, dict]:
    """A record for every script, by file name: fresh ones reused, the others executed, ``jobs`` at a time.

    ``DOCS_JOBS`` sets ``jobs`` (default: two, or one on a one-core machine). ``DOCS_WALKTHROUGHS=reuse``
    reuses every clean record however old, for editing the pages' prose without executing the lessons again
    (it can publish outdated numbers: never set it in CI).
    """
    jobs = jobs or int(os.environ.get("DOCS_JOBS", min(2, os.cpu_count() or 1)))
    any_age = os.environ.get("DOCS_WALKTHROUGHS") == "reuse"
    records: dict[str, dict] = {}
    stale = []
    for script in scripts:
        record = fresh_record(script, cache_dir, any_age)
        if record is None:
            stale.append(script)
        else:
            records[script.name] = record
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for script, record in zip(stale, pool.map(lambda s: run(s, record_dir(s, cache_dir)), stale), strict=True):
            records[script.name] = record
    return {script.name: records[script.name] for script in scripts}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python docs/hooks/executor.py WALKTHROUGH.py OUT_DIR")
    sys.path.pop(0)  # this folder, put first by `python docs/hooks/executor.py`
    execute(Path(sys.argv[1]), Path(sys.argv[2]))
