"""`swarm up` / `status` / `down` as a user runs them: real processes, real servers."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats
import nats.errors
import psutil
import psycopg
import pytest
from alembic import command

from schemas import names
from swarm.devstack.stack import (
    Stack,
    StackPhase,
    StackState,
    alembic_config,
    read_state,
    sqlalchemy_url,
    stop_on_signal,
    upgrade_database,
)
from swarm.devstack.supervisor import RestartPolicy
from swarm.kernel.settings import Settings
from swarm.kernel.signing import CommandSigner
from tests.helpers.cli_process import run_cli
from tests.helpers.processes import gone

#: Whole stacks start and stop here, several per test: minutes on a busy machine.
pytestmark = pytest.mark.timeout(300)

#: Runs one `swarm` stack verb in a subprocess.
Swarm = Callable[..., subprocess.CompletedProcess[str]]

#: A service that records the environment it was given, then idles.
PROBE = (
    "import json, os, sys, time; "
    "env = {k: v for k, v in os.environ.items() if k.startswith('SWARM_')}; "
    "open(sys.argv[1] + '.tmp', 'w').write(json.dumps(env)); "
    "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); "
    "time.sleep(600)"
)


@pytest.fixture
def env() -> dict[str, str]:
    """The environment without SWARM_*: a CI pointing the suite at external servers must not
    make `swarm up` use them where a test expects embedded ones."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}


@pytest.fixture
def swarm(tmp_path: Path, env: dict[str, str]) -> Iterator[Swarm]:
    """Run `swarm <args>` (the stack verbs) in a subprocess; stops what a test left running."""
    data_dirs: set[str] = set()

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if "--data-dir" in args:
            data_dirs.add(args[args.index("--data-dir") + 1])
        return run_cli(args, cwd=tmp_path, env=env, timeout=timeout, module="swarm.cli.stack")

    yield run
    for data_dir in data_dirs:
        run("down", "--data-dir", data_dir)


def status_json(swarm: Swarm, data_dir: Path) -> Any:
    return json.loads(swarm("status", "--data-dir", str(data_dir), "-o", "json").stdout)


def describe_processes(pids: list[int]) -> list[str]:
    described = []
    for pid in pids:
        try:
            described.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline()[:6])}")
        except psutil.Error:
            described.append(f"{pid}: gone")
    return described


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stack_pids(report: Any) -> list[int]:
    pids = [report["pid"]]
    state = read_state(Path(report["data_dir"]))
    assert state is not None
    pids += [p for p in (state.nats_pid, state.postgres_pid) if p]
    pids += [s["pid"] for s in report["services"] if s["pid"]]
    return pids


def private_mode(path: Path) -> int:
    """The group and other bits of `path`'s mode."""
    return path.stat().st_mode & 0o077


