"""Agent identity on the mesh: a pod given its stack's principals lets a message reach an agent
only when one of them signed it, as an identity its role may claim; an agent's own messages
are signed by its pod as that agent, and taken only while the log places the replica there.

Real nats-server, Hive, scheduler and pod, keys as `swarm up` issues them; the attacks go
through a plain nats-py connection, as anyone on the machine could send them, and each is
answered with the refusal a user would read while the agent sees nothing."""

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
from runtime.replica import Replica
from schemas import command, commands, names
from services.scheduler import Scheduler, SchedulerSettings
from swarm.devstack.principals import issue
from swarm.kernel.connection import settle
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.signing import CommandSigner, MeshClaim, mesh_signature_of
from tests.helpers.agents import COUNTER, agent, spec
from tests.helpers.pods import running_on
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

#: Sends every message it gets to agent "counter" of its own namespace (one way) and replies
#: with send's return code.
FORWARDER = agent(
    """
  (data (i32.const 16) "agent:counter")
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 64)
      (call $send (i32.const 16) (i32.const 13) (local.get $ptr) (local.get $len)))
    (call $reply (i32.const 64) (i32.const 4))
    (i32.const 0))
""",
    imports=("send", "reply"),
)


@dataclass
class Mesh:
    stack: Stack
    keys: Path
    pod: Pod
    #: The stack's connection, signing as the owner.
    admin: EventLog
    #: Ann's connection, signing as ann and answered under her own inbox prefix (where a pod
    #: answers a message she signed).
    ann: EventLog

    def signer(self, name: str) -> CommandSigner:
        return CommandSigner.from_seed_file(self.keys / f"{name}.nk")

    def replica(self, name: str, namespace: str = "default") -> Replica:
        return next(
            r
            for r in self.pod.replicas.values()
            if r.assignment.name == name and r.assignment.namespace == namespace
        )


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    keys = tmp_path / "principals"
    issue(
        keys,
        [
            ("admin", "admin"),
            ("pod-1", "pod"),
            ("pod-2", "pod"),
            ("scheduler", "service"),
            ("ann", "user"),
        ],
    )
    listing = keys / "principals.json"
    async with running_stack(tmp_path, principals_file=listing) as stack:
        scheduler = Scheduler(
            Settings(nats_url=stack.url, nats_credentials=keys / "scheduler.nk"),
            SchedulerSettings(),
        )
        config = PodSettings(
            id="pod-1",
            cache_dir=tmp_path / "pod-1",
            principals_file=listing,
            metrics_interval_s=0.5,
        )
        pod = Pod(Settings(nats_url=stack.url, nats_credentials=keys / "pod-1.nk"), config)
        async with in_this_loop(scheduler, live_within=None), in_this_loop(pod):
            admin = EventLog(stack.client.nc, credentials=keys / "admin.nk")
            other = commands.CreateNamespace(name="other")
            await admin.append(command(other, source="test", identity="user:t"))
            # Ann may message the agents of `default` (folded by the pod before the placements).
            grant = commands.GrantAccess(user="ann", role="operator", namespace="default")
            await admin.append(command(grant, source="test", identity="user:t"))
            for ns, name, wasm in (
                ("default", "counter", COUNTER),
                ("default", "forwarder", FORWARDER),
                ("other", "forwarder", FORWARDER),
            ):
                deploy = commands.DeployAgent(namespace=ns, name=name, spec=spec(wasm))
                await admin.append(command(deploy, source="test", identity="user:t"))
            for name in ("counter", "forwarder"):
                await running_on(stack, name, "pod-1")
            await wait_until(lambda: _running(pod, 3), 30, "three replicas running on pod-1")
            async with await EventLog.connect(
                stack.url, name="ann", credentials=keys / "ann.nk", ensure=False
            ) as ann:
                yield Mesh(stack, keys, pod, admin, ann)


async def _running(pod: Pod, n: int) -> bool:
    return sum(r.state.value == "running" for r in pod.replicas.values()) == n


COUNTER_SUBJECT = names.mesh_agent_subject("default", "counter")


async def count(mesh: Mesh) -> int:
    """One message to the counter, signed as user ann by her own key: its new count."""
    reply = await mesh.ann.request(COUNTER_SUBJECT, b"+1", timeout=10, claim=MeshClaim("user:ann"))
    assert not (reply.headers or {}).get(names.HEADER_AGENT_ERROR), reply.data
    value: int = struct.unpack("<q", reply.data)[0]
    return value


