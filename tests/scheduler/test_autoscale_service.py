"""The autoscaler and the task distributor on real NATS JetStream, with a real Hive.

Metrics are the pods' own samples: synthetic ones published on `metrics_subject(pod, "agent")`
in the pods' format (so the ramp is exactly known), or a real pod's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import commands, event, events, names
from schemas.specs import AutoscalePolicy
from services.scheduler.autoscaler_service import (
    AutoscalerService,
    AutoscalerSettings,
    Status,
)
from swarm.devstack.embedded import EmbeddedNats
from swarm.devstack.principals import LISTING, Roster, issue
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.signing import CommandSigner, MeshClaim
from swarm.kernel.tasks import cancel_and_wait
from tests.helpers.agents import ECHO
from tests.helpers.history import spec
from tests.helpers.pods import cluster, running_on, running_pod
from tests.helpers.pods import spec as wasm_spec
from tests.helpers.samples import sample
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import true, wait_until

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def autoscaler(url: str, **config: Any) -> AsyncIterator[AutoscalerService]:
    service = AutoscalerService(Settings(nats_url=url), AutoscalerSettings(**config))
    async with in_this_loop(service):
        yield service
    assert service.status is Status.STOPPED


async def scaled_events(client: EventLog, agent_id: str) -> list[tuple[float, dict[str, Any]]]:
    """(append time, data) of every `agent.scaled` of the agent on the log."""
    out = []
    async for d in client.replay(
        names.STREAM_EVENTS, subjects=[names.event_subject("agent", agent_id, "scaled")]
    ):
        out.append((d.timestamp.timestamp(), json.loads(d.data)["data"]))
    return out


async def agent_id_of(stack: Stack, name: str) -> str:
    async def known() -> bool:
        return bool((await stack.query(names.QUERY_AGENTS_GET, {"name": name})).get("agent"))

    await wait_until(known, 45, f"agent {name} deployed")
    agent = (await stack.query(names.QUERY_AGENTS_GET, {"name": name}))["agent"]
    return str(agent["agent_id"])


async def test_a_synthetic_ramp_scales_up_before_saturation_then_down_when_idle(
    tmp_path: Path,
) -> None:
    capacity = 50.0  # messages/s one replica carries
    policy = AutoscalePolicy(
        min_replicas=1,
        max_replicas=4,
        target_rate=capacity,
        cooldown_s=1.0,
        scale_down_after_s=1.5,
        horizon_s=2.0,
    )
    async with running_stack(tmp_path) as stack:
        await stack.send(
            [(commands.DeployAgent(name="ramp", spec=spec(), autoscale=policy), "user:test")]
        )
        agent_id = await agent_id_of(stack, "ramp")
        ramp = Ramp(stack.client, agent_id)
        async with autoscaler(stack.url, step_s=0.5, stale_after_s=2.0, tasks=False) as service:
            # +10 msg/s every second from 10 msg/s: one replica saturates 4 s in.
            feeding = asyncio.create_task(ramp.feed(lambda t: 10.0 + 10.0 * t))
            try:

                async def scaled_up() -> bool:
                    return bool(await scaled_events(stack.client, agent_id))

                await wait_until(scaled_up, 8, "a scale-up")
            finally:
                await cancel_and_wait([feeding])
            at, first = (await scaled_events(stack.client, agent_id))[0]
            decision = first["autoscale"]
            assert decision["direction"] == "up"
            assert first["previous"] == 1
            assert first["replicas"] >= 2
            # Decided while the actual rate was still below one replica's capacity ...
            rate_then = ramp.rate_at(at)
            assert rate_then < capacity, (rate_then, decision)
            assert decision["forecast"]["rate"] < capacity
            # ... because the forecast said it would not be for long; the event carries it all.
            forecast = decision["forecast"]
            assert forecast["rate_forecast"] > capacity
            assert forecast["method"] == "holt"
            assert forecast["horizon_s"] == 2.0
            assert forecast["capacity_rate"] == capacity
            assert forecast["reporting"] == 1
            assert "needed within 2s" in decision["reason"]

            # The replica answering the query may not have folded that event yet.
            async def hive_agrees() -> bool:
                reply = await stack.query(names.QUERY_AGENTS_GET, {"agent_id": agent_id})
                return bool(reply["agent"]["replicas"]["desired"] >= first["replicas"])

            await wait_until(hive_agrees, 45, "the Hive's state showing the scale-up")
            agent = (await stack.query(names.QUERY_AGENTS_GET, {"agent_id": agent_id}))["agent"]
            assert agent["autoscale"]["target_rate"] == capacity

            # Demand collapses to 5 msg/s: one replica is enough, but only after 1.5 s of that.
            quiet_from = time.time()
            count = len(await scaled_events(stack.client, agent_id))
            feeding = asyncio.create_task(ramp.feed(lambda t: 5.0))
            try:

                async def scaled_down() -> bool:
                    events = await scaled_events(stack.client, agent_id)
                    return any(e["autoscale"]["direction"] == "down" for _, e in events[count:])

                await wait_until(scaled_down, 45, "a scale-down")
            finally:
                await cancel_and_wait([feeding])
            events = await scaled_events(stack.client, agent_id)
            at, down = next(
                (t, e) for t, e in events[count:] if e["autoscale"]["direction"] == "down"
            )
            assert down["replicas"] == 1
            assert at - quiet_from >= policy.scale_down_after_s
            assert "stayed within 1 replicas" in down["autoscale"]["reason"]
        assert service.scales_sent >= 2
        assert service.scales_failed == 0


class Ramp:
    """Publishes one replica's samples every 0.25 s, as its pod would, at a chosen rate."""

    def __init__(self, client: EventLog, agent_id: str) -> None:
        self.client = client
        self.agent_id = agent_id
        self.received = 0.0
        self.last = time.time()
        #: (time, message rate) of every sample published.
        self.published: list[tuple[float, float]] = []

    async def feed(self, rate_at: Callable[[float], float]) -> None:
        subject = names.metrics_subject("p1", names.METRIC_AGENT)
        start = time.time()
        while True:
            now = time.time()
            rate = rate_at(now - start)
            self.received += rate * (now - self.last)
            self.last = now
            replica = (f"{self.agent_id}-0", int(self.received), 0)
            body = sample(now, [replica], agent_id=self.agent_id)
            await self.client.nc.publish(subject, json.dumps(body).encode())
            self.published.append((now, rate))
            await asyncio.sleep(0.25)

    def rate_at(self, at: float) -> float:
        """The rate of the last sample published before `at`."""
        return max(rate for t, rate in self.published if t <= at)


