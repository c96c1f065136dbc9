"""A fresh Python interpreter as a child process: what a module does at import or start-up, seen
from outside (modules loaded, settings refused, what it prints)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_python(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` (this interpreter) run to its end, in `cwd` with `env` (by default this
    process's); its exit code and output as text, whatever the exit code."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
