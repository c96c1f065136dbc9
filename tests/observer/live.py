"""An Observer in this process for the tests with real pods (tests/helpers/pods.py): 1 s
windows instead of 10 s, so a test with a warm-up and an incident takes a minute."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import wasmtime

from runtime.config import PodSettings
from schemas import names
from services.observer import Observer, ObserverSettings
from swarm.kernel.settings import Settings
from tests.helpers.pods import cluster, running_pod
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack

#: Pod metrics every 0.2 s, so 1 s windows see several messages; snapshots as by default.
POD_SETTINGS: dict[str, Any] = {
    "metrics_interval_s": 0.2,
    "snapshot_interval_s": PodSettings.model_fields["snapshot_interval_s"].default,
}
#: The README's echo agent: one debug log line per message.
ECHO_WAT = Path(__file__).resolve().parents[2] / "examples" / "echo" / "echo.wat"
#: Windows with calls before a finding may be critical (the default is 30 windows of 10 s).
CRITICAL_WARMUP = 8
#: Events by which the Hive's healing acts on an agent.
HEALING = frozenset({"quarantined", "replica_rewound", "reverted"})


@contextlib.asynccontextmanager
async def observing(stack: Stack, **config: Any) -> AsyncIterator[Observer]:
    """A live Observer with 1 s windows and no behaviour vectors stored; `config`
    (ObserverSettings fields) sets the rest."""
    settings = ObserverSettings(**({"window_s": 1.0, "store_behaviour": False} | config))
    observer = Observer(Settings(nats_url=stack.url), settings)
    async with in_this_loop(observer):
        yield observer


@contextlib.asynccontextmanager
async def echo_pod_observed(tmp_path: Path) -> AsyncIterator[tuple[Stack, Observer, bytes]]:
    """A cluster with one pod, p1 (`POD_SETTINGS`), an Observer whose findings may be critical
    after `CRITICAL_WARMUP` windows, and the echo agent's module, for the tests that put the
    echo under load and judge what the Observer made of it."""
    wasm = bytes(wasmtime.wat2wasm(ECHO_WAT.read_text()))
    async with (
        cluster(tmp_path) as stack,
        running_pod(stack, "p1", **POD_SETTINGS),
        observing(stack, critical_warmup_windows=CRITICAL_WARMUP) as observer,
    ):
        yield stack, observer, wasm


async def caught_up(stack: Stack, observer: Observer, timeout: float) -> None:
    """Until the Observer has applied every metrics message published so far: what it found
    about a load is judged only once it has seen all of it."""
    last = await stack.client.last_sequence(names.STREAM_METRICS)
    assert observer.app is not None
    await observer.app.reached(names.OBSERVER_METRICS_PROCESSOR, last, timeout=timeout)


async def events(stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of every event on SWARM_EVENTS that has data."""
    found = []
    async for d in stack.client.replay(names.STREAM_EVENTS):
        doc = json.loads(d.data)
        data = doc.get("data")
        if isinstance(data, dict):
            found.append((doc["type"], data))
    return found
