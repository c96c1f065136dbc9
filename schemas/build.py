"""Building envelopes: the one place that fills `type`, `dataschema` and causation links."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from schemas import names
from schemas.envelope import Envelope, Payload, new_id, utcnow

P = TypeVar("P", bound=Payload)


def command(
    payload: P,
    *,
    source: str,
    id: str | None = None,
    identity: str | None = None,
    correlationid: str | None = None,
    causationid: str | None = None,
    time: datetime | None = None,
) -> Envelope[P]:
    """Wrap a command payload; its subject is its type (`swarm.cmd.<domain>.<verb>`)."""
    return _wrap(payload, source, id, identity, correlationid, causationid, time, subject=None)


def event(
    payload: P,
    *,
    aggregate_id: str,
    source: str,
    cause: Envelope[Payload] | None = None,
    id: str | None = None,
    identity: str | None = None,
    time: datetime | None = None,
) -> Envelope[P]:
    """Wrap an event payload caused by `cause` (a command or another event).

    The correlation id is inherited from the cause (or is the cause's id when it starts a chain),
    so everything one command set off can be found by one id.
    """
    correlation = None
    causation = None
    if cause is not None:
        correlation = cause.correlationid or cause.id
        causation = cause.id
        identity = identity or cause.identity
    return _wrap(payload, source, id, identity, correlation, causation, time, subject=aggregate_id)


def subject_of(envelope: Envelope[Payload]) -> str:
    """The NATS subject an envelope is published on."""
    type_ = envelope.type
    if type_.startswith(names.COMMANDS_PREFIX + "."):
        return type_
    _, aggregate, event_name = type_.split(".", 2)
    if envelope.subject is None:
        raise ValueError(f"event {type_} needs subject (its aggregate id)")
    return names.event_subject(aggregate, envelope.subject, event_name)


def _wrap(
    payload: P,
    source: str,
    id: str | None,
    identity: str | None,
    correlationid: str | None,
    causationid: str | None,
    time: datetime | None,
    *,
    subject: str | None,
) -> Envelope[P]:
    cls = type(payload)
    if not cls.TYPE:
        raise TypeError(f"{cls.__name__} is not registered as a command or event")
    return Envelope[cls](  # type: ignore[valid-type]
        id=id or new_id(),
        source=source,
        type=cls.TYPE,
        time=time or utcnow(),
        dataschema=names.dataschema(cls.TYPE, cls.VERSION),
        subject=subject,
        correlationid=correlationid,
        causationid=causationid,
        identity=identity,
        data=payload,
    )