def open_to_others(root: Path) -> list[str]:
    """What under `root` its group or other users may read or write (the servers create and
    remove files meanwhile: one gone before it is looked at is skipped)."""
    found = []
    for path in root.rglob("*"):
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(mode) and mode & 0o066:
            found.append(f"{oct(mode)} {path}")
    return found


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_up_status_down_and_restart_keep_the_data(
    tmp_path: Path, data_dir: Path, swarm: Swarm
) -> None:
    env_file = tmp_path / "probe-env.json"
    probe = f"probe={shlex.join([sys.executable, '-c', PROBE, str(env_file)])}"

    up = swarm("up", "--detach", "--data-dir", str(data_dir), "--service", probe)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Swarm is up" in up.stdout

    report = status_json(swarm, data_dir)
    assert report["running"] is True
    assert report["state"] == "running"
    # The data dir is its user's: others cannot list it (as root they may pass through it to
    # reach PostgreSQL's data, which its server user owns), and nothing in it is readable by
    # them: logs, stack.json, the servers' data, the Raft journal.
    assert private_mode(data_dir) in (0, 0o001), oct(private_mode(data_dir))
    assert open_to_others(data_dir) == []
    # The Raft password is in a file, not in the Hive's environment (nor its children's).
    (hive_pid,) = [s["pid"] for s in report["services"] if s["name"] == "hive"]
    hive_env = psutil.Process(hive_pid).environ()
    assert "SWARM_HIVE_RAFT_PASSWORD" not in hive_env
    assert private_mode(Path(hive_env["SWARM_HIVE_RAFT_PASSWORD_FILE"])) == 0
    assert report["nats_reachable"] is True
    assert report["migration"] == "0003"
    nats_url, database_url = report["nats_url"], report["database_url"]
    assert nats_url.startswith("nats://127.0.0.1:")
    assert database_url.startswith("postgresql://")
    assert [(s["name"], s["state"] in ("starting", "running")) for s in report["services"]] == [
        ("hive", True),
        ("scheduler", True),
        ("webhooks", True),
        ("observer", True),
        ("pod-0", True),
        ("gateway", True),
        ("probe", True),
    ]
    shown = swarm("status", "--data-dir", str(data_dir))
    assert shown.returncode == 0
    # The database URL carries the stack's PostgreSQL password: the table masks it.
    password = urlsplit(database_url).password
    assert password
    assert password not in shown.stdout
    assert ":***@" in shown.stdout

    # The servers answer, with the streams and the schema in place; NATS to the stack's owner
    # (tests/test_stack_auth.py: to no one else).
    owner = report["nats_credentials"]
    assert report["nats_credentials_kind"] == "nkey-seed"
    # Over TLS, verified against the stack's own CA (tests/test_stack_auth.py: no other).
    ca = report["nats_ca"]
    # A query is signed, and answered under the signer's own inbox prefix (Security model).
    signer = CommandSigner.from_seed_file(Path(owner))
    nc = await nats.connect(
        nats_url,
        nkeys_seed=owner,
        tls=ssl.create_default_context(cafile=ca),
        inbox_prefix=names.inbox_prefix(signer.public_key),
    )
    try:
        js = nc.jetstream()
        for stream in (names.STREAM_COMMANDS, names.STREAM_EVENTS):
            assert (await js.stream_info(stream)).config.name == stream
        subject = names.event_subject("agent", "a1", "running")
        ack = await js.publish(subject, b"kept across restarts")
        # The Hive the stack started answers queries once it has elected itself.
        deadline = time.monotonic() + 60
        while True:
            try:
                signed = signer.query_headers(names.QUERY_STATUS, b"", time.time_ns() // 10**6)
                reply = await nc.request(names.QUERY_STATUS, b"", timeout=1, headers=signed)
                hive = json.loads(reply.data)
                if hive.get("is_leader"):
                    break
            except nats.errors.Error:
                pass
            assert time.monotonic() < deadline, "the Hive did not come up"
            await asyncio.sleep(0.1)
        assert hive["node"] == "hive-0"
    finally:
        await nc.close()
    # The HTTP API answers on the URL in the state file, with the token `swarm up` wrote.
    api_url = report["api_url"]
    assert api_url.startswith("http://127.0.0.1:")
    token_file = data_dir / "api-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    async with httpx.AsyncClient(base_url=api_url, timeout=5) as api:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await api.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the HTTP API did not become ready"
            await asyncio.sleep(0.1)
        assert (await api.get("/v1/namespaces", headers=auth)).status_code == 200
        assert (await api.get("/v1/namespaces")).status_code == 401
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select extversion from pg_extension where extname='vector'").fetchone()
        assert row is not None
        assert conn.execute("select version_num from alembic_version").fetchone() == ("0003",)
        assert conn.execute("select to_regclass('swarm_meta')").fetchone() == ("swarm_meta",)

    # The service was told where the servers are.
    wait_for(env_file.exists, 60, "the probe service to start")
    probe_env = json.loads(env_file.read_text())
    assert probe_env["SWARM_NATS_URL"] == nats_url
    assert probe_env["SWARM_DATABASE_URL"] == database_url
    assert probe_env["SWARM_DATA_DIR"] == str(data_dir)

    # A second stack on the same data dir is refused, in the foreground and in the background.
    for args in (("up",), ("up", "--detach")):
        again = swarm(*args, "--data-dir", str(data_dir))
        assert again.returncode != 0
        assert "already running" in again.stderr
        assert f"pid {report['pid']}" in again.stderr
        assert nats_url in again.stderr
    assert status_json(swarm, data_dir)["pid"] == report["pid"]

    pids = stack_pids(report)
    # supervisor, nats, postgres, hive, scheduler, webhooks, observer, pod-0, gateway, probe
    assert len(pids) == 10
    down = swarm("down", "--data-dir", str(data_dir))
    assert down.returncode == 0, down.stderr
    assert "Swarm stopped" in down.stdout
    assert [pid for pid in pids if not gone(pid)] == []

    stopped = swarm("status", "--data-dir", str(data_dir), "-o", "json")
    assert stopped.returncode == 1
    assert json.loads(stopped.stdout)["running"] is False
    assert json.loads(stopped.stdout)["state"] == "stopped"

    # Same data dir: same ports when free, same JetStream store, same database.
    up = swarm("up", "--detach", "--data-dir", str(data_dir))
    assert up.returncode == 0, up.stdout + up.stderr
    report = status_json(swarm, data_dir)
    assert (report["nats_url"], report["database_url"]) == (nats_url, database_url)
    assert report["api_url"] == api_url
    assert report["nats_credentials"] == owner  # the same principals, the same keys
    assert report["nats_ca"] == ca  # the same CA: its clients keep trusting the server
    nc = await nats.connect(nats_url, nkeys_seed=owner, tls=ssl.create_default_context(cafile=ca))
    try:
        msg = await nc.jetstream().get_msg(names.STREAM_EVENTS, ack.seq)
        assert msg.data == b"kept across restarts"
    finally:
        await nc.close()
    assert swarm("down", "--data-dir", str(data_dir)).returncode == 0


def test_a_sigkilled_supervisor_leaves_no_process_behind(data_dir: Path, swarm: Swarm) -> None:
    up = swarm("up", "-d", "--data-dir", str(data_dir), "--service", "idle=sleep 600")
    assert up.returncode == 0, up.stdout + up.stderr
    report = status_json(swarm, data_dir)
    pids = stack_pids(report)
    # supervisor, nats, postgres, hive, scheduler, webhooks, observer, pod-0, gateway, idle
    assert len(pids) == 10

    os.kill(report["pid"], signal.SIGKILL)
    # Each service shuts down on its parent-death SIGTERM with NATS going away under it (each
    # NATS call then waits out its timeout): generous on a loaded machine, and says who stayed.
    deadline = time.monotonic() + 150
    while left := [pid for pid in pids if not gone(pid)]:
        assert time.monotonic() < deadline, f"still running: {describe_processes(left)}"
        time.sleep(0.05)

    # The state file is stale now; status must see through it, and up must not trip over it.
    dead = swarm("status", "--data-dir", str(data_dir), "-o", "json")
    assert dead.returncode == 1
    assert json.loads(dead.stdout)["state"] == "dead"
    assert json.loads(dead.stdout)["services"][0]["state"] == "stopped"
    up = swarm("up", "-d", "--data-dir", str(data_dir))
    assert up.returncode == 0, up.stdout + up.stderr
    assert swarm("down", "--data-dir", str(data_dir)).returncode == 0


async def test_a_killed_server_is_restarted_on_its_port_with_its_data(
    data_dir: Path, swarm: Swarm
) -> None:
    up = swarm("up", "-d", "--data-dir", str(data_dir), "--no-services")
    assert up.returncode == 0, up.stdout + up.stderr
    first = read_state(data_dir)
    assert first is not None
    assert first.nats_url
    assert first.nats_ca
    assert first.database_url
    assert (first.nats_restarts, first.postgres_restarts) == (0, 0)

    async def restarted(server: str, old_pid: int | None) -> Any:
        deadline = time.monotonic() + 90
        while True:
            state = read_state(data_dir)
            assert state is not None
            assert state.phase is StackPhase.RUNNING, state.error
            pid = getattr(state, f"{server}_pid")
            if getattr(state, f"{server}_restarts") == 1 and pid not in (None, old_pid):
                return status_json(swarm, data_dir)
            assert time.monotonic() < deadline, f"{server} was not restarted: {state}"
            await asyncio.sleep(0.05)

    # A client connected before the kill keeps its connection object: nats-py reconnects it.
    nc = await nats.connect(
        first.nats_url,
        nkeys_seed=first.nats_credentials,
        tls=ssl.create_default_context(cafile=first.nats_ca),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
    )
    try:
        js = nc.jetstream()
        subject = names.event_subject("agent", "a1", "running")
        before = await js.publish(subject, b"written before the kill")
        assert first.nats_pid is not None
        os.kill(first.nats_pid, signal.SIGKILL)
        report = await restarted("nats", first.nats_pid)
        assert report["state"] == "running"
        assert (report["nats_url"], report["nats_reachable"]) == (first.nats_url, True)
        assert report["nats_restarts"] == 1
        assert "killed by SIGKILL" in report["nats_error"]
        deadline = time.monotonic() + 60
        while True:  # until the client noticed and reconnected
            try:
                after = await js.publish(subject, b"written after the restart", timeout=1)
                break
            except (TimeoutError, nats.errors.Error):
                assert time.monotonic() < deadline, "the client did not reconnect"
                await asyncio.sleep(0.1)
        assert after.seq == before.seq + 1  # same store: nothing lost, nothing reset
        assert (await js.get_msg(names.STREAM_EVENTS, before.seq)).data == (
            b"written before the kill"
        )
    finally:
        await nc.close()
    table = swarm("status", "--data-dir", str(data_dir)).stdout
    nats_row = next(line for line in table.splitlines() if line.startswith("nats "))
    assert nats_row.split()[1:3] == ["running", str(report["nats_pid"])]
    assert "killed by SIGKILL" in table
    assert nats_row.rstrip().endswith(" 1")  # RESTARTS

    # Postgres: crash recovery on the same cluster, the migrated schema still there.
    assert first.postgres_pid is not None
    os.kill(first.postgres_pid, signal.SIGKILL)
    report = await restarted("postgres", first.postgres_pid)
    assert report["database_url"] == first.database_url
    assert report["postgres_restarts"] == 1
    with psycopg.connect(first.database_url, connect_timeout=30) as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == ("0003",)
    state = read_state(data_dir)
    assert state is not None
    pids = [state.pid, state.nats_pid, state.postgres_pid]
    assert swarm("down", "--data-dir", str(data_dir)).returncode == 0
    assert [pid for pid in pids if not gone(pid)] == []


def test_a_server_restart_that_fails_is_retried_until_it_works(
    data_dir: Path, database_url: str
) -> None:
    """The port of a killed nats-server is taken before the supervisor restarts it: the restart
    fails and says why, and the next attempt, once the port is free again, succeeds."""
    stack = Stack(
        Settings(data_dir=data_dir, nats_url=None, database_url=database_url),
        server_policy=RestartPolicy(initial_delay=1.0, factor=2.0, max_delay=2.0),
    )
    first = stack.start()
    assert first.nats_url is not None
    assert first.nats_pid is not None
    nats_pid = first.nats_pid
    port = urlsplit(first.nats_url).port
    assert port is not None
    stop = threading.Event()
    seen: dict[str, StackState] = {}

    def state_where(check: Callable[[StackState], bool], what: str) -> StackState:
        deadline = time.monotonic() + 90
        while True:
            state = read_state(data_dir)
            if state is not None and check(state):
                return state
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {state}"
            time.sleep(0.02)

    def chaos() -> None:
        try:
            os.kill(nats_pid, signal.SIGKILL)
            with socket.socket() as squatter:
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                deadline = time.monotonic() + 30
                while True:  # as soon as the killed server has let go of it
                    try:
                        squatter.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        assert time.monotonic() < deadline
                        time.sleep(0.005)
                squatter.listen()
                seen["taken"] = state_where(
                    lambda s: "taken" in (s.nats_error or ""), "a failed restart"
                )
            seen["back"] = state_where(lambda s: s.nats_restarts == 1, "the restart")
        finally:
            stop.set()

    helper = threading.Thread(target=chaos)
    helper.start()
    try:
        stack.supervise(stop, interval=0.02)
    finally:
        stop.set()
        helper.join()
        stack.stop()
    taken, back = seen["taken"], seen["back"]
    assert taken.phase is StackPhase.RUNNING
    assert taken.nats_pid is None
    assert f"port {port}" in (taken.nats_error or "")
    assert back.nats_pid not in (None, first.nats_pid)
    assert back.nats_url == first.nats_url
    log = (data_dir / "nats" / "nats-server.log").read_text()
    assert "nats-server killed by SIGKILL; restarting in 1s" in log
    assert "restart failed" in log


@pytest.mark.timeout(20)
def test_a_stop_signal_that_lands_inside_the_poll_wait_still_stops() -> None:
    stop = threading.Event()
    request_stop = stop_on_signal(stop)
    # Where the supervising thread is, briefly, on the way in and out of each `stop.wait()`:
    # holding the event's own lock (a private attribute, named here only to stand there).
    with stop._cond:  # type: ignore[attr-defined]
        request_stop(signal.SIGTERM, None)  # before the fix: waited for this lock forever
        assert not stop.is_set()
    assert stop.wait(10)


def test_foreground_up_stops_everything_on_ctrl_c(
    tmp_path: Path, data_dir: Path, env: dict[str, str]
) -> None:
    output = tmp_path / "up.out"
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swarm.cli.stack", "up", "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "SWARM_JETSTREAM_SYNC": "always"},
            cwd=tmp_path,
        )
    try:

        def ready() -> bool:
            state = read_state(data_dir)
            assert proc.poll() is None, output.read_text()
            return state is not None and state.pid == proc.pid and state.phase is StackPhase.RUNNING

        wait_for(ready, 120, "the stack to be ready")
        state = read_state(data_dir)
        assert state is not None
        assert state.jetstream_sync == "always"
        assert "sync_interval: always" in (data_dir / "nats" / "nats-server.conf").read_text()
        servers = [state.nats_pid, state.postgres_pid]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, output.read_text()
    finally:
        proc.kill()
        proc.wait()
    assert all(gone(pid) for pid in servers)
    text = output.read_text()
    assert "Swarm is up" in text
    assert "Swarm stopped" in text
    final = read_state(data_dir)
    assert final is not None
    assert final.phase is StackPhase.STOPPED


