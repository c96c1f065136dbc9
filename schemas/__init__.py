"""Swarm's public contracts: names, the CloudEvents envelope, and every command and event.

The exports load on first use (PEP 562): `from schemas import names` builds no pydantic model,
which is most of a CLI verb's start-up, while `from schemas import REGISTRY, Envelope` works as
it always did (the registry imports every contract module at its first lookup).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas import (
        commands,
        events,
        healing,
        machine,
        market,
        names,
        observer,
        specs,
        webhooks,
    )
    from schemas.build import command, event, subject_of
    from schemas.envelope import Envelope, Payload, RawEnvelope, new_id, utcnow
    from schemas.fields import FieldError
    from schemas.outcomes import CommandAccepted, CommandRejected, FieldErrorModel
    from schemas.registry import REGISTRY, DecodeError, Registry

#: Where each export is defined (a submodule is its own export).
_HOME = {
    **{
        m: f"schemas.{m}"
        for m in (
            "commands",
            "events",
            "healing",
            "machine",
            "market",
            "names",
            "observer",
            "specs",
            "webhooks",
        )
    },
    **dict.fromkeys(("command", "event", "subject_of"), "schemas.build"),
    **dict.fromkeys(("Envelope", "Payload", "RawEnvelope", "new_id", "utcnow"), "schemas.envelope"),
    **dict.fromkeys(("CommandAccepted", "CommandRejected", "FieldErrorModel"), "schemas.outcomes"),
    **dict.fromkeys(("REGISTRY", "DecodeError", "Registry"), "schemas.registry"),
    "FieldError": "schemas.fields",
}

__all__ = [
    "REGISTRY",
    "CommandAccepted",
    "CommandRejected",
    "DecodeError",
    "Envelope",
    "FieldError",
    "FieldErrorModel",
    "Payload",
    "RawEnvelope",
    "Registry",
    "command",
    "commands",
    "event",
    "events",
    "healing",
    "machine",
    "market",
    "names",
    "new_id",
    "observer",
    "specs",
    "subject_of",
    "utcnow",
    "webhooks",
]


if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module 'schemas' has no attribute {name!r}")
        module = importlib.import_module(home)
        value = module if home == f"schemas.{name}" else getattr(module, name)
        globals()[name] = value
        return value