# --- task distribution ---------------------------------------------------------------------------


class FakeReplica:
    """Answers tasks on a replica's own subject, as a replica would; can refuse like a full one."""

    def __init__(self, nc: NATS, replica_id: str) -> None:
        self.nc = nc
        self.replica_id = replica_id
        self.handled = 0
        self.refusing = False

    async def on_task(self, msg: Msg) -> None:
        if self.refusing:
            error = {names.HEADER_AGENT_ERROR: "1"}
            await self.nc.publish(msg.reply, b'{"error": "mailbox full"}', headers=error)
            return
        self.handled += 1
        status = {names.HEADER_AGENT_STATUS: "0"}
        await self.nc.publish(msg.reply, self.replica_id.encode(), headers=status)


async def send_tasks(client: EventLog, queue: str, n: int, inbox: str) -> None:
    for i in range(n):
        await client.js.publish(
            names.task_subject(queue),
            json.dumps({"task": i}).encode(),
            headers={names.HEADER_TASK_REPLY: inbox},
        )


async def test_tasks_go_to_the_replica_with_spare_capacity_and_follow_the_load(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    try:
        client = await EventLog.connect(url, name="test")
        nc = client.nc
        replicas = {rid: FakeReplica(nc, rid) for rid in ("r1", "r2")}
        for rid, fake in replicas.items():
            await nc.subscribe(names.mesh_replica_subject(rid), cb=fake.on_task)
        answers: Counter[bytes] = Counter()

        async def on_answer(msg: Msg) -> None:
            answers[msg.data] += 1

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_answer)

        async with autoscaler(url, step_s=60, stale_after_s=60, mailbox_size=256) as service:

            async def folded(depths: dict[str, int]) -> bool:
                loads = service.autoscaler.metrics.replicas
                return all(
                    rid in loads and loads[rid].last.mailbox == d for rid, d in depths.items()
                )

            async def report(t: float, depths: dict[str, int]) -> None:
                """The replicas' mailbox depths in a metrics sample at `t`, folded."""
                body = sample(t, [(rid, 0, depth) for rid, depth in depths.items()])
                await nc.publish(
                    names.metrics_subject("p1", names.METRIC_AGENT), json.dumps(body).encode()
                )
                await wait_until(lambda: folded(depths), 45, "samples folded")

            async def all_answered(tasks: int, what: str) -> None:
                """`tasks` more tasks sent, and as many answers counted since the last clear."""
                await send_tasks(client, "jobs", tasks, inbox)
                await wait_until(lambda: true(sum(answers.values()) == tasks), 15, what)

            # r1 reports a deep mailbox, r2 an empty one.
            await report(1, {"r1": 200, "r2": 0})
            await all_answered(40, "40 answers")
            assert answers[b"r2"] >= 36, answers

            # The load shifts: now r2 is the busy one.
            answers.clear()
            await report(2, {"r1": 0, "r2": 240})
            await all_answered(40, "40 more answers")
            assert answers[b"r1"] >= 36, answers

            # r1 refuses (its mailbox filled between samples): its tasks go to r2 instead.
            answers.clear()
            replicas["r1"].refusing = True
            await report(3, {"r1": 0, "r2": 0})
            await all_answered(10, "10 more answers")
            assert answers == Counter({b"r2": 10})

            # Every task was acknowledged once: the work queue is empty.
            await nc.flush()

            async def drained() -> bool:
                info = await client.js.stream_info(names.STREAM_TASKS)
                return info.state.messages == 0

            await wait_until(drained, 45, "task queue drained")
            assert service.tasks_done == 90
            assert replicas["r1"].handled + replicas["r2"].handled == 90
        await client.close()
    finally:
        server.stop()


