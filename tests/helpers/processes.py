"""A Swarm service as a child process (`python -m MODULE`), for tests that SIGKILL one; and a
child process of a test that is never left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import psutil

from swarm.devstack.embedded import die_with_parent

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def service_process(
    module: str, env: Mapping[str, str], log_path: Path, *, grace: float | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m MODULE` with `env` over this process's environment, stdout and stderr appended
    to `log_path`. It dies with the test process; at the end, if still running, it is killed at
    once, or with `grace` given, asked to stop (SIGTERM) and killed after `grace` seconds."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            if grace is None:
                proc.kill()
                proc.wait(10)
            else:
                proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        else:
            proc.wait(10)


@asynccontextmanager
async def reaped(proc: asyncio.subprocess.Process) -> AsyncIterator[asyncio.subprocess.Process]:
    """`proc`, killed on the way out if it still runs and its pipes drained: a test that fails
    before the child ends leaves neither the child nor an open pipe behind."""
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


def gone(pid: int | None) -> bool:
    """Whether process `pid` (None: never started) has ended: no such process, or a zombie
    left for its parent to reap."""
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
