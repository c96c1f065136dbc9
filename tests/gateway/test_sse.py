"""The live event stream over a real HTTP server: filtered by subject, resumable by id."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.gateway.client import AUTH, TOKEN
from tests.gateway.server import serving
from tests.helpers.history import WASM
from tests.helpers.stack import Stack

pytestmark = pytest.mark.timeout(60)

SPEC = {"version": "v1", "module": {"inline": WASM}}


async def frames(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """SSE frames (fields by name); comments are skipped."""
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            frame[field] = value.removeprefix(" ")


async def next_event(response: httpx.Response) -> dict[str, Any]:
    async for frame in frames(response):
        if "data" in frame:
            data: dict[str, Any] = json.loads(frame["data"])
            assert frame["id"] == str(data["seq"])
            assert frame["event"] == data["event"]["type"]
            return data
    raise AssertionError("the stream ended")


async def test_stream_is_filtered_and_resumes_after_last_event_id(stack: Stack) -> None:
    with serving(stack.url, TOKEN) as url:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=20) as client:
            params = {"subject": "swarm.evt.namespace.>"}
            async with client.stream("GET", "/v1/events/stream", params=params) as live:
                assert live.status_code == 200
                assert live.headers["content-type"].startswith("text/event-stream")
                # An agent's events do not match the filter; the namespace's do.
                deployed = await client.post(
                    "/v1/namespaces/default/agents", json={"name": "noise", "spec": SPEC}
                )
                assert deployed.json()["status"] == "accepted", deployed.text
                created = await client.post("/v1/namespaces", json={"name": "streamed"})
                assert created.json()["status"] == "accepted", created.text
                first = await next_event(live)
            assert first["subject"].startswith("swarm.evt.namespace.")
            assert first["event"]["data"]["name"] == "streamed"

            # While no one listens, another namespace; a reconnect with Last-Event-ID gets it
            # and not the one it saw already.
            await client.post("/v1/namespaces", json={"name": "missed"})
            resume = {"Last-Event-ID": str(first["seq"])}
            async with client.stream(
                "GET", "/v1/events/stream", params=params, headers=resume
            ) as again:
                assert again.status_code == 200
                second = await next_event(again)
            assert second["seq"] > first["seq"]
            assert second["event"]["data"]["name"] == "missed"

            unauthorized = await client.get("/v1/events/stream", headers={"Authorization": ""})
            assert unauthorized.status_code == 401
