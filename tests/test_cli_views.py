"""The CLI's tables read the Hive's answers as their views (`schemas.views`).

A fake Hive on a nats-server of the module's own answers each query with what a test sets, so an
answer of another shape than the view (a Hive of another version, a renamed field) can be sent:
the table verbs end with a readable error and exit 1, never a traceback or a blank column, and
`-o json` still prints the answer as the Hive gave it.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from rich.console import Console

from schemas import names
from schemas.specs import Capacity, Quota
from schemas.views import (
    AgentsAnswer,
    AgentView,
    Answer,
    FreeCapacity,
    NamespacesAnswer,
    NamespaceView,
    PodsAnswer,
    PodView,
    QuarantineView,
    ReplicaCounts,
    RolloutView,
    View,
    WebhooksAnswer,
    WebhookView,
)
from swarm.cli import agent as agent_cli
from swarm.cli import namespace as namespace_cli
from swarm.cli import pod as pod_cli
from swarm.cli import webhook as webhook_cli
from swarm.client.queries import parse_views
from swarm.kernel.eventlog import EventLog, Message, Subscription
from tests.helpers.cli import cli
from tests.helpers.servers import own_nats

pytestmark = pytest.mark.timeout(60)

V = TypeVar("V", bound=View)


class FakeHive:
    """Answers every `swarm.query.…` with `answers[subject]` (an error answer if unset)."""

    def __init__(self, url: str, log: EventLog) -> None:
        self.url = url
        self.log = log
        self.answers: dict[str, dict[str, Any]] = {}
        self.sub: Subscription | None = None

    async def start(self) -> None:
        self.sub = await self.log.subscribe(f"{names.QUERY_PREFIX}.>", self._answer)

    async def _answer(self, msg: Message) -> None:
        answer = self.answers.get(msg.subject, {"error": "not faked", "code": "test"})
        await self.log.respond(msg, json.dumps(answer).encode())


@pytest.fixture(scope="module")
async def hive(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FakeHive]:
    with own_nats(tmp_path_factory.mktemp("views") / "nats") as url:
        async with await EventLog.connect(url, name="fake-hive") as log:
            await log.ensure_streams()  # the read verbs open the events stream first
            fake = FakeHive(url, log)
            await fake.start()
            yield fake


#: (verb, query, answer whose one item lacks most of its view's fields, the view).
MISSHAPEN = [
    (["agent", "ls"], names.QUERY_AGENTS_LIST, {"agents": [{"name": "x"}]}, "AgentView"),
    (
        ["agent", "describe", "x"],
        names.QUERY_AGENTS_GET,
        {"agent": {"name": "x", "agent_id": "a1"}},
        "AgentDetailView",
    ),
    (["pod", "ls"], names.QUERY_PODS_LIST, {"pods": [{"pod_id": "p"}]}, "PodView"),
    (
        ["namespace", "ls"],
        names.QUERY_NAMESPACES_LIST,
        {"namespaces": [{"name": "n", "agents": 1}]},
        "NamespaceView",
    ),
    (
        ["webhook", "ls"],
        names.QUERY_WEBHOOKS_LIST,
        {"webhooks": [{"webhook_id": "w"}]},
        "WebhookView",
    ),
]


def _verb(value: object) -> str | None:
    """A case's id: its verb (`agent ls`); pytest numbers the other parameters."""
    return " ".join(value) if isinstance(value, list) else None


