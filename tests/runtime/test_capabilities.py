"""Capability grants for components (runtime/ABI.md, "Capabilities"): "env", "fs" and "net".

One tiny Python agent is built and compiled once for the module; it replies with its environment
as JSON and with what it could do under /data.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from runtime.components import CompiledComponent, ComponentCache, ComponentSandbox
from runtime.engine import SandboxEngine
from runtime.errors import InvalidModule
from runtime.host import MemoryHost
from runtime.limits import SandboxLimits
from schemas.specs import AgentSpec, ModuleRef
from tests.runtime.test_components import component_engine

pytest.importorskip("componentize_py", reason="componentize-py is not installed (dev extra)")

from runtime.build import build_agent

pytestmark = pytest.mark.timeout(180)

__all__ = ["component_engine"]  # the engine fixture, shared with test_components

PROBE_APP = """
import json
import os

import swarm_agent as swarm


class Handler(swarm.Agent):
    def handle(self, message: bytes) -> int:
        if message == b"env":
            swarm.reply(json.dumps(dict(os.environ)))
            return 0
        try:
            with open("/data/x", "w") as f:
                f.write("hello")
            with open("/data/x") as f:
                swarm.reply("rw:" + f.read())
        except OSError as exc:
            swarm.reply("denied:" + type(exc).__name__)
        try:
            with open("/etc/passwd") as f:
                swarm.reply("passwd:" + f.read(4))
        except OSError as exc:
            swarm.reply("passwd-denied:" + type(exc).__name__)
        return 0
"""

Probe = tuple[ComponentCache, CompiledComponent]


@pytest.fixture(scope="module")
def probe(component_engine: SandboxEngine, tmp_path_factory: pytest.TempPathFactory) -> Probe:
    out = tmp_path_factory.mktemp("probe-py")
    (out / "probe.py").write_text(PROBE_APP)
    result = build_agent(out / "probe.py", out / "probe.wasm")
    cache = ComponentCache(component_engine, out / "cache")
    return cache, cache.load(result.output.read_bytes())


def _replies(probe: Probe, message: bytes, limits: SandboxLimits, **kwargs: Path) -> list[str]:
    cache, compiled = probe
    sandbox = ComponentSandbox(cache, compiled, limits, MemoryHost(), **kwargs)
    try:
        result = sandbox.handle(message)
    finally:
        sandbox.close()
    assert result.ok, result
    return [reply.decode() for reply in result.replies]


def test_env_grant_gives_exactly_the_spec_env(
    probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_SECRET", "must-not-leak")
    env = (("GREETING", "hello"), ("MODE", "test=1"))
    granted = SandboxLimits(capabilities=frozenset({"env"}), env=env)
    assert json.loads(_replies(probe, b"env", granted)[0]) == dict(env)
    # Set but not granted: empty.
    assert json.loads(_replies(probe, b"env", SandboxLimits(env=env))[0]) == {}
    assert "POD_SECRET" in os.environ


def test_fs_grant_preopens_only_the_scratch_dir(probe: Probe, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch" / "r1"
    scratch.mkdir(parents=True)
    granted = SandboxLimits(capabilities=frozenset({"fs"}))
    rw, passwd = _replies(probe, b"fs", granted, scratch_dir=scratch)
    assert rw == "rw:hello"
    assert (scratch / "x").read_text() == "hello"
    assert passwd.startswith("passwd-denied:")


def test_no_fs_grant_no_preopens(probe: Probe, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # A scratch directory passed in is not preopened without the grant.
    rw, passwd = _replies(probe, b"fs", SandboxLimits(), scratch_dir=scratch)
    assert rw.startswith("denied:")
    assert passwd.startswith("passwd-denied:")
    assert not (scratch / "x").exists()


def test_fs_grant_without_a_scratch_dir_is_refused(probe: Probe) -> None:
    cache, compiled = probe
    limits = SandboxLimits(capabilities=frozenset({"fs"}))
    with pytest.raises(InvalidModule, match="no scratch directory"):
        ComponentSandbox(cache, compiled, limits, MemoryHost())


def test_net_grant_is_refused_at_start(probe: Probe) -> None:
    cache, compiled = probe
    limits = SandboxLimits(capabilities=frozenset({"net"}))
    with pytest.raises(InvalidModule, match="net capability is not supported by this runtime yet"):
        ComponentSandbox(cache, compiled, limits, MemoryHost())


def test_limits_from_spec_carry_capabilities_and_env() -> None:
    module = ModuleRef(inline=base64.b64encode(b"\0asm\1\0\0\0").decode())
    spec = AgentSpec(
        version="v1", module=module, capabilities=["env", "fs"], env={"B": "2", "A": "1"}
    )
    limits = SandboxLimits.from_spec(spec)
    assert limits.capabilities == {"env", "fs"}
    assert limits.env == (("A", "1"), ("B", "2"))
    with pytest.raises(ValueError, match="bad variable"):
        SandboxLimits(env=(("A=B", "x"),))
    with pytest.raises(ValueError, match="bad variable"):
        SandboxLimits(env=(("A", "x\0y"),))
