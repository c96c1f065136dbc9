"""A nats-server of one test's own, for tests that read whole streams or stop the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from swarm.devstack.embedded import AUTH_FILE, EmbeddedNats
from swarm.devstack.principals import load, write_authorization


@contextmanager
def own_nats(store: Path, *, principals_file: Path | None = None) -> Iterator[str]:
    """Start a nats-server with its store in `store`; its URL until the block ends. With
    `principals_file`, it admits those principals alone, each with its role's permissions, as
    `swarm up` configures its server (without TLS)."""
    nats = EmbeddedNats(store, authorize=principals_file is not None)
    if principals_file is not None:
        store.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_authorization(store / AUTH_FILE, list(load(principals_file).values()))
    try:
        yield nats.start()
    finally:
        nats.stop()
