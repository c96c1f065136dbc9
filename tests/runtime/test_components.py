"""Python agents as WebAssembly components: build, compile/cache, run under limits, CLI build.

Building (componentize-py, ~5 s) and compiling (~6 s) a component are the slow parts, so each
agent is built and compiled once per session; every other load deserializes from the cache.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.components import (
    COMPONENT_HEADER,
    CompiledComponent,
    ComponentCache,
    ComponentSandbox,
    is_component,
)
from runtime.engine import SandboxEngine
from runtime.errors import (
    AgentTrap,
    DeadlineExceeded,
    FuelExhausted,
    HostCallFailed,
    InstanceBroken,
    InvalidModule,
    MemoryLimitExceeded,
)
from runtime.host import MemoryHost
from runtime.kvstate import StateCaps
from runtime.limits import CallBudget, SandboxLimits

pytest.importorskip("componentize_py", reason="componentize-py is not installed (dev extra)")

from runtime.build import BadSource, build_agent
from tests.helpers.components import built_once

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
SWARM = str(Path(sys.executable).with_name("swarm"))
COUNTER_APP = ROOT / "examples" / "counter-py" / "app.py"

SPINNER_APP = """
import os

import swarm_agent as swarm


class Handler(swarm.Agent):
    def handle(self, message: bytes) -> int:
        if message == b"spin":
            while True:
                pass
        if message == b"bomb":
            hoard = [bytearray(1 << 20) for _ in range(1 << 12)]
            swarm.reply(str(len(hoard)))
        if message == b"escape":
            try:
                with open("/etc/passwd") as f:
                    swarm.reply(f.read(10))
            except OSError as exc:
                swarm.reply(type(exc).__name__)
            swarm.reply(str(len(os.environ)))
            return 0
        if message == b"boom":
            raise ValueError("boom from the agent")
        if message == b"fill":
            # Until the state is full: the SDK raises LimitError, a HostError with code LIMIT.
            for i in range(1000):
                try:
                    swarm.kv_put(f"k{i}", b"x" * 1000)
                except swarm.LimitError as exc:
                    swarm.reply(f"{i} {exc.code} {isinstance(exc, swarm.HostError)} {exc}")
                    return 0
            swarm.reply(b"never full")
            return 0
        if message == b"delete":
            swarm.reply(f"{swarm.kv_delete('k0')} {swarm.kv_delete('k0')}")
            swarm.kv_put("after", b"x" * 500)
            return 0
        swarm.reply(b"ok")
        return 0
"""


@dataclass(frozen=True)
class Built:
    wasm: bytes
    cache_dir: Path
    compiled: CompiledComponent
    cache: ComponentCache
    compile_s: float


@pytest.fixture(scope="module")
def counter(component_engine: SandboxEngine, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Compiled by cranelift only (`baseline=False`), by two caches on one directory at once,
    as two pods of a machine would: one compiles, the other waits for its file."""
    wasm = built_once(COUNTER_APP, tmp_path_factory).read_bytes()
    cache_dir = tmp_path_factory.mktemp("counter-py") / "cache"
    caches = [ComponentCache(component_engine, cache_dir, baseline=False) for _ in range(2)]
    loaded: list[CompiledComponent] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda c=c: loaded.append(c.load(wasm))) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(170)
    compile_s = time.perf_counter() - started
    assert len(loaded) == 2
    assert all(compiled.optimized for compiled in loaded)
    stats = sorted((c.stats.compiles, c.stats.disk_hits) for c in caches)
    assert stats == [(0, 1), (1, 0)], stats
    cache = caches[0]
    return Built(wasm, cache_dir, cache.load(wasm), cache, compile_s)


@pytest.fixture(scope="module")
def spinner_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built through the CLI, as a user would."""
    src = tmp_path_factory.mktemp("spinner")
    (src / "spinner.py").write_text(SPINNER_APP)
    out = src / "out" / "spinner.wasm"
    proc = subprocess.run(
        [SWARM, "agent", "build", str(src / "spinner.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "built" in proc.stdout
    return out


@pytest.fixture(scope="module")
def spinner(
    component_engine: SandboxEngine, spinner_wasm: Path
) -> Iterator[tuple[ComponentCache, CompiledComponent]]:
    """Loaded as a pod loads a new component: baseline (winch) code at once, cranelift's in the
    background; the limits tests run on whichever a sandbox has, as a pod's agents would."""
    cache = ComponentCache(component_engine, spinner_wasm.parent / "cache")
    yield cache, cache.load(spinner_wasm.read_bytes())
    cache.wait_optimized(hashlib.sha256(spinner_wasm.read_bytes()).hexdigest(), 170)
    cache.close()


def _run(sandbox: ComponentSandbox, message: bytes) -> bytes:
    result = sandbox.handle(message)
    assert result.ok, result
    assert len(result.replies) == 1
    return result.replies[0]


