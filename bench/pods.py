"""A pod as its own process for the benchmarks: `python -m runtime`, as `swarm up` runs one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from swarm.devstack.embedded import die_with_parent

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def pod_process(
    url: str, settings: Mapping[str, str], log: Path, *, stop_s: float = 30.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A pod on `url` with the `SWARM_POD_*` `settings`, its output appended to `log`; SIGTERM
    on the way out (SIGKILL after `stop_s`), and it dies with this process whatever happens."""
    env = {
        **os.environ,
        **settings,
        "SWARM_NATS_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime",
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), stop_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