async def test_a_task_answered_by_another_pod_than_the_replicas_is_not_done(
    tmp_path: Path,
) -> None:
    """Any pod may listen on any replica's subject: given the stack's principals, the
    distributor takes an answer only signed by the pod the log places the replica on, as that
    agent; a task answered by an impostor goes to the next replica. A pod's sample naming
    another pod than its subject's is not folded."""
    keys = {p.name: p for p in issue(tmp_path / "keys", [("pod-a", "pod"), ("pod-b", "pod")])}
    signers = {name: CommandSigner.from_seed_file(p.seed_file) for name, p in keys.items()}
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    try:
        client = await EventLog.connect(url, name="test")
        nc = client.nc
        answered: Counter[bytes] = Counter()

        def answering(rid: str, pod: str) -> Callable[[Msg], Coroutine[Any, Any, None]]:
            async def on_task(msg: Msg) -> None:
                body = f"{rid} by {pod}".encode()
                claim = MeshClaim("agent:a1", rid, 1)
                now_ms = int(time.time() * 1000)
                headers = signers[pod].mesh_headers(msg.reply, body, claim, now_ms)
                await nc.publish(msg.reply, body, headers=headers)

            return on_task

        # The log places r1 on pod-a and r2 on pod-b; pod-b answers on both subjects.
        for rid, pod in (("r1", "pod-a"), ("r2", "pod-b")):
            placed = events.ReplicaScheduled(
                agent_id="a1", replica_id=rid, pod_id=pod, policy="test", reason="test"
            )
            envelope = event(placed, aggregate_id="a1", source="hive")
            subject = names.event_subject("agent", "a1", "replica_scheduled")
            await client.js.publish(subject, envelope.model_dump_json().encode())
            await nc.subscribe(names.mesh_replica_subject(rid), cb=answering(rid, "pod-b"))

        async def on_answer(msg: Msg) -> None:
            answered[msg.data] += 1

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_answer)
        service = AutoscalerService(
            Settings(nats_url=url),
            AutoscalerSettings(step_s=60, stale_after_s=60, mailbox_size=256),
            principals=Roster(tmp_path / "keys" / LISTING),
        )
        async with in_this_loop(service):
            loads = service.autoscaler.metrics.replicas
            # pod-b's sample about r1 naming pod-a (not folded), then the pods' own: r1 idle
            # (the distributor's first choice), r2 busier.
            forged = sample(2, [("r1", 0, 200)], pod_id="pod-a")
            samples = [("pod-b", forged)] + [
                (pod, sample(1, [(rid, 0, depth)], pod_id=pod))
                for pod, rid, depth in (("pod-a", "r1", 0), ("pod-b", "r2", 100))
            ]
            for pod, body in samples:
                metrics = names.metrics_subject(pod, names.METRIC_AGENT)
                await nc.publish(metrics, json.dumps(body).encode())
            await wait_until(lambda: true({"r1", "r2"} <= set(loads)), 45, "samples folded")
            await wait_until(lambda: true(service.live.is_set()), 45, "events read")
            assert loads["r1"].last.t == 1  # the forged sample (t=2) would have kept t=2
            assert service.autoscaler.placed == {"r1": ("a1", "pod-a"), "r2": ("a1", "pod-b")}

            await send_tasks(client, "jobs", 5, inbox)
            await wait_until(lambda: true(service.tasks_done == 5), 45, "5 tasks done")
            # Each went to r1 first, whose answer was pod-b's, then to r2.
            assert service.answers_refused == 5
            await nc.flush()
            await wait_until(lambda: true(sum(answered.values()) == 5), 15, "5 answers forwarded")
            assert answered == Counter({b"r2 by pod-b": 5})
        await client.close()
    finally:
        server.stop()


