"""How a front end runs as a process: Swarm's one service lifecycle, its logging, and stopping
tasks for sure.

The HTTP API is a `Service` (start, stop, status, settings checked before anything starts:
`SettingsInvalid`) run by `run_until_signalled`, as every service is; its logging is set up by
`configure_logging`. The CLI sends its log lines to stderr with
`configure_logging_on_import` and, on Ctrl-C, cancels a verb until it is done with
`cancel_and_wait` (a cancellation that nats-py drops would leave it running).

The kernel's own (`swarm.kernel.lifecycle`, `.logs`, `.tasks`), named here so that the front
ends import the client alone: a fix made there reaches them too. None of it imports the
settings' pydantic models or structlog: the CLI imports this on every verb's way out.
"""

from __future__ import annotations

from swarm.kernel.lifecycle import Service, SettingsInvalid, Status, run_until_signalled
from swarm.kernel.logs import configure_logging, configure_logging_on_import
from swarm.kernel.tasks import cancel_and_wait

__all__ = [
    "Service",
    "SettingsInvalid",
    "Status",
    "cancel_and_wait",
    "configure_logging",
    "configure_logging_on_import",
    "run_until_signalled",
]
