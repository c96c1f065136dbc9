"""Who may connect to the stack's NATS server, and what each may do there.

Every process of a `swarm up` stack is a principal with its own NATS nkey (an ed25519 key pair:
the seed stays in the data dir, 0600; the server knows only the public key and checks a
signature over the nonce it sends at connect). The server refuses anyone else: there is no
anonymous user. Each principal has a role, and each role a set of NATS permissions:

* `admin`: everything. The stack's owner (the CLI, `swarm up` itself) connects as `admin`.
* `hive`: everything but removing what the log holds (streams, buckets, messages); it alone
  listens on the Hive's queries (`swarm.query.…` but the market's).
* `gateway`, `webhooks`: as `service`, and they read and write the webhook signing secrets
  (the HTTP API stores a subscription's secret, the dispatcher signs with it).
* `service` (scheduler, observer, any extra `--service`): no event (`swarm.evt.>`, the Hive
  alone writes the log), no removal, no webhook secret, no listening on the mesh or on
  queries. The scheduler's principal (`SCHEDULER`) alone listens on the market's queries
  (`swarm.query.market.…`).
* `pod`: as `service`, and it alone (with the owner) listens on the mesh (`swarm.mesh.>`): the
  agents' sandboxes run in pods, and answer there.
* `user`: as `service`; the people `swarm user add` issues keys to (each acts as `user:<name>`).
  The HTTP API signs for a user whose API token it is sent (`swarm.devstack.apitokens`), with
  the user's seed from this directory.

Removal covers deleting a stream, bucket or object store (they are streams), deleting a message,
and purging the log's streams and the secrets' bucket (a pod purges the snapshots it replaced).

Some subjects are bound to one principal (`permissions`):

* Replies: every principal but the owner listens only under its own inbox prefix
  (`_INBOX.<its public key>`, `schemas.names.inbox_prefix`), which `swarm.kernel.connection`
  connects with, so nobody reads another's replies (a plain nats-py client passes
  `inbox_prefix=`). Nobody but the owner publishes into an inbox (`_INBOX.>`) except to answer
  a request it received: the server's `allow_responses` (one answer, within two minutes) for
  the principals that answer requests (the Hive its queries, a pod its agents' mesh messages
  and its probe), so nobody forges a reply to another's request. The scheduler alone
  publishes into inboxes outright: it answers the market's queries, and forwards a task's
  answer to the inbox the task names (`swarm task send --wait`), which is no answer to a
  request it got.
* A pod's reports: a pod principal is named by its pod id (`swarm up` runs pod `pod-<i>` with
  `SWARM_POD_ID=pod-<i>`), and publishes heartbeats, metrics and logs under that id alone and
  listens for its own liveness probe alone; no other role publishes those or listens for a
  probe, and only the Hive listens to heartbeats.

What the permissions do not yet tell apart: a user's namespaces (the Hive holds a user's
commands and queries to its roles, `swarm.domain.policy`, the pods its mesh messages; the log's
streams are every principal's to read); which pod runs an agent (any pod may join an agent's
mesh queue group: the mesh guard checks who sends, and takes a message once,
runtime/meshguard.py); and whose inbox a task names (the scheduler forwards an answer to any).

The seeds are the `.nk` files NATS tools read (`nats --nkey`, nats-py's `nkeys_seed=`).
The listener speaks TLS alone, with a certificate of the stack's own CA (`swarm.devstack.tls`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from schemas import names
from swarm.devstack.embedded import private_fd
from swarm.domain.policy import ROLE_CLAIMS

ADMIN: Final = "admin"
#: The scheduler's principal (`swarm up` and docker-compose's init name it so, role `service`):
#: it answers the market's queries (`names.QUERY_MARKET_PREFIX`) and forwards tasks' answers.
SCHEDULER: Final = "scheduler"
#: The role of the people `swarm user add` issues keys to.
USER: Final = "user"
#: The file `issue` lists the principals in, beside their seeds.
LISTING: Final = "principals.json"
#: Roles by name; the permissions of each are in `denied`, the identities each may claim in its
#: commands in `swarm.domain.policy.ROLE_CLAIMS`.
ROLES: Final = tuple(ROLE_CLAIMS)

#: The streams whose content only the admin may remove (the log and what guards it). A pod's
#: snapshots bucket is not among them: a pod purges the generations it replaced.
_KEPT_STREAMS: Final = (
    names.STREAM_COMMANDS,
    names.STREAM_EVENTS,
    names.STREAM_METRICS,
    names.STREAM_LOGS,
    names.STREAM_TASKS,
    names.STREAM_DEADLETTER,
    names.STREAM_WEBHOOK_DELIVERIES,
    f"KV_{names.WEBHOOK_SECRETS_BUCKET}",
    f"KV_{names.WEBHOOK_DEAD_LETTERS_BUCKET}",
    f"OBJ_{names.OBJECT_STORE_MODULES}",
)
_SECRETS: Final = f"KV_{names.WEBHOOK_SECRETS_BUCKET}"


def _removal() -> list[str]:
    return [
        "$JS.API.STREAM.DELETE.>",
        "$JS.API.STREAM.MSG.DELETE.>",
        *(f"$JS.API.STREAM.PURGE.{stream}" for stream in _KEPT_STREAMS),
    ]


def _secrets() -> tuple[list[str], list[str]]:
    """What reading or writing the webhook secrets' bucket takes: (publish, subscribe)."""
    publish = [
        f"$KV.{names.WEBHOOK_SECRETS_BUCKET}.>",
        f"$JS.API.DIRECT.GET.{_SECRETS}",
        f"$JS.API.DIRECT.GET.{_SECRETS}.>",
        f"$JS.API.STREAM.MSG.GET.{_SECRETS}",
        f"$JS.API.CONSUMER.CREATE.{_SECRETS}",
        f"$JS.API.CONSUMER.CREATE.{_SECRETS}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{_SECRETS}.>",
    ]
    return publish, [f"$KV.{names.WEBHOOK_SECRETS_BUCKET}.>"]


