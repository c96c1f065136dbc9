"""Checking the log's integrity, to say exactly what is wrong and where (`swarm timeline verify`
prints the report).

What a sound log looks like (DESIGN.md, "Public contracts"):

* every command has exactly one outcome on `swarm.evt.command.<id>.*` (a command whose id could
  not be read is answered on `…._invalid.rejected`, naming its stream sequence), and no outcome
  answers a command that is not on the log;
* neither stream has a sequence gap: the audit log is never edited, so a missing sequence means
  something was deleted;
* every event decodes with its registered schema, and folds into the Hive's state (with the
  replicas' own `fold_raw`: an entry a replica could not fold is a finding here too);
* every `causationid` names a command or event that is on the log;
* with the Hive's public key known (the stack's, or `SWARM_HIVE_PUBLIC_KEY`), every outcome
  carries the Hive's seal: anyone can write on NATS, and an outcome the Hive did not write is
  reported as foreign and answers nothing. An outcome imported with its history from another
  stack carries that stack's seal; it counts when it names exactly its command (position and
  sha256) and was stored before it, as `swarm timeline import` stores them.

* the Hive's sealed entries form a chain (`swarm.kernel.seal`): each names the seal of the one
  before it, so one removed (from the log, or from an export before it was imported) leaves the
  next naming a seal that is not the last one before it; and an accepted outcome gives the
  sha256 of each event it caused, so an event changed or removed after the Hive wrote it shows.
  Entries written before Swarm kept these carry neither and are not judged by them, nor is the
  first sealed entry of a log that starts in the middle of a chain (an import of part of one).

A command sent again under an id that was already answered is the same command when its bytes
are the same (no second outcome is due); with other bytes it is another command, answered on
`…._invalid.rejected` (rule `duplicate_id`).

Both streams are read once each, in batches (`EventLog.replay`), never a round trip per message.
A command logged within `grace` seconds that nothing later has overtaken may simply not be
decided yet; it is reported as pending, not as a finding.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported where used: every `swarm` call registers `timeline verify` (tests/test_cli_start.py).
    from schemas import Envelope
    from swarm.domain.state import HiveState
    from swarm.kernel.eventlog import Delivery, EventLog

__all__ = [
    "ALTERED_EVENT",
    "BROKEN_CHAIN",
    "DANGLING_CAUSATION",
    "DUPLICATE_OUTCOME",
    "FOREIGN_OUTCOME",
    "GAP",
    "MISSING_EVENT",
    "MISSING_OUTCOME",
    "ORPHAN_OUTCOME",
    "UNDECODABLE",
    "UNFOLDABLE",
    "Finding",
    "Report",
    "verify",
]

BATCH = 1000
GAP = "gap"
UNDECODABLE = "undecodable"
MISSING_OUTCOME = "missing-outcome"
DUPLICATE_OUTCOME = "duplicate-outcome"
ORPHAN_OUTCOME = "orphan-outcome"
FOREIGN_OUTCOME = "foreign-outcome"
UNFOLDABLE = "unfoldable"
DANGLING_CAUSATION = "dangling-causation"
ALTERED_EVENT = "altered-event"
MISSING_EVENT = "missing-event"
BROKEN_CHAIN = "broken-chain"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    stream: str
    #: The sequence the finding is about (the first missing one, for a gap).
    seq: int
    detail: str
    #: Other sequences involved (every outcome of a duplicated one, the end of a gap).
    related: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stream": self.stream,
            "seq": self.seq,
            "detail": self.detail,
            "related": list(self.related),
        }


@dataclass(slots=True)
class Report:
    commands: int = 0
    events: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Command keys (id or `#seq`) too recent to expect an outcome yet, with their sequences.
    pending: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": {"commands": self.commands, "events": self.events},
            "findings": [f.as_json() for f in self.findings],
            "pending": [{"command": k, "seq": s} for k, s in self.pending.items()],
        }


class _Gaps:
    """Sequence continuity of one stream, from its first sequence to its last."""

    def __init__(self, stream: str, first: int, report: Report) -> None:
        self.stream = stream
        self.report = report
        self.previous = 0
        if first > 1:
            self._gap(1, first - 1)
            self.previous = first - 1

    def see(self, seq: int) -> None:
        if seq != self.previous + 1:
            self._gap(self.previous + 1, seq - 1)
        self.previous = seq

    def end(self, last: int) -> None:
        if last > self.previous:
            self._gap(self.previous + 1, last)

    def _gap(self, start: int, stop: int) -> None:
        count = stop - start + 1
        self.report.findings.append(
            Finding(
                GAP,
                self.stream,
                start,
                f"sequence {start} missing"
                if count == 1
                else f"sequences {start}..{stop} missing ({count})",
                (stop,),
            )
        )


def _lenient(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _command_key(body: dict[str, Any] | None, seq: int) -> str:
    """How the Hive addresses a command's outcome: its id, or `#seq` when none can be read."""
    from schemas import names

    raw_id = body.get("id") if body else None
    return raw_id if isinstance(raw_id, str) and names.is_token(raw_id) else f"#{seq}"


