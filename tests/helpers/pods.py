"""Helpers for tests that run real pods: a real nats-server, an in-process Hive and scheduler
(tests/helpers/stack.py), pods started in this process, and ways to talk to their agents."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.config import PodSettings
from runtime.pod import Pod
from schemas import commands, names
from schemas.names import HEADER_AGENT_ERROR as HEADER_ERROR
from schemas.specs import AgentSpec, Limits, ModuleRef, Resources
from services.scheduler import Scheduler, SchedulerSettings
from swarm.kernel.settings import Settings
from swarm.kernel.tasks import cancel_and_wait
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import true, wait_until


@contextlib.asynccontextmanager
async def cluster(root: Path) -> AsyncIterator[Stack]:
    async with running_stack(root) as stack:
        scheduler = Scheduler(Settings(nats_url=stack.url), SchedulerSettings())
        async with in_this_loop(scheduler, live_within=None):
            yield stack


@contextlib.asynccontextmanager
async def running_pod(
    stack: Stack, pod_id: str, cache_dir: Path | None = None, **settings: Any
) -> AsyncIterator[tuple[Pod, asyncio.Task[None]]]:
    """A pod of this process, live; snapshots and metrics come faster than by default unless
    `settings` (PodSettings fields) say otherwise. Its module cache is its own unless
    `cache_dir` is given (pods that share compiled code)."""
    fast = {"snapshot_interval_s": 0.2, "metrics_interval_s": 0.5}
    config = PodSettings(
        id=pod_id, cache_dir=cache_dir or stack.root / pod_id / "modules", **(fast | settings)
    )
    pod = Pod(Settings(nats_url=stack.url), config)
    async with in_this_loop(pod) as task:
        yield pod, task


#: Limits for tests about something other than deadlines (state, pod loss): a call that takes
#: microseconds can still wait seconds for the CPU beside a busy suite, and `deadline_ms` is wall
#: time, so the default 1 s would fail such a test for the machine's load (stress run H1: the C
#: counter's first tick "ran past its deadline of 1000 ms (stopped after 2002 ms)").
UNHURRIED = Limits(deadline_ms=30_000)


def spec(wasm: bytes, **kw: Any) -> AgentSpec:
    module = ModuleRef(inline=base64.b64encode(wasm).decode())
    return AgentSpec(version="v1", module=module, resources=Resources(memory_mb=16), **kw)


async def deploy(stack: Stack, name: str, wasm: bytes, replicas: int = 1, **kw: Any) -> None:
    deploy = commands.DeployAgent(name=name, spec=spec(wasm, **kw), replicas=replicas)
    await stack.send([(deploy, "user:test")])


async def agent(stack: Stack, name: str) -> dict[str, Any]:
    answer = await stack.query(names.QUERY_AGENTS_GET, {"name": name})
    found: dict[str, Any] = answer.get("agent") or {}
    return found


async def running_on(
    stack: Stack, name: str, pod_id: str, replicas: int = 1, timeout: float = 60.0
) -> None:
    async def check() -> bool:
        instances = [
            r
            for r in (await agent(stack, name)).get("instances", [])
            if r["phase"] not in ("stopped", "failed")
        ]
        return len(instances) == replicas and all(
            r["phase"] == "running" and r["pod_id"] == pod_id for r in instances
        )

    # A rescheduling waits on leases, the scheduler and a pod start: generous on a busy machine.
    await wait_until(check, timeout, f"{name} running on {pod_id}")


async def ask(stack: Stack, name: str, body: bytes, timeout: float = 5) -> tuple[bytes, bool]:
    """(reply body, whether it is a platform error)."""
    reply = await stack.client.nc.request(
        names.mesh_agent_subject("default", name), body, timeout=timeout
    )
    return reply.data, bool(reply.headers and reply.headers.get(HEADER_ERROR))


async def count(stack: Stack, name: str) -> int:
    body, error = await ask(stack, name, b"+1")
    assert not error, body
    value: int = struct.unpack("<q", body)[0]
    return value


async def events(stack: Stack, type_: str) -> AsyncIterator[dict[str, Any]]:
    """Every event of type `type_` on the log so far, decoded."""
    async for d in stack.client.replay(names.STREAM_EVENTS):
        body = json.loads(d.data)
        if body["type"] == type_:
            yield body


async def has_status(stack: Stack, name: str, status: str) -> bool:
    return bool((await agent(stack, name)).get("status") == status)


async def lose_pod(pod: Pod, task: asyncio.Task[None]) -> None:
    """Wait for an interval snapshot of the running replica (of every count so far), then kill
    the pod abruptly: no last snapshot, no report, heartbeats stop."""
    replica = next(r for r in pod.replicas.values() if not r.done)
    await wait_until(
        lambda: true(replica.snapshot is not None and not replica.unsaved),
        5,
        "an interval snapshot of the last count",
    )
    await cancel_and_wait([task])


@dataclass(frozen=True, slots=True)
class SentReport:
    """A `replica.report` command on SWARM_COMMANDS."""

    command_id: str
    pod_id: str
    agent_id: str
    replica_id: str
    status: str


async def report_outcomes(stack: Stack) -> dict[SentReport, str | None]:
    """Every replica report on the log so far -> "accepted", the rule that refused it, or None
    while it is unanswered."""
    sent: dict[str, SentReport] = {}
    async for d in stack.client.replay(names.STREAM_COMMANDS):
        body = json.loads(d.data)
        if body["type"] == commands.ReportReplica.TYPE:
            data = body["data"]
            sent[body["id"]] = SentReport(
                body["id"], data["pod_id"], data["agent_id"], data["replica_id"], data["status"]
            )
    outcomes: dict[SentReport, str | None] = dict.fromkeys(sent.values())
    async for d in stack.client.replay(names.STREAM_EVENTS):
        parts = names.parse_event_subject(d.subject)
        if parts is None or parts[0] != names.OUTCOME_AGGREGATE or parts[1] not in sent:
            continue
        data = json.loads(d.data)["data"]
        outcome = "accepted" if parts[2] == names.OUTCOME_ACCEPTED else data.get("rule") or "?"
        outcomes[sent[parts[1]]] = outcome
    return outcomes