def denied(role: str) -> tuple[list[str], list[str]]:
    """The subjects `role` may not publish on, and may not subscribe to (what `permissions`
    denies whoever holds the role; it also allows each principal only its own subjects, and
    lets the scheduler's principal answer the market: `SCHEDULER`)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if role == ADMIN:
        return [], []
    # Another principal's inbox is its to be answered on: a principal publishes there only
    # in answer to a request it received (`allow_responses`, which passes a deny).
    publish, subscribe = [*_removal(), f"{names.INBOX_ROOT}.>"], []
    if role != "hive":
        publish.append(names.EVENTS_ALL)
        # Queries are the Hive's to answer: a listener elsewhere reads what others ask, or
        # answers for the Hive in its queue group.
        subscribe.append(f"{names.QUERY_PREFIX}.>")
    else:
        subscribe.append(f"{names.QUERY_MARKET_PREFIX}.>")
    if role != "pod":
        # A pod's reports are its own (`permissions` binds them to its id); nobody else sends
        # them, or answers a pod's liveness probe for it.
        publish += [f"{prefix}.>" for prefix in _POD_REPORTS]
        subscribe.append(f"{names.PROBE_PREFIX}.>")
    if role not in ("gateway", "webhooks"):
        secret_publish, secret_subscribe = _secrets()
        publish += secret_publish
        subscribe += secret_subscribe
    if role != "pod":
        # Agents answer on the mesh from their pods alone: anyone else listening there could
        # read what is sent to an agent, or join its queue group and answer for it.
        subscribe.append(f"{names.MESH_PREFIX}.>")
    if role != "hive":
        # Who is alive is the Hive's to judge; a listener elsewhere learns the pods' ids.
        subscribe.append(f"{names.HEARTBEAT_PREFIX}.>")
    return publish, subscribe


#: What a pod reports about itself, each under its pod id: `<prefix>.<pod id>[.…]`.
_POD_REPORTS: Final = (names.HEARTBEAT_PREFIX, names.METRICS_PREFIX, names.LOGS_PREFIX)
#: Every family of Swarm's subjects (`swarm.<family>.…`), in `schemas.names`. A principal whose
#: permissions allow families one by one (a pod) is refused a family missing here: that fails
#: closed, and a test pins the list against the names module.
FAMILIES: Final = tuple(
    prefix.split(".")[1]
    for prefix in (
        names.COMMANDS_PREFIX,
        names.EVENTS_PREFIX,
        names.METRICS_PREFIX,
        names.LOGS_PREFIX,
        names.QUERY_PREFIX,
        names.MESH_PREFIX,
        names.HEARTBEAT_PREFIX,
        names.PROBE_PREFIX,
        names.TASKS_PREFIX,
        names.WEBHOOK_DELIVERIES_PREFIX,
        names.CHANGELOG_PREFIX,
        names.DEADLETTER_PREFIX,
    )
)
#: What JetStream, its key-value buckets and object stores take requests and writes on.
_JETSTREAM: Final = ("$JS.API.>", "$JS.ACK.>", "$KV.>", "$O.>")


def _families_but(*prefixes: str) -> list[str]:
    skipped = {prefix.split(".")[1] for prefix in prefixes}
    return [f"{names.ROOT}.{family}.>" for family in FAMILIES if family not in skipped]


@dataclass(frozen=True, slots=True)
class Permissions:
    """One principal's NATS permissions, as the server takes them: a subject is allowed when an
    allow list is empty or matches it, and no deny entry matches it (deny wins)."""

    publish_allow: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    #: May answer a request it received on the request's reply subject (one answer each).
    allow_responses: bool = False

    def to_config(self) -> dict[str, object]:
        """The `permissions` block of the server's configuration."""
        out: dict[str, object] = {}
        for direction, allow, deny in (
            ("publish", self.publish_allow, self.publish_deny),
            ("subscribe", self.subscribe_allow, self.subscribe_deny),
        ):
            block = {k: list(v) for k, v in (("allow", allow), ("deny", deny)) if v}
            if block:
                out[direction] = block
        if self.allow_responses:
            out["allow_responses"] = True
        return out