@pytest.mark.parametrize(("verb", "subject", "answer", "view"), MISSHAPEN, ids=_verb)
async def test_an_answer_that_is_not_the_view_is_a_readable_error(
    hive: FakeHive, verb: list[str], subject: str, answer: dict[str, Any], view: str
) -> None:
    hive.answers[subject] = {**answer, "applied_seq": 0}
    result = await cli(hive.url, *verb)
    assert result.exit_code == 1, result.output
    assert f"the Hive's answer is not a {view}: " in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("verb", "subject", "answer", "view"),
    [case for case in MISSHAPEN if case[0][-1] == "ls"],
    ids=_verb,
)
async def test_json_output_is_the_answer_as_it_came(
    hive: FakeHive, verb: list[str], subject: str, answer: dict[str, Any], view: str
) -> None:
    """Only the tables read the views: a script reading `-o json` sees the Hive's own fields,
    those the CLI does not know included."""
    hive.answers[subject] = {**answer, "applied_seq": 0}
    result = await cli(hive.url, *verb, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {**answer, "applied_seq": 0}


async def test_describe_needs_the_view_in_every_format(hive: FakeHive) -> None:
    """describe reads the agent's events by the view's `agent_id` and `last_seq`, so an answer
    that is not the view stops it before anything is printed, whatever the format."""
    hive.answers[names.QUERY_AGENTS_GET] = {"agent": {"name": "x"}, "applied_seq": 0}
    result = await cli(hive.url, "agent", "describe", "x", "-o", "json")
    assert result.exit_code == 1, result.output
    assert "the Hive's answer is not a AgentDetailView: agent_id: Field required" in result.stderr


# --- drawing what the Hive's own models answer ----------------------------------------------------


def drawn(renderable: Any) -> list[list[str]]:
    """A table's rows as cells, printed without colour as a pipe would get it."""
    out = io.StringIO()
    Console(width=200, color_system=None, file=out).print(renderable)
    return [line.split() for line in out.getvalue().splitlines()]


def answered(answer: Answer, key: str, view: type[V]) -> list[V]:
    """One list of an answer as the Hive puts it on the wire (JSON, field aliases), read back
    as the CLI reads it."""
    items: list[dict[str, Any]] = json.loads(
        json.dumps(answer.model_dump(mode="json", by_alias=True))
    )[key]
    return parse_views(view, items)


def test_agent_ls_draws_the_view_the_hive_answers() -> None:
    now = datetime.now(UTC)
    agent = AgentView(
        agent_id="a1",
        namespace="team",
        name="echo",
        version="v2",
        status="degraded",
        reason="rolling out",
        replicas=ReplicaCounts(desired=3, running=2, active=3),
        rollout=RolloutView(version="v2", from_version="v1", rollback=False),
        deleted=False,
        created_at=now - timedelta(hours=5, minutes=1),
        last_seq=9,
        autoscale=None,
        trust=0.25,
        quarantined=QuarantineView(reason="x", anomaly_id=None, at=now),
    )
    rows = drawn(
        agent_cli.agents_table(answered(AgentsAnswer(agents=[agent]), "agents", AgentView), None)
    )
    assert rows[1] == [
        "team",
        "echo",
        "v1→v2",
        "degraded",
        "2/3",
        "0.25",
        "Q",
        "5h",
        "rolling",
        "out",
    ]


def test_pod_namespace_and_webhook_tables_draw_their_views() -> None:
    pod = PodView(
        pod_id="pod-a",
        status="ready",
        zone="eu-1",
        labels={},
        energy_cost=0.5,
        lease_s=30.0,
        capacity=Capacity(memory_mb=1024, fuel_per_s=10**9, slots=8),
        free=FreeCapacity(memory_mb=960, fuel_per_s=10**9 - 1_500_000, slots=7),
        replicas=1,
        anomalies=[],
    )
    rows = drawn(pod_cli.pods_table(answered(PodsAnswer(pods=[pod]), "pods", PodView)))
    assert rows[1] == ["pod-a", "ready", "eu-1", "64/1024", "1.5M/1G", "1/8", "1", "0.5"]

    team = NamespaceView(name="team", quota=Quota(max_agents=5, max_memory_mb=65536), agents=2)
    rows = drawn(
        namespace_cli.namespaces_table(
            answered(NamespacesAnswer(namespaces=[team]), "namespaces", NamespaceView)
        )
    )
    assert rows[1] == ["team", "2", "5", "unlimited", "65,536", "unlimited"]

    hook = WebhookView(
        webhook_id="wh1",
        url="https://example.test/hook",
        filter="swarm.evt.>",
        max_attempts=None,
        secret_fingerprint="sha256:ab",
        description="",
        created_at=None,
        added_seq=3,
    )
    rows = drawn(
        webhook_cli.webhooks_table(
            answered(WebhooksAnswer(webhooks=[hook]), "webhooks", WebhookView)
        )
    )
    assert rows[1] == [
        "wh1",
        "swarm.evt.>",
        "https://example.test/hook",
        "default",
        "sha256:ab",
        "?",
    ]