def test_counter_counts_in_kv_and_resumes_after_restart(counter: Built) -> None:
    host = MemoryHost()
    sandbox = ComponentSandbox(counter.cache, counter.compiled, SandboxLimits(), host)
    assert [_run(sandbox, b"{}") for _ in range(3)] == [b"1", b"2", b"3"]
    assert host.kv["count"] == b"3"
    assert host.logs[0].message == "starting at count 0"
    sandbox.close()
    with pytest.raises(InstanceBroken):
        sandbox.handle(b"{}")

    # A restart: a fresh instance, from a cache that deserializes, on the same kv state.
    cache = ComponentCache(counter.cache.engine, counter.cache_dir)
    started = time.perf_counter()
    compiled = cache.load(counter.wasm)
    load_s = time.perf_counter() - started
    assert cache.stats.disk_hits == 1
    assert cache.stats.compiles == 0
    assert load_s < counter.compile_s / 5, (load_s, counter.compile_s)
    restarted = ComponentSandbox(cache, compiled, SandboxLimits(), host)
    assert _run(restarted, b"{}") == b"4"
    assert host.kv["count"] == b"4"


def test_counter_uses_vector_memory(counter: Built) -> None:
    host = MemoryHost()
    sandbox = ComponentSandbox(counter.cache, counter.compiled, SandboxLimits(), host)
    remember = {"remember": "cats purr", "vector": [1.0, 0.0, 0.0]}
    assert _run(sandbox, json.dumps(remember).encode()) == b"1"
    _run(sandbox, json.dumps({"remember": "dogs bark", "vector": [0.0, 1.0, 0.0]}).encode())
    assert _run(sandbox, json.dumps({"recall": [0.9, 0.1, 0.0]}).encode()) == b'"cats purr"'
    assert set(host.vectors) == {"m1", "m2"}


def test_python_exception_is_a_trap_with_the_guest_reason(counter: Built) -> None:
    sandbox = ComponentSandbox(counter.cache, counter.compiled, SandboxLimits(), MemoryHost())
    _run(sandbox, json.dumps({"remember": "x", "vector": [1.0, 0.0]}).encode())
    # A query of the wrong dimension: the host says INVALID, the SDK raises, nobody catches it.
    with pytest.raises(AgentTrap) as caught:
        sandbox.handle(json.dumps({"recall": [1.0, 0.0, 0.0]}).encode())
    assert caught.value.reason == (
        "uncaught Python exception: swarm_agent.HostError: vector_search failed: INVALID"
    )
    assert sandbox.broken
    with pytest.raises(InstanceBroken):
        sandbox.handle(b"{}")


def test_looping_agent_is_stopped_by_fuel(
    spinner: tuple[ComponentCache, CompiledComponent],
) -> None:
    cache, compiled = spinner
    limits = SandboxLimits(fuel_per_call=20_000_000, deadline_ms=60_000)
    sandbox = ComponentSandbox(cache, compiled, limits, MemoryHost())
    assert _run(sandbox, b"hi") == b"ok"
    with pytest.raises(FuelExhausted, match="20000000 fuel"):
        sandbox.handle(b"spin")
    with pytest.raises(InstanceBroken):
        sandbox.handle(b"hi")


def test_looping_agent_is_stopped_by_its_deadline(
    spinner: tuple[ComponentCache, CompiledComponent],
) -> None:
    cache, compiled = spinner
    limits = SandboxLimits(fuel_per_call=10**15, deadline_ms=200)
    sandbox = ComponentSandbox(cache, compiled, limits, MemoryHost())
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match="200 ms"):
        sandbox.handle(b"spin")
    assert time.perf_counter() - started < 2
    # A neighbour in the same engine keeps answering.
    neighbour = ComponentSandbox(cache, compiled, SandboxLimits(), MemoryHost())
    assert _run(neighbour, b"hi") == b"ok"


def test_a_full_state_is_a_clear_exception_in_the_sdk_and_deleting_makes_room(
    spinner: tuple[ComponentCache, CompiledComponent],
) -> None:
    cache, compiled = spinner
    host = MemoryHost(state_caps=StateCaps(max_bytes=10_000, max_keys=100))
    sandbox = ComponentSandbox(cache, compiled, SandboxLimits(), host)

    reply = _run(sandbox, b"fill").decode()

    # k0..k8 take 9 x 1002 bytes; k9 would make 10,020.
    assert reply.startswith("9 -2 True kv_put failed: LIMIT (the key-value state is at its cap")
    assert host.kv.size == 9018
    assert _run(sandbox, b"delete") == b"True False"
    assert "after" in host.kv
    assert not sandbox.broken


def test_uncaught_python_exception_reports_the_traceback_line(
    spinner: tuple[ComponentCache, CompiledComponent],
) -> None:
    cache, compiled = spinner
    sandbox = ComponentSandbox(cache, compiled, SandboxLimits(), MemoryHost())
    with pytest.raises(AgentTrap, match="ValueError: boom from the agent"):
        sandbox.handle(b"boom")


