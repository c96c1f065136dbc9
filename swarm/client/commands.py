"""Sending commands: build a CloudEvent, check it as the Hive will, publish it, await its outcome.

This is what any client does, and what both the CLI and the HTTP API do: put a CloudEvent on
`SWARM_COMMANDS` with its id as `Nats-Msg-Id`, then read the outcome the Hive writes to
`swarm.evt.command.<id>.accepted|rejected`. Nothing here prints; failures are `ClientError`s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas import REGISTRY, DecodeError, Envelope, Payload, Registry, names, new_id, utcnow
from swarm.client.errors import INVALID, NO_OUTCOME, UNAVAILABLE, ClientError, FieldProblem
from swarm.client.queries import read_floor
from swarm.client.text import parse_json
from swarm.domain.outcome import Rule
from swarm.kernel.eventlog import AppendFailed, AppendRequest, Delivery, EventLog
from swarm.kernel.seal import SealVerifier

__all__ = [
    "DEFAULT_SOURCE",
    "CausedEvent",
    "Issued",
    "NoOutcome",
    "Outcome",
    "Rejection",
    "Rule",
    "Sent",
    "apply_sets",
    "build_command",
    "caused_events",
    "closing",
    "encode",
    "find_outcome",
    "hive_verifier",
    "issue",
    "outcome_subjects",
    "parse_value",
    "prepare",
    "read_floor",
    "rejection_of",
    "send",
    "send_and_wait",
    "validate_command",
    "wait_for_outcome",
]

T = TypeVar("T")

#: CloudEvents `source` of commands whose builder names none.
DEFAULT_SOURCE = "swarm-cli"
#: How far before its outcome the events a command caused are looked for; beyond, ids only.
_LOOKUP_LIMIT = 10_000
_SUBJECT_FORBIDDEN = frozenset(" \t\r\n*>")
_INVALID_OUTCOME = names.outcome_subject(names.INVALID_COMMAND_ID, names.OUTCOME_REJECTED)


@dataclass(frozen=True, slots=True)
class Sent:
    """Where the command landed in `SWARM_COMMANDS`."""

    id: str
    type: str
    seq: int
    #: The id was published before (within the duplicate window); JetStream kept the first.
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """The outcome event of a command, as read from `SWARM_EVENTS`."""

    accepted: bool
    seq: int
    subject: str
    #: The outcome CloudEvent as JSON (`None` when its body was not a JSON object).
    body: dict[str, Any] | None
    #: The strictly decoded outcome, when this version of Swarm can decode it.
    envelope: Envelope[Any] | None


@dataclass(frozen=True, slots=True)
class CausedEvent:
    id: str
    seq: int | None = None
    type: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """A command that was sent and answered."""

    sent: Sent
    outcome: Outcome
    #: Events it caused, with their subjects (only when asked for).
    caused: tuple[CausedEvent, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.outcome.accepted

    def rejection(self) -> Rejection | None:
        """Why the Hive said no; None when it said yes."""
        return None if self.accepted else rejection_of(self.outcome)

    def deployed_agent(self) -> str | None:
        """The id of the agent a deploy created, read from the subject of the `agent.deployed`
        event it caused (when the caused events were asked for)."""
        from schemas.events import AgentDeployed

        for caused in self.caused:
            parts = names.parse_event_subject(caused.subject or "")
            if caused.type == AgentDeployed.TYPE and parts is not None:
                return parts[1]
        return None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the Hive said no, read leniently (not through the model), so a rejection from a newer
    Hive still shows."""

    reason: str
    #: A `Rule`'s value when the Hive knows it (compare with `Rule.NOT_FOUND` and the like);
    #: kept as text, so a rule added by a newer Hive still reads.
    rule: str | None
    errors: tuple[FieldProblem, ...]


