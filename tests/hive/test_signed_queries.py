"""A Hive given its stack's principals answers a query only as its signer's, and shows the signer
what its role lets it read: a user the namespaces where it holds a role, the owner and the
services everything. Unsigned, forged, stranger-signed, stale and replayed queries are answered
`unauthenticated: …` and nothing else; the scheduler's market the same way. Real nats-server,
real Hive and scheduler, keys as `swarm up` issues them; the attacks go through plain nats-py
connections, as anyone on the machine could send them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from schemas import names
from services.scheduler import Scheduler, SchedulerSettings
from swarm.client.market import ask_market
from swarm.client.queries import HiveQueries, QueryFailed
from swarm.client.swarm import Swarm
from swarm.devstack.principals import LISTING, add_user, issue, load
from swarm.kernel.connection import settle
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.signing import CommandSigner
from tests.helpers.history import WASM
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(120)

SPEC = {"version": "v1", "module": {"inline": WASM}}


@dataclass
class Signed:
    """Namespaces `lab` (agent `a`) and `ops` (agent `b`); ann is viewer in lab, bob holds no
    role, vic is viewer in every namespace. A scheduler answers the market."""

    stack: Stack
    keys: Path

    def public_key(self, name: str) -> str:
        return next(p.public_key for p in load(self.keys / LISTING).values() if p.name == name)

    async def connect(self, name: str) -> EventLog:
        """A connection of principal `name`, as Swarm's clients make one (its own inbox
        prefix), signing its queries with its key."""
        return await EventLog.connect(
            self.stack.url, name=name, credentials=self.keys / f"{name}.nk", ensure=False
        )


@pytest.fixture(scope="module")
async def signed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Signed]:
    root = tmp_path_factory.mktemp("queries")
    keys = root / "principals"
    issue(
        keys,
        [("admin", "admin"), ("scheduler", "service"), ("gateway", "gateway"), ("pod-1", "pod")],
    )
    for user in ("ann", "bob", "vic"):
        add_user(keys, user)
    async with running_stack(root, principals_file=keys / LISTING) as stack:
        assert stack.owner is not None
        owner = Swarm(stack.owner, identity="user:owner")
        for namespace, agent in (("lab", "a"), ("ops", "b")):
            assert (await owner.namespaces.create(namespace)).accepted
            assert (await owner.agents.deploy(namespace, agent, SPEC)).accepted
        grants: list[tuple[str, str, str | None]] = [
            ("ann", "viewer", "lab"),
            ("vic", "viewer", None),
        ]
        for user, role, where in grants:
            assert (await owner.access.grant(user, role, namespace=where)).accepted
        scheduler = Scheduler(
            Settings(nats_url=stack.url, nats_credentials=keys / "scheduler.nk"),
            SchedulerSettings(principals_file=keys / LISTING),
        )
        # Live: its market is subscribed, and its view has caught up with the log.
        async with in_this_loop(scheduler, live_within=30):
            yield Signed(stack, keys)


async def ask(signed: Signed, name: str) -> tuple[EventLog, HiveQueries]:
    log = await signed.connect(name)
    return log, HiveQueries(log, timeout=10)


async def raw_request(
    nc: Any, subject: str, body: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    reply = await nc.request(subject, body, timeout=10, headers=headers)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def test_an_unsigned_query_is_answered_unauthenticated_and_nothing_else(
    signed: Signed,
) -> None:
    nc = await nats.connect(signed.stack.url)
    try:
        for subject in (
            names.QUERY_AGENTS_LIST,
            names.QUERY_PODS_LIST,
            names.QUERY_ACCESS_LIST,
            names.QUERY_STATE,
            names.QUERY_STATUS,
            names.QUERY_MARKET_STATE,
        ):
            answer = await raw_request(nc, subject, b"{}")
            assert answer["code"] == "unauthenticated", (subject, answer)
            assert answer["error"].startswith("unauthenticated: the query is not signed"), answer
            assert set(answer) <= {"error", "code", "node"}, answer
    finally:
        await nc.close()


async def test_a_user_sees_only_the_namespaces_where_it_holds_a_role(signed: Signed) -> None:
    log, ann = await ask(signed, "ann")
    async with log:
        assert [(a["namespace"], a["name"]) for a in await ann.agents(None)] == [("lab", "a")]
        assert [a["name"] for a in await ann.agents("lab")] == ["a"]
        assert (await ann.agent("lab", "a"))["name"] == "a"
        assert [n["name"] for n in await ann.namespaces()] == ["lab"]
        assert [(g.user, g.namespace) for g in await ann.grant_views()] == [("ann", "lab")]

        # Another namespace's agents, whether or not they exist: forbidden, with the grant.
        for read in (
            lambda: ann.agents("ops"),
            lambda: ann.agent("ops", "b"),
            lambda: ann.agent("ops", "nobody"),
        ):
            with pytest.raises(QueryFailed) as refused:
                await read()
            assert refused.value.error_code == "forbidden"
            assert refused.value.message == (
                "forbidden: user ann may not read namespace ops: it needs role viewer in "
                "namespace ops and holds no role there (the stack's owner grants it with "
                "`swarm user grant ann viewer --namespace ops`)"
            )
        # By id, once the agent is found (as the HTTP API's /v1/agents/{id}).
        b = (await signed.stack.query(names.QUERY_AGENTS_GET, {"namespace": "ops", "name": "b"}))[
            "agent"
        ]
        with pytest.raises(QueryFailed, match="may not read namespace ops"):
            await ann.agent_by_id(b["agent_id"])

        # What spans every namespace takes a role in every one.
        for subject, what in (
            (names.QUERY_PODS_LIST, "list the pods"),
            (names.QUERY_WEBHOOKS_LIST, "list the webhooks"),
            (names.QUERY_STATE, "read the whole state"),
        ):
            with pytest.raises(QueryFailed) as refused:
                await ann.ask(subject)
            assert refused.value.error_code == "forbidden"
            assert f"user ann may not {what}: it needs role viewer in every namespace" in (
                refused.value.message
            )
            assert "`swarm user grant ann viewer --all-namespaces`" in refused.value.message
        with pytest.raises(QueryFailed, match=r"^forbidden: user ann may not read the market"):
            await ask_market(log, 5)
        # The replica's status and the digest are every principal's.
        assert "digest" in await ann.ask(names.QUERY_DIGEST)
        assert "applied_seq" in await ann.ask(names.QUERY_STATUS)

    log, bob = await ask(signed, "bob")
    async with log:
        assert await bob.agents(None) == []
        assert await bob.namespaces() == []
        assert await bob.grant_views() == []

    log, vic = await ask(signed, "vic")
    async with log:
        assert {a["name"] for a in await vic.agents(None)} == {"a", "b"}
        assert await vic.pods() == []
        assert "state" in await vic.ask(names.QUERY_STATE)
        assert "offers" in await ask_market(log, 5)


@pytest.mark.parametrize("name", ["admin", "scheduler", "gateway", "pod-1"])
async def test_the_owner_and_the_services_see_everything(signed: Signed, name: str) -> None:
    log, queries = await ask(signed, name)
    async with log:
        assert {a["name"] for a in await queries.agents(None)} == {"a", "b"}
        assert (await queries.agent("ops", "b"))["name"] == "b"
        assert {n["name"] for n in await queries.namespaces()} >= {"lab", "ops"}
        assert {g.user for g in await queries.grant_views()} == {"ann", "vic"}
        assert await queries.pods() == []
        assert "state" in await queries.ask(names.QUERY_STATE)
        assert "offers" in await ask_market(log, 5)


async def test_forged_stranger_stale_and_replayed_queries_are_refused(
    signed: Signed, tmp_path: Path
) -> None:
    ann_key = signed.public_key("ann")
    ann = CommandSigner.from_seed_file(signed.keys / "ann.nk")
    # A connection that takes replies under ann's inbox prefix (the test's server lets anyone
    # listen anywhere; a `swarm up` stack lets ann alone): the Hive's binding is what is tested.
    as_ann = await nats.connect(signed.stack.url, inbox_prefix=names.inbox_prefix(ann_key))
    elsewhere = await nats.connect(signed.stack.url)
    try:
        subject, body = names.QUERY_AGENTS_LIST, b"{}"
        now_ms = time.time_ns() // 1_000_000

        # Signed as ann, answered to ann: her namespaces (the control).
        answer = await raw_request(as_ann, subject, body, ann.query_headers(subject, body, now_ms))
        assert [a["name"] for a in answer["agents"]] == ["a"]

        # Forged: ann's signature over another body.
        forged = ann.query_headers(subject, b'{"namespace": "lab"}', now_ms)
        answer = await raw_request(as_ann, subject, body, forged)
        assert answer == {
            "error": "unauthenticated: the query's signature does not hold: the signature does "
            "not match the query",
            "code": "unauthenticated",
            "node": answer["node"],
        }

        # A stranger's key, with its own inbox prefix.
        (stranger,) = issue(tmp_path / "elsewhere", [("admin", "admin")])
        async with await EventLog.connect(
            signed.stack.url, credentials=stranger.seed_file, ensure=False
        ) as foreign:
            with pytest.raises(QueryFailed) as refused:
                await HiveQueries(foreign, timeout=10).agents(None)
            assert refused.value.error_code == "unauthenticated"
            assert "which is no principal of this stack" in refused.value.message
            assert "SWARM_NATS_CREDENTIALS" in (refused.value.hint or "")

        # Stale: signed ten minutes ago (or replayed ten minutes later).
        stale = ann.query_headers(subject, body, now_ms - 600_000)
        answer = await raw_request(as_ann, subject, body, stale)
        assert answer["code"] == "unauthenticated"
        assert answer["error"].startswith("unauthenticated: the query was signed 600 s ago")

        # Replayed: ann's own client's query read off the wire, sent again with another inbox.
        captured: asyncio.Queue[Any] = asyncio.Queue()

        async def capture(msg: Any) -> None:
            await captured.put(msg)

        tap = await elsewhere.subscribe(subject, cb=capture)
        await settle(elsewhere, 10)
        log, queries = await ask(signed, "ann")
        async with log:
            assert [a["name"] for a in await queries.agents(None)] == ["a"]
        original = await asyncio.wait_for(captured.get(), 10)
        await tap.unsubscribe()
        assert original.reply.startswith(names.inbox_prefix(ann_key) + ".")
        answer = await raw_request(elsewhere, subject, original.data, dict(original.headers))
        assert answer["code"] == "unauthenticated"
        assert "not under ann's own inbox prefix" in answer["error"]
        assert "agents" not in answer
    finally:
        await as_ann.close()
        await elsewhere.close()
