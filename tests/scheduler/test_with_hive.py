"""The scheduler against a real Hive on real JetStream: placements are proposed, checked and
committed, bursts are spread without over-commit, and a killed scheduler resumes cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from schemas import names
from services.scheduler import Scheduler, SchedulerSettings, Status
from swarm.kernel.settings import Settings
from swarm.kernel.tasks import cancel_and_wait
from tests.helpers.schedulers import in_process_scheduler, scheduler_process
from tests.helpers.stack import Stack, running_stack
from tests.helpers.tables import ID_SECRET, assert_tables_match_the_log
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

#: Room for 100 + 67 + 34 = 201 replicas of 64 MB: 200 fit only if spread.
TIGHT_PODS = {"p1": (64 * 100, 1000), "p2": (64 * 67, 1000), "p3": (64 * 34, 1000)}


async def assert_no_pod_over_committed(stack: Stack) -> None:
    for pod in await stack.pods():
        assert all(v >= 0 for v in pod["free"].values()), pod


async def all_placed(stack: Stack, n: int, within: float = 45.0) -> None:
    async def done() -> bool:
        return await stack.placed() == n

    await wait_until(done, within, f"{n} replicas placed")


async def test_every_replica_is_placed_where_it_fits(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.register_pods({"p1": (1024, 8), "p2": (2048, 8), "p3": (512, 2)})
        async with in_process_scheduler(stack.url) as scheduler:
            await stack.deploy([("a", 3, 256), ("b", 4, 128), ("c", 2, 512), ("huge", 1, 4096)])
            await all_placed(stack, 9)
            await assert_no_pod_over_committed(stack)
            agents = (await stack.query(names.QUERY_AGENTS_LIST))["agents"]
            status = {a["name"]: a["status"] for a in agents}
            assert status == {
                "a": "scheduled",
                "b": "scheduled",
                "c": "scheduled",
                "huge": "requested",
            }

            # The scheduler's own view counts exactly what the Hive counts.
            end = await stack.client.last_sequence(names.STREAM_EVENTS)

            async def caught_up() -> bool:
                return scheduler.planner.view.applied_seq >= end

            await wait_until(caught_up)
            hive_free = {p["pod_id"]: tuple(p["free"].values()) for p in await stack.pods()}
            view_free = {p: pod.free() for p, pod in scheduler.planner.view.pods.items()}
            assert view_free == hive_free

            # The replica that fit nowhere waited; room appears and it is placed there.
            await stack.register_pods({"p4": (8192, 4)})
            await all_placed(stack, 10)
            huge = next(
                a
                for a in (await stack.query(names.QUERY_AGENTS_LIST))["agents"]
                if a["name"] == "huge"
            )
            detail = (await stack.query(names.QUERY_AGENTS_GET, {"agent_id": huge["agent_id"]}))[
                "agent"
            ]
            assert [i["pod_id"] for i in detail["instances"]] == ["p4"]
            assert scheduler.rejected == {}
        assert scheduler.status is Status.STOPPED
        scheduler.stop()  # twice is fine


async def test_stop_before_start_returns_at_once() -> None:
    scheduler = Scheduler(Settings(nats_url="nats://127.0.0.1:1"))
    scheduler.stop()
    await asyncio.wait_for(scheduler.run(), 1)
    assert scheduler.status is Status.STOPPED


async def test_a_burst_of_200_deployments_is_spread_without_over_commit(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.register_pods(TIGHT_PODS)
        async with in_process_scheduler(stack.url) as scheduler:
            started = time.monotonic()
            await stack.deploy([(f"agent-{i}", 1, 64) for i in range(200)])
            await all_placed(stack, 200)
            elapsed = time.monotonic() - started
        print(f"200 deployments placed in {elapsed:.2f}s ({200 / elapsed:.0f}/s)")
        await assert_no_pod_over_committed(stack)
        assert sum(p["free"]["memory_mb"] for p in await stack.pods()) == 64
        assert (await stack.rejections())["capacity"] == 0
        assert scheduler.proposed == 200
        per_replica = await stack.scheduled_per_replica()
        assert len(per_replica) == 200
        assert set(per_replica.values()) == {1}


async def test_a_killed_scheduler_restarts_without_double_placements(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.register_pods(TIGHT_PODS)
        with scheduler_process(stack.url, tmp_path / "scheduler-1.log", "most-free") as first:
            await stack.deploy([(f"agent-{i}", 1, 64) for i in range(150)])

            async def some_placed() -> bool:
                return await stack.placed() > 0

            await wait_until(some_placed, 60, "a first placement")
            first.send_signal(signal.SIGKILL)  # mid-burst, no chance to clean up
            first.wait(10)
        placed_at_kill = await stack.placed()
        # A restart recovers exactly the log folded to the position the killed one committed.
        assert await assert_tables_match_the_log(stack.url, stack.client) > 0
        # More work arrives while no scheduler runs.
        await stack.deploy([(f"agent-{i}", 1, 64) for i in range(150, 200)])
        with scheduler_process(stack.url, tmp_path / "scheduler-2.log", "most-free") as second:
            await all_placed(stack, 200)
            second.send_signal(signal.SIGTERM)
            assert second.wait(10) == 0
        print(f"{placed_at_kill} of 150 placed when the first scheduler was killed")
        per_replica = await stack.scheduled_per_replica()
        assert len(per_replica) == 200
        assert {r: n for r, n in per_replica.items() if n != 1} == {}
        await assert_no_pod_over_committed(stack)
        # The restarted scheduler may propose a pod the dead one's pending proposals took.
        assert (await stack.rejections())["capacity"] <= 5
        assert "scheduler stopped" in (tmp_path / "scheduler-2.log").read_text()


async def test_proposals_resent_by_a_restarted_scheduler_are_dropped_as_duplicates(
    tmp_path: Path,
) -> None:
    """Proposals pile up undecided while the Hive is down; the scheduler is cancelled and comes
    back; it re-sends the same ids, so each replica is decided once and nothing is rejected."""
    async with running_stack(tmp_path) as stack:
        await stack.register_pods(TIGHT_PODS)
        await stack.deploy([(f"agent-{i}", 1, 64) for i in range(100)])

        async def requested() -> bool:
            return len((await stack.query(names.QUERY_AGENTS_LIST))["agents"]) == 100

        await wait_until(requested, what="100 agents deployed")
        await stack.stop_hive()

        first = Scheduler(
            Settings(nats_url=stack.url, command_id_secret=ID_SECRET), SchedulerSettings()
        )
        task = asyncio.create_task(first.run())

        async def all_proposed() -> bool:
            return first.proposed == 100

        await wait_until(all_proposed, what="100 proposals")
        await cancel_and_wait([task])
        assert task.cancelled(), task.exception()

        async with in_process_scheduler(stack.url) as second:

            async def all_resent() -> bool:
                return second.proposed == 100

            await wait_until(all_resent, what="100 proposals re-sent")
            assert second.duplicates == 100
            await stack.start_hive()
            await all_placed(stack, 100)
        per_replica = await stack.scheduled_per_replica()
        assert len(per_replica) == 100
        assert set(per_replica.values()) == {1}
        assert await stack.rejections() == {}
        await assert_no_pod_over_committed(stack)


async def test_placements_carry_the_deploys_correlation(tmp_path: Path) -> None:
    """`swarm timeline --correlation <deploy id>` must show the placement it led to."""
    async with running_stack(tmp_path) as stack:
        await stack.register_pods({"p1": (1024, 8)})
        async with in_process_scheduler(stack.url):
            await stack.deploy([("traced", 2, 64)])
            await all_placed(stack, 2)
        deployed: dict[str, str] = {}
        requested: dict[str, str] = {}
        scheduled: list[dict[str, str]] = []
        async for d in stack.client.replay(names.STREAM_EVENTS):
            body = json.loads(d.data)
            if body["type"] == "swarm.agent.deployed":
                deployed[body["data"]["agent_id"]] = body["correlationid"]
            elif body["type"] == "swarm.agent.replica_requested":
                requested[body["data"]["replica_id"]] = body["id"]
            elif body["type"] == "swarm.agent.replica_scheduled":
                scheduled.append(body)
        assert len(scheduled) == 2
        for body in scheduled:
            # The deploy command started the chain; the placement carries its correlation id,
            # and the proposal it came from was caused by the replica's request.
            assert body["correlationid"] == deployed[body["data"]["agent_id"]]
            assert body["causationid"].startswith("place-")
        proposals = {}
        async for d in stack.client.replay(names.STREAM_COMMANDS):
            body = json.loads(d.data)
            if body["type"] == "swarm.cmd.placement.propose":
                proposals[body["data"]["replica_id"]] = body
        for replica_id, body in proposals.items():
            assert body["causationid"] == requested[replica_id]


async def test_an_unreadable_event_is_dead_lettered_and_placement_goes_on(tmp_path: Path) -> None:
    """The last event on the log is garbage when the scheduler starts: it is dead-lettered with
    the reason, the scheduler still counts as caught up, and it places what waits."""
    async with running_stack(tmp_path) as stack:
        await stack.register_pods({"p1": (1024, 8)})
        await stack.deploy([("a", 1, 64)])

        async def deployed() -> bool:
            return len((await stack.query(names.QUERY_AGENTS_LIST))["agents"]) == 1

        await wait_until(deployed, what="the deploy decided")
        ack = await stack.client.js.publish(
            names.event_subject("agent", "x", "deployed"), b"{not json"
        )
        assert await stack.client.last_sequence(names.STREAM_EVENTS) == ack.seq
        async with in_process_scheduler(stack.url) as scheduler:
            await all_placed(stack, 1)
            await stack.deploy([("b", 1, 64)])
            await all_placed(stack, 2)
            assert scheduler.app is not None
            assert scheduler.app.stats.malformed == 1
        subject = names.deadletter_subject(names.SCHEDULER_APP, names.SCHEDULER_PROCESSOR)
        letters = [
            d async for d in stack.client.replay(names.STREAM_DEADLETTER, subjects=[subject])
        ]
        assert [int(d.headers[names.HEADER_DEADLETTER_SEQ]) for d in letters] == [ack.seq]
        assert letters[0].headers[names.HEADER_DEADLETTER_REASON].startswith("malformed: ")
        assert letters[0].data == b"{not json"


async def test_a_failed_commit_restarts_the_stream_app_which_recovers(tmp_path: Path) -> None:
    """The changelog is deleted under a running scheduler: its next commit fails, which stops
    the stream app; the scheduler starts a new one, which rebuilds the tables from the log (an
    app without a changelog starts from the beginning), and placement goes on."""
    async with running_stack(tmp_path) as stack:
        await stack.register_pods({"p1": (4096, 100)})
        async with in_process_scheduler(stack.url) as scheduler:
            await stack.deploy([("a", 2, 64)])
            await all_placed(stack, 2)
            first = scheduler.app
            await stack.client.js.delete_stream(names.changelog_stream(names.SCHEDULER_APP))
            await stack.deploy([("b", 2, 64)])

            async def restarted() -> bool:
                return scheduler.app is not None and scheduler.app is not first

            await wait_until(restarted, 45, "a new stream app")
            await all_placed(stack, 4)
            await stack.deploy([("c", 1, 64)])
            await all_placed(stack, 5)
        per_replica = await stack.scheduled_per_replica()
        assert len(per_replica) == 5
        assert set(per_replica.values()) == {1}
        await assert_no_pod_over_committed(stack)
