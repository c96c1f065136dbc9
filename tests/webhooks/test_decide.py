"""The Hive's rules for webhook subscriptions, decided and folded in memory."""

from __future__ import annotations

import pytest

from schemas import names
from schemas.webhooks import (
    AddWebhook,
    RedeliverWebhook,
    RemoveWebhook,
    WebhookAdded,
    WebhookRedeliveryRequested,
    WebhookRemoved,
    filter_problem,
)
from services.hive.queries import QUERIES, rendered
from swarm.domain.policy import Reader
from tests.helpers.sim import Sim

FP = "0123456789abcdef"


def add(
    url: str = "https://example.com/hook", filter: str = "swarm.evt.agent.>", **kw: object
) -> AddWebhook:
    return AddWebhook(url=url, filter=filter, secret_fingerprint=FP, **kw)  # type: ignore[arg-type]


def test_add_records_the_subscription_with_the_command_id_as_its_id() -> None:
    sim = Sim()
    [added] = sim.ok(add(max_attempts=3, description="ops"))
    assert isinstance(added, WebhookAdded)
    hook = sim.state.webhooks[added.webhook_id]
    assert (hook.url, hook.filter, hook.max_attempts, hook.secret_fingerprint) == (
        "https://example.com/hook",
        "swarm.evt.agent.>",
        3,
        FP,
    )
    assert hook.added_seq == hook.last_seq == sim.seq
    listed = rendered(QUERIES[names.QUERY_WEBHOOKS_LIST](sim.state, {}, Reader()))["webhooks"]
    assert [h["webhook_id"] for h in listed] == [added.webhook_id]
    assert "secret" not in {k for h in listed for k in h} - {"secret_fingerprint"}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("example.com/hook", "http or https"),
        ("https:///nohost", "names no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "malformed"),
        ("http://exa mple.com/", "white space"),
    ],
)
def test_malformed_urls_are_rejected_with_the_field_named(url: str, why: str) -> None:
    rejection = Sim().rejected(add(url=url))
    assert rejection.rule == "invalid"
    assert why in rejection.reason
    assert rejection.errors[0]["loc"] == "url"


@pytest.mark.parametrize(
    "pattern",
    [
        "swarm.cmd.agent.deploy",  # commands are not events
        "swarm.evt",  # nothing below the root
        "swarm.>",
        "swarm.evt.>.agent",  # '>' not last
        "swarm.evt.agent..failed",  # empty token
        "swarm.evt.age*nt.>",  # partial wildcard
        "swarm.evt.agent.*.fa iled",
        "swarm.evt.agent.*.failed.",
    ],
)
def test_bad_filters_are_rejected(pattern: str) -> None:
    assert filter_problem(pattern) is not None
    rejection = Sim().rejected(add(filter=pattern))
    assert rejection.rule == "invalid"
    assert rejection.errors[0]["loc"] == "filter"


@pytest.mark.parametrize(
    "pattern",
    [
        "swarm.evt.>",
        "swarm.evt.agent.*.replica_failed",
        "swarm.evt.*.*.status_changed",
        "swarm.evt.pod.pod-1.lost",
    ],
)
def test_good_filters_pass(pattern: str) -> None:
    assert filter_problem(pattern) is None
    Sim().ok(add(filter=pattern))


def test_the_same_url_and_filter_twice_is_a_duplicate_but_other_filters_are_not() -> None:
    sim = Sim()
    [first] = sim.ok(add())
    rejection = sim.rejected(add())
    assert rejection.rule == "duplicate"
    assert first.webhook_id in rejection.reason  # type: ignore[attr-defined]
    sim.ok(add(filter="swarm.evt.pod.>"))
    sim.ok(add(url="https://example.com/other"))


def test_remove_then_the_same_subscription_may_be_added_again() -> None:
    sim = Sim()
    [added] = sim.ok(add())
    webhook_id = added.webhook_id  # type: ignore[attr-defined]
    [removed] = sim.ok(RemoveWebhook(webhook_id=webhook_id, reason="done"))
    assert isinstance(removed, WebhookRemoved)
    assert sim.state.webhooks[webhook_id].removed
    assert rendered(QUERIES[names.QUERY_WEBHOOKS_LIST](sim.state, {}, Reader()))["webhooks"] == []
    assert sim.rejected(RemoveWebhook(webhook_id=webhook_id)).rule == "not_found"
    sim.ok(add())


def test_redeliver_needs_a_live_subscription() -> None:
    sim = Sim()
    assert sim.rejected(RedeliverWebhook(webhook_id="nope")).rule == "not_found"
    [added] = sim.ok(add())
    webhook_id = added.webhook_id  # type: ignore[attr-defined]
    [requested] = sim.ok(RedeliverWebhook(webhook_id=webhook_id, event_ids=["e1"]))
    assert isinstance(requested, WebhookRedeliveryRequested)
    assert requested.event_ids == ["e1"]
    # Each event of the aggregate moves its sequence, which the Hive's conditional appends use.
    assert sim.state.webhooks[webhook_id].last_seq == sim.seq
    sim.ok(RemoveWebhook(webhook_id=webhook_id))
    assert sim.rejected(RedeliverWebhook(webhook_id=webhook_id)).rule == "not_found"


def test_agents_may_not_add_webhooks_unless_their_autonomy_allows() -> None:
    rejection = Sim().rejected(add(), identity="agent:someone")
    assert rejection.rule == "autonomy"
