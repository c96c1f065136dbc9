"""The JetStream streams and object store Swarm runs on, as values, and their creation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from schemas import names

if TYPE_CHECKING:
    from swarm.kernel.settings import Settings


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    #: Seconds a message is kept; 0 keeps it forever.
    max_age: float = 0
    replicas: int = 1
    duplicate_window: float = 120.0
    #: WORK_QUEUE: a message is removed once a consumer acknowledged it (task queues).
    retention: RetentionPolicy = RetentionPolicy.LIMITS

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=self.retention,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age or None,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            # The audit log must not be edited in place: no deletes, no purges.
            deny_delete=self.max_age == 0,
            deny_purge=self.max_age == 0,
            allow_direct=True,
            # Lets the Hive write a command's events and its outcome all-or-nothing.
            allow_atomic=True,
        )


#: A task nobody took within a week is dropped (work queues must not grow without bound).
TASKS_MAX_AGE_S = 7 * 86_400.0


def stream_specs(settings: Settings) -> tuple[StreamSpec, ...]:
    replicas = settings.stream_replicas
    window = settings.duplicate_window
    return (
        StreamSpec(
            names.STREAM_COMMANDS,
            (names.COMMANDS_ALL,),
            "Commands sent to Swarm (CloudEvents); the Hive answers each with one outcome.",
            replicas=replicas,
            duplicate_window=window,
        ),
        StreamSpec(
            names.STREAM_EVENTS,
            (names.EVENTS_ALL,),
            "The audit log: every event Swarm's state is folded from. Never rewritten.",
            replicas=replicas,
            duplicate_window=window,
        ),
        _limited(
            names.STREAM_METRICS,
            names.METRICS_ALL,
            "Agent and pod metrics",
            max_age=settings.metrics_max_age,
            settings=settings,
        ),
        _limited(
            names.STREAM_LOGS,
            names.LOGS_ALL,
            "Agent logs",
            max_age=settings.logs_max_age,
            settings=settings,
        ),
        StreamSpec(
            names.STREAM_TASKS,
            (names.TASKS_ALL,),
            "Tasks of named queues, each removed once a replica handled it (work queue).",
            max_age=TASKS_MAX_AGE_S,
            replicas=replicas,
            duplicate_window=window,
            retention=RetentionPolicy.WORK_QUEUE,
        ),
    )


def _limited(
    name: str, subject: str, what: str, *, max_age: float, settings: Settings
) -> StreamSpec:
    """A stream of records (`what`) kept for `max_age` seconds, not part of the audit log."""
    return StreamSpec(
        name,
        (subject,),
        f"{what}, kept for a limited time.",
        max_age=max_age,
        replicas=settings.stream_replicas,
        # JetStream refuses a duplicate window longer than the stream keeps its messages.
        duplicate_window=min(settings.duplicate_window, max_age),
    )


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create the streams and the module object store, or bring their settings up to date.

    Safe to call from every process at start: creating an identical stream is a no-op, and a
    changed one (e.g. a new max_age) is updated in place.
    """
    for spec in stream_specs(settings):
        config = spec.config()
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            try:
                await js.update_stream(config)
            except BadRequestError as exc:
                # Some settings (storage, replicas on a single server) cannot change in place;
                # the stream keeps working with its old value, so say so instead of failing.
                raise RuntimeError(
                    f"stream {spec.name} cannot be updated: {exc.description}"
                ) from exc
    try:
        await js.object_store(names.OBJECT_STORE_MODULES)
    except NotFoundError:
        await js.create_object_store(
            names.OBJECT_STORE_MODULES,
            ObjectStoreConfig(
                description="Agent modules (WebAssembly), addressed by sha256.",
                replicas=settings.stream_replicas,
                storage=StorageType.FILE,
            ),
        )


async def ensure_deadletter(js: JetStreamContext, settings: Settings) -> None:
    """Create SWARM_DEADLETTER if it is missing: what stream processors and the Hive could not
    process, kept with the reason (`names.HEADER_DEADLETTER_*`)."""
    config = StreamConfig(
        name=names.STREAM_DEADLETTER,
        description="Messages Swarm's services could not process, with the reason.",
        subjects=[names.DEADLETTER_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window,
    )
    try:
        await js.stream_info(names.STREAM_DEADLETTER)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):  # created meanwhile by another process
            await js.add_stream(config)
