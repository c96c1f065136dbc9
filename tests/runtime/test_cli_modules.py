"""`swarm module push|ls` and `swarm agent logs` end to end: a real nats-server, an in-process
Hive and scheduler, a real pod, and the CLI run as a subprocess."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import wasmtime

from tests.helpers.cli_process import ECHO_WAT, swarm, swarm_until
from tests.helpers.pods import cluster, running_pod

pytestmark = pytest.mark.timeout(60)


async def test_a_pushed_module_is_deployed_by_sha256_and_its_logs_are_read(
    tmp_path: Path,
) -> None:
    sha = hashlib.sha256(bytes(wasmtime.wat2wasm(ECHO_WAT.read_text()))).hexdigest()
    async with cluster(tmp_path) as stack, running_pod(stack, "pod-mod"):
        code, out, err = await swarm(stack.url, "module", "push", str(ECHO_WAT))
        assert code == 0, out + err
        assert sha in out
        assert f"--module-sha256 {sha}" in out
        assert "already stored" not in out

        code, out, err = await swarm(stack.url, "module", "push", str(ECHO_WAT))
        assert code == 0, out + err
        assert "already stored" in out

        code, out, err = await swarm(stack.url, "module", "ls", "-o", "json")
        assert code == 0, err
        modules = json.loads(out)["modules"]
        assert [m["sha256"] for m in modules] == [sha]
        assert modules[0]["size"] > 0

        # The pod has only the digest: it must fetch the module from the object store.
        code, out, err = await swarm(
            stack.url, "agent", "deploy", "echo", "--module-sha256", sha, "--version", "v1",
            "--wait",
        )  # fmt: skip
        assert code == 0, out + err
        assert "is running" in out
        code, out, err = await swarm(stack.url, "agent", "send", "echo", '{"hello": "store"}')
        assert code == 0, err
        assert json.loads(out) == {"hello": "store"}

        # Logs are fire and forget; wait until the line has reached the stream.
        out = await swarm_until("echoing a message", stack.url, "agent", "logs", "echo")
        assert "DEBUG" in out
        code, out, err = await swarm(stack.url, "agent", "logs", "echo", "--level", "info")
        assert code == 0, err
        assert "echoing a message" not in out
        code, out, err = await swarm(stack.url, "agent", "logs", "echo", "-o", "json")
        assert code == 0, err
        entries = [json.loads(line) for line in out.splitlines()]
        assert entries
        assert entries[0]["message"] == "echoing a message"
        assert entries[0]["replica_id"]


async def test_an_invalid_module_is_refused_with_the_engine_reason(tmp_path: Path) -> None:
    mistyped = tmp_path / "mistyped.wat"
    mistyped.write_text("(module (func (result i32)))")
    # Refused before NATS is contacted, so no server is needed.
    code, out, err = await swarm("nats://127.0.0.1:1", "module", "push", str(mistyped))
    assert code == 2, out + err
    assert "not a valid WebAssembly module" in err
    assert "type mismatch" in err or "expected" in err
