"""Python components built once per test run, whichever xdist worker asks first.

Building one (componentize-py) takes ~5 s on a quiet machine and over 30 s beside a busy suite;
several modules run the same example, so the first to ask builds it and the others (on any
worker) wait for the file and take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from runtime.build import build_agent


def _run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test run shared by its xdist workers: the parent of a worker's
    base temp dir (each worker has `popen-gwN` below the run's), or the run's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(app: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The component built from `app` (a .py file) in this test run; not to be modified."""
    out = _run_dir(tmp_path_factory) / "components" / app.parent.name
    out.mkdir(parents=True, exist_ok=True)
    wasm = out / app.with_suffix(".wasm").name
    with (out / ".lock").open("w") as lock:
        # Held while building: another worker asking for the same app waits here for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not wasm.exists():
            build_agent(app, wasm)  # written to a temporary file, renamed once complete
    return wasm
