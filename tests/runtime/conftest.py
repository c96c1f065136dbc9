"""Fixtures for sandbox tests: one engine per session (its ticker thread), fresh hosts per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.engine import SandboxEngine
from runtime.host import HostAPI, MemoryHost
from runtime.limits import SandboxLimits
from runtime.modules import ModuleCache
from runtime.sandbox import AgentSandbox
from tests.helpers.sandboxes import NOW_MS, MakeSandbox


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
