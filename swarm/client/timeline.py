"""Reading the log — events, and commands on request — filtered, in order: what `swarm timeline`
lists and exports, kept apart from how it is printed so any front end can read the log alike.

History is read in batches through `swarm.kernel.logscan.scan` (following new entries through
`EventLog.replay`), and as much filtering as possible is done by the
server (a consumer subject filter, a start sequence or time); every filter is also applied here,
so the server-side part is purely an optimisation and never changes what is read. Entries whose
bodies cannot be decoded are read too, with why (`LogEntry.error`): the log is the audit trail,
and hiding what does not parse would hide exactly what someone needs to look at.

An entry's time is its own: the CloudEvents `time` it carries (set by the Hive when it decided an
event, by the sender for a command), which `swarm timeline export`/`import` keep byte for byte,
so a time range or `--at TIME` selects the same entries on a stack a log was imported into as on
the stack that wrote it. When JetStream stored the entry (the import's time, on such a stack) is
only a fallback, for entries that carry no readable time, and shown as `stored`.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from swarm.client.errors import INVALID, ClientError
from swarm.client.text import parse_time, printable

if TYPE_CHECKING:
    # Imported where used: the CLI imports this module to register `swarm timeline`
    # (tests/test_cli_start.py).
    from schemas import RawEnvelope
    from swarm.kernel.eventlog import Delivery, EventLog

__all__ = [
    "CLOCK_MARGIN",
    "Filters",
    "LogEntry",
    "check_pattern",
    "entry_time",
    "history",
    "interleave",
    "intersect",
    "live",
    "merge_by_time",
    "own_time",
    "read",
    "stream_roots",
    "subject_matches",
    "summarize",
]

_GLOB_CHARS = frozenset("*?[]")
_SUMMARY_LIMIT = 160
#: How far a time range reads beyond its ends by store time and by entries' own times. Entries
#: carry their writer's clock, which may differ from the NATS server's, and a log imported from
#: another stack was stored long after its entries' times; this margin keeps the server-side start
#: and the early stop from cutting off entries whose own time is in range, as long as every writer's
#: clock was within half of it of the server that first stored the log.
CLOCK_MARGIN = timedelta(minutes=10)


# --- Subjects ------------------------------------------------------------------------------------


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a final `>` is one or more."""
    return intersect(pattern, subject) == subject


def intersect(a: str, b: str) -> str | None:
    """The subject pattern matching exactly what both `a` and `b` match, or None if nothing does.

    Used to narrow a user's `--subject` to a stream's subject space, so the consumer filter the
    server gets is always valid for that stream and as tight as possible.
    """
    left, right = a.split("."), b.split(".")
    out: list[str] = []
    for i in range(max(len(left), len(right))):
        x = left[i] if i < len(left) else None
        y = right[i] if i < len(right) else None
        if x == ">":
            out.extend(right[i:] if y is not None else [])
            return ".".join(out) if y is not None else None
        if y == ">":
            out.extend(left[i:] if x is not None else [])
            return ".".join(out) if x is not None else None
        if x is None or y is None:
            return None
        if x == "*":
            out.append(y)
        elif y in ("*", x):
            out.append(x)
        else:
            return None
    return ".".join(out)


def check_pattern(pattern: str) -> str:
    """`pattern` when it is a valid subject filter; an INVALID `ClientError` naming the problem
    otherwise."""
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        bad = (
            not token
            or any(ch.isspace() for ch in token)
            or (token != "*" and "*" in token)
            or (">" in token and (token != ">" or i != len(tokens) - 1))
        )
        if bad:
            raise ClientError(
                f"{pattern!r} is not a subject filter",
                code=INVALID,
                hint="dot-separated tokens; * stands for one token, a final > for the rest",
            )
    return pattern


def _token(part: str) -> str:
    """A glob token as a subject filter token: `*` unless it is a plain literal.

    Widening is always safe: the glob itself is applied to every entry read.
    """
    literal = part and not (_GLOB_CHARS & set(part)) and not any(c.isspace() for c in part)
    return part if literal and ">" not in part else "*"