async def verify(log: EventLog, *, grace: float, now: datetime | None = None) -> Report:
    from schemas import REGISTRY, DecodeError, names
    from swarm.client.commands import hive_verifier
    from swarm.domain.state import HiveState
    from swarm.kernel.admin import LogAdmin

    report = Report()
    now = now or datetime.now(UTC)
    seal = hive_verifier(log)
    ids: set[str] = set()
    #: (stream, seq, causation id) of everything that names a cause.
    causes: list[tuple[str, int, str]] = []
    #: command key -> (stream sequence, logged time)
    commands: dict[str, tuple[int, datetime]] = {}
    #: command id -> sha256 of the first command's bytes under it
    digests: dict[str, str] = {}
    #: command key -> sequences of its outcomes
    outcomes: defaultdict[str, list[int]] = defaultdict(list)

    held = await LogAdmin(log).stream(names.STREAM_COMMANDS)
    gaps = _Gaps(names.STREAM_COMMANDS, held.first_seq or 1, report)
    end = held.last_seq
    async with aclosing(_deliveries(log, names.STREAM_COMMANDS, end)) as deliveries:
        async for d in deliveries:
            gaps.see(d.stream_seq)
            report.commands += 1
            body = _lenient(d.data)
            key = _command_key(body, d.stream_seq)
            if key in commands:
                if digests.get(key) == _digest(d.data):
                    continue  # the same command again: its one outcome answers both
                key = f"#{d.stream_seq}"  # another command reusing the id
            commands[key] = (d.stream_seq, d.timestamp)
            digests.setdefault(key, _digest(d.data))
            if body is not None:
                _remember(body, names.STREAM_COMMANDS, d.stream_seq, ids, causes)
    gaps.end(end)

    held = await LogAdmin(log).stream(names.STREAM_EVENTS)
    gaps = _Gaps(names.STREAM_EVENTS, held.first_seq or 1, report)
    end = held.last_seq
    state = HiveState()
    chain = _Chain(report)
    async with aclosing(_deliveries(log, names.STREAM_EVENTS, end)) as deliveries:
        async for d in deliveries:
            gaps.see(d.stream_seq)
            report.events += 1
            body = _lenient(d.data)
            chain.written(body, d)
            try:
                envelope = REGISTRY.decode(d.data, kind="event")
            except (DecodeError, RecursionError) as exc:
                report.findings.append(
                    Finding(UNDECODABLE, names.STREAM_EVENTS, d.stream_seq, f"{d.subject}: {exc}")
                )
                envelope = None
            _fold(state, d, envelope, report)
            if body is not None:
                _remember(body, names.STREAM_EVENTS, d.stream_seq, ids, causes)
            parsed = names.parse_event_subject(d.subject)
            if parsed is not None and parsed[0] == names.OUTCOME_AGGREGATE:
                if (
                    seal is not None
                    and not seal.verify(d.data)
                    and not _imported_answer(envelope, d, commands.get(parsed[1]), digests)
                ):
                    report.findings.append(
                        Finding(
                            FOREIGN_OUTCOME,
                            names.STREAM_EVENTS,
                            d.stream_seq,
                            f"{d.subject} is not sealed by the Hive: a foreign write, which "
                            "answers nothing",
                        )
                    )
                    continue
                chain.vouched(envelope, d)
                key = parsed[1]
                if key == names.INVALID_COMMAND_ID:
                    received = envelope.data.received if envelope is not None else {}
                    seq = received.get("stream_seq")
                    key = f"#{seq}" if isinstance(seq, int) else f"{key}@{d.stream_seq}"
                outcomes[key].append(d.stream_seq)
            chain.link(body, d)
    gaps.end(end)

    _outcome_findings(report, commands, outcomes, grace=grace, now=now)
    for stream, seq, cause in causes:
        if cause not in ids:
            report.findings.append(
                Finding(DANGLING_CAUSATION, stream, seq, f"causationid {cause} is not on the log")
            )
    report.findings.sort(key=lambda f: (f.stream, f.seq, f.kind))
    return report


