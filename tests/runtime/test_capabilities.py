"""Capability grants for components (runtime/ABI.md, "Capabilities"): "env", "fs" and "net".

One tiny Python agent is built and compiled once for the module; it replies with its environment
as JSON, with what it could do under /data, or with what `swarm.http_request` got from a real
HTTP server on 127.0.0.1 (tests/runtime/http_target.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from runtime.abi import ErrorCode
from runtime.components import CompiledComponent, ComponentCache, ComponentSandbox
from runtime.engine import SandboxEngine
from runtime.errors import DeadlineExceeded, InvalidModule
from runtime.host import MemoryHost
from runtime.limits import SandboxLimits
from runtime.net import HttpFetcher
from schemas.specs import AgentSpec, ModuleRef
from tests.helpers.history import WASM
from tests.runtime.http_target import HttpTarget

pytest.importorskip("componentize_py", reason="componentize-py is not installed (dev extra)")

from runtime.build import build_agent

pytestmark = pytest.mark.timeout(180)

PROBE_APP = """
import json
import os

import swarm_agent as swarm


class Handler(swarm.Agent):
    def handle(self, message: bytes) -> int:
        if message.startswith(b"http "):
            _, method, url, timeout = message.decode().split(" ")
            try:
                r = swarm.http_request(
                    method, url, body="ping" if method == "POST" else None,
                    timeout_ms=int(timeout) or None,
                )
            except swarm.HostError as exc:
                swarm.reply(f"host-error:{exc.code}")
            except swarm.NetworkError as exc:
                swarm.reply(f"net-error:{exc.kind}")
            else:
                swarm.reply(json.dumps({"status": r.status, "headers": r.headers, "body": r.text}))
            return 0
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


def _replies(
    probe: Probe,
    message: bytes,
    limits: SandboxLimits,
    host: MemoryHost | None = None,
    **kwargs: Path,
) -> list[str]:
    cache, compiled = probe
    sandbox = ComponentSandbox(cache, compiled, limits, host or MemoryHost(), **kwargs)
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


def _http(
    probe: Probe,
    url: str,
    *,
    method: str = "GET",
    timeout_ms: int = 0,
    fetcher: HttpFetcher | None,
    granted: bool = True,
    deadline_ms: int = 5000,
) -> str:
    limits = SandboxLimits(
        capabilities=frozenset({"net"}) if granted else frozenset(), deadline_ms=deadline_ms
    )
    message = f"http {method} {url} {timeout_ms}".encode()
    return _replies(probe, message, limits, MemoryHost(http=fetcher))[0]


def test_net_grant_lets_a_component_fetch(
    probe: Probe, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    hello = json.loads(_http(probe, target.url("/hello"), fetcher=fetcher))
    echo = json.loads(_http(probe, target.url("/echo"), method="POST", fetcher=fetcher))
    redirect = json.loads(_http(probe, target.url("/redirect"), fetcher=fetcher))

    assert (hello["status"], hello["body"], hello["headers"]["x-test"]) == (200, "hello", "yes")
    assert (json.loads(echo["body"])["method"], json.loads(echo["body"])["body"]) == (
        "POST",
        "ping",
    )
    # Not followed: the 302 is the answer.
    assert (redirect["status"], redirect["headers"]["location"]) == (302, "/hello")
    assert target.requests == ["/hello", "/echo", "/redirect"]


def test_no_net_grant_is_denied(probe: Probe, fetcher: HttpFetcher, target: HttpTarget) -> None:
    answer = _http(probe, target.url("/hello"), fetcher=fetcher, granted=False)

    assert answer == f"host-error:{ErrorCode.DENIED}"
    assert target.requests == []


def test_net_grant_still_refuses_private_addresses(probe: Probe, target: HttpTarget) -> None:
    with HttpFetcher(allow_private=False) as guarded:
        answer = _http(probe, target.url("/hello"), fetcher=guarded)

    assert answer == f"host-error:{ErrorCode.DENIED}"
    assert target.requests == []


def test_a_slow_server_cannot_hold_a_component_past_its_deadline(
    probe: Probe, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    own_timeout = _http(probe, target.url("/slow"), timeout_ms=100, fetcher=fetcher)
    assert own_timeout == "net-error:timeout"

    cache, compiled = probe
    limits = SandboxLimits(capabilities=frozenset({"net"}), deadline_ms=500)
    sandbox = ComponentSandbox(cache, compiled, limits, MemoryHost(http=fetcher))
    started = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded, match="http_request"):
            sandbox.handle(f"http GET {target.url('/slow')} 0".encode())
    finally:
        sandbox.close()
    # Far below the server's 10 s stall; loose for a loaded machine.
    assert time.monotonic() - started < 3.0


def test_limits_from_spec_carry_capabilities_and_env() -> None:
    module = ModuleRef(inline=WASM)
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
