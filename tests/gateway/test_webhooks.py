"""Webhooks through the HTTP API, against a real Hive, a real dispatcher (in this event loop, as
tests/webhooks run it) and a real HTTP receiver that verifies signatures with `standardwebhooks`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from schemas import names
from services.webhooks.config import WebhookSettings
from services.webhooks.service import Dispatcher
from swarm.kernel.settings import Settings
from swarm.kernel.webhook_storage import fingerprint, new_secret, secrets_bucket
from tests.gateway.client import problem
from tests.helpers.stack import Stack
from tests.helpers.webhook_bed import FAST, wait_until
from tests.helpers.webhook_receiver import Received, Receiver, WebhookVerificationError, serve

pytestmark = pytest.mark.timeout(90)

FILTER = "swarm.evt.namespace.*.created"


@pytest.fixture
async def dispatcher(stack: Stack) -> AsyncIterator[Dispatcher]:
    running = Dispatcher(Settings(nats_url=stack.url), WebhookSettings(**FAST))  # type: ignore[arg-type]
    task = asyncio.create_task(running.run())

    async def live() -> bool:
        if task.done():
            task.result()
        return running.live.is_set()

    try:
        await wait_until(live, what="dispatcher start")
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 15)


async def secret_of(stack: Stack, webhook_id: str) -> bytes | None:
    kv = await secrets_bucket(stack.client)
    return await kv.get(webhook_id)


async def deliveries(
    api: httpx.AsyncClient, webhook_id: str, *, dead: bool = False
) -> list[dict[str, Any]]:
    """The attempts to deliver to one webhook (with `dead`, its dead letters instead); the page
    answers the one list asked for and leaves the other null."""
    params = {"subscription": webhook_id, "dead": "true"} if dead else {"subscription": webhook_id}
    page = await api.get("/v1/webhooks/deliveries", params=params)
    assert page.status_code == 200, page.text
    asked, other = ("dead_letters", "deliveries") if dead else ("deliveries", "dead_letters")
    assert page.json()[other] is None
    found: list[dict[str, Any]] = page.json()[asked]
    return found


async def add_webhook(api: httpx.AsyncClient, url: str, **fields: Any) -> httpx.Response:
    """`POST /v1/webhooks` for `url` (FILTER, and `fields`): answered 200, accepted."""
    added = await api.post("/v1/webhooks", json={"url": url, "filter": FILTER, **fields})
    assert added.status_code == 200, added.text
    return added


async def add_without_waiting(api: httpx.AsyncClient, url: str) -> httpx.Response:
    """`POST /v1/webhooks?wait=false` for `url` (FILTER, a generated secret): answered 202."""
    pending = await api.post(
        "/v1/webhooks", params={"wait": "false"}, json={"url": url, "filter": FILTER}
    )
    assert pending.status_code == 202, pending.text
    return pending


async def create_namespaces(api: httpx.AsyncClient, prefix: str, count: int) -> dict[str, str]:
    """Namespaces created through the API; returns name -> the id of its `created` event."""
    created = {}
    for i in range(count):
        name = f"{prefix}-{i}"
        result = (await api.post("/v1/namespaces", json={"name": name})).json()
        assert result["status"] == "accepted", result
        [event] = [e for e in result["events"] if e["type"] == "swarm.namespace.created"]
        created[name] = event["id"]
    return created


def named(requests: list[Received], names_: set[str]) -> list[Received]:
    """The deliveries of the `created` events of these namespaces (other tests add their own)."""
    return [r for r in requests if r.event["data"].get("name") in names_]


async def test_added_through_the_api_signed_delivered_listed_removed(
    api: httpx.AsyncClient, stack: Stack, dispatcher: Dispatcher
) -> None:
    with serve(Receiver("")) as receiver:
        added = await add_webhook(api, receiver.url("/ops"), max_attempts=3, description="ops")
        body = added.json()
        webhook_id, secret = body["webhook_id"], body["secret"]
        assert secret.startswith("whsec_")
        assert body["secret_fingerprint"] == fingerprint(secret)
        assert body["command"]["status"] == "accepted"
        assert body["command"]["command_id"] == webhook_id
        assert added.headers["location"] == f"/v1/commands/{webhook_id}"
        assert added.headers["cache-control"] == "no-store"
        # Stored before the command was sent; the log has the fingerprint only.
        assert await secret_of(stack, webhook_id) == secret.encode()
        [logged] = [e for e in body["command"]["events"] if e["type"] == "swarm.webhook.added"]
        async for d in stack.client.replay(names.STREAM_EVENTS, subjects=[logged["subject"]]):
            assert secret.removeprefix("whsec_") not in d.data.decode()

        listed = (await api.get("/v1/webhooks")).json()
        [hook] = [h for h in listed["webhooks"] if h["webhook_id"] == webhook_id]
        assert hook["url"] == receiver.url("/ops")
        assert hook["filter"] == FILTER
        assert hook["max_attempts"] == 3
        assert hook["secret_fingerprint"] == fingerprint(secret)
        assert secret not in json.dumps(listed)

        created = await create_namespaces(api, "hooked", 3)

        async def arrived() -> bool:
            return len(named(receiver.on("/ops"), set(created))) == 3

        await wait_until(arrived, what="3 deliveries")
        for request in named(receiver.on("/ops"), set(created)):
            # Verified as a subscriber would, with the secret the API returned; another fails.
            verified = Webhook(secret).verify(request.body, request.headers)
            assert verified["id"] == created[verified["data"]["name"]]
            with pytest.raises(WebhookVerificationError):
                Webhook(new_secret()).verify(request.body, request.headers)

        async def all_recorded() -> bool:
            return len(await deliveries(api, webhook_id)) == 3

        await wait_until(all_recorded, what="3 recorded attempts")
        attempts = await deliveries(api, webhook_id)
        assert sorted(a["event_id"] for a in attempts) == sorted(created.values())
        assert {(a["outcome"], a["status_code"], a["attempt"]) for a in attempts} == {
            ("delivered", 200, 1)
        }
        limited = await api.get(
            "/v1/webhooks/deliveries", params={"subscription": webhook_id, "limit": 1}
        )
        assert limited.json()["deliveries"] == attempts[-1:]

        removed = await api.delete(f"/v1/webhooks/{webhook_id}", params={"reason": "test over"})
        assert removed.status_code == 200, removed.text
        assert removed.json()["status"] == "accepted"
        assert await secret_of(stack, webhook_id) is None
        listed = (await api.get("/v1/webhooks")).json()
        assert webhook_id not in {h["webhook_id"] for h in listed["webhooks"]}
        again = problem(await api.delete(f"/v1/webhooks/{webhook_id}"), 404)
        assert again["rule"] == "not_found"

        later = await create_namespaces(api, "unhooked", 2)
        await asyncio.sleep(1.0)
        assert named(receiver.on("/ops"), set(later)) == []  # nothing more after removal


async def test_given_secret_dead_letters_and_redelivery(
    api: httpx.AsyncClient, stack: Stack, dispatcher: Dispatcher
) -> None:
    secret = new_secret()
    receiver = Receiver(secret, script={"/down": [500]})
    with serve(receiver):
        added = await add_webhook(api, receiver.url("/down"), max_attempts=2, secret=secret)
        webhook_id = added.json()["webhook_id"]
        # Given, not generated: the caller has it, so it is not echoed.
        assert added.json()["secret"] is None
        assert added.json()["secret_fingerprint"] == fingerprint(secret)
        assert await secret_of(stack, webhook_id) == secret.encode()

        created = await create_namespaces(api, "dead", 2)
        ids = [created["dead-0"], created["dead-1"]]

        async def dead_letters() -> list[dict[str, Any]]:
            return await deliveries(api, webhook_id, dead=True)

        async def both_dead() -> bool:
            return len(await dead_letters()) == 2

        await wait_until(both_dead, what="2 dead letters")
        assert {d["event_id"] for d in await dead_letters()} == set(ids)
        assert {d["attempts"] for d in await dead_letters()} == {2}

        unknown = problem(
            await api.post("/v1/webhooks/redeliver", json={"event_ids": [ids[0], "no-such-event"]}),
            404,
        )
        assert "no-such-event" in unknown["detail"]
        assert [e["loc"] for e in unknown["errors"]] == ["body.event_ids.1"]
        both = await api.post("/v1/webhooks/redeliver", json={"event_ids": ids, "all_dead": True})
        problem(both, 422)
        neither = await api.post("/v1/webhooks/redeliver", json={})
        problem(neither, 422)

        with receiver.lock:
            receiver.script["/down"] = [200]
        one = await api.post("/v1/webhooks/redeliver", json={"event_ids": [ids[0]]})
        assert one.status_code == 200, one.text
        [request] = one.json()["requests"]
        assert (request["webhook_id"], request["event_ids"]) == (webhook_id, [ids[0]])
        assert request["command"]["status"] == "accepted"
        assert request["command"]["type"] == "swarm.cmd.webhook.redeliver"

        async def one_left() -> bool:
            return [d["event_id"] for d in await dead_letters()] == [ids[1]]

        await wait_until(one_left, what="one dead letter redelivered")
        rest = await api.post(
            "/v1/webhooks/redeliver", json={"all_dead": True, "subscription": webhook_id}
        )
        assert rest.status_code == 200, rest.text
        assert [r["event_ids"] for r in rest.json()["requests"]] == [[ids[1]]]

        async def none_left() -> bool:
            return await dead_letters() == []

        await wait_until(none_left, what="no dead letters")
        nothing = await api.post(
            "/v1/webhooks/redeliver", json={"all_dead": True, "subscription": webhook_id}
        )
        assert nothing.json() == {"requests": []}
        delivered = [r for r in receiver.on("/down") if r.status == 200]
        assert sorted(r.headers["webhook-id"] for r in delivered) == sorted(ids)
        for r in delivered:
            receiver.verify(r)
        assert (await api.delete(f"/v1/webhooks/{webhook_id}")).json()["status"] == "accepted"


async def test_bad_subscriptions_are_problems_and_keep_no_secret(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    # The URL's rules are the Hive's: its rejection comes back with its rule and field.
    ftp = problem(
        await api.post("/v1/webhooks", json={"url": "ftp://example.com/", "filter": FILTER}), 422
    )
    assert ftp["type"].endswith("/rejected")
    assert ftp["rule"] == "invalid"
    assert "http or https" in ftp["detail"]
    assert [e["loc"] for e in ftp["errors"]] == ["url"]
    # The secret stored before sending was deleted with the rejection.
    assert await secret_of(stack, ftp["command_id"]) is None

    # Filter and secret are checked before anything is stored or sent.
    bad_filter = problem(
        await api.post("/v1/webhooks", json={"url": "https://example.com/", "filter": "swarm.>"}),
        422,
    )
    assert bad_filter["type"].endswith("/invalid-command")
    assert [e["loc"] for e in bad_filter["errors"]] == ["body.filter"]
    assert "swarm.evt." in bad_filter["detail"]
    short = problem(
        await api.post(
            "/v1/webhooks",
            json={"url": "https://example.com/", "filter": FILTER, "secret": "whsec_c2hvcnQ="},
        ),
        422,
    )
    assert [e["loc"] for e in short["errors"]] == ["body.secret"]
    assert "whsec_c2hvcnQ=" not in json.dumps(short)
    unknown_field = await api.post(
        "/v1/webhooks", json={"url": "https://example.com/", "filter": FILTER, "token": "x"}
    )
    assert problem(unknown_field, 422)["type"].endswith("/invalid-request")

    # The same URL and filter twice: the Hive's duplicate rule, 409.
    first = await api.post("/v1/webhooks", json={"url": "https://example.com/a", "filter": FILTER})
    assert first.status_code == 200, first.text
    second = problem(
        await api.post("/v1/webhooks", json={"url": "https://example.com/a", "filter": FILTER}),
        409,
    )
    assert second["rule"] == "duplicate"
    assert await secret_of(stack, second["command_id"]) is None
    assert await secret_of(stack, first.json()["webhook_id"]) is not None

    problem(await api.delete("/v1/webhooks/no.such"), 422)
    problem(await api.get("/v1/webhooks/deliveries", params={"subscription": "a.>"}), 422)
    assert (await api.delete(f"/v1/webhooks/{first.json()['webhook_id']}")).status_code == 200


async def test_the_commands_route_refuses_webhook_add_and_removes_like_delete(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    command = {
        "type": "swarm.cmd.webhook.add",
        "data": {
            "url": "https://example.com/plain",
            "filter": FILTER,
            "secret_fingerprint": fingerprint(new_secret()),
        },
    }
    for params in ({}, {"validate": "false"}):
        refused = problem(await api.post("/v1/commands", params=params, json=command), 422)
        assert "POST /v1/webhooks" in refused["detail"]
        assert refused["errors"][0]["loc"] == "body.type"
    with_id = {**command, "id": "plain-webhook-add-1"}
    problem(await api.post("/v1/commands", json=with_id), 422)
    # Nothing was sent: no outcome for it, and no such subscription.
    problem(await api.get("/v1/commands/plain-webhook-add-1"), 404)
    listed = (await api.get("/v1/webhooks")).json()["webhooks"]
    assert all(h["url"] != "https://example.com/plain" for h in listed)

    # Not waited for: 202 with the secret (stored, and never shown again); poll the Location.
    pending = await add_without_waiting(api, "https://example.com/later")
    webhook_id = pending.json()["webhook_id"]
    assert pending.json()["command"]["status"] == "pending"
    assert pending.json()["secret"].startswith("whsec_")
    for _ in range(100):
        polled = (await api.get(pending.headers["location"])).json()
        if polled["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert polled["status"] == "accepted"

    # A removal sent as a plain command deletes the secret too.
    assert await secret_of(stack, webhook_id) is not None
    removed = await api.post(
        "/v1/commands",
        json={"type": "swarm.cmd.webhook.remove", "data": {"webhook_id": webhook_id}},
    )
    assert removed.json()["status"] == "accepted", removed.text
    assert await secret_of(stack, webhook_id) is None


async def test_secrets_follow_outcomes_that_come_after_a_202(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    # Rejected after the API answered: the API waits on and deletes the secret it stored.
    pending = await add_without_waiting(api, "ftp://example.com/never")
    rejected_id = pending.json()["webhook_id"]

    async def decided() -> bool:
        polled = (await api.get(pending.headers["location"])).json()
        return bool(polled["status"] == "rejected")

    await wait_until(decided, what="the rejection")

    async def forgotten(webhook_id: str) -> bool:
        return await secret_of(stack, webhook_id) is None

    await wait_until(lambda: forgotten(rejected_id), what="the rejected add's secret deleted")

    # Removed without waiting: the secret goes once the Hive has accepted the removal.
    added = await add_webhook(api, "https://example.com/removed-later")
    webhook_id = added.json()["webhook_id"]
    assert await secret_of(stack, webhook_id) is not None
    removal = await api.delete(f"/v1/webhooks/{webhook_id}", params={"wait": "false"})
    assert removal.status_code == 202, removal.text
    assert removal.headers["location"] == f"/v1/commands/{removal.json()['command_id']}"
    await wait_until(lambda: forgotten(webhook_id), what="the removed webhook's secret deleted")


async def test_every_webhook_route_documents_auth_and_problems(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    operations = [
        document["paths"]["/v1/webhooks"]["get"],
        document["paths"]["/v1/webhooks"]["post"],
        document["paths"]["/v1/webhooks/{webhook_id}"]["delete"],
        document["paths"]["/v1/webhooks/deliveries"]["get"],
        document["paths"]["/v1/webhooks/redeliver"]["post"],
    ]
    for operation in operations:
        assert operation["security"] == [{"HTTPBearer": []}]
        for status in ("401", "422", "500", "503"):
            assert "application/problem+json" in operation["responses"][status]["content"]
    for operation in operations[1:3] + operations[4:]:
        assert {"202", "404", "409"} <= set(operation["responses"])
    assert (await api.get("/v1/webhooks", headers={"Authorization": ""})).status_code == 401
