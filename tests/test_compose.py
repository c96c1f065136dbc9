"""The cluster deployment: docker-compose.yml, the Dockerfile and the configs under deploy/.

No Docker engine runs here, so the compose file is checked against the Compose specification's
JSON schema (the copy check-jsonschema vendors) and its meaning is asserted directly. The NATS
configs are additionally run for real: three nats-server processes started from them form a
JetStream cluster on loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]  # no stubs in the venv
import nats
import pytest
import yaml
from nats.js.api import StorageType, StreamConfig

from services.hive.config import HiveSettings
from swarm.devstack.embedded import die_with_parent, free_port, nats_server_binary
from swarm.gateway import GatewaySettings
from swarm.kernel.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
HIVES = ("hive-1", "hive-2", "hive-3")
PODS = ("pod-1", "pod-2")
#: Services that run a third-party image instead of Swarm's own.
THIRD_PARTY = (*NATS_NODES, "postgres")
NATS_CONF_IN_CONTAINER = "/etc/nats/nats-server.conf"
RAFT_PORT = 4321
TEST_RAFT_PASSWORD = "compose-test-password"
TEST_API_TOKEN = "compose-test-token"


@cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def compose_schema() -> dict[str, Any]:
    """The Compose specification schema vendored by check-jsonschema (no download).

    The package is located without being imported: importing it loads its CLI, which needs a
    newer click than some environments have, and only its data file is wanted here.
    """
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None, "check-jsonschema is not installed"
    assert spec.submodule_search_locations is not None
    package = Path(next(iter(spec.submodule_search_locations)))
    schema: dict[str, Any] = json.loads(
        (package / "builtin_schemas" / "vendor" / "compose-spec.json").read_text()
    )
    return schema


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path (relative to the repo) -> container path, for `./...` short-syntax volumes."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith(("./", "../", "/")):
            mounts[source] = target
    return mounts


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if not source.startswith(("./", "../", "/")):
            mounts[source] = target
    return mounts


def nats_conf_path(node: str) -> Path:
    (source,) = (s for s, t in bind_mounts(services()[node]).items() if t == NATS_CONF_IN_CONTAINER)
    return (ROOT / source).resolve()


# --- a small reader for nats-server's config format ----------------------------------------------

_TOKEN = re.compile(r"\s*(?:(#|//)[^\n]*|([{}\[\],])|(\"[^\"]*\")|([^\s{}\[\],=#\"]+)|(=))")


def parse_nats_conf(text: str) -> dict[str, Any]:
    """Blocks, lists, `key: value` / `key = value` / `key value` and comments: enough to read
    the settings these tests check (nats-server itself validates the rest, see below)."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot read nats config at {text[pos : pos + 20]!r}")
            break
        pos = match.end()
        if match.group(1) or match.group(5):
            continue
        tokens.append(match.group(2) or match.group(3) or match.group(4))
    values, rest = _parse_block(tokens, 0, closing=None)
    assert rest == len(tokens)
    return values


def _parse_value(tokens: list[str], i: int) -> tuple[Any, int]:
    if tokens[i] == "{":
        return _parse_block(tokens, i + 1, closing="}")
    if tokens[i] == "[":
        items: list[Any] = []
        i += 1
        while tokens[i] != "]":
            if tokens[i] == ",":
                i += 1
                continue
            item, i = _parse_value(tokens, i)
            items.append(item)
        return items, i + 1
    return tokens[i].strip('"'), i + 1


def _parse_block(tokens: list[str], i: int, closing: str | None) -> tuple[dict[str, Any], int]:
    block: dict[str, Any] = {}
    while i < len(tokens) and tokens[i] != closing:
        if tokens[i] == ",":
            i += 1
            continue
        # `key: value`, `key = value` and `key value` all occur; a URL value keeps its colons.
        key = tokens[i].strip('"').removesuffix(":")
        i += 2 if tokens[i + 1] == ":" else 1
        block[key], i = _parse_value(tokens, i)
    return block, i + 1 if closing else i


def nats_conf(node: str) -> dict[str, Any]:
    return parse_nats_conf(nats_conf_path(node).read_text())


# --- the compose file as a whole -----------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []

    # The schema is strict enough to catch a misspelt key, so passing it means something.
    broken = {
        **compose(),
        "services": {**services(), "hive-1": {**services()["hive-1"], "comand": []}},
    }
    assert not validator.is_valid(broken)