# --- Building the command ------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A `--set` value: JSON when it parses (`3`, `true`, `["a"]`), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each `dotted.key=value` assigned, creating objects on the way."""
    result: dict[str, Any] = json.loads(json.dumps(data))  # deep copy of plain JSON data
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ClientError(
                f"--set {assignment!r}: expected key=value (dotted keys for nested fields)",
                code=INVALID,
            )
        target = result
        for i, part in enumerate(path[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ClientError(f"--set {assignment!r}: {where} is not an object", code=INVALID)
            target = child
        target[path[-1]] = parse_value(raw)
    return result


def build_command(
    document: Mapping[str, Any] | None,
    *,
    type_: str | None = None,
    data: str | None = None,
    sets: Sequence[str] = (),
    identity: str | None = None,
    source: str = DEFAULT_SOURCE,
    registry: Registry = REGISTRY,
) -> dict[str, Any]:
    """The full CloudEvent to send, from a document and/or flags; fills what is missing.

    What the document states is kept (a given `id` makes a re-send idempotent); `type_`, `data`
    and `sets` override it in that order.
    """
    event: dict[str, Any] = dict(document or {})
    if type_ is not None:
        if isinstance(event.get("type"), str) and event["type"] != type_:
            raise ClientError(
                f"TYPE {type_} differs from the document's type {event['type']}", code=INVALID
            )
        event["type"] = type_
    if data is not None:
        parsed = parse_json(data, "--data")
        if not isinstance(parsed, dict):
            raise ClientError("--data must be a JSON object", code=INVALID)
        event["data"] = parsed
    event.setdefault("data", {})
    if sets:
        if not isinstance(event["data"], dict):
            raise ClientError("--set needs data to be an object", code=INVALID)
        event["data"] = apply_sets(event["data"], sets)

    command_type = event.get("type")
    if not isinstance(command_type, str) or not command_type:
        raise ClientError(
            "no command type: pass TYPE (e.g. swarm.cmd.agent.deploy) or a document with 'type'",
            code=INVALID,
        )
    _check_command_type(command_type)

    event.setdefault("specversion", names.CLOUDEVENTS_SPECVERSION)
    event.setdefault("id", new_id())
    event.setdefault("source", source)
    event.setdefault("time", utcnow().isoformat())
    event.setdefault("datacontenttype", names.CONTENT_TYPE_JSON)
    if identity is not None:
        event.setdefault("identity", identity)
    entry = registry.get(command_type)
    if entry is not None and entry.kind == "command":
        event.setdefault("dataschema", names.dataschema(entry.type, entry.model.VERSION))
    if not isinstance(event["id"], str) or not event["id"] or _has_control(event["id"]):
        # Even unvalidated, the id travels in a header and an outcome subject.
        raise ClientError(
            f"id must be a non-empty single-line string, got {event['id']!r}", code=INVALID
        )
    return event


def _check_command_type(type_: str) -> None:
    # Checked even with --no-validate: the type is the subject, and only commands may be sent;
    # events are written by the Hive alone.
    if not type_.startswith(names.COMMANDS_PREFIX + "."):
        raise ClientError(
            f"{type_} is not a command type: commands are {names.COMMANDS_PREFIX}.<domain>.<verb>",
            code=INVALID,
            hint="only the Hive writes events; send the command that makes it write one",
        )
    if any(not token or _SUBJECT_FORBIDDEN & set(token) for token in type_.split(".")):
        raise ClientError(f"{type_!r} is not a valid subject", code=INVALID)


def _has_control(value: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def validate_command(event: Mapping[str, Any], registry: Registry = REGISTRY) -> None:
    """Decode `event` strictly as the Hive will; raises `ClientError` listing field errors."""
    try:
        registry.decode(encode(event), kind="command")
    except DecodeError as exc:
        unknown = any(e.type == "unknown_type" for e in exc.errors)
        problems = [] if unknown else [FieldProblem(e.loc, e.msg, e.type) for e in exc.errors]
        known = ", ".join(e.type for e in registry if e.kind == "command") or "none yet"
        raise ClientError(
            exc.reason,
            code=INVALID,
            errors=problems,
            hint=(
                f"known command types: {known}; --no-validate sends it anyway"
                if unknown
                else "fix the fields above, or pass --no-validate to let the server judge"
            ),
        ) from None


def encode(event: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: JSON text that is not UTF-8
        raise ClientError(
            f"the command holds text that is not valid Unicode ({exc.reason})", code=INVALID
        ) from None


# --- Sending and waiting -------------------------------------------------------------------------


async def send(log: EventLog, event: Mapping[str, Any]) -> Sent:
    """Append the command to `SWARM_COMMANDS`, deduplicated by its id."""
    request = AppendRequest(subject=event["type"], body=encode(event), msg_id=event["id"])
    try:
        appended = await log.append_raw(request)
    except AppendFailed as exc:
        raise ClientError(f"could not publish: {exc}", code=UNAVAILABLE) from None
    return Sent(event["id"], event["type"], appended.seq, appended.duplicate)


def outcome_subjects(command_id: str) -> list[str]:
    """Where the outcome of `command_id` can appear.

    Besides the command's own outcome subjects, the `_invalid` subject: a command the Hive cannot
    parse far enough is answered there, carrying the id it could read in `data.received`.
    """
    if command_id == names.INVALID_COMMAND_ID or not names.is_token(command_id):
        return [_INVALID_OUTCOME]
    return [names.outcome_wildcard(command_id), _INVALID_OUTCOME]


def hive_verifier(log: EventLog) -> SealVerifier | None:
    """The check for the Hive's seal, when the settings name the Hive's public key."""
    text = log.settings.hive_public_key
    if not text:
        return None
    try:
        return SealVerifier.from_text(text)
    except ValueError as exc:
        raise ClientError(
            f"SWARM_HIVE_PUBLIC_KEY is not the Hive's key: {exc}",
            code=INVALID,
            hint="`swarm status -o json` shows it as hive_public_key",
        ) from None


def _answers(
    delivery: Delivery,
    body: dict[str, Any] | None,
    command_id: str,
    seal: SealVerifier | None,
    command_seq: int | None = None,
) -> bool:
    """Whether this outcome answers `command_id`: on the shared `_invalid` subject it must name
    the id (or, for a body the Hive could not read an id from, the command's position), and with
    the Hive's key known it must carry the Hive's seal (anyone can write on NATS; an outcome the
    Hive did not write answers nothing)."""
    if delivery.subject == _INVALID_OUTCOME:
        received = _received(body)
        if received.get("id") != command_id and (
            command_seq is None or "id" in received or received.get("stream_seq") != command_seq
        ):
            return False
    return seal is None or seal.verify(delivery.data)


async def wait_for_outcome(
    log: EventLog,
    command_id: str,
    *,
    start_seq: int,
    within: float,
    registry: Registry = REGISTRY,
    command_seq: int | None = None,
) -> Outcome | None:
    """The first outcome for `command_id` at or after `start_seq`, or None after `within` s.

    `command_seq`, the command's position in SWARM_COMMANDS, also matches an answer on `_invalid`
    to a body the Hive could not read the id from.

    Reading from a sequence taken before the publish (rather than subscribing after it) is what
    makes this race-free: an outcome written at any moment after the publish is at or beyond it.
    Outcomes without the Hive's seal are skipped when its key is known (`hive_verifier`).
    """
    seal = hive_verifier(log)
    try:
        async with asyncio.timeout(within):
            replay = log.replay(
                names.STREAM_EVENTS,
                start_seq=start_seq,
                subjects=outcome_subjects(command_id),
                follow=True,
                idle_timeout=min(1.0, within),
            )
            async with closing(replay) as deliveries:
                async for delivery in deliveries:
                    body = _json_object(delivery.data)
                    if _answers(delivery, body, command_id, seal, command_seq):
                        return _outcome(delivery, body, registry)
    except TimeoutError:
        return None
    return None


async def find_outcome(
    log: EventLog, command_id: str, *, start_seq: int = 1, registry: Registry = REGISTRY
) -> Outcome | None:
    """The outcome of `command_id` if the log holds one now; None if not (yet)."""
    seal = hive_verifier(log)
    replay = log.replay(
        names.STREAM_EVENTS, start_seq=start_seq, subjects=outcome_subjects(command_id)
    )
    async with closing(replay) as deliveries:
        async for delivery in deliveries:
            body = _json_object(delivery.data)
            if _answers(delivery, body, command_id, seal):
                return _outcome(delivery, body, registry)
    return None


def _outcome(delivery: Delivery, body: dict[str, Any] | None, registry: Registry) -> Outcome:
    return Outcome(
        accepted=delivery.subject.endswith("." + names.OUTCOME_ACCEPTED),
        seq=delivery.stream_seq,
        subject=delivery.subject,
        body=body,
        envelope=_decode(delivery.data, registry),
    )


async def caused_events(log: EventLog, outcome: Outcome, *, start_seq: int) -> list[CausedEvent]:
    """The events an accepted command caused, looked up in the log just before its outcome.

    The Hive writes them together with the outcome, so they sit right before it; the search goes
    back at most `_LOOKUP_LIMIT` entries (a re-sent command may point far back in the log).
    """
    data = (outcome.body or {}).get("data")
    events = data.get("events") if isinstance(data, dict) else None
    ids = [i for i in events if isinstance(i, str)] if isinstance(events, list) else []
    if not ids:
        return []
    found: dict[str, CausedEvent] = {}
    wanted = set(ids)
    first = max(start_seq, outcome.seq - _LOOKUP_LIMIT, 1)
    replay = log.replay(names.STREAM_EVENTS, start_seq=first)
    async with closing(replay) as deliveries:
        async for delivery in deliveries:
            if delivery.stream_seq >= outcome.seq:
                break
            body = _json_object(delivery.data) or {}
            event_id, type_ = body.get("id"), body.get("type")
            if isinstance(event_id, str) and event_id in wanted:
                found[event_id] = CausedEvent(
                    event_id,
                    delivery.stream_seq,
                    type_ if isinstance(type_, str) else None,
                    delivery.subject,
                )
                if len(found) == len(wanted):
                    break
    return [found.get(i, CausedEvent(i)) for i in ids]


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _received(body: dict[str, Any] | None) -> dict[str, Any]:
    data = (body or {}).get("data")
    received = data.get("received") if isinstance(data, dict) else None
    return received if isinstance(received, dict) else {}


def _decode(raw: bytes, registry: Registry) -> Envelope[Any] | None:
    try:
        return registry.decode(raw, kind="event")
    except DecodeError:
        return None


# --- Commands of known types ---------------------------------------------------------------------


def prepare(
    payload: type[Payload],
    data: Mapping[str, Any],
    *,
    identity: str,
    source: str = DEFAULT_SOURCE,
) -> dict[str, Any]:
    """The command's CloudEvent, checked exactly as the Hive will decode it.

    Checked before connecting, so a mistake names its fields and nothing is sent. Field locations
    are relative to `data`, as the caller gave them.
    """
    event = build_command(
        {"type": payload.TYPE, "data": dict(data)}, identity=identity, source=source
    )
    try:
        REGISTRY.decode(encode(event), kind="command")
    except DecodeError as exc:
        raise ClientError(
            f"{exc.reason}: the values given do not make a valid command",
            code=INVALID,
            errors=[FieldProblem(e.loc.removeprefix("data."), e.msg, e.type) for e in exc.errors],
            hint="fix the fields above (in the spec file or the matching --options)",
        ) from None
    return event


async def issue(
    log: EventLog, event: Mapping[str, Any], *, within: float, with_caused: bool = False
) -> Issued:
    """Send `event` and wait for its outcome (`NO_OUTCOME` when none comes within `within` s)."""
    sent, issued = await send_and_wait(log, event, within=within, with_caused=with_caused)
    if issued is None:
        raise NoOutcome(sent, within)
    return issued


class NoOutcome(ClientError):
    """A command was sent and no outcome came within `within` s; it stays queued for the Hive,
    and `sent` says where (its outcome can be looked up later)."""

    def __init__(self, sent: Sent, within: float) -> None:
        super().__init__(
            f"no outcome for {sent.type} {sent.id} within {within:g}s",
            code=NO_OUTCOME,
            hint="is the Hive running? (`swarm status`); the command stays queued for it",
        )
        self.sent = sent
        self.within = within


async def send_and_wait(
    log: EventLog, event: Mapping[str, Any], *, within: float, with_caused: bool = False
) -> tuple[Sent, Issued | None]:
    """Send `event` and wait up to `within` s for its outcome; `None` if none came in time
    (the command stays queued, and its outcome can be looked up later)."""
    # Taken before the publish: the outcome cannot be written before the command exists.
    before = await log.last_sequence(names.STREAM_EVENTS)
    sent = await send(log, event)
    # A duplicate id was first published earlier, so its outcome may already be in the log.
    start = 1 if sent.duplicate else before + 1
    outcome = await wait_for_outcome(
        log, sent.id, start_seq=start, within=within, command_seq=sent.seq
    )
    if outcome is None:
        return sent, None
    caused: list[CausedEvent] = []
    if with_caused and outcome.accepted:
        caused = await caused_events(log, outcome, start_seq=start)
    return sent, Issued(sent, outcome, tuple(caused))


def rejection_of(outcome: Outcome) -> Rejection:
    """The reason, rule and field errors of a rejected outcome."""
    raw = (outcome.body or {}).get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    rule = data.get("rule")
    errors = data.get("errors")
    problems = tuple(
        FieldProblem(str(e.get("loc", "")), str(e.get("msg", "")), str(e.get("type", "")))
        for e in (errors if isinstance(errors, list) else [])
        if isinstance(e, dict)
    )
    return Rejection(
        reason=str(data.get("reason") or "(no reason given)"),
        rule=str(rule) if rule else None,
        errors=problems,
    )


@asynccontextmanager
async def closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """`contextlib.aclosing` for an iterator typed as `AsyncIterator` (like `EventLog.replay`).

    Leaving a replay early must close it at once, so its ephemeral consumer is deleted now rather
    than whenever the generator happens to be collected.
    """
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