def permissions(principal: Principal) -> Permissions:
    """What `principal` may do on the stack's NATS: its role's rules (`denied`) and subjects
    bound to itself.

    * Its replies: everyone but the admin subscribes only under its own inbox prefix
      (`names.inbox_prefix` of its public key; `swarm.kernel.connection` connects with it), so
      nobody reads another principal's replies. Nobody but the admin publishes into an inbox
      (`denied`) except to answer a request it received, once and within two minutes (the
      server's `allow_responses` defaults): the Hive (queries) and the pods (the mesh, probes)
      answer, nobody else.
    * The scheduler (`SCHEDULER`) listens on the market's queries, which no other principal
      may; and it publishes into inboxes outright, as it forwards a task's answer to the inbox
      the task names (`swarm task send --wait`): that answer is no response to a request it
      received (the task came from a stream), so `allow_responses` cannot let it through.
    * A pod (the principal named by its pod id, as `swarm up` names them) publishes heartbeats,
      metrics and logs under its own id alone and listens for its own liveness probe alone.
      Deny wins over allow in NATS, so this takes allow lists: Swarm's subject families but
      those, its own subjects, JetStream's API, and answers to what it was asked.
    """
    publish, subscribe = denied(principal.role)
    if principal.role == ADMIN:
        return Permissions()
    inbox = f"{names.inbox_prefix(principal.public_key)}.>"
    if principal.role != "pod":
        subscribe_allow: tuple[str, ...] = (f"{names.ROOT}.>", inbox)
        if principal.role == "service" and principal.name == SCHEDULER:
            # Its answers (the market's, tasks') go into inboxes outright.
            publish.remove(f"{names.INBOX_ROOT}.>")
            # Deny wins: the Hive's queries are denied by an allow list without them (a
            # query family added later is refused, not allowed).
            subscribe.remove(f"{names.QUERY_PREFIX}.>")
            subscribe_allow = (
                *_families_but(names.QUERY_PREFIX),
                f"{names.QUERY_MARKET_PREFIX}.>",
                inbox,
            )
        answers = principal.role == "hive"
        return Permissions(
            # `allow_responses` turns off the server's blanket allow: given back, but for what
            # `publish` denies.
            publish_allow=(">",) if answers else (),
            publish_deny=tuple(publish),
            subscribe_allow=subscribe_allow,
            subscribe_deny=tuple(subscribe),
            allow_responses=answers,
        )
    pod = principal.name
    own = (
        names.heartbeat_subject(pod),
        *(f"{prefix}.{pod}.>" for prefix in (names.METRICS_PREFIX, names.LOGS_PREFIX)),
    )
    return Permissions(
        publish_allow=(
            *_families_but(*_POD_REPORTS, names.PROBE_PREFIX, names.EVENTS_PREFIX),
            *own,
            *_JETSTREAM,
        ),
        publish_deny=tuple(publish),
        subscribe_allow=(
            *_families_but(names.PROBE_PREFIX, names.HEARTBEAT_PREFIX, names.QUERY_PREFIX),
            names.probe_subject(pod),
            inbox,
        ),
        subscribe_deny=tuple(subscribe),
        # Its answers to mesh requests and to its probe.
        allow_responses=True,
    )


