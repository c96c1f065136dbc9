"""The Observer service on a real nats-server and Postgres: behaviour vectors of closed windows
reach `agent_behaviour`, and a rebuild of its tables from the streams (its changelog deleted)
stores no vector and sends no report twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import names
from services.observer import Observer, ObserverSettings
from services.observer.analysis import Observatory
from services.observer.behaviour import BehaviourStore
from swarm.devstack.stack import upgrade_database
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from tests.helpers.servers import own_nats
from tests.helpers.services import in_this_loop

pytestmark = pytest.mark.timeout(90)

CONFIG = ObserverSettings(window_s=0.5, warmup_windows=3, flush_s=0.1)


@contextlib.asynccontextmanager
async def observing(settings: Settings) -> AsyncIterator[Observer]:
    observer = Observer(settings, CONFIG)
    async with in_this_loop(observer, live_within=20, stop_within=20):
        yield observer


def row(agent: str, calls: int, latency: float) -> dict[str, object]:
    return {
        "agent_id": agent,
        "replica_id": f"{agent}-r",
        "namespace": "svc",
        "name": agent,
        "calls": calls,
        "errors": 0,
        "fuel_used": calls * 1000,
        "last_latency_ms": 10,
        "busy_ms": latency,
        "memory_bytes": 2**22,
        "mailbox": 0,
    }


async def publish(event_log: EventLog, agent: str, seconds: float) -> None:
    """Metrics at 20 Hz; the agent's calls get 20x slower in the last quarter (a finding)."""
    started = time.monotonic()
    calls, latency = 0, 0.0
    while (elapsed := time.monotonic() - started) < seconds:
        calls += 4
        latency += 4 * 10 * (20 if elapsed > 0.75 * seconds else 1)
        body = {"pod_id": "p1", "replicas": [row(agent, calls, latency)]}
        await event_log.js.publish(names.metrics_subject("p1", "agent"), json.dumps(body).encode())
        await asyncio.sleep(0.05)


async def stored(database_url: str, agent: str) -> list[tuple[object, ...]]:
    store = BehaviourStore(database_url)
    try:
        cursor = store._connection().execute(
            "SELECT window_end FROM agent_behaviour WHERE agent_id = %s ORDER BY window_end",
            (agent,),
        )
        return [tuple(r) for r in cursor.fetchall()]
    finally:
        store.close()


async def test_vectors_are_stored_and_a_rebuild_repeats_nothing(
    tmp_path: Path, database_url: str
) -> None:
    upgrade_database(database_url)
    with own_nats(tmp_path / "nats") as url:
        agent = f"svc-agent-{time.time_ns()}"
        # The secret `swarm up` gives every service: a rebuilt observer derives the same report ids.
        settings = Settings(
            nats_url=url, database_url=database_url, command_id_secret="observer-test-secret-0123"
        )
        event_log = await EventLog.connect(url, settings, name="test")
        async with observing(settings) as observer:
            await publish(event_log, agent, 6.0)
            last = await event_log.last_sequence(names.STREAM_METRICS)
            assert observer.app is not None
            await observer.app.reached(names.OBSERVER_METRICS_PROCESSOR, last, timeout=20)
        recount = Observatory(CONFIG.detector(), CONFIG.window_s)
        closed = []
        async for d in event_log.replay(names.STREAM_METRICS):
            closed += [
                o.window.end
                for o in recount.apply_metrics(d.stream_seq, d.timestamp.timestamp(), d.data)
                if o.window.calls
            ]
        assert len(closed) >= 8
        assert len(await stored(database_url, agent)) == len(closed)
        reports = await event_log.last_sequence(names.STREAM_COMMANDS)
        assert recount.agents[agent].findings >= 1
        assert reports == recount.agents[agent].findings

        # A reset: the changelog is gone, the tables are rebuilt from the start of the stream.
        await event_log.js.delete_stream(names.changelog_stream(names.OBSERVER_APP))
        async with observing(settings) as observer:
            assert observer.app is not None
            await observer.app.reached(names.OBSERVER_METRICS_PROCESSOR, last, timeout=20)
            assert observer.app.stats.recovered_keys == 0
            assert observer.reports_sent == reports  # appended again, dropped as duplicates
        assert len(await stored(database_url, agent)) == len(closed)
        assert await event_log.last_sequence(names.STREAM_COMMANDS) == reports
        await event_log.close()