async def test_tasks_reach_real_replicas_through_a_pod_and_their_answers_come_back(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1") as (pod, _):
        deploy = commands.DeployAgent(
            name="worker", spec=wasm_spec(ECHO, task_queues=["jobs"]), replicas=2
        )
        await stack.send([(deploy, "user:test")])
        await running_on(stack, "worker", "p1", replicas=2)
        async with autoscaler(stack.url, step_s=60, stale_after_s=10) as service:
            # The pod's own samples tell the distributor which replicas take "jobs".
            async def both_known() -> bool:
                loads = service.autoscaler.metrics.replicas.values()
                return sum("jobs" in load.last.task_queues for load in loads) == 2

            await wait_until(both_known, 45, "both replicas reported")
            nc = stack.client.nc
            answers: list[bytes] = []

            async def on_answer(msg: Msg) -> None:
                answers.append(msg.data)

            inbox = nc.new_inbox()
            await nc.subscribe(inbox, cb=on_answer)
            await send_tasks(stack.client, "jobs", 20, inbox)
            await wait_until(lambda: true(len(answers) == 20), 15, "20 answers")
            assert sorted(answers) == sorted(json.dumps({"task": i}).encode() for i in range(20))
            # Both replicas took a share, and their own counters saw every task.
            assert set(service.board.assigned) == set(pod.replicas)
            assert all(n >= 5 for n in service.board.assigned.values()), service.board.assigned
            assert sum(r.metrics.received for r in pod.replicas.values()) == 20
            assert sum(r.metrics.calls for r in pod.replicas.values()) == 20


async def test_a_real_pod_under_a_rising_load_gets_a_second_replica_in_time(
    tmp_path: Path,
) -> None:
    capacity = 20.0
    # A horizon of 4 s: with the load rising 4 msg/s every second, the forecast runs about
    # 16 msg/s ahead of the present, so it passes the capacity seconds before the present does:
    # the margin a starved autoscaler (beside busy loops) has to decide ahead of demand.
    policy = AutoscalePolicy(
        max_replicas=3, target_rate=capacity, cooldown_s=1.0, scale_down_after_s=60, horizon_s=4.0
    )
    # The pod samples every 0.5 s (tests.runtime.test_pod.running_pod).
    async with cluster(tmp_path) as stack, running_pod(stack, "p1") as (pod, _):
        deploy = commands.DeployAgent(name="echo", spec=wasm_spec(ECHO), autoscale=policy)
        await stack.send([(deploy, "user:test")])
        await running_on(stack, "echo", "p1")
        agent_id = await agent_id_of(stack, "echo")
        async with autoscaler(stack.url, step_s=0.5, stale_after_s=2.0, tasks=False):
            nc = stack.client.nc
            subject = names.mesh_agent_subject("default", "echo")
            #: (time, rate) at which messages were being sent.
            sent: list[tuple[float, float]] = []
            start = time.time()

            async def load() -> None:
                # 4 msg/s more every second, from 4 msg/s: 20 msg/s is reached 4 s in.
                while True:
                    now = time.time()
                    rate = 4.0 + 4.0 * (now - start)
                    await nc.publish(subject, b"ping")
                    sent.append((now, rate))
                    await asyncio.sleep(1.0 / rate)

            loading = asyncio.create_task(load())
            try:

                async def scaled() -> bool:
                    return bool(await scaled_events(stack.client, agent_id))

                await wait_until(scaled, 45, "a scale-up")
                at, first = (await scaled_events(stack.client, agent_id))[0]
                # The scheduler places the new replica and the pod starts it.
                await running_on(stack, "echo", "p1", replicas=first["replicas"])
            finally:
                await cancel_and_wait([loading])
            decision = first["autoscale"]
            assert decision["direction"] == "up"
            # Ahead of demand by the autoscaler's own measure: the rate it saw one replica could
            # take, the forecast it acted on could not. (Not judged by the wall clock: how late
            # the decision reached the log depends on the machine's load, not on the rule.)
            rate_then = max(rate for t, rate in sent if t <= at)
            assert decision["forecast"]["rate"] < capacity, (rate_then, decision)
            assert decision["forecast"]["rate_forecast"] > capacity, (rate_then, decision)
            # What the pod counted is what the autoscaler saw (one replica then).
            assert decision["forecast"]["reporting"] == 1
            assert sum(r.metrics.received for r in pod.replicas.values()) <= len(sent)
