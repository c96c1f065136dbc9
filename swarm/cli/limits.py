"""Values that the options' ranges and help show, restated from `schemas` and `swarm.client`.

Building the command line must not import those packages: every `swarm` call, `--help`
included, would pay for pydantic, nats-py and the models first. tests/test_cli_start.py checks
each value here against its source, so a change there fails the suite until this one follows.
"""

from __future__ import annotations

#: `schemas.specs.MAX_REPLICAS`: the most replicas one agent may ask for.
MAX_REPLICAS = 400
#: `schemas.specs.INLINE_MODULE_MAX_BYTES`: the largest module a command may carry inline.
INLINE_MODULE_MAX_BYTES = 256 * 1024
#: `schemas.webhooks.MAX_ATTEMPTS_LIMIT`: the most delivery attempts a webhook may ask for.
WEBHOOK_MAX_ATTEMPTS = 50
#: `swarm.client.logs.LOG_LEVELS`: log levels from least to most severe.
LOG_LEVELS = ("debug", "info", "warn", "error")
