"""The scheduler in this process or as a child process, against a test's stack."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from services.scheduler import Scheduler, SchedulerSettings
from swarm.kernel.settings import Settings
from tests.helpers.processes import service_process
from tests.helpers.services import in_this_loop
from tests.helpers.tables import ID_SECRET


@asynccontextmanager
async def in_process_scheduler(url: str, **config: Any) -> AsyncIterator[Scheduler]:
    """A scheduler (`SchedulerSettings(**config)`) running until the block ends."""
    scheduler = Scheduler(
        Settings(nats_url=url, command_id_secret=ID_SECRET), SchedulerSettings(**config)
    )
    async with in_this_loop(scheduler):
        yield scheduler


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
