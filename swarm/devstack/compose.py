"""The credentials of the docker-compose cluster, written by its one-shot `init` service.

docker-compose.yml runs NATS as three nodes and each Swarm process in a container of its own.
They get what `swarm up` gives the processes it starts: a key per principal and the NATS
authorization made from them (`swarm.devstack.principals`), a CA and a certificate for the
nodes (`swarm.devstack.tls`). `python -m swarm.devstack.compose --out DIR --nats-node nats-1 …
hive-1 scheduler …` writes them into DIR, the named volume `swarm-secrets`, before anything
else starts; each container then mounts only the part it needs, read-only (a volume
`subpath`), so a pod never sees another principal's seed or the CA's key:

    principals/    every seed (`<name>.nk`) and principals.json: what init issues from, its own
    tls/           the CA (with its key) and the nodes' certificate: init's own
    nats/          what each NATS node includes: auth.conf (who may connect, each principal with
                   its role's permissions), ca.pem, nats.pem, nats-key.pem
    public/        what every Swarm process reads: ca.pem, principals.json
    keys/<name>/   what the process <name> connects and signs with: its seed, <name>.nk

The principals are `admin` (the cluster's owner: the CLI from the host, README) and the
services named on the command line, each with the role `role_of` gives its name; a pod's name is
its pod id. The certificate is for the nodes' host names and for `localhost`/`127.0.0.1`/`::1`
(the host reaches nats-1 on a published loopback port), and is a client's certificate too: the
nodes' routes present it, and a node takes a route only with a certificate of the CA.

Run again (every `docker compose up` does), it keeps every key, the CA and a certificate still
good, issues a key to a principal new to the list, and writes the copies and auth.conf again.
`--add-user NAME`, `--rotate-user NAME` and `--remove-user NAME` manage people's keys there as
`swarm user add / rotate / rm` do in a data dir (`docker compose run --rm init --add-user ann`:
init's arguments are its entrypoint's, so these add to them); the NATS nodes admit the change
on SIGHUP, the Hive and the pods when they next read the listing.
Directories are 0700 and files 0600, owned by whoever runs it: the image's user, which every
Swarm container runs as (the NATS image runs as root).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from swarm.devstack import principals, tls
from swarm.devstack.embedded import AUTH_FILE, private_fd

#: The parts of the volume (see the module).
PRINCIPALS_DIR: Final = "principals"
TLS_DIR: Final = "tls"
NATS_DIR: Final = "nats"
PUBLIC_DIR: Final = "public"
KEYS_DIR: Final = "keys"


@dataclass(frozen=True, slots=True)
class ComposeSecrets:
    """Where the parts of an `init` volume are."""

    root: Path

    @property
    def nats(self) -> Path:
        """What a NATS node mounts (its configuration includes `auth.conf` from here)."""
        return self.root / NATS_DIR

    @property
    def nats_tls(self) -> tls.TlsFiles:
        """The node's certificate and the CA's (never the CA's key), in `nats`."""
        return tls.TlsFiles(self.nats)

    @property
    def authorization(self) -> Path:
        return self.nats / AUTH_FILE

    @property
    def public(self) -> Path:
        """What every Swarm process mounts."""
        return self.root / PUBLIC_DIR

    @property
    def ca_cert(self) -> Path:
        """What clients verify the nodes against."""
        return tls.TlsFiles(self.public).ca_cert

    @property
    def listing(self) -> Path:
        return self.public / principals.LISTING

    def key_dir(self, name: str) -> Path:
        """What the process `name` mounts."""
        return self.root / KEYS_DIR / name

    def seed(self, name: str) -> Path:
        """The seed `name` connects with, in its `key_dir`."""
        return self.key_dir(name) / f"{name}.nk"


def write(
    root: Path, services: Sequence[str], nodes: Sequence[str]
) -> tuple[ComposeSecrets, list[principals.Principal]]:
    """The credentials of `admin` and `services` and the certificate of `nodes`, in `root`:
    kept from before where they are, made where not (see the module). ValueError for a name
    that is no NATS token, or `admin` among the services (it is always issued)."""
    if principals.ADMIN in services:
        raise ValueError(f"{principals.ADMIN!r} is the owner's, always issued: not a service")
    if len(set(services)) != len(services):
        raise ValueError(f"a service is named twice: {', '.join(services)}")
    _private_dir(root)
    secrets = ComposeSecrets(root)
    issued = principals.issue(
        root / PRINCIPALS_DIR,
        [(principals.ADMIN, principals.ADMIN), *((s, principals.role_of(s)) for s in services)],
    )
    certificates = tls.issue(root / TLS_DIR, names=(*nodes, *tls.SERVER_NAMES), client_auth=True)
    for directory in (secrets.nats, secrets.public, secrets.root / KEYS_DIR):
        _private_dir(directory)
    principals.write_authorization(secrets.authorization, issued)
    node_files = secrets.nats_tls
    _copy(certificates.ca_cert, node_files.ca_cert)
    _copy(certificates.server_cert, node_files.server_cert)
    _copy(certificates.server_key, node_files.server_key)
    _copy(certificates.ca_cert, secrets.ca_cert)
    _copy(root / PRINCIPALS_DIR / principals.LISTING, secrets.listing)
    for principal in issued:
        _private_dir(secrets.key_dir(principal.name))
        _copy(principal.seed_file, secrets.seed(principal.name))
    return secrets, issued


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _copy(source: Path, target: Path) -> None:
    """`source`'s bytes in `target`, replaced whole (a node reading it never sees half), 0600."""
    fresh = target.with_name(f".{target.name}.new")
    with open(private_fd(fresh, os.O_TRUNC), "wb") as f:
        f.write(source.read_bytes())
    fresh.replace(target)


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m swarm.devstack.compose` (docker-compose.yml's init)."""
    out = argparse.ArgumentParser(
        prog="python -m swarm.devstack.compose",
        description="Write the docker-compose cluster's credentials (the init service).",
    )
    out.add_argument("--out", type=Path, required=True, help="the volume to write into")
    out.add_argument(
        "--nats-node",
        action="append",
        default=[],
        metavar="HOST",
        help="a NATS node's host name, for its certificate (repeat for each)",
    )
    out.add_argument("services", nargs="*", metavar="SERVICE", help="a principal per service")
    for flag, what in (
        ("--add-user", "issue a key to a new user NAME (it acts as user:NAME)"),
        ("--rotate-user", "give user NAME a new key (the old one is refused once reloaded)"),
        ("--remove-user", "remove user NAME and its key"),
    ):
        out.add_argument(flag, action="append", default=[], metavar="NAME", help=what)
    return out


def change_users(
    root: Path, add: Sequence[str], rotate: Sequence[str], remove: Sequence[str]
) -> None:
    """Users added, rotated and removed in the volume's principals, as `swarm user add / rotate
    / rm` do in a data dir; `write` then copies their keys out and writes the authorization
    again (a user's key lands in `keys/<name>/`, which no container mounts: the owner takes it
    out for the user). ValueError for a name taken, or no user of that name."""
    directory = root / PRINCIPALS_DIR
    if not (add or rotate or remove):
        return
    _private_dir(directory)
    for name in add:
        principals.add_user(directory, name)
    for name in rotate:
        principals.rotate_user(directory, name)
    for name in remove:
        principals.remove_user(directory, name)
        gone = ComposeSecrets(root).key_dir(name)
        for path in (gone / f"{name}.nk", gone):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        change_users(args.out, args.add_user, args.rotate_user, args.remove_user)
        secrets, issued = write(args.out, args.services, args.nats_node)
    except (OSError, ValueError) as exc:
        print(f"init: {exc}", file=sys.stderr)
        return 1
    for p in issued:
        print(f"{p.name:<12} {p.role:<9} {p.public_key}")
    print(f"credentials of {len(issued)} principals in {secrets.root}")
    for name in (*args.add_user, *args.rotate_user):
        print(f"user {name}'s key: {secrets.seed(name)} (reload the NATS nodes: SIGHUP)")
    return 0


__all__ = [
    "KEYS_DIR",
    "NATS_DIR",
    "PRINCIPALS_DIR",
    "PUBLIC_DIR",
    "TLS_DIR",
    "ComposeSecrets",
    "main",
    "parser",
    "write",
]


if __name__ == "__main__":
    sys.exit(main())
