"""Agents on other threads keep running while one misbehaves, and failures stay attributed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from runtime.errors import AgentTrap, DeadlineExceeded, FuelExhausted, SandboxError
from runtime.host import MemoryHost
from runtime.limits import SandboxLimits
from tests.helpers import agents
from tests.helpers.agents import proxy, proxy_message
from tests.helpers.sandboxes import MakeSandbox


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_looping_agent_does_not_stop_a_neighbour(make_sandbox: MakeSandbox) -> None:
    deadline_ms = 1000
    looping = make_sandbox(
        agents.LOOP, SandboxLimits(fuel_per_call=10**18, deadline_ms=deadline_ms)
    )
    echo = make_sandbox(agents.ECHO)
    outcome: dict[str, object] = {}

    def run_loop() -> None:
        started = time.perf_counter()
        try:
            looping.handle(b"spin")
        except SandboxError as error:
            outcome["error"] = error
        outcome["elapsed_ms"] = (time.perf_counter() - started) * 1000

    loop_thread = in_thread(run_loop)
    answered, slowest = 0, 0.0
    while loop_thread.is_alive():
        started = time.perf_counter()
        assert echo.handle(b"ping").replies == (b"ping",)
        slowest = max(slowest, time.perf_counter() - started)
        answered += 1
    loop_thread.join()

    elapsed_ms = outcome["elapsed_ms"]
    assert isinstance(elapsed_ms, float)
    print(
        f"\nloop stopped after {elapsed_ms:.0f} ms (deadline {deadline_ms} ms); "
        f"echo answered {answered} times meanwhile, slowest {slowest * 1000:.2f} ms"
    )
    assert isinstance(outcome["error"], DeadlineExceeded)
    # Stopped by its deadline, not long after (the epoch ticker is a thread: a loaded machine
    # delays it by a tick or a scheduling slice, not by another deadline).
    assert deadline_ms <= elapsed_ms < 3 * deadline_ms
    # The echo kept answering all along: a call that waited for the loop to end would leave it
    # one or two answers, where it gives thousands (a count, since a busy machine may pause the
    # test's own thread for a few hundred ms whatever the sandbox does).
    assert answered >= 100


def test_failures_are_attributed_to_their_own_instance_under_concurrency(
    make_sandbox: MakeSandbox,
) -> None:
    """Host-call faults travel through wasmtime-py's one process-wide exception slot; each
    sandbox must still report its own failure when many trap at the same time."""
    rounds = 300
    seen: dict[str, list[SandboxError]] = {"pointer": [], "fuel": []}

    # Deadlines far away: on a loaded machine a call can outlast the default second, and this
    # test is about whose failure is reported, not how fast.
    def bad_pointers() -> None:
        for _ in range(rounds):
            sandbox = make_sandbox(proxy("reply"), SandboxLimits(deadline_ms=60_000))
            with pytest.raises(SandboxError) as failed:
                sandbox.handle(proxy_message(0xFFFF_0000, 16))
            seen["pointer"].append(failed.value)

    def out_of_fuel() -> None:
        for _ in range(rounds):
            sandbox = make_sandbox(
                agents.LOOP, SandboxLimits(fuel_per_call=20_000, deadline_ms=60_000)
            )
            with pytest.raises(SandboxError) as failed:
                sandbox.handle(b"x")
            seen["fuel"].append(failed.value)

    threads = [in_thread(bad_pointers), in_thread(out_of_fuel)]
    for thread in threads:
        thread.join(30)

    assert len(seen["pointer"]) == len(seen["fuel"]) == rounds
    wrong = [
        repr(e)
        for e in seen["pointer"]
        if not (isinstance(e, AgentTrap) and "outside guest memory" in e.reason)
    ]
    wrong += [repr(e) for e in seen["fuel"] if not isinstance(e, FuelExhausted)]
    assert wrong == []  # a stress run once saw a pointer fault reported otherwise: which?


def test_one_host_serves_agents_on_many_threads(
    make_sandbox: MakeSandbox, host: MemoryHost
) -> None:
    sandboxes = [make_sandbox(proxy("send")) for _ in range(4)]
    to = b"topic:load"
    base = agents.payload_at("send")

    def send_many(index: int) -> None:
        for _ in range(200):
            message = proxy_message(base, len(to), base + len(to), 1, payload=to + bytes([index]))
            sandboxes[index].handle(message)

    threads = [threading.Thread(target=send_many, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(host.sent) == 800
    assert {sent.message for sent in host.sent} == {bytes([i]) for i in range(4)}
