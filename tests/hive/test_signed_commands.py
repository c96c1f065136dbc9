"""A Hive given its stack's principals takes a command as its signer's, never as what it claims:
unsigned, tampered and stranger-signed commands are refused (rule `signature`), and a principal
claiming an identity its role may not (a pod acting as the scheduler, or as another pod) is
refused (rule `identity`). Real nats-server, real Hive, keys as `swarm up` issues them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas import Envelope, Payload, command, commands
from schemas.specs import Capacity, Quota
from swarm.client.commands import wait_for_outcome
from swarm.devstack.principals import add_user, issue, remove_user
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.signing import CommandSigner, signature_of
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    keys = tmp_path / "principals"
    issue(keys, [("admin", "admin"), ("pod-1", "pod"), ("scheduler", "service")])
    async with running_stack(tmp_path, principals_file=keys / "principals.json") as stack:
        yield stack


def as_principal(stack: Stack, name: str) -> EventLog:
    """The stack's connection, signing with `name`'s key."""
    return EventLog(stack.client.nc, credentials=stack.root / "principals" / f"{name}.nk")


async def outcome(stack: Stack, log: EventLog, env: Envelope[Any]) -> tuple[bool, str, str]:
    """Send `env` through `log`; (accepted, rule, reason) of the Hive's answer."""
    start = await stack.client.last_sequence("SWARM_EVENTS") + 1
    await log.append(env)
    found = await wait_for_outcome(stack.client, env.id, start_seq=start, within=45)
    assert found is not None, f"no outcome for {env.type}"
    assert found.body is not None
    data = found.body["data"]
    return found.accepted, data.get("rule") or "", data.get("reason") or ""


def cmd(payload: Payload, identity: str) -> Envelope[Any]:
    return command(payload, source="test", identity=identity)


async def test_a_principal_s_signed_command_is_taken(stack: Stack) -> None:
    admin = as_principal(stack, "admin")
    assert await outcome(stack, admin, cmd(commands.CreateNamespace(name="team"), "user:ann")) == (
        True,
        "",
        "",
    )
    pod = as_principal(stack, "pod-1")
    register = commands.RegisterPod(
        pod_id="pod-1", capacity=Capacity(memory_mb=512, fuel_per_s=10**9, slots=4), lease_s=60
    )
    accepted, _, _ = await outcome(stack, pod, cmd(register, "pod:pod-1"))
    assert accepted


async def test_unsigned_tampered_and_stranger_signed_commands_are_refused(
    stack: Stack, tmp_path: Path
) -> None:
    unsigned = cmd(commands.CreateNamespace(name="unsigned"), "user:ann")
    accepted, rule, reason = await outcome(stack, stack.client, unsigned)
    assert (accepted, rule) == (False, "signature")
    assert "not signed" in reason

    signer = CommandSigner.from_seed_file(stack.root / "principals" / "admin.nk")
    original = cmd(commands.CreateNamespace(name="small"), "user:ann")
    body = signer.sign(original.to_json()).replace(b'"small"', b'"large"')
    start = await stack.client.last_sequence("SWARM_EVENTS") + 1
    await stack.client.append_raw(AppendRequest(original.type, body, original.id))
    found = await wait_for_outcome(stack.client, original.id, start_seq=start, within=45)
    assert found is not None
    assert found.body is not None
    assert (found.accepted, found.body["data"]["rule"]) == (False, "signature")
    assert "does not hold" in found.body["data"]["reason"]

    (stranger,) = issue(tmp_path / "elsewhere", [("admin", "admin")])
    foreign = EventLog(stack.client.nc, credentials=stranger.seed_file)
    accepted, rule, reason = await outcome(
        stack, foreign, cmd(commands.CreateNamespace(name="stranger"), "user:ann")
    )
    assert (accepted, rule) == (False, "signature")
    assert "no principal of this stack" in reason


async def test_a_pod_cannot_act_as_the_scheduler_or_as_another_pod(stack: Stack) -> None:
    pod = as_principal(stack, "pod-1")
    expire = commands.ExpirePod(pod_id="pod-9", last_heartbeat_age_s=60)
    accepted, rule, reason = await outcome(stack, pod, cmd(expire, "service:scheduler"))
    assert (accepted, rule) == (False, "identity")
    assert "signed by pod-1 (role pod)" in reason
    other = commands.RegisterPod(
        pod_id="pod-2", capacity=Capacity(memory_mb=512, fuel_per_s=10**9, slots=4), lease_s=60
    )
    accepted, rule, reason = await outcome(stack, pod, cmd(other, "pod:pod-2"))
    assert (accepted, rule) == (False, "identity")
    assert "pod:pod-1" in reason
    # The scheduler's own key may send what only services may.
    scheduler = as_principal(stack, "scheduler")
    accepted, rule, _ = await outcome(stack, scheduler, cmd(expire, "service:scheduler"))
    # (Refused for the state: no pod-9 holds a lease. Not for who sent it.)
    assert rule not in ("signature", "identity"), (accepted, rule)


async def test_only_a_pod_s_own_key_registers_it_so_nothing_is_placed_on_a_fake_pod(
    stack: Stack,
) -> None:
    """A user, a service or the owner may claim `user:` or `service:` identities, which the
    rules of identities let register a pod: signed, a registration counts only by that pod's
    own key, so the Hive places replicas only on pods the stack issued a key to."""
    add_user(stack.root / "principals", "mallory")
    fake = commands.RegisterPod(
        pod_id="pod-fake", capacity=Capacity(memory_mb=512, fuel_per_s=10**9, slots=4), lease_s=60
    )
    for signer, identity in (
        ("mallory", "user:mallory"),
        ("scheduler", "service:scheduler"),
        ("admin", "pod:pod-fake"),
    ):
        accepted, rule, reason = await outcome(
            stack, as_principal(stack, signer), cmd(fake, identity)
        )
        assert (accepted, rule) == (False, "identity"), signer
        assert reason.startswith(
            f"swarm.cmd.pod.register about pod pod-fake must be signed by that pod's own key, "
            f"not by {signer}"
        )
    pods = await stack.pods()
    assert [p["pod_id"] for p in pods] == []
    # The pod's own key registers it.
    pod = as_principal(stack, "pod-1")
    own = commands.RegisterPod(
        pod_id="pod-1", capacity=Capacity(memory_mb=512, fuel_per_s=10**9, slots=4), lease_s=60
    )
    assert (await outcome(stack, pod, cmd(own, "pod:pod-1")))[0]


