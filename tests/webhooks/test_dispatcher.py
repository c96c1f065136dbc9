"""The dispatcher against a real nats-server and a real HTTP receiver."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from schemas import events, names
from schemas.specs import Capacity
from tests.helpers.webhook_bed import Bed, bed, wait_until
from tests.helpers.webhook_receiver import Receiver, serve


@pytest.fixture
async def tb(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with bed(tmp_path) as b:
        yield b


def _received_ids(receiver: Receiver, path: str) -> list[str]:
    return [r.headers["webhook-id"] for r in receiver.on(path)]


async def test_deliveries_are_structured_cloudevents_signed_per_standard_webhooks(tb: Bed) -> None:
    with serve(Receiver(tb.secret)) as receiver:
        hook = await tb.add_hook(receiver.url("/hook"), "swarm.evt.agent.*.replica_failed")
        async with tb.dispatcher():
            ids = await tb.agent_events(5)

            async def all_in() -> bool:
                return len(receiver.on("/hook")) >= 5

            await wait_until(all_in, what="5 deliveries")
        stored = {
            d.subject: d.data
            async for d in tb.log.replay(names.STREAM_EVENTS, subjects=["swarm.evt.agent.>"])
        }
        for request in receiver.on("/hook"):
            payload = receiver.verify(request)  # raises unless signed with the secret
            assert request.headers["content-type"] == "application/cloudevents+json"
            assert request.headers["webhook-id"] == payload["id"]
            assert payload["specversion"] == "1.0"
            assert payload["type"] == "swarm.agent.replica_failed"
            # The body is the event exactly as stored on the log.
            assert request.body in stored.values()
        assert sorted(_received_ids(receiver, "/hook")) == sorted(ids)
        attempts = await tb.attempts(hook)
        assert sorted(a.event_id for a in attempts) == sorted(ids)
        assert all(a.outcome == "delivered" and a.status_code == 200 for a in attempts)
        assert all(a.attempt == 1 and a.latency_ms > 0 for a in attempts)


async def test_a_wrong_secret_does_not_verify(tb: Bed) -> None:
    """The check above can fail: a receiver holding another secret rejects the deliveries."""
    other = Receiver("whsec_" + "A" * 43)
    with serve(other) as receiver:
        await tb.add_hook(receiver.url("/hook"), "swarm.evt.agent.>")
        async with tb.dispatcher():
            await tb.agent_events(1)

            async def got() -> bool:
                return len(receiver.on("/hook")) == 1

            await wait_until(got, what="a delivery")
        from tests.helpers.webhook_receiver import WebhookVerificationError

        with pytest.raises(WebhookVerificationError):
            receiver.verify(receiver.on("/hook")[0])


async def test_500_twice_then_200_is_delivered_with_three_attempts_recorded(tb: Bed) -> None:
    with serve(Receiver(tb.secret, script={"/flaky": [500, 500, 200]})) as receiver:
        hook = await tb.add_hook(receiver.url("/flaky"), "swarm.evt.agent.>")
        async with tb.dispatcher():
            [event_id] = await tb.agent_events(1)

            async def delivered() -> bool:
                return any(a.outcome == "delivered" for a in await tb.attempts(hook))

            await wait_until(delivered, what="delivery after retries")
        attempts = sorted(await tb.attempts(hook), key=lambda a: a.attempt)
        assert [(a.attempt, a.outcome, a.status_code) for a in attempts] == [
            (1, "failed", 500),
            (2, "failed", 500),
            (3, "delivered", 200),
        ]
        assert {a.event_id for a in attempts} == {event_id}
        requests = receiver.on("/flaky")
        assert [r.status for r in requests] == [500, 500, 200]
        # The same webhook-id on every attempt, so a receiver can drop duplicates.
        assert {r.headers["webhook-id"] for r in requests} == {event_id}
        for r in requests:
            receiver.verify(r)
        assert await tb.dead_letters() == []


async def test_filters_match_exactly_what_they_say(tb: Bed) -> None:
    with serve(Receiver(tb.secret)) as receiver:
        one = await tb.add_hook(receiver.url("/one"), "swarm.evt.agent.*.replica_failed")
        deep = await tb.add_hook(receiver.url("/deep"), "swarm.evt.agent.>")
        pods = await tb.add_hook(receiver.url("/pods"), "swarm.evt.pod.*.lost")
        exact_agent = "agent-exact"
        exact = await tb.add_hook(
            receiver.url("/exact"), f"swarm.evt.agent.{exact_agent}.status_changed"
        )
        async with tb.dispatcher() as dispatcher:
            failed = await tb.agent_events(3, "replica_failed")
            changed = await tb.agent_events(2, "status_changed")
            lost_seq = await tb.append(events.PodLost(pod_id="pod-9", reason="test"), "pod-9")
            await tb.append(
                events.PodRegistered(
                    pod_id="pod-8",
                    capacity=Capacity(memory_mb=1, fuel_per_s=1, slots=1),
                    labels={},
                    zone="z",
                    energy_cost=0.0,
                    lease_s=10.0,
                ),
                "pod-8",
            )
            mine = await tb.append(
                events.AgentStatusChanged(
                    agent_id=exact_agent, status="failed", previous="running", reason="x"
                ),
                exact_agent,
            )

            async def settled() -> bool:
                counts = dispatcher.counts()
                return counts["delivered"] >= 3 + 6 + 1 + 1

            await wait_until(settled, what="all matching deliveries")
            await asyncio.sleep(0.5)  # anything wrongly matched would arrive meanwhile
        assert sorted(_received_ids(receiver, "/one")) == sorted(failed)
        deep_ids = _received_ids(receiver, "/deep")
        assert len(deep_ids) == 6
        assert set(failed + changed) < set(deep_ids)
        [pod_event] = receiver.on("/pods")
        assert pod_event.event["type"] == "swarm.pod.lost"
        [exact_event] = receiver.on("/exact")
        assert exact_event.event["subject"] == exact_agent
        assert lost_seq
        assert mine
        # Subscriptions' own events and other aggregates never reach an agent filter.
        assert not any(r.event["type"].startswith("swarm.webhook.") for r in receiver.received)
        for hook, n in ((one, 3), (deep, 6), (pods, 1), (exact, 1)):
            assert len(await tb.attempts(hook)) == n


async def test_private_targets_are_refused_recorded_and_dead_lettered(tb: Bed) -> None:
    with serve(Receiver(tb.secret)) as receiver:
        hook = await tb.add_hook(receiver.url("/inside"), "swarm.evt.agent.>")
        async with tb.dispatcher(allow_private=False):
            [event_id] = await tb.agent_events(1)

            async def recorded() -> bool:
                return bool(await tb.attempts(hook))

            await wait_until(recorded, what="the refusal record")
        [attempt] = await tb.attempts(hook)
        assert attempt.outcome == "refused"
        assert attempt.dead_lettered
        assert "127.0.0.1" in attempt.error
        assert "loopback" in attempt.error
        assert receiver.received == []
        [letter] = await tb.dead_letters()
        assert (letter.webhook_id, letter.event_id) == (hook, event_id)


async def test_redirects_are_not_followed(tb: Bed) -> None:
    receiver = Receiver(tb.secret, script={"/moved": [302]})
    with serve(receiver):
        receiver.locations["/moved"] = receiver.url("/target")
        hook = await tb.add_hook(receiver.url("/moved"), "swarm.evt.agent.>", max_attempts=2)
        async with tb.dispatcher():
            await tb.agent_events(1)

            async def dead() -> bool:
                return any(a.dead_lettered for a in await tb.attempts(hook))

            await wait_until(dead, what="dead letter after redirects")
        attempts = sorted(await tb.attempts(hook), key=lambda a: a.attempt)
        assert [(a.outcome, a.status_code) for a in attempts] == [("failed", 302)] * 2
        assert "redirect to" in attempts[0].error
        assert "/target" in attempts[0].error
        assert receiver.on("/target") == []
        assert len(receiver.on("/moved")) == 2


async def test_dead_letters_are_redelivered_on_request(tb: Bed) -> None:
    receiver = Receiver(tb.secret, script={"/down": [503]})
    with serve(receiver):
        hook = await tb.add_hook(receiver.url("/down"), "swarm.evt.agent.>", max_attempts=2)
        async with tb.dispatcher():
            ids = await tb.agent_events(3)

            async def all_dead() -> bool:
                return len(await tb.dead_letters()) == 3

            await wait_until(all_dead, what="3 dead letters")
            with receiver.lock:
                receiver.script["/down"] = [200]
            # One named event first, then all the rest.
            await tb.redeliver(hook, [ids[0]])

            async def first_back() -> bool:
                return {d.event_id for d in await tb.dead_letters()} == set(ids[1:])

            await wait_until(first_back, what="the named event redelivered")
            await tb.redeliver(hook)

            async def none_dead() -> bool:
                return await tb.dead_letters() == []

            await wait_until(none_dead, what="all dead letters redelivered")
        delivered = [r for r in receiver.on("/down") if r.status == 200]
        assert sorted(r.headers["webhook-id"] for r in delivered) == sorted(ids)
        attempts = await tb.attempts(hook)
        per_event = Counter(a.event_id for a in attempts)
        assert per_event == dict.fromkeys(ids, 3)
        redelivered = [a for a in attempts if a.redelivery]
        assert sorted(a.event_id for a in redelivered) == sorted(ids)
        assert all(a.attempt == 3 and a.outcome == "delivered" for a in redelivered)
