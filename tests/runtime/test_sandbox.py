"""AgentSandbox: messages in, replies out; every failure typed, and fatal to the instance."""

from __future__ import annotations

import struct
import time

import pytest

from runtime.engine import SandboxEngine
from runtime.errors import (
    AgentTrap,
    DeadlineExceeded,
    FuelExhausted,
    InitFailed,
    InstanceBroken,
    MemoryLimitExceeded,
    SandboxError,
)
from runtime.host import MemoryHost
from runtime.limits import SandboxLimits
from runtime.modules import ModuleCache
from runtime.sandbox import AgentSandbox
from schemas.specs import Resources
from tests.helpers import agents
from tests.helpers.sandboxes import MakeSandbox

MIB = 1024 * 1024


def test_echo_replies_with_its_input(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.ECHO)

    result = sandbox.handle(b'{"hello": "world"}')

    assert result.ok
    assert result.replies == (b'{"hello": "world"}',)
    assert result.fuel_used > 0
    assert result.duration_s > 0
    assert result.memory_bytes == 65536
    assert not sandbox.broken


def test_echo_handles_empty_and_large_messages(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.ECHO)
    big = bytes(range(256)) * 2048  # 512 KiB: the allocator has to grow memory

    assert sandbox.handle(b"").replies == (b"",)
    assert sandbox.handle(big).replies == (big,)


