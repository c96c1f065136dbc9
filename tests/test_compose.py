"""The cluster deployment: docker-compose.yml, the Dockerfile and the configs under deploy/.

No Docker engine runs here, so the compose file is checked against the Compose specification's
JSON schema (the copy check-jsonschema vendors) and its meaning is asserted directly. The NATS
configs are additionally run for real: the init service's code writes the cluster's credentials
into a temp dir, and three nats-server processes started from the configs, reading those, form
a JetStream cluster on loopback that admits the principals alone, over TLS.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import secrets as secrets_module
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from argparse import Namespace
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]  # no stubs in the venv
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from nats.js.api import StorageType, StreamConfig

from runtime.config import PodSettings
from schemas import names
from services.hive.config import HiveSettings
from swarm.devstack import compose as compose_init
from swarm.devstack import principals, tls
from swarm.devstack.compose import ComposeSecrets
from swarm.devstack.embedded import die_with_parent, free_port, nats_server_binary
from swarm.domain.policy import may_claim
from swarm.gateway import GatewaySettings
from swarm.kernel import env as env_names
from swarm.kernel.connection import CannotConnect, connect_nats, settle
from swarm.kernel.settings import Settings
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
HIVES = ("hive-1", "hive-2", "hive-3")
PODS = ("pod-1", "pod-2")
#: Services that run a third-party image instead of Swarm's own.
THIRD_PARTY = (*NATS_NODES, "postgres")
#: The one-shot services: the credentials, the database schema.
ONE_SHOT = ("init", "migrate")
#: Swarm's processes that connect to NATS, each as a principal of its own.
NATS_CLIENTS = (*HIVES, "scheduler", "observer", "webhooks", *PODS, "gateway")
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


@dataclass(frozen=True)
class Mount:
    """One entry of a service's `volumes`, short (`source:target[:ro]`) or long syntax."""

    source: str
    target: str
    read_only: bool
    #: The part of a named volume mounted (`volume.subpath`); None: all of it.
    subpath: str | None = None

    @property
    def is_bind(self) -> bool:
        return self.source.startswith(("./", "../", "/"))


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            subpath = (volume.get("volume") or {}).get("subpath")
            out.append(
                Mount(volume["source"], volume["target"], bool(volume.get("read_only")), subpath)
            )
        else:
            source, target, *mode = volume.split(":")
            out.append(Mount(source, target, "ro" in mode))
    return out


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path (relative to the repo) -> container path, for `./...` volumes."""
    return {m.source: m.target for m in mounts(service) if m.is_bind}


def named_volumes(service: dict[str, Any]) -> list[Mount]:
    return [m for m in mounts(service) if not m.is_bind]


def init_args() -> Namespace:
    """The init service's command line (its entrypoint, so that arguments given to `docker
    compose run init` add to it), read by the init's own parser."""
    init = services()["init"]
    assert init["command"] == []
    entrypoint = init["entrypoint"]
    assert entrypoint[:3] == ["python", "-m", "swarm.devstack.compose"]
    return compose_init.parser().parse_args(entrypoint[3:])


def secrets_volume() -> str:
    """The named volume the init service writes (the one it mounts whole, writable)."""
    (written,) = (m for m in named_volumes(services()["init"]) if not m.read_only)
    assert written.subpath is None
    assert written.target == str(init_args().out)
    return written.source


def in_secrets(service: str, container_path: str) -> PurePosixPath | None:
    """Where in the init's volume a path inside `service`'s container is (None: elsewhere)."""
    for m in named_volumes(services()[service]):
        path = PurePosixPath(container_path)
        if m.source == secrets_volume() and path.is_relative_to(m.target):
            return PurePosixPath(m.subpath or "") / path.relative_to(m.target)
    return None


def volume_relative(path: Path, secrets: ComposeSecrets) -> PurePosixPath:
    return PurePosixPath(path.relative_to(secrets.root))


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
    writers: dict[str, set[str]] = {}
    for name, service in services().items():
        for volume in named_volumes(service):
            assert volume.source in declared, f"{name} uses undeclared volume {volume.source}"
            if not volume.read_only:
                writers.setdefault(volume.source, set()).add(name)

    def targets(service: str) -> set[str]:
        return {m.target for m in named_volumes(services()[service]) if not m.read_only}

    for node in NATS_NODES:
        assert nats_conf(node)["jetstream"]["store_dir"] in targets(node)
    assert "/var/lib/postgresql/data" in targets("postgres")
    data_dir = services()["hive-1"]["environment"]["SWARM_DATA_DIR"]
    for hive in HIVES:
        assert data_dir in targets(hive), hive
    # No two services write one volume: each node's store or journal is its own, and only
    # init writes the credentials (the others mount their part read-only).
    assert all(len(w) == 1 for w in writers.values()), writers
    assert writers[secrets_volume()] == {"init"}


# --- the init service: the cluster's credentials ------------------------------------------------


def test_init_issues_a_key_to_every_process_that_connects_to_nats() -> None:
    init = services()["init"]
    args = init_args()
    assert set(args.services) == set(NATS_CLIENTS)
    assert set(args.nats_node) == set(NATS_NODES)
    assert init.get("restart") == "no"
    assert "depends_on" not in init  # it needs nothing, everything else waits for it
    # Its volume is the image user's alone: the image makes the directory it is mounted on
    # (a new volume takes that directory's owner and mode), and init runs as that user.
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"install -d -o swarm -g swarm -m 0700 {re.escape(str(args.out))}\b", text)
    assert "user" not in init


def test_every_nats_node_and_client_waits_for_init_and_mounts_only_its_own_part() -> None:
    secrets = ComposeSecrets(Path("/volume"))
    for name in (*NATS_NODES, *NATS_CLIENTS):
        assert services()[name]["depends_on"]["init"] == {
            "condition": "service_completed_successfully"
        }, name
    for name, service in services().items():
        parts = {m.subpath for m in named_volumes(service) if m.source == secrets_volume()}
        if name == "init":
            continue
        assert all(m.read_only for m in named_volumes(service) if m.source == secrets_volume())
        if name in NATS_NODES:
            expected = {str(volume_relative(secrets.nats, secrets))}
        elif name in NATS_CLIENTS:
            expected = {
                str(volume_relative(secrets.public, secrets)),
                str(volume_relative(secrets.key_dir(name), secrets)),
            }
        else:
            expected = set()
        # Never the whole volume (the CA's key, every seed), never another's key.
        assert parts == expected, name


def test_every_client_connects_as_itself_over_tls_with_the_ca() -> None:
    secrets = ComposeSecrets(Path("/volume"))
    client_port = {node: int(nats_conf(node)["listen"].rsplit(":", 1)[1]) for node in NATS_NODES}
    for name in NATS_CLIENTS:
        env = services()[name]["environment"]
        urls = [urlsplit(u) for u in env[env_names.NATS_URL].split(",")]
        assert {(u.scheme, u.hostname, u.port) for u in urls} == {
            ("tls", node, client_port[node]) for node in NATS_NODES
        }, name
        found = {
            key: in_secrets(name, env[key])
            for key in (env_names.NATS_CREDENTIALS, env_names.NATS_CA)
        }
        assert found == {
            env_names.NATS_CREDENTIALS: volume_relative(secrets.seed(name), secrets),
            env_names.NATS_CA: volume_relative(secrets.ca_cert, secrets),
        }, name
        # The identity it acts as is one its principal's role may claim (the Hive's check);
        # the HTTP API's own requests act as SWARM_API_IDENTITY.
        role = principals.role_of(name)
        identity = env["SWARM_API_IDENTITY" if role == "gateway" else "SWARM_IDENTITY"]
        assert may_claim(role, name, identity) is None, name
    listing = volume_relative(secrets.listing, secrets)
    roles = {name: principals.role_of(name) for name in NATS_CLIENTS}
    for name, role in roles.items():
        env = services()[name]["environment"]
        given = {
            key
            for key in (
                env_names.HIVE_PRINCIPALS_FILE,
                env_names.POD_PRINCIPALS_FILE,
                env_names.API_PRINCIPALS_FILE,
                env_names.SCHEDULER_PRINCIPALS_FILE,
            )
            if key in env
        }
        wanted = {
            "hive": {env_names.HIVE_PRINCIPALS_FILE},
            "pod": {env_names.POD_PRINCIPALS_FILE},
            "gateway": {env_names.API_PRINCIPALS_FILE},
        }.get(role, set())
        if name == "scheduler":  # its market answers signed queries, by role
            wanted = {env_names.SCHEDULER_PRINCIPALS_FILE}
        assert given == wanted, name
        assert all(in_secrets(name, env[key]) == listing for key in given), name
        if role == "pod":
            # A pod's subjects are bound to its principal's name: its pod id must be that.
            assert env[env_names.POD_ID] == name


def test_init_keeps_keys_and_certificates_when_run_again(tmp_path: Path) -> None:
    args = init_args()
    out = tmp_path / "secrets"
    assert compose_init.main(["--out", str(out), *_nodes_args(args), *args.services]) == 0
    secrets = ComposeSecrets(out)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    again, issued = compose_init.write(out, args.services, args.nats_node)
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == before

    assert {p.name: p.role for p in issued} == {
        principals.ADMIN: principals.ADMIN,
        **{name: principals.role_of(name) for name in args.services},
    }
    # Who may connect is what `swarm up` admits, made by the same code from the same keys.
    assert secrets.authorization.read_text() == principals.authorization(issued)
    assert set(principals.load(secrets.listing)) == {p.public_key for p in issued}
    for p in issued:
        assert secrets.seed(p.name).read_bytes() == p.seed_file.read_bytes()
    # Owner-only: 0700 directories, 0600 files.
    for path in (out, *out.rglob("*")):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    # The nodes' certificate is for their names and loopback, and a client's too (routes).
    cert = x509.load_pem_x509_certificate(secrets.nats_tls.server_cert.read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {*NATS_NODES, "localhost"} <= set(alt.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1"} <= {str(a) for a in alt.get_values_for_type(x509.IPAddress)}
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert again.ca_cert.read_bytes() == secrets.nats_tls.ca_cert.read_bytes()
    # The CA's key is init's alone: in no part another container mounts.
    ca_key = tls.TlsFiles(out / compose_init.TLS_DIR).ca_key.read_bytes()
    shared = (secrets.nats, secrets.public, out / compose_init.KEYS_DIR)
    assert all(f.read_bytes() != ca_key for d in shared for f in d.rglob("*") if f.is_file())

    # A service added to the file gets a key, and is admitted; the others keep theirs.
    _, grown = compose_init.write(out, [*args.services, "pod-3"], args.nats_node)
    kept = {p.name: p.public_key for p in grown if p.name != "pod-3"}
    assert kept == {p.name: p.public_key for p in issued}
    (added,) = (p for p in grown if p.name == "pod-3")
    assert added.role == "pod"
    assert added.public_key in principals.load(secrets.listing)
    assert added.public_key in secrets.authorization.read_text()
    assert secrets.seed("pod-3").read_bytes() == added.seed_file.read_bytes()


def _nodes_args(args: Namespace) -> list[str]:
    return [arg for node in args.nats_node for arg in ("--nats-node", node)]


def test_init_refuses_admin_as_a_service_and_a_name_twice(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="owner"):
        compose_init.write(tmp_path, [principals.ADMIN], NATS_NODES)
    with pytest.raises(ValueError, match="twice"):
        compose_init.write(tmp_path, ["pod-1", "pod-1"], NATS_NODES)
    assert compose_init.main(["--out", str(tmp_path), "not a token"]) == 1


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
        # Told to others (and to clients) by the names the certificate is for.
        assert config["cluster"]["advertise"] == f"{node}:{cluster_port}"
        client_port = config["listen"].rsplit(":", 1)[1]
        assert config["client_advertise"] == f"{node}:{client_port}"
    assert len({c["server_name"] for c in configs.values()}) == len(NATS_NODES)


def test_nats_clients_and_routes_need_tls_and_credentials_from_init() -> None:
    secrets = ComposeSecrets(Path("/volume"))
    conf_dir = PurePosixPath(NATS_CONF_IN_CONTAINER).parent
    for node in NATS_NODES:
        config = nats_conf(node)

        def where(path: str, node: str = node) -> PurePosixPath | None:
            return in_secrets(node, str(conf_dir / path))  # absolute paths stay as they are

        # Who may connect: included (relative to the config file) from init's auth.conf.
        assert where(config["include"]) == volume_relative(secrets.authorization, secrets)
        node_files = secrets.nats_tls
        cert = volume_relative(node_files.server_cert, secrets)
        key = volume_relative(node_files.server_key, secrets)
        ca = volume_relative(node_files.ca_cert, secrets)
        # Clients: TLS alone (a top-level tls block), no client certificate asked.
        assert (where(config["tls"]["cert_file"]), where(config["tls"]["key_file"])) == (cert, key)
        assert "verify" not in config["tls"]
        assert "allow_non_tls" not in config
        # Routes: TLS both ways, each side's certificate verified against the CA.
        route_tls = config["cluster"]["tls"]
        assert [where(route_tls[k]) for k in ("cert_file", "key_file", "ca_file")] == [
            cert,
            key,
            ca,
        ]
        assert route_tls["verify"] == "true"
        assert "insecure" not in route_tls
        # Monitoring answers anyone who reaches it: inside the container alone.
        assert config["http"].rsplit(":", 1)[0] == "127.0.0.1"
    # The host reaches one node's client port, on loopback; no other port of a node.
    assert {n: services()[n].get("ports") for n in NATS_NODES} == {
        "nats-1": ["127.0.0.1:4222:4222"],
        "nats-2": None,
        "nats-3": None,
    }


def test_nats_healthchecks_ask_for_jetstream_on_the_monitoring_port() -> None:
    for node in NATS_NODES:
        host, port = nats_conf(node)["http"].rsplit(":", 1)
        test = " ".join(services()[node]["healthcheck"]["test"])
        assert f"http://{host}:{port}/healthz?js-enabled-only=true" in test, node


@dataclass
class LocalNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_url: str
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def client_url(self) -> str:
        return f"tls://127.0.0.1:{self.client_port}"


@dataclass
class LocalCluster:
    nodes: list[LocalNode]
    secrets: ComposeSecrets
    directory: Path


def local_configs(directory: Path) -> tuple[ComposeSecrets, dict[str, Path]]:
    """What the init service writes, written by its code into `directory`, and each node's
    configuration as the node's container sees it: every volume the node mounts is a link
    under `<directory>/<node>` at the path it is mounted on (the init's volume at its subpath),
    the configuration file is at its path there, and the absolute paths in it point there."""
    args = init_args()
    secrets, _ = compose_init.write(directory / "secrets", args.services, args.nats_node)
    configs = {}
    for node in NATS_NODES:
        root = directory / node
        text = nats_conf_path(node).read_text()
        for m in named_volumes(services()[node]):
            if m.source == secrets_volume():
                host = secrets.root / (m.subpath or "")
            else:
                host = directory / "volumes" / node / m.source
                host.mkdir(parents=True)
            link = root / m.target.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(host)
            text = re.sub(rf'(?<=[\s"]){re.escape(m.target)}(?=[/"\s])', f"{root}{m.target}", text)
        conf = root / NATS_CONF_IN_CONTAINER.lstrip("/")
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
        configs[node] = conf
    return secrets, configs


def test_nats_configs_are_accepted_by_nats_server(tmp_path: Path) -> None:
    _, configs = local_configs(tmp_path)
    for config in configs.values():
        result = subprocess.run(
            [str(nats_server_binary()), "-t", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr + result.stdout


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The three deploy/nats configs, with the credentials init writes, run on loopback: ports,
    routes and what each node advertises come from command-line flags (which override the
    file's); everything else is the file's, the TLS and who may connect included."""
    directory = tmp_path_factory.mktemp("compose-cluster")
    secrets, configs = local_configs(directory)
    ports = {node: (free_port(), free_port(), free_port()) for node in NATS_NODES}
    routes = ",".join(f"nats-route://127.0.0.1:{cluster}" for _, _, cluster in ports.values())
    nodes: list[LocalNode] = []
    try:
        for node, (client, monitor, cluster) in ports.items():
            log = directory / f"{node}.log"
            proc = _start(
                [
                    str(nats_server_binary()),
                    "-c",
                    str(configs[node]),
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
                    "--cluster_advertise",
                    f"127.0.0.1:{cluster}",
                    "--client_advertise",
                    f"127.0.0.1:{client}",
                ],
                log,
            )
            nodes.append(LocalNode(node, client, cluster, f"http://127.0.0.1:{monitor}", log, proc))
        _wait_for_cluster(nodes)
        yield LocalCluster(nodes, secrets, directory)
    finally:
        _stop([n.proc for n in nodes])


def _wait_for_cluster(nodes: list[LocalNode], timeout: float = 60.0) -> dict[str, Any]:
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


async def _connect(
    cluster: LocalCluster, principal: str | None, *, url: str | None = None, **options: Any
) -> Any:
    """A connection as `principal` (its seed as init wrote it), verifying the nodes against the
    CA; None: without a key."""
    return await connect_nats(
        url or ",".join(n.client_url for n in cluster.nodes),
        name=f"compose-test-{principal}",
        timeout=5,
        reconnects=0,
        credentials=cluster.secrets.seed(principal) if principal else None,
        ca=cluster.secrets.ca_cert,
        **options,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_owner_connects_with_its_key_over_tls_and_jetstream_replicates(
    secured_cluster: LocalCluster,
) -> None:
    nodes = secured_cluster.nodes
    jsz = _get_json(f"{nodes[0].monitor_url}/jsz")
    assert jsz["config"]["sync_always"] is True
    assert jsz["meta_cluster"]["name"] == "swarm"
    assert {_get_json(f"{n.monitor_url}/varz")["server_name"] for n in nodes} == set(NATS_NODES)
    for n in nodes:
        varz = _get_json(f"{n.monitor_url}/varz")
        assert varz["tls_required"] is True, n.name
        assert varz["auth_required"] is True, n.name
        assert varz["cluster"]["tls_required"] is True, n.name
        assert varz["cluster"]["tls_verify"] is True, n.name

    # The streams are created with three replicas in the cluster: that has to be possible.
    nc = await _connect(secured_cluster, principals.ADMIN)
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


def _init_argv(root: Path, *extra: str) -> list[str]:
    """init's command line as docker-compose.yml gives it, into `root`, and `extra`."""
    args = init_args()
    nodes = [a for node in args.nats_node for a in ("--nats-node", node)]
    return ["--out", str(root), *nodes, *args.services, *extra]


def test_init_adds_rotates_and_removes_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "secrets"
    assert compose_init.main(_init_argv(root, "--add-user", "ann")) == 0
    secrets = ComposeSecrets(root)
    assert f"user ann's key: {secrets.seed('ann')}" in capsys.readouterr().out
    listed = {p.name: p for p in principals.load(secrets.listing).values()}
    assert listed["ann"].role == principals.USER
    assert stat.S_IMODE(secrets.seed("ann").stat().st_mode) == 0o600
    first = listed["ann"].public_key
    assert first in secrets.authorization.read_text()

    # Run again as every `up` does: ann is kept, with her key.
    assert compose_init.main(_init_argv(root)) == 0
    assert first in secrets.authorization.read_text()
    assert compose_init.main(_init_argv(root, "--add-user", "ann")) == 1
    assert "a principal named 'ann' exists already" in capsys.readouterr().err

    assert compose_init.main(_init_argv(root, "--rotate-user", "ann")) == 0
    rotated = {p.name: p for p in principals.load(secrets.listing).values()}["ann"].public_key
    authorization = secrets.authorization.read_text()
    assert rotated != first
    assert rotated in authorization
    assert first not in authorization

    assert compose_init.main(_init_argv(root, "--remove-user", "ann")) == 0
    assert "ann" not in {p.name for p in principals.load(secrets.listing).values()}
    assert rotated not in secrets.authorization.read_text()
    assert not secrets.key_dir("ann").exists()
    assert compose_init.main(_init_argv(root, "--remove-user", "ann")) == 1
    assert "no user named 'ann'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_user_init_adds_is_admitted_once_the_nodes_reload(
    secured_cluster: LocalCluster,
) -> None:
    """As the README says: init adds a user, SIGHUP makes every node admit her key; rotated,
    the old key is refused."""
    name = f"user{secrets_module.token_hex(3)}"
    root = secured_cluster.secrets.root

    def reload() -> None:
        for node in secured_cluster.nodes:
            node.proc.send_signal(signal.SIGHUP)

    async def connects(seed: Path) -> str | None:
        """None when `seed` connects, else why not (a node reloading may drop a connection
        before it says who it admits)."""
        try:
            nc = await connect_nats(
                ",".join(n.client_url for n in secured_cluster.nodes),
                name=name,
                timeout=5,
                reconnects=0,
                credentials=seed,
                ca=secured_cluster.secrets.ca_cert,
            )
        except CannotConnect as exc:
            return str(exc)
        await nc.close()
        return None

    async def admitted(seed: Path) -> bool:
        return await connects(seed) is None

    assert compose_init.main(_init_argv(root, "--add-user", name)) == 0
    seed = secured_cluster.secrets.seed(name)
    reload()
    await wait_until(lambda: admitted(seed), 60, f"{name} admitted")

    old = seed.with_name("old.nk")
    old.write_bytes(seed.read_bytes())
    assert compose_init.main(_init_argv(root, "--rotate-user", name)) == 0
    reload()
    await wait_until(lambda: admitted(seed), 60, f"{name}'s new key admitted")

    async def refused() -> bool:
        return "authorization violation" in (await connects(old) or "")

    await wait_until(refused, 60, f"{name}'s old key refused")


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_client_without_a_key_or_without_tls_is_refused(
    secured_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(env_names.NATS_CREDENTIALS, raising=False)
    with pytest.raises(CannotConnect, match="authorization violation"):
        await _connect(secured_cluster, None)

    # A key init did not issue is refused the same way.
    stranger = secured_cluster.directory / "stranger"
    principals.issue(stranger, [("stranger", "service")])
    with pytest.raises(CannotConnect, match="authorization violation"):
        await connect_nats(
            secured_cluster.nodes[0].client_url,
            name="stranger",
            timeout=5,
            reconnects=0,
            credentials=stranger / "stranger.nk",
            ca=secured_cluster.secrets.ca_cert,
        )

    # Plain NATS: the node announces that it requires TLS, and never answers a plain CONNECT.
    def plain() -> tuple[dict[str, Any], bytes]:
        with socket.create_connection(
            ("127.0.0.1", secured_cluster.nodes[0].client_port), timeout=10
        ) as sock:
            stream = sock.makefile("rb")
            line = stream.readline()
            assert line.startswith(b"INFO "), line
            sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            answer = stream.read()  # until the node closes the connection
            return json.loads(line[5:]), answer

    info, answer = await asyncio.to_thread(plain)
    assert info.get("tls_required") is True
    assert b"PONG" not in answer


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_pod_may_not_publish_events(secured_cluster: LocalCluster) -> None:
    # Both on one node, so the owner's interest is known where the pod publishes.
    url = secured_cluster.nodes[0].client_url
    owner = await _connect(secured_cluster, principals.ADMIN, url=url)
    errors: list[Exception] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        refused.set()

    pod = await _connect(secured_cluster, "pod-1", url=url, on_error=on_error)
    try:
        seen = await owner.subscribe(f"{names.ROOT}.>")
        await settle(owner, 10)
        await pod.publish(f"{names.EVENTS_PREFIX}.forged", b"{}")
        # What a pod may send (its own heartbeat), after it: messages from one connection
        # arrive in order, so the heartbeat coming first means the event was dropped.
        await pod.publish(names.heartbeat_subject("pod-1"), b"{}")
        await settle(pod, 10)
        first = await seen.next_msg(timeout=30)
        assert first.subject == names.heartbeat_subject("pod-1")
        await asyncio.wait_for(refused.wait(), timeout=30)
        assert any("permissions violation" in str(e).lower() for e in errors), errors
        assert f"{names.EVENTS_PREFIX}.forged" in str(errors[0])
    finally:
        await pod.close()
        await owner.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_node_without_a_certificate_of_the_ca_cannot_join(
    secured_cluster: LocalCluster,
) -> None:
    """A server that trusts the cluster (it has the CA's certificate, which is public) and speaks
    TLS on its route, but whose own certificate another CA signed, is refused by the node it
    dials; it never becomes a route of the cluster."""
    directory = secured_cluster.directory / "rogue"
    own = tls.issue(directory / "tls", names=("127.0.0.1",), client_auth=True)
    target = secured_cluster.nodes[0]
    config = directory / "rogue.conf"
    config.write_text(
        "server_name: rogue\n"
        "cluster {\n"
        "  name: swarm\n"
        "  tls {\n"
        f"    cert_file: {json.dumps(str(own.server_cert))}\n"
        f"    key_file: {json.dumps(str(own.server_key))}\n"
        f"    ca_file: {json.dumps(str(secured_cluster.secrets.ca_cert))}\n"
        "    timeout: 5\n"
        "  }\n"
        f"  routes: [nats-route://127.0.0.1:{target.cluster_port}]\n"
        "}\n"
    )
    monitor = free_port()
    rogue = _start(
        [
            str(nats_server_binary()),
            "-c",
            str(config),
            "-a",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-m",
            str(monitor),
            "--cluster",
            f"nats://127.0.0.1:{free_port()}",
        ],
        directory / "rogue.log",
    )
    try:
        # The node has seen the rogue's handshake and refused its certificate.
        deadline = time.monotonic() + 60
        while "certificate signed by unknown authority" not in target.log.read_text():
            assert rogue.poll() is None, (directory / "rogue.log").read_text()
            assert time.monotonic() < deadline, target.log.read_text()[-2000:]
            time.sleep(0.1)
        for n in secured_cluster.nodes:
            remotes = {r["remote_name"] for r in _get_json(f"{n.monitor_url}/routez")["routes"]}
            assert remotes == set(NATS_NODES) - {n.name}, (n.name, remotes)
        assert _get_json(f"http://127.0.0.1:{monitor}/routez")["num_routes"] == 0
    finally:
        _stop([rogue])


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
        if name in (*THIRD_PARTY, *ONE_SHOT):
            continue
        deps = service["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for dep in (*NATS_NODES, "postgres"):
            assert deps[dep]["condition"] == "service_healthy", (name, dep)


def _command(name: str) -> list[str]:
    command: list[str] = services()[name]["command"]
    return command


def use_environment_of(
    name: str, monkeypatch: pytest.MonkeyPatch, secrets: ComposeSecrets | None = None
) -> None:
    """Make the process environment what the service's container would see (SWARM_* only),
    with a path into the init's volume pointing into `secrets` when given (what init wrote)."""
    for key in list(os.environ):
        if key.startswith("SWARM_"):
            monkeypatch.delenv(key)
    for key, value in (services()[name].get("environment") or {}).items():
        value = str(value)
        if value.startswith("${SWARM_RAFT_PASSWORD"):
            value = TEST_RAFT_PASSWORD  # what compose substitutes from the operator's shell
        if value.startswith("${SWARM_API_TOKEN"):
            value = TEST_API_TOKEN
        found = in_secrets(name, value) if value.startswith("/") else None
        if secrets is not None and found is not None:
            value = str(secrets.root / found)
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
            ("tls", node, client_port[node]) for node in NATS_NODES
        }, name


def test_pods_compile_modules_into_the_swarm_user_s_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # The image's working dir (/app) is root's: the default cache under it cannot be written.
    home = PurePosixPath("/var/lib/swarm")
    for pod in PODS:
        use_environment_of(pod, monkeypatch)
        cache = PurePosixPath(PodSettings().module_cache_dir())
        assert cache.is_relative_to(home / "pods" / pod), (pod, cache)


def test_hive_replicas_name_each_other_as_raft_peers_and_need_a_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    args = init_args()
    secrets, issued = compose_init.write(tmp_path, args.services, args.nats_node)
    data_dirs = set()
    for hive in HIVES:
        env = services()[hive]["environment"]
        # `${VAR:?message}`: compose refuses to start without a value; there is no default.
        assert re.fullmatch(r"\$\{SWARM_RAFT_PASSWORD:\?[^}]+\}", env["SWARM_HIVE_RAFT_PASSWORD"])
        assert services()[hive]["hostname"] == hive

        # Read by the Hive's own settings, so a format it cannot parse fails here.
        use_environment_of(hive, monkeypatch, secrets)
        hive_settings = HiveSettings()
        raft = hive_settings.raft()
        assert raft.self_addr == f"{hive}:{RAFT_PORT}"
        assert set(raft.peers) == {f"{h}:{RAFT_PORT}" for h in HIVES if h != hive}
        assert raft.password == TEST_RAFT_PASSWORD
        assert hive_settings.node_id() == hive
        # It takes commands signed by the principals init issued keys to.
        roster = hive_settings.principals()
        assert roster is not None
        assert {p.public_key for p in issued} == {
            p.public_key for p in issued if roster.get(p.public_key) is not None
        }
        # The journal lives on the replica's own named volume.
        targets = [m.target for m in named_volumes(services()[hive]) if not m.read_only]
        assert any(raft.data_dir.is_relative_to(target) for target in targets), hive
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
