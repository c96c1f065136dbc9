"""Properties of the domain over random histories: the projections agree with the Hive, and
`decide` is pure.

A history is a random sequence of what happens to a cluster (pods register and are lost, agents
are deployed, scaled, rolled out and deleted, the scheduler proposes placements from its own
view, pods report on their replicas, crashed replicas are restarted), decided and folded by the
domain (`tests.helpers.sim.Sim`). Every command is tried, accepted or not, so histories also hold
what the Hive refuses.

* After every step, the scheduler's view (`services/scheduler/view.py`) and each pod's view
  (`runtime/podview.py`), fed the same events, agree with the Hive's state on where replicas
  are placed, their phases, what each pod holds and what it has free.
* `decide` does not change the state it is given (equal state, equal digest) and gives an equal
  outcome for the same state, command and time.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.podview import PodView
from schemas import Payload, command
from schemas import commands as c
from schemas.specs import Capacity
from services.scheduler.view import ClusterView
from swarm.domain.decide import decide
from swarm.domain.placement import PLACED, RUN, TERMINAL
from swarm.domain.state import HiveState
from tests.helpers.sim import Sim
from tests.helpers.steps import spec

pytestmark = pytest.mark.timeout(120)

PODS = ("p0", "p1", "p2")
AGENTS = ("a0", "a1", "a2")
#: Placements and reports are what moves replicas, so histories hold more of them.
KINDS = (
    "register",
    "lose",
    "deploy",
    "scale",
    "rollout",
    "delete",
    "restart",
    *("place",) * 4,
    *("report",) * 4,
)

Step = tuple[str, int, int]


def _steps(kinds: tuple[str, ...], min_size: int, max_size: int) -> st.SearchStrategy[list[Step]]:
    step = st.tuples(st.sampled_from(kinds), st.integers(0, 99), st.integers(0, 99))
    return st.lists(step, min_size=min_size, max_size=max_size)


#: Some pods and agents first, so that most steps find something to act on.
histories = st.tuples(
    _steps(("register",), 1, 3), _steps(("deploy",), 1, 3), _steps(KINDS, 20, 60)
).map(lambda parts: [*parts[0], *parts[1], *parts[2]])
#: Histories are short, states small: enough examples to reach rollouts, lost pods, crashes and
#: deletions with replicas still placed, in a few seconds. Derandomized: the same histories on
#: every run, so a failure here is never a flake.
SETTINGS = settings(deadline=None, max_examples=100, derandomize=True, database=None)
#: Copying and digesting the state around every decision costs more: fewer histories.
PURITY_SETTINGS = settings(SETTINGS, max_examples=30)


class Cluster:
    """The Hive (`Sim`) and the projections fed what it writes."""

    def __init__(self) -> None:
        self.sim = Sim()
        self.scheduler = ClusterView()
        self.pods = {pod_id: PodView(pod_id) for pod_id in PODS}
        self.folded = 0

    def send(self, payload: Payload, identity: str, check_purity: bool) -> None:
        if check_purity:
            _check_decide_is_pure(self.sim, payload, identity)
        self.sim.send(payload, identity)
        for envelope in self.sim.envelopes[self.folded :]:
            self.folded += 1
            self.scheduler.fold(envelope, self.folded)
            for view in self.pods.values():
                view.fold(envelope, self.folded)

    def step(self, step: Step, check_purity: bool = False) -> None:
        """Play one step; one that finds nothing to act on (no waiting replica, ...) is skipped."""
        kind, a, b = step
        state = self.sim.state
        self.sim.tick(1)
        payload: Payload | None = None
        identity = "user:test"
        if kind == "register":
            pod_id = PODS[a % len(PODS)]
            memory, slots = 256 * (1 + b % 4), 1 + b % 5
            capacity = Capacity(memory_mb=memory, fuel_per_s=10**9, slots=slots)
            payload, identity = c.RegisterPod(pod_id=pod_id, capacity=capacity), f"pod:{pod_id}"
        elif kind == "lose":
            payload = c.ExpirePod(pod_id=PODS[a % len(PODS)], last_heartbeat_age_s=20.0)
            identity = "service:hive"
        elif kind == "deploy":
            payload = c.DeployAgent(
                name=AGENTS[a % len(AGENTS)], spec=spec(memory=64 * (1 + b % 4)), replicas=b % 4
            )
        elif kind == "scale":
            payload = c.ScaleAgent(name=AGENTS[a % len(AGENTS)], replicas=b % 5)
        elif kind == "rollout":
            version = f"v{self.sim.seq}"
            payload = c.RolloutAgent(
                name=AGENTS[a % len(AGENTS)], spec=spec(version, memory=64 * (1 + b % 4))
            )
        elif kind == "delete":
            payload = c.DeleteAgent(name=AGENTS[a % len(AGENTS)])
        elif kind == "place":
            payload, identity = self._proposal(a, b), "service:scheduler"
        elif kind == "report":
            placed = sorted(
                (agent.agent_id, r.replica_id, r.pod_id)
                for agent in state.agents.values()
                for r in agent.replicas.values()
                if r.phase in PLACED and r.pod_id is not None
            )
            if placed:
                agent_id, replica_id, pod_id = placed[a % len(placed)]
                status = ("starting", "running", "crashed", "stopped")[b % 4]
                payload = c.ReportReplica(
                    agent_id=agent_id, replica_id=replica_id, pod_id=pod_id, status=status
                )
                identity = f"pod:{pod_id}"
        elif kind == "restart":
            crashed = sorted(
                (agent.agent_id, r.replica_id)
                for agent in state.agents.values()
                for r in agent.replicas.values()
                if r.phase == "crashed"
            )
            if crashed:
                self.sim.tick(3600)  # past any backoff
                agent_id, replica_id = crashed[a % len(crashed)]
                payload = c.RestartReplica(agent_id=agent_id, replica_id=replica_id)
                identity = "service:hive"
        if payload is not None:
            self.send(payload, identity, check_purity)

    def _proposal(self, a: int, b: int) -> Payload | None:
        """What the scheduler would propose: a waiting replica, on a ready pod of its view that
        has room for it."""
        view = self.scheduler
        waiting = list(view.waiting)
        if not waiting:
            return None
        key = waiting[a % len(waiting)]
        demand = view.demand(key)
        fits = [
            pod.pod_id
            for pod in view.pods.values()
            if pod.status == "ready"
            and pod.free()[0] >= demand.memory_mb
            and pod.free()[1] >= demand.fuel_per_s
            and pod.free()[2] >= 1
        ]
        if not fits:
            return None
        return c.ProposePlacement(
            agent_id=key[0], replica_id=key[1], pod_id=fits[b % len(fits)], policy="test"
        )


def _check_decide_is_pure(sim: Sim, payload: Payload, identity: str) -> None:
    env = command(payload, source="test", identity=identity, time=sim.now)
    before = copy.deepcopy(sim.state)
    digest = sim.state.digest()
    first = decide(sim.state, env, sim.now)
    assert sim.state == before
    assert sim.state.digest() == digest
    second = decide(sim.state, env, sim.now)
    assert second == first


def _check_agreement(cluster: Cluster) -> None:
    state: HiveState = cluster.sim.state
    # Replicas that are neither stopped nor failed, with their phase: the views forget the rest.
    live = {
        (agent.agent_id, r.replica_id): r
        for agent in state.agents.values()
        for r in agent.replicas.values()
        if r.phase not in TERMINAL
    }
    phases = {key: r.phase for key, r in live.items()}

    # The Hive's own accounting: a pod holds exactly the replicas placed on it.
    for pod_id, pod in state.pods.items():
        assert pod.replicas == {
            key for key, r in live.items() if r.pod_id == pod_id and r.phase in PLACED
        }

    scheduler = cluster.scheduler
    assert {p: (pod.free(), pod.status, pod.replicas) for p, pod in scheduler.pods.items()} == {
        p: (pod.free(), pod.status, pod.replicas) for p, pod in state.pods.items()
    }
    assert {
        (agent.agent_id, r.replica_id): r.phase
        for agent in scheduler.agents.values()
        for r in agent.replicas.values()
    } == phases
    assert {key: r.pod_id for key, r in live.items() if r.phase in PLACED} == {
        (agent.agent_id, r.replica_id): r.pod_id
        for agent in scheduler.agents.values()
        for r in agent.replicas.values()
        if r.phase in PLACED
    }
    assert set(scheduler.waiting) == {
        key
        for key, phase in phases.items()
        if phase == "requested" and not state.agents[key[0]].deleted
    }

    for pod_id, pod in state.pods.items():
        view = cluster.pods[pod_id]
        assert {(r.agent_id, r.replica_id): r.phase for r in view.replicas.values()} == phases
        wanted, stopping = view.wanted(), view.stopping()
        here = {key[1]: r for key, r in live.items() if r.pod_id == pod_id}
        assert set(wanted) == {rid for rid, r in here.items() if r.phase in RUN}
        assert set(stopping) == {rid for rid, r in here.items() if r.phase == "stopping"}
        # What the pod runs, sized by the specs its view holds, is what the Hive reserved.
        sizes = [a.spec.resources for a in (*wanted.values(), *stopping.values())]
        assert (
            pod.capacity.memory_mb - sum(s.memory_mb for s in sizes),
            pod.capacity.fuel_per_s - sum(s.fuel_per_s for s in sizes),
            pod.capacity.slots - len(sizes),
        ) == pod.free()


@pytest.mark.timeout(120)
@SETTINGS
@given(histories)
def test_scheduler_and_pod_views_agree_with_the_hive(history: list[Step]) -> None:
    cluster = Cluster()
    for step in history:
        cluster.step(step)
        _check_agreement(cluster)


@pytest.mark.timeout(120)
@PURITY_SETTINGS
@given(histories)
def test_decide_does_not_change_its_state_and_is_deterministic(history: list[Step]) -> None:
    cluster = Cluster()
    for step in history:
        cluster.step(step, check_purity=True)
