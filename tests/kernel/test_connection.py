"""`connect_nats`: a first connection that gives up by itself, then the reconnects asked for."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from swarm.devstack.embedded import EmbeddedNats, free_port
from swarm.kernel.connection import CannotConnect, connect_nats, nats_servers
from tests.helpers.waiting import true, wait_until


def _closed_port_url() -> str:
    return f"nats://127.0.0.1:{free_port()}"


def _other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


def test_a_cluster_url_names_each_server() -> None:
    assert nats_servers(" nats://a:1 , nats://b:2,, ") == ["nats://a:1", "nats://b:2"]
    assert nats_servers("") == []


async def test_an_unreachable_server_fails_by_itself_and_leaves_nothing_running() -> None:
    before = _other_tasks()
    url = _closed_port_url()
    with pytest.raises(CannotConnect) as caught:
        # No outer timeout: the attempts end the call (the test's own timeout would catch a hang).
        await connect_nats(url, name="pytest", timeout=2, attempts=3)
    assert isinstance(caught.value.cause, ConnectionRefusedError)
    assert str(caught.value).startswith(f"cannot reach NATS at {url}: ")
    assert "Connect call failed" in str(caught.value)
    await asyncio.sleep(0)  # let cancelled helpers finish
    assert _other_tasks() <= before  # no retry loop left behind


async def test_no_server_at_all_is_a_clear_error() -> None:
    with pytest.raises(CannotConnect, match="no server URL given"):
        await connect_nats(" , ", name="pytest", timeout=1)


async def test_the_first_server_that_answers_is_taken(nats_url: str) -> None:
    nc = await connect_nats(f"{_closed_port_url()},{nats_url}", name="pytest", timeout=2)
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
        assert f"{nc.connected_url.hostname}:{nc.connected_url.port}" in nats_url
    finally:
        await nc.close()


async def test_a_service_connection_reconnects_past_the_first_attempts(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await connect_nats(url, name="pytest", timeout=1, attempts=1, on_error=on_error)
    try:
        server.stop()
        # More failed reconnects than the first connection was allowed: still trying.
        await wait_until(lambda: true(len(errors) > 3), 30, "reconnect attempts")
        assert nc.is_reconnecting
        assert not nc.is_closed
        server.start(same_port=True)
        await wait_until(lambda: true(nc.is_connected), 30, "the client reconnected")
        await nc.publish("pytest.after", b"x")
        await nc.flush(timeout=5)
    finally:
        await nc.close()
        server.stop()


async def test_a_one_shot_connection_closes_when_the_server_goes(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    nc = await connect_nats(url, name="pytest", timeout=1, reconnects=0)
    try:
        server.stop()
        await wait_until(lambda: true(nc.is_closed), 30, "the client closed")
    finally:
        await nc.close()
        server.stop()
