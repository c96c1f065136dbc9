"""Leases that survive load: a lease stretches to the heartbeat jitter measured, and a pod whose
heartbeats are late is declared lost only when it does not answer a liveness probe either."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from schemas import commands, names
from services.hive import reconcile
from services.hive.reconcile import Heartbeats, Reconciler
from swarm.domain.state import HiveState
from swarm.kernel.eventlog import EventLog
from swarm.kernel.ids import IdKey
from tests.helpers.sim import Sim
from tests.helpers.steps import deploy, place_all, pod

pytestmark = pytest.mark.timeout(30)


def test_a_lease_stretches_to_the_jitter_measured_within_a_bound() -> None:
    beats = Heartbeats()
    assert beats.lease("p", 10.0) == 10.0  # nothing measured yet
    t = 1000.0
    for _ in range(20):  # every second, like clockwork
        t += 1.0
        beats.beat("p", at=t)
    assert beats.lease("p", 10.0) == 10.0
    for gap in (4.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0):  # a loaded machine: late, bunched beats
        t += gap
        beats.beat("p", at=t)
    assert beats.lease("p", 10.0) == pytest.approx(20.0)  # 4 x the slowest recent gap
    for _ in range(3):
        t += 30.0
        beats.beat("p", at=t)
    assert beats.lease("p", 10.0) == 60.0  # never beyond 6 x its own


def expire(pod_id: str, age: float = 12.0) -> tuple[str, commands.ExpirePod]:
    return (f"expire-{pod_id}", commands.ExpirePod(pod_id=pod_id, last_heartbeat_age_s=age))


@pytest.fixture
def reconciler(event_log: EventLog) -> Reconciler:
    return Reconciler(event_log, Heartbeats(), lambda: None, ids=IdKey.random())


async def test_a_pod_that_answers_its_probe_is_not_expired(
    reconciler: Reconciler, event_log: EventLog
) -> None:
    async def answer(msg: object) -> None:
        await msg.respond(b"")  # type: ignore[attr-defined]

    sub = await event_log.nc.subscribe(names.probe_subject("busy-pod"), cb=answer)
    try:
        planned = [expire("busy-pod"), expire("gone-pod"), expire("lost-pod", age=0.0)]
        kept = await reconciler._confirmed(planned)
    finally:
        await sub.unsubscribe()
    assert [p.pod_id for _, p in kept] == ["gone-pod", "lost-pod"]  # type: ignore[attr-defined]
    gone = kept[0][1]
    assert isinstance(gone, commands.ExpirePod)
    assert gone.probed
    assert not kept[1][1].probed  # type: ignore[attr-defined]  # already lost: no probe
    assert reconciler.heartbeats.age("busy-pod") < 1.0  # its answer counts as a heartbeat


@pytest.fixture
async def hung_pod(
    event_log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[float]]:
    """A pod "hung-pod" that listens for its probes and never answers (a stopped process: its
    subscription stays); the times it was asked. Probes time out after 0.2 s."""
    monkeypatch.setattr(reconcile, "PROBE_TIMEOUT_S", 0.2)
    asked: list[float] = []

    async def hung(msg: object) -> None:
        asked.append(time.monotonic())

    sub = await event_log.nc.subscribe(names.probe_subject("hung-pod"), cb=hung)
    try:
        yield asked
    finally:
        await sub.unsubscribe()


async def test_a_pod_that_listens_but_never_answers_is_lost_at_its_second_silent_probe(
    reconciler: Reconciler, hung_pod: list[float]
) -> None:
    """One probe left unanswered on a loaded machine is not death: the pod is given a second,
    twice as long, and declared lost only when that goes unanswered too."""
    first = await reconciler._confirmed([expire("hung-pod")])
    assert first == []  # not yet
    assert reconciler.silent == {"hung-pod": 1}
    started = time.monotonic()
    second = await reconciler._confirmed([expire("hung-pod")])
    waited = time.monotonic() - started
    assert [p.pod_id for _, p in second] == ["hung-pod"]  # type: ignore[attr-defined]
    assert second[0][1].probed  # type: ignore[attr-defined]
    assert len(hung_pod) == 2
    assert waited >= 0.4  # the second probe was given twice as long
    assert reconciler.silent == {}


async def test_a_probe_that_timed_out_while_the_hive_stalled_counts_for_nothing(
    reconciler: Reconciler, hung_pod: list[float]
) -> None:
    # This process's loop held for longer than the probe's time: its timeout fires late.
    asyncio.get_running_loop().call_later(0.05, time.sleep, 0.6)
    kept = await reconciler._confirmed([expire("hung-pod")])
    assert kept == []
    assert reconciler.silent == {}  # not counted against the pod


async def test_a_late_pod_that_beats_again_starts_its_probes_afresh(
    reconciler: Reconciler, hung_pod: list[float]
) -> None:
    assert await reconciler._confirmed([expire("hung-pod")]) == []
    assert reconciler.silent == {"hung-pod": 1}
    assert await reconciler._confirmed([]) == []  # its heartbeats came back: not late
    assert reconciler.silent == {}
    assert await reconciler._confirmed([expire("hung-pod")]) == []  # a first probe again


def test_a_pod_registered_long_after_the_election_gets_its_whole_lease(
    reconciler: Reconciler,
) -> None:
    """A pod that registers before its first heartbeat arrives (its heartbeat thread still
    connecting on a loaded machine) is not expired at once: its lease runs from when the Hive
    learned of it, not from the Hive's election long before."""
    sim = Sim()
    reconciler.heartbeats.since -= 3600.0  # elected an hour ago
    pod(sim, "new")  # lease 10 s by default
    assert reconciler.plan(sim.state) == []
    assert reconciler.heartbeats.age("new") < 1.0
    reconciler.heartbeats.seen["new"] -= 60.0  # ...and then silent for a minute: expired
    assert [p.pod_id for _, p in reconciler.plan(sim.state)] == ["new"]  # type: ignore[attr-defined]


def test_the_reason_a_pod_is_lost_names_its_lease_and_the_probe() -> None:
    sim = Sim()
    pod(sim, "p1")
    deploy(sim, replicas=1)
    place_all(sim, "p1")
    sim.ok(
        commands.ExpirePod(pod_id="p1", last_heartbeat_age_s=31.5, lease_s=30.0, probed=True),
        "service:hive",
    )
    state: HiveState = sim.state
    assert state.pods["p1"].status == "lost"
    lost = [e for e in sim.log if type(e).__name__ == "PodLost"]
    assert lost[0].reason == (  # type: ignore[attr-defined]
        "lease expired (31.5s without heartbeat, lease 30.0s; no answer to a liveness probe)"
    )
