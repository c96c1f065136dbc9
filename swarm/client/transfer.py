"""Export and import: move a log, or part of one, to another stack (`swarm timeline export` and
`import` are this, with files and progress lines).

The file is a CloudEvents JSON batch (`application/cloudevents-batch+json`): a JSON array of
structured CloudEvents, each carrying three extension attributes that say where it was logged
(`swarmstream`, `swarmsubject`, and `swarmseq`, the source sequence, for reference). Events come
first, then commands, each stream in its own order. Import into a stack whose Hive is stopped
(start it afterwards: it folds the imported log and finds every command answered). Events go in
first so that a Hive that does run meanwhile finds a command's outcome before the command and
writes nothing for it; the exception is a command whose id could not be read at all, which such a
Hive answers again (its answer is addressed by sequence, not by id, so nothing can dedupe it).

Import keeps what makes the log the log: subjects, ids and order. It is idempotent beyond
JetStream's duplicate window, because it does not rely on that window: a target stream that
already holds the start of the import (by event id, in order) gets only the rest, and one that
holds the whole import gets nothing. A target holding anything else is a conflict and is refused;
with `force` (`--force`) import appends the events it does not hold yet after what it has, which
changes their sequence numbers (so a Hive there folds to a different state than the source's).
Each batch is appended atomically and states the stream position it expects, so a concurrent
writer on the target makes the import stop with an error rather than interleave.

Times travel with the entries: each keeps its CloudEvents `time` as written, and every time in
`swarm timeline` (listing, `--since`/`--until`, `--at`, `diff`) is that time, not when JetStream
stored the entry, so the target answers a question about a time as the source does. JetStream's
store time on the target is the import's (`stored` in `swarm timeline -o json`), and import says
which source sequences and which span of time it added.

Entries of the log that are not CloudEvents (a foreign writer's bytes, a malformed command) are
exported too, as a CloudEvent of type `org.swarm.timeline.raw` whose `data_base64` holds the
stored bytes; import appends those bytes unchanged. Nothing is lost, so sequence numbers (which
the Hive's state records) come out the same on the target.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from swarm.client.errors import FAILED, INVALID, ClientError
from swarm.client.text import parse_json
from swarm.client.timeline import (
    Filters,
    LogEntry,
    check_pattern,
    history,
    own_time,
    stream_roots,
    subject_matches,
)

if TYPE_CHECKING:
    # Imported where used: every `swarm` call registers these verbs (tests/test_cli_start.py).
    from swarm.kernel.eventlog import EventLog

__all__ = [
    "ExportCounts",
    "ImportCounts",
    "Item",
    "entry_key",
    "export",
    "exported",
    "import_stream",
    "parse_batch",
    "streams_in_order",
]


@functools.cache
def streams_in_order() -> tuple[str, ...]:
    """Import order: events before commands (see the module docstring)."""
    from schemas import names

    return (names.STREAM_EVENTS, names.STREAM_COMMANDS)


@functools.cache
def _attrs() -> tuple[str, ...]:
    from schemas import names

    return (names.EXPORT_ATTR_STREAM, names.EXPORT_ATTR_SUBJECT, names.EXPORT_ATTR_SEQ)


# --- Export --------------------------------------------------------------------------------------


def exported(entry: LogEntry) -> dict[str, Any]:
    """The entry as a structured CloudEvent with where it was logged.

    An entry that is not a CloudEvent import could append as it is (not one at all, an id that
    cannot be a message id, attributes that clash with ours) travels wrapped, byte for byte.
    """
    from schemas import names

    where = {
        names.EXPORT_ATTR_STREAM: entry.stream,
        names.EXPORT_ATTR_SUBJECT: entry.subject,
        names.EXPORT_ATTR_SEQ: entry.seq,
    }
    body = entry.body
    if (
        entry.envelope is not None
        and isinstance(body, dict)
        and names.is_token(entry.envelope.id)
        and entry.envelope.type != names.EXPORT_RAW_TYPE
        and not any(attr in body for attr in _attrs())
    ):
        return {**body, **where}
    return {
        "specversion": names.CLOUDEVENTS_SPECVERSION,
        "id": f"raw-{entry.stream}-{entry.seq}",
        "source": "swarm-timeline-export",
        "type": names.EXPORT_RAW_TYPE,
        "datacontenttype": "application/octet-stream",
        "data_base64": base64.b64encode(entry.raw).decode(),
        **where,
    }


@dataclass(slots=True)
class ExportCounts:
    written: int = 0
    #: (stream, sequence) of entries that travel wrapped because they are not CloudEvents.
    wrapped: list[tuple[str, int]] = field(default_factory=list)


async def export(
    log: EventLog, streams: Sequence[str], filters: Filters, out: IO[str]
) -> ExportCounts:
    """Write the matching entries of `streams` to `out` as one JSON array, streaming."""
    from schemas import names

    counts = ExportCounts()
    out.write("[")
    for stream in streams_in_order():
        if stream not in streams:
            continue
        end = await log.last_sequence(stream)
        async with aclosing(history(log, stream, filters, end=end)) as entries:
            async for entry in entries:
                item = exported(entry)
                if item["type"] == names.EXPORT_RAW_TYPE:
                    counts.wrapped.append((stream, entry.seq))
                out.write(("\n  " if counts.written == 0 else ",\n  ") + _compact(item))
                counts.written += 1
    out.write("\n]\n" if counts.written else "]\n")
    return counts


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- Import --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One entry of an import file, ready to append."""

    stream: str
    subject: str
    #: What identifies it in a stream (see `entry_key`); compared to find what a target holds.
    key: str
    msg_id: str
    body: bytes
    #: Its sequence on the stack it was exported from (`swarmseq`), when the file says.
    source_seq: int | None = None