async def test_a_signed_message_is_answered_and_the_answer_says_who_answered(
    mesh: Mesh,
) -> None:
    assert await count(mesh) == 1
    log = mesh.ann
    reply = await log.request(COUNTER_SUBJECT, b"+1", timeout=10, claim=MeshClaim("user:ann"))
    answer = mesh_signature_of(reply.subject, reply.data, reply.headers)
    assert answer is not None
    assert answer.valid, answer.problem
    replica = mesh.replica("counter").assignment
    assert answer.signer == mesh.signer("pod-1").public_key
    assert answer.claim == MeshClaim(
        f"agent:{replica.agent_id}", replica.replica_id, replica.placed_seq
    )
    # An agent's send is signed by its pod as that agent, and reaches its namespace's agent.
    forwarded = await log.request(
        names.mesh_agent_subject("default", "forwarder"),
        b"+1",
        timeout=10,
        claim=MeshClaim("user:ann"),
    )
    assert struct.unpack("<i", forwarded.data) == (0,)
    counter = mesh.replica("counter")
    await wait_until(lambda: _calls(counter, 3), 10, "the forwarded message counted")
    assert counter.metrics.mesh_refused == 0
    assert await count(mesh) == 4


async def _calls(replica: Replica, n: int) -> bool:
    return replica.metrics.calls == n


def _error(reply: Any) -> str:
    assert (reply.headers or {}).get(names.HEADER_AGENT_ERROR), reply.data
    reason: str = json.loads(reply.data)["error"]
    return reason


async def test_mesh_impersonation_is_refused_before_the_agent_sees_it(
    mesh: Mesh, tmp_path: Path
) -> None:
    ann = mesh.signer("ann")
    # Answered under ann's inbox prefix, as her own client is (where the test's server lets
    # anyone listen, a `swarm up` stack ann alone): what is tried here is the rest of the guard.
    attacker = await nats.connect(
        mesh.stack.url, name="attacker", inbox_prefix=names.inbox_prefix(ann.public_key)
    )
    counter = mesh.replica("counter")
    now = time.time_ns() // 1_000_000

    async def ask(headers: dict[str, str] | None, body: bytes = b"+1") -> str:
        reply = await attacker.request(COUNTER_SUBJECT, body, timeout=10, headers=headers)
        return _error(reply)

    try:
        # Nothing signed: what any client that is not Swarm's sends.
        assert (await ask(None)).startswith("unauthenticated: the message is not signed")
        # A user's valid key claiming to be the scheduler, or another user.
        for claimed in ("service:scheduler", "user:bob", "agent:whatever"):
            headers = ann.mesh_headers(COUNTER_SUBJECT, b"+1", MeshClaim(claimed), now)
            assert await ask(headers) == (
                f"forbidden: the message claims identity {claimed!r} but is signed by ann "
                "(role user), who may act only as user:ann"
            )
        # A signature taken from a message and put on another body or subject.
        headers = ann.mesh_headers(COUNTER_SUBJECT, b"+0", MeshClaim("user:ann"), now)
        assert await ask(headers, b"+1") == (
            "unauthenticated: the message's signature does not hold: "
            "the signature does not match the message"
        )
        elsewhere = names.mesh_agent_subject("default", "forwarder")
        headers = ann.mesh_headers(elsewhere, b"+1", MeshClaim("user:ann"), now)
        assert (await ask(headers)).startswith("unauthenticated: the message's signature")
        # A forged identity header under a genuine signature: refused for the claim (checked
        # first), and the signature would not hold either.
        headers = ann.mesh_headers(COUNTER_SUBJECT, b"+1", MeshClaim("user:ann"), now)
        assert await ask(headers | {names.HEADER_MESH_IDENTITY: "user:bob"}) == (
            "forbidden: the message claims identity 'user:bob' but is signed by ann "
            "(role user), who may act only as user:ann"
        )
        # A genuine message replayed ten minutes later.
        old = ann.mesh_headers(COUNTER_SUBJECT, b"+1", MeshClaim("user:ann"), now - 600_000)
        assert (await ask(old)).startswith("unauthenticated: the message was signed 600 s ago")
        # A key the stack never issued.
        (stranger,) = issue(tmp_path / "elsewhere", [("admin", "admin")])
        foreign = CommandSigner.from_seed_file(stranger.seed_file)
        headers = foreign.mesh_headers(COUNTER_SUBJECT, b"+1", MeshClaim("user:ann"), now)
        assert await ask(headers) == (
            f"unauthenticated: the message is signed by {stranger.public_key!r}, "
            "which is no principal of this stack"
        )
        # Another pod's key claiming a replica the log places on pod-1.
        forwarder = mesh.replica("forwarder").assignment
        claim = MeshClaim(f"agent:{forwarder.agent_id}", forwarder.replica_id, forwarder.placed_seq)
        headers = mesh.signer("pod-2").mesh_headers(COUNTER_SUBJECT, b"+1", claim, now)
        assert await ask(headers) == (
            f"forbidden: the message claims replica {forwarder.replica_id!r} of agent "
            f"{forwarder.agent_id!r} placed on pod-2 (placement {forwarder.placed_seq}), "
            f"but the log places it on pod-1 (placement {forwarder.placed_seq})"
        )
        # pod-1's own key, for its agent of another namespace.
        outsider = mesh.replica("forwarder", "other").assignment
        claim = MeshClaim(f"agent:{outsider.agent_id}", outsider.replica_id, outsider.placed_seq)
        headers = mesh.signer("pod-1").mesh_headers(COUNTER_SUBJECT, b"+1", claim, now)
        assert await ask(headers) == (
            "forbidden: agent other/forwarder may message agents of its own namespace alone, "
            "not of default"
        )
        refused = 11
        # The agent saw none of it: no call, no count; the pod counted each refusal.
        assert counter.metrics.calls == 0
        assert counter.metrics.mesh_refused == refused
        assert await count(mesh) == 1
        metrics = mesh.pod.metrics_json()
        assert metrics["mesh_unauthenticated"] + metrics["mesh_forbidden"] == refused
        assert metrics["mesh_forbidden"] == 6
    finally:
        await attacker.close()


