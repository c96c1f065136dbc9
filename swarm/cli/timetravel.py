"""Time travel: the Hive's state at a point of the log (`--at`), and what changed between two
points (`swarm timeline diff A B`).

The state is rebuilt the way every Hive replica builds it: SWARM_EVENTS folded in order with the
same pure `evolve` (through `fold_raw`, which also consumes undecodable entries exactly as a
replica does), so `--at N` shows what a replica that had applied the log up to sequence N held.
The log is read in batches of `BATCH` messages; there is no round trip per event.

A time means the events' own times (their CloudEvents `time`, which `swarm timeline import`
keeps), never when JetStream stored them: `--at TIME` folds the log up to the first event that
happened after TIME, so it gives the same state on a stack the log was imported into as on the
one that wrote it. An entry with no readable time (foreign bytes) is folded with what precedes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Format,
    StreamFormat,
    emit,
    render,
    run,
    status,
    stdout_console,
    table,
)
from swarm.client.text import parse_time
from swarm.client.timeline import own_time

if TYPE_CHECKING:
    # Imported where used: every `swarm` call registers `timeline diff` (tests/test_cli_start.py).
    from swarm.kernel.eventlog import Delivery, EventLog
    from swarm.kernel.settings import Settings

#: Messages per fetch while folding: large, because folding is what a replay spends time on.
BATCH = 1000
_VALUE_LIMIT = 60


# --- Points of the log ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """A position of SWARM_EVENTS: a stream sequence, or a time (the events that happened until
    then: up to the first one whose own time is later)."""

    seq: int | None = None
    time: datetime | None = None

    @classmethod
    def parse(cls, text: str, *, now: datetime | None = None) -> Point:
        """`1234` or `#1234` is a sequence; anything else is read as a time (see `parse_time`)."""
        stripped = text.strip().removeprefix("#")
        if stripped.isdigit():
            return cls(seq=int(stripped))
        return cls(time=parse_time(text, now=now))

    def before(self, seq: int, happened: datetime | None) -> bool:
        """True when the entry at `seq`, which happened at `happened` (None: it does not say), is
        part of the state at this point, given that every entry before it is."""
        if self.seq is not None:
            return seq <= self.seq
        assert self.time is not None
        return happened is None or happened <= self.time

    def describe(self) -> str:
        return f"#{self.seq}" if self.seq is not None else (self.time or datetime.min).isoformat()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state at a point, as `HiveState.to_dict()`, with where in the log it stands."""

    point: Point
    applied_seq: int
    #: When the last folded event that says so happened (None for the empty state).
    time: datetime | None
    state: dict[str, Any]
    digest: str

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.point.describe(),
            "applied_seq": self.applied_seq,
            "time": self.time.isoformat() if self.time else None,
            "digest": self.digest,
            "state": self.state,
        }


async def fold_until(log: EventLog, points: list[Point]) -> list[Snapshot]:
    """One ordered, batched pass over SWARM_EVENTS; the state at each of `points`.

    `points` must be in log order (`diff` checks) and all sequences or all times. The pass stops
    at the last point, not at the end of the log, so `--at` early in a long log reads only what
    it needs.
    """
    from schemas import names
    from swarm.domain.evolve import fold_raw
    from swarm.domain.state import HiveState, digest_of
    from swarm.kernel.logscan import scan

    timed = any(p.time is not None for p in points)
    if timed and any(p.seq is not None for p in points):
        raise ValueError("fold sequences and times in separate passes")
    state = HiveState()
    snapshots: list[Snapshot] = []
    #: The body of the last folded event that carries a time (with sequences: of the last folded
    #: event), its time read only when a snapshot needs it.
    last_timed: bytes | None = None
    #: Entries with no time of their own, waiting for the next one that has one: they are part
    #: of a point in time when that one is.
    held: list[Delivery] = []
    pending = list(points)

    def take(point: Point) -> None:
        view = state.to_dict()
        when = own_time(last_timed) if last_timed is not None else None
        snapshots.append(Snapshot(point, state.applied_seq, when, view, digest_of(view)))

    def fold(delivery: Delivery) -> None:
        fold_raw(state, delivery.stream_seq, delivery.data)

    # With sequences only, nothing past the last point is even read.
    end = None if timed else max((p.seq or 0) for p in points) if points else 0
    if end != 0:
        batches = scan(log, names.STREAM_EVENTS, end=end, batch=BATCH)
        async with connect.closing(batches) as reading:
            async for batch in reading:
                for delivery in batch:
                    # Reading an event's time costs a lenient decode: only times need it.
                    happened = own_time(delivery.data) if timed else None
                    if timed and happened is None:
                        held.append(delivery)
                        continue
                    while pending and not pending[0].before(delivery.stream_seq, happened):
                        take(pending.pop(0))
                    if not pending:
                        break
                    for waiting in held:
                        fold(waiting)
                    held.clear()
                    fold(delivery)
                    last_timed = delivery.data
                if not pending:
                    break
    # The log ended: what it ends with happened before any point in time past its end.
    for waiting in held if pending else ():
        fold(waiting)
    for point in pending:
        take(point)
    return snapshots


