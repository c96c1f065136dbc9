"""The Hive's settings: the Raft password given outright or as a file, never both, never short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.hive.config import HiveSettings
from swarm.devstack.principals import issue
from swarm.kernel import env


def test_the_raft_password_is_read_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "raft-password"
    path.write_text("a-long-secret\n")
    assert HiveSettings(raft_password_file=path).raft_password == "a-long-secret"
    assert HiveSettings(raft_password="a-long-secret").raft_password == "a-long-secret"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "SWARM_HIVE_RAFT_PASSWORD (or SWARM_HIVE_RAFT_PASSWORD_FILE) is required"),
        ({"raft_password": "short"}, "SWARM_HIVE_RAFT_PASSWORD must have at least 8"),
        ({"file": "short\n"}, "the file SWARM_HIVE_RAFT_PASSWORD_FILE names must have at least 8"),
        ({"file": "\n"}, "must have at least 8"),
        ({"file": "a-long-secret", "raft_password": "a-long-secret"}, "not both"),
        ({"missing": True}, "SWARM_HIVE_RAFT_PASSWORD_FILE: cannot read it"),
    ],
)
def test_a_missing_short_doubled_or_unreadable_password_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: dict[str, object], message: str
) -> None:
    for key in ("SWARM_HIVE_RAFT_PASSWORD", "SWARM_HIVE_RAFT_PASSWORD_FILE"):
        monkeypatch.delenv(key, raising=False)
    kwargs: dict[str, object] = {k: v for k, v in given.items() if k == "raft_password"}
    path = tmp_path / "raft-password"
    if "file" in given:
        path.write_text(str(given["file"]))
    if "file" in given or "missing" in given:
        kwargs["raft_password_file"] = path
    with pytest.raises(ValidationError, match=re.escape(message)):
        HiveSettings(**kwargs)  # type: ignore[arg-type]


def test_the_principals_the_dev_stack_names_are_read_from_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`swarm up` names the list by `swarm.kernel.env.HIVE_PRINCIPALS_FILE`; the Hive reads it
    there, and refuses a list it cannot read, naming the variable."""
    issue(tmp_path, [("admin", "admin"), ("pod-0", "pod")])
    monkeypatch.setenv(env.HIVE_PRINCIPALS_FILE, str(tmp_path / "principals.json"))
    roster = HiveSettings(raft_password="a-long-secret").principals()
    assert roster is not None
    listed = [roster.get(p.public_key) for p in issue(tmp_path, [("admin", "admin")])]
    assert [(p.name, p.role) for p in listed if p is not None] == [("admin", "admin")]
    monkeypatch.setenv(env.HIVE_PRINCIPALS_FILE, str(tmp_path / "missing.json"))
    with pytest.raises(ValidationError, match="SWARM_HIVE_PRINCIPALS_FILE: cannot read"):
        HiveSettings(raft_password="a-long-secret")
