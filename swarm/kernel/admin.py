"""The log client's admin surface: what streams hold, and the KV buckets and object store Swarm
keeps beside them.

The data plane (append, consume, replay, requests) is `swarm.kernel.eventlog.EventLog`; this
module owns what is created and inspected rather than streamed. Both raise the log client's
typed errors (`NotFound`, `Unavailable` and its kinds), never nats-py's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectInfo,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE
from nats.js.errors import BadRequestError, BucketNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from schemas import names
from swarm.kernel.eventlog import EventLog, NotFound, translated
from swarm.kernel.streams import ensure_deadletter, ensure_streams

T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One revision of a key."""

    key: str
    value: bytes
    revision: int
    created: datetime | None
    #: A delete or purge marker rather than a value.
    deleted: bool


class Bucket:
    """A KV bucket: values by key, with as many revisions per key as it was created to keep."""

    def __init__(self, kv: KeyValue, name: str, js: JetStreamContext) -> None:
        self._kv = kv
        self._js = js
        self.name = name

    async def get(self, key: str) -> bytes | None:
        """The key's value, or None when it was never set or is deleted."""
        entry = await _unless_missing(self._kv.get(key))
        return None if entry is None else entry.value

    async def entry(self, key: str, revision: int | None = None) -> KvEntry | None:
        """The key's latest revision (or revision `revision`, which may be of another key: check
        `KvEntry.key`); None when there is none, or it is deleted."""
        entry = await _unless_missing(self._kv.get(key, revision=revision))
        return None if entry is None else _kv_entry(entry)

    async def history(self, key: str) -> list[KvEntry]:
        """Every revision the bucket still keeps of `key`, oldest first (markers included)."""
        with translated():
            try:
                entries = await self._kv.history(key)
            except (NotFoundError, NoKeysError):
                return []
        return [_kv_entry(e) for e in entries]

    async def purge_keys(self, pattern: str) -> None:
        """Remove every revision of the keys matching `pattern` (NATS wildcards) at once."""
        stream = KV_STREAM_TEMPLATE.format(bucket=self.name)
        subject = f"{KV_PRE_TEMPLATE.format(bucket=self.name)}{pattern}"
        with translated():
            await self._js.purge_stream(stream, subject=subject)

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


async def _unless_missing(answer: Awaitable[T]) -> T | None:
    """What `answer` gives, or None where nats-py says there is no such thing: the readers
    of one key or object answer "none" rather than raise, as their callers ask "is it there"."""
    try:
        with translated():
            return await answer
    except NotFound:
        return None


def _kv_entry(entry: KeyValue.Entry) -> KvEntry:
    return KvEntry(
        key=entry.key,
        value=entry.value or b"",
        revision=int(entry.revision or 0),
        created=entry.created if isinstance(entry.created, datetime) else None,
        deleted=entry.operation is not None,
    )


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
        info = await _unless_missing(self._store.get_info(name))
        return None if info is None else _stored_object(info)

    async def put(self, name: str, data: bytes) -> None:
        with translated():
            await self._store.put(name, data)

    async def list(self) -> list[StoredObject]:
        """Every object not deleted; empty when the store has none."""
        infos = await _unless_missing(self._store.list(ignore_deletes=True))
        return [_stored_object(i) for i in infos or () if not i.deleted]


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

    async def ensure_limited_stream(
        self, name: str, subjects: Sequence[str], description: str, *, max_age: float
    ) -> None:
        """Create a stream whose messages are dropped after `max_age` seconds (records, not
        the audit log), or bring an existing one's settings up to date."""
        settings = self._log.settings
        config = StreamConfig(
            name=name,
            description=description,
            subjects=list(subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=max_age,
            num_replicas=settings.stream_replicas,
            duplicate_window=min(settings.duplicate_window, max_age),
            allow_direct=True,
        )
        with translated():
            try:
                await self._log.js.stream_info(name)
            except NotFoundError:
                # Refused when another process created it meanwhile: then update it instead.
                with contextlib.suppress(BadRequestError):
                    await self._log.js.add_stream(config)
                    return
            await self._log.js.update_stream(config)

    async def ensure_changelog_stream(
        self,
        name: str,
        subjects: Sequence[str],
        *,
        max_age: float | None,
        replicas: int,
        dedupe_window: float,
    ) -> None:
        """Create a stream-processing app's table changelog (the last value per subject, like
        a compacted topic), or bring an existing one's settings up to date."""
        config = StreamConfig(
            name=name,
            description="Table changelog of a stream-processing app: the last value per key.",
            subjects=list(subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=1,
            max_age=max_age,
            duplicate_window=dedupe_window,
            num_replicas=replicas,
            allow_direct=True,
        )
        with translated():
            try:
                await self._log.js.stream_info(name)
            except NotFoundError:
                await self._log.js.add_stream(config)
            else:
                await self._log.js.update_stream(config)

    async def bucket(
        self,
        name: str,
        *,
        description: str | None = None,
        history: int = 1,
        replicas: int | None = None,
        create: bool = True,
    ) -> Bucket:
        """KV bucket `name`, created when missing and `create` (keeping `history` revisions per
        key in files, on `replicas` servers, default the streams' setting); otherwise a missing
        bucket is `NotFound`."""
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
                        history=history,
                        storage=StorageType.FILE,
                        replicas=self._log.settings.stream_replicas
                        if replicas is None
                        else replicas,
                    )
                )
        return Bucket(kv, name, self._log.js)

    async def modules(self) -> ModuleStore:
        """The module object store; `NotFound` when it was never created (`ensure_streams`)."""
        with translated():
            store = await self._log.js.object_store(names.OBJECT_STORE_MODULES)
        return ModuleStore(store)


__all__ = [
    "Bucket",
    "KvEntry",
    "LogAdmin",
    "ModuleStore",
    "StoredObject",
    "StreamState",
]
