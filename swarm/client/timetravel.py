"""Time travel: the Hive's state at a point of the log, and what changed between two points
(`swarm timeline --at` and `swarm timeline diff A B` print them).

The state is rebuilt the way every Hive replica builds it: SWARM_EVENTS folded in order with the
same pure `evolve` (through `fold_raw`, which also consumes undecodable entries exactly as a
replica does), so the state at N is what a replica that had applied the log up to sequence N held.
The log is read in batches of `BATCH` messages; there is no round trip per event.

A time means the events' own times (their CloudEvents `time`, which `swarm timeline import`
keeps), never when JetStream stored them: the state at TIME folds the log up to the first event
that happened after TIME, so it is the same on a stack the log was imported into as on the one
that wrote it. An entry with no readable time (foreign bytes) is folded with what precedes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from swarm.client.errors import INVALID, ClientError
from swarm.client.text import parse_time
from swarm.client.timeline import own_time

if TYPE_CHECKING:
    # Imported where used: every `swarm` call registers `timeline diff` (tests/test_cli_start.py).
    from swarm.kernel.eventlog import Delivery, EventLog

__all__ = [
    "BATCH",
    "Change",
    "Point",
    "Snapshot",
    "check_order",
    "diff_states",
    "fold_pair",
    "fold_until",
]

#: Messages per fetch while folding: large, because folding is what a replay spends time on.
BATCH = 1000
_NOT_IN_ORDER = "the first point must come before the second"


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


def check_order(first: Point, second: Point) -> None:
    """An INVALID `ClientError` when two points of one kind are out of order.

    Cheap, so a front end checks before it connects; a sequence and a time can only be ordered
    by folding (`fold_pair`).
    """
    if first.seq is not None and second.seq is not None and first.seq > second.seq:
        raise ClientError(_NOT_IN_ORDER, code=INVALID)
    if first.time is not None and second.time is not None and first.time > second.time:
        raise ClientError(_NOT_IN_ORDER, code=INVALID)


async def fold_pair(log: EventLog, first: Point, second: Point) -> tuple[Snapshot, Snapshot]:
    """The states at `first` and at `second`; an INVALID `ClientError` when `first` comes later."""
    check_order(first, second)
    if (first.seq is None) != (second.seq is None):
        # A sequence and a time: fold twice rather than guess their order.
        (before,) = await fold_until(log, [first])
        (after,) = await fold_until(log, [second])
        if before.applied_seq > after.applied_seq:
            raise ClientError(_NOT_IN_ORDER, code=INVALID)
        return before, after
    before, after = await fold_until(log, [first, second])
    return before, after


async def fold_until(log: EventLog, points: list[Point]) -> list[Snapshot]:
    """One ordered, batched pass over SWARM_EVENTS; the state at each of `points`.

    `points` must be in log order (`check_order` checks) and all sequences or all times. The
    pass stops at the last point, not at the end of the log, so a point early in a long log
    reads only what it needs.
    """
    from schemas import names
    from swarm.client.commands import closing
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
        async with closing(batches) as reading:
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
