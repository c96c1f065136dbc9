"""`Swarm`, the one client the CLI and the HTTP API are adapters over, against a real
nats-server and Hive: typed outcomes and reads, checks before anything is sent, and each way a
call can fail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import commands, names
from schemas.views import AgentDetailView, AgentView
from swarm.client.commands import NoOutcome
from swarm.client.errors import INVALID, UNAVAILABLE, ClientError
from swarm.client.queries import QueryFailed
from swarm.client.swarm import Swarm, TooLarge
from swarm.devstack.embedded import free_port
from tests.helpers.history import WASM
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

SPEC = {
    "version": "v1",
    "module": {"inline": WASM},
    "resources": {"memory_mb": 16, "fuel_per_s": 1000},
}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("client")) as running:
        yield running


@pytest.fixture
def swarm(stack: Stack) -> Swarm:
    return Swarm(stack.client, identity="user:ann", timeout=30)


async def test_verbs_answer_typed_outcomes_and_reads_see_them(swarm: Swarm) -> None:
    created = await swarm.namespaces.create("client-a", quota={"max_agents": 5})
    assert created.accepted
    assert created.rejection() is None

    deployed = await swarm.agents.deploy("client-a", "echo", SPEC, replicas=0)
    assert deployed.accepted
    agent_id = deployed.deployed_agent()
    assert agent_id is not None
    assert names.is_token(agent_id)

    listed = await swarm.agents.list("client-a")
    assert [type(a) for a in listed] == [AgentView]
    assert [(a.name, a.agent_id) for a in listed] == [("echo", agent_id)]

    scaled = await swarm.agents.scale("client-a", "echo", replicas=2)
    assert scaled.accepted
    assert scaled.sent.type == commands.ScaleAgent.TYPE
    detail = await swarm.agents.get("client-a", "echo")
    assert isinstance(detail, AgentDetailView)
    assert detail.replicas.desired == 2

    stopped = await swarm.agents.stop("client-a", "echo", reason="maintenance")
    assert stopped.accepted
    assert (await swarm.agents.get("client-a", "echo")).replicas.desired == 0


async def test_a_rejection_is_an_answer_with_its_rule(swarm: Swarm) -> None:
    issued = await swarm.agents.scale("client-nowhere", "ghost", replicas=1)
    assert not issued.accepted
    rejection = issued.rejection()
    assert rejection is not None
    assert rejection.rule == "not_found"
    assert "ghost" in rejection.reason or "client-nowhere" in rejection.reason


async def test_quota_with_keeps_the_limits_not_given(swarm: Swarm) -> None:
    await swarm.namespaces.create("client-q", quota={"max_agents": 3, "max_replicas": 9})
    quota = await swarm.namespaces.quota_with("client-q", {"max_agents": 4, "max_replicas": None})
    assert quota["max_agents"] == 4
    assert "max_replicas" not in quota  # None: unlimited
    assert (await swarm.namespaces.update("client-q", quota=quota)).accepted
    (space,) = [n for n in await swarm.namespaces.list() if n.name == "client-q"]
    assert (space.quota.max_agents, space.quota.max_replicas) == (4, None)

    with pytest.raises(QueryFailed) as caught:
        await swarm.namespaces.quota_with("client-none", {"max_agents": 1})
    assert caught.value.error_code == "not_found"


async def test_a_bad_command_is_refused_before_connecting() -> None:
    # Nothing listens there: a verb that tried to connect would fail UNAVAILABLE instead.
    swarm = Swarm.connect(f"nats://127.0.0.1:{free_port()}", identity="user:ann", wait=1)
    async with swarm:
        with pytest.raises(ClientError) as caught:
            await swarm.agents.scale("default", "Not A Name", replicas=1)
        assert caught.value.code == INVALID
        assert any(e.loc == "name" for e in caught.value.errors)
        with pytest.raises(ClientError) as caught:
            await swarm.agents.deploy("default", "echo", {**SPEC, "version": ""})
        assert caught.value.code == INVALID
        # A good command needs the server, which is not there.
        with pytest.raises(ClientError) as caught:
            await swarm.agents.scale("default", "echo", replicas=1)
        assert caught.value.code == UNAVAILABLE
        assert "cannot reach NATS" in caught.value.message


async def test_too_large_a_command_is_not_sent(swarm: Swarm, stack: Stack) -> None:
    event = swarm.command(commands.CreateNamespace, {"name": "client-big"})
    event["data"]["padding"] = "x" * (stack.client.max_payload + 1)
    before = await stack.client.last_sequence(names.STREAM_COMMANDS)
    with pytest.raises(TooLarge) as caught:
        await swarm.send(event)
    assert caught.value.code == INVALID
    assert caught.value.limit == stack.client.max_payload
    assert await stack.client.last_sequence(names.STREAM_COMMANDS) == before


async def test_no_outcome_names_the_command_left_queued(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.stop_hive()
        swarm = Swarm(stack.client, identity="user:ann")
        with pytest.raises(NoOutcome) as waited:
            await swarm.namespaces.create("client-late", timeout=0.5)
        with pytest.raises(NoOutcome) as sent_only:
            await swarm.namespaces.create("client-later", timeout=0)
        queued = {waited.value.sent.seq, sent_only.value.sent.seq}
        assert min(queued) > 0
        assert await stack.client.last_sequence(names.STREAM_COMMANDS) == max(queued)
        # The Hive decides both once it is back.
        await stack.start_hive()

        async def both_created() -> bool:
            spaces = {n.name for n in await swarm.namespaces.list()}
            return {"client-late", "client-later"} <= spaces

        await wait_until(both_created, what="the queued commands decided")


async def test_the_readme_example_runs_as_written(
    stack: Stack, swarm: Swarm, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python client\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "nats://127.0.0.1:4222" in code
    await swarm.namespaces.create("client-readme")
    assert (await swarm.agents.deploy("client-readme", "shown", SPEC, replicas=0)).accepted
    scope: dict[str, object] = {}
    exec(compile(code.replace("nats://127.0.0.1:4222", stack.url), "README.md", "exec"), scope)
    await scope["main"]()  # type: ignore[operator]
    printed = capsys.readouterr().out
    assert "client-readme shown stopped 0" in printed


async def test_the_timeline_folds_points_and_verifies_the_log(swarm: Swarm) -> None:
    from swarm.client.timeline import Filters
    from swarm.client.timetravel import Point

    before = await swarm.floor()
    assert (await swarm.namespaces.create("client-t")).accepted
    after = await swarm.floor()

    then, now, changes = await swarm.timeline.diff(Point(seq=before), Point(seq=after))
    assert "client-t" not in then.state["namespaces"]
    assert "client-t" in now.state["namespaces"]
    assert any(c.path.startswith("namespaces.client-t") for c in changes)
    assert (await swarm.timeline.state_at(Point(seq=after))).digest == now.digest

    entries = [
        e
        async for e in swarm.timeline.read(
            [names.STREAM_EVENTS], Filters(from_seq=before + 1, aggregate="namespace")
        )
    ]
    assert any(e.subject.startswith("swarm.evt.namespace.client-t.") for e in entries)

    report = await swarm.timeline.verify(grace=0)
    assert report.ok, [f.as_json() for f in report.findings]
    assert report.commands > 0
