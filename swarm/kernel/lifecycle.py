"""One lifecycle for every long-running part of Swarm: the Hive, the scheduler, the autoscaler,
the Observer, the webhook dispatcher and the pods.

Each was written with its own start, stop, status enum, settings check and signal handling, and
a fix made to one (cancelling until done, `swarm.kernel.tasks`) did not reach the others. A
service here implements `serve()` (run until `stopping` is set) and, if it needs more than a log
connection, `check()` (its settings, validated before anything starts); the base gives it:

- `run()`: check, then serve, with `status` going NEW -> RUNNING -> STOPPING -> STOPPED (FAILED
  when `serve` raised, with `error`); a service stopped before it ran does nothing;
- `stop()`: ask it to stop, safe before start and twice, from a signal handler too;
- `start()` / `wait()` / `aclose()` and `async with`: run it as a task, wait for it, and stop it
  for sure (asked first, then cancelled until done after `grace` seconds);
- `run_until_signalled(*services)`: a process's main: a wrong setting exits with its reason
  before anything starts, SIGTERM and SIGINT stop them all, the first that fails stops the
  others, and its error is raised.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import signal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from swarm.kernel.tasks import cancel_and_wait, failure

if TYPE_CHECKING:
    # Only a type here: the CLI imports this module (through `swarm.client.lifecycle`) on every
    # verb, which must not pay for pydantic-settings.
    from swarm.kernel.settings import Settings


class Status(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    #: `serve` raised (`Service.error`).
    FAILED = "failed"


class SettingsInvalid(Exception):
    """A service's settings cannot work; raised by `run()` before anything starts."""


class Service(abc.ABC):
    #: The name in logs and `describe()`.
    name: str = "service"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = Status.NEW
        #: Why `serve` ended, when it raised.
        self.error: BaseException | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what a service implements -----------------------------------------------------------

    @abc.abstractmethod
    async def serve(self) -> None:
        """Do the service's work until `stopping` is set, then clean up and return."""

    def check(self) -> None:
        """Validate the settings before anything starts (raise `SettingsInvalid`). Every
        service talks to the log."""
        _ = self.nats_url

    @property
    def nats_url(self) -> str:
        url = self.settings.nats_url
        if url is None:
            raise SettingsInvalid("SWARM_NATS_URL is not set")
        return url

    def on_stop(self) -> None:  # noqa: B027 (a hook: most services need nothing here)
        """Called by `stop()` (the first time), for a service that must pass the request on."""

    # -- the lifecycle -----------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the service to stop; safe before start, twice, and from a signal handler."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.status is Status.RUNNING:
            self.status = Status.STOPPING
        self.on_stop()

    async def run(self) -> None:
        """Check the settings, then serve until stopped."""
        if self._stop.is_set():
            self.status = Status.STOPPED
            return
        self.check()
        self.status = Status.RUNNING
        try:
            await self.serve()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.error = exc
            self.status = Status.STOPPED if self.error is None else Status.FAILED
            raise
        self.status = Status.STOPPED

    async def start(self) -> Self:
        """Run the service as a task (`wait`, `aclose`); a wrong setting is raised here."""
        if self._task is not None:
            raise RuntimeError(f"{self.name} was started already")
        self.check()
        self._task = asyncio.create_task(self.run(), name=self.name)
        await asyncio.sleep(0)  # let it begin
        return self

    async def wait(self) -> None:
        """Until the started service ends; its error, if it failed, is raised."""
        if self._task is None:
            raise RuntimeError(f"{self.name} was not started")
        await asyncio.wait([self._task])
        error = failure(self._task)
        if error is not None:
            raise error

    async def aclose(self, grace: float = 10.0) -> None:
        """Stop the started service: asked, then cancelled until done after `grace` seconds.
        Its error, if it failed, is raised."""
        self.stop()
        task = self._task
        if task is None:
            return
        _, pending = await asyncio.wait([task], timeout=grace)
        await cancel_and_wait(pending)
        if self.status in (Status.RUNNING, Status.STOPPING):
            self.status = Status.STOPPED  # cancelled before `serve` could say so
        error = failure(task)
        if error is not None:
            raise error

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def describe(self) -> dict[str, Any]:
        """What `swarm` status views show of the service."""
        return {
            "name": self.name,
            "status": self.status.value,
            "error": None if self.error is None else repr(self.error),
        }


async def run_until_signalled(*services: Service) -> None:
    """A service process's main: run `services` together until SIGTERM or SIGINT stops them;
    the first that fails stops the others, and its error is raised once all have ended."""
    for service in services:
        try:
            service.check()  # every wrong setting before anything starts
        except SettingsInvalid as exc:
            raise SystemExit(f"{service.name}: {exc}") from None
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for service in services:
            service.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    tasks = [asyncio.create_task(s.run(), name=s.name) for s in services]
    try:
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(failure(t) is not None for t in done):
                stop_all()
    finally:
        stop_all()
        await cancel_and_wait(tasks)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    for task in tasks:
        error = failure(task)
        if error is not None:
            raise error


__all__ = ["Service", "SettingsInvalid", "Status", "run_until_signalled"]
