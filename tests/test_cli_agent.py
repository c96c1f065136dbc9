"""`swarm agent`, `swarm pod` and `swarm namespace` against a real Hive on a fresh nats-server.

The Hive runs in the test's event loop and the CLI in a worker thread (its own `asyncio.run`), as
a CLI process and a Hive would; `--watch` runs as a real subprocess so Ctrl-C can be sent to it.
No scheduler runs: replicas stay "requested" unless a test places them itself, playing the
scheduler and the pod.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from schemas import commands, names
from schemas.specs import INLINE_MODULE_MAX_BYTES
from swarm.cli.queries import HiveQueries
from swarm.cli.verbs import rejection
from swarm.client.commands import Outcome
from swarm.devstack.embedded import EmbeddedNats
from swarm.devstack.principals import issue
from swarm.kernel.eventlog import EventLog
from swarm.kernel.signing import CommandSigner, MeshClaim
from tests.helpers.cli import (
    WASM,
    agents,
    cli,
    described,
    ok,
    stack,
    wasm,
)
from tests.helpers.cli_process import swarm
from tests.helpers.processes import reaped
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(60)
__all__ = ["stack", "wasm"]  # fixtures from tests.helpers.cli

ROOT = Path(__file__).resolve().parents[1]


# --- deploy, ls, describe ------------------------------------------------------------------------


async def test_deploy_then_ls_and_describe_show_the_agent(stack: Stack, wasm: Path) -> None:
    deployed = ok(
        await cli(
            stack, "agent", "deploy", "echo", "--module", wasm, "--replicas", "2", "-l", "a=b"
        )
    )
    assert "agent default/echo deployed (id " in deployed.stdout

    # Read-your-writes: a new CLI process (here: invocation) sees what the last one wrote.
    echo = (await agents(stack))["echo"]
    assert (echo["namespace"], echo["version"], echo["status"]) == ("default", "v1", "requested")
    assert echo["replicas"] == {"desired": 2, "running": 0, "active": 2}
    assert echo["agent_id"] in deployed.stdout

    table = ok(await cli(stack, "agent", "ls")).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAMESPACE", "NAME", "VERSION", "STATUS", "READY", "TRUST", "AGE", "REASON"]
    assert "0/2" in table

    text = ok(await cli(stack, "agent", "describe", "echo")).stdout
    assert f"{echo['agent_id']}-0" in text  # the replicas
    assert f"{echo['agent_id']}-1" in text
    assert "requested" in text
    assert "a=b" in text  # labels
    assert "replica_requested" in text  # events from the log
    assert "version v1, 2 replicas" in text

    document = await described(stack, "echo")
    assert [r["phase"] for r in document["agent"]["instances"]] == ["requested", "requested"]
    assert [e["type"] for e in document["events"]][:3] == [
        "swarm.agent.deployed",
        "swarm.agent.replica_requested",
        "swarm.agent.replica_requested",
    ]
    deployed_spec = document["events"][0]["data"]["spec"]
    assert "inline" not in deployed_spec["module"]
    assert deployed_spec["module"]["inline_bytes"] == len(WASM)
    assert "AGFzbQEAAAA=" not in json.dumps(document)  # no module bytes anywhere


async def test_deploy_from_a_spec_file_reads_the_module_beside_it(
    stack: Stack, tmp_path: Path
) -> None:
    (tmp_path / "mod.wasm").write_bytes(WASM)
    spec = tmp_path / "agent.yaml"
    spec.write_text(
        "name: from-file\n"
        "replicas: 3\n"
        "spec:\n"
        "  version: v7\n"
        "  module: {path: mod.wasm}\n"
        "  resources: {memory_mb: 32}\n"
        "  labels: {team: core}\n"
    )
    ok(await cli(stack, "agent", "deploy", "-f", spec, "--priority", "5"))
    agent = (await described(stack, "from-file"))["agent"]
    assert agent["version"] == "v7"
    assert agent["replicas"]["desired"] == 3
    assert agent["spec"]["resources"]["memory_mb"] == 32
    assert agent["spec"]["labels"] == {"team": "core"}
    assert agent["spec"]["priority"] == 5

    other = await cli(stack, "agent", "deploy", "another-name", "-f", spec)
    assert other.exit_code == 2
    assert "differs from the spec file's name" in other.stderr


async def test_deploy_by_sha256_and_a_rollout_that_keeps_the_module(
    stack: Stack, wasm: Path
) -> None:
    # Pushed first: the Hive refuses a module the object store does not hold (rule `module`).
    pushed = json.loads(ok(await cli(stack, "module", "push", wasm, "-o", "json")).stdout)
    sha = pushed["sha256"]
    ok(await cli(stack, "agent", "deploy", "pushed", "--module-sha256", sha))
    assert f"sha256 {sha}" in ok(await cli(stack, "agent", "describe", "pushed")).stdout
    ok(await cli(stack, "agent", "rollout", "pushed", "--version", "v2", "--memory-mb", "128"))
    spec = (await described(stack, "pushed"))["agent"]["spec"]
    assert (spec["version"], spec["module"]["sha256"]) == ("v2", sha)
    assert spec["resources"]["memory_mb"] == 128


# --- changing agents -----------------------------------------------------------------------------


async def test_scale_changes_the_desired_replicas(stack: Stack, wasm: Path) -> None:
    ok(await cli(stack, "agent", "deploy", "scaly", "--module", wasm))
    result = ok(await cli(stack, "agent", "scale", "scaly", "--replicas", "4"))
    assert "agent default/scaly scaled to 4 replicas" in result.stdout
    assert (await agents(stack))["scaly"]["replicas"]["desired"] == 4


async def test_rollout_then_rollback(stack: Stack, wasm: Path) -> None:
    ok(await cli(stack, "agent", "deploy", "roller", "--module", wasm))
    rolled = ok(await cli(stack, "agent", "rollout", "roller", "--module", wasm, "--version", "v2"))
    assert "rolling out v2" in rolled.stdout
    agent = (await agents(stack))["roller"]
    assert agent["version"] == "v2"
    assert agent["rollout"] == {"version": "v2", "from": "v1", "rollback": False}
    assert "v1→v2" in ok(await cli(stack, "agent", "ls")).stdout
    text = ok(await cli(stack, "agent", "describe", "roller")).stdout
    assert "rollout v1 → v2" in text

    ok(await cli(stack, "agent", "rollback", "roller"))
    agent = (await agents(stack))["roller"]
    assert (agent["version"], agent["rollout"]) == ("v1", None)
    assert (await described(stack, "roller"))["agent"]["history"] == ["v2", "v1"]

    missing = await cli(stack, "agent", "rollback", "roller", "--to-version", "v9")
    assert missing.exit_code == 1
    assert "has no version v9" in missing.stderr


async def test_rollout_of_an_inline_module_must_name_the_module(stack: Stack, wasm: Path) -> None:
    ok(await cli(stack, "agent", "deploy", "inline-only", "--module", wasm))
    result = await cli(stack, "agent", "rollout", "inline-only", "--version", "v2")
    assert result.exit_code == 2
    assert "--module FILE.wasm" in result.stderr


async def test_stop_then_delete_removes_it_from_ls(stack: Stack, wasm: Path) -> None:
    ok(await cli(stack, "agent", "deploy", "doomed", "--module", wasm))
    stopped = ok(await cli(stack, "agent", "stop", "doomed", "--reason", "maintenance"))
    assert "stopping: maintenance" in stopped.stdout
    assert (await agents(stack))["doomed"]["replicas"]["desired"] == 0
    ok(await cli(stack, "agent", "delete", "doomed"))
    assert "doomed" not in await agents(stack)
    gone = await cli(stack, "agent", "describe", "doomed")
    assert gone.exit_code == 1


# --- rejections and errors -----------------------------------------------------------------------


async def test_duplicate_deploy_is_rejected_with_the_rollout_hint(stack: Stack, wasm: Path) -> None:
    ok(await cli(stack, "agent", "deploy", "twice", "--module", wasm))
    again = await cli(stack, "agent", "deploy", "twice", "--module", wasm)
    assert again.exit_code == 1
    assert "agent default/twice exists; use `swarm agent rollout`" in again.stderr
    assert "Traceback" not in again.output


async def test_quota_rejection_names_the_rule(stack: Stack, wasm: Path) -> None:
    created = ok(await cli(stack, "namespace", "create", "tight", "--max-agents", "0"))
    assert "namespace tight created (max-agents 0)" in created.stdout
    refused = await cli(stack, "agent", "deploy", "a", "-n", "tight", "--module", wasm)
    assert refused.exit_code == 1
    assert "quota.max_agents" in refused.stderr
    assert "swarm namespace update tight --max-agents N" in refused.stderr

    ok(await cli(stack, "namespace", "update", "tight", "--max-agents", "1", "--max-replicas", "9"))
    ok(await cli(stack, "agent", "deploy", "a", "-n", "tight", "--module", wasm))
    assert set(await agents(stack, "-n", "tight")) == {"a"}
    assert "a" in await agents(stack, "-A")

    ok(await cli(stack, "namespace", "update", "tight", "--unset", "max-replicas"))
    listed = json.loads(ok(await cli(stack, "namespace", "ls", "-o", "json")).stdout)
    tight = next(ns for ns in listed["namespaces"] if ns["name"] == "tight")
    assert tight["agents"] == 1
    assert tight["quota"]["max_agents"] == 1
    assert tight["quota"]["max_replicas"] is None
    assert "tight" in ok(await cli(stack, "namespace", "ls")).stdout


async def test_deploy_into_a_missing_namespace_says_how_to_create_it(
    stack: Stack, wasm: Path
) -> None:
    result = await cli(stack, "agent", "deploy", "x", "-n", "nowhere", "--module", wasm)
    assert result.exit_code == 1
    assert "namespace nowhere not found" in result.stderr
    assert "swarm namespace create nowhere" in result.stderr


async def test_unknown_agent_is_a_readable_error(stack: Stack) -> None:
    described_ = await cli(stack, "agent", "describe", "nope")
    assert described_.exit_code == 1
    assert "agent default/nope not found" in described_.stderr
    assert "`swarm agent ls -n default` lists its agents, `-A` those of all namespaces" in (
        described_.stderr
    )
    scaled = await cli(stack, "agent", "scale", "nope", "--replicas", "2")
    assert scaled.exit_code == 1
    assert "rule: not_found" in scaled.stderr
    for result in (described_, scaled):
        assert "Traceback" not in result.output


def test_a_module_rejection_says_how_to_store_the_module() -> None:
    """Branches on the rule, never on the reason's text (the Hive may word it differently)."""

    def rejected(reason: str, rule: str) -> Outcome:
        body = {"type": "swarm.command.rejected", "data": {"reason": reason, "rule": rule}}
        return Outcome(False, 9, "swarm.evt.command.x.rejected", body, None)

    error = rejection(
        rejected("the module is missing", "module"), what="deploy of default/a", namespace="d"
    )
    assert error.code == 1
    assert error.message == "deploy of default/a rejected: the module is missing (rule: module)"
    assert error.hint is not None
    assert "`swarm module push FILE`" in error.hint
    assert "--module-sha256" in error.hint
    assert "`swarm module ls`" in error.hint
    other = rejection(
        rejected("module abc is not in the object store", "quota.max_agents"),
        what="deploy of default/a",
        namespace="d",
    )
    assert "swarm module push" not in (other.hint or "")