class _Chain:
    """The Hive's chain of sealed entries, and the events its accepted outcomes vouch for."""

    def __init__(self, report: Report) -> None:
        self.report = report
        #: Event id -> (sequence, `entry_digest` of it), the first entry under each id.
        self.events: dict[str, tuple[int, str]] = {}
        #: Seal -> sequence of the entry it seals; the last sealed entry.
        self.seals: dict[str, int] = {}
        self.last: tuple[int, str] | None = None

    def written(self, body: dict[str, Any] | None, d: Delivery) -> None:
        from swarm.kernel.seal import json_digest

        event_id = body.get("id") if body else None
        if isinstance(event_id, str) and event_id not in self.events:
            self.events[event_id] = (d.stream_seq, json_digest(body))

    def vouched(self, envelope: Envelope[Any] | None, d: Delivery) -> None:
        """An accepted outcome's events against the digests it gives (the Hive's, or imported
        with its history)."""
        from schemas import CommandAccepted, names

        data = envelope.data if envelope is not None else None
        if not isinstance(data, CommandAccepted):
            return
        for event_id, digest in zip(data.events, data.digests, strict=False):
            found = self.events.get(event_id)
            if found is None:
                self.report.findings.append(
                    Finding(
                        MISSING_EVENT,
                        names.STREAM_EVENTS,
                        d.stream_seq,
                        f"event {event_id}, caused by command {data.command_id}, is not on the "
                        "log: removed after the Hive wrote it",
                    )
                )
            elif found[1] != digest:
                self.report.findings.append(
                    Finding(
                        ALTERED_EVENT,
                        names.STREAM_EVENTS,
                        found[0],
                        f"event {event_id} is not what the Hive wrote (sha256 {found[1][:16]}…, "
                        f"its outcome at seq {d.stream_seq} says {digest[:16]}…): changed later",
                        (d.stream_seq,),
                    )
                )

    def link(self, body: dict[str, Any] | None, d: Delivery) -> None:
        """A sealed entry: it must name the last one sealed before it."""
        from schemas import names

        seal = body.get(names.EXTENSION_HIVE_SEAL) if body else None
        if not isinstance(seal, str):
            return
        assert body is not None
        previous = body.get(names.EXTENSION_HIVE_PREVIOUS)
        last = self.last
        if isinstance(previous, str) and last is not None and previous != last[1]:
            named = self.seals.get(previous)
            detail = (
                f"names the entry at seq {named} as the Hive's previous one, but seq {last[0]} "
                "was sealed after it: an entry in between is not the Hive's"
                if named is not None
                else f"names as the Hive's previous entry one that is not on the log (the last "
                f"one sealed before it is seq {last[0]}): the Hive's entries between were removed"
            )
            self.report.findings.append(
                Finding(BROKEN_CHAIN, names.STREAM_EVENTS, d.stream_seq, detail, (last[0],))
            )
        self.seals.setdefault(seal, d.stream_seq)
        self.last = (d.stream_seq, seal)


