"""Who may answer whom on a stack's NATS (`swarm.devstack.principals`): nobody publishes into
another principal's inbox but in answer to a request it received (`allow_responses`), only the
Hive listens on its queries and only the scheduler on the market's, and a pod takes a signed
mesh message once, answered to its signer alone (runtime/meshguard.py).

A nats-server that admits the principals alone, with the authorization `swarm up` writes, a Hive,
a scheduler and a pod of this process, each with its own key; the attacks go through plain
nats-py clients holding other principals' keys, as anyone issued one could send them."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from runtime.config import PodSettings
from runtime.pod import Pod
from schemas import commands, names
from services.scheduler import Scheduler, SchedulerSettings
from services.scheduler.autoscaler_service import AutoscalerService, AutoscalerSettings
from swarm.client.market import ask_market
from swarm.client.queries import HiveQueries
from swarm.client.tasks import queue_task
from swarm.devstack.principals import LISTING, add_user, issue
from swarm.kernel.connection import settle
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.signing import CommandSigner, MeshClaim
from tests.helpers.agents import COUNTER, ECHO
from tests.helpers.pods import running_on, spec
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.violations import Errors
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

COUNTER_SUBJECT = names.mesh_agent_subject("default", "counter")


@dataclass
class Perimeter:
    stack: Stack
    keys: Path
    pod: Pod

    def signer(self, name: str) -> CommandSigner:
        return CommandSigner.from_seed_file(self.keys / f"{name}.nk")

    def inbox(self, name: str) -> str:
        return names.inbox_prefix(self.signer(name).public_key)

    async def connect(self, name: str) -> tuple[nats.NATS, Errors]:
        """A plain nats-py client with `name`'s key, its replies under its own inbox prefix."""
        errors = Errors()
        nc = await nats.connect(
            self.stack.url,
            name=name,
            nkeys_seed=str(self.keys / f"{name}.nk"),
            inbox_prefix=self.inbox(name),
            error_cb=errors.hear,
        )
        return nc, errors

    async def log_of(self, name: str) -> EventLog:
        """A connection as Swarm's clients make one, signing as `name`."""
        return await EventLog.connect(
            self.stack.url, name=name, credentials=self.keys / f"{name}.nk", ensure=False
        )


@pytest.fixture(scope="module")
async def perimeter(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Perimeter]:
    """The counter agent runs on pod-1; ann is an operator of `default`. pod-2, the observer,
    the gateway and bob are principals whose keys the attacks use (nothing runs as them)."""
    root = tmp_path_factory.mktemp("perimeter")
    keys = root / "principals"
    issue(
        keys,
        [
            ("admin", "admin"),
            ("hive", "hive"),
            ("scheduler", "service"),
            ("observer", "service"),
            ("gateway", "gateway"),
            ("pod-1", "pod"),
            ("pod-2", "pod"),
        ],
    )
    for user in ("ann", "bob"):
        add_user(keys, user)
    listing = keys / LISTING
    async with running_stack(root, principals_file=listing, authorize=True) as stack:
        scheduler = Scheduler(
            Settings(nats_url=stack.url, nats_credentials=keys / "scheduler.nk"),
            SchedulerSettings(principals_file=listing),
        )
        config = PodSettings(
            id="pod-1", cache_dir=root / "pod-1", principals_file=listing, metrics_interval_s=0.5
        )
        pod = Pod(Settings(nats_url=stack.url, nats_credentials=keys / "pod-1.nk"), config)
        async with in_this_loop(scheduler, live_within=60), in_this_loop(pod, live_within=60):
            grant = commands.GrantAccess(user="ann", role="operator", namespace="default")
            deploy = commands.DeployAgent(name="counter", spec=spec(COUNTER))
            await stack.send([(grant, "user:t"), (deploy, "user:t")])
            await running_on(stack, "counter", "pod-1")

            async def granted() -> bool:
                return any(g.user == "ann" for g in pod.view.grants)

            await wait_until(granted, 30, "pod-1 folding ann's role")
            yield Perimeter(stack, keys, pod)


