"""Agent kv-state snapshots in a JetStream KV bucket, one key per replica id.

A reference is `<bucket>/<key>@<revision>` and is what the pod reports to the Hive (on
`starting`: the one it resumed from; on `stopped`/`crashed`: the one it saved last).

Restoring reads the **latest** revision of the referenced key, not the exact one. Interval
snapshots are not reported (they would flood the audit log), so after the loss of a pod the log
only knows an older reference; only the replica running under that key writes it, so its latest
revision is its newest state. When the key has no value at all (purged), the replica starts empty.

Format: JSON `{"v": 1, "kv": {key: base64 value}}`; one snapshot is one KV message, so a state
larger than the server's max payload (1 MiB by default) cannot be saved (the save fails loudly).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from schemas import names

FORMAT_VERSION = 1
#: Revisions kept per key: an exact older reference stays readable for a while (debugging).
HISTORY = 5


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


def encode(state: dict[str, bytes]) -> bytes:
    kv = {k: base64.b64encode(v).decode() for k, v in state.items()}
    return json.dumps({"v": FORMAT_VERSION, "kv": kv}, sort_keys=True).encode()


def decode(data: bytes) -> dict[str, bytes]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        raise ValueError("not a version 1 snapshot")
    return {str(k): base64.b64decode(v) for k, v in doc["kv"].items()}


class SnapshotStore:
    def __init__(self, kv: KeyValue, bucket: str) -> None:
        self._kv = kv
        self.bucket = bucket

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str = names.SNAPSHOTS_BUCKET
    ) -> SnapshotStore:
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            # Creating an existing bucket with the same config is accepted, so racing pods agree.
            kv = await js.create_key_value(bucket=bucket, history=HISTORY)
        return cls(kv, bucket)

    async def save(self, key: str, state: dict[str, bytes]) -> SnapshotRef:
        revision = await self._kv.put(key, encode(state))
        return SnapshotRef(self.bucket, key, int(revision))

    async def load(self, ref: SnapshotRef) -> tuple[dict[str, bytes], SnapshotRef] | None:
        """The newest state under `ref.key` and the reference it was read at; None if none."""
        if ref.bucket != self.bucket:
            raise ValueError(f"snapshot {ref} is not in bucket {self.bucket}")
        try:
            entry = await self._kv.get(ref.key)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        return decode(entry.value), SnapshotRef(self.bucket, ref.key, int(entry.revision))

    async def load_before(
        self, key: str, before: datetime
    ) -> tuple[dict[str, bytes], SnapshotRef] | None:
        """The newest state saved under `key` before `before`, among the HISTORY revisions the
        bucket keeps; None when none of them is that old."""
        try:
            entries = await self._kv.history(key)
        except (KeyNotFoundError, NotFoundError, NoKeysError):
            return None
        newest: tuple[int, bytes] | None = None
        for e in entries:
            if e.operation is not None or not e.value or e.revision is None:
                continue  # a delete or purge marker
            if not isinstance(e.created, datetime) or e.created > before:
                continue
            if newest is None or e.revision > newest[0]:
                newest = (e.revision, e.value)
        if newest is None:
            return None
        return decode(newest[1]), SnapshotRef(self.bucket, key, newest[0])

    async def load_exact(self, ref: SnapshotRef) -> dict[str, bytes] | None:
        """The state saved at exactly `ref` (a healing rewind); None when that revision is no
        longer kept (the bucket keeps HISTORY revisions per key)."""
        if ref.bucket != self.bucket:
            raise ValueError(f"snapshot {ref} is not in bucket {self.bucket}")
        try:
            entry = await self._kv.get(ref.key, revision=ref.revision)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None or entry.key != ref.key:
            return None
        return decode(entry.value)
