"""`python -m swarm.gateway` as a service like the others: checked before it starts, stopped by
the lifecycle (not by uvicorn's own signal handlers), failing loudly when it cannot serve."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import httpx
import pytest

from swarm.devstack.embedded import free_port
from swarm.gateway.server import GatewayFailed, GatewayService
from swarm.gateway.settings import GatewaySettings
from swarm.kernel.lifecycle import SettingsInvalid, Status
from swarm.kernel.settings import Settings
from tests.gateway.client import TOKEN
from tests.helpers.processes import reaped
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _api(port: int = 0) -> GatewaySettings:
    return GatewaySettings(port=port, token=TOKEN)


async def test_the_service_serves_until_stopped(stack: Stack) -> None:
    service = GatewayService(Settings(nats_url=stack.url), _api())
    async with service:
        await asyncio.wait_for(service.listening.wait(), 60)
        assert service.status is Status.RUNNING
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as http:
            assert (await http.get("/healthz")).status_code == 200
            listed = await http.get("/v1/namespaces")
            assert listed.status_code == 200, listed.text
            assert "default" in {n["name"] for n in listed.json()["namespaces"]}
    assert service.status is Status.STOPPED
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=service.url, timeout=5) as http:
            await http.get("/healthz")


async def test_a_service_stopped_before_it_runs_serves_nothing(stack: Stack) -> None:
    service = GatewayService(Settings(nats_url=stack.url), _api())
    service.stop()
    await service.run()
    assert service.status is Status.STOPPED
    assert not service.listening.is_set()


def test_no_token_is_refused_before_anything_starts() -> None:
    service = GatewayService(Settings(nats_url="nats://127.0.0.1:1"), GatewaySettings())
    with pytest.raises(SettingsInvalid, match="no API token"):
        service.check()


async def test_a_port_taken_is_a_failure_not_a_quiet_exit(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = GatewayService(Settings(nats_url=stack.url), _api(port))
        await service.start()
        with pytest.raises(GatewayFailed, match=str(port)):
            await service.wait()
    assert service.status is Status.FAILED


async def test_sigterm_stops_the_process_cleanly(stack: Stack) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SWARM_NATS_URL": stack.url,
        "SWARM_API_PORT": str(port),
        "SWARM_API_TOKEN": TOKEN,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "swarm.gateway",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with reaped(process):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def healthy() -> bool:
                assert process.returncode is None, "the gateway exited before serving"
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(healthy, 90, "the gateway serving")
        process.send_signal(signal.SIGTERM)
        _, raw = await asyncio.wait_for(process.communicate(), 60)
    err = raw.decode(errors="replace")
    assert process.returncode == 0, err
    assert "Traceback" not in err