# --- Filters -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """What to read of the log (`swarm timeline`'s and `export`'s filters). `None` or empty
    means "any"."""

    subjects: tuple[str, ...] = ()
    type_glob: str | None = None
    aggregate: str | None = None
    aggregate_id: str | None = None
    correlation: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_seq: int | None = None
    to_seq: int | None = None

    @classmethod
    def given(
        cls,
        *,
        subjects: Sequence[str] | None,
        since: str | None,
        until: str | None,
        type_glob: str | None = None,
        aggregate: str | None = None,
        aggregate_id: str | None = None,
        correlation: str | None = None,
        from_seq: int | None = None,
        to_seq: int | None = None,
    ) -> Filters:
        """The filters as a person gives them (`swarm timeline`, `export`): each subject pattern
        checked (`check_pattern`), the times in RFC 3339 or as an age (`parse_time`)."""
        return cls(
            subjects=tuple(check_pattern(p) for p in subjects or ()),
            type_glob=type_glob,
            aggregate=aggregate,
            aggregate_id=aggregate_id,
            correlation=correlation,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            from_seq=from_seq,
            to_seq=to_seq,
        )

    def server_subjects(self, stream: str) -> list[str] | None:
        """Consumer filter subjects for `stream`; `[]` reads all, None means nothing can match."""
        from schemas import names

        root = stream_roots()[stream]
        narrowed = root
        if stream == names.STREAM_EVENTS:
            # swarm.evt.<aggregate>.<id>.<event>, with the type swarm.<aggregate>.<event>.
            agg, evt, first = "*", "*", "*"
            if self.type_glob is not None:
                parts = self.type_glob.split(".")
                if len(parts) == 3:
                    first, agg, evt = (_token(p) for p in parts)
            if first not in ("*", names.EVENT_TYPE_PREFIX):
                return None
            agg_token = _merge_token(agg, self.aggregate)
            id_token = _merge_token("*", self.aggregate_id)
            if agg_token is None or id_token is None:
                return None
            if (agg_token, id_token, evt) != ("*", "*", "*"):
                # Only when something is pinned: a bare root also shows entries on malformed
                # subjects, which the log may hold and an audit must not hide.
                narrowed = f"{names.EVENTS_PREFIX}.{agg_token}.{id_token}.{evt}"
        else:
            # A command is its own aggregate, `command/<its id>`, matching its outcome's subject.
            if self.aggregate not in (None, names.OUTCOME_AGGREGATE):
                return None
            if self.type_glob is not None and len(self.type_glob.split(".")) == 4:
                # A command's type is its subject.
                typed = intersect(".".join(_token(p) for p in self.type_glob.split(".")), root)
                if typed is None:
                    return None
                narrowed = typed
        candidates = [intersect(s, narrowed) for s in self.subjects or (narrowed,)]
        filters = _without_covered([c for c in candidates if c is not None])
        if not filters:
            return None
        if any(intersect(a, b) for i, a in enumerate(filters) for b in filters[i + 1 :]):
            # JetStream refuses overlapping filters on one consumer; read wider, filter here.
            return [] if narrowed == root else [narrowed]
        return [] if filters == [root] else filters

    def matches(self, entry: LogEntry) -> bool:
        if self.subjects and not any(subject_matches(p, entry.subject) for p in self.subjects):
            return False
        if self.to_seq is not None and entry.seq > self.to_seq:
            return False
        if self.from_seq is not None and entry.seq < self.from_seq:
            return False
        if self.since is not None and entry.time < self.since:
            return False
        if self.until is not None and entry.time > self.until:
            return False
        envelope = entry.envelope
        if self.type_glob is not None and (
            envelope is None or not fnmatch.fnmatchcase(envelope.type, self.type_glob)
        ):
            return False
        if self.aggregate is not None or self.aggregate_id is not None:
            aggregate = entry.aggregate
            if aggregate is None:
                return False
            if self.aggregate is not None and aggregate[0] != self.aggregate:
                return False
            if self.aggregate_id is not None and aggregate[1] != self.aggregate_id:
                return False
        if self.correlation is not None:
            if envelope is None:
                return False
            related = {envelope.id, envelope.correlationid, envelope.causationid}
            if self.correlation not in related:
                return False
        return True

    def past_end(self, entry: LogEntry) -> bool:
        """True once nothing later in this stream can match (ends a read early).

        By time only past `CLOCK_MARGIN`: entries' own times follow the log's order only as
        closely as their writers' clocks agreed.
        """
        if self.to_seq is not None and entry.seq > self.to_seq:
            return True
        return self.until is not None and entry.time - CLOCK_MARGIN > self.until

    def start_time(self) -> datetime | None:
        """Where the server may start reading by store time for `since` (see `CLOCK_MARGIN`)."""
        if self.since is None:
            return None
        try:
            return self.since - CLOCK_MARGIN
        except OverflowError:  # --since at the beginning of time: read from the start
            return None


@functools.cache
def stream_roots() -> dict[str, str]:
    """Each stream's whole subject space."""
    from schemas import names

    return {names.STREAM_EVENTS: names.EVENTS_ALL, names.STREAM_COMMANDS: names.COMMANDS_ALL}


