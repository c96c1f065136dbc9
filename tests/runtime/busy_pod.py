"""A pod process for tests whose event loop can be made busy on demand.

`python -m tests.runtime.busy_pod` runs a pod exactly as `python -m runtime` does (SWARM_* and
SWARM_POD_* settings). On SIGUSR1 it holds its own event loop for `SWARM_TEST_BUSY_S` seconds
with pure-Python work (a callback that spins and keeps taking the GIL back), the way CPU-bound
host code or a loaded machine starves a pod: nothing else on the loop runs meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from runtime.config import load_pod_settings
from runtime.pod import Pod
from swarm.kernel.settings import Settings


def hold_the_loop(seconds: float) -> None:
    until = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < until:
        turns += 1  # Python bytecode: the GIL is held, and given up only at switch intervals


async def main() -> None:
    busy_s = float(os.environ.get("SWARM_TEST_BUSY_S", "8"))
    pod = Pod(Settings(), load_pod_settings())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pod.stop)
    loop.add_signal_handler(signal.SIGUSR1, hold_the_loop, busy_s)
    await pod.run()


if __name__ == "__main__":
    asyncio.run(main())
