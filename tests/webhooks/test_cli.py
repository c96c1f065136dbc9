"""`swarm webhook` against a real Hive, a real dispatcher and a real HTTP receiver.

The Hive and the dispatcher run in the test's event loop, the CLI in a worker thread (its own
`asyncio.run`), as separate processes would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from schemas import commands, names, new_id
from services.webhooks.config import WebhookSettings
from services.webhooks.service import Dispatcher
from swarm.cli.app import app
from swarm.kernel.settings import Settings
from swarm.kernel.webhook_storage import fingerprint, secrets_bucket
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.webhook_bed import FAST, wait_until
from tests.helpers.webhook_receiver import Receiver, serve

pytestmark = pytest.mark.timeout(90)
FILTER = "swarm.evt.namespace.*.created"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as running:
        dispatcher = Dispatcher(Settings(nats_url=running.url), WebhookSettings(**FAST))  # type: ignore[arg-type]
        async with in_this_loop(dispatcher, live_within=None, stop_within=15):
            yield running


async def cli(stack: Stack, *args: str) -> Result:
    argv = [*args, "--nats-url", stack.url]
    return await asyncio.to_thread(lambda: CliRunner().invoke(app, argv))


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


async def emit_failures(stack: Stack, count: int) -> list[str]:
    """Real events, decided by the Hive: `count` namespaces created; returns the events' ids."""
    before = await stack.client.last_sequence(names.STREAM_EVENTS)
    await stack.send(
        [
            (commands.CreateNamespace(name=f"ns-{new_id().lower()[-12:]}"), "user:test")
            for _ in range(count)
        ]
    )
    found: list[str] = []

    async def all_created() -> bool:
        found.clear()
        async for d in stack.client.replay(
            names.STREAM_EVENTS, start_seq=before + 1, subjects=[FILTER]
        ):
            found.append(str(json.loads(d.data)["id"]))
        return len(found) == count

    await wait_until(all_created, what=f"{count} namespaces created")
    return list(found)


async def json_of(stack: Stack, *args: str) -> Any:
    return json.loads(ok(await cli(stack, *args, "-o", "json")).stdout)


async def test_add_ls_deliveries_rm(stack: Stack) -> None:
    with serve(Receiver("")) as receiver:
        added = await json_of(
            stack,
            "webhook",
            "add",
            receiver.url("/ops"),
            "--filter",
            FILTER,
            "--max-attempts",
            "3",
        )
        webhook_id, secret = added["webhook_id"], added["secret"]
        assert secret.startswith("whsec_")
        assert added["outcome"]["type"] == "swarm.command.accepted"
        receiver.secret = secret
        # The log has the fingerprint only; the secret is in its bucket under the webhook id.
        kv = await secrets_bucket(stack.client)
        assert await kv.get(webhook_id) == secret.encode()
        [listed] = (await json_of(stack, "webhook", "ls"))["webhooks"]
        assert listed["webhook_id"] == webhook_id
        assert listed["secret_fingerprint"] == fingerprint(secret)
        assert listed["max_attempts"] == 3
        table = ok(await cli(stack, "webhook", "ls")).stdout
        assert webhook_id in table
        assert secret not in table

        ids = await emit_failures(stack, 3)

        async def arrived() -> bool:
            return len(receiver.on("/ops")) == 3

        await wait_until(arrived, what="3 deliveries")
        for request in receiver.on("/ops"):
            receiver.verify(request)

        async def recorded() -> bool:
            shown = await json_of(stack, "webhook", "deliveries", "--subscription", webhook_id)
            return len(shown["deliveries"]) == 3

        await wait_until(recorded, what="3 recorded attempts")
        shown = (await json_of(stack, "webhook", "deliveries", "-s", webhook_id))["deliveries"]
        assert sorted(d["event_id"] for d in shown) == sorted(ids)
        assert {(d["outcome"], d["status_code"], d["attempt"]) for d in shown} == {
            ("delivered", 200, 1)
        }
        text = ok(await cli(stack, "webhook", "deliveries")).stdout
        assert "LATENCY MS" in text
        assert "delivered" in text

        ok(await cli(stack, "webhook", "rm", webhook_id, "--reason", "test over"))
        assert (await json_of(stack, "webhook", "ls"))["webhooks"] == []
        assert await kv.get(webhook_id) is None
        await emit_failures(stack, 2)
        await asyncio.sleep(1.0)
        assert len(receiver.on("/ops")) == 3  # nothing more after removal


