"""The event log as a front end holds it: one connect recipe, the data-plane client, the admin
client, and the typed errors they raise.

`connect_nats` opens the connection (a bounded first attempt, `CannotConnect` when the server
cannot be reached, `describe` to say why); `EventLog` appends, replays and asks over it;
`LogAdmin` inspects streams and keeps the module store (`ModuleStore`, `StoredObject`). Every
failure is one of `EventLogError`'s kinds, never nats-py's: `NotFound`, `NoResponders`,
`RequestTimeout`, `ConnectionLost`; a history scan that fails midway raises `ScanError`.

These are the kernel's own classes (`swarm.kernel.eventlog`, `.admin`, `.connection`,
`.logscan`), named here so that the CLI and the HTTP API import the client and `schemas` alone
(the front-ends contract in pyproject.toml): the kernel stays the one implementation, and a
front end reaching past the client is caught by `lint-imports`. Importing this module imports
nats-py; a CLI verb imports it inside the function that connects.
"""

from __future__ import annotations

from swarm.kernel.admin import LogAdmin, ModuleStore, StoredObject
from swarm.kernel.connection import CannotConnect, connect_nats, describe
from swarm.kernel.eventlog import (
    AppendRequest,
    ConnectionLost,
    Delivery,
    EventLog,
    EventLogError,
    Message,
    NoResponders,
    NotFound,
    RequestTimeout,
)
from swarm.kernel.logscan import ScanError

__all__ = [
    "AppendRequest",
    "CannotConnect",
    "ConnectionLost",
    "Delivery",
    "EventLog",
    "EventLogError",
    "LogAdmin",
    "Message",
    "ModuleStore",
    "NoResponders",
    "NotFound",
    "RequestTimeout",
    "ScanError",
    "StoredObject",
    "connect_nats",
    "describe",
]
