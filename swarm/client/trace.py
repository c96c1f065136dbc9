"""The causation tree of a command: everything it set off, across components, with timings.

Every command and event carries `correlationid` (the command that started the chain) and
`causationid` (what directly caused it): the Hive's events name the command they decide, the
scheduler's proposals name the `replica_requested` they place, the pods' reports name the
`replica_scheduled` that put the replica there. So the chain is read back from the two streams:

1. The root command is found without a scan when possible: its outcome sits on
   `swarm.evt.command.<id>.*` (a direct lookup), and an event id written by the Hive is
   `<command id>-<n>`. Other ids fall back to a scan of the events stream.
2. Both streams are read from a little before that outcome up to `window` seconds after it
   (JetStream seeks by time), keeping what carries the correlation id.
3. Entries hang under their cause; offsets are from the root command's time.

Used by `swarm trace` (which draws it) and the HTTP API's `GET /v1/traces/{id}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schemas import names
from swarm.client.commands import closing
from swarm.client.errors import FAILED, ClientError
from swarm.client.text import printable
from swarm.kernel.eventlog import Delivery, EventLog, NotFound

__all__ = ["Node", "TraceNotFound", "collect", "decided_ms", "offset_ms"]

#: Commands are sent before their outcome; this much earlier is searched for the root command.
_BEFORE = timedelta(seconds=30)
_SUMMARY_LIMIT = 120


class TraceNotFound(ClientError):
    """No command or event with the id asked about is on the log."""

    def __init__(self, wanted: str) -> None:
        super().__init__(
            f"no command or event with id {wanted} on the log",
            code=FAILED,
            hint="`swarm timeline` lists ids; `swarm publish` prints the id it sends",
        )
        self.wanted = wanted


@dataclass(slots=True)
class Node:
    id: str
    type: str
    kind: str  # "command", "event" or "outcome"
    time: datetime | None
    subject: str
    source: str
    cause: str | None
    correlation: str | None
    summary: str
    seq: int
    children: list[Node] = field(default_factory=list)

    def as_json(self, root_time: datetime | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "kind": self.kind,
            "time": self.time.isoformat() if self.time else None,
            "offset_ms": offset_ms(self.time, root_time),
            "source": self.source,
            "subject": self.subject,
            "seq": self.seq,
            "causationid": self.cause,
            "summary": self.summary,
            "decided_ms": decided_ms(self),
            "children": [c.as_json(root_time) for c in self.children],
        }


async def collect(
    log: EventLog,
    wanted: str,
    *,
    window: float = 300.0,
    on_note: Callable[[str], None] | None = None,
) -> list[Node]:
    """The trees of what `wanted` (a command or event id) belongs to; the root command first.

    `on_note` hears when the whole events stream has to be scanned for the id (slow on a long log).
    """
    found = await _root_command(log, wanted, on_note)
    if found is None:
        raise TraceNotFound(wanted)
    correlation, anchor = found
    start = anchor - _BEFORE
    end = anchor + timedelta(seconds=window)
    nodes: dict[str, Node] = {}
    for stream in (names.STREAM_COMMANDS, names.STREAM_EVENTS):
        replay = log.replay(stream, start_time=start, idle_timeout=0.25)
        async with closing(replay) as deliveries:
            async for delivery in deliveries:
                if delivery.timestamp > end:
                    break
                node = _node(delivery, stream)
                if node is not None and correlation in (node.id, node.correlation):
                    nodes[node.id] = node
    return _tree(nodes, correlation)


async def _root_command(
    log: EventLog, wanted: str, on_note: Callable[[str], None] | None
) -> tuple[str, datetime] | None:
    """(correlation id, time of the root's outcome) for a command or event id."""
    candidates = [wanted]
    head, _, tail = wanted.rpartition("-")
    if head and tail.isdigit():
        candidates.append(head)  # the Hive names a command's events `<command id>-<n>`
    for candidate in candidates:
        if not names.is_token(candidate):
            continue
        try:
            msg = await log.last_message(names.STREAM_EVENTS, names.outcome_wildcard(candidate))
        except NotFound:
            continue
        body = _json(msg.data)
        stamp = _time(body.get("time"))
        if stamp is None:
            continue
        correlation = str(body.get("correlationid") or candidate)
        if correlation != candidate and names.is_token(correlation):
            # Part of a longer chain (e.g. a scheduler proposal): anchor on its first command.
            return await _root_command(log, correlation, on_note) or (correlation, stamp)
        return correlation, stamp
    if on_note is not None:
        on_note(f"searching the event log for {wanted}")
    replay = log.replay(names.STREAM_EVENTS, idle_timeout=0.25)
    async with closing(replay) as deliveries:
        async for delivery in deliveries:
            if wanted.encode() not in delivery.data:
                continue
            body = _json(delivery.data)
            if body.get("id") == wanted:
                correlation = str(body.get("correlationid") or wanted)
                if correlation != wanted:
                    return await _root_command(log, correlation, on_note) or (
                        correlation,
                        delivery.timestamp,
                    )
                return correlation, delivery.timestamp
    return None


def _node(delivery: Delivery, stream: str) -> Node | None:
    body = _json(delivery.data)
    if not isinstance(body.get("id"), str):
        return None
    data = body.get("data")
    kind = "command" if stream == names.STREAM_COMMANDS else "event"
    parts = names.parse_event_subject(delivery.subject)
    if parts is not None and parts[0] == names.OUTCOME_AGGREGATE:
        kind = "outcome"
    return Node(
        id=body["id"],
        type=str(body.get("type") or "?"),
        kind=kind,
        time=_time(body.get("time")) or delivery.timestamp,
        subject=delivery.subject,
        source=str(body.get("source") or "?"),
        cause=body.get("causationid") if isinstance(body.get("causationid"), str) else None,
        correlation=(
            body.get("correlationid") if isinstance(body.get("correlationid"), str) else None
        ),
        summary=_summary(data if isinstance(data, dict) else {}),
        seq=delivery.stream_seq,
    )


def _tree(nodes: dict[str, Node], correlation: str) -> list[Node]:
    roots: list[Node] = []
    ordered = sorted(nodes.values(), key=lambda n: (n.time or datetime.max, n.seq))
    for node in ordered:
        parent = nodes.get(node.cause) if node.cause and node.cause != node.id else None
        if parent is not None:
            parent.children.append(node)
        else:
            roots.append(node)
    roots.sort(key=lambda n: (n.id != correlation, n.time or datetime.max))
    return roots


def decided_ms(node: Node) -> float | None:
    """For a command: time from the command to its outcome."""
    if node.kind != "command":
        return None
    outcome = next((c for c in node.children if c.kind == "outcome"), None)
    if outcome is None:
        return None
    return offset_ms(outcome.time, node.time)


def _summary(data: dict[str, Any]) -> str:
    bits = []
    for key in ("name", "replica_id", "pod_id", "status", "version", "reason", "rule"):
        value = data.get(key)
        if isinstance(value, str | int) and value != "":
            bits.append(f"{key}={value}")
    text = " ".join(bits)
    return printable(text[:_SUMMARY_LIMIT])


def offset_ms(moment: datetime | None, root: datetime | None) -> float | None:
    if moment is None or root is None:
        return None
    return round((moment - root).total_seconds() * 1000, 1)


def _json(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
