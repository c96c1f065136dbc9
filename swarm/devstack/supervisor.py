"""Keep a set of child processes alive: start them, restart crashes with backoff, stop them.

The model is supervisord's and Kubernetes' CrashLoopBackOff: a child counts as `running` once it
has stayed up for `start_seconds`; a child that exits (for any reason, while we did not ask it
to) waits an exponentially growing, capped delay before it is started again, and a child that
ran for `reset_after` seconds before exiting starts over from the shortest delay.

Every child gets a parent-death signal, so none outlives the supervisor even when the supervisor
is SIGKILLed, and its own process group, so a Ctrl-C in the supervisor's terminal reaches only
the supervisor, which then stops the children in order instead of all at once.

The supervisor is driven by `poll()` from the caller's loop (on the thread that created it: the
parent-death signal fires when the *thread* that forked the child exits, not the process).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from swarm.devstack.embedded import private_fd, spawn

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class ServiceState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A program to keep running: its name (also its log file's name), argv and extra env."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"service name {self.name!r} must match {_NAME.pattern}")
        if not self.argv:
            raise ValueError(f"service {self.name!r} has an empty command")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    #: Delay before the first restart; each further crash in a row multiplies it by `factor`.
    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    #: A child that stays up this long counts as started (starting -> running).
    start_seconds: float = 1.0
    #: A child that ran this long before it exited restarts from `initial_delay` again.
    reset_after: float = 30.0
    #: Give up (state `failed`) after this many crashes in a row; None keeps trying forever,
    #: as a dependency that is down for a while is no reason to stop retrying for good.
    max_failures: int | None = None

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th crash in a row (1-based)."""
        return min(self.initial_delay * self.factor ** max(failures - 1, 0), self.max_delay)

    def failures_after(self, failures: int, ran_for: float) -> int:
        """Crashes in a row, counting one more after a run of `ran_for` seconds: one that lasted
        `reset_after` is the first of a new row (services and embedded servers count alike)."""
        return 1 if ran_for >= self.reset_after else failures + 1


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What the supervisor knows about one service, as written to the stack's state file."""

    name: str
    state: ServiceState
    pid: int | None
    restarts: int
    log: str
    last_exit: int | None = None
    #: Why the service is `failed`, or what its last exit looked like.
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "error": self.error,
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            name=str(data["name"]),
            state=ServiceState(data["state"]),
            pid=_int_or_none(data.get("pid")),
            restarts=int(data.get("restarts", 0)),
            log=str(data.get("log", "")),
            last_exit=_int_or_none(data.get("last_exit")),
            error=data.get("error"),
        )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(slots=True)
class _Child:
    spec: ServiceSpec
    log_path: Path
    state: ServiceState = ServiceState.STOPPED
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    failures: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    last_exit: int | None = None
    error: str | None = None

    def status(self) -> ServiceStatus:
        running = self.proc is not None and self.state in (
            ServiceState.STARTING,
            ServiceState.RUNNING,
        )
        return ServiceStatus(
            name=self.spec.name,
            state=self.state,
            pid=self.proc.pid if running and self.proc is not None else None,
            restarts=self.restarts,
            log=str(self.log_path),
            last_exit=self.last_exit,
            error=self.error,
        )