async def test_a_user_messages_only_the_agents_of_the_namespaces_where_it_runs_agents(
    mesh: Mesh,
) -> None:
    """Ann is an operator of `default` alone: her message to an agent of `other` is refused by
    the pod until the owner makes her an operator there too (a viewer does not message)."""
    log = mesh.ann
    subject = names.mesh_agent_subject("other", "forwarder")

    async def ask() -> Any:
        return await log.request(subject, b"+1", timeout=10, claim=MeshClaim("user:ann"))

    assert _error(await ask()) == (
        "forbidden: user ann may not message agents of namespace other: it needs role operator "
        "there and holds no role (the stack's owner grants it with "
        "`swarm user grant ann operator --namespace other`)"
    )
    for role in ("viewer", "operator"):
        grant = commands.GrantAccess(user="ann", role=role, namespace="other")
        await mesh.admin.append(command(grant, source="test", identity="user:t"))

        async def folded(role: str = role) -> bool:
            return any(
                (g.user, g.namespace, g.role) == ("ann", "other", role)
                for g in mesh.pod.view.grants
            )

        await wait_until(folded, 30, f"the pod folding ann's {role} role")
        reply = await ask()
        if role == "viewer":
            assert "it needs role operator there and holds viewer" in _error(reply)
    assert not (reply.headers or {}).get(names.HEADER_AGENT_ERROR), reply.data
    assert mesh.replica("forwarder", "other").metrics.mesh_refused == 2


async def test_a_message_read_off_the_wire_is_taken_once_and_answered_to_its_signer_alone(
    mesh: Mesh,
) -> None:
    """Ann's signed message, read off the wire (on a `swarm up` stack only pods and the owner
    may read the mesh) and sent again within its window: as it was, it is refused as a replay;
    with another reply subject, for where its answer would go. The agent counts once; ann's
    client sending the same body again (signed again) is answered."""
    counter = mesh.replica("counter")
    ann = mesh.signer("ann")
    own = names.inbox_prefix(ann.public_key)
    tap = await nats.connect(mesh.stack.url, name="tap")
    as_ann = await nats.connect(mesh.stack.url, name="ann", inbox_prefix=own)
    try:
        captured: asyncio.Queue[Any] = asyncio.Queue()
        answers: asyncio.Queue[Any] = asyncio.Queue()
        await tap.subscribe(COUNTER_SUBJECT, cb=captured.put)
        inbox = f"{own}.replayed"
        await as_ann.subscribe(inbox, cb=answers.put)
        for nc in (tap, as_ann):
            await settle(nc, 10)
        now = time.time_ns() // 1_000_000
        headers = ann.mesh_headers(COUNTER_SUBJECT, b"+1", MeshClaim("user:ann"), now)
        await as_ann.publish(COUNTER_SUBJECT, b"+1", reply=inbox, headers=headers)
        first = await asyncio.wait_for(answers.get(), 10)
        assert not (first.headers or {}).get(names.HEADER_AGENT_ERROR), first.data
        assert struct.unpack("<q", first.data) == (1,)
        original = await asyncio.wait_for(captured.get(), 10)
        assert original.reply == inbox

        # As it was, to the same inbox: refused, and ann hears why.
        await tap.publish(
            original.subject, original.data, reply=original.reply, headers=original.headers
        )
        again = await asyncio.wait_for(answers.get(), 10)
        assert _error(again).startswith(
            "replayed: the message (signed 0 s ago) was taken already: a message sent again "
            "must be signed again"
        )
        # With the replayer's own reply subject: refused, for where its answer would go.
        stolen = await tap.request(
            original.subject, original.data, timeout=10, headers=original.headers
        )
        assert _error(stolen).startswith(
            "unauthenticated: the message is signed by ann but its answer would go to '_INBOX."
        )
        assert f"not under ann's own inbox prefix {own}" in _error(stolen)
        # The same body from ann's client, signed again: a new message, counted.
        assert await count(mesh) == 2
        assert counter.metrics.calls == 2
        assert counter.metrics.mesh_refused == 2
        metrics = mesh.pod.metrics_json()
        assert (metrics["mesh_replayed"], metrics["mesh_unauthenticated"]) == (1, 1)
    finally:
        await tap.close()
        await as_ann.close()
