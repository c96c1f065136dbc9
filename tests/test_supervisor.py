"""The supervisor against real child processes: restarts with backoff, stop, parent death."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swarm.devstack.supervisor import (
    RestartPolicy,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
    Supervisor,
)
from tests.helpers.processes import gone

PY = sys.executable


def python(code: str, *args: str) -> tuple[str, ...]:
    return (PY, "-c", textwrap.dedent(code), *args)


def wait_until(condition: Callable[[], bool], timeout: float, poll: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        poll()
        time.sleep(0.01)


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    """Supervisors a test made, stopped even when it fails."""
    made: list[Supervisor] = []
    yield made
    for sup in made:
        sup.stop(timeout=2)


def test_restart_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = RestartPolicy(initial_delay=0.5, factor=2, max_delay=3)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]


def test_a_long_run_starts_a_new_row_of_failures() -> None:
    policy = RestartPolicy(reset_after=30)
    assert policy.failures_after(3, ran_for=29.9) == 4
    assert policy.failures_after(3, ran_for=30) == 1


def test_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="must match"):
        ServiceSpec("Bad Name", ("true",))
    with pytest.raises(ValueError, match="empty command"):
        ServiceSpec("ok", ())
    with pytest.raises(ValueError, match="unique"):
        Supervisor([ServiceSpec("a", ("true",)), ServiceSpec("a", ("true",))], log_dir=Path())


def test_a_crashing_child_is_restarted_with_growing_delays(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    transitions: list[tuple[float, ServiceStatus]] = []
    sup = Supervisor(
        [ServiceSpec("crasher", python("import time, sys; time.sleep(0.05); sys.exit(3)"))],
        log_dir=tmp_path,
        policy=RestartPolicy(initial_delay=0.1, factor=2, max_delay=0.4, start_seconds=5),
        on_change=lambda statuses: transitions.append((time.monotonic(), statuses[0])),
    )
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: sup.statuses()[0].restarts >= 4, timeout=30, poll=sup.poll)

    # Time from each crash (-> backoff) to the next start (-> starting).
    delays = [
        later[0] - earlier[0]
        for earlier, later in itertools.pairwise(transitions)
        if earlier[1].state is ServiceState.BACKOFF and later[1].state is ServiceState.STARTING
    ]
    assert len(delays) >= 4
    # Each restart waits out its delay; how much longer a busy machine takes to spawn the next
    # child is not the supervisor's to promise, so the growth is read from what it scheduled.
    for measured, expected in zip(delays, (0.1, 0.2, 0.4, 0.4), strict=False):
        assert measured >= expected
    status = sup.statuses()[0]
    assert status.last_exit == 3
    assert {s.state for _, s in transitions} == {ServiceState.STARTING, ServiceState.BACKOFF}
    log = (tmp_path / "crasher.log").read_text()
    scheduled = re.findall(r"exited with code 3; restarting in ([0-9.]+)s", log)
    assert scheduled[:4] == ["0.1", "0.2", "0.4", "0.4"]


def test_a_child_that_stays_up_is_running_with_env_and_log(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    code = """
        import os, time
        print("nats at", os.environ["SWARM_NATS_URL"], "extra", os.environ["EXTRA"], flush=True)
        time.sleep(60)
    """
    sup = Supervisor(
        [ServiceSpec("steady", python(code), env={"EXTRA": "yes"})],
        log_dir=tmp_path / "logs",
        env={**os.environ, "SWARM_NATS_URL": "nats://example:4222"},
        policy=RestartPolicy(start_seconds=0.2),
    )
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: sup.statuses()[0].state is ServiceState.RUNNING, timeout=30, poll=sup.poll)
    log = tmp_path / "logs" / "steady.log"
    wait_until(lambda: "nats at nats:" in log.read_text(), timeout=30, poll=sup.poll)
    assert "nats at nats://example:4222 extra yes" in log.read_text()
    pid = sup.statuses()[0].pid
    assert pid is not None
    assert os.getpgid(pid) == pid, "each service leads its own process group"

    sup.stop()
    assert gone(pid)
    status = sup.statuses()[0]
    assert (status.state, status.pid, status.restarts) == (ServiceState.STOPPED, None, 0)
    assert "stopped: killed by SIGTERM" in log.read_text()


def test_stop_kills_a_child_that_ignores_sigterm(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """
    sup = Supervisor([ServiceSpec("stubborn", python(code))], log_dir=tmp_path)
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: "\nready\n" in (tmp_path / "stubborn.log").read_text(), 30, sup.poll)
    pid = sup.statuses()[0].pid
    assert pid is not None

    began = time.monotonic()
    sup.stop(timeout=0.3)
    assert time.monotonic() - began < 30  # killed, not waited for: the child sleeps 60 s
    assert gone(pid)
    assert "did not stop within 0.3s; killing it" in (tmp_path / "stubborn.log").read_text()


def test_a_program_that_cannot_start_fails_without_retries(tmp_path: Path) -> None:
    sup = Supervisor([ServiceSpec("ghost", (str(tmp_path / "no-such-program"),))], log_dir=tmp_path)
    sup.start()
    for _ in range(3):
        sup.poll()
    status = sup.statuses()[0]
    assert status.state is ServiceState.FAILED
    assert status.restarts == 0
    assert status.error is not None
    assert "cannot start" in status.error
    sup.stop()
    assert sup.statuses()[0].state is ServiceState.FAILED


def test_max_failures_gives_up(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    sup = Supervisor(
        [ServiceSpec("quitter", python("raise SystemExit(1)"))],
        log_dir=tmp_path,
        policy=RestartPolicy(initial_delay=0.02, max_failures=2),
    )
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: sup.statuses()[0].state is ServiceState.FAILED, timeout=30, poll=sup.poll)
    assert sup.statuses()[0].restarts == 1
    assert "2 failures in a row, giving up" in (tmp_path / "quitter.log").read_text()


def test_stop_is_safe_before_start_and_twice(tmp_path: Path) -> None:
    sup = Supervisor([ServiceSpec("idle", ("sleep", "60"))], log_dir=tmp_path)
    sup.stop()
    sup.start()
    sup.stop()
    sup.stop()
    assert sup.statuses()[0].state is ServiceState.STOPPED


def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    script = f"""
        import sys, time
        from pathlib import Path
        from swarm.devstack.supervisor import ServiceSpec, Supervisor

        sup = Supervisor(
            [ServiceSpec("a", ("sleep", "60")), ServiceSpec("b", ("sleep", "60"))],
            log_dir=Path({str(tmp_path)!r}),
        )
        sup.start()
        print(" ".join(str(s.pid) for s in sup.statuses()), flush=True)
        time.sleep(60)
    """
    parent = subprocess.Popen(python(script), stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        assert not any(gone(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while not all(gone(pid) for pid in pids):
            assert time.monotonic() < deadline, f"children outlived their supervisor: {pids}"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