class Supervisor:
    """Starts `specs` as child processes and keeps them running until `stop()`.

    `env` is the base environment of every child (the supervisor's own when None); a spec's env
    is laid over it. Each child's stdout and stderr go to `<log_dir>/<name>.log`. `on_change`
    is called with every service's status whenever one of them changes state.
    """

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        policy: RestartPolicy | None = None,
        on_change: Callable[[list[ServiceStatus]], object] | None = None,
    ) -> None:
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"service names must be unique: {', '.join(duplicates)}")
        self.log_dir = log_dir
        self.env = dict(os.environ if env is None else env)
        self.policy = policy or RestartPolicy()
        self._on_change = on_change
        self._children = [_Child(spec, log_dir / f"{spec.name}.log") for spec in specs]
        self._stopping = False

    def statuses(self) -> list[ServiceStatus]:
        return [child.status() for child in self._children]

    def start(self) -> None:
        """Start every service; one that cannot even be executed is `failed`, not an error."""
        self._stopping = False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self._children:
            if child.state in (ServiceState.STOPPED, ServiceState.FAILED):
                child.failures = 0
                self._spawn(child)
        self._changed()

    def poll(self) -> bool:
        """Notice exits, start due restarts and promote children that stayed up; True if any
        state changed. Call it often (every ~100 ms): delays are only as precise as the calls."""
        if self._stopping:
            return False
        now = time.monotonic()
        changed = False
        for child in self._children:
            if child.state in (ServiceState.STARTING, ServiceState.RUNNING):
                assert child.proc is not None
                code = child.proc.poll()
                if code is None:
                    if (
                        child.state is ServiceState.STARTING
                        and now - child.started_at >= self.policy.start_seconds
                    ):
                        child.state = ServiceState.RUNNING
                        changed = True
                    continue
                self._exited(child, code, now)
                changed = True
            elif child.state is ServiceState.BACKOFF and now >= child.next_start:
                child.restarts += 1
                self._spawn(child)
                changed = True
        if changed:
            self._changed()
        return changed

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child, SIGKILL what is left after `timeout`; safe to call twice or before
        `start()`. Services talk to each other only through the log, so they stop together."""
        self._stopping = True
        live = [c for c in self._children if c.proc is not None and c.proc.poll() is None]
        for child in reversed(live):
            assert child.proc is not None
            self._log(child, "stopping (SIGTERM)")
            _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in live:
            assert child.proc is not None
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                self._log(child, f"did not stop within {timeout:g}s; killing it")
                _signal_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        changed = False
        for child in self._children:
            if child.proc is not None:
                # Whatever the service itself started in its group goes with it.
                _signal_group(child.proc.pid, signal.SIGKILL)
                if child.proc.returncode is not None and child.state is not ServiceState.FAILED:
                    child.last_exit = child.proc.returncode
                    self._log(child, f"stopped: {describe_exit(child.proc.returncode)}")
                child.proc = None
            if child.state is not ServiceState.FAILED and child.state is not ServiceState.STOPPED:
                child.state = ServiceState.STOPPED
                changed = True
        if changed:
            self._changed()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {"PYTHONUNBUFFERED": "1", **self.env, **spec.env}
        self._log(child, f"starting {shlex.join(spec.argv)}")
        try:
            with open(private_fd(child.log_path), "ab") as log_file:
                child.proc = spawn(spec.argv, log_file, env=env)
        except OSError as exc:
            # Not a crash: no amount of retrying makes a missing executable appear.
            child.proc = None
            child.state = ServiceState.FAILED
            child.error = f"cannot start: {exc}"
            self._log(child, child.error)
            return
        child.state = ServiceState.STARTING
        child.started_at = time.monotonic()
        child.error = None

    def _exited(self, child: _Child, code: int, now: float) -> None:
        child.last_exit = code
        child.proc = None
        child.failures = self.policy.failures_after(child.failures, now - child.started_at)
        child.error = describe_exit(code)
        limit = self.policy.max_failures
        if limit is not None and child.failures >= limit:
            child.state = ServiceState.FAILED
            self._log(child, f"{child.error}; {child.failures} failures in a row, giving up")
            return
        delay = self.policy.delay(child.failures)
        child.state = ServiceState.BACKOFF
        child.next_start = now + delay
        self._log(child, f"{child.error}; restarting in {delay:g}s")

    def _log(self, child: _Child, line: str) -> None:
        log_note(child.log_path, child.spec.name, line)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.statuses())


def log_note(log_path: Path, name: str, line: str) -> None:
    """Append a supervisor's note on `name` (a service or an embedded server) to its own log,
    next to what it explains. A log that cannot be written costs only the note."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    with contextlib.suppress(OSError), open(private_fd(log_path), "a") as f:
        f.write(f"[swarm supervisor {stamp}] {name}: {line}\n")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
