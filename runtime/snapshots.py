"""Agent kv-state snapshots in a JetStream KV bucket: a small head per replica id, and the state
either inside the head or, when it does not fit one NATS message, in chunks beside it.

A reference is `<bucket>/<key>@<revision>` (the head's revision) and is what the pod reports to
the Hive (on `starting`: the one it resumed from; on `stopped`/`crashed`: the one it saved last).

Restoring reads the **latest** revision of the referenced key, not the exact one. Interval
snapshots are not reported (they would flood the audit log), so after the loss of a pod the log
only knows an older reference; only the replica running under that key writes it, so its latest
revision is its newest state. When the key has no value at all (purged), the replica starts empty.

Heads (the value under `<key>`, always small):

- **v1, inline**: JSON `{"v": 1, "kv": {key: base64 value}, "gen": n}`, written when the encoded
  state fits one message; what older pods wrote (without `gen`), and still read.
- **v2, chunked**: JSON `{"v": 2, "gen": n, "id": str, "chunks": c, "size": bytes, "sha256": hex}`.
  The state's binary encoding (the *body*: `SWKV` and a version byte, then per entry, sorted by
  key, u32 key length, the key in UTF-8, u32 value length, the value; little-endian) is split
  into `c` chunks of at most one message each, under keys `<key>.<gen>.<id>.<i>`.

Guarantees:

- **All or nothing.** A save writes every chunk first and the head last, and a load checks the
  body's size and sha256 before decoding it: a save interrupted anywhere leaves the previous head
  and its chunks, so a restore reads the old state or the new one, never a mix; a snapshot that
  cannot be read whole raises `SnapshotUnreadable` (nothing is restored from it).
- **Always fits.** The message size is the server's `max_payload` at the time of the save, so
  any state the caps allow (runtime/kvstate.py) can be saved; a save that fails raises.
- **Bounded garbage.** Each save of a key uses the generation `n` after its latest head's (a key
  has one writer at a time: the replica running under it). The bucket keeps HISTORY heads per
  key, so after a head of generation `n` is written, the chunks of generation `n - HISTORY`
  (whose head was just dropped, and whatever an interrupted save left under that number) are
  purged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import structlog

from schemas import names
from swarm.kernel.admin import Bucket, LogAdmin
from swarm.kernel.eventlog import EventLog, NotFound

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
CHUNKED_VERSION: Final = 2
#: Revisions kept per key: an exact older reference stays readable for a while (debugging).
HISTORY = 5
#: NATS' default max_payload, for a store given no connection to ask.
DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
#: Room left in a message for the subject and protocol, so a chunk never exceeds max_payload.
_HEADROOM: Final = 4096
_BODY_MAGIC: Final = b"SWKV\x01"
_U32 = struct.Struct("<I")
_ID = re.compile(r"[0-9a-f]{1,32}")


class SnapshotUnreadable(ValueError):
    """A snapshot exists but cannot be read whole (corrupt, unknown format, a chunk missing)."""


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    bucket: str
    key: str
    revision: int

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key}@{self.revision}"

    @classmethod
    def parse(cls, text: str) -> SnapshotRef | None:
        bucket, slash, rest = text.partition("/")
        key, at, revision = rest.rpartition("@")
        if not slash or not at or not key or not revision.isdigit():
            return None
        return cls(bucket, key, int(revision))


def encode(state: Mapping[str, bytes], *, gen: int | None = None) -> bytes:
    """The inline (v1) head of `state`."""
    kv = {k: base64.b64encode(v).decode() for k, v in state.items()}
    doc: dict[str, Any] = {"v": FORMAT_VERSION, "kv": kv}
    if gen is not None:
        doc["gen"] = gen
    return json.dumps(doc, sort_keys=True).encode()


def decode(data: bytes) -> dict[str, bytes]:
    """The state of an inline (v1) head; `SnapshotUnreadable` for anything else."""
    doc = _head(data)
    if doc.get("v") != FORMAT_VERSION:
        raise SnapshotUnreadable("not a version 1 (inline) snapshot")
    kv = doc.get("kv")
    if not isinstance(kv, dict):
        raise SnapshotUnreadable("version 1 snapshot without a kv object")
    try:
        return {str(k): base64.b64decode(v, validate=True) for k, v in kv.items()}
    except (TypeError, ValueError) as exc:
        raise SnapshotUnreadable(f"version 1 snapshot with a bad value: {exc}") from None


def encode_body(state: Mapping[str, bytes]) -> bytes:
    """The binary encoding of `state` that chunked snapshots carry."""
    parts = [_BODY_MAGIC]
    for key in sorted(state):
        raw = key.encode()
        value = state[key]
        parts += (_U32.pack(len(raw)), raw, _U32.pack(len(value)), value)
    return b"".join(parts)


def decode_body(body: bytes) -> dict[str, bytes]:
    """The state `encode_body` encoded; `SnapshotUnreadable` if `body` is not exactly that."""
    if not body.startswith(_BODY_MAGIC):
        raise SnapshotUnreadable("snapshot body has no SWKV version 1 header")
    view = memoryview(body)
    at, end = len(_BODY_MAGIC), len(body)
    state: dict[str, bytes] = {}

    def field() -> memoryview:
        nonlocal at
        if at + 4 > end:
            raise SnapshotUnreadable(f"snapshot body cut at byte {at}")
        (size,) = _U32.unpack_from(view, at)
        at += 4
        if at + size > end:
            raise SnapshotUnreadable(f"snapshot body cut at byte {at}")
        chunk = view[at : at + size]
        at += size
        return chunk

    while at < end:
        try:
            key = str(field(), "utf-8")
        except UnicodeDecodeError:
            raise SnapshotUnreadable(f"snapshot key before byte {at} is not UTF-8") from None
        state[key] = bytes(field())
    return state


def _head(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise SnapshotUnreadable("snapshot head is not JSON") from None
    if not isinstance(doc, dict):
        raise SnapshotUnreadable("snapshot head is not a JSON object")
    return doc


def _gen(doc: Mapping[str, Any]) -> int:
    gen = doc.get("gen", 0)
    return gen if isinstance(gen, int) and not isinstance(gen, bool) and gen >= 0 else 0


@dataclass(frozen=True, slots=True)
class _Chunked:
    gen: int
    id: str
    chunks: int
    size: int
    sha256: str

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> _Chunked:
        gen, id_, chunks = doc.get("gen"), doc.get("id"), doc.get("chunks")
        size, digest = doc.get("size"), doc.get("sha256")
        if not (
            isinstance(gen, int)
            and not isinstance(gen, bool)
            and gen >= 1
            and isinstance(id_, str)
            and _ID.fullmatch(id_) is not None
            and isinstance(chunks, int)
            and chunks >= 1
            and isinstance(size, int)
            and size >= 0
            and isinstance(digest, str)
        ):
            raise SnapshotUnreadable("version 2 snapshot head is malformed")
        return cls(gen, id_, chunks, size, digest)

    def head(self) -> bytes:
        doc = {
            "v": CHUNKED_VERSION,
            "gen": self.gen,
            "id": self.id,
            "chunks": self.chunks,
            "size": self.size,
            "sha256": self.sha256,
        }
        return json.dumps(doc, sort_keys=True).encode()


def chunk_key(key: str, gen: int, id_: str, index: int) -> str:
    return f"{key}.{gen}.{id_}.{index}"


class SnapshotStore:
    def __init__(
        self, kv: Bucket, *, max_payload: Callable[[], int] = lambda: DEFAULT_MAX_PAYLOAD
    ) -> None:
        self._kv = kv
        self._max_payload = max_payload
        self.bucket = kv.name

    @classmethod
    async def open(
        cls, log: EventLog, bucket: str = names.SNAPSHOTS_BUCKET, *, create: bool = True
    ) -> SnapshotStore:
        """The store in `bucket`, created when missing (unless not `create`: then `NotFound`).
        A save sizes its messages by the connection's limit at the time (a reconnect may land
        on a server with another)."""
        # Creating an existing bucket with the same config is accepted, so racing pods agree.
        kv = await LogAdmin(log).bucket(bucket, history=HISTORY, replicas=1, create=create)
        return cls(kv, max_payload=lambda: log.max_payload)

    def message_limit(self) -> int:
        """The most bytes one head or chunk may carry."""
        max_payload = self._max_payload()
        return max_payload - min(_HEADROOM, max_payload // 4)

    async def save(self, key: str, state: Mapping[str, bytes]) -> SnapshotRef:
        """Save `state` under `key`: inline if it fits one message, else in chunks (chunks
        first, head last). Raises the log client's error when it could not be saved."""
        gen = await self._latest_gen(key) + 1
        limit = self.message_limit()
        head: bytes | None = None
        # An inline head costs base64 (4/3) plus JSON; only worth encoding when it may fit.
        if sum(len(k) + len(v) for k, v in state.items()) <= limit // 2:
            head = encode(state, gen=gen)
            if len(head) > limit:
                head = None
        if head is None:
            head = await self._save_chunks(key, gen, state, limit)
        revision = await self._kv.put(key, head)
        await self._collect(key, gen - HISTORY)
        return SnapshotRef(self.bucket, key, int(revision))

    async def _save_chunks(
        self, key: str, gen: int, state: Mapping[str, bytes], limit: int
    ) -> bytes:
        # Encoding and hashing tens of MiB would stall the pod's event loop.
        body, digest = await asyncio.to_thread(_body_and_digest, state)
        # A fresh id per attempt: chunks of an interrupted save are never mistaken for these.
        id_ = os.urandom(8).hex()
        view = memoryview(body)
        chunks = max(1, -(-len(body) // limit))
        for index in range(chunks):
            chunk = bytes(view[index * limit : (index + 1) * limit])
            await self._kv.put(chunk_key(key, gen, id_, index), chunk)
        return _Chunked(gen, id_, chunks, len(body), digest).head()

    async def _latest_gen(self, key: str) -> int:
        """The generation of `key`'s latest head (0: none, or an old head without one). Read
        before every save rather than remembered: the replica may have run on another pod."""
        value = await self._kv.get(key)
        if not value:
            return 0
        try:
            return _gen(_head(value))
        except SnapshotUnreadable:
            return 0

    async def _collect(self, key: str, gen: int) -> None:
        """Purge the chunks of generation `gen` of `key`; a failure only leaves garbage."""
        if gen < 1:
            return
        try:
            await self._kv.purge_keys(f"{key}.{gen}.>")
        except Exception as exc:  # garbage, not loss: the next save's purge may work
            log.warning("old snapshot chunks not purged", key=key, gen=gen, error=str(exc))

    async def _state(self, key: str, value: bytes) -> dict[str, bytes]:
        """The state a head (of `key`) stands for, read whole or not at all."""
        doc = _head(value)
        if doc.get("v") == FORMAT_VERSION:
            return decode(value)
        if doc.get("v") != CHUNKED_VERSION:
            raise SnapshotUnreadable(f"unknown snapshot format {doc.get('v')!r}")
        head = _Chunked.of(doc)
        parts: list[bytes] = []
        for index in range(head.chunks):
            name = chunk_key(key, head.gen, head.id, index)
            chunk = await self._kv.get(name)
            if chunk is None:
                raise SnapshotUnreadable(f"snapshot chunk {name} is missing")
            parts.append(chunk)
        body = b"".join(parts)
        del parts
        if len(body) != head.size:
            raise SnapshotUnreadable(
                f"snapshot body is {len(body)} bytes, its head says {head.size}"
            )
        return await asyncio.to_thread(_checked_body, body, head.sha256)

    async def load(self, ref: SnapshotRef) -> tuple[dict[str, bytes], SnapshotRef] | None:
        """The newest state under `ref.key` and the reference it was read at; None if none."""
        if ref.bucket != self.bucket:
            raise ValueError(f"snapshot {ref} is not in bucket {self.bucket}")
        entry = await self._kv.entry(ref.key)
        if entry is None or not entry.revision:
            return None
        state = await self._state(ref.key, entry.value)
        return state, SnapshotRef(self.bucket, ref.key, entry.revision)

    async def load_before(
        self, key: str, before: datetime
    ) -> tuple[dict[str, bytes], SnapshotRef] | None:
        """The newest state saved under `key` before `before`, among the HISTORY revisions the
        bucket keeps; None when none of them is that old."""
        newest: tuple[int, bytes] | None = None
        for e in await self._kv.history(key):
            if e.deleted or not e.value or not e.revision:
                continue  # a delete or purge marker
            if not isinstance(e.created, datetime) or e.created > before:
                continue
            if newest is None or e.revision > newest[0]:
                newest = (e.revision, e.value)
        if newest is None:
            return None
        state = await self._state(key, newest[1])
        return state, SnapshotRef(self.bucket, key, newest[0])

    async def load_exact(self, ref: SnapshotRef) -> dict[str, bytes] | None:
        """The state saved at exactly `ref` (a healing rewind); None when that revision is no
        longer kept (the bucket keeps HISTORY revisions per key)."""
        if ref.bucket != self.bucket:
            raise ValueError(f"snapshot {ref} is not in bucket {self.bucket}")
        entry = await self._kv.entry(ref.key, revision=ref.revision)
        if entry is None or entry.key != ref.key:
            return None
        return await self._state(ref.key, entry.value)


async def saved_state(log: EventLog, key: str) -> tuple[dict[str, bytes], SnapshotRef] | None:
    """The newest state saved under `key` in Swarm's snapshots bucket, read as a pod reads it
    (a state saved in chunks too); None when none was saved, or there is no bucket."""
    try:
        store = await SnapshotStore.open(log)
        return await store.load(SnapshotRef(names.SNAPSHOTS_BUCKET, key, 0))
    except NotFound:
        return None


def _body_and_digest(state: Mapping[str, bytes]) -> tuple[bytes, str]:
    body = encode_body(state)
    return body, hashlib.sha256(body).hexdigest()


def _checked_body(body: bytes, sha256: str) -> dict[str, bytes]:
    if hashlib.sha256(body).hexdigest() != sha256:
        raise SnapshotUnreadable("snapshot body does not match its sha256")
    return decode_body(body)
