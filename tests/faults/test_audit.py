"""The scenarios' audit can fail: it finds stray writes of a deposed leader, missing and
duplicated outcomes, duplicated events, and measures recovery from the right event."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.faults.harness import (
    ACCEPTED,
    DEPLOYED,
    LEADER_ELECTED,
    Audit,
    LogEntry,
    recovery_after,
    writes_after_deposal,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def entry(seq: int, type_: str, source: str, *, id_: str | None = None, **data: Any) -> LogEntry:
    subject = f"swarm.evt.command.c{seq}.accepted" if type_ == ACCEPTED else f"swarm.evt.x.{seq}.y"
    return LogEntry(
        seq, subject, type_, id_ or f"e{seq}", source, T0 + timedelta(seconds=seq), data
    )


def test_a_deposed_leaders_writes_after_the_election_are_violations() -> None:
    log = [
        entry(1, ACCEPTED, "hive/a"),  # before the fault
        entry(2, ACCEPTED, "hive/a"),  # after the fault, before the election: allowed
        entry(3, LEADER_ELECTED, "hive/b", node="b"),
        entry(4, ACCEPTED, "hive/b"),
        entry(5, ACCEPTED, "hive/a"),  # stray
        entry(6, LEADER_ELECTED, "hive/a", node="a"),  # a leads again
        entry(7, ACCEPTED, "hive/a"),  # legitimate
    ]
    violations, details = writes_after_deposal(log, "a", after_seq=1)
    assert len(violations) == 1
    assert "wrote 1 event(s)" in violations[0]
    assert "5:swarm.command.accepted" in violations[0]
    assert details["leader_elected_seq"] == 3
    assert details["old_leader_writes_after_election"] == 1

    clean = [e for e in log if e.seq != 5]
    assert writes_after_deposal(clean, "a", after_seq=1)[0] == []


def test_without_a_leader_elected_event_the_missing_fence_is_reported() -> None:
    log = [entry(2, ACCEPTED, "hive/b"), entry(3, ACCEPTED, "hive/a")]
    violations, details = writes_after_deposal(log, "a", after_seq=1)
    assert violations == ["no hive.leader_elected by a new leader after the fault: no fence"]
    assert details["old_leader_writes_after_new_leaders_first_write"] == 1


def test_recovery_counts_the_first_acceptance_after_the_fault_by_another_writer() -> None:
    log = [entry(1, ACCEPTED, "hive/a"), entry(3, ACCEPTED, "hive/a"), entry(4, ACCEPTED, "hive/b")]
    fault = T0 + timedelta(seconds=2)
    assert recovery_after(log, fault) == 1.0
    assert recovery_after(log, fault, not_from="hive/a") == 2.0
    assert recovery_after(log, T0 + timedelta(seconds=9)) is None


def test_the_audit_counts_missing_and_duplicated_outcomes_and_events() -> None:
    entries = [
        entry(1, DEPLOYED, "hive/a", namespace="default", name="x"),
        entry(2, DEPLOYED, "hive/a", namespace="default", name="x"),  # deployed twice
        entry(3, ACCEPTED, "hive/a", id_="e1"),  # an id seen before
    ]
    found = Audit({"c1", "c2", "c3"}, Counter({"c1": 1, "c2": 2}), entries)
    assert found.missing == {"c3"}
    assert found.duplicated == {"c2": 2}
    assert found.events_duplicated() == 2