def role_of(service: str) -> str:
    """The role of a service `swarm up` supervises, by its name. A pod's name (`pod-…`) is
    its pod id too: the stack runs it with `SWARM_POD_ID` set to it, and its permissions bind
    its subjects to it."""
    if service == "hive" or service.startswith("hive-"):
        return "hive"
    if service.startswith("pod-"):
        return "pod"
    if service in ("gateway", "webhooks"):
        return service
    return "service"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    #: The nkey seed file (`S...`, 0600): what the principal connects with.
    seed_file: Path
    #: Its public key (`U...`): what the server knows it by.
    public_key: str


def issue(directory: Path, wanted: Iterable[tuple[str, str]]) -> list[Principal]:
    """The principals `wanted` (name, role), each with the key pair it had before, or a new one,
    and the users added before (`add_user`), which a restart keeps.

    Seeds are `<directory>/<name>.nk`; `principals.json` beside them lists name, role and public
    key (what the server's configuration and the Hive's roster are made from)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    out = [_keyed(directory, name, role) for name, role in wanted]
    taken = {p.name for p in out}
    out += [p for p in _listed(directory) if p.role == USER and p.name not in taken]
    _write_listing(directory, out)
    return out


def add_user(directory: Path, name: str) -> Principal:
    """A new user `name` (role `user`: it acts as `user:<name>` alone); ValueError if the name
    is taken."""
    listed = _listed(directory)
    if any(p.name == name for p in listed):
        raise ValueError(f"a principal named {name!r} exists already")
    if (directory / f"{name}.nk").exists():
        (directory / f"{name}.nk").unlink()  # a key left by a user removed before
    user = _keyed(directory, name, USER)
    _write_listing(directory, [*listed, user])
    return user


def rotate_user(directory: Path, name: str) -> Principal:
    """User `name` with a new key pair: the old one is admitted nowhere once the server and the
    Hive read the listing again."""
    listed = _listed(directory)
    if not any(p.name == name and p.role == USER for p in listed):
        raise ValueError(f"no user named {name!r}")
    (directory / f"{name}.nk").unlink(missing_ok=True)
    user = _keyed(directory, name, USER)
    _write_listing(directory, [user if p.name == name else p for p in listed])
    return user


def rotate_key(directory: Path, name: str) -> Principal:
    """Principal `name` (a service, a pod, the owner) with a new key pair, its role kept; the
    old key is admitted nowhere once the server and the readers read the listing again. A
    user's goes through `rotate_user` (its API token goes with it)."""
    listed = _listed(directory)
    found = next((p for p in listed if p.name == name), None)
    if found is None:
        raise ValueError(f"no principal named {name!r}")
    if found.role == USER:
        raise ValueError(f"{name!r} is a user: `swarm user rotate {name}` replaces its key")
    (directory / f"{name}.nk").unlink(missing_ok=True)
    fresh = _keyed(directory, name, found.role)
    _write_listing(directory, [fresh if p.name == name else p for p in listed])
    return fresh


