"""One lifecycle for every service (swarm.kernel.lifecycle): stop before start, failure, a
service that ignores its stop, several services in one process, signals and wrong settings,
with the real services on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.observer import Observer, ObserverSettings
from services.scheduler import Scheduler
from services.scheduler.autoscaler_service import AutoscalerService, AutoscalerSettings
from services.webhooks.service import Dispatcher
from swarm.kernel.lifecycle import Service, SettingsInvalid, Status, run_until_signalled
from swarm.kernel.settings import Settings
from tests.helpers.processes import service_process
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def status_of(service: Service) -> Status:
    """Read anew each time (mypy would take an earlier assert as still true)."""
    return service.status


class Sleeper(Service):
    """Serves until stopped, or fails with `fail` once started, or ignores its stop."""

    name = "sleeper"

    def __init__(self, settings: Settings, *, fail: Exception | None = None, deaf: bool = False):
        super().__init__(settings)
        self.fail = fail
        self.deaf = deaf
        self.served = asyncio.Event()
        self.cleaned = False

    async def serve(self) -> None:
        self.served.set()
        try:
            if self.fail is not None:
                raise self.fail
            if self.deaf:
                await asyncio.Event().wait()
            await self._stop.wait()
        finally:
            self.cleaned = True


async def test_a_service_stopped_before_it_runs_does_nothing(settings: Settings) -> None:
    service = Sleeper(settings)
    service.stop()
    service.stop()  # twice is fine
    await service.run()
    assert service.status is Status.STOPPED
    assert not service.served.is_set()


async def test_a_service_runs_until_stopped_and_says_where_it_is(settings: Settings) -> None:
    service = Sleeper(settings)
    assert status_of(service) is Status.NEW
    async with service:
        await asyncio.wait_for(service.served.wait(), 10)
        assert status_of(service) is Status.RUNNING
        service.stop()
        assert status_of(service) is Status.STOPPING
    assert status_of(service) is Status.STOPPED
    assert service.cleaned
    assert service.describe() == {"name": "sleeper", "status": "stopped", "error": None}


async def test_a_failing_service_is_failed_and_its_error_raised(settings: Settings) -> None:
    service = await Sleeper(settings, fail=ValueError("broken")).start()
    with pytest.raises(ValueError, match="broken"):
        await service.wait()
    assert service.status is Status.FAILED
    assert service.describe()["error"] == "ValueError('broken')"
    assert service.cleaned


async def test_a_service_that_ignores_its_stop_is_cancelled_until_done(
    settings: Settings,
) -> None:
    service = await Sleeper(settings, deaf=True).start()
    await asyncio.wait_for(service.served.wait(), 10)
    await asyncio.wait_for(service.aclose(grace=0.1), 10)
    assert service.status is Status.STOPPED
    assert service.cleaned


async def test_a_service_without_a_log_is_refused_before_it_starts() -> None:
    service = Sleeper(Settings(nats_url=None))
    with pytest.raises(SettingsInvalid, match="SWARM_NATS_URL is not set"):
        await service.start()
    with pytest.raises(SettingsInvalid):
        await service.run()
    assert not service.served.is_set()


async def test_one_failing_service_stops_the_others_of_its_process(settings: Settings) -> None:
    healthy = Sleeper(settings)
    failing = Sleeper(settings, fail=RuntimeError("lost the log"))
    with pytest.raises(RuntimeError, match="lost the log"):
        await asyncio.wait_for(run_until_signalled(healthy, failing), 30)
    assert healthy.status is Status.STOPPED
    assert healthy.cleaned
    assert failing.status is Status.FAILED


async def test_the_real_services_share_the_lifecycle(settings: Settings) -> None:
    """Started and stopped the same way, on a real nats-server."""
    services: list[Service] = [
        Scheduler(settings),
        AutoscalerService(settings, AutoscalerSettings()),
        Observer(settings, ObserverSettings(store_behaviour=False)),
        Dispatcher(settings),
    ]
    for service in services:
        async with service:
            assert status_of(service) is Status.RUNNING
            live = getattr(service, "live")  # noqa: B009 (every one of them has its own)
            await asyncio.wait_for(live.wait(), 60)
        assert status_of(service) is Status.STOPPED, service.describe()


def run_module(module: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m module` with no `SWARM_*` variable but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "module",
    ["services.hive", "services.observer", "services.scheduler", "services.webhooks", "runtime"],
)
def test_a_service_process_without_a_log_exits_with_the_reason(module: str) -> None:
    done = run_module(module, SWARM_HIVE_RAFT_PASSWORD="a-long-secret")
    assert done.returncode == 1
    last = done.stderr.decode(errors="replace").strip().splitlines()[-1]
    assert last.endswith(": SWARM_NATS_URL is not set"), done.stderr[-2000:]
    assert b"Traceback" not in done.stderr


def test_a_wrong_setting_is_named_in_one_line_not_a_traceback() -> None:
    done = run_module("services.hive", SWARM_NATS_URL="nats://127.0.0.1:1")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        b"invalid hive setting: SWARM_HIVE_RAFT_PASSWORD (or SWARM_HIVE_RAFT_PASSWORD_FILE) "
        b"is required"
    ), done.stderr[-2000:]
    done = run_module("services.observer", SWARM_OBSERVER_WINDOW_S="soon")
    assert done.returncode == 1
    assert b"invalid observer setting: SWARM_OBSERVER_WINDOW_S: " in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr


async def test_sigterm_stops_a_service_process_cleanly(nats_url: str, tmp_path: Path) -> None:
    """The scheduler process runs two services (placement and the autoscaler); SIGTERM stops
    both and the process exits 0."""
    log_path = tmp_path / "scheduler.log"
    with service_process("services.scheduler", {"SWARM_NATS_URL": nats_url}, log_path) as proc:

        async def started() -> bool:
            text = log_path.read_text(errors="replace")
            return "scheduler started" in text and "autoscaler started" in text

        await wait_until(started, 60, "the scheduler process started")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    text = log_path.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "scheduler stopped" in text, text[-3000:]
    assert "autoscaler stopped" in text, text[-3000:]