async def test_a_user_added_while_the_hive_runs_acts_as_itself_alone(stack: Stack) -> None:
    """The Hive reads the listing again when it changed (`swarm user add`): the new user's
    commands count at once, as `user:<its name>` and nobody else, within the roles it holds."""
    add_user(stack.root / "principals", "ann")
    ann = as_principal(stack, "ann")
    accepted, rule, reason = await outcome(
        stack, ann, cmd(commands.CreateNamespace(name="anns"), "user:ann")
    )
    assert (accepted, rule) == (False, "access")  # a new user holds no role yet
    assert "needs role admin in every namespace and holds no role" in reason
    admin = as_principal(stack, "admin")
    grant = commands.GrantAccess(user="ann", role="admin")
    assert await outcome(stack, admin, cmd(grant, "user:local")) == (True, "", "")
    accepted, rule, _ = await outcome(
        stack, ann, cmd(commands.CreateNamespace(name="anns"), "user:ann")
    )
    assert (accepted, rule) == (True, "")
    accepted, rule, reason = await outcome(
        stack, ann, cmd(commands.CreateNamespace(name="bobs"), "user:bob")
    )
    assert (accepted, rule) == (False, "identity")
    assert "user:ann" in reason
    remove_user(stack.root / "principals", "ann")
    accepted, rule, reason = await outcome(
        stack, ann, cmd(commands.CreateNamespace(name="gone"), "user:ann")
    )
    assert (accepted, rule) == (False, "signature")


async def test_a_user_acts_only_where_its_role_reaches(stack: Stack) -> None:
    """Roles per namespace: an operator runs agents in its namespace alone, an admin of a
    namespace also sets its quota and who acts in it, and only an admin of every namespace
    creates one; a role revoked is refused at once. Each refusal says what is missing."""
    add_user(stack.root / "principals", "bea")
    bea, admin = as_principal(stack, "bea"), as_principal(stack, "admin")

    async def by_admin(payload: Payload) -> None:
        assert await outcome(stack, admin, cmd(payload, "user:local")) == (True, "", "")

    async def by_bea(payload: Payload) -> tuple[bool, str, str]:
        return await outcome(stack, bea, cmd(payload, "user:bea"))

    await by_admin(commands.CreateNamespace(name="team"))
    await by_admin(commands.CreateNamespace(name="other"))
    await by_admin(commands.GrantAccess(user="bea", role="operator", namespace="team"))

    # Past the access check, the Hive decides as for anyone: no such agent.
    _, rule, _ = await by_bea(commands.ScaleAgent(namespace="team", name="nobody", replicas=2))
    assert rule == "not_found"
    accepted, rule, reason = await by_bea(
        commands.ScaleAgent(namespace="other", name="nobody", replicas=2)
    )
    assert (accepted, rule) == (False, "access")
    assert "needs role operator in namespace other and holds no role there" in reason
    assert "swarm user grant bea operator --namespace other" in reason
    for beyond in (
        commands.UpdateNamespace(name="team", quota=Quota(max_agents=1)),
        commands.GrantAccess(user="bea", role="admin", namespace="team"),
    ):
        accepted, rule, reason = await by_bea(beyond)
        assert (accepted, rule) == (False, "access"), beyond
        assert "needs role admin in namespace team and holds operator there" in reason

    await by_admin(commands.GrantAccess(user="bea", role="admin", namespace="team"))
    assert await by_bea(commands.UpdateNamespace(name="team", quota=Quota(max_agents=1))) == (
        True,
        "",
        "",
    )
    assert await by_bea(commands.GrantAccess(user="cid", role="viewer", namespace="team")) == (
        True,
        "",
        "",
    )
    accepted, rule, reason = await by_bea(commands.CreateNamespace(name="beas"))
    assert (accepted, rule) == (False, "access")
    assert "needs role admin in every namespace" in reason

    await by_admin(commands.RevokeAccess(user="bea", namespace="team"))
    accepted, rule, _ = await by_bea(commands.ScaleAgent(namespace="team", name="x", replicas=1))
    assert (accepted, rule) == (False, "access")


async def test_a_client_signs_its_commands_but_not_bytes_it_relays(stack: Stack) -> None:
    """Only commands: a relay (`swarm timeline import`) stores another sender's bytes as they
    are, and nothing but commands is signed."""
    admin = as_principal(stack, "admin")
    own = cmd(commands.CreateNamespace(name="own"), "user:ann")
    relayed = cmd(commands.CreateNamespace(name="relayed"), "user:ann")
    kept = await admin.append_raw(AppendRequest(own.type, own.to_json(), own.id))
    as_is = await admin.append_raw(
        AppendRequest(relayed.type, relayed.to_json(), relayed.id, sign=False)
    )
    stored = {
        seq: (await stack.client.js.get_msg("SWARM_COMMANDS", seq)).data
        for seq in (kept.seq, as_is.seq)
    }
    signature = signature_of(stored[kept.seq])
    assert signature is not None
    assert signature.valid
    assert stored[as_is.seq] == relayed.to_json()
