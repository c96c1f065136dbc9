"""The scheduler's tables as its changelog recovers them, against a recount of the log."""

from __future__ import annotations

import json
from typing import Any

from schemas import names
from services.scheduler.intake import Intake, decode
from services.scheduler.planner import Planner
from services.scheduler.policies import MostFreeCapacity
from services.scheduler.tables import PODS, TABLES, rows_of
from swarm.domain.evolve import evolve
from swarm.domain.state import HiveState
from swarm.kernel.eventlog import EventLog
from swarm.kernel.ids import IdKey
from swarm.kernel.settings import Settings

#: The id secret every scheduler of these tests gets (as `swarm up` gives one to its scheduler):
#: a restarted scheduler, and the recount below, must derive the same proposal ids.
ID_SECRET = "scheduler-test-secret-0123456789"
IDS = IdKey.from_secret(ID_SECRET, "scheduler")


def _normal(table: dict[Any, Any]) -> dict[str, str]:
    # Live rows hold what the handler wrote, recovered ones what JSON gave back: compare as JSON.
    return {json.dumps(k): json.dumps(v, sort_keys=True) for k, v in table.items()}


async def recovered_tables(url: str) -> tuple[int, dict[str, dict[str, str]]]:
    """Start the scheduler's stream app as a restarted scheduler would and take its tables as
    recovered, before it reads any event: (position, tables). Then stop it."""
    intake = Intake(Planner(MostFreeCapacity(), ids=IDS), clock=lambda: 0.0)
    app = intake.app(Settings(nats_url=url))
    await app.start()
    try:
        # `start()` returns right after creating the intake task, which has not run yet: this
        # is the state recovery produced, at the recovered position.
        position = app.position(names.SCHEDULER_PROCESSOR)
        tables = {t: _normal(app.snapshot(t)) for t in TABLES}
    finally:
        app.stop()
        await app.wait()
    return position, tables


async def recount(client: EventLog, position: int) -> tuple[dict[str, dict[str, str]], HiveState]:
    """Both the scheduler's rows and the Hive's state folded from the log up to `position`,
    from scratch (a fresh planner and the Hive's own `evolve`)."""
    planner = Planner(MostFreeCapacity(), ids=IDS)
    hive = HiveState()
    if position > 0:
        async for d in client.replay(names.STREAM_EVENTS):
            if d.stream_seq > position:
                continue  # the replay ends where the log ended when it began
            envelope = decode(d.data)
            if envelope is None:
                planner.skip(d.stream_seq)
            else:
                planner.apply(envelope, d.stream_seq, 0.0)
            evolve(hive, d.stream_seq, d.decode())
    rows = rows_of(planner.view, planner.attempts)
    return {t: _normal(rows[t]) for t in TABLES}, hive


async def assert_tables_match_the_log(url: str, client: EventLog) -> int:
    """The recovered tables equal the recount at their position, and the pods' use equals what
    the Hive counts there. Returns the position."""
    position, tables = await recovered_tables(url)
    expected, hive = await recount(client, position)
    for table in TABLES:
        assert tables[table] == expected[table], table
    used = {json.loads(k): json.loads(v)["used_memory_mb"] for k, v in tables[PODS].items()}
    assert used == {p: pod.used_memory_mb for p, pod in hive.pods.items()}
    return position