def remove_user(directory: Path, name: str) -> None:
    """User `name` removed, with its key."""
    listed = _listed(directory)
    if not any(p.name == name and p.role == USER for p in listed):
        raise ValueError(f"no user named {name!r}")
    _write_listing(directory, [p for p in listed if p.name != name])
    (directory / f"{name}.nk").unlink(missing_ok=True)


def users(directory: Path) -> list[Principal]:
    return [p for p in _listed(directory) if p.role == USER]


def _keyed(directory: Path, name: str, role: str) -> Principal:
    """`name`'s principal, with the key pair its seed file holds, or a new one."""
    import nkeys

    denied(role)  # an unknown role fails here, before any file is written
    if not names.is_token(name):
        raise ValueError(f"principal name {name!r} must be a NATS token")
    seed_file = directory / f"{name}.nk"
    if seed_file.exists():
        seed = bytearray(seed_file.read_bytes().strip())
    else:
        seed = bytearray(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        with open(private_fd(seed_file, os.O_TRUNC), "wb") as f:
            f.write(bytes(seed) + b"\n")
    pair = nkeys.from_seed(seed)
    public = pair.public_key.decode()
    pair.wipe()
    return Principal(name, role, seed_file, public)


def _listed(directory: Path) -> list[Principal]:
    path = directory / LISTING
    return list(load(path).values()) if path.exists() else []


def _write_listing(directory: Path, principals: Sequence[Principal]) -> None:
    listing = [{"name": p.name, "role": p.role, "public_key": p.public_key} for p in principals]
    # Replaced whole (a reader never sees half a file), created for its owner only.
    fresh = directory / f".{LISTING}.new"
    with open(private_fd(fresh, os.O_TRUNC), "w") as f:
        json.dump(listing, f, indent=2)
    fresh.replace(directory / LISTING)


def load(listing: Path) -> dict[str, Principal]:
    """The principals a `principals.json` (written by `issue`) lists, by public key."""
    out = {}
    for entry in json.loads(listing.read_text()):
        name, role, public = str(entry["name"]), str(entry["role"]), str(entry["public_key"])
        denied(role)
        out[public] = Principal(name, role, listing.parent / f"{name}.nk", public)
    return out


class Roster:
    """The principals a listing names, read again whenever the file changed (a user added,
    rotated or removed while the reader runs)."""

    def __init__(self, listing: Path) -> None:
        self.listing = listing
        self._stamp: tuple[int, int] | None = None
        self._principals: dict[str, Principal] = {}
        self.get("")  # read now: an unreadable listing fails at start, not at a command

    def get(self, public_key: str) -> Principal | None:
        return self._current().get(public_key)

    def named(self, name: str) -> Principal | None:
        """The principal called `name` (the HTTP API finds a token's user by it)."""
        return next((p for p in self._current().values() if p.name == name), None)

    def _current(self) -> dict[str, Principal]:
        stat = self.listing.stat()
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp != self._stamp:
            self._principals = load(self.listing)
            self._stamp = stamp
        return self._principals


def write_authorization(path: Path, principals: Sequence[Principal]) -> None:
    """The server's authorization block (`authorization`) in its own file, which the server's
    configuration includes: rewritten when a user is added, then the server is told to reload."""
    fresh = path.with_name(f".{path.name}.new")
    with open(private_fd(fresh, os.O_TRUNC), "w") as f:
        f.write(authorization(principals))
    fresh.replace(path)


def authorization(principals: Sequence[Principal]) -> str:
    """The nats-server configuration block that admits `principals` alone, each with its
    role's permissions."""
    users = []
    for p in principals:
        user: dict[str, object] = {"nkey": p.public_key}
        config = permissions(p).to_config()
        if config:
            user["permissions"] = config
        users.append(user)
    # The server's configuration format reads JSON values as they are.
    return f"authorization {{\n  users: {json.dumps(users, indent=2)}\n}}\n"


__all__ = [
    "ADMIN",
    "FAMILIES",
    "LISTING",
    "ROLES",
    "SCHEDULER",
    "Permissions",
    "Principal",
    "Roster",
    "add_user",
    "authorization",
    "denied",
    "issue",
    "load",
    "permissions",
    "remove_user",
    "role_of",
    "rotate_key",
    "rotate_user",
    "users",
    "write_authorization",
]
