"""`swarm user add --role`, `grant`, `revoke` and `ls` against a real `swarm up` stack: a user
acts with the role it was given, where it was given, and the CLI says why it was refused."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli_process import run_cli

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, dict[str, Any]]]:
    """A stack with its Hive (no pods: nothing here runs an agent), found through
    SWARM_DATA_DIR, and its `swarm status -o json`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["SWARM_DATA_DIR"] = str(tmp_path / "data")
    up = run_cli(["up", "--detach", "--pods", "0"], cwd=tmp_path, env=env, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        deadline = time.monotonic() + 120
        while True:  # `up --detach` returns once the services started: the Hive then elects
            status = run_cli(["status", "-o", "json"], cwd=tmp_path, env=env, timeout=60)
            report = json.loads(status.stdout)
            if report["hive"] and report["hive"][0].get("is_leader"):
                break
            assert time.monotonic() < deadline, "the Hive did not lead within 120 s"
            time.sleep(0.2)
        yield env, tmp_path, report
    finally:
        run_cli(["down"], cwd=tmp_path, env=env, timeout=120)


def test_a_user_acts_with_the_role_the_owner_gave_it(
    stack: tuple[dict[str, str], Path, dict[str, Any]],
) -> None:
    env, cwd, report = stack

    def swarm(*args: str, as_user: dict[str, str] | None = None) -> Any:
        return run_cli(args, cwd=cwd, env={**env, **(as_user or {})}, timeout=60)

    added = swarm("user", "add", "dee", "--role", "operator")
    assert added.returncode == 0, added.stdout + added.stderr
    assert "user dee is operator in namespace default" in added.stdout
    dee = {
        "SWARM_NATS_CREDENTIALS": str(Path(report["data_dir"]) / "principals" / "dee.nk"),
        "SWARM_IDENTITY": "user:dee",
    }
    listed = swarm("user", "ls")
    assert "operator in default" in listed.stdout, listed.stdout

    # An operator of `default` runs agents there, and only there...
    echo = str(ROOT / "examples" / "echo" / "echo.wat")
    deployed = swarm("agent", "deploy", "echo", "--module", echo, as_user=dee)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    elsewhere = swarm("agent", "deploy", "echo", "-n", "dees", "--module", echo, as_user=dee)
    assert elsewhere.returncode == 1
    assert "needs role operator in namespace dees and holds no role there" in elsewhere.stderr
    # ...but creates no namespace: that takes an admin of every namespace.
    created = swarm("namespace", "create", "dees", as_user=dee)
    assert created.returncode == 1, created.stdout + created.stderr
    assert "needs role admin in every namespace and holds no role there" in created.stderr
    assert "rule: access" in created.stderr

    granted = swarm("user", "grant", "dee", "admin", "--all-namespaces")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert "user dee is admin in every namespace" in granted.stdout
    assert swarm("namespace", "create", "dees", as_user=dee).returncode == 0
    assert "admin in every namespace" in swarm("user", "ls").stdout

    revoked = swarm("user", "revoke", "dee", "--all-namespaces")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    again = swarm("namespace", "create", "dees2", as_user=dee)
    assert again.returncode == 1
    assert "rule: access" in again.stderr
    # A user cannot give itself more than it holds.
    raised = swarm("user", "grant", "dee", "admin", "-n", "default", as_user=dee)
    assert raised.returncode == 1
    assert "needs role admin in namespace default and holds operator there" in raised.stderr
