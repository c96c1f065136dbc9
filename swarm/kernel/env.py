"""The names of the `SWARM_*` environment variables that say where a stack is.

`swarm.kernel.settings` reads every variable through pydantic-settings; the CLI reads these few
straight from the environment first, so that a verb finds its stack (or says there is none)
without importing pydantic (`swarm.cli.connect.locate`). Standard library only.
"""

from __future__ import annotations

#: Every setting is read from a variable with this prefix (`Settings.model_config`).
PREFIX = "SWARM_"
#: An external NATS server (`Settings.nats_url`).
NATS_URL = f"{PREFIX}NATS_URL"
#: An external PostgreSQL (`Settings.database_url`).
DATABASE_URL = f"{PREFIX}DATABASE_URL"
#: The stack's data dir (`Settings.data_dir`), in the order they are read: the first set wins.
DATA_DIR = (f"{PREFIX}HOME", f"{PREFIX}DATA_DIR")
#: The data dir when none of `DATA_DIR` is set.
DEFAULT_DATA_DIR = ".swarm"

__all__ = ["DATABASE_URL", "DATA_DIR", "DEFAULT_DATA_DIR", "NATS_URL", "PREFIX"]
