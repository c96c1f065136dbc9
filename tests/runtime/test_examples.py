"""The agents in examples/ build, pass the ABI check and behave as their READMEs say."""

from __future__ import annotations

from pathlib import Path

import wasmtime

from runtime.abi import LogLevel
from runtime.engine import SandboxEngine
from runtime.host import MemoryHost
from runtime.limits import SandboxLimits
from runtime.modules import ModuleCache
from runtime.sandbox import AgentSandbox
from tests.helpers.sandboxes import MakeSandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_echo_example_passes_the_abi_check_and_echoes(make_sandbox: MakeSandbox) -> None:
    wasm = bytes(wasmtime.wat2wasm((EXAMPLES / "echo" / "echo.wat").read_text()))

    result = make_sandbox(wasm).handle(b'{"hello": "swarm"}')

    assert result.ok
    assert result.replies == (b'{"hello": "swarm"}',)


def test_counter_c_imports_only_what_it_uses(engine: SandboxEngine, counter_c: bytes) -> None:
    module = wasmtime.Module(engine.engine, counter_c)

    assert {(i.module, i.name) for i in module.imports} == {
        ("swarm", "kv_get"),
        ("swarm", "kv_put"),
        ("swarm", "log"),
        ("swarm", "reply"),
    }
    assert {e.name for e in module.exports} == {"memory", "swarm_alloc", "swarm_handle"}


def test_counter_c_counts_in_kv_and_survives_a_restart(
    engine: SandboxEngine, counter_c: bytes, host: MemoryHost
) -> None:
    # A cache of its own, so the module is really compiled and checked against the ABI here.
    module = ModuleCache(engine).load(counter_c)
    first = AgentSandbox(engine, module, SandboxLimits(), host)
    try:
        results = [first.handle(f"tick {i}".encode()) for i in range(3)]
    finally:
        first.close()

    assert [r.status for r in results] == [0, 0, 0]
    assert [r.replies for r in results] == [(b"1",), (b"2",), (b"3",)]
    assert host.kv["count"] == b"3"
    assert [(line.level, line.message) for line in host.logs] == [
        (LogLevel.INFO, "message 1: tick 0"),
        (LogLevel.INFO, "message 2: tick 1"),
        (LogLevel.INFO, "message 3: tick 2"),
    ]

    # A replacement instance on the same kv state carries on from there.
    second = AgentSandbox(engine, module, SandboxLimits(), host)
    try:
        result = second.handle(b"tick 3")
    finally:
        second.close()

    assert result.replies == (b"4",)
    assert host.kv["count"] == b"4"


def test_counter_c_handles_large_messages_without_leaking(
    make_sandbox: MakeSandbox, counter_c: bytes, host: MemoryHost
) -> None:
    sandbox = make_sandbox(counter_c)
    big = b"x" * (512 * 1024)  # more than the initial memory: swarm_alloc has to grow it

    sizes = [sandbox.handle(big).memory_bytes for _ in range(5)]

    assert sandbox.handle(b"").replies == (b"6",)
    assert len(set(sizes)) == 1  # the arena is reset after every message
    assert len(host.logs[0].message) == len("message 1: ") + 200  # the preview is cut


def test_counter_c_rejects_a_corrupt_count(
    make_sandbox: MakeSandbox, host: MemoryHost, counter_c: bytes
) -> None:
    host.kv["count"] = b"not a number"

    result = make_sandbox(counter_c).handle(b"tick")

    assert result.status == 1
    assert result.replies == ()
    assert host.kv["count"] == b"not a number"
    assert host.logs[-1].level is LogLevel.ERROR
