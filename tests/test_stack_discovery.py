"""A stack is found from any directory: `swarm up` records the stack it starts per user, and
`--data-dir`, SWARM_HOME (= SWARM_DATA_DIR) and an explicit NATS URL pick another.

Real stacks (`swarm up --detach`) in temporary data dirs; XDG_STATE_HOME points into the test's
own directory, so the user's record of their current stack is never read or written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.cli import connect, discovery
from swarm.kernel.settings import Settings
from tests.helpers.cli_process import run_cli

Swarm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The test's XDG_STATE_HOME (the record lives in `swarm/current.json` below it)."""
    return tmp_path / "state"


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory with a short path: PostgreSQL's socket lives in the data dir, and a socket
    path may not exceed 107 bytes (pytest's tmp_path for a long test name comes close)."""
    path = Path(tempfile.mkdtemp(prefix="swarm-", dir="/tmp")).resolve()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def swarm(tmp_path: Path, home: Path) -> Iterator[Swarm]:
    """`swarm ARGS` as a user runs it, in `cwd` (default: a directory of its own), with no
    SWARM_* variable but those given; stops every stack a test started, whatever happened."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    base["XDG_STATE_HOME"] = str(home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    started: list[Path] = []

    def run(
        *args: str, cwd: Path = elsewhere, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = run_cli(args, cwd=cwd, env={**base, **env}, timeout=timeout)
        if args[:1] == ("up",):
            where = args[args.index("--data-dir") + 1] if "--data-dir" in args else ".swarm"
            started.append((cwd / where).resolve())
        return result

    yield run
    for data_dir in started:
        run("down", "--data-dir", str(data_dir), timeout=90)


def status_of(swarm: Swarm, *args: str, **env: str) -> dict[str, Any]:
    result = swarm("status", "-o", "json", *args, **env)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def succeeds(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# --- With real stacks ----------------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_every_verb_finds_the_stack_from_another_directory(
    short: Path, home: Path, swarm: Swarm
) -> None:
    project = short / "project"
    project.mkdir()
    succeeds(swarm("up", "--detach", "--pods", "0", "--timeout", "240", cwd=project, timeout=300))
    data_dir = (project / ".swarm").resolve()
    record = json.loads((home / "swarm" / "current.json").read_text())
    assert record["data_dir"] == str(data_dir)

    report = status_of(swarm)
    assert (report["data_dir"], report["running"]) == (str(data_dir), True)
    assert report["selected_by"] == "recorded"
    assert "Which stack: the stack `swarm up` started last" in succeeds(swarm("status")).stdout

    # The Hive answers once it has elected itself; until then `agent ls` says it is unreachable.
    deadline = time.monotonic() + 120
    while (listed := swarm("agent", "ls")).returncode != 0:
        assert "no Swarm stack found" not in listed.stderr, listed.stderr
        assert time.monotonic() < deadline, listed.stdout + listed.stderr
        time.sleep(0.5)
    assert "no agents in namespace default" in listed.stderr

    migrated = succeeds(swarm("migrate"))
    assert "database schema at revision" in migrated.stdout
    assert str(data_dir) in migrated.stdout

    down = succeeds(swarm("down", timeout=90))
    assert f"Swarm stopped (pid {report['pid']}, {data_dir})" in down.stdout
    after = swarm("status")
    assert after.returncode == 1
    assert f"Swarm in {data_dir} is not running; the last run stopped" in after.stdout


@pytest.mark.timeout(420)
def test_data_dir_and_swarm_home_pick_another_stack_and_the_last_started_is_current(
    short: Path, swarm: Swarm
) -> None:
    first, second = short / "first", short / "second"
    for data_dir in (first, second):
        up = swarm("up", "--detach", "--no-services", "--data-dir", str(data_dir), timeout=200)
        succeeds(up)
    # Starting a stack beside the current one says which one verbs will find from now on.
    assert f"the current stack, in {first}, runs; this one in {second} becomes" in up.stderr

    def shown(*args: str, **env: str) -> tuple[str, str]:
        report = status_of(swarm, *args, **env)
        return report["data_dir"], report["selected_by"]

    assert shown() == (str(second), "recorded")
    assert shown("--data-dir", str(first)) == (str(first), "flag")
    assert shown(SWARM_HOME=str(first)) == (str(first), "env")
    assert shown(SWARM_DATA_DIR=str(first)) == (str(first), "env")
    assert shown(SWARM_HOME=str(first), SWARM_DATA_DIR=str(second)) == (str(first), "env")

    # A NATS server named outright wins over every stack.
    unreachable = "nats://127.0.0.1:1"
    for listed in (
        swarm("agent", "ls", "--nats-url", unreachable),
        swarm("agent", "ls", SWARM_NATS_URL=unreachable),
    ):
        assert listed.returncode == 4, listed.stdout + listed.stderr
        assert f"cannot reach NATS at {unreachable}" in listed.stderr

    # `migrate` takes the database of the stack chosen as every verb chooses it.
    migrated = succeeds(swarm("migrate", SWARM_HOME=str(first)))
    assert f"the database of the stack in {first}" in migrated.stdout

    # `down` without a flag stops the recorded stack only.
    down = succeeds(swarm("down", timeout=90))
    assert str(second) in down.stdout
    assert status_of(swarm)["running"] is False
    assert status_of(swarm, "--data-dir", str(first))["running"] is True
    succeeds(swarm("down", "--data-dir", str(first), timeout=90))


def test_without_any_stack_every_verb_says_where_it_looked(tmp_path: Path, swarm: Swarm) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    default = (cwd / ".swarm").resolve()

    status = swarm("status", cwd=cwd)
    assert status.returncode == 1
    assert f"No Swarm stack has run in {default}. Start one with: swarm up" in status.stdout
    assert "./.swarm of this directory, as `swarm up` has recorded no stack" in status.stdout

    listed = swarm("agent", "ls", cwd=cwd)
    assert listed.returncode == 4
    assert "no Swarm stack found: run `swarm up` or pass --nats-url" in listed.stderr
    assert f"looked in {default}" in listed.stderr
    assert "Traceback" not in listed.stderr

    down = succeeds(swarm("down", cwd=cwd))
    assert f"No Swarm stack is running in {default}" in down.stdout

    migrate = swarm("migrate", cwd=cwd)
    assert migrate.returncode == 2
    assert "no database" in migrate.stdout


# --- The record and the choice -------------------------------------------------------------------


def a_stack_dir(path: Path) -> Path:
    """A data dir that holds a stack state file, as `swarm up` leaves one."""
    path.mkdir(parents=True)
    (path / discovery.STACK_STATE_FILE).write_text("{}")
    return path


def test_the_record_lives_in_the_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert discovery.current_file() == tmp_path / "xdg" / "swarm" / "current.json"
    # The XDG specification: a relative path is invalid and is ignored.
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert discovery.current_file() == tmp_path / "home" / ".local" / "state" / "swarm" / (
        "current.json"
    )
    monkeypatch.delenv("XDG_STATE_HOME")
    assert discovery.state_home() == tmp_path / "home" / ".local" / "state"


def test_a_recorded_stack_is_read_back_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = a_stack_dir(tmp_path / "stack")
    monkeypatch.chdir(tmp_path)
    path = discovery.record_current(Path("stack"))
    assert json.loads(path.read_text())["data_dir"] == str(stack.resolve())
    assert discovery.read_current() == stack.resolve()
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["current.json"]  # no temporary left


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        '"/tmp"',
        "{}",
        '{"data_dir": 42}',
        '{"data_dir": ""}',
        '{"data_dir": "relative/dir"}',
        '{"data_dir": "/tmp/with\\u0000nul"}',
        '{"data_dir": "/nonexistent/swarm/data"}',
    ],
)
def test_a_record_that_names_no_stack_is_ignored(content: str) -> None:
    path = discovery.current_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    assert discovery.read_current() is None
    choice = discovery.choose(Settings())
    assert choice.source is discovery.Source.DEFAULT
    assert choice.data_dir == (Path.cwd() / ".swarm").resolve()


def test_a_record_whose_stack_was_deleted_is_ignored(tmp_path: Path) -> None:
    stack = a_stack_dir(tmp_path / "stack")
    discovery.record_current(stack)
    assert discovery.read_current() == stack
    (stack / discovery.STACK_STATE_FILE).unlink()
    assert discovery.read_current() is None


@pytest.fixture
def nothing_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own directory is the working directory, and no variable names a stack."""
    for name in discovery.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("nothing_chosen")
def test_the_choice_goes_flag_then_variable_then_record_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = a_stack_dir(tmp_path / "recorded")

    assert discovery.choose(Settings()).source is discovery.Source.DEFAULT
    discovery.record_current(recorded)
    choice = discovery.choose(Settings())
    assert (choice.data_dir, choice.source) == (recorded, discovery.Source.RECORDED)
    assert str(discovery.current_file()) in choice.describe()

    monkeypatch.setenv("SWARM_DATA_DIR", "old")
    choice = discovery.choose(Settings())
    assert (choice.data_dir, choice.detail) == (tmp_path / "old", "SWARM_DATA_DIR")
    monkeypatch.setenv("SWARM_HOME", "new")
    choice = discovery.choose(Settings())
    assert (choice.data_dir, choice.detail) == (tmp_path / "new", "SWARM_HOME")

    flag = discovery.choose(Settings(), flag=Path("flag"))
    assert (flag.data_dir, flag.source) == (tmp_path / "flag", discovery.Source.FLAG)


@pytest.mark.usefixtures("nothing_chosen")
def test_without_settings_the_choice_reads_the_same_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI finds its stack before it reads the settings (pydantic-settings): the same
    choice, from the same variables, in the same order."""

    def both() -> tuple[discovery.StackChoice, discovery.StackChoice]:
        return discovery.choose(None), discovery.choose(Settings())

    recorded = a_stack_dir(tmp_path / "recorded")
    light, full = both()
    assert light == full
    assert light.source is discovery.Source.DEFAULT
    discovery.record_current(recorded)
    light, full = both()
    assert light == full
    assert light.source is discovery.Source.RECORDED
    monkeypatch.setenv("SWARM_DATA_DIR", "old")
    light, full = both()
    assert light == full
    assert light.detail == "SWARM_DATA_DIR"
    monkeypatch.setenv("SWARM_HOME", "~/new")
    light, full = both()
    assert light == full
    assert light.detail == "SWARM_HOME"
    assert light.data_dir == Path("~/new").expanduser()
    assert discovery.choose(None, flag=Path("f")) == discovery.choose(Settings(), flag=Path("f"))


async def test_a_read_reads_the_settings_when_needed_with_the_stacks_hive_key(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read verb connects without the settings (`connect.connect(target)`); what needs them
    later (an outcome's seal check) gets the same as a verb that read them first: the Hive's key
    the stack recorded beside its URL, unless SWARM_HIVE_PUBLIC_KEY names one."""
    target = connect.NatsTarget(nats_url, "stack.json", hive_public_key="recorded")

    async def key_seen() -> str | None:
        log = await connect.connect(target)
        try:
            return log.settings.hive_public_key
        finally:
            await log.close()

    monkeypatch.delenv("SWARM_HIVE_PUBLIC_KEY", raising=False)
    assert await key_seen() == "recorded"
    monkeypatch.setenv("SWARM_HIVE_PUBLIC_KEY", "named")
    assert await key_seen() == "named"


@pytest.mark.usefixtures("nothing_chosen")
def test_swarm_up_starts_where_it_runs_whatever_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    discovery.record_current(a_stack_dir(tmp_path / "recorded"))
    choice = discovery.choose(Settings(), recorded=False)
    assert (choice.data_dir, choice.source) == (tmp_path / ".swarm", discovery.Source.DEFAULT)
    assert choice.describe() == "./.swarm of this directory, as `swarm up` starts where it runs"
