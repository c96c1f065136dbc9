"""What a pod may report, from its view of the log: only placements the Hive still holds on it;
and a report the Hive refused as not this pod's (`not_found` / `not_assigned`) disowns that
placement for good, so a report in flight while a deletion was decided cannot start a loop."""

from __future__ import annotations

from runtime.podview import MAX_WATCHED, PodView
from schemas import events, outcomes
from tests.helpers.podviews import fold, placed


def rejected(command_id: str, rule: str | None) -> outcomes.CommandRejected:
    return outcomes.CommandRejected(
        command_id=command_id, command_type="swarm.cmd.replica.report", reason="no", rule=rule
    )


def test_a_replica_is_owned_while_the_hive_holds_it_here() -> None:
    view = PodView("p1")
    first = placed(view)
    assert view.owns("a-0", first)
    assert not view.owns("a-0", first - 1)  # another placement of it
    assert not view.owns("nobody", first)
    # Moved to another pod: not ours.
    elsewhere = placed(view, pod="p2")
    assert not view.owns("a-0", elsewhere)
    assert not view.owns("a-0", first)
    # Back here: the new placement is, the old one is not.
    again = placed(view)
    assert view.owns("a-0", again)
    assert not view.owns("a-0", first)


def test_a_deleted_agents_replica_is_owned_until_it_stopped_then_forgotten() -> None:
    view = PodView("p1")
    seq = placed(view)
    fold(
        view,
        events.ReplicaStopping(agent_id="a", replica_id="a-0", reason="agent deleted"),
        events.AgentDeleted(agent_id="a", reason="deleted by request"),
    )
    assert view.gone("a")
    # The Hive waits for its `stopped`: that report is still wanted.
    assert view.owns("a-0", seq)
    assert set(view.stopping()) == {"a-0"}
    fold(view, events.ReplicaStopped(agent_id="a", replica_id="a-0", reason="stopped"))
    assert not view.owns("a-0", seq)
    assert "a" not in view.agents
    assert view.gone("a")  # forgotten counts as gone


def test_a_refused_report_disowns_its_placement_for_good() -> None:
    view = PodView("p1")
    seq = placed(view)
    placed(view, replica="a-1")
    view.watch("cmd-1", "a-0", seq)
    view.watch("cmd-2", "a-1", view.replicas["a-1"].placed_seq)
    view.watch("cmd-3", "a-1", view.replicas["a-1"].placed_seq)
    # Refused for another reason, or a command the pod did not watch: nothing changes.
    fold(view, rejected("cmd-2", "state"), rejected("cmd-9", "not_found"))
    assert set(view.wanted()) == {"a-0", "a-1"}
    assert view.refusals == 0

    fold(view, rejected("cmd-1", "not_found"), rejected("cmd-3", "not_assigned"))
    assert view.refusals == 2
    assert view.wanted() == {}
    assert view.stopping() == {}
    assert not view.owns("a-0", seq)
    # Even when the log later says stopping, that placement is not the pod's to answer.
    fold(view, events.ReplicaStopping(agent_id="a", replica_id="a-0", reason="t"))
    assert view.stopping() == {}
    # A new placement of the replica is the pod's again.
    fold(view, events.ReplicaStopped(agent_id="a", replica_id="a-0", reason="t"))
    assert "a-0" not in view.disowned
    again = placed(view)
    assert view.owns("a-0", again)
    assert set(view.wanted()) == {"a-0"}


def test_the_reports_it_watches_are_bounded() -> None:
    view = PodView("p1")
    seq = placed(view)
    for n in range(MAX_WATCHED + 10):
        view.watch(f"cmd-{n}", "a-0", seq)
    assert len(view.watched) == MAX_WATCHED
    # The oldest are forgotten: their refusal (if one ever came) changes nothing.
    fold(view, rejected("cmd-0", "not_found"))
    assert view.owns("a-0", seq)
    fold(view, rejected(f"cmd-{MAX_WATCHED + 9}", "not_found"))
    assert not view.owns("a-0", seq)