async def test_bad_input_is_refused_before_sending_and_rejections_are_explained(
    stack: Stack,
) -> None:
    bad_filter = await cli(stack, "webhook", "add", "https://example.com/", "--filter", "swarm.>")
    assert bad_filter.exit_code == 2
    assert "swarm.evt." in bad_filter.output
    bad_secret = await cli(
        stack, "webhook", "add", "https://example.com/", "-f", "swarm.evt.>", "--secret", "short"
    )
    assert bad_secret.exit_code == 2
    bad_url = await cli(stack, "webhook", "add", "ftp://example.com/", "-f", "swarm.evt.>")
    assert bad_url.exit_code == 1
    assert "http or https" in bad_url.output
    missing = await cli(stack, "webhook", "rm", "no-such-hook")
    assert missing.exit_code == 1
    assert "not found" in missing.output
    nothing = await cli(stack, "webhook", "redeliver")
    assert nothing.exit_code == 2


async def test_dead_letters_are_listed_and_redelivered(stack: Stack) -> None:
    receiver = Receiver("", script={"/down": [500]})
    with serve(receiver):
        added = await json_of(
            stack,
            "webhook",
            "add",
            receiver.url("/down"),
            "-f",
            FILTER,
            "--max-attempts",
            "2",
        )
        receiver.secret = added["secret"]
        ids = await emit_failures(stack, 2)

        async def dead() -> bool:
            shown = await json_of(stack, "webhook", "deliveries", "--dead")
            return len(shown["dead_letters"]) == 2

        await wait_until(dead, what="2 dead letters")
        unknown = await cli(stack, "webhook", "redeliver", "no-such-event")
        assert unknown.exit_code == 1
        with receiver.lock:
            receiver.script["/down"] = [200]
        ok(await cli(stack, "webhook", "redeliver", ids[0]))

        async def one_left() -> bool:
            shown = await json_of(stack, "webhook", "deliveries", "--dead")
            return [d["event_id"] for d in shown["dead_letters"]] == [ids[1]]

        await wait_until(one_left, what="one dead letter redelivered")
        result = ok(await cli(stack, "webhook", "redeliver", "--all-dead"))
        assert "queued for redelivery" in result.stdout

        async def none_left() -> bool:
            shown = await json_of(stack, "webhook", "deliveries", "--dead")
            return shown["dead_letters"] == []

        await wait_until(none_left, what="no dead letters")
        delivered = [r for r in receiver.on("/down") if r.status == 200]
        assert sorted(r.headers["webhook-id"] for r in delivered) == sorted(ids)
        for r in delivered:
            receiver.verify(r)


async def test_publish_refuses_webhook_add_and_a_published_removal_deletes_the_secret(
    stack: Stack,
) -> None:
    data = {"url": "https://example.com/", "filter": FILTER, "secret_fingerprint": "0" * 16}
    for extra in ([], ["--no-validate"]):
        plain = await cli(
            stack, "publish", "swarm.cmd.webhook.add", "--data", json.dumps(data), *extra
        )
        assert plain.exit_code == 2, plain.output
        assert "swarm webhook add" in plain.output
    assert (await json_of(stack, "webhook", "ls"))["webhooks"] == []

    added = await json_of(stack, "webhook", "add", "https://example.com/", "-f", FILTER)
    kv = await secrets_bucket(stack.client)
    assert await kv.get(added["webhook_id"]) == added["secret"].encode()
    removal = json.dumps({"webhook_id": added["webhook_id"]})
    ok(await cli(stack, "publish", "swarm.cmd.webhook.remove", "--data", removal))
    assert await kv.get(added["webhook_id"]) is None
