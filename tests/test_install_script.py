"""scripts/install is quiet unless asked or failing, and skips pip when nothing changed.

It runs here on a copy of the script in a temp project whose `.venv/bin/python` is a stand-in
that prints what pip would (many lines) and records each call, so the script's own behaviour is
what is checked, in milliseconds, without touching a real environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.txt"
for i in $(seq 1 90); do echo "Requirement already satisfied: package-$i"; done
echo "BuildBackendWarning: something deprecated" >&2
exit "${FAKE_PIP_EXIT:-0}"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install", tmp_path / "scripts" / "install")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(_FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def _install(
    project: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    full_env = {k: v for k, v in os.environ.items() if k != "SWARM_VERBOSE"} | env
    proc = subprocess.run(
        ["bash", str(project / "scripts" / "install"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=30,
        check=False,
    )
    calls = project / ".venv" / "bin" / "calls.txt"
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_quiet_by_default_and_pip_output_kept_in_a_log(project: Path) -> None:
    proc, calls = _install(project)

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("Installing Swarm into .venv")
    assert calls == ["-m pip install --disable-pip-version-check -e ."]
    log = (project / ".venv" / "install.log").read_text()
    assert "package-90" in log
    assert "BuildBackendWarning" in log


def test_nothing_to_do_when_pyproject_is_unchanged(project: Path) -> None:
    _install(project, "--dev")
    again, calls = _install(project)  # the dev install covers the base one
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert len(calls) == 1

    (project / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    changed, calls = _install(project)
    assert changed.returncode == 0
    assert len(calls) == 2
    base_only, calls = _install(project, "--dev")  # the base install does not cover dev
    assert base_only.returncode == 0
    assert calls[-1].endswith("-e .[dev]")


def test_verbose_shows_pip_output(project: Path) -> None:
    proc, _ = _install(project, "-v")
    assert "package-90" in proc.stdout
    assert "BuildBackendWarning" in proc.stderr

    (project / ".venv" / ".swarm-install").unlink()
    by_env, _ = _install(project, SWARM_VERBOSE="1")
    assert "package-90" in by_env.stdout


def test_a_failing_pip_prints_its_log_and_fails(project: Path) -> None:
    proc, _ = _install(project, FAKE_PIP_EXIT="1")

    assert proc.returncode == 1
    assert "failed; its output (.venv/install.log):" in proc.stderr
    assert "package-90" in proc.stderr
    assert not (project / ".venv" / ".swarm-install").exists()  # the next run tries again


def test_unknown_arguments_are_refused(project: Path) -> None:
    proc, calls = _install(project, "--frobnicate")
    assert proc.returncode == 2
    assert "usage: scripts/install" in proc.stderr
    assert calls == []
