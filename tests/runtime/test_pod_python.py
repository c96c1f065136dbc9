"""A Python component agent (examples/counter-py) end to end through the CLI: pushed to the object
store, deployed by sha256, and its kv state surviving the abrupt loss of its pod.

Building the component (componentize-py, ~5 s) happens once per test run; both pods share one
compiled-module cache, so the component is compiled (~6 s) once and deserialized after that.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.helpers.cli_process import swarm as swarm_cli
from tests.helpers.pods import cluster, lose_pod, running_on, running_pod
from tests.helpers.waiting import true, wait_until

pytest.importorskip("componentize_py", reason="componentize-py is not installed (dev extra)")

from tests.helpers.components import built_once

# Builds a Python component and compiles it in a pod: over 180 s beside four busy loops on this
# machine (stress run I), under a minute when quiet.
pytestmark = pytest.mark.timeout(420)

ROOT = Path(__file__).resolve().parents[2]
COUNTER_APP = ROOT / "examples" / "counter-py" / "app.py"


@pytest.fixture(scope="module")
def counter_wasm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The built component (shared with tests/runtime/test_components.py) and its sha256."""
    wasm = built_once(COUNTER_APP, tmp_path_factory)
    return wasm, hashlib.sha256(wasm.read_bytes()).hexdigest()


async def swarm(url: str, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The CLI as a process, with more time than by default: verbs on a component are slower."""
    return await swarm_cli(url, *args, timeout=timeout)


async def test_a_python_counter_survives_the_loss_of_its_pod(
    counter_wasm: tuple[Path, str], tmp_path: Path
) -> None:
    wasm, sha = counter_wasm
    cache_dir = tmp_path / "shared-modules"
    async with cluster(tmp_path) as stack:
        url = stack.url
        async with running_pod(stack, "doomed", cache_dir, lease_s=1.0) as (pod, task):
            code, out, err = await swarm(url, "module", "push", str(wasm))
            assert code == 0, out + err
            assert f"--module-sha256 {sha}" in out

            # The pod has only the digest: it fetches the component from the object store.
            deployment = tmp_path / "counter.json"
            module = {"sha256": sha, "kind": "component"}
            spec = {"version": "v1", "module": module, "capabilities": ["fs"]}
            deployment.write_text(json.dumps({"name": "counter", "spec": spec}))
            code, out, err = await swarm(
                url,
                "agent",
                "deploy",
                "-f",
                str(deployment),
                "--wait",
                "--wait-timeout",
                "90",
                timeout=120,
            )
            assert code == 0, out + err
            assert "is running" in out
            await running_on(stack, "counter", "doomed")

            replies = []
            for _ in range(3):
                code, out, err = await swarm(url, "agent", "send", "counter", "{}")
                assert code == 0, err
                replies.append(out.strip())
            assert replies == ["1", "2", "3"]

            await lose_pod(pod, task)

        async with running_pod(stack, "spare", cache_dir) as (spare, _):
            # Compiled once, by the doomed pod; the spare deserializes it from the shared cache.
            # Beside four busy loops the spare took over 60 s to load and start the component.
            await running_on(stack, "counter", "spare", timeout=240)
            code, out, err = await swarm(url, "agent", "send", "counter", "{}")
            assert code == 0, err
            assert out.strip() == "4"
            # The "fs" grant: the replica's /data lives under the pods' shared scratch dir,
            # and goes when the replica stops (scratch space is not state).
            (replica_id,) = spare.replicas
            scratch = tmp_path / "scratch" / replica_id
            assert scratch.is_dir()
            code, out, err = await swarm(url, "agent", "stop", "counter")
            assert code == 0, out + err
            await wait_until(lambda: true(not scratch.exists()), 45, "the scratch dir removed")
        pods = {p["pod_id"]: p for p in await stack.pods()}
        assert pods["doomed"]["status"] == "lost"
