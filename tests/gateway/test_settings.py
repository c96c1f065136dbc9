"""Where the API's token comes from, and that the CLI and the API share one command layer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from swarm.cli import publish, verbs
from swarm.cli.stack import api_token_file, gateway_service
from swarm.client import commands
from swarm.gateway import GatewaySettings
from tests.helpers.interpreter import run_python


def test_the_token_comes_from_the_environment_before_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SWARM_API_TOKEN", "SWARM_API_TOKEN_FILE", "SWARM_API_IDENTITY"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert GatewaySettings(token_file=path).bearer_token() == "from-file"
    assert GatewaySettings(token="from-env", token_file=path).bearer_token() == "from-env"
    with pytest.raises(ValueError, match="no API token"):
        GatewaySettings().bearer_token()
    with pytest.raises(ValidationError):
        GatewaySettings(identity="pod:p1")  # the API never speaks as a pod or an agent


def test_the_gateway_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SWARM_NATS_URL": "nats://127.0.0.1:1"}
    ran = run_python("-m", "swarm.gateway", env=env, cwd=tmp_path, timeout=30)
    assert ran.returncode != 0
    assert "no API token" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_the_gateway_refuses_to_start_on_principals_it_cannot_read(tmp_path: Path) -> None:
    broken = tmp_path / "principals.json"
    broken.write_text("[{")
    env = {
        "PATH": "/usr/bin:/bin",
        "SWARM_NATS_URL": "nats://127.0.0.1:1",
        "SWARM_API_TOKEN": "t" * 32,
        "SWARM_API_PRINCIPALS_FILE": str(broken),
        # The code under test, where a checkout is not the one installed.
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
    }
    ran = run_python("-m", "swarm.gateway", env=env, cwd=tmp_path, timeout=30)
    assert ran.returncode != 0
    assert "SWARM_API_PRINCIPALS_FILE" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
    missing = GatewaySettings(token="t", principals_file=tmp_path / "none.json")
    with pytest.raises(ValueError, match=r"none\.json"):
        missing.authenticator()


def test_swarm_up_writes_a_private_token_once(tmp_path: Path) -> None:
    path = api_token_file(tmp_path)
    token = path.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert api_token_file(tmp_path).read_text().strip() == token  # kept across restarts
    spec, url = gateway_service(tmp_path, port=0)
    assert spec.argv[1:] == ("-m", "swarm.gateway")
    assert spec.env["SWARM_API_TOKEN_FILE"] == str(path)
    assert url == f"http://127.0.0.1:{spec.env['SWARM_API_PORT']}"


def test_the_cli_builds_commands_with_the_clients_functions() -> None:
    assert publish.build_command is commands.build_command
    assert publish.wait_for_outcome is commands.wait_for_outcome
    assert verbs.issue is commands.issue
    assert verbs.read_floor is commands.read_floor