def test_every_service_but_nats_and_postgres_is_built_from_the_repo_dockerfile() -> None:
    own = {name: svc for name, svc in services().items() if name not in THIRD_PARTY}
    assert own
    for name, service in own.items():
        build = service.get("build")
        assert isinstance(build, dict), f"{name} is not built from the repo"
        assert (ROOT / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", (
            name
        )
    for name in THIRD_PARTY:
        assert "build" not in services()[name], name


def test_the_dockerfile_installs_the_project_on_python_311_slim_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    instructions = [line for line in instructions if not line.startswith("#")]
    bases = [line.split()[1] for line in instructions if line.upper().startswith("FROM ")]
    assert bases, "no FROM"
    assert all(base == "python:3.11-slim" for base in bases), bases
    assert any(re.search(r"pip install\s+(\S+\s+)*\.(\s|$)", line) for line in instructions)
    users = [line.split()[1] for line in instructions if line.upper().startswith("USER ")]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_every_referenced_file_exists() -> None:
    for name, service in services().items():
        for source in bind_mounts(service):
            assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
        build = service.get("build")
        if isinstance(build, dict):
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    # `swarm migrate` runs the Alembic scripts from the image, next to the swarm package.
    assert (ROOT / "migrations" / "env.py").is_file()
    assert not ignored & {"migrations", "migrations/", "swarm", "schemas", "pyproject.toml"}


def test_named_volumes_keep_nats_postgres_and_raft_state() -> None:
    declared = set(compose().get("volumes") or {})
    used: dict[str, set[str]] = {}
    for name, service in services().items():
        for volume in named_volumes(service):
            assert volume in declared, f"{name} uses undeclared volume {volume}"
            used.setdefault(volume, set()).add(name)
    for node in NATS_NODES:
        assert nats_conf(node)["jetstream"]["store_dir"] in named_volumes(services()[node]).values()
    assert "/var/lib/postgresql/data" in named_volumes(services()["postgres"]).values()
    data_dir = services()["hive-1"]["environment"]["SWARM_DATA_DIR"]
    for hive in HIVES:
        assert data_dir in named_volumes(services()[hive]).values(), hive
    # No two replicas share a volume: each node's store or journal is its own.
    stateful = (*NATS_NODES, "postgres", *HIVES)
    owners = [frozenset(v) for k, v in used.items() if v & set(stateful)]
    assert all(len(o) == 1 for o in owners), used


# --- NATS ----------------------------------------------------------------------------------------


def test_three_nats_nodes_form_one_jetstream_cluster_with_fsync_always() -> None:
    configs = {node: nats_conf(node) for node in NATS_NODES}
    assert {c["cluster"]["name"] for c in configs.values()} == {"swarm"}
    for node, config in configs.items():
        assert services()[node]["image"].startswith("nats:2.")
        assert config["server_name"] == node
        assert config["jetstream"]["sync_interval"] == "always", node
        assert config["jetstream"]["store_dir"]
        cluster_port = config["cluster"]["listen"].rsplit(":", 1)[1]
        route_hosts = set()
        for route in config["cluster"]["routes"]:
            match = re.fullmatch(r"nats(?:-route)?://([\w.-]+):(\d+)", route)
            assert match, route
            assert match.group(2) == cluster_port
            route_hosts.add(match.group(1))
        assert route_hosts | {node} == set(NATS_NODES), f"{node} routes {route_hosts}"
    assert len({c["server_name"] for c in configs.values()}) == len(NATS_NODES)


def test_nats_healthchecks_ask_for_jetstream_on_the_monitoring_port() -> None:
    for node in NATS_NODES:
        port = nats_conf(node)["http"].rsplit(":", 1)[1]
        test = " ".join(services()[node]["healthcheck"]["test"])
        assert f":{port}/healthz?js-enabled-only=true" in test, node


