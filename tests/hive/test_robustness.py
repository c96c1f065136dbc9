"""No input and no fault can wedge the Hive: each scenario a careless client or an attacker can
produce with a plain NATS client, against a real Hive on real JetStream.

Each test sends what an attacker would, then checks that the input got exactly one outcome (from
the Hive, sealed) and that the Hive keeps deciding other commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from schemas import CommandRejected, command, commands, event, events, names, new_id, utcnow
from services.hive import processor as processor_module
from services.hive.config import HiveSettings
from services.hive.raftframes import MAX_FRAME_BYTES, oversized
from services.scheduler import Scheduler, SchedulerSettings
from swarm.client.commands import find_outcome, wait_for_outcome
from swarm.domain.decide import decide as real_decide
from swarm.domain.state import HiveState
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.seal import SealVerifier
from swarm.kernel.settings import Settings
from tests.helpers.history import spec
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

#: The in-process Hive of `running_stack` seals with the key of this password.
HIVE_KEY = HiveSettings(raft_password="secret-123").seal_key().public.text


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def reader(stack: Stack) -> AsyncIterator[EventLog]:
    """A client that knows the Hive's key, as the CLI and the HTTP API of a stack do."""
    async with await EventLog.connect(
        stack.url, Settings(nats_url=stack.url, hive_public_key=HIVE_KEY)
    ) as log:
        yield log


def raw_command(type_: str, data: Any, *, id_: str | None = None) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_ or new_id(),
        "source": "attacker",
        "type": type_,
        "time": utcnow().isoformat(),
        "identity": "user:mallory",
        "datacontenttype": "application/json",
        "data": data,
    }


async def publish(log: EventLog, body: bytes, subject: str, msg_id: str | None) -> int:
    """Straight onto SWARM_COMMANDS with nats-py, as any client can; returns its sequence."""
    headers = {names.HEADER_MSG_ID: msg_id} if msg_id else None
    ack = await log.js.publish(subject, body, headers=headers)
    return int(ack.seq)


async def invalid_answer(log: EventLog, stream_seq: int, within: float = 20.0) -> dict[str, Any]:
    """The rejection on `_invalid` for the command stored at `stream_seq`."""
    subject = names.outcome_subject(names.INVALID_COMMAND_ID, "rejected")
    seal = SealVerifier.from_text(HIVE_KEY)
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        async for d in log.replay(names.STREAM_EVENTS, subjects=[subject]):
            body = json.loads(d.data)
            if body["data"]["received"].get("stream_seq") == stream_seq and seal.verify(d.data):
                answer: dict[str, Any] = body
                return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"no answer on _invalid for SWARM_COMMANDS #{stream_seq}")


async def outcome_of(
    log: EventLog, command_id: str, *, start: int = 1, within: float = 20.0
) -> dict[str, Any]:
    found = await wait_for_outcome(log, command_id, start_seq=start, within=within)
    assert found is not None, f"no outcome for {command_id} within {within}s"
    assert found.body is not None
    return found.body


async def still_deciding(stack: Stack, reader: EventLog, *, within: float = 10.0) -> None:
    """A fresh, valid command is accepted within a few seconds."""
    start = await reader.last_sequence(names.STREAM_EVENTS)
    probe = command(
        commands.CreateNamespace(name=f"probe-{new_id().lower()[-8:]}"),
        source="test",
        identity="user:test",
    )
    await stack.client.append(probe)
    body = await outcome_of(reader, probe.id, start=start + 1, within=within)
    assert body["type"] == CommandAccepted_TYPE, body


CommandAccepted_TYPE = "swarm.command.accepted"


async def outcomes_on(log: EventLog, command_id: str) -> list[bytes]:
    return [
        d.data
        async for d in log.replay(
            names.STREAM_EVENTS, subjects=[names.outcome_wildcard(command_id)]
        )
    ]


# --- values the log could not hold ----------------------------------------------------------------


async def test_infinite_energy_cost_is_rejected_not_written(stack: Stack, reader: EventLog) -> None:
    body = json.dumps(
        raw_command(
            commands.RegisterPod.TYPE,
            {
                "pod_id": "inf-pod",
                "capacity": {"memory_mb": 1024, "fuel_per_s": 10**9, "slots": 8},
                "energy_cost": float("inf"),
            },
            id_="inf-pod-1",
        )
    ).encode()
    assert b"Infinity" in body  # what json.dumps writes, and what pydantic used to accept
    await publish(stack.client, body, commands.RegisterPod.TYPE, "inf-pod-1")
    answer = await outcome_of(reader, "inf-pod-1")
    assert answer["type"] == "swarm.command.rejected", answer
    assert await stack.pods() == []
    await still_deciding(stack, reader)