def _merge_token(token: str | None, wanted: str | None) -> str | None:
    """`token` narrowed by an exact `wanted` value; None when they cannot both hold."""
    if wanted is None:
        return token
    if token in ("*", wanted):
        return wanted
    return None


def _without_covered(patterns: list[str]) -> list[str]:
    """Drop patterns another one already covers (JetStream refuses overlapping filters)."""
    unique = list(dict.fromkeys(patterns))
    return [p for p in unique if not any(q != p and intersect(p, q) == p for q in unique)]


# --- Entries -------------------------------------------------------------------------------------


@dataclass(slots=True)
class LogEntry:
    """One message of the log, decoded as far as it goes.

    Treated as immutable, but not `frozen`: a frozen dataclass sets each field through
    `object.__setattr__`, which cost ~1.5 us of the ~14 us of CPU a replayed entry takes
    (bench/surfaces.py).
    """

    stream: str
    seq: int
    subject: str
    #: When it happened, by its own CloudEvents `time` (what --since/--until compare against);
    #: when it has none, when it was stored (`entry_time`).
    time: datetime
    #: When JetStream stored it on this stack (for an imported log: when it was imported).
    stored: datetime
    #: The envelope, read leniently; None when the body is not a CloudEvent.
    envelope: RawEnvelope | None
    #: Why the body could not be decoded, when it could not.
    error: str | None = None
    raw: bytes = field(default=b"", repr=False)

    @classmethod
    def of(cls, stream: str, delivery: Delivery) -> LogEntry:
        envelope, error = _decode(delivery.data)
        return cls(
            stream=stream,
            seq=delivery.stream_seq,
            subject=delivery.subject,
            time=entry_time(envelope, delivery.timestamp),
            stored=delivery.timestamp,
            envelope=envelope,
            error=error,
            raw=delivery.data,
        )

    @property
    def body(self) -> Any:
        """The body as JSON, when it is JSON (parsed on demand: only JSON output needs it)."""
        try:
            return json.loads(self.raw)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def aggregate(self) -> tuple[str, str] | None:
        """(aggregate, id): from the subject for events; a command is `command/<its id>`."""
        from schemas import names

        parsed = names.parse_event_subject(self.subject)
        if parsed is not None:
            return parsed[0], parsed[1]
        if self.stream == names.STREAM_COMMANDS and self.envelope is not None:
            return names.OUTCOME_AGGREGATE, self.envelope.id
        return None

    def as_json(self) -> dict[str, Any]:
        """The `-o json|jsonl` shape: {seq, stream, subject, time, stored, event} (+ raw/error
        when undecodable)."""
        body = self.body
        item: dict[str, Any] = {
            "seq": self.seq,
            "stream": self.stream,
            "subject": self.subject,
            "time": self.time.isoformat(),
            "stored": self.stored.isoformat(),
            "event": body if isinstance(body, dict) else None,
        }
        if self.error is not None:
            item["error"] = self.error
            if not isinstance(body, dict):
                item["raw"] = self.raw.decode("utf-8", errors="replace")
        return item


def entry_time(envelope: RawEnvelope | None, stored: datetime) -> datetime:
    """When an entry happened: its CloudEvents `time` (no offset means UTC), else `stored`."""
    moment = envelope.time if envelope is not None else None
    if moment is None:
        return stored
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def own_time(raw: bytes) -> datetime | None:
    """The CloudEvents `time` of a stored body, or None when it carries no readable one."""
    envelope, _ = _decode(raw)
    if envelope is None or envelope.time is None:
        return None
    return entry_time(envelope, envelope.time)


def _decode(raw: bytes) -> tuple[RawEnvelope | None, str | None]:
    """(envelope, error) for a message body, as far as it decodes."""
    from schemas import RawEnvelope

    try:
        # One pass in pydantic-core for the usual case; only failures are parsed again below,
        # to say precisely what is wrong. (pydantic's ValidationError is a ValueError.)
        return RawEnvelope.model_validate_json(raw), None
    except ValueError:
        pass
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(body, dict):
        return None, "not a JSON object"
    import pydantic

    try:
        return RawEnvelope.model_validate(body), None
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        return None, f"not a CloudEvent: {loc}: {first['msg']}"


def summarize(data: Any, limit: int = _SUMMARY_LIMIT) -> str:
    """`key=value …` for a data object, compact JSON otherwise, cut to `limit` characters."""
    if isinstance(data, dict):
        text = " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
            for k, v in data.items()
        )
    elif data is None:
        text = ""
    else:
        text = json.dumps(data, separators=(",", ":"))
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- Reading -------------------------------------------------------------------------------------


