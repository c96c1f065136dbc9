"""The intake's tables: after every event they describe exactly the view the planner folded, a
planner rebuilt from them plans the same proposals, and a handler that fails leaves them (and,
once run again, the view) as if it had run once."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import CommandAccepted, CommandRejected, Payload, commands, event, names
from schemas.specs import Capacity
from services.scheduler.intake import Intake, decode
from services.scheduler.planner import Planner
from services.scheduler.policies import MostFreeCapacity
from services.scheduler.tables import TABLES, rows_of, view_of
from swarm.kernel.streaming import StreamEvent
from tests.helpers.history import IDS, spec
from tests.helpers.sim import Sim
from tests.helpers.steps import pod_reports


def _planner() -> Planner:
    return Planner(MostFreeCapacity(), preemption=False, ids=IDS)


@dataclass
class Driver:
    """The Hive's rules (`Sim`) make the history; every event goes through the intake's handler
    into plain dict tables, and through a reference planner that folds without tables."""

    sim: Sim = field(default_factory=Sim)
    tables: dict[str, dict[Any, Any]] = field(default_factory=lambda: {t: {} for t in TABLES})
    intake: Intake = field(default_factory=lambda: Intake(_planner(), clock=lambda: 0.0))
    reference: Planner = field(default_factory=_planner)
    seq: int = 0
    checks: int = 0
    rejected: int = 0

    def feed(self, payload: Payload) -> None:
        self.seq += 1
        aggregate = payload.TYPE.split(".")[1]
        agg_id = str(getattr(payload, names.AGGREGATE_ID_FIELDS[aggregate]))
        envelope = event(payload, aggregate_id=agg_id, source="hive")
        subject = names.event_subject(aggregate, agg_id, payload.TYPE.split(".")[2])
        self.intake.handle(
            self.tables,  # type: ignore[arg-type]
            StreamEvent(self.seq, subject, datetime.now(UTC), envelope, {}),
        )
        self.reference.apply(envelope, self.seq, 0.0)
        self.check()

    def check(self) -> None:
        planner = self.intake.planner
        assert self.tables == rows_of(planner.view, planner.attempts)
        assert self.tables == rows_of(self.reference.view, self.reference.attempts)
        self.checks += 1

    def send(self, payload: Payload, identity: str = "user:test") -> None:
        before = len(self.sim.log)
        self.sim.ok(payload, identity)
        for p in self.sim.log[before:]:
            self.feed(p)

    def place(self, reject: int = 0, now: float = 0.0) -> None:
        """Plan; the first `reject` proposals are refused, the others committed."""
        plan = self.intake.planner.plan(now)
        self.reference.plan(now)
        for p in plan.proposals:
            if reject > 0:
                reject -= 1
                self.rejected += 1
                self.feed(
                    CommandRejected(
                        command_id=p.command_id,
                        command_type=commands.ProposePlacement.TYPE,
                        reason="quota",
                        rule="quota",
                    )
                )
                continue
            self.send(
                commands.ProposePlacement(
                    agent_id=p.agent_id, replica_id=p.replica_id, pod_id=p.pod_id, policy="t"
                ),
                "service:scheduler",
            )

    def report(self, status: commands.ReplicaStatus, phases: tuple[str, ...]) -> None:
        for report, identity in pod_reports(self.sim.state, status, phases):
            self.send(report, identity)

    def pod(self, pod_id: str, memory: int) -> None:
        self.send(
            commands.RegisterPod(
                pod_id=pod_id, capacity=Capacity(memory_mb=memory, fuel_per_s=10**9, slots=20)
            ),
            f"pod:{pod_id}",
        )


def lifecycle(d: Driver) -> None:
    d.pod("p1", 2048)
    d.pod("p2", 1024)
    d.send(commands.DeployAgent(name="a", spec=spec(memory=100), replicas=3))
    d.send(commands.DeployAgent(name="b", spec=spec(memory=50), replicas=2))
    d.place(reject=2)  # two rejections: their requests count an attempt each
    d.place(now=1e9)  # their retries are due
    d.place()
    d.report("running", ("scheduled",))
    a = d.sim.state.agent_named("default", "a")
    assert a is not None
    crashed = next(r for r in a.replicas.values() if r.pod_id is not None)
    d.send(
        commands.ReportReplica(
            agent_id=a.agent_id,
            replica_id=crashed.replica_id,
            pod_id=crashed.pod_id,
            status="crashed",
        ),
        f"pod:{crashed.pod_id}",
    )
    d.sim.tick(5)
    d.send(
        commands.RestartReplica(agent_id=a.agent_id, replica_id=crashed.replica_id), "service:hive"
    )
    d.place()
    d.send(commands.RolloutAgent(name="a", spec=spec("v2", memory=300)))
    for _ in range(4):
        d.place()
        d.report("running", ("scheduled",))
        d.report("stopped", ("stopping",))
    d.send(commands.ExpirePod(pod_id="p1", last_heartbeat_age_s=20.0), "service:hive")
    d.place()
    d.pod("p1", 4096)
    d.send(commands.ScaleAgent(name="b", replicas=5))
    d.place()
    d.send(commands.ScaleAgent(name="b", replicas=1))
    d.report("stopped", ("stopping",))
    d.send(commands.DeleteAgent(name="a"))
    d.report("stopped", ("stopping",))


def test_tables_follow_the_view_event_by_event() -> None:
    d = Driver()
    lifecycle(d)
    assert d.checks > 50
    assert d.rejected == 2
    assert d.tables["replicas"]  # b's replica is still there
    assert d.sim.state.agent_named("default", "a") is None


def test_a_planner_rebuilt_from_the_tables_plans_the_same() -> None:
    d = Driver()
    d.pod("p1", 1024)
    d.pod("p2", 512)
    d.send(commands.DeployAgent(name="a", spec=spec(memory=100), replicas=4))
    d.place(reject=1)
    d.send(commands.DeployAgent(name="b", spec=spec(memory=300), replicas=5))
    view, attempts = view_of(
        d.tables["pods"].items(),
        d.tables["agents"].items(),
        d.tables["replicas"].items(),
        d.seq,
    )
    rebuilt = _planner()
    rebuilt.restore(view, attempts)
    assert rows_of(rebuilt.view, rebuilt.attempts) == d.tables
    assert list(rebuilt.view.waiting.items()) == list(d.reference.view.waiting.items())
    assert rebuilt.view.causes == d.reference.view.causes
    # Same proposals, with the same ids (the rejected one's attempt number included).
    ids = [(p.command_id, p.pod_id) for p in rebuilt.plan(1e9).proposals]
    assert ids == [(p.command_id, p.pod_id) for p in d.reference.plan(1e9).proposals]
    assert any(cid.split("-")[2] == "1" for cid, _ in ids)


def test_a_failing_fold_is_run_again_on_the_view_rebuilt_from_the_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = Driver()
    d.pod("p1", 1024)
    d.send(commands.DeployAgent(name="a", spec=spec(memory=100), replicas=2))
    d.place()
    apply = Planner.apply
    failures = 0

    def flaky(self: Planner, envelope: Any, seq: int, now: float) -> Any:
        nonlocal failures
        result = apply(self, envelope, seq, now)  # folds into the view, then fails
        if self is d.intake.planner and failures == 0:
            failures += 1
            raise RuntimeError("boom")
        return result

    monkeypatch.setattr(Planner, "apply", flaky)
    saved = copy.deepcopy(d.tables)
    before = len(d.sim.log)
    with pytest.raises(RuntimeError):
        d.send(commands.DeployAgent(name="b", spec=spec(memory=200), replicas=1))
    # The stream app rolls the tables back and runs the event again (see swarm.kernel.streaming).
    d.tables = saved
    d.seq -= 1
    d.reference = _planner()
    d.reference.restore(
        *view_of(saved["pods"].items(), saved["agents"].items(), saved["replicas"].items(), d.seq)
    )
    for payload in d.sim.log[before:]:  # deployed (again), replica_requested
        d.feed(payload)
    assert failures == 1
    assert [k[0] for k in d.intake.planner.view.waiting] == [
        d.sim.state.agent_named("default", "b").agent_id  # type: ignore[union-attr]
    ]


def test_events_the_planner_does_not_fold_are_not_decoded() -> None:
    accepted = event(
        CommandAccepted(command_id="c1", command_type="x"), aggregate_id="c1", source="hive"
    )
    assert decode(accepted.to_json()) is None
    rejected = event(CommandRejected(command_id="c1", reason="r"), aggregate_id="c1", source="hive")
    decoded = decode(rejected.to_json())
    assert decoded is not None
    assert isinstance(decoded.data, CommandRejected)
    with pytest.raises(ValueError, match="Expecting value"):
        decode(b"not json")  # dead-lettered as malformed by the stream app