def _fold(state: HiveState, d: Delivery, envelope: Envelope[Any] | None, report: Report) -> None:
    """Fold as every replica does; an entry it cannot fold (beyond not decoding, which is its
    own finding) is reported with the replicas' reason."""
    from schemas import names
    from swarm.domain.evolve import evolve, record_failure

    if envelope is None:
        state.applied_seq = d.stream_seq  # what `fold_raw` does with it; reported as undecodable
        return
    try:
        evolve(state, d.stream_seq, envelope)
    except Exception as exc:
        record_failure(state, d.stream_seq, d.data, exc)
        report.findings.append(
            Finding(UNFOLDABLE, names.STREAM_EVENTS, d.stream_seq, state.fold_failures[-1].reason)
        )


def _imported_answer(
    envelope: Envelope[Any] | None,
    d: Delivery,
    command: tuple[int, datetime] | None,
    digests: dict[str, str],
) -> bool:
    """An outcome sealed by another Hive that answers exactly the command on this log and was
    stored before it: a history imported from another stack (`swarm timeline import` writes
    events first). A foreign write ahead of a command cannot know its bytes; one after it is
    not before it."""
    from schemas import CommandAccepted, CommandRejected

    data = envelope.data if envelope is not None else None
    if command is None or not isinstance(data, CommandAccepted | CommandRejected):
        return False
    seq, logged = command
    return (
        data.command_seq == seq
        and data.command_digest is not None
        and data.command_digest == digests.get(data.command_id)
        and d.timestamp <= logged
    )


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


async def _deliveries(log: EventLog, stream: str, end: int) -> AsyncGenerator[Delivery, None]:
    from swarm.client.commands import closing
    from swarm.kernel.logscan import scan

    async with closing(scan(log, stream, end=end, batch=BATCH)) as batches:
        async for batch in batches:
            for delivery in batch:
                yield delivery


def _remember(
    body: dict[str, Any], stream: str, seq: int, ids: set[str], causes: list[tuple[str, int, str]]
) -> None:
    if isinstance(body.get("id"), str):
        ids.add(body["id"])
    cause = body.get("causationid")
    if isinstance(cause, str) and cause:
        causes.append((stream, seq, cause))


def _outcome_findings(
    report: Report,
    commands: dict[str, tuple[int, datetime]],
    outcomes: dict[str, list[int]],
    *,
    grace: float,
    now: datetime,
) -> None:
    from schemas import names

    # The Hive decides commands in log order, so a command older than one that has an outcome
    # was skipped, not merely not reached yet, whatever its age.
    def of(key: str, seq: int) -> list[int]:
        # A command the Hive answered on `_invalid` (gave up on it) is named by its sequence.
        by_seq = f"#{seq}"
        return outcomes.get(key, []) + (outcomes.get(by_seq, []) if key != by_seq else [])

    answered = [seq for key, (seq, _) in commands.items() if of(key, seq)]
    latest_answered = max(answered, default=0)
    recent = now - timedelta(seconds=grace)
    known = set(commands) | {f"#{seq}" for seq, _ in commands.values()}
    for key, (seq, logged) in commands.items():
        seen = sorted(of(key, seq))
        if not seen:
            if seq > latest_answered and logged > recent:
                report.pending[key] = seq
                continue
            report.findings.append(
                Finding(
                    MISSING_OUTCOME, names.STREAM_COMMANDS, seq, f"command {key} has no outcome"
                )
            )
        elif len(seen) > 1:
            report.findings.append(
                Finding(
                    DUPLICATE_OUTCOME,
                    names.STREAM_EVENTS,
                    seen[1],
                    f"command {key} (#{seq}) has {len(seen)} outcomes",
                    tuple(seen),
                )
            )
    for key, seqs in outcomes.items():
        if key not in known:
            report.findings.append(
                Finding(
                    ORPHAN_OUTCOME,
                    names.STREAM_EVENTS,
                    seqs[0],
                    f"outcome for command {key}, which is not on the log",
                    tuple(seqs),
                )
            )
