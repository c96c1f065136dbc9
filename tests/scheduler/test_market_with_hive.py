"""The market scheduler against a real Hive on real JetStream: a burst of 200 concurrent
deployments never over-commits a pod at any point of the log, a higher priority preempts the
documented victims who are placed again when capacity returns, a scheduler killed mid-burst
recovers its tables (equal to a recount of the log at their position) and resumes without
double placements, and `swarm.query.market.state` shows offers and clearings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from schemas import commands, market, names
from schemas.specs import AgentSpec, ModuleRef, Placement, Resources
from swarm.domain.evolve import evolve
from swarm.domain.state import HiveState
from tests.helpers.history import WASM
from tests.helpers.schedulers import in_process_scheduler, scheduler_process
from tests.helpers.stack import Stack, running_stack
from tests.helpers.tables import assert_tables_match_the_log
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

#: Room for exactly 200 replicas of 64 MB over three small pods (and slots to spare).
SMALL_PODS = {"s1": (64 * 90, 1000), "s2": (64 * 70, 1000), "s3": (64 * 40, 1000)}


async def fold_and_check_capacity(stack: Stack) -> HiveState:
    """Fold the whole log with the Hive's own `evolve`; after every event, no pod may hold more
    memory, fuel/s or replicas than it has."""
    state = HiveState()
    checked = 0
    async for d in stack.client.replay(names.STREAM_EVENTS):
        evolve(state, d.stream_seq, d.decode())
        for pod in state.pods.values():
            assert pod.used_memory_mb <= pod.capacity.memory_mb, (d.stream_seq, pod)
            assert pod.used_fuel_per_s <= pod.capacity.fuel_per_s, (d.stream_seq, pod)
            assert len(pod.replicas) <= pod.capacity.slots, (d.stream_seq, pod)
        checked += 1
    assert checked > 0
    return state


async def placed_total(stack: Stack) -> int:
    return await stack.placed()


def spec(memory: int, priority: int = 0) -> AgentSpec:
    return AgentSpec(
        version="v1",
        module=ModuleRef(inline=WASM),
        resources=Resources(memory_mb=memory, fuel_per_s=1000),
        priority=priority,
        placement=Placement(),
    )


async def events_of(stack: Stack, event: str) -> list[dict[str, Any]]:
    """The data of the events named `event` on the log."""
    return [e["data"] for e in await stack.events_named(event)]


async def test_200_concurrent_deployments_never_over_commit_a_pod(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.register_pods(SMALL_PODS)
        async with in_process_scheduler(stack.url, policy="market") as scheduler:
            # 200 deploy commands at once (one pipelined batch), plus 10 that cannot fit.
            await stack.deploy([(f"agent-{i}", 1, 64) for i in range(210)])

            async def full() -> bool:
                return await stack.placed() == 200

            await wait_until(full, 120, "200 replicas placed")
            await asyncio.sleep(0.3)  # the 10 extra keep waiting, and nothing else happens
            assert await stack.placed() == 200
        state = await fold_and_check_capacity(stack)
        assert sum(p.used_memory_mb for p in state.pods.values()) == 64 * 200
        per_replica = await stack.scheduled_per_replica()
        assert len(per_replica) == 200
        assert set(per_replica.values()) == {1}
        waiting = [r for a in state.agents.values() for r in a.replicas.values()]
        assert Counter(r.phase for r in waiting) == {"scheduled": 200, "requested": 10}
        # The market spreads: every pod is full, and each proposal was decided once.
        assert all(p.used_memory_mb == p.capacity.memory_mb for p in state.pods.values())
        assert scheduler.proposed >= 200
        placements = await events_of(stack, "replica_scheduled")
        assert all(p["policy"] == "market" for p in placements)
        assert all(p["reason"].startswith("market: ") for p in placements)


async def test_a_higher_priority_preempts_the_documented_victims(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.register_pods({"p1": (512, 100)})
        async with in_process_scheduler(stack.url, policy="market") as scheduler:
            await stack.send(
                [
                    (commands.DeployAgent(name="old", spec=spec(128, 0), replicas=2), "user:t"),
                    (commands.DeployAgent(name="keep", spec=spec(256, 50), replicas=1), "user:t"),
                ]
            )

            async def filled() -> bool:
                return await stack.placed() == 3

            await wait_until(filled, 45, "the pod filled")
            # Newest of the two priority-0 replicas started later: it is the one to go.
            await stack.send(
                [(commands.DeployAgent(name="new", spec=spec(128, 0), replicas=1), "user:t")]
            )
            await asyncio.sleep(0.3)  # fits nowhere, equal priority: waits, preempts nothing
            assert await events_of(stack, "replica_preempted") == []
            await stack.send(
                [(commands.DeployAgent(name="vip", spec=spec(128, 100), replicas=1), "user:t")]
            )

            async def preempted() -> bool:
                return len(await events_of(stack, "replica_preempted")) == 1

            await wait_until(preempted, 45, "a preemption")
            record = (await events_of(stack, "replica_preempted"))[0]
            agents = {a["name"]: a for a in (await stack.query(names.QUERY_AGENTS_LIST))["agents"]}
            # One victim (fewest), of priority 0 (lowest), the most recently started of those.
            scheduled = await events_of(stack, "replica_scheduled")
            old_placements = [s for s in scheduled if s["agent_id"] == agents["old"]["agent_id"]]
            assert record["replica_id"] == old_placements[-1]["replica_id"]
            assert (record["priority"], record["by_priority"]) == (0, 100)
            assert record["by_agent_id"] == agents["vip"]["agent_id"]

            # Capacity returns: the victim (and the waiting equal-priority one) are placed again.
            await stack.register_pods({"p2": (1024, 100)})

            async def all_back() -> bool:
                return await stack.placed() == 5

            await wait_until(all_back, 45, "the victim placed again")
            assert scheduler.planner.view.waiting == {}
        state = await fold_and_check_capacity(stack)
        victim = state.agents[record["agent_id"]].replicas[record["replica_id"]]
        assert victim.phase == "scheduled"
        assert victim.pod_id == "p2"
        rejected = await stack.rejections(market.PreemptPlacement.TYPE)
        assert rejected == Counter()


async def test_a_killed_market_scheduler_resumes_without_double_placements(
    tmp_path: Path,
) -> None:
    """Three times: a scheduler process starts, deploys arrive in a burst, and it is SIGKILLed
    at its first new placement. Each restart recovers tables equal to the log folded to their
    position and goes on from there; a last one places everything, each replica once."""
    async with running_stack(tmp_path) as stack:
        await stack.register_pods(SMALL_PODS)

        async def live() -> bool:
            try:
                return bool((await stack.query(names.QUERY_MARKET_STATE))["live"])
            except (TimeoutError, nats.errors.Error):
                return False  # not answering yet

        async def burst(first: int) -> None:
            # Deploys keep arriving while the scheduler is killed.
            for start in range(first, first + 50, 10):
                await stack.deploy([(f"agent-{i}", 1, 64) for i in range(start, start + 10)])
                await asyncio.sleep(0.05)

        killed_at = 0
        placed_at_kill: list[int] = []
        for run in range(3):
            log_path = tmp_path / f"scheduler-{run + 1}.log"
            with scheduler_process(stack.url, log_path, "market") as proc:
                await wait_until(live, 45, "the scheduler live")
                before = await stack.placed()
                deploying = asyncio.create_task(burst(50 * run))

                async def placed_more(before: int = before) -> bool:
                    return await stack.placed() > before

                await wait_until(placed_more, 45, "a placement")
                proc.send_signal(signal.SIGKILL)  # mid-burst: in-flight proposals are orphaned
                proc.wait(10)
                await deploying
            placed_at_kill.append(await stack.placed())
            assert placed_at_kill[-1] < 50 * (run + 1)  # some were still waiting
            if run > 0:
                # It went on from the recovered position; it did not replay the log.
                assert _recovered_at(log_path) == killed_at
            # What a restart recovers from the changelog is the log folded to the position.
            position = await assert_tables_match_the_log(stack.url, stack.client)
            assert position > killed_at
            killed_at = position
        await stack.deploy([(f"agent-{i}", 1, 64) for i in range(150, 200)])
        last_log = tmp_path / "scheduler-last.log"
        with scheduler_process(stack.url, last_log, "market") as last:

            async def all_placed() -> bool:
                return await stack.placed() == 200

            await wait_until(all_placed, 30, "200 placed after the restarts")
            last.send_signal(signal.SIGTERM)
            assert last.wait(10) == 0
        print(f"placed when each scheduler was killed: {placed_at_kill} (of 50, 100, 150)")
        assert await assert_tables_match_the_log(stack.url, stack.client) > killed_at
        assert _recovered_at(last_log) == killed_at
        assert "scheduler stopped" in {r.get("event") for r in _records(last_log)}
        per_replica = await stack.scheduled_per_replica()
        assert len(per_replica) == 200
        assert {r: n for r, n in per_replica.items() if n != 1} == {}
        await fold_and_check_capacity(stack)
        # Proposals the dead scheduler had in flight may race the restarted one's; the Hive
        # refuses those safely (and the ones re-sent with the same id are dropped as duplicates).
        rejections = await stack.rejections()
        print(f"capacity rejections after the restarts: {rejections['capacity']}")
        assert rejections["capacity"] <= 10


async def test_market_state_query_shows_offers_and_clearings(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.register_pods({"p1": (1024, 8), "p2": (2048, 8)})
        async with in_process_scheduler(stack.url, policy="market", energy_weight=0.5):
            await stack.deploy([("a", 2, 256), ("huge", 1, 8192)])

            async def two() -> bool:
                return await stack.placed() == 2

            await wait_until(two, 45, "two placed")
            answer = await stack.query(names.QUERY_MARKET_STATE, {"limit": 10})
        assert answer["policy"] == "market"
        assert answer["pricing"]["energy_weight"] == 0.5
        offers = {o["pod_id"]: o for o in answer["offers"]}
        assert set(offers) == {"p1", "p2"}
        used = (1024 - offers["p1"]["free"]["memory_mb"]) + (
            2048 - offers["p2"]["free"]["memory_mb"]
        )
        assert used == 512
        assert all(o["price_per_unit"] >= 1.0 for o in offers.values())
        outcomes = Counter(c["outcome"] for c in answer["clearings"])
        assert outcomes["proposed"] == 2
        assert outcomes["waiting"] >= 1
        huge = [c for c in answer["clearings"] if c["outcome"] == "waiting"]
        assert huge[0]["reason"] == "fits on no ready pod"


async def test_swarm_market_cli_shows_offers_and_clearings(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from swarm.cli.app import app

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, ["market", *args, "--nats-url", stack.url])

    async with running_stack(tmp_path) as stack:
        none = await asyncio.to_thread(run, "-o", "json")
        assert none.exit_code == 4
        assert "no scheduler answered" in none.output
        await stack.register_pods({"p1": (1024, 8)})
        async with in_process_scheduler(stack.url, policy="market"):
            await stack.deploy([("a", 1, 128)])

            async def one() -> bool:
                return await stack.placed() == 1

            await wait_until(one, 45, "one placed")
            as_json = await asyncio.to_thread(run, "-o", "json", "--limit", "5")
            as_table = await asyncio.to_thread(run)
        assert as_json.exit_code == 0, as_json.output
        state = json.loads(as_json.stdout)
        assert [o["pod_id"] for o in state["offers"]] == ["p1"]
        assert state["offers"][0]["free"]["memory_mb"] == 1024 - 128
        assert [c["outcome"] for c in state["clearings"]] == ["proposed"]
        assert as_table.exit_code == 0, as_table.output
        assert "PRICE/UNIT" in as_table.stdout
        assert "p1" in as_table.stdout
        assert "market: p1" in as_table.stdout


async def test_a_spec_file_carries_the_bid_and_constraints(tmp_path: Path) -> None:
    """`swarm agent deploy -f` with `spec.placement`: the selector and zone are honoured."""
    from typer.testing import CliRunner

    from schemas.specs import Capacity
    from swarm.cli.app import app

    spec_file = tmp_path / "gpu.yaml"
    spec_file.write_text(
        "name: trainer\nreplicas: 2\nspec:\n  version: v1\n"
        f"  module: {{inline: '{WASM}'}}\n"
        "  resources: {memory_mb: 128}\n"
        "  placement:\n    priority_class: high\n    max_price: 3.0\n"
        "    node_selector: {gpu: 'yes'}\n    avoid_zones: [us-1]\n"
    )
    async with running_stack(tmp_path) as stack:
        await stack.send(
            [
                (
                    commands.RegisterPod(
                        pod_id=pod_id,
                        capacity=Capacity(memory_mb=4096, fuel_per_s=10**12, slots=10),
                        labels=labels,
                        zone=zone,
                        lease_s=3600,
                    ),
                    f"pod:{pod_id}",
                )
                for pod_id, labels, zone in (
                    ("plain", {}, "eu-1"),
                    ("gpu-us", {"gpu": "yes"}, "us-1"),
                    ("gpu-eu", {"gpu": "yes"}, "eu-1"),
                )
            ]
        )
        async with in_process_scheduler(stack.url, policy="market"):
            result = await asyncio.to_thread(
                lambda: CliRunner().invoke(
                    app, ["agent", "deploy", "-f", str(spec_file), "--nats-url", stack.url]
                )
            )
            assert result.exit_code == 0, result.output

            async def two() -> bool:
                return await stack.placed() == 2

            await wait_until(two, 45, "two placed")
        pods = {p["pod_id"]: p["replicas"] for p in await stack.pods()}
        assert pods == {"plain": 0, "gpu-us": 0, "gpu-eu": 2}
        deployed = (await events_of(stack, "deployed"))[0]
        assert deployed["spec"]["placement"]["priority_class"] == "high"


def _records(path: Path) -> list[dict[str, Any]]:
    """A service's log as records: under a supervisor (a file, not a terminal) it logs one JSON
    object per line (`SWARM_LOG_FORMAT=auto`); lines that are not JSON are left out."""
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _recovered_at(path: Path) -> int | None:
    """The position the scheduler's tables were recovered at, as its log says."""
    found = [r.get("position") for r in _records(path) if r.get("event") == "tables recovered"]
    assert found, path.read_text()[:2000]
    position = found[0]
    return position if isinstance(position, int) else None
