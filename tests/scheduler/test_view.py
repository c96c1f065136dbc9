"""The projection: pod usage as the Hive counts it, and which replicas wait."""

from __future__ import annotations

from schemas import Payload, commands, event, events, names
from schemas.commands import ReplicaStatus
from schemas.specs import Capacity
from services.scheduler.view import ClusterView
from swarm.domain.state import HiveState
from tests.helpers.history import History, spec
from tests.helpers.sim import Sim
from tests.helpers.steps import placements, pod_reports


def test_usage_follows_the_phases_that_hold_resources() -> None:
    h = History()
    h.pod("p1", memory=1024)
    (r0, r1) = h.deploy("A", replicas=2, memory=100)
    view = h.planner.view
    pod = view.pods["p1"]
    assert set(view.waiting) == {("A", r0), ("A", r1)}
    h.scheduled("A", r0, "p1")
    h.scheduled("A", r1, "p1")
    assert pod.free() == (824, 10**9 - 2_000, 98)
    assert view.waiting == {}
    h.stopping("A", r0)  # stopping still holds: the pod has not let go yet
    assert pod.used_memory_mb == 200
    h.stopped("A", r0)
    assert pod.used_memory_mb == 100
    assert r0 not in view.agents["A"].replicas  # terminal replicas are forgotten


def test_replica_moved_off_a_lost_pod_waits_again_and_goes_elsewhere() -> None:
    h = History()
    h.pod("p1", memory=4096)
    h.pod("p2", memory=1024)
    (r0,) = h.deploy("A")
    h.scheduled("A", r0, "p1")
    h.lost("p1")
    seq = h.requested("A", r0)  # the Hive moves the replica off its lost pod
    view = h.planner.view
    assert view.waiting == {("A", r0): seq}
    assert view.pods["p1"].used_memory_mb == 0
    assert view.pods["p1"].status == "lost"
    plan = h.planner.plan(h.now)
    assert [(p.replica_id, p.pod_id) for p in plan.proposals] == [(r0, "p2")]
    # The pod comes back: ready again, and the most free.
    h.pod("p1", memory=4096)
    assert h.planner.view.pods["p1"].status == "ready"


def test_folding_is_idempotent_by_sequence() -> None:
    h = History()
    h.pod("p1")
    h.deploy("A")
    view = h.planner.view
    again = h.replay_into(h.planner)  # the same events at the same sequences
    assert again.view is view
    assert len(view.waiting) == 1
    assert view.applied_seq == h.seq


def test_requests_of_a_stopped_or_deleted_agent_stop_waiting() -> None:
    h = History()
    h.pod("p1")
    (r0, r1) = h.deploy("A", replicas=2)
    h.stopping("A", r0)  # never placed: stopped at once
    view = h.planner.view
    assert list(view.waiting) == [("A", r1)]
    h.stopping("A", r1)
    h.emit(events.AgentDeleted(agent_id="A", reason="t"))
    assert view.waiting == {}
    assert "A" not in view.agents


def _fold_sim(sim: Sim) -> ClusterView:
    view = ClusterView()
    for seq, payload in enumerate(sim.log, 1):
        aggregate = payload.TYPE.split(".")[1]
        agg_id = str(getattr(payload, names.AGGREGATE_ID_FIELDS[aggregate]))
        view.fold(event(payload, aggregate_id=agg_id, source="hive"), seq)
    return view


def _agrees(sim: Sim, view: ClusterView) -> None:
    state: HiveState = sim.state
    assert {p: pod.free() for p, pod in view.pods.items()} == {
        p: pod.free() for p, pod in state.pods.items()
    }
    assert {p: pod.status for p, pod in view.pods.items()} == {
        p: pod.status for p, pod in state.pods.items()
    }
    waiting = {
        (a.agent_id, r.replica_id)
        for a in state.agents.values()
        for r in a.replicas.values()
        if r.phase == "requested" and not a.deleted
    }
    assert set(view.waiting) == waiting


def test_view_agrees_with_the_hive_over_a_whole_lifecycle() -> None:
    """The Hive's own rules produce the history; both projections must count the same."""
    sim = Sim()
    checks = 0

    def ok(payload: Payload, identity: str = "user:test") -> None:
        nonlocal checks
        sim.ok(payload, identity)
        _agrees(sim, _fold_sim(sim))
        checks += 1

    def place(pod_id: str) -> None:
        for proposal, identity in placements(sim.state, pod_id):
            ok(proposal, identity)

    def report(status: ReplicaStatus, phases: tuple[str, ...]) -> None:
        for report, identity in pod_reports(sim.state, status, phases):
            ok(report, identity)

    for pod_id, memory in (("p1", 2048), ("p2", 1024)):
        ok(
            commands.RegisterPod(
                pod_id=pod_id, capacity=Capacity(memory_mb=memory, fuel_per_s=10**9, slots=20)
            ),
            f"pod:{pod_id}",
        )
    ok(commands.DeployAgent(name="a", spec=spec(memory=100), replicas=3))
    ok(commands.DeployAgent(name="b", spec=spec(memory=50), replicas=2))
    place("p1")
    report("running", ("scheduled",))
    # A crash releases the replica's reservation; the restart makes it wait again.
    a = sim.state.agent_named("default", "a")
    assert a is not None
    crashed = next(iter(a.replicas.values()))
    ok(
        commands.ReportReplica(
            agent_id=a.agent_id, replica_id=crashed.replica_id, pod_id="p1", status="crashed"
        ),
        "pod:p1",
    )
    sim.tick(5)
    ok(commands.RestartReplica(agent_id=a.agent_id, replica_id=crashed.replica_id), "service:hive")
    place("p2")
    report("running", ("scheduled",))
    # A rollout to a bigger version: new replicas are sized by their version.
    ok(commands.RolloutAgent(name="a", spec=spec("v2", memory=300)))
    for _ in range(4):
        place("p1")
        report("running", ("scheduled",))
        report("stopped", ("stopping",))
    # Losing a pod moves its replicas off it.
    ok(commands.ExpirePod(pod_id="p1", last_heartbeat_age_s=20.0), "service:hive")
    place("p2")
    ok(
        commands.RegisterPod(
            pod_id="p1", capacity=Capacity(memory_mb=4096, fuel_per_s=10**9, slots=20)
        ),
        "pod:p1",
    )
    ok(commands.ScaleAgent(name="b", replicas=5))
    place("p1")
    ok(commands.ScaleAgent(name="b", replicas=1))
    report("stopped", ("stopping",))
    ok(commands.DeleteAgent(name="a"))
    report("stopped", ("stopping",))
    assert checks > 40
    assert sim.state.agent_named("default", "a") is None


def test_size_comes_from_the_replicas_version() -> None:
    h = History()
    h.pod("p1", memory=1000)
    (r0,) = h.deploy("A", memory=100)
    h.scheduled("A", r0, "p1")
    h.emit(
        events.AgentRolloutStarted(
            agent_id="A", spec=spec("v2", memory=400), from_version="v1", max_surge=1
        )
    )
    h.requested("A", "A-1", version="v2")
    assert h.planner.view.demand(("A", "A-1")).memory_mb == 400
    h.scheduled("A", "A-1", "p1")
    assert h.planner.view.pods["p1"].used_memory_mb == 500
    h.stopping("A", r0)
    h.stopped("A", r0)  # the old version's size is given back, not the new one's
    assert h.planner.view.pods["p1"].used_memory_mb == 400
