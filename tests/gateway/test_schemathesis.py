"""Schemathesis against the API's own OpenAPI document: no request it generates, valid or not,
gets a server error (5xx), and every error is a problem document, with a real Hive deciding
every command behind the API."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from swarm.devstack.stack import upgrade_database
from tests.gateway.client import AUTH, TOKEN
from tests.gateway.server import scheduler, serving
from tests.helpers.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: Examples per operation and generation mode: enough to reach every status the routes have,
#: few enough to keep the run within about a minute on a shared machine.
EXAMPLES = 12
STREAM = "/v1/events/stream"
PROBLEM = "application/problem+json"


def fuzz(base_url: str, document: dict[str, Any]) -> dict[str, int]:
    """Run every operation's generated cases; returns how many calls each status got."""
    schema = schemathesis.openapi.from_dict(document)
    statuses: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                if case.path == STREAM:
                    # Never ends by design: look at the status and the first bytes only.
                    kwargs = case.as_transport_kwargs(base_url=base_url, headers=AUTH)
                    with httpx.stream(
                        kwargs["method"],
                        kwargs["url"],
                        params=kwargs.get("params"),
                        headers=kwargs.get("headers"),
                        timeout=10,
                    ) as response:
                        status = response.status_code
                        assert status < 500, f"{case.as_curl_command(AUTH)} -> {status}"
                else:
                    response = case.call(base_url=base_url, headers=AUTH, timeout=30)
                    status = response.status_code
                    case.validate_response(response, checks=[not_a_server_error])
                    if status >= 400:
                        # Every error, whichever layer refused the request, has the one shape.
                        # schemathesis keeps every value of a header, as a list.
                        kind = (response.headers.get("content-type") or [""])[0]
                        assert kind.startswith(PROBLEM), f"{case.as_curl_command(AUTH)}: {kind}"
                        assert response.json()["status"] == status
                key = f"{status}"
                statuses[key] = statuses.get(key, 0) + 1

            try:
                check()
            except Unsatisfiable:
                # Nothing to make invalid: an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
    return statuses


async def test_schemathesis_finds_no_server_errors(stack: Stack, database_url: str) -> None:
    # A scheduler and a database too, so `GET /v1/market` and `…/similar` have them to ask
    # (without, their 503 is by design).
    await asyncio.to_thread(upgrade_database, database_url)
    async with scheduler(stack.url):
        with serving(stack.url, TOKEN, database_url) as url:
            # The document is built on its first request: seconds on a loaded machine (httpx's
            # default 5 s ran out in a stress run).
            async with httpx.AsyncClient(timeout=60, headers=AUTH) as client:
                document = (await client.get(f"{url}/openapi.json")).json()
            # In a thread: the Hive deciding the commands runs in this test's event loop.
            statuses = await asyncio.to_thread(fuzz, url, document)
    print("responses by status:", dict(sorted(statuses.items())))
    assert not any(s.startswith("5") for s in statuses), statuses
    # The run reached the routes' real work, not only their validation.
    assert statuses.get("200", 0) > 50, statuses
    assert statuses.get("422", 0) > 20, statuses