async def test_nobody_publishes_into_another_principals_inbox(perimeter: Perimeter) -> None:
    """A forged reply into ann's inbox, by a pod, a service, the gateway, another user or the
    Hive, is refused by the server; the owner may, and the scheduler does (it forwards a task's
    answer to the inbox the task names, which is no response to a request it received)."""
    ann, ann_errors = await perimeter.connect("ann")
    try:
        heard: asyncio.Queue[Any] = asyncio.Queue()
        target = f"{perimeter.inbox('ann')}.awaited.1"
        await ann.subscribe(target, cb=heard.put)
        await settle(ann, 10)
        for forger in ("pod-2", "observer", "gateway", "bob", "hive"):
            nc, errors = await perimeter.connect(forger)
            try:
                await nc.publish(target, b'{"forged": true}')
                violation = await errors.violation(target)
                assert "publish" in violation.lower(), violation
            finally:
                await nc.close()
        # The server drops a refused message before delivering it: what ann hears first is
        # what the owner sent after the refusals.
        for sender in ("admin", "scheduler"):
            nc, errors = await perimeter.connect(sender)
            try:
                await nc.publish(target, sender.encode())
                await settle(nc, 10)
                assert (await asyncio.wait_for(heard.get(), 10)).data == sender.encode()
                assert errors.seen == []
            finally:
                await nc.close()
        assert ann_errors.seen == []
    finally:
        await ann.close()


async def test_answers_to_requests_still_go_through_once_each(perimeter: Perimeter) -> None:
    """The Hive and the pods may not publish into inboxes, yet each answers a request it
    received (once: a second answer is refused): queries, a mesh request and a liveness probe,
    as each principal's own client asks them; and the scheduler answers the market."""
    ann = await perimeter.log_of("ann")
    admin = await perimeter.log_of("admin")
    try:
        # The module's agents (another test deploys a worker beside the counter).
        assert "counter" in {a["name"] for a in await HiveQueries(ann, timeout=30).agents(None)}
        assert "offers" in await ask_market(admin, 5)
        reply = await ann.request(COUNTER_SUBJECT, b"+1", timeout=30, claim=MeshClaim("user:ann"))
        assert not (reply.headers or {}).get(names.HEADER_AGENT_ERROR), reply.data
        assert struct.unpack("<q", reply.data)[0] >= 1
    finally:
        await ann.close()
        await admin.close()
    # A liveness probe, asked by the Hive's key: pod-1's heartbeat answers it.
    hive, hive_errors = await perimeter.connect("hive")
    pod, pod_errors = await perimeter.connect("pod-2")
    try:
        answer = await hive.request(names.probe_subject("pod-1"), b"", timeout=30)
        assert json.loads(answer.data)["pod_id"] == "pod-1"
        # A response is allowed once: pod-2 answering its own probe twice, the second is
        # refused as any publish into the Hive's inbox.
        answered = asyncio.get_running_loop().create_future()

        async def answer_twice(msg: Any) -> None:
            await msg.respond(b"first")
            await msg.respond(b"second")
            answered.set_result(msg.reply)

        await pod.subscribe(names.probe_subject("pod-2"), cb=answer_twice)
        await settle(pod, 10)
        first = await hive.request(names.probe_subject("pod-2"), b"", timeout=30)
        assert first.data == b"first"
        assert "publish" in (await pod_errors.violation(await answered)).lower()
        assert hive_errors.seen == []
    finally:
        await hive.close()
        await pod.close()


async def test_only_the_answering_services_listen_on_queries(perimeter: Perimeter) -> None:
    """A user, a pod, a service or the gateway reading what others ask (`swarm.query.>`) or
    joining the Hive's queue group to answer for it is refused; the Hive does not listen on the
    market's queries, nor the scheduler on the Hive's. The scheduler listens on the market."""
    hive_query = names.QUERY_AGENTS_LIST
    attempts = [
        (name, subject, queue)
        for name in ("ann", "pod-2", "observer", "gateway")
        for subject, queue in (
            (f"{names.QUERY_PREFIX}.>", ""),
            (hive_query, names.QUERY_QUEUE),
        )
    ]
    attempts += [
        ("hive", names.QUERY_MARKET_STATE, ""),
        ("scheduler", hive_query, names.QUERY_QUEUE),
        ("scheduler", f"{names.QUERY_PREFIX}.>", ""),
    ]
    for name, subject, queue in attempts:
        nc, errors = await perimeter.connect(name)
        try:
            await nc.subscribe(subject, queue=queue)
            await settle(nc, 10)
            violation = await errors.violation(subject)
            assert "subscription" in violation.lower(), (name, violation)
        finally:
            await nc.close()
    # The scheduler's key listens on the market (a copy of each query, beside the scheduler's
    # own queue group), and the queries are answered as before.
    scheduler, errors = await perimeter.connect("scheduler")
    owner = await perimeter.log_of("admin")
    try:
        asked: asyncio.Queue[Any] = asyncio.Queue()
        await scheduler.subscribe(names.QUERY_MARKET_STATE, cb=asked.put)
        await settle(scheduler, 10)
        assert "offers" in await ask_market(owner, 5)
        assert (await asyncio.wait_for(asked.get(), 10)).subject == names.QUERY_MARKET_STATE
        assert errors.seen == []
        queries = HiveQueries(owner, timeout=30)
        assert "counter" in {a["name"] for a in await queries.agents(None)}
    finally:
        await scheduler.close()
        await owner.close()