def entry_key(data: bytes) -> str:
    """A stored entry's identity: its CloudEvents id, or a hash of its bytes when it has none."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        return str(body["id"])
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_batch(text: str) -> list[Item]:
    """Every item of an export file, checked before anything is written; an INVALID `ClientError`
    otherwise."""
    from schemas import names

    batch = parse_json(text, "the file")
    if not isinstance(batch, list):
        raise ClientError("the file must hold a JSON array of CloudEvents", code=INVALID)
    items: list[Item] = []
    for index, obj in enumerate(batch):
        problem = _problem(obj)
        if problem is not None:
            raise ClientError(f"item {index}: {problem}; nothing was imported", code=INVALID)
        if obj["type"] == names.EXPORT_RAW_TYPE:
            body = base64.b64decode(obj["data_base64"])
        else:
            body = _compact({k: v for k, v in obj.items() if k not in _attrs()}).encode()
        seq = obj.get(names.EXPORT_ATTR_SEQ)
        items.append(
            Item(
                obj[names.EXPORT_ATTR_STREAM],
                obj[names.EXPORT_ATTR_SUBJECT],
                entry_key(body),
                obj["id"],
                body,
                seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            )
        )
    return items


def _problem(obj: Any) -> str | None:
    from schemas import names

    if not isinstance(obj, dict):
        return "not a JSON object"
    for attr in ("specversion", "id", "type", "source"):
        if not isinstance(obj.get(attr), str) or not obj[attr]:
            return f"CloudEvents attribute {attr!r} missing"
    if not names.is_token(obj["id"]):
        return f"id {obj['id']!r} cannot be a message id"
    if obj["type"] == names.EXPORT_RAW_TYPE:
        try:
            base64.b64decode(obj.get("data_base64", ""), validate=True)
        except (ValueError, TypeError):
            return "data_base64 of a raw entry is not base64"
    stream = obj.get(names.EXPORT_ATTR_STREAM)
    roots = stream_roots()
    if stream not in roots:
        return f"{names.EXPORT_ATTR_STREAM} must be one of {', '.join(roots)}, not {stream!r}"
    subject = obj.get(names.EXPORT_ATTR_SUBJECT)
    if not isinstance(subject, str):
        return f"{names.EXPORT_ATTR_SUBJECT} missing"
    try:
        check_pattern(subject)
    except ClientError:
        return f"{names.EXPORT_ATTR_SUBJECT} {subject!r} is not a subject"
    if (
        "*" in subject.split(".")
        or ">" in subject.split(".")
        or not subject_matches(roots[stream], subject)
    ):
        return f"{names.EXPORT_ATTR_SUBJECT} {subject!r} does not belong to {stream}"
    return None


@dataclass(slots=True)
class ImportCounts:
    added: int = 0
    present: int = 0
    #: Where what was added came from: source sequences and the entries' own times, first/last.
    source_seqs: tuple[int, int] | None = None
    times: tuple[datetime, datetime] | None = None

    def describe(self, stream: str) -> str:
        text = f"{stream}: imported {self.added}, {self.present} already there"
        origin = []
        if self.source_seqs is not None:
            first, last = self.source_seqs
            origin.append(f"source #{first}" + (f"-#{last}" if last != first else ""))
        if self.times is not None:
            start, end = (t.astimezone(UTC).isoformat() for t in self.times)
            origin.append(f"times {start} to {end}, kept as their own")
        return text + (f" ({'; '.join(origin)})" if origin else "")


async def _target_keys(log: EventLog, stream: str) -> list[str]:
    """`entry_key` of everything `stream` holds on the target, in order."""
    from swarm.client.commands import closing
    from swarm.kernel.logscan import scan

    async with closing(scan(log, stream)) as batches:
        return [entry_key(delivery.data) async for batch in batches for delivery in batch]


async def import_stream(
    log: EventLog, stream: str, items: list[Item], *, force: bool
) -> ImportCounts:
    """Append `items` (all of one stream) to the target; see the module docstring."""
    from swarm.kernel.eventlog import (
        MAX_ATOMIC_BATCH,
        AppendRequest,
        ConcurrencyConflict,
        DuplicateBatch,
    )

    # Read before what the stream holds: a write landing after this is caught by the first
    # append's expected position rather than slipping in between what was compared and what is
    # appended.
    position = await log.last_sequence(stream)
    held = await _target_keys(log, stream)
    wanted = [item.key for item in items]
    if held == wanted[: len(held)]:
        todo = items[len(held) :]
    elif wanted == held[: len(wanted)]:
        todo = []
    elif force:
        present = set(held)
        todo = [item for item in items if item.key not in present]
    else:
        pairs = enumerate(zip(held, wanted, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(held), len(wanted))) + 1
        raise ClientError(
            f"{stream} on the target already holds {len(held)} entries that are not the start "
            f"of this import (they differ at #{at}); nothing was imported into it",
            code=FAILED,
            hint="import into an empty stack, or pass --force to append what it lacks after "
            "what it holds (sequence numbers then differ from the source's)",
        )
    counts = ImportCounts(present=len(items) - len(todo))
    seqs = [item.source_seq for item in todo if item.source_seq is not None]
    if seqs:
        counts.source_seqs = (min(seqs), max(seqs))
    times = [t for t in (own_time(item.body) for item in todo) if t is not None]
    if times:
        counts.times = (min(times), max(times))
    root = stream_roots()[stream]
    for lo in range(0, len(todo), MAX_ATOMIC_BATCH):
        chunk = todo[lo : lo + MAX_ATOMIC_BATCH]
        requests = [
            AppendRequest(
                item.subject,
                item.body,
                item.msg_id,
                # The whole stream's position: nothing else may land while this batch does.
                expected_last_seq=position if n == 0 else None,
                expected_subject=root if n == 0 else None,
                # Another stack's history, kept byte for byte: not this importer's commands.
                sign=False,
            )
            for n, item in enumerate(chunk)
        ]
        try:
            await log.append_atomic(requests)
        except ConcurrencyConflict as exc:
            raise ClientError(
                f"another writer appended to {stream} during the import ({exc}); "
                f"{counts.added} were imported before it",
                code=FAILED,
                hint="run the import again once the target is quiet: it continues where it stopped",
            ) from None
        except DuplicateBatch:
            raise ClientError(
                f"{stream} on the target recently stored an id of this import under another "
                f"position; {counts.added} were imported before it",
                code=FAILED,
            ) from None
        counts.added += len(chunk)
        position += len(chunk)  # an atomic batch lands contiguously
    return counts