def test_down_and_status_when_nothing_runs(tmp_path: Path, swarm: Swarm) -> None:
    down = swarm("down", "--data-dir", str(tmp_path / "none"))
    assert down.returncode == 0
    assert "No Swarm stack is running" in down.stdout
    status = swarm("status", "--data-dir", str(tmp_path / "none"), "-o", "json")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert (report["running"], report["state"], report["nats_url"]) == (False, "absent", None)


def test_a_failing_background_start_reports_its_log(data_dir: Path, swarm: Swarm) -> None:
    bad_db = f"postgresql://postgres@127.0.0.1:{closed_port()}/swarm"
    up = swarm("up", "--detach", "--data-dir", str(data_dir), "--database-url", bad_db)
    assert up.returncode != 0
    assert "cannot reach the database" in up.stderr
    assert "up.log says" in up.stderr
    state = read_state(data_dir)
    assert state is not None
    assert state.phase is StackPhase.FAILED
    # The embedded NATS it had started on the way is stopped again.
    assert gone(state.nats_pid)


def test_external_servers_are_used_and_left_running(
    data_dir: Path,
    swarm: Swarm,
    nats_url: str,
    database_url: str,
) -> None:
    args = ("--data-dir", str(data_dir), "--nats-url", nats_url, "--database-url", database_url)
    up = swarm("up", "-d", *args)
    assert up.returncode == 0, up.stdout + up.stderr
    report = status_json(swarm, data_dir)
    assert (report["nats_url"], report["nats_external"]) == (nats_url, True)
    assert (report["database_url"], report["database_external"]) == (database_url, True)
    state = read_state(data_dir)
    assert state is not None
    assert (state.nats_pid, state.postgres_pid) == (None, None)
    assert not (data_dir / "nats").exists()
    assert not (data_dir / "postgres").exists()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == ("0003",)

    down = swarm("down", "--data-dir", str(data_dir))
    assert down.returncode == 0
    assert "External NATS and PostgreSQL left running" in down.stdout
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_migrations_apply_once_and_roll_back(database_url: str) -> None:
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"

    # A database of its own, so rolling back does not pull tables from under other tests.
    name = f"migrations_{os.getpid()}"
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        assert upgrade_database(url) == "0003"
        assert upgrade_database(url) == "0003"
        command.downgrade(alembic_config(url), "base")
        with psycopg.connect(url) as conn:
            assert conn.execute("select to_regclass('swarm_meta')").fetchone() == (None,)
            assert conn.execute("select count(*) from alembic_version").fetchone() == (0,)
        assert upgrade_database(url) == "0003"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_up_with_demo_deploys_an_agent_that_answers(data_dir: Path, swarm: Swarm) -> None:
    """`scripts/up` runs `swarm up --demo`: the echo example must be running and answering."""
    up = swarm("up", "--detach", "--demo", "--data-dir", str(data_dir), timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "demo: agent default/echo deployed" in up.stdout
    nats_url = status_json(swarm, data_dir)["nats_url"]
    deadline = time.monotonic() + 120
    while True:  # deployed is not yet running: the scheduler and the pod take a moment
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "swarm.cli.app",
                "agent",
                "send",
                "echo",
                '{"hi": 1}',
                "--nats-url",
                nats_url,
                "--timeout",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if sent.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"hi": 1}
    refusals = _mesh_impersonation(data_dir, nats_url)
    assert refusals["unsigned"].startswith("unauthenticated: the message is not signed")
    forbidden = (
        "forbidden: the message claims identity 'user:admin' but is signed by mallory "
        "(role user), who may act only as user:mallory"
    )
    assert refusals["forged"] == forbidden
    # What the user sees: `swarm agent send` signs with their key, as the identity they set.
    forged = subprocess.run(
        [
            *(sys.executable, "-m", "swarm.cli.app", "agent", "send", "echo", "hi"),
            *("--nats-url", nats_url, "--timeout", "10"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ
        | {
            "SWARM_NATS_CREDENTIALS": str(data_dir / "principals" / "mallory.nk"),
            "SWARM_IDENTITY": "user:admin",
        },
    )
    assert forged.returncode == 1, forged.stdout + forged.stderr
    assert forbidden in forged.stderr
    assert swarm("down", "--data-dir", str(data_dir)).returncode == 0


def _mesh_impersonation(data_dir: Path, nats_url: str) -> dict[str, str]:
    """A user added to the stack asks the demo agent with a plain nats-py client: unsigned, and
    signed by their own key but claiming the owner's identity. The pod's refusals, by attempt."""
    from swarm.kernel.signing import CommandSigner, MeshClaim

    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    added = run_cli(
        ["user", "add", "mallory", "--data-dir", str(data_dir)], cwd=data_dir, env=env, timeout=60
    )
    assert added.returncode == 0, added.stdout + added.stderr
    seed = data_dir / "principals" / "mallory.nk"
    subject = names.mesh_agent_subject("default", "echo")

    async def attempts() -> dict[str, str]:
        # Over TLS with the stack's CA, its replies under its own inbox prefix (the only one
        # a user may read: tests/test_stack_auth.py).
        nc = await nats.connect(
            nats_url,
            nkeys_seed=str(seed),
            tls=ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem")),
            inbox_prefix=names.inbox_prefix(CommandSigner.from_seed_file(seed).public_key),
        )
        try:
            forged = CommandSigner.from_seed_file(seed).mesh_headers(
                subject, b"hi", MeshClaim("user:admin"), time.time_ns() // 1_000_000
            )
            out = {}
            for attempt, headers in (("unsigned", None), ("forged", forged)):
                reply = await nc.request(subject, b"hi", timeout=10, headers=headers)
                assert (reply.headers or {}).get(names.HEADER_AGENT_ERROR), reply.data
                out[attempt] = json.loads(reply.data)["error"]
            return out
        finally:
            await nc.close()

    return asyncio.run(attempts())