async def test_send_to_an_unknown_agent_says_it_is_not_found(stack: Stack, wasm: Path) -> None:
    unknown = await cli(stack, "agent", "send", "nosuchagent", "{}", "--timeout", "5")
    assert unknown.exit_code == 1, unknown.output
    assert "agent default/nosuchagent not found" in unknown.stderr
    assert "swarm agent ls -n default" in unknown.stderr
    assert "no replica" not in unknown.stderr

    # An agent that exists but has no replica up (no pod here) is waited for, then told apart,
    # with its status: no reply in time.
    ok(await cli(stack, "agent", "deploy", "idle", "--module", wasm))
    idle = await cli(stack, "agent", "send", "idle", "{}", "--timeout", "2")
    assert idle.exit_code == 3, idle.output
    assert "waiting for a replica of default/idle to answer" in idle.stderr
    assert "no replica of default/idle answered within 2s: it is requested" in idle.stderr
    assert "swarm agent describe idle -n default" in idle.stderr
    assert "not found" not in idle.stderr


async def test_send_waits_for_a_replica_that_comes_up(stack: Stack, wasm: Path) -> None:
    """Sent just after a deploy (README: `swarm agent send echo …` right after `swarm up`),
    before the replica subscribed: the message waits for it instead of failing."""
    ok(await cli(stack, "agent", "deploy", "late", "--module", wasm))
    nc = stack.client.nc
    asked: asyncio.Queue[bytes] = asyncio.Queue()

    async def seen(msg: Any) -> None:
        await asked.put(msg.data)

    async def replica(msg: Any) -> None:
        await msg.respond(b"pong " + msg.data)

    # A copy of the CLI's question to the Hive: it found nobody on the mesh, and waits.
    watcher = await nc.subscribe(names.QUERY_AGENTS_GET, cb=seen)
    sending = asyncio.create_task(cli(stack, "agent", "send", "late", "ping", "--timeout", "60"))
    try:
        await asyncio.wait_for(asked.get(), 60)
        # The replica subscribes now, as a pod's does once its sandbox is up.
        sub = await nc.subscribe(names.mesh_agent_subject("default", "late"), cb=replica)
        sent = await asyncio.wait_for(sending, 90)
        await sub.unsubscribe()
    finally:
        await watcher.unsubscribe()
        sending.cancel()
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.strip() == "pong ping"
    assert "waiting for a replica of default/late to answer" in sent.stderr


