"""Swarm's public contracts: names, the CloudEvents envelope, and every command and event."""

from schemas import commands, events, healing, machine, market, names, observer, specs, webhooks
from schemas.build import command, event, subject_of
from schemas.envelope import Envelope, Payload, RawEnvelope, new_id, utcnow
from schemas.outcomes import CommandAccepted, CommandRejected, FieldErrorModel
from schemas.registry import REGISTRY, DecodeError, FieldError, Registry

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
