"""The HTTP API against a real Hive: commands, reads, rejections, auth and the error shape."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from swarm.gateway import GatewaySettings, create_app
from swarm.kernel.settings import Settings
from tests.gateway.client import PROBLEM, SPEC, TOKEN, problem
from tests.helpers.stack import Stack

pytestmark = pytest.mark.timeout(60)


async def test_deploy_then_the_agent_is_listed_and_described(api: httpx.AsyncClient) -> None:
    deployed = await api.post("/v1/namespaces/default/agents", json={"name": "web", "spec": SPEC})
    assert deployed.status_code == 200, deployed.text
    result = deployed.json()
    assert result["status"] == "accepted"
    assert result["type"] == "swarm.cmd.agent.deploy"
    assert result["agent_id"]
    assert any(e["type"] == "swarm.agent.deployed" for e in result["events"])
    assert deployed.headers["location"] == f"/v1/commands/{result['command_id']}"

    # Read-your-writes: the list reflects the log as it was when the read began.
    listed = (await api.get("/v1/agents", params={"namespace": "default"})).json()
    assert {a["name"]: a["agent_id"] for a in listed["agents"]}["web"] == result["agent_id"]
    described = (await api.get("/v1/namespaces/default/agents/web")).json()
    assert described["agent"]["agent_id"] == result["agent_id"]
    assert described["agent"]["spec"]["version"] == "v1"
    # Its recent events, as `swarm agent describe` shows them.
    assert described["events"][0]["event"]["type"] == "swarm.agent.deployed"
    assert described["events"][0]["subject"].split(".")[3] == result["agent_id"]

    scaled = await api.post("/v1/namespaces/default/agents/web/scale", json={"replicas": 3})
    assert scaled.json()["status"] == "accepted"
    agent = (await api.get("/v1/namespaces/default/agents/web")).json()["agent"]
    assert agent["replicas"]["desired"] == 3

    polled = await api.get(deployed.headers["location"])
    assert polled.status_code == 200
    assert polled.json()["status"] == "accepted"

    assert (await api.delete("/v1/namespaces/default/agents/web")).json()["status"] == "accepted"
    missing = await api.get("/v1/namespaces/default/agents/web")
    problem(missing, 404)


async def test_rejection_names_the_hives_rule(api: httpx.AsyncClient) -> None:
    created = await api.post("/v1/namespaces", json={"name": "tight", "quota": {"max_replicas": 2}})
    assert created.json()["status"] == "accepted", created.text
    too_many = await api.post(
        "/v1/namespaces/tight/agents", json={"name": "big", "spec": SPEC, "replicas": 5}
    )
    body = problem(too_many, 409)
    assert body["rule"] == "quota.max_replicas"
    assert "max_replicas" in body["detail"]
    assert body["command_id"]

    # The quota is raised through the API, then the same deploy passes.
    raised = await api.patch("/v1/namespaces/tight", json={"quota": {"max_replicas": 10}})
    assert raised.json()["status"] == "accepted", raised.text
    spaces = {n["name"]: n for n in (await api.get("/v1/namespaces")).json()["namespaces"]}
    assert spaces["tight"]["quota"]["max_replicas"] == 10
    again = await api.post(
        "/v1/namespaces/tight/agents", json={"name": "big", "spec": SPEC, "replicas": 5}
    )
    assert again.json()["status"] == "accepted"

    unknown = await api.post("/v1/namespaces/default/agents/nobody/scale", json={"replicas": 1})
    assert problem(unknown, 404)["rule"] == "not_found"


async def test_generic_command_and_polling_without_waiting(api: httpx.AsyncClient) -> None:
    sent = await api.post(
        "/v1/commands",
        params={"wait": "false"},
        json={"type": "swarm.cmd.namespace.create", "data": {"name": "later"}},
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["status"] == "pending"
    location = sent.headers["location"]
    for _ in range(100):
        polled = (await api.get(location)).json()
        if polled["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert polled["status"] == "accepted"
    assert polled["outcome"]["type"] == "swarm.command.accepted"

    # The same id again: idempotent, the first outcome is the answer.
    command_id = sent.json()["command_id"]
    resent = await api.post(
        "/v1/commands",
        json={"id": command_id, "type": "swarm.cmd.namespace.create", "data": {"name": "later"}},
    )
    assert resent.json()["duplicate"] is True
    assert resent.json()["outcome_seq"] == polled["outcome_seq"]

    problem(await api.get("/v1/commands/never-sent-1234"), 404)


async def test_invalid_commands_are_refused_with_field_errors(api: httpx.AsyncClient) -> None:
    local = await api.post(
        "/v1/commands", json={"type": "swarm.cmd.agent.scale", "data": {"name": "x"}}
    )
    body = problem(local, 422)
    assert any(e["loc"] == "body.data.replicas" for e in body["errors"])

    # Unvalidated, the Hive judges it and its rejection comes back in the same shape.
    judged = await api.post(
        "/v1/commands",
        params={"validate": "false"},
        json={"type": "swarm.cmd.agent.scale", "data": {"name": "x"}},
    )
    body = problem(judged, 422)
    assert body["type"].endswith("/rejected")
    assert any(e["loc"] == "data.replicas" for e in body["errors"])

    event = await api.post("/v1/commands", json={"type": "swarm.evt.agent.x.running"})
    assert "not a command type" in problem(event, 422)["detail"]

    impostor = await api.post(
        "/v1/commands",
        json={"type": "swarm.cmd.namespace.create", "data": {"name": "n"}, "identity": "pod:p"},
    )
    assert problem(impostor, 422)["errors"][0]["loc"] == "body.identity"


async def test_malformed_requests_get_the_problem_shape(api: httpx.AsyncClient) -> None:
    # A body that cannot be read at all is a 400 (tests/gateway/test_limits.py has the rest);
    # one that reads but does not fit the route is a 422.
    broken = await api.post(
        "/v1/namespaces", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert [e["type"] for e in problem(broken, 400)["errors"]] == ["json_invalid"]
    wrong = await api.post("/v1/namespaces/default/agents", json={"name": "Bad Name", "spec": {}})
    locs = {e["loc"] for e in problem(wrong, 422)["errors"]}
    assert "body.name" in locs
    assert "body.spec.version" in locs
    problem(await api.get("/v1/nowhere"), 404)
    problem(await api.put("/v1/pods"), 405)
    problem(await api.get("/v1/events", params={"subject": "swarm.cmd.>"}), 422)
    problem(await api.get("/v1/events", params={"limit": "0"}), 422)


async def test_the_docs_are_public_only_when_the_api_is_told(stack: Stack) -> None:
    app = create_app(
        Settings(nats_url=stack.url),
        GatewaySettings(public_docs=True),
        log=stack.client,
        token=TOKEN,
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://swarm.test") as anyone:
        document = (await anyone.get("/openapi.json")).json()
        assert "/v1/agents" in document["paths"]
        problem(await anyone.get("/v1/agents"), 401)  # the routes themselves still need it


async def test_requests_without_the_token_are_refused(api: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        response = await api.get("/v1/agents", headers=headers)
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    # Liveness needs no token; the API's description does (it lists every route and model),
    # and declares the bearer scheme.
    assert (await api.get("/healthz", headers={"Authorization": ""})).json()["status"] == "ok"
    assert (await api.get("/readyz")).json()["status"] == "ok"
    for path in ("/openapi.json", "/docs", "/redoc"):
        problem(await api.get(path, headers={"Authorization": ""}), 401)
        assert (await api.get(path)).status_code == 200, path
    document = (await api.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    agents_get = document["paths"]["/v1/agents"]["get"]
    assert agents_get["security"] == [{"HTTPBearer": []}]
    assert PROBLEM in agents_get["responses"]["401"]["content"]
    # Typed reads: the document describes an agent, a pod and a namespace, not "an object".
    components = document["components"]["schemas"]
    listed = agents_get["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["$ref"].endswith("/AgentList")
    assert components["AgentList"]["properties"]["agents"]["items"]["$ref"].endswith("/AgentView")
    assert {"agent_id", "namespace", "status", "replicas", "trust"} <= set(
        components["AgentView"]["properties"]
    )
    assert "instances" in components["AgentDetailView"]["properties"]
    assert "free" in components["PodView"]["properties"]
    assert "quota" in components["NamespaceView"]["properties"]


async def test_event_pages_follow_the_log(api: httpx.AsyncClient, stack: Stack) -> None:
    # Two, so that a page of one leaves the second for the next page even when this test runs
    # first on its stack; outcomes waited for as long as a loaded machine may need.
    for name in ("paged-a", "paged"):
        created = await api.post("/v1/namespaces", json={"name": name}, params={"timeout": 60})
        assert created.status_code == 200, created.text
        assert created.json()["status"] == "accepted"
    subject = "swarm.evt.namespace.>"
    first = (await api.get("/v1/events", params={"subject": subject, "limit": 1})).json()
    assert len(first["events"]) == 1
    assert first["events"][0]["subject"].startswith("swarm.evt.namespace.")
    assert first["next_after"] == first["events"][0]["seq"]
    rest = (
        await api.get("/v1/events", params={"subject": subject, "after": first["next_after"]})
    ).json()
    seqs = [e["seq"] for e in rest["events"]]
    assert seqs == sorted(seqs)
    assert all(s > first["next_after"] for s in seqs)
    assert any(e["event"]["data"].get("name") == "paged" for e in rest["events"])
    assert rest["next_after"] is None


async def test_an_unexpected_error_is_a_500_problem_without_a_trace(
    api: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarm.client.swarm import Swarm

    async def broken(self: Swarm) -> int:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Swarm, "floor", broken)
    response = await api.get("/v1/pods")
    body = problem(response, 500)
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert body["detail"] == "the API failed; see its log"


async def test_quarantine_release_and_autoscale_are_agent_verbs(api: httpx.AsyncClient) -> None:
    deployed = await api.post(
        "/v1/namespaces/default/agents", json={"name": "held", "spec": SPEC, "replicas": 0}
    )
    assert deployed.status_code == 200, deployed.text

    held = await api.post(
        "/v1/namespaces/default/agents/held/quarantine", json={"reason": "looked wrong"}
    )
    assert held.json()["status"] == "accepted", held.text
    agent = (await api.get("/v1/namespaces/default/agents/held")).json()["agent"]
    assert agent["quarantined"]["reason"] == "looked wrong"
    released = await api.post(
        "/v1/namespaces/default/agents/held/release", json={"reason": "fine after all"}
    )
    assert released.json()["status"] == "accepted", released.text
    agent = (await api.get("/v1/namespaces/default/agents/held")).json()["agent"]
    assert agent["quarantined"] is None

    policy = {"min_replicas": 1, "max_replicas": 4, "target_rate": 20}
    scaled = await api.put(
        "/v1/namespaces/default/agents/held/autoscale", json={"autoscale": policy}
    )
    assert scaled.json()["status"] == "accepted", scaled.text
    agent = (await api.get("/v1/namespaces/default/agents/held")).json()["agent"]
    assert agent["autoscale"]["max_replicas"] == 4
    off = await api.put("/v1/namespaces/default/agents/held/autoscale", json={"autoscale": None})
    assert off.json()["status"] == "accepted", off.text
    assert (await api.get("/v1/namespaces/default/agents/held")).json()["agent"][
        "autoscale"
    ] is None

    # The agent is named, and the reason checked, as the CLI's verbs do.
    problem(
        await api.post("/v1/namespaces/default/agents/nobody/quarantine", json={"reason": "x"}), 404
    )
    problem(await api.post("/v1/namespaces/default/agents/held/release", json={"reason": ""}), 422)
    bounds = {"autoscale": {"min_replicas": 5, "max_replicas": 1}}
    problem(await api.put("/v1/namespaces/default/agents/held/autoscale", json=bounds), 422)


async def test_the_timeline_answers_state_diff_and_verify(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    from schemas import names

    before = await stack.client.last_sequence(names.STREAM_EVENTS)
    created = await api.post("/v1/namespaces", json={"name": "travel"})
    assert created.json()["status"] == "accepted", created.text
    after = await stack.client.last_sequence(names.STREAM_EVENTS)

    state = (await api.get("/v1/timeline/state", params={"at": str(after)})).json()
    assert state["applied_seq"] == after
    assert "travel" in state["state"]["namespaces"]
    earlier = (await api.get("/v1/timeline/state", params={"at": str(before)})).json()
    assert "travel" not in earlier["state"]["namespaces"]
    assert earlier["digest"] != state["digest"]

    diff = (
        await api.get("/v1/timeline/diff", params={"first": str(before), "second": str(after)})
    ).json()
    assert diff["to"]["digest"] == state["digest"]
    assert any(c["path"].startswith("namespaces.travel") for c in diff["changes"])
    backwards = await api.get(
        "/v1/timeline/diff", params={"first": str(after), "second": str(before)}
    )
    problem(backwards, 422)
    problem(await api.get("/v1/timeline/state", params={"at": "not a time"}), 422)

    report = (await api.get("/v1/timeline/verify", params={"grace": 0})).json()
    assert report["ok"], report["findings"]
    assert report["checked"]["commands"] > 0
