"""Agent identity on the mesh: a pod given its stack's principals lets a message reach an agent
only when one of them signed it, as an identity its role may claim; an agent's own messages
are signed by its pod as that agent, and taken only while the log places the replica there.

Real nats-server, Hive, scheduler and pod, keys as `swarm up` issues them; the attacks go
through a plain nats-py connection, as anyone on the machine could send them, and each is
answered with the refusal a user would read while the agent sees nothing."""

from __future__ import annotations

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
            yield Mesh(stack, keys, pod, admin)


async def _running(pod: Pod, n: int) -> bool:
    return sum(r.state.value == "running" for r in pod.replicas.values()) == n


COUNTER_SUBJECT = names.mesh_agent_subject("default", "counter")


async def count(mesh: Mesh) -> int:
    """One message to the counter, signed as user ann by her own key: its new count."""
    log = EventLog(mesh.stack.client.nc, credentials=mesh.keys / "ann.nk")
    reply = await log.request(COUNTER_SUBJECT, b"+1", timeout=10, claim=MeshClaim("user:ann"))
    assert not (reply.headers or {}).get(names.HEADER_AGENT_ERROR), reply.data
    value: int = struct.unpack("<q", reply.data)[0]
    return value


async def test_a_signed_message_is_answered_and_the_answer_says_who_answered(
    mesh: Mesh,
) -> None:
    assert await count(mesh) == 1
    log = EventLog(mesh.stack.client.nc, credentials=mesh.keys / "ann.nk")
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
    attacker = await nats.connect(mesh.stack.url, name="attacker")
    counter = mesh.replica("counter")
    ann = mesh.signer("ann")
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