async def test_a_command_nested_50000_levels_is_rejected_and_others_go_on(
    stack: Stack, reader: EventLog
) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    body = (
        '{"specversion":"1.0","id":"deep-1","source":"x","type":"swarm.cmd.namespace.create",'
        '"identity":"user:x","datacontenttype":"application/json","data":{"name":"d","quota":'
        + deep
        + "}}"
    ).encode()
    seq = await publish(stack.client, body, commands.CreateNamespace.TYPE, "deep-1")
    answer = await invalid_answer(reader, seq)
    assert answer["type"] == "swarm.command.rejected"
    assert "deeper than 64 levels" in answer["data"]["reason"]
    # A client that sent it finds the answer by the command's position.
    found = await wait_for_outcome(reader, "deep-1", start_seq=1, within=5, command_seq=seq)
    assert found is not None
    assert found.body == answer
    await still_deciding(stack, reader)


# --- failures inside the Hive ---------------------------------------------------------------------


async def test_a_command_that_crashes_decide_is_rejected_with_the_reason(
    stack: Stack, reader: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(state: HiveState, cmd: Any, now: Any, **facts: Any) -> Any:
        if isinstance(cmd.data, commands.CreateNamespace) and cmd.data.name == "boom":
            raise RecursionError("maximum recursion depth exceeded")
        return real_decide(state, cmd, now, **facts)

    monkeypatch.setattr(processor_module, "decide", failing)
    boom = command(commands.CreateNamespace(name="boom"), source="t", identity="user:t")
    await stack.client.append(boom)
    answer = await outcome_of(reader, boom.id)
    assert answer["type"] == "swarm.command.rejected"
    assert answer["data"]["rule"] == "internal"
    assert "RecursionError" in answer["data"]["reason"]
    await still_deciding(stack, reader)


async def test_a_command_whose_events_would_not_fold_is_rejected_before_it_is_written(
    stack: Stack, reader: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision naming a pod nobody registered: evolve would refuse it on every replica."""

    def broken(state: HiveState, cmd: Any, now: Any, **facts: Any) -> Any:
        if isinstance(cmd.data, commands.DeregisterPod) and cmd.data.pod_id == "ghost":
            return processor_module.Decision([events.PodLost(pod_id="ghost", reason="bug")])
        return real_decide(state, cmd, now, **facts)

    monkeypatch.setattr(processor_module, "decide", broken)
    start = await reader.last_sequence(names.STREAM_EVENTS)
    ghost = command(commands.DeregisterPod(pod_id="ghost"), source="t", identity="service:test")
    await stack.client.append(ghost)
    answer = await outcome_of(reader, ghost.id, start=start + 1)
    assert answer["type"] == "swarm.command.rejected"
    assert answer["data"]["rule"] == "internal"
    assert "pod ghost is not known" in answer["data"]["reason"]
    lost = [
        d
        async for d in reader.replay(
            names.STREAM_EVENTS, subjects=[names.aggregate_subjects("pod", "ghost")]
        )
    ]
    assert lost == []  # nothing that would not fold reached the log
    await still_deciding(stack, reader)


async def test_a_command_that_keeps_failing_is_dead_lettered_and_answered(
    stack: Stack, reader: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails while writing one command (here every append of its outcome) ends after a
    few attempts: the command is kept in SWARM_DEADLETTER and rejected with rule `poison`."""
    poison = command(commands.CreateNamespace(name="poison"), source="t", identity="user:t")
    original = EventLog.append_atomic

    async def failing(self: EventLog, requests: Any) -> Any:
        if any(r.subject.startswith(f"swarm.evt.command.{poison.id}.") for r in requests):
            raise RuntimeError("disk on fire")
        return await original(self, requests)

    monkeypatch.setattr(EventLog, "append_atomic", failing)
    start = await reader.last_sequence(names.STREAM_EVENTS)
    await stack.client.append(poison)
    answer = await outcome_of(reader, poison.id, start=start + 1, within=40)
    assert answer["subject"] == names.INVALID_COMMAND_ID
    assert answer["data"]["rule"] == "poison"
    assert answer["data"]["received"]["id"] == poison.id
    assert "disk on fire" in answer["data"]["reason"]
    dead = [
        d
        async for d in stack.client.replay(
            names.STREAM_DEADLETTER, subjects=[names.HIVE_DEADLETTER]
        )
    ]
    assert [json.loads(d.data)["id"] for d in dead] == [poison.id]
    assert "disk on fire" in dead[0].headers[names.HEADER_DEADLETTER_REASON]
    await still_deciding(stack, reader)


# --- ids and outcomes -----------------------------------------------------------------------------


async def test_a_second_body_under_an_answered_id_gets_its_own_rejection(
    stack: Stack, reader: EventLog
) -> None:
    first = raw_command(commands.CreateNamespace.TYPE, {"name": "first"}, id_="reused-1")
    await publish(stack.client, json.dumps(first).encode(), first["type"], "reused-1")
    assert (await outcome_of(reader, "reused-1"))["type"] == CommandAccepted_TYPE

    # Another command under the same id, without Nats-Msg-Id (so JetStream keeps it).
    start = await reader.last_sequence(names.STREAM_EVENTS)
    second = raw_command(commands.CreateNamespace.TYPE, {"name": "second"}, id_="reused-1")
    await publish(stack.client, json.dumps(second).encode(), second["type"], None)
    answer = await outcome_of(reader, "reused-1", start=start + 1)
    assert answer["subject"] == names.INVALID_COMMAND_ID
    assert answer["data"]["rule"] == "duplicate_id"
    assert answer["data"]["received"]["id"] == "reused-1"
    names_now = {n["name"] for n in (await stack.query(names.QUERY_NAMESPACES_LIST))["namespaces"]}
    assert "first" in names_now
    assert "second" not in names_now

    # The very same bytes again (a retry after the dedupe window) is the same command: no new
    # outcome, and the id keeps exactly one outcome of its own.
    await publish(stack.client, json.dumps(first).encode(), first["type"], None)
    await still_deciding(stack, reader)
    assert len(await outcomes_on(reader, "reused-1")) == 1
    invalid = [
        json.loads(d.data)["data"]
        async for d in reader.replay(
            names.STREAM_EVENTS,
            subjects=[names.outcome_subject(names.INVALID_COMMAND_ID, "rejected")],
        )
    ]
    assert [i["received"].get("id") for i in invalid] == ["reused-1"]


async def test_a_foreign_outcome_written_first_does_not_answer_the_command(
    stack: Stack, reader: EventLog
) -> None:
    """An outcome pre-written for an id the attacker expects: the Hive still decides the
    command and writes its own, sealed, outcome after it; readers take only that one."""
    command_id = "victim-1"
    forged = event(
        CommandRejected(command_id=command_id, reason="forged", rule="state"),
        aggregate_id=command_id,
        source="hive/hive-0",
        identity="service:hive",
    )
    await stack.client.append_raw(AppendRequest.of(forged))
    victim = command(
        commands.CreateNamespace(name="victim"), source="t", identity="user:t", id=command_id
    )
    await stack.client.append(victim)
    answer = await outcome_of(reader, command_id)
    assert answer["type"] == CommandAccepted_TYPE
    stored = await outcomes_on(reader, command_id)
    seal = SealVerifier.from_text(HIVE_KEY)
    assert [seal.verify(b) for b in stored] == [False, True]
    await wait_until(lambda: _has_namespace(stack, "victim"), 45, "the victim's namespace to exist")


async def test_a_foreign_outcome_written_after_the_hive_s_is_ignored(
    stack: Stack, reader: EventLog
) -> None:
    ns = command(commands.CreateNamespace(name="late"), source="t", identity="user:t")
    await stack.client.append(ns)
    assert (await outcome_of(reader, ns.id))["type"] == CommandAccepted_TYPE
    forged = event(
        CommandRejected(command_id=ns.id, reason="forged", rule="state"),
        aggregate_id=ns.id,
        source="hive/hive-0",
        identity="service:hive",
    )
    await stack.client.append_raw(AppendRequest.of(forged))
    assert len(await outcomes_on(reader, ns.id)) == 2
    found = await find_outcome(reader, ns.id)
    assert found is not None
    assert found.accepted


async def _has_namespace(stack: Stack, name: str) -> bool:
    listed = (await stack.query(names.QUERY_NAMESPACES_LIST))["namespaces"]
    return any(n["name"] == name for n in listed)


# --- the log holds what cannot be folded ----------------------------------------------------------


async def test_an_event_that_cannot_be_folded_is_recorded_and_folding_goes_on(
    stack: Stack, reader: EventLog
) -> None:
    """A foreign `pod.lost` for a pod nobody registered (the KeyError that stopped every
    replica): recorded as a fold failure, the Hive goes on."""
    lost = event(
        events.PodLost(pod_id="nowhere", reason="forged"), aggregate_id="nowhere", source="x"
    )
    appended = await stack.client.append_raw(AppendRequest.of(lost))
    garbage = await stack.client.append_raw(
        AppendRequest(names.event_subject("pod", "junk", "registered"), b"\xff not json", "junk-1")
    )
    assert stack.hive is not None
    hive = stack.hive

    async def recorded() -> bool:
        return hive.describe()["applied_seq"] >= garbage.seq

    await wait_until(recorded, 45, "the foreign entries to be folded")
    status = hive.describe()
    assert status["fold_failures"] == 2
    assert [f["seq"] for f in status["recent_fold_failures"]] == [appended.seq, garbage.seq]
    assert status["recent_fold_failures"][0]["type"] == "swarm.pod.lost"
    assert "pod nowhere is not known" in status["recent_fold_failures"][0]["reason"]
    await still_deciding(stack, reader)
    await stack.register_pods({"real": (512, 4)})
    await wait_until(lambda: _has_pod(stack, "real"), 45, "a pod registered after them")


async def _has_pod(stack: Stack, pod_id: str) -> bool:
    return any(p["pod_id"] == pod_id for p in await stack.pods())


async def test_outcomes_record_the_command_they_answer(stack: Stack, reader: EventLog) -> None:
    ns = command(commands.CreateNamespace(name="recorded"), source="t", identity="user:t")
    appended = await stack.client.append(ns)
    answer = await outcome_of(reader, ns.id)
    assert answer["data"]["command_seq"] == appended.seq
    assert len(answer["data"]["command_digest"]) == 64
    assert answer[names.EXTENSION_HIVE_SEAL]


async def test_outcomes_pre_written_for_guessable_proposal_ids_do_not_delay_placement(
    stack: Stack, reader: EventLog
) -> None:
    """Before, a proposal's id was `place-<request seq>-<attempt>-<replica>`: anyone could write
    its rejection ahead and hold the placement back for as long as they liked. Now the ids are
    keyed; the same pre-written outcomes change nothing."""
    await stack.register_pods({"p1": (1024, 8)})
    await wait_until(lambda: _has_pod(stack, "p1"), 45, "the pod")
    deploy = command(
        commands.DeployAgent(name="target", spec=spec(), replicas=1), source="t", identity="user:t"
    )
    agent_id = deploy.id
    # The replica's request will sit a few entries further on: cover every guess.
    next_seq = await reader.last_sequence(names.STREAM_EVENTS) + 1
    forged = []
    for seq in range(next_seq, next_seq + 6):
        for attempt in range(6):
            command_id = f"place-{seq}-{attempt}-{agent_id}-0"[:64].rstrip("-_")
            forged.append(
                AppendRequest.of(
                    event(
                        CommandRejected(
                            command_id=command_id,
                            command_type=commands.ProposePlacement.TYPE,
                            reason="forged",
                            rule="capacity",
                        ),
                        aggregate_id=command_id,
                        source="hive/hive-0",
                    )
                )
            )
    await stack.client.append_batch(forged)
    scheduler = Scheduler(
        Settings(nats_url=stack.url, hive_public_key=HIVE_KEY),
        SchedulerSettings(policy="most-free"),
    )
    async with in_this_loop(scheduler, live_within=None):
        await stack.client.append(deploy)
        assert (await outcome_of(reader, agent_id))["type"] == CommandAccepted_TYPE
        await wait_until(lambda: _placed(stack, 1), 15, "the replica placed")
        assert scheduler.rejected == {}


async def _placed(stack: Stack, count: int) -> bool:
    return await stack.placed() == count


async def test_the_raft_port_listens_on_its_own_address_not_on_every_interface(
    stack: Stack,
) -> None:
    """pysyncobj binds 0.0.0.0 unless told: a replica at 127.0.0.1 answered on every
    interface of the machine."""
    assert stack.hive is not None
    host, port = stack.hive.hive_settings.raft_self.rsplit(":", 1)
    listening = [
        c.laddr
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)
    ]
    assert [address.ip for address in listening] == [host]


async def test_a_frame_announced_as_2_gib_on_the_raft_port_drops_the_connection(
    stack: Stack,
) -> None:
    """pysyncobj buffered whatever a frame announced before any check (the cluster password is
    checked only once the frame is whole): the replica now hangs up at once, and leads on."""
    assert stack.hive is not None
    host, port = stack.hive.hive_settings.raft_self.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(struct.pack("i", 2**31 - 1) + b"\0" * 65536)
        await writer.drain()
        # Hung up: the read ends (EOF, or a reset if our bytes were still unread).
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 30) == b""
    finally:
        writer.close()
    assert stack.hive.describe().get("is_leader") is True


def test_the_frame_bound_judges_the_first_frame_and_the_whole_buffer() -> None:
    limit = 100
    assert not oversized(b"", limit)
    assert not oversized(struct.pack("i", 100) + b"x" * 50, limit)
    assert oversized(struct.pack("i", 101), limit)
    assert oversized(struct.pack("i", -1), limit)
    assert oversized(struct.pack("i", 10) + b"x" * 200, limit)  # more buffered than a frame
    assert MAX_FRAME_BYTES >= 8 * 4 * 1024 * 1024  # twice a 4 MiB batch, encrypted
