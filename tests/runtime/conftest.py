"""Fixtures for sandbox tests: one engine per session (its ticker thread), fresh hosts per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.engine import SandboxEngine
from runtime.host import HostAPI, MemoryHost
from runtime.limits import SandboxLimits
from runtime.modules import ModuleCache
from runtime.net import HttpFetcher
from runtime.sandbox import AgentSandbox
from tests.helpers.interpreter import run_python
from tests.helpers.sandboxes import NOW_MS, MakeSandbox
from tests.runtime.http_target import HttpTarget, http_target

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def engine() -> Iterator[SandboxEngine]:
    with SandboxEngine() as engine:
        yield engine


@pytest.fixture(scope="module")
def component_engine() -> Iterator[SandboxEngine]:
    """An engine of the module's own for Python components (their compiled cache is per engine)."""
    with SandboxEngine() as engine:
        yield engine


@pytest.fixture(scope="session")
def modules(engine: SandboxEngine) -> ModuleCache:
    """A memory-only cache shared by the session, so each test agent compiles once."""
    return ModuleCache(engine)


@pytest.fixture
def host() -> MemoryHost:
    return MemoryHost(seed=7, clock=lambda: NOW_MS)


@pytest.fixture
def make_sandbox(
    engine: SandboxEngine, modules: ModuleCache, host: MemoryHost
) -> Iterator[MakeSandbox]:
    """`make_sandbox(wasm, limits=..., host=...)`; every sandbox made is closed afterwards."""
    made: list[AgentSandbox] = []

    def make(
        wasm: bytes, limits: SandboxLimits | None = None, host_api: HostAPI | None = None
    ) -> AgentSandbox:
        sandbox = AgentSandbox(
            engine, modules.load(wasm), limits or SandboxLimits(), host_api or host
        )
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.close()


@pytest.fixture(scope="module")
def counter_c(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """examples/counter-c built the documented way, by its build script, into a temp dir (not
    the committed path)."""
    output = tmp_path_factory.mktemp("counter-c") / "counter.wasm"
    build = run_python(str(EXAMPLES / "counter-c" / "build.py"), "-o", str(output), timeout=120)
    assert build.returncode == 0, f"build failed:\n{build.stdout}\n{build.stderr}"
    return output.read_bytes()


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    """A local HTTP server that answers what each test asks of it."""
    with http_target() as server:
        yield server


@pytest.fixture(scope="module")
def fetcher() -> Iterator[HttpFetcher]:
    """The pods' HTTP client, allowed to reach the local target."""
    with HttpFetcher(allow_private=True) as fetcher:
        yield fetcher