def test_nats_configs_are_accepted_by_nats_server() -> None:
    for node in NATS_NODES:
        result = subprocess.run(
            [str(nats_server_binary()), "-t", "-c", str(nats_conf_path(node))],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr + result.stdout


@dataclass
class LocalNode:
    name: str
    client_url: str
    monitor_url: str
    proc: subprocess.Popen[bytes]


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[list[LocalNode]]:
    """The three deploy/nats configs run on loopback: ports and routes come from command-line
    flags (which override the file), the store from a copy of the file with only store_dir
    changed (nats-server refuses both the file's and a flag's)."""
    ports = {node: (free_port(), free_port(), free_port()) for node in NATS_NODES}
    routes = ",".join(f"nats://127.0.0.1:{cluster}" for _, _, cluster in ports.values())
    nodes: list[LocalNode] = []
    try:
        for node, (client, monitor, cluster) in ports.items():
            store_dir = nats_conf(node)["jetstream"]["store_dir"]
            conf = tmp_path / f"{node}.conf"
            text = nats_conf_path(node).read_text()
            conf.write_text(text.replace(store_dir, str(tmp_path / node), 1))
            log = (tmp_path / f"{node}.log").open("wb")
            proc = subprocess.Popen(
                [
                    str(nats_server_binary()),
                    "-c",
                    str(conf),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(client),
                    "-m",
                    str(monitor),
                    "--cluster",
                    f"nats://127.0.0.1:{cluster}",
                    "--routes",
                    routes,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
            log.close()
            nodes.append(
                LocalNode(node, f"nats://127.0.0.1:{client}", f"http://127.0.0.1:{monitor}", proc)
            )
        yield nodes
    finally:
        for n in nodes:
            n.proc.terminate()
        for n in nodes:
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(5)


def _wait_for_cluster(nodes: list[LocalNode], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for n in nodes:
            assert n.proc.poll() is None, f"{n.name} exited with {n.proc.returncode}"
        try:
            healthy = all(
                _get_json(f"{n.monitor_url}/healthz?js-enabled-only=true").get("status") == "ok"
                for n in nodes
            )
            jsz = _get_json(f"{nodes[0].monitor_url}/jsz")
            meta = jsz.get("meta_cluster") or {}
            if healthy and meta.get("leader") and meta.get("cluster_size") == len(nodes):
                return jsz
            last = meta
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"the cluster did not form in {timeout}s: {last}")


@pytest.mark.slow
async def test_the_nats_configs_run_as_a_replicated_cluster(local_cluster: list[LocalNode]) -> None:
    jsz = _wait_for_cluster(local_cluster)
    assert jsz["config"]["sync_always"] is True
    assert jsz["meta_cluster"]["name"] == "swarm"
    names = {_get_json(f"{n.monitor_url}/varz")["server_name"] for n in local_cluster}
    assert names == set(NATS_NODES)

    # The streams are created with three replicas in the cluster: that has to be possible.
    nc = await nats.connect([n.client_url for n in local_cluster], connect_timeout=5)
    try:
        # Three replicas that each sync every write: over 10 s beside four busy loops.
        js = nc.jetstream(timeout=60)
        await js.add_stream(
            StreamConfig(
                name="COMPOSE_TEST",
                subjects=["compose.>"],
                num_replicas=3,
                storage=StorageType.FILE,
            )
        )
        ack = await js.publish("compose.test", b"x", headers={"Nats-Msg-Id": "one"})
        again = await js.publish("compose.test", b"x", headers={"Nats-Msg-Id": "one"})
        assert (ack.seq, again.duplicate) == (1, True)
        info = await js.stream_info("COMPOSE_TEST")
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()


# --- Postgres, migrations and Swarm's own services -----------------------------------------------


def test_postgres_runs_pgvector_and_reports_health() -> None:
    postgres = services()["postgres"]
    assert postgres["image"].startswith("pgvector/pgvector:pg16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    env = postgres["environment"]
    url = services()["hive-1"]["environment"]["SWARM_DATABASE_URL"]
    assert url == (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{env['POSTGRES_DB']}"
    )


def test_migrate_runs_once_before_the_services() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] in (["swarm", "migrate"], ["alembic", "upgrade", "head"])
    assert migrate.get("restart", "no") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services().items():
        if name in (*THIRD_PARTY, "migrate"):
            continue
        deps = service["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for dep in (*NATS_NODES, "postgres"):
            assert deps[dep]["condition"] == "service_healthy", (name, dep)


def _command(name: str) -> list[str]:
    command: list[str] = services()[name]["command"]
    return command


def use_environment_of(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the process environment what the service's container would see (SWARM_* only)."""
    for key in list(os.environ):
        if key.startswith("SWARM_"):
            monkeypatch.delenv(key)
    for key, value in (services()[name].get("environment") or {}).items():
        value = str(value)
        if value.startswith("${SWARM_RAFT_PASSWORD"):
            value = TEST_RAFT_PASSWORD  # what compose substitutes from the operator's shell
        if value.startswith("${SWARM_API_TOKEN"):
            value = TEST_API_TOKEN
        monkeypatch.setenv(key, value)


def test_the_gateway_serves_on_8080_and_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = services()["gateway"]
    assert gateway["environment"]["SWARM_API_TOKEN"].startswith("${SWARM_API_TOKEN:?")
    assert "127.0.0.1:8080:8080" in gateway["ports"]
    use_environment_of("gateway", monkeypatch)
    settings = GatewaySettings()
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.bearer_token() == TEST_API_TOKEN


def test_the_swarm_processes_and_their_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {
        **{hive: ["python", "-m", "services.hive"] for hive in HIVES},
        "scheduler": ["python", "-m", "services.scheduler"],
        "observer": ["python", "-m", "services.observer"],
        "webhooks": ["python", "-m", "services.webhooks"],
        **{pod: ["python", "-m", "runtime"] for pod in PODS},
        "gateway": ["python", "-m", "swarm.gateway"],
    }
    assert {name: _command(name) for name in expected} == expected
    client_port = {node: int(nats_conf(node)["listen"].rsplit(":", 1)[1]) for node in NATS_NODES}
    for name in (*expected, "migrate"):
        # Read the way every Swarm process reads it: through the kernel's settings.
        use_environment_of(name, monkeypatch)
        settings = Settings()
        assert settings.stream_replicas == len(NATS_NODES), name
        assert settings.database_url == "postgresql://swarm:swarm@postgres:5432/swarm", name
        assert settings.nats_url is not None
        urls = [urlsplit(u) for u in settings.nats_url.split(",")]
        assert {(u.scheme, u.hostname, u.port) for u in urls} == {
            ("nats", node, client_port[node]) for node in NATS_NODES
        }, name


def test_hive_replicas_name_each_other_as_raft_peers_and_need_a_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dirs = set()
    for hive in HIVES:
        env = services()[hive]["environment"]
        # `${VAR:?message}`: compose refuses to start without a value; there is no default.
        assert re.fullmatch(r"\$\{SWARM_RAFT_PASSWORD:\?[^}]+\}", env["SWARM_HIVE_RAFT_PASSWORD"])
        assert services()[hive]["hostname"] == hive

        # Read by the Hive's own settings, so a format it cannot parse fails here.
        use_environment_of(hive, monkeypatch)
        hive_settings = HiveSettings()
        raft = hive_settings.raft()
        assert raft.self_addr == f"{hive}:{RAFT_PORT}"
        assert set(raft.peers) == {f"{h}:{RAFT_PORT}" for h in HIVES if h != hive}
        assert raft.password == TEST_RAFT_PASSWORD
        assert hive_settings.node_id() == hive
        # The journal lives on the replica's own named volume.
        mounts = named_volumes(services()[hive]).values()
        assert any(raft.data_dir.is_relative_to(target) for target in mounts), hive
        data_dirs.add(raft.data_dir)
    assert len(data_dirs) == 1  # the same path, each in its own container and volume
    for name, service in services().items():
        if name not in HIVES:
            assert "SWARM_HIVE_RAFT_PASSWORD" not in (service.get("environment") or {}), name


# --- docker compose itself, when an engine is available ------------------------------------------


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        for args in (["docker", "info"], ["docker", "compose", "version"]):
            if subprocess.run(args, capture_output=True, timeout=15, check=False).returncode:
                return False
    except (OSError, subprocess.TimeoutExpired):
        return False
    return True


def test_docker_compose_accepts_the_file() -> None:
    if not _docker_compose_available():
        pytest.skip("no Docker engine with the compose plugin answers here")
    base = ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "SWARM_RAFT_PASSWORD"}
    refused = subprocess.run(base, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert refused.returncode != 0
    assert "SWARM_RAFT_PASSWORD" in refused.stderr
    accepted = subprocess.run(
        base,
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "SWARM_RAFT_PASSWORD": "test", "SWARM_API_TOKEN": "test"},
        check=False,
    )
    assert accepted.returncode == 0, accepted.stderr