async def history(
    log: EventLog, stream: str, filters: Filters, *, end: int
) -> AsyncGenerator[LogEntry, None]:
    """Matching entries of `stream` up to sequence `end`, in order (read in batches by `scan`)."""
    from swarm.client.commands import closing
    from swarm.kernel.logscan import scan

    subjects = filters.server_subjects(stream)
    if subjects is None or end == 0:
        return
    start_seq = filters.from_seq
    start_time = filters.start_time() if start_seq is None else None
    if start_seq is not None and start_seq > end:
        return
    batches = scan(
        log,
        stream,
        start_seq=start_seq,
        start_time=start_time,
        subjects=subjects,
        end=min(end, filters.to_seq or end),
    )
    async with (
        closing(batches) as reading,
        aclosing(_each(reading)) as deliveries,
        aclosing(_matching(stream, deliveries, filters)) as found,
    ):
        async for entry in found:
            yield entry


async def live(
    log: EventLog, stream: str, filters: Filters, *, after: int
) -> AsyncGenerator[LogEntry, None]:
    """Matching entries appended to `stream` after sequence `after`, as they come."""
    from swarm.client.commands import closing

    subjects = filters.server_subjects(stream)
    if subjects is None:
        return
    start = max(after + 1, filters.from_seq or 0)
    replay = log.replay(stream, start_seq=start, subjects=subjects, follow=True)
    async with (
        closing(replay) as deliveries,
        aclosing(_matching(stream, deliveries, filters)) as found,
    ):
        async for entry in found:
            yield entry


async def _each(batches: AsyncIterator[Sequence[Delivery]]) -> AsyncGenerator[Delivery, None]:
    async for batch in batches:
        for delivery in batch:
            yield delivery


async def _matching(
    stream: str, deliveries: AsyncIterator[Delivery], filters: Filters
) -> AsyncGenerator[LogEntry, None]:
    """The entries of `deliveries` that `filters` match, up to the first past their end."""
    async for delivery in deliveries:
        entry = LogEntry.of(stream, delivery)
        if filters.past_end(entry):
            return
        if filters.matches(entry):
            yield entry


async def merge_by_time(
    sources: Sequence[AsyncIterator[LogEntry]],
) -> AsyncGenerator[LogEntry, None]:
    """Interleave finite, individually ordered reads by each entry's own time."""
    heads: list[tuple[LogEntry, int]] = []
    for index, source in enumerate(sources):
        first = await anext(source, None)
        if first is not None:
            heads.append((first, index))
    while heads:
        heads.sort(key=lambda head: (head[0].time, head[0].stream, head[0].seq))
        entry, index = heads.pop(0)
        yield entry
        following = await anext(sources[index], None)
        if following is not None:
            heads.append((following, index))


@dataclass(frozen=True, slots=True)
class _Ended:
    error: BaseException | None = None


async def interleave(
    sources: Sequence[AsyncIterator[LogEntry]],
) -> AsyncGenerator[LogEntry, None]:
    """Entries from several endless reads in arrival order (used by `--follow --all`)."""
    import asyncio

    from swarm.kernel.tasks import cancel_and_wait

    queue: asyncio.Queue[LogEntry | _Ended] = asyncio.Queue(maxsize=1000)

    async def pump(source: AsyncIterator[LogEntry]) -> None:
        try:
            async for entry in source:
                await queue.put(entry)
        except Exception as exc:  # handed to the reader, which re-raises it
            await queue.put(_Ended(exc))
        else:
            await queue.put(_Ended())

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if isinstance(item, _Ended):
                if item.error is not None:
                    raise item.error
                running -= 1
                continue
            yield item
    finally:
        await cancel_and_wait(tasks)


async def read(
    log: EventLog, streams: Sequence[str], filters: Filters, *, follow: bool
) -> AsyncGenerator[LogEntry, None]:
    """Everything matching in `streams`: the history merged by time, then (with `follow`) live.

    The live part starts right after the last sequence each stream had when the history was
    read, so nothing written in between is lost or shown twice.
    """
    ends = {stream: await log.last_sequence(stream) for stream in streams}
    past = [history(log, stream, filters, end=ends[stream]) for stream in streams]
    try:
        async with aclosing(merge_by_time(past)) as entries:
            async for entry in entries:
                yield entry
    finally:
        # merge_by_time only advances its sources; closing them (and their consumers) is ours.
        for source in past:
            await source.aclose()
    if not follow:
        return
    sources = [live(log, stream, filters, after=ends[stream]) for stream in streams]
    reader = sources[0] if len(sources) == 1 else interleave(sources)
    try:
        async with aclosing(reader) as entries:
            async for entry in entries:
                yield entry
    finally:
        for source in sources:
            await source.aclose()
