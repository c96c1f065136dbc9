"""The `swarm` CLI run as a subprocess against a test stack, as a user would run it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.helpers.interpreter import run_python

ROOT = Path(__file__).resolve().parents[2]
ECHO_WAT = ROOT / "examples" / "echo" / "echo.wat"


async def swarm(url: str, *args: str, timeout: float = 30) -> tuple[int, str, str]:
    """`swarm ARGS --nats-url URL` as a child process: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "swarm.cli.app",
        *args,
        "--nats-url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def swarm_until(text: str, url: str, *args: str) -> str:
    """`swarm ARGS` run again (10 s at most) until its output holds `text`, for what reaches the
    log in its own time (agent log lines are fire and forget); that output."""
    for _ in range(40):
        code, out, err = await swarm(url, *args)
        assert code == 0, err
        if text in out:
            return out
        await asyncio.sleep(0.25)
    raise AssertionError(f"{text!r} not in the output of swarm {' '.join(args)}: {out}")


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    module: str = "swarm.cli.app",
) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS` (the `swarm` CLI, or its stack verbs alone) as a child process run
    to its end; its exit code and output, whatever the exit code."""
    return run_python("-m", module, *args, cwd=cwd, env=env, timeout=timeout)