def test_no_filesystem_or_environment(spinner: tuple[ComponentCache, CompiledComponent]) -> None:
    cache, compiled = spinner
    sandbox = ComponentSandbox(cache, compiled, SandboxLimits(), MemoryHost())
    result = sandbox.handle(b"escape")
    assert result.ok
    assert result.replies[1] == b"0"
    assert result.replies[0] != b"root:x:0:0"
    assert result.replies[0].endswith(b"Error")


def test_reply_over_budget_traps(counter: Built) -> None:
    limits = SandboxLimits(budget=CallBudget(max_replies=0))
    sandbox = ComponentSandbox(counter.cache, counter.compiled, limits, MemoryHost())
    with pytest.raises(AgentTrap, match="more than 0 replies"):
        sandbox.handle(b"{}")
    assert sandbox.broken


class _FailingHost(MemoryHost):
    def kv_get(self, key: str) -> bytes | None:
        raise RuntimeError("kv store is down")


def test_host_failure_is_blamed_on_the_host(counter: Built) -> None:
    with pytest.raises(HostCallFailed, match="kv store is down"):
        ComponentSandbox(counter.cache, counter.compiled, SandboxLimits(), _FailingHost())


def test_memory_bomb_is_stopped_by_the_memory_limit(
    spinner: tuple[ComponentCache, CompiledComponent],
) -> None:
    cache, compiled = spinner
    # A deadline far away: growing to 48 MiB took over the default second on a loaded machine,
    # and this test is about which limit stops it, not how fast.
    limits = SandboxLimits(memory_bytes=48 << 20, deadline_ms=30_000)
    sandbox = ComponentSandbox(cache, compiled, limits, MemoryHost())
    with pytest.raises(MemoryLimitExceeded, match=r"48\.0 MiB"):
        sandbox.handle(b"bomb")
    neighbour = ComponentSandbox(cache, compiled, SandboxLimits(), MemoryHost())
    assert _run(neighbour, b"hi") == b"ok"


def test_too_little_memory_to_start(spinner: tuple[ComponentCache, CompiledComponent]) -> None:
    cache, compiled = spinner
    with pytest.raises(MemoryLimitExceeded, match="to start"):
        ComponentSandbox(cache, compiled, SandboxLimits(memory_bytes=4 << 20), MemoryHost())


def test_cli_build_produces_a_component(spinner_wasm: Path) -> None:
    header = spinner_wasm.read_bytes()[:8]
    assert header == COMPONENT_HEADER
    assert is_component(header)
    # The CLI's detection (read_module, used by deploy) agrees: components are too big to travel
    # inline, so they are pushed by reference, but the header test is the same.
    from swarm.client.modules import COMPONENT_VERSION, WASM_MAGIC

    assert header[:4] == WASM_MAGIC
    assert header[4:8] == COMPONENT_VERSION


def test_cli_build_rejects_a_non_python_file(tmp_path: Path) -> None:
    bad = tmp_path / "agent.txt"
    bad.write_text("not python")
    proc = subprocess.run(
        [SWARM, "agent", "build", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "expected a Python file" in proc.stderr
    with pytest.raises(BadSource):
        build_agent(bad)


def test_core_module_bytes_are_not_a_component(component_engine: SandboxEngine) -> None:
    cache = ComponentCache(component_engine)
    with pytest.raises(InvalidModule, match="not a WebAssembly component"):
        cache.load(b"\0asm\x01\x00\x00\x00")


def test_a_new_component_starts_on_baseline_code_and_later_starts_are_optimized(
    spinner: tuple[ComponentCache, CompiledComponent], spinner_wasm: Path
) -> None:
    cache, compiled = spinner
    # The pinned wasmtime has winch (runtime/engine.py reaches it through its C API).
    assert not compiled.optimized
    assert compiled.engine is not cache.engine
    assert cache.stats.baseline_compiles == 1
    sandbox = ComponentSandbox(cache, compiled, SandboxLimits(), MemoryHost())
    assert _run(sandbox, b"hi") == b"ok"

    assert cache.wait_optimized(compiled.sha256, timeout=170)
    assert cache.stats.compiles == 1
    optimized = cache.optimized(compiled.sha256)
    assert optimized is not None
    assert optimized.engine is cache.engine
    assert cache.load(spinner_wasm.read_bytes()) is optimized
    # The live sandbox keeps its code (moving would re-run its `init`); the next start gets it.
    assert _run(sandbox, b"hi") == b"ok"
    assert sandbox.component is compiled
    assert ComponentSandbox(cache, optimized, SandboxLimits(), MemoryHost()).component is optimized
    # Another pod of the machine (a cache on the same directory) reads it from disk.
    other = ComponentCache(cache.engine, cache.cache_dir)
    assert other.cached(compiled.sha256) is not None
    assert other.stats.disk_hits == 1
    assert other.stats.baseline_compiles == other.stats.compiles == 0


def test_strategy_is_in_the_fingerprint_only_when_it_is_winch() -> None:
    from runtime.engine import EngineConfig

    assert EngineConfig(strategy="winch").fingerprint() != EngineConfig().fingerprint()
    # Code cached before the setting existed keeps its file names.
    assert EngineConfig().fingerprint() == EngineConfig(strategy="cranelift").fingerprint()
