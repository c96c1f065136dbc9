"""`swarm user add --role`, `grant`, `revoke`, `token` and `ls` against a real `swarm up` stack:
a user acts with the role it was given, where it was given, through the CLI and through the
HTTP API with its own token, and the CLI and the API say why it was refused."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.cli_process import run_cli
from tests.helpers.history import WASM

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
    # It reads the namespaces where it holds a role alone: the Hive answers its queries so.
    assert swarm("namespace", "create", "other").returncode == 0
    hidden = swarm("agent", "deploy", "hidden", "-n", "other", "--module", echo)
    assert hidden.returncode == 0, hidden.stdout + hidden.stderr
    listed_agents = swarm("agent", "ls", "-A", "-o", "json", as_user=dee)
    assert listed_agents.returncode == 0, listed_agents.stdout + listed_agents.stderr
    agents = json.loads(listed_agents.stdout)["agents"]
    assert [(a["namespace"], a["name"]) for a in agents] == [("default", "echo")]
    assert len(json.loads(swarm("agent", "ls", "-A", "-o", "json").stdout)["agents"]) == 2
    for read in (("agent", "describe", "hidden", "-n", "other"), ("agent", "ls", "-n", "other")):
        refused = swarm(*read, as_user=dee)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert (
            "forbidden: user dee may not read namespace other: it needs role viewer in "
            "namespace other and holds no role there (the stack's owner grants it with "
            "`swarm user grant dee viewer --namespace other`)"
        ) in refused.stderr
    pods = swarm("pod", "ls", as_user=dee)
    assert pods.returncode == 1, pods.stdout + pods.stderr
    assert "may not list the pods: it needs role viewer in every namespace" in pods.stderr

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


def test_users_api_tokens_act_with_their_roles(
    stack: tuple[dict[str, str], Path, dict[str, Any]],
) -> None:
    """`swarm user add --api-token`, `token` (to replace one), `rotate` and `rm` against the
    stack's own HTTP API: a user's token acts with the user's roles; the owner's still works."""
    env, cwd, report = stack
    data = Path(report["data_dir"])
    owner_token = (data / "api-token").read_text().strip()

    def swarm(*args: str) -> Any:
        done = run_cli(args, cwd=cwd, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def token_in(output: str) -> str:
        (token,) = [line for line in output.splitlines() if line.startswith("swarm_")]
        return token

    with httpx.Client(base_url=report["api_url"], timeout=30) as api:

        def status(method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return api.request(method, path, headers=headers, **kwargs)

        deadline = time.monotonic() + 60
        while True:  # the API's process may still be starting
            try:
                if api.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the HTTP API was not ready within 60 s"
            time.sleep(0.2)

        viewer = token_in(swarm("user", "add", "vee", "--role", "viewer", "--api-token").stdout)
        swarm("user", "add", "opal", "--role", "operator")
        issued = json.loads(swarm("user", "token", "opal", "-o", "json").stdout)
        operator = issued["token"]
        assert issued["api_url"] == report["api_url"]
        assert "API token swarm_…" in swarm("user", "ls").stdout

        deploy = {"name": "e", "spec": {"version": "v1", "module": {"inline": WASM}}}
        agents = "/v1/namespaces/default/agents"
        deployed = status("POST", agents, operator, json=deploy)
        assert deployed.status_code == 200, deployed.text
        refused = status("POST", agents, viewer, json={**deploy, "name": "f"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["rule"] == "access"
        listed = status("GET", "/v1/agents", viewer)
        assert [a["name"] for a in listed.json()["agents"]] == ["e"]
        assert status("GET", "/v1/pods", viewer).status_code == 403
        assert status("GET", "/v1/pods", owner_token).status_code == 200

        # The file keeps digests alone, for its owner alone.
        kept = data / "principals" / "api-tokens.json"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert viewer not in kept.read_text()
        assert operator not in kept.read_text()

        replaced = json.loads(swarm("user", "token", "opal", "-o", "json").stdout)["token"]
        assert status("GET", "/v1/agents", operator).status_code == 401
        assert status("GET", "/v1/agents", replaced).status_code == 200
        rotated = swarm("user", "rotate", "opal")
        assert "API token is revoked too" in rotated.stdout
        assert status("GET", "/v1/agents", replaced).status_code == 401
        swarm("user", "rm", "vee")
        gone = status("GET", "/v1/agents", viewer)
        assert gone.status_code == 401
        assert gone.headers["www-authenticate"].startswith("Bearer")
        assert status("GET", "/v1/agents", owner_token).status_code == 200