async def test_a_message_a_pod_reads_off_the_mesh_is_not_taken_again(
    perimeter: Perimeter,
) -> None:
    """pod-2 may read the mesh: it captures ann's signed message to the counter and sends it
    again, as it was (refused as a replay, ann hears why) and with its own reply subject
    (refused, for where the answer would go; pod-2 hears why). The counter counted once; ann's
    client sending the same body again is answered."""
    ann, _ = await perimeter.connect("ann")
    spy, spy_errors = await perimeter.connect("pod-2")
    counter = next(r for r in perimeter.pod.replicas.values() if r.assignment.name == "counter")
    before = perimeter.pod.metrics_json()
    try:
        captured: asyncio.Queue[Any] = asyncio.Queue()
        answers: asyncio.Queue[Any] = asyncio.Queue()
        await spy.subscribe(COUNTER_SUBJECT, cb=captured.put)
        inbox = f"{perimeter.inbox('ann')}.counted"
        await ann.subscribe(inbox, cb=answers.put)
        for nc in (spy, ann):
            await settle(nc, 10)
        signer = perimeter.signer("ann")
        headers = signer.mesh_headers(
            COUNTER_SUBJECT, b"+1", MeshClaim("user:ann"), time.time_ns() // 1_000_000
        )
        await ann.publish(COUNTER_SUBJECT, b"+1", reply=inbox, headers=headers)
        counted = await asyncio.wait_for(answers.get(), 30)
        assert not (counted.headers or {}).get(names.HEADER_AGENT_ERROR), counted.data
        calls = counter.metrics.calls
        original = await asyncio.wait_for(captured.get(), 10)

        await spy.publish(COUNTER_SUBJECT, original.data, reply=inbox, headers=original.headers)
        replayed = await asyncio.wait_for(answers.get(), 30)
        assert replayed.headers.get(names.HEADER_AGENT_ERROR), replayed.data
        assert json.loads(replayed.data)["error"].startswith(
            "replayed: the message (signed 0 s ago) was taken already"
        )
        stolen = await spy.request(
            COUNTER_SUBJECT, original.data, timeout=30, headers=original.headers
        )
        assert json.loads(stolen.data)["error"].startswith(
            f"unauthenticated: the message is signed by ann but its answer would go to "
            f"'{perimeter.inbox('pod-2')}."
        )
        assert spy_errors.seen == []
        log = await perimeter.log_of("ann")
        try:
            again = await log.request(
                COUNTER_SUBJECT, b"+1", timeout=30, claim=MeshClaim("user:ann")
            )
        finally:
            await log.close()
        assert struct.unpack("<q", again.data) == (struct.unpack("<q", counted.data)[0] + 1,)
        assert counter.metrics.calls == calls + 1
        after = perimeter.pod.metrics_json()
        assert after["mesh_replayed"] == before["mesh_replayed"] + 1
        assert after["mesh_unauthenticated"] == before["mesh_unauthenticated"] + 1
    finally:
        await ann.close()
        await spy.close()


async def test_a_tasks_answer_comes_back_through_the_scheduler(perimeter: Perimeter) -> None:
    """The task distributor (the scheduler's key) asks the replica over the mesh, answered
    under its own inbox, and forwards the answer to the inbox ann's task names: the one
    publish into another's inbox that is no response (`swarm task send --wait`)."""
    deploy = commands.DeployAgent(name="worker", spec=spec(ECHO, task_queues=["jobs"]))
    await perimeter.stack.send([(deploy, "user:t")])
    await running_on(perimeter.stack, "worker", "pod-1")
    distributor = AutoscalerService(
        Settings(nats_url=perimeter.stack.url, nats_credentials=perimeter.keys / "scheduler.nk"),
        AutoscalerSettings(step_s=60, stale_after_s=10),
    )
    ann = await perimeter.log_of("ann")
    try:
        async with in_this_loop(distributor, live_within=60):

            async def known() -> bool:
                loads = distributor.autoscaler.metrics.replicas.values()
                return any("jobs" in load.last.task_queues for load in loads)

            await wait_until(known, 60, "the worker's replica reported")
            answers: asyncio.Queue[Any] = asyncio.Queue()
            inbox = ann.new_inbox()
            await ann.subscribe(inbox, answers.put)
            await ann.flush()
            await queue_task(ann, "jobs", b'{"task": 1}', reply_to=inbox)
            answer = await asyncio.wait_for(answers.get(), 60)
            assert answer.data == b'{"task": 1}'
            assert distributor.tasks_done == 1
    finally:
        await ann.close()
