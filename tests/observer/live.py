"""An Observer in this process for the tests with real pods (tests/helpers/pods.py): 1 s
windows instead of 10 s, so a test with a warm-up and an incident takes a minute."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from runtime.config import PodSettings
from services.observer import Observer, ObserverSettings
from swarm.kernel.settings import Settings
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack

#: Pod metrics every 0.2 s, so 1 s windows see several messages; snapshots as by default.
POD_SETTINGS: dict[str, Any] = {
    "metrics_interval_s": 0.2,
    "snapshot_interval_s": PodSettings.model_fields["snapshot_interval_s"].default,
}


@contextlib.asynccontextmanager
async def observing(stack: Stack, **config: Any) -> AsyncIterator[Observer]:
    """A live Observer with 1 s windows and no behaviour vectors stored; `config`
    (ObserverSettings fields) sets the rest."""
    settings = ObserverSettings(**({"window_s": 1.0, "store_behaviour": False} | config))
    observer = Observer(Settings(nats_url=stack.url), settings)
    async with in_this_loop(observer):
        yield observer
