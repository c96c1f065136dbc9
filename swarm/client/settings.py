"""A front end's settings: `Settings`, read from the `SWARM_*` variables, and `load`, which
reads a settings class and says in one line which variable is wrong and why.

The kernel's (`swarm.kernel.settings`), named here so that the CLI and the HTTP API import the
client alone. Importing this module imports pydantic-settings (~55 ms): the CLI does it only
where a verb needs its settings (`swarm.cli.connect.load_settings`); what it needs before them is
in `swarm.client.env`.
"""

from __future__ import annotations

from swarm.kernel.settings import Settings, load

__all__ = ["Settings", "load"]
