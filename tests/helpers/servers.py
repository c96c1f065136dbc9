"""A nats-server of one test's own, for tests that read whole streams or stop the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from swarm.devstack.embedded import EmbeddedNats


@contextmanager
def own_nats(store: Path) -> Iterator[str]:
    """Start a nats-server with its store in `store`; its URL until the block ends."""
    nats = EmbeddedNats(store)
    try:
        yield nats.start()
    finally:
        nats.stop()
