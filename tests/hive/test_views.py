"""Typed reads: every answer of the Hive's read queries is its view model (`schemas.views`),
rendered on the wire as the Hive always wrote it, and read back by the model unchanged."""

from __future__ import annotations

import json

import pytest

from schemas import commands as c
from schemas import healing, names
from schemas.views import ANSWERS, AgentAnswer, AgentsAnswer, Answer, PodsAnswer, WebhooksAnswer
from schemas.webhooks import AddWebhook
from services.hive.queries import QUERIES, rendered
from swarm.domain.policy import Reader
from tests.helpers import steps
from tests.helpers.sim import Sim

pytestmark = pytest.mark.timeout(60)


def busy_cluster() -> tuple[Sim, str]:
    """Two pods, two agents running, one of them rolling out to v2 and quarantined."""
    sim = Sim()
    steps.pod(sim, "p1")
    steps.pod(sim, "p2")
    echo = steps.deploy(sim, "echo", replicas=3)
    steps.deploy(sim, "other", replicas=1)
    steps.place_all(sim, "p1")
    steps.run_all(sim)
    sim.tick(5)
    sim.ok(c.RolloutAgent(name="echo", spec=steps.spec("v2")))
    sim.ok(healing.QuarantineAgent(agent_id=echo, reason="looked odd"))
    # Webhooks with and without their own attempt limit (without: the dispatcher's default).
    for limit in (3, None):
        sim.ok(
            AddWebhook(
                url=f"https://example.com/h{limit}",
                filter="swarm.evt.>",
                secret_fingerprint="0123456789abcdef",
                max_attempts=limit,
            )
        )
    sim.tick(1)
    return sim, echo


def test_every_answer_is_its_view_and_reads_back_unchanged() -> None:
    sim, echo = busy_cluster()
    requests = {
        names.QUERY_AGENTS_LIST: {},
        names.QUERY_AGENTS_GET: {"agent_id": echo},
        names.QUERY_PODS_LIST: {},
        names.QUERY_NAMESPACES_LIST: {},
        names.QUERY_WEBHOOKS_LIST: {},
    }
    for subject, request in requests.items():
        answer = QUERIES[subject](sim.state, request, Reader())
        assert isinstance(answer, Answer), subject
        wire = json.loads(json.dumps(rendered(answer)))
        model = next(m for m in ANSWERS.values() if isinstance(answer, m))
        assert rendered(model.model_validate(wire)) == wire, subject

    listed = QUERIES[names.QUERY_AGENTS_LIST](sim.state, {}, Reader())
    assert isinstance(listed, AgentsAnswer)
    by_name = {a.name: a for a in listed.agents}
    assert by_name["echo"].rollout is not None
    assert by_name["echo"].quarantined is not None
    shown = QUERIES[names.QUERY_AGENTS_GET](sim.state, {"agent_id": echo}, Reader())
    assert isinstance(shown, AgentAnswer)
    assert {i.replica_id for i in shown.agent.instances} >= {f"{echo}-0", f"{echo}-1"}
    wire = rendered(shown)["agent"]
    # The Hive's own spelling: `from` for a rollout's old version, times with `+00:00`.
    assert wire["rollout"]["from"] == "v1"
    assert wire["quarantined"]["at"].endswith("+00:00")
    pods = QUERIES[names.QUERY_PODS_LIST](sim.state, {}, Reader())
    assert isinstance(pods, PodsAnswer)
    assert [p.pod_id for p in pods.pods] == ["p1", "p2"]
    assert pods.pods[0].free.slots < pods.pods[1].free.slots


def test_a_missing_agent_is_an_error_answer_not_a_view() -> None:
    answer = QUERIES[names.QUERY_AGENTS_GET](Sim().state, {"name": "nobody"}, Reader())
    assert rendered(answer) == {"error": "agent not found", "code": "not_found"}


def test_a_webhook_without_its_own_attempt_limit_is_listed() -> None:
    """`max_attempts` is optional on `webhook.add` (the dispatcher's default applies), so the
    list shows it as null rather than failing the whole query."""
    sim, _ = busy_cluster()
    answer = QUERIES[names.QUERY_WEBHOOKS_LIST](sim.state, {}, Reader())
    assert isinstance(answer, WebhooksAnswer)
    assert sorted((h.max_attempts or 0) for h in answer.webhooks) == [0, 3]
    wire = json.loads(json.dumps(rendered(answer)))
    assert {h["max_attempts"] for h in wire["webhooks"]} == {3, None}
