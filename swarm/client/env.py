"""The `SWARM_*` variables a front end reads straight from the environment, before (and often
instead of) its settings: where the stack is (`NATS_URL`, `DATA_DIR`, `nats_credentials()`,
`nats_ca()`), and whether logging was asked for (`LOG_LEVEL`, `LOG_FORMAT`).

The kernel's names (`swarm.kernel.env`), for the front ends (`from swarm.client import env`).
Standard library only, like the kernel's module: the CLI imports this at its start, so that a
verb finds its stack, or says there is none, without importing pydantic.
"""

from __future__ import annotations

# Every name of the kernel's module, so the two lists cannot drift apart.
from swarm.kernel.env import *  # noqa: F403
from swarm.kernel.env import __all__ as __all__
