"""The scheduler in this process or as a child process, against a test's stack."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from services.scheduler import Scheduler, SchedulerSettings
from swarm.kernel.settings import Settings
from tests.helpers.processes import service_process
from tests.helpers.tables import ID_SECRET


@asynccontextmanager
async def in_process_scheduler(url: str, **config: Any) -> AsyncIterator[Scheduler]:
    """A scheduler (`SchedulerSettings(**config)`) running until the block ends."""
    scheduler = Scheduler(
        Settings(nats_url=url, command_id_secret=ID_SECRET), SchedulerSettings(**config)
    )
    task = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(scheduler.live.wait(), 10)
        yield scheduler
    finally:
        scheduler.stop()
        await asyncio.wait_for(task, 10)


@contextmanager
def scheduler_process(url: str, log_path: Path, policy: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m services.scheduler` placing by `policy`, killed at the end if still running."""
    env = {
        "SWARM_NATS_URL": url,
        "SWARM_SCHEDULER_POLICY": policy,
        "SWARM_COMMAND_ID_SECRET": ID_SECRET,
    }
    with service_process("services.scheduler", env, log_path) as proc:
        yield proc