async def test_send_refuses_an_answer_whose_signature_does_not_hold(
    stack: Stack, tmp_path: Path
) -> None:
    """Whoever answers on an agent's subject with a signature made for other bytes (a reply
    replayed, or altered on its way) is not the agent: the CLI says so instead of printing it."""
    (impostor,) = issue(tmp_path / "keys", [("pod-x", "pod")])
    signer = CommandSigner.from_seed_file(impostor.seed_file)
    nc = stack.client.nc

    async def answer(msg: Any) -> None:
        claim = MeshClaim("agent:a", "a-0", 1)
        headers = signer.mesh_headers(msg.reply, b"the agent's answer", claim, 0)
        await nc.publish(msg.reply, b"something else", headers=headers)

    sub = await nc.subscribe(names.mesh_agent_subject("default", "spoofed"), cb=answer)
    try:
        sent = await cli(stack, "agent", "send", "spoofed", "ping", "--timeout", "10")
    finally:
        await sub.unsubscribe()
    assert sent.exit_code == 1, sent.output
    assert "something else" not in sent.stdout
    assert (
        "default/spoofed: the answer's signature does not hold (the signature does not match "
        "the message): it is not the agent's"
    ) in sent.stderr


async def test_send_takes_an_answer_only_from_the_pod_the_log_places_the_replica_on(
    stack: Stack, wasm: Path, tmp_path: Path
) -> None:
    """Any pod of a stack may listen on any agent's subject (NATS does not tell pods apart): an
    answer signed by another pod, naming the real replica, is refused with where the log places
    it, as is one that speaks for another agent; the placed pod's answer is printed."""
    keys = issue(tmp_path / "keys", [("owner", "admin"), ("pod-g", "pod"), ("pod-h", "pod")])
    owner, *pods = keys
    signers = {p.name: CommandSigner.from_seed_file(p.seed_file) for p in pods}
    await stack.register_pods({"pod-g": (1024, 8)})
    ok(await cli(stack, "agent", "deploy", "guarded", "--module", wasm))
    await place_and_report(stack, "guarded", "pod-g", "running")
    agent = (await stack.query(names.QUERY_AGENTS_GET, {"name": "guarded"}))["agent"]
    replica = agent["instances"][0]["replica_id"]
    nc = stack.client.nc
    answering: dict[str, str] = {}

    async def answer(msg: Any) -> None:
        body = b"answered by " + answering["pod"].encode()
        claim = MeshClaim(answering["identity"], replica, 0)
        headers = signers[answering["pod"]].mesh_headers(msg.reply, body, claim, 0)
        await nc.publish(msg.reply, body, headers=headers)

    async def send() -> Result:
        return await cli(
            stack,
            *("agent", "send", "guarded", "ping", "--timeout", "10"),
            env={"SWARM_NATS_CREDENTIALS": str(owner.seed_file)},
        )

    sub = await nc.subscribe(names.mesh_agent_subject("default", "guarded"), cb=answer)
    try:
        answering.update(pod="pod-h", identity=f"agent:{agent['agent_id']}")
        forged = await send()
        answering.update(pod="pod-g", identity="agent:another")
        elsewhere = await send()
        answering.update(pod="pod-g", identity=f"agent:{agent['agent_id']}")
        genuine = await send()
    finally:
        await sub.unsubscribe()
    assert forged.exit_code == 1, forged.output
    assert "answered by" not in forged.stdout
    assert (
        f"default/guarded: the answer is signed by pod-h for replica {replica}, which the log "
        "places on pod-g: another pod answered in the agent's stead"
    ) in forged.stderr
    assert elsewhere.exit_code == 1, elsewhere.output
    assert "the answer speaks as 'agent:another', not as default/guarded" in elsewhere.stderr
    assert genuine.exit_code == 0, genuine.output
    assert genuine.stdout.strip() == "answered by pod-g"