def test_message_over_the_budget_is_refused_before_the_guest_runs(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = make_sandbox(agents.ECHO)

    with pytest.raises(ValueError, match="exceeds"):
        sandbox.handle(b"x" * (MIB + 1))
    assert not sandbox.broken


def test_counter_keeps_state_in_kv(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    sandbox = make_sandbox(agents.COUNTER)

    counts = [struct.unpack("<q", sandbox.handle(b"tick").replies[0])[0] for _ in range(3)]

    assert counts == [1, 2, 3]
    assert host.kv["count"] == struct.pack("<q", 3)


def test_state_survives_a_new_instance_through_kv(
    make_sandbox: MakeSandbox, host: MemoryHost
) -> None:
    make_sandbox(agents.COUNTER).handle(b"tick")

    # A replacement instance (after a crash or a redeploy) continues from the host's state.
    result = make_sandbox(agents.COUNTER).handle(b"tick")

    assert struct.unpack("<q", result.replies[0]) == (2,)


def test_swarm_init_runs_once_before_the_first_message(
    make_sandbox: MakeSandbox, host: MemoryHost
) -> None:
    host.kv["boot"] = struct.pack("<q", 41)

    sandbox = make_sandbox(agents.INIT_FROM_KV)

    assert sandbox.init_result is not None
    assert sandbox.init_result.ok
    assert struct.unpack("<q", sandbox.handle(b"").replies[0]) == (41,)


def test_swarm_init_failure_stops_the_start(make_sandbox: MakeSandbox) -> None:
    with pytest.raises(InitFailed, match="returned 3") as failed:
        make_sandbox(agents.INIT_FAILS)

    assert failed.value.code == 3


def test_non_zero_status_is_a_result_not_a_failure(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.STATUS_7)

    result = sandbox.handle(b"x")

    assert result.status == 7
    assert not result.ok
    assert not sandbox.broken


def test_infinite_loop_is_stopped_by_fuel(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.LOOP, SandboxLimits(fuel_per_call=1_000_000))

    with pytest.raises(FuelExhausted, match="used all 1000000 fuel"):
        sandbox.handle(b"x")


def test_infinite_loop_with_huge_fuel_is_stopped_by_the_deadline(
    make_sandbox: MakeSandbox,
) -> None:
    deadline_ms = 300
    sandbox = make_sandbox(
        agents.LOOP, SandboxLimits(fuel_per_call=10**18, deadline_ms=deadline_ms)
    )

    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match="deadline of 300 ms") as exceeded:
        sandbox.handle(b"x")
    elapsed_ms = (time.perf_counter() - started) * 1000

    print(f"\ndeadline {deadline_ms} ms: stopped after {elapsed_ms:.0f} ms")
    assert deadline_ms <= elapsed_ms < 2 * deadline_ms
    assert "stopped after" in exceeded.value.reason


def test_memory_bomb_hits_the_limit_from_the_spec(make_sandbox: MakeSandbox) -> None:
    limits = SandboxLimits(memory_bytes=4 * MIB)
    sandbox = make_sandbox(agents.MEMORY_BOMB, limits)

    with pytest.raises(MemoryLimitExceeded, match=r"memory limit of 4\.0 MiB") as exceeded:
        sandbox.handle(b"x")

    assert "unreachable" in exceeded.value.reason


def test_memory_spinner_is_blamed_on_memory_not_fuel(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(
        agents.MEMORY_SPINNER, SandboxLimits(memory_bytes=2 * MIB, fuel_per_call=1_000_000)
    )

    with pytest.raises(MemoryLimitExceeded, match="then: used all 1000000 fuel"):
        sandbox.handle(b"x")


def test_memory_limit_comes_from_the_spec_and_holds(make_sandbox: MakeSandbox) -> None:
    # Watch the limit hold from outside: the agent grows until refused, then returns cleanly.
    grow_until_refused = agents.agent(
        """
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (i32.const 0))
"""
    )
    spec = agents.spec(grow_until_refused, resources=Resources(memory_mb=3))
    sandbox = make_sandbox(grow_until_refused, SandboxLimits.from_spec(spec))

    result = sandbox.handle(b"x")

    # Memory is full, but the agent handled the refusal, so this is no failure.
    assert result.ok
    assert result.memory_bytes == 3 * MIB
    assert not sandbox.broken


def test_message_too_big_for_the_memory_left_is_a_memory_failure(
    make_sandbox: MakeSandbox,
) -> None:
    # The inbox starts at 4 KiB, so this message ends one byte past 1 MiB: the allocator asks
    # for 16 more pages while 15 are still free, is refused and aborts.
    sandbox = make_sandbox(agents.ECHO, SandboxLimits(memory_bytes=1 * MIB))

    with pytest.raises(MemoryLimitExceeded, match="then: trapped: wasm `unreachable`"):
        sandbox.handle(b"x" * (1 * MIB - agents.INBOX + 1))


def test_module_needing_more_memory_than_allowed_is_refused(make_sandbox: MakeSandbox) -> None:
    with pytest.raises(MemoryLimitExceeded, match=r"needs 4\.0 MiB"):
        make_sandbox(
            agents.agent(agents.HANDLE_OK, memory="64"), SandboxLimits(memory_bytes=1 * MIB)
        )


def test_unreachable_is_an_agent_trap_with_the_reason(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.TRAP)

    with pytest.raises(AgentTrap, match="unreachable") as trapped:
        sandbox.handle(b"x")

    assert trapped.value.detail is not None
    assert "wasm backtrace" in trapped.value.detail
    assert "\n" not in trapped.value.reason


def test_stack_overflow_is_an_agent_trap(make_sandbox: MakeSandbox) -> None:
    with pytest.raises(AgentTrap, match="call stack exhausted"):
        make_sandbox(agents.RECURSION).handle(b"x")


def test_alloc_returning_memory_outside_the_instance_is_a_trap(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = make_sandbox(agents.BAD_ALLOC)

    with pytest.raises(AgentTrap, match="swarm_alloc"):
        sandbox.handle(b"0123456789")
    assert sandbox.broken


def test_start_function_may_not_call_the_host(make_sandbox: MakeSandbox) -> None:
    with pytest.raises(AgentTrap, match="start function"):
        make_sandbox(agents.START_CALLS_HOST)


@pytest.mark.parametrize(
    ("wasm", "limits", "error"),
    [
        (agents.TRAP, SandboxLimits(), AgentTrap),
        (agents.LOOP, SandboxLimits(fuel_per_call=10_000), FuelExhausted),
        (agents.MEMORY_BOMB, SandboxLimits(memory_bytes=MIB), MemoryLimitExceeded),
    ],
)
def test_a_failed_instance_is_broken_for_good(
    make_sandbox: MakeSandbox,
    wasm: bytes,
    limits: SandboxLimits,
    error: type[SandboxError],
) -> None:
    sandbox = make_sandbox(wasm, limits)
    with pytest.raises(error) as first:
        sandbox.handle(b"x")

    assert sandbox.broken
    assert sandbox.failure is first.value
    with pytest.raises(InstanceBroken, match=first.value.reason):
        sandbox.handle(b"x")


def test_close_is_idempotent_and_final(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.ECHO)

    sandbox.close()
    sandbox.close()

    assert sandbox.broken
    with pytest.raises(InstanceBroken, match="closed"):
        sandbox.handle(b"x")


def test_sandbox_needs_a_running_engine(modules: ModuleCache, host: MemoryHost) -> None:
    stopped = SandboxEngine()
    module = ModuleCache(stopped).load(agents.ECHO)

    with pytest.raises(RuntimeError, match="start the SandboxEngine"):
        AgentSandbox(stopped, module, SandboxLimits(), host)


def test_module_must_come_from_the_same_engine(modules: ModuleCache, host: MemoryHost) -> None:
    echo = modules.load(agents.ECHO)

    with SandboxEngine() as other, pytest.raises(ValueError, match="another engine"):
        AgentSandbox(other, echo, SandboxLimits(), host)
