"""The log client's admin surface: what streams hold, and the KV buckets and object store Swarm
keeps beside them.

The data plane (append, consume, replay, requests) is `swarm.kernel.eventlog.EventLog`; this
module owns what is created and inspected rather than streamed. Both raise the log client's
typed errors (`NotFound`, `Unavailable` and its kinds), never nats-py's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectInfo,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from schemas import names
from swarm.kernel.eventlog import EventLog, NotFound, translated
from swarm.kernel.streams import ensure_deadletter, ensure_streams


@dataclass(frozen=True, slots=True)
class StreamState:
    """What a stream holds now."""

    name: str
    messages: int
    first_seq: int
    last_seq: int
    #: Messages per subject, when asked for with `subjects`; empty otherwise.
    subjects: dict[str, int]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object store entry's metadata."""

    name: str
    size: int
    #: When it was stored (the server's RFC 3339 text), if known.
    stored: str | None
    deleted: bool


class Bucket:
    """A KV bucket: values by key, one revision kept (`history=1`)."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self.name = name

    async def get(self, key: str) -> bytes | None:
        """The key's value, or None when it was never set or is deleted."""
        try:
            with translated():
                entry = await self._kv.get(key)
        except NotFound:
            return None
        return entry.value

    async def put(self, key: str, value: bytes) -> int:
        """Set the key; returns its new revision."""
        with translated():
            return await self._kv.put(key, value)

    async def delete(self, key: str) -> None:
        """Delete the key; a key that is not there is no error."""
        with contextlib.suppress(NotFound), translated():
            await self._kv.delete(key)

    async def values(self, pattern: str = ">") -> list[bytes]:
        """The values (not deleted) of the keys matching `pattern` (NATS wildcards).

        Read with a watcher on the pattern rather than `keys(filters=…)`, which nats-py matches
        as substrings after listing every key of the bucket.
        """
        values: list[bytes] = []
        with translated():
            watcher = await self._kv.watch(pattern, ignore_deletes=True)
            try:
                async for entry in watcher:
                    if entry is None:
                        break  # the watcher's marker: everything stored has been seen
                    if entry.value:
                        values.append(entry.value)
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]  # unannotated in nats-py
        return values


class ModuleStore:
    """The object store of agent modules, each named by its sha256."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def get(self, name: str) -> bytes:
        """The object's bytes; `NotFound` when there is none by that name."""
        with translated():
            result = await self._store.get(name)
        return bytes(result.data or b"")

    async def info(self, name: str) -> StoredObject | None:
        """The object's metadata, None when there is none by that name."""
        try:
            with translated():
                info = await self._store.get_info(name)
        except NotFound:
            return None
        return _stored_object(info)

    async def put(self, name: str, data: bytes) -> None:
        with translated():
            await self._store.put(name, data)

    async def list(self) -> list[StoredObject]:
        """Every object not deleted; empty when the store has none."""
        try:
            with translated():
                infos = await self._store.list(ignore_deletes=True)
        except NotFound:
            return []
        return [_stored_object(i) for i in infos if not i.deleted]


def _stored_object(info: ObjectInfo) -> StoredObject:
    return StoredObject(
        name=info.name, size=info.size or 0, stored=info.mtime, deleted=bool(info.deleted)
    )


class LogAdmin:
    """Streams, buckets and the module store on the connection of `log`."""

    def __init__(self, log: EventLog) -> None:
        self._log = log

    async def stream(self, name: str, *, subjects: str | None = None) -> StreamState:
        """What stream `name` holds (with message counts of the subjects matching `subjects`
        when given); `NotFound` when there is no such stream."""
        with translated():
            info = await self._log.js.stream_info(name, subjects_filter=subjects)
        state = info.state
        return StreamState(
            name=name,
            messages=int(state.messages),
            first_seq=int(state.first_seq),
            last_seq=int(state.last_seq),
            subjects=dict(state.subjects or {}),
        )

    async def ensure_streams(self) -> None:
        """Swarm's streams and module object store (see `swarm.kernel.streams`)."""
        with translated():
            await ensure_streams(self._log.js, self._log.settings)

    async def ensure_deadletter(self) -> None:
        with translated():
            await ensure_deadletter(self._log.js, self._log.settings)

    async def ensure_stream(self, config: StreamConfig) -> None:
        """Create a stream, or bring an existing one's settings up to `config`."""
        with translated():
            try:
                await self._log.js.stream_info(config.name or "")
            except NotFoundError:
                # Refused when another process created it meanwhile: then update it instead.
                with contextlib.suppress(BadRequestError):
                    await self._log.js.add_stream(config)
                    return
            await self._log.js.update_stream(config)

    async def bucket(self, name: str, *, description: str, create: bool = True) -> Bucket:
        """KV bucket `name`, created (one revision per key, file storage) when missing and
        `create`; otherwise a missing bucket is `NotFound`."""
        with translated():
            try:
                kv = await self._log.js.key_value(name)
            except BucketNotFoundError:
                if not create:
                    raise
                kv = await self._log.js.create_key_value(
                    KeyValueConfig(
                        bucket=name,
                        description=description,
                        history=1,
                        storage=StorageType.FILE,
                        replicas=self._log.settings.stream_replicas,
                    )
                )
        return Bucket(kv, name)

    async def modules(self) -> ModuleStore:
        """The module object store; `NotFound` when it was never created (`ensure_streams`)."""
        with translated():
            store = await self._log.js.object_store(names.OBJECT_STORE_MODULES)
        return ModuleStore(store)


def limited_stream(
    name: str,
    subjects: list[str],
    description: str,
    *,
    max_age: float,
    replicas: int,
    window: float,
) -> StreamConfig:
    """A stream whose messages are dropped after `max_age` seconds (records, not the audit)."""
    return StreamConfig(
        name=name,
        description=description,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age,
        num_replicas=replicas,
        duplicate_window=min(window, max_age),
        allow_direct=True,
    )


__all__ = [
    "Bucket",
    "LogAdmin",
    "ModuleStore",
    "StoredObject",
    "StreamState",
    "limited_stream",
]
