"""`swarm status` asks every Hive replica of the stack how it does, all at once; an answer that
is not a status (anyone on NATS can answer on the query subject until zero trust) is shown as
that replica not answering, and never fails the command."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas import names
from swarm.cli.stack import _hive_view
from swarm.devstack.stack import StackPhase, StackReport, StackState, started_after_boot
from swarm.devstack.supervisor import ServiceState, ServiceStatus
from swarm.kernel.connection import settle
from swarm.kernel.eventlog import EventLog

pytestmark = pytest.mark.timeout(60)


def report(tmp_path: Path, nats_url: str, replicas: int) -> StackReport:
    now = datetime.now(UTC)
    hives = tuple(
        ServiceStatus(f"hive-{i}", ServiceState.RUNNING, None, 0, str(tmp_path / f"hive-{i}.log"))
        for i in range(replicas)
    )
    state = StackState(
        data_dir=str(tmp_path),
        pid=os.getpid(),
        pid_started=started_after_boot(os.getpid()),
        phase=StackPhase.RUNNING,
        started_at=now,
        updated_at=now,
        nats_url=nats_url,
        services=hives,
    )
    return StackReport(tmp_path, state, running=True)


async def test_forged_and_missing_answers_are_replicas_that_do_not_answer(
    tmp_path: Path, nats_url: str
) -> None:
    log = await EventLog.connect(nats_url)
    # Impostors on the query subjects of a stack of four replicas.
    answers = {
        "hive-0": json.dumps({"node": "hive-0", "is_leader": True, "applied_seq": 7}).encode(),
        "hive-1": b"[1, 2, 3]",  # JSON, not a status
        "hive-2": b"\xff not json",
        # hive-3: nobody answers (no responders)
    }
    subs = []
    for node, body in answers.items():

        async def reply(msg, body: bytes = body) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(body)

        subs.append(await log.nc.subscribe(f"{names.QUERY_STATUS}.{node}", cb=reply))
    try:
        await settle(log.nc, 10)
        view = await asyncio.to_thread(_hive_view, report(tmp_path, nats_url, 4))
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await log.close()
    assert view is not None
    by_node = {v["node"]: v for v in view}
    assert list(by_node) == ["hive-0", "hive-1", "hive-2", "hive-3"]
    assert by_node["hive-0"]["is_leader"] is True
    assert by_node["hive-0"]["applied_seq"] == 7
    for node in ("hive-1", "hive-2", "hive-3"):
        assert by_node[node].get("unreachable") is True, by_node[node]