# --- Differences ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One path of the state dict that differs: `added`, `removed` or `changed`."""

    path: str
    op: str
    before: Any = None
    after: Any = None

    def as_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"path": self.path, "op": self.op}
        if self.op != "added":
            item["before"] = self.before
        if self.op != "removed":
            item["after"] = self.after
        return item


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every leaf; dicts are walked, lists and scalars are leaves.

    Lists stay whole because their items have no identity of their own (a replica's crash
    times): "list X became list Y" reads better than index-by-index churn.
    """
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def diff_states(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """What changed from `before` to `after`, by dotted path, in path order."""
    old = dict(_leaves(before, ""))
    new = dict(_leaves(after, ""))
    changes: list[Change] = []
    for path in sorted(old.keys() | new.keys()):
        if path not in new:
            changes.append(Change(path, "removed", before=old[path]))
        elif path not in old:
            changes.append(Change(path, "added", after=new[path]))
        elif old[path] != new[path]:
            changes.append(Change(path, "changed", old[path], new[path]))
    # An empty dict is a leaf; once it fills up (or empties), the leaves below it already say
    # what happened, and "{} removed" beside them would only be noise.
    return [c for c in changes if not _shadowed(c, changes)]


def _shadowed(change: Change, changes: list[Change]) -> bool:
    emptied = (change.op == "removed" and change.before == {}) or (
        change.op == "added" and change.after == {}
    )
    prefix = change.path + "."
    return emptied and any(other.path.startswith(prefix) for other in changes)


# --- Printing ------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = render(value, StreamFormat.JSONL) if not isinstance(value, str) else value
    text = "".join(ch if ch.isprintable() else "·" for ch in text)
    return text if len(text) <= _VALUE_LIMIT else text[: _VALUE_LIMIT - 1] + "…"


def _when(snapshot: Snapshot) -> str:
    if snapshot.time is None:
        return "before the first event" if snapshot.applied_seq == 0 else "no time given"
    return snapshot.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def print_snapshot(snapshot: Snapshot, fmt: StreamFormat) -> None:
    if fmt != StreamFormat.TABLE:
        emit(snapshot.as_json(), Format.JSON if fmt == StreamFormat.JSON else fmt)
        return
    state = snapshot.state
    console = stdout_console()
    console.print(
        Text(
            f"Hive state at #{snapshot.applied_seq} ({_when(snapshot)}), "
            f"digest {snapshot.digest[:16]}"
        )
    )
    namespaces = state["namespaces"]
    console.print(
        table(
            ["NAMESPACE", "AGENTS", "REPLICAS", "MEMORY MB", "QUOTA"],
            [
                [
                    name,
                    ns["usage"]["agents"],
                    ns["usage"]["replicas"],
                    ns["usage"]["memory_mb"],
                    _short({k: v for k, v in ns["quota"].items() if v is not None}),
                ]
                for name, ns in sorted(namespaces.items())
            ],
            title="namespaces",
        )
    )
    agents = sorted(state["agents"].values(), key=lambda a: (a["namespace"], a["name"]))
    console.print(
        table(
            ["NAMESPACE", "NAME", "AGENT ID", "VERSION", "STATUS", "DESIRED", "RUNNING"],
            [
                [
                    a["namespace"],
                    a["name"] + (" (deleted)" if a["deleted"] else ""),
                    a["agent_id"],
                    a["spec"]["version"],
                    a["status"],
                    a["replicas_desired"],
                    sum(r["phase"] == "running" for r in a["replicas"].values()),
                ]
                for a in agents
            ],
            title="agents",
        )
    )
    pods = sorted(state["pods"].values(), key=lambda p: p["pod_id"])
    console.print(
        table(
            ["POD", "STATUS", "ZONE", "REPLICAS", "MEMORY MB USED/CAP"],
            [
                [
                    p["pod_id"],
                    p["status"],
                    p["zone"],
                    len(p["replicas"]),
                    f"{p['used_memory_mb']}/{p['capacity']['memory_mb']}",
                ]
                for p in pods
            ],
            title="pods",
        )
    )


def print_diff(first: Snapshot, second: Snapshot, changes: list[Change], fmt: Format) -> None:
    if fmt != Format.TABLE:
        emit(
            {
                "from": {k: v for k, v in first.as_json().items() if k != "state"},
                "to": {k: v for k, v in second.as_json().items() if k != "state"},
                "changes": [c.as_json() for c in changes],
            },
            fmt,
        )
        return
    console = stdout_console()
    console.print(
        Text(
            f"#{first.applied_seq} ({_when(first)}) → "
            f"#{second.applied_seq} ({_when(second)}): {len(changes)} change(s)"
        )
    )
    if changes:
        marks = {"added": "+", "removed": "-", "changed": "~"}
        console.print(
            table(
                ["", "PATH", "BEFORE", "AFTER"],
                [
                    [
                        marks[c.op],
                        c.path,
                        _short(c.before) if c.op != "added" else "",
                        _short(c.after) if c.op != "removed" else "",
                    ]
                    for c in changes
                ],
                title=None,
            )
        )


# --- Verbs ---------------------------------------------------------------------------------------


async def show_at(
    *, target: connect.NatsTarget, settings: Settings, point: Point, output: StreamFormat
) -> int:
    """`swarm timeline --at POINT`."""
    from schemas import names

    async with connect.session(target, settings, streams=[names.STREAM_EVENTS]) as log:
        end = await log.last_sequence(names.STREAM_EVENTS)
        (snapshot,) = await fold_until(log, [point])
    if point.seq is not None and point.seq > end:
        status(f"note: the log ends at #{end}; this is the state after its last event")
    print_snapshot(snapshot, output)
    return EXIT_OK


def register(group: typer.Typer) -> None:
    """Add `swarm timeline diff` to the timeline group."""

    @group.command("diff")
    def diff(
        first: Annotated[str, typer.Argument(help="From: a sequence (1234) or a time.")],
        second: Annotated[str, typer.Argument(help="To: a sequence or a time.")],
        output: Annotated[Format, typer.Option("--output", "-o", help="Output format.")] = (
            Format.TABLE
        ),
        nats_url: connect.NatsUrlOption = None,
    ) -> None:
        """What changed in the Hive's state between two points of the log."""
        from schemas import names

        async def main() -> int:
            now = datetime.now(UTC)
            a, b = Point.parse(first, now=now), Point.parse(second, now=now)
            if a.seq is not None and b.seq is not None and a.seq > b.seq:
                raise CliError("the first point must come before the second", code=EXIT_USAGE)
            if a.time is not None and b.time is not None and a.time > b.time:
                raise CliError("the first point must come before the second", code=EXIT_USAGE)
            settings = connect.load_settings()
            target = connect.resolve_nats_url(nats_url, settings)
            async with connect.session(target, settings, streams=[names.STREAM_EVENTS]) as log:
                if (a.seq is None) != (b.seq is None):
                    # A sequence and a time: fold twice rather than guess their order.
                    (before,) = await fold_until(log, [a])
                    (after,) = await fold_until(log, [b])
                    if before.applied_seq > after.applied_seq:
                        raise CliError(
                            "the first point must come before the second", code=EXIT_USAGE
                        )
                else:
                    before, after = await fold_until(log, [a, b])
            print_diff(before, after, diff_states(before.state, after.state), output)
            return EXIT_OK

        run(main())
