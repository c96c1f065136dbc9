"""The faust table class stream apps use: changelog writes coalesced per batch, exactly-once.

faust's own `Table` sends one changelog message per assignment, from inside `__setitem__`,
through the producer buffer. Here an assignment only marks the key dirty (with the stream
sequence of the event that wrote it and the key's value before the batch); the app writes each
dirty key once per batch, then the processor's position (see `_app.py`). Every key remembers,
per processor, the last sequence applied to it: recovery uses it to roll back keys of a commit
whose position never landed, and a write from an event the key has already seen is ignored.

Writes also go to an undo journal while a handler runs, so a handler that raises leaves the
tables as they were before that event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from faust.tables.table import Table

__all__ = ["ChangelogTable", "Cursor", "decode_key", "encode_key"]

_MISSING: Any = object()


@dataclass(slots=True)
class Cursor:
    """The event being processed, shared by an app's tables (processing is serialized)."""

    processor: str | None = None
    seq: int = 0
    timestamp: float = 0.0


def encode_key(key: Any) -> bytes:
    return json.dumps(key, separators=(",", ":"), sort_keys=True).encode()


def _tuples(value: Any) -> Any:
    # JSON turns the (key, (start, end)) keys of windowed tables into lists; tables need them
    # hashable again.
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def decode_key(raw: bytes) -> Any:
    return _tuples(json.loads(raw))


class ChangelogTable(Table[Any, Any]):
    """A faust `Table` whose changelog is written by its app, once per key and batch."""

    def __post_init__(self) -> None:
        self.cursor = Cursor()
        #: key -> {processor: last sequence applied to the key}, as committed.
        self.applied: dict[Any, dict[str, int]] = {}
        #: key -> (processor, sequence) of the last uncommitted write, and the key's value
        #: before the first uncommitted write (written along, so recovery can roll back).
        self.dirty: dict[Any, tuple[str, int, Any]] = {}
        self._journal: dict[Any, tuple[Any, Any]] | None = None

    # -- writes ----------------------------------------------------------------------------------

    def _writer(self, key: Any) -> tuple[str, int] | None:
        """(processor, sequence) of the running event, or None when `key` has seen it."""
        cursor = self.cursor
        processor = cursor.processor
        if processor is None:
            raise RuntimeError(f"table {self.name!r} changes only inside a processor's handler")
        applied = self.applied.get(key)
        if applied is not None and applied.get(processor, 0) >= cursor.seq:
            return None
        return processor, cursor.seq

    def _remember(self, key: Any) -> None:
        journal = self._journal
        if journal is not None and key not in journal:
            journal[key] = (self.data.get(key, _MISSING), self.dirty.get(key, _MISSING))

    def _mark(self, key: Any, writer: tuple[str, int]) -> None:
        old = self.dirty.get(key)
        before = old[2] if old is not None else self.data.get(key, _MISSING)
        self.dirty[key] = (writer[0], writer[1], before)

    def __setitem__(self, key: Any, value: Any) -> None:
        writer = self._writer(key)
        if writer is None:
            return
        self._remember(key)
        self._mark(key, writer)
        self.data[key] = value
        if self.window is not None:
            self._maybe_set_key_ttl(key, 0)

    def __delitem__(self, key: Any) -> None:
        writer = self._writer(key)
        if writer is None:
            return
        self._remember(key)
        self._mark(key, writer)
        del self.data[key]
        if self.window is not None:
            self._maybe_del_key_ttl(key, 0)

    def on_key_get(self, key: Any) -> None:
        # faust reports every read to its sensors; nothing here reads those numbers.
        return None

    async def _del_old_keys(self) -> None:
        await super()._del_old_keys()
        # faust drops expired windows from the data only; their applied sequences go too.
        data, dirty = self.data, self.dirty
        for key in [k for k in self.applied if k not in data and k not in dirty]:
            del self.applied[key]

    def on_clear(self) -> None:
        for key in list(self.data):
            del self[key]

    # -- the handler's undo journal --------------------------------------------------------------

    def begin(self) -> None:
        self._journal = {}

    def end(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        """Put back every key the running handler changed, as it was before."""
        journal, self._journal = self._journal or {}, None
        for key, (value, dirty) in journal.items():
            if value is _MISSING:
                self.data.pop(key, None)
            else:
                self.data[key] = value
            if dirty is _MISSING:
                self.dirty.pop(key, None)
            else:
                self.dirty[key] = dirty

    # -- commit and recovery ---------------------------------------------------------------------

    def pending(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) changelog messages for every dirty key; marks them committed.

        Each message holds the key's value and applied sequences before and after the commit:
        if the commit's position never lands, recovery rolls the key back (`restore`).
        """
        data = self.data
        for key, (processor, seq, before) in self.dirty.items():
            applied_before = self.applied.get(key, {})
            applied = {**applied_before, processor: seq}
            self.applied[key] = applied
            body = _state(data.get(key, _MISSING), applied)
            body["before"] = _state(before, applied_before)
            yield encode_key(key), json.dumps(body, separators=(",", ":")).encode()
        self.dirty.clear()

    def restore(self, raw_key: bytes, raw_value: bytes, positions: dict[str, int]) -> bool:
        """Apply one changelog message read during recovery (no changelog write).

        A key written by a commit whose processor position is not on the log (the app died
        between the two) is restored to its value before that commit, so the tables are
        exactly at the positions and replayed events see what they saw the first time.
        Returns whether the key was rolled back.
        """
        key = decode_key(raw_key)
        body = json.loads(raw_value)
        rolled_back = any(
            int(seq) > positions.get(processor, 0)
            for processor, seq in body.get("applied", {}).items()
        )
        if rolled_back:
            body = body.get("before", {})
        applied = {str(k): int(v) for k, v in body.get("applied", {}).items()}
        if applied:
            self.applied[key] = applied
        else:
            self.applied.pop(key, None)
        if "value" not in body:
            self.data.pop(key, None)
            return rolled_back
        self.data[key] = body["value"]
        if self.window is not None:
            self._maybe_set_key_ttl(key, 0)
        return rolled_back


def _state(value: Any, applied: dict[str, int]) -> dict[str, Any]:
    if value is _MISSING:
        return {"applied": applied, "deleted": True}
    return {"applied": applied, "value": value}