async def test_send_without_a_hive_says_what_is_known(
    nats_url: str, event_log: EventLog, tmp_path: Path
) -> None:
    # The session's nats-server has the streams but no Hive to ask whether the agent exists; a
    # fresh one has not even the streams.
    bare = EmbeddedNats(tmp_path / "bare")
    try:
        for url in (nats_url, bare.start()):
            result = await cli(url, "agent", "send", "ghost", "{}", "--timeout", "5")
            assert result.exit_code == 1, result.output
            assert "no replica of default/ghost is running to answer" in result.stderr
            assert "no Hive answered" in result.stderr
            assert "Traceback" not in result.output
    finally:
        bare.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent", "deploy", "x"], "deploy needs a module"),
        (["agent", "deploy", "Bad_Name", "--module", "{wasm}"], "name"),
        (["agent", "deploy", "x", "--module-sha256", "xyz"], "spec.module.sha256"),
        (
            ["agent", "deploy", "x", "--module", "{wasm}", "--module-sha256", "ab" * 32],
            "not both",
        ),
        (["agent", "deploy", "x", "--module", "{wasm}", "-l", "novalue"], "expected key=value"),
        (["agent", "deploy", "x", "--module", "{wasm}", "--autonomy", "oops"], "not a command"),
        (["agent", "deploy", "x", "--module", "{text}"], "is not a WebAssembly module"),
        (["agent", "deploy", "x", "--module", "{big}"], "`swarm module push"),
        (["agent", "rollout", "x"], "rollout needs --version"),
        (["namespace", "update", "x"], "nothing to change"),
    ],
)
async def test_invalid_input_exits_2_before_connecting(
    args: list[str], message: str, wasm: Path, tmp_path: Path
) -> None:
    text, big = tmp_path / "text.wasm", tmp_path / "big.wasm"
    text.write_text("(module)")
    big.write_bytes(WASM + b"\0" * INLINE_MODULE_MAX_BYTES)
    files = {"{wasm}": str(wasm), "{text}": str(text), "{big}": str(big)}
    # Nothing listens on port 1: input must be judged before any connection is tried.
    result = await cli("nats://127.0.0.1:1", *[files.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


async def test_without_a_hive_reads_fail_readably(nats_url: str, event_log: EventLog) -> None:
    # The session's nats-server has the streams (the event_log fixture made them) but no Hive.
    result = await cli(nats_url, "agent", "ls")
    assert result.exit_code == 4, result.output
    assert "no Hive answered swarm.query.agents.list" in result.stderr


async def test_unreachable_nats_exits_4() -> None:
    result = await cli("nats://127.0.0.1:1", "pod", "ls")
    assert result.exit_code == 4
    assert "cannot reach NATS at nats://127.0.0.1:1" in result.stderr


# --- pods and --wait -----------------------------------------------------------------------------


async def place_and_report(
    stack: Stack, name: str, pod_id: str, status: str, version: str | None = None
) -> None:
    """Play the scheduler and the pod: place the agent's first replica (of `version`, when
    given) and report on it."""
    answer: dict[str, Any] = {}

    def wanted(agent: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in agent["instances"] if version in (None, r["version"])]

    async def requested() -> bool:
        nonlocal answer
        answer = await stack.query(names.QUERY_AGENTS_GET, {"name": name})
        return "agent" in answer and bool(wanted(answer["agent"]))

    await wait_until(requested, 45, f"agent {name} deployed")
    agent_id = answer["agent"]["agent_id"]
    replica_id = wanted(answer["agent"])[0]["replica_id"]
    placement = commands.ProposePlacement(
        agent_id=agent_id, replica_id=replica_id, pod_id=pod_id, policy="test"
    )
    await stack.send([(placement, "service:scheduler")])

    async def scheduled() -> bool:
        got = await stack.query(names.QUERY_AGENTS_GET, {"agent_id": agent_id})
        phases = {r["replica_id"]: r["phase"] for r in got["agent"]["instances"]}
        return bool(phases[replica_id] == "scheduled")

    await wait_until(scheduled, 45, f"{replica_id} scheduled")
    report = commands.ReportReplica(
        agent_id=agent_id,
        replica_id=replica_id,
        pod_id=pod_id,
        status=status,  # type: ignore[arg-type]
        reason="test says so",
    )
    await stack.send([(report, f"pod:{pod_id}")])


async def test_pod_ls_and_deploy_wait_until_running(stack: Stack, wasm: Path) -> None:
    registration = {
        "pod_id": "pod-a",
        "capacity": {"memory_mb": 1024, "fuel_per_s": 10**9, "slots": 8},
        "zone": "eu-1",
        "energy_cost": 0.5,
        "lease_s": 3600,
    }
    ok(await cli(stack, "publish", "swarm.cmd.pod.register", "--data", json.dumps(registration)))
    table = ok(await cli(stack, "pod", "ls")).stdout
    assert table.splitlines()[0].split() == [
        "POD", "STATUS", "ZONE", "MEMORY", "MB", "FUEL/S", "SLOTS", "REPLICAS", "ENERGY", "COST"
    ]  # fmt: skip
    row = next(line.split() for line in table.splitlines() if line.startswith("pod-a"))
    assert row[1:6] == ["ready", "eu-1", "0/1024", "0/1G", "0/8"]

    deploy = asyncio.create_task(
        cli(stack, "agent", "deploy", "waiter", "--module", wasm, "--wait", "--wait-timeout", "20")
    )
    await place_and_report(stack, "waiter", "pod-a", "running")
    result = ok(await deploy)
    assert "agent default/waiter is running (1/1 replicas running)" in result.stdout
    # Progress goes to stderr, one line per state seen (the poll may miss `requested` when the
    # placement is quick, so only the last state is certain).
    assert "default/waiter: running (1/1 replicas running)" in result.stderr

    pods = json.loads(ok(await cli(stack, "pod", "ls", "-o", "json")).stdout)["pods"]
    pod = next(p for p in pods if p["pod_id"] == "pod-a")
    assert pod["replicas"] == 1
    assert "64/1024" in ok(await cli(stack, "pod", "ls")).stdout
    text = ok(await cli(stack, "agent", "describe", "waiter")).stdout
    assert "pod-a" in text
    assert "running" in text


async def test_deploy_wait_exits_1_when_the_agent_fails(
    stack: Stack, wasm: Path, tmp_path: Path
) -> None:
    await stack.register_pods({"pod-b": (1024, 8)})
    spec = tmp_path / "fragile.json"
    spec.write_text(
        json.dumps(
            {
                "name": "fragile",
                "spec": {"module": {"path": str(wasm)}, "restart": {"max_restarts": 0}},
            }
        )
    )
    deploy = asyncio.create_task(cli(stack, "agent", "deploy", "-f", spec, "--wait"))
    await place_and_report(stack, "fragile", "pod-b", "crashed")
    result = await deploy
    assert result.exit_code == 1, result.output
    assert "agent default/fragile failed" in result.stderr
    assert "crash loop" in result.stderr


async def test_deploy_wait_gives_up_with_exit_3(stack: Stack, wasm: Path) -> None:
    result = await cli(
        stack, "agent", "deploy", "unplaced", "--module", wasm, "--wait", "--wait-timeout", "0.3"
    )
    assert result.exit_code == 3, result.output
    assert "is not running after 0.3s: requested" in result.stderr
    assert "is a scheduler running" in result.stderr


async def running_agent(stack: Stack, name: str, pod_id: str, spec: Path) -> None:
    """Deploy from `spec` and play scheduler and pod until its one v1 replica runs."""
    await stack.register_pods({pod_id: (1024, 8)})
    deploy = asyncio.create_task(cli(stack, "agent", "deploy", "-f", spec, "--wait"))
    await place_and_report(stack, name, pod_id, "running")
    ok(await deploy)


def spec_file(tmp_path: Path, wasm: Path, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    spec = {"module": {"path": str(wasm)}, "restart": {"max_restarts": 0}}
    path.write_text(json.dumps({"name": name, "spec": spec}))
    return path


async def rollout_to_v2(
    stack: Stack, wasm: Path, tmp_path: Path, name: str, pod_id: str, status: str
) -> Result:
    """Agent `name` running v1 on `pod_id`, then `agent rollout --wait` to v2 while the pod
    reports `status` for the new version's replica: what the CLI answered."""
    await running_agent(stack, name, pod_id, spec_file(tmp_path, wasm, name))
    rollout = asyncio.create_task(
        cli(stack, "agent", "rollout", name, "--module", wasm, "--version", "v2", "--wait")
    )
    await place_and_report(stack, name, pod_id, status, version="v2")
    return await rollout


async def test_rollout_wait_returns_once_the_new_version_runs(
    stack: Stack, wasm: Path, tmp_path: Path
) -> None:
    result = ok(await rollout_to_v2(stack, wasm, tmp_path, "rolled", "pod-r", "running"))
    assert "agent default/rolled rolling out v2" in result.stdout
    assert "agent default/rolled rolled out v2: running (1/1 replicas running)" in result.stdout
    agent = (await agents(stack))["rolled"]
    assert (agent["version"], agent["rollout"]) == ("v2", None)


async def test_rollout_wait_exits_1_when_the_new_version_fails(
    stack: Stack, wasm: Path, tmp_path: Path
) -> None:
    result = await rollout_to_v2(stack, wasm, tmp_path, "sinking", "pod-s", "crashed")
    assert result.exit_code == 1, result.output
    assert "the rollout of default/sinking to v2 failed: replica" in result.stderr
    assert "crash loop" in result.stderr


async def test_rollout_wait_exits_1_when_the_rollout_is_rolled_back(
    stack: Stack, wasm: Path, tmp_path: Path
) -> None:
    await running_agent(stack, "regret", "pod-u", spec_file(tmp_path, wasm, "regret"))
    # A child process: two CLI runs in this process at once would swap each other's captured
    # sys.stdout (CliRunner's isolation is process-wide; seen as "I/O operation on closed file").
    rollout = asyncio.create_task(
        swarm(
            stack.url,
            *("agent", "rollout", "regret", "--module", str(wasm), "--version", "v2", "--wait"),
            timeout=120,
        )
    )

    async def rolling() -> bool:
        answer = await stack.query(names.QUERY_AGENTS_GET, {"name": "regret"})
        return bool((answer["agent"].get("rollout") or {}).get("version") == "v2")

    await wait_until(rolling, 45, "rollout to v2 started")
    ok(await cli(stack, "agent", "rollback", "regret"))
    code, out, err = await rollout
    assert code == 1, out + err
    assert "the rollout of default/regret to v2 was undone: it runs v1 now" in err


async def test_rollout_wait_gives_up_with_exit_3(stack: Stack, wasm: Path) -> None:
    ok(await cli(stack, "agent", "deploy", "stuck", "--module", wasm))
    result = await cli(
        stack,
        "agent",
        "rollout",
        "stuck",
        "--module",
        wasm,
        "--version",
        "v2",
        "--wait",
        "--wait-timeout",
        "0.3",
    )
    assert result.exit_code == 3, result.output
    assert "the rollout of default/stuck to v2 is not done after 0.3s" in result.stderr
    assert "is a scheduler running" in result.stderr


async def test_a_component_deployed_by_sha256_is_described_as_one(
    stack: Stack, tmp_path: Path
) -> None:
    # A component's header (version 0x0d, layer 1): what `swarm agent build` writes.
    component = tmp_path / "app.wasm"
    component.write_bytes(b"\0asm\x0d\x00\x01\x00")
    pushed = json.loads(ok(await cli(stack, "module", "push", component, "-o", "json")).stdout)
    assert pushed["kind"] == "component"
    ok(await cli(stack, "agent", "deploy", "pyagent", "--module-sha256", pushed["sha256"]))
    text = ok(await cli(stack, "agent", "describe", "pyagent")).stdout
    assert f"sha256 {pushed['sha256']} (component)" in text
    spec = (await described(stack, "pyagent"))["agent"]["spec"]
    assert spec["module"] == {"sha256": pushed["sha256"], "kind": "component"}

    # A core module pushed the same way stays core.
    core = tmp_path / "core.wasm"
    core.write_bytes(WASM)
    sha = json.loads(ok(await cli(stack, "module", "push", core, "-o", "json")).stdout)["sha256"]
    ok(await cli(stack, "agent", "rollout", "pyagent", "--module-sha256", sha, "--version", "v2"))
    assert f"sha256 {sha} (core)" in ok(await cli(stack, "agent", "describe", "pyagent")).stdout


# --- watching ------------------------------------------------------------------------------------


@pytest.mark.timeout(240)  # a CLI process starting, watching and unwinding on a busy machine
async def test_watch_prints_changes_until_ctrl_c_then_exits_0(
    stack: Stack, wasm: Path, tmp_path: Path
) -> None:
    ok(await cli(stack, "namespace", "create", "watched"))
    ok(await cli(stack, "agent", "deploy", "w", "-n", "watched", "--module", wasm))
    out = tmp_path / "watch.out"
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "swarm.cli.app",
            "agent",
            "ls",
            "-n",
            "watched",
            "--watch",
            "--nats-url",
            stack.url,
            cwd=ROOT,
            stdout=sink,
            stderr=asyncio.subprocess.PIPE,
        )
    async with reaped(proc):

        async def shows(text: str) -> bool:
            return text in out.read_text()

        await wait_until(lambda: shows("0/1"), 60, "first frame")
        ok(await cli(stack, "agent", "scale", "w", "-n", "watched", "--replicas", "2"))
        await wait_until(lambda: shows("0/2"), 60, "a frame after the change")
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert out.read_text().count("NAMESPACE") == 2  # one frame per change, not per second


# --- read-your-writes ----------------------------------------------------------------------------


async def test_queries_wait_for_a_replica_that_has_caught_up(event_log: EventLog) -> None:
    """A replica behind `at_least` is asked again; past the patience, its answer is used."""
    subject = "test.cli.query.lagging"
    asked = 0

    async def lagging(msg: Any) -> None:
        nonlocal asked
        asked += 1
        applied = 7 if asked >= 3 else 5
        await msg.respond(json.dumps({"items": [], "applied_seq": applied}).encode())

    sub = await event_log.nc.subscribe(subject, cb=lagging)
    try:
        queries = HiveQueries(event_log, catch_up=5.0)
        answer = await queries.ask(subject, at_least=7)
        assert (answer["applied_seq"], asked) == (7, 3)
        assert queries.applied_seq == 7

        impatient = HiveQueries(event_log, catch_up=0.0)
        stale = await impatient.ask(subject, at_least=100)
        assert stale["applied_seq"] == 7  # shown anyway, with a note on stderr
    finally:
        await sub.unsubscribe()
