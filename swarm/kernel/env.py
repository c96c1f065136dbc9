"""The names of the `SWARM_*` environment variables that the CLI reads before the settings.

`swarm.kernel.settings` reads every variable through pydantic-settings; the CLI reads these few
straight from the environment first, so that a verb finds its stack (or says there is none)
without importing pydantic (`swarm.cli.connect.locate`), and a read verb whose logging nobody
set reads no settings at all (`swarm.cli.connect.connect`). Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Every setting is read from a variable with this prefix (`Settings.model_config`).
PREFIX = "SWARM_"
#: An external NATS server (`Settings.nats_url`).
NATS_URL = f"{PREFIX}NATS_URL"
#: The nkey seed file a process connects to NATS with (`Settings.nats_credentials`).
NATS_CREDENTIALS = f"{PREFIX}NATS_CREDENTIALS"
#: The CA certificate (PEM) a process verifies the NATS server's TLS certificate against: a
#: `swarm up` stack's own CA (`swarm status -o json` names it as `nats_ca`). Unset: plain NATS,
#: or TLS verified against the system's CAs when the server asks for TLS.
NATS_CA = f"{PREFIX}NATS_CA"
#: The principals a Hive takes signed commands from (`HiveSettings.principals_file`): the
#: dev stack names its own to its Hive replicas.
HIVE_PRINCIPALS_FILE = f"{PREFIX}HIVE_PRINCIPALS_FILE"
#: The pod id a pod runs as (`PodSettings.id`): a dev stack's pod is the principal of that
#: name, and its subjects are bound to it (`swarm.devstack.principals.permissions`).
POD_ID = f"{PREFIX}POD_ID"
#: The principals whose signed mesh messages a pod takes (`PodSettings.principals_file`,
#: runtime/meshguard.py): the dev stack names its own to its pods.
POD_PRINCIPALS_FILE = f"{PREFIX}POD_PRINCIPALS_FILE"
#: The principals whose signed queries the scheduler answers on its market
#: (`SchedulerSettings.principals_file`, `swarm.kernel.queryguard`): the dev stack names its own.
SCHEDULER_PRINCIPALS_FILE = f"{PREFIX}SCHEDULER_PRINCIPALS_FILE"
#: The principals whose users' tokens the HTTP API takes (`GatewaySettings.principals_file`,
#: swarm/gateway/auth.py): the dev stack names its own to its API.
API_PRINCIPALS_FILE = f"{PREFIX}API_PRINCIPALS_FILE"
#: An external PostgreSQL (`Settings.database_url`).
DATABASE_URL = f"{PREFIX}DATABASE_URL"
#: The stack's data dir (`Settings.data_dir`), in the order they are read: the first set wins.
DATA_DIR = (f"{PREFIX}HOME", f"{PREFIX}DATA_DIR")
#: The data dir when none of `DATA_DIR` is set.
DEFAULT_DATA_DIR = ".swarm"
#: What a process logs, and how (`Settings.log_level`, `Settings.log_format`).
LOG_LEVEL = f"{PREFIX}LOG_LEVEL"
LOG_FORMAT = f"{PREFIX}LOG_FORMAT"


def nats_ca() -> Path | None:
    """`NATS_CA` from the environment."""
    value = os.environ.get(NATS_CA)
    return Path(value) if value else None


def nats_credentials() -> Path | None:
    """`NATS_CREDENTIALS` from the environment, for a client that has no `Settings` at hand."""
    value = os.environ.get(NATS_CREDENTIALS)
    return Path(value) if value else None


__all__ = [
    "API_PRINCIPALS_FILE",
    "DATABASE_URL",
    "DATA_DIR",
    "DEFAULT_DATA_DIR",
    "HIVE_PRINCIPALS_FILE",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "NATS_CA",
    "NATS_CREDENTIALS",
    "NATS_URL",
    "POD_ID",
    "POD_PRINCIPALS_FILE",
    "PREFIX",
    "SCHEDULER_PRINCIPALS_FILE",
    "nats_ca",
    "nats_credentials",
]
