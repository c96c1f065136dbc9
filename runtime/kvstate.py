"""An agent replica's key-value state, with its caps on total size and number of keys.

The state lives in the pod's memory, outside the agent's linear memory, so `memory_mb` does not
bound it; these caps do (the spec's `limits.state_bytes` / `limits.state_keys`, bounded by the
pod's `SWARM_POD_MAX_STATE_*`). They also keep every state one that a snapshot can hold.

Size is the sum over entries of the key's UTF-8 length plus the value's length, kept up to date
on every change so a write is checked in constant time.

Guarantees:
- `put` refuses (raises `StateFull`, which the guest sees as `ErrorCode.LIMIT`) a write that would
  leave the state over a cap *and* grow it; nothing is changed then. A write that does not grow
  the measure in question (overwriting with a value no larger, deleting) is always allowed, so a
  state that is over its caps (restored under caps lowered since) can still shrink.
- Plain item assignment (`state[key] = value`) is unchecked: it is how a restored snapshot or a
  test sets state, and it keeps the counts right.

Not thread-safe: the host that owns it serializes access (one lock per host).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass

from schemas.specs import MAX_STATE_BYTES, MAX_STATE_KEYS


class StateFull(Exception):
    """A kv write would take the state past a cap; the guest sees `ErrorCode.LIMIT`."""


@dataclass(frozen=True, slots=True)
class StateCaps:
    """The most a replica's state may hold: bytes (keys plus values) and keys."""

    max_bytes: int = MAX_STATE_BYTES
    max_keys: int = MAX_STATE_KEYS

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_keys < 0:
            raise ValueError("StateCaps must be >= 0")

    def __str__(self) -> str:
        return f"{self.max_bytes} bytes / {self.max_keys} keys"


def entry_size(key: str, value: bytes) -> int:
    return len(key.encode()) + len(value)


class KvState(MutableMapping[str, bytes]):
    """A `str -> bytes` mapping that knows its size and refuses `put`s beyond its caps."""

    def __init__(
        self, entries: Mapping[str, bytes] | None = None, caps: StateCaps | None = None
    ) -> None:
        self.caps = caps or StateCaps()
        self._data: dict[str, bytes] = {}
        self._bytes = 0
        if entries:
            for key, value in entries.items():
                self[key] = value

    @property
    def size(self) -> int:
        """Bytes held: keys (UTF-8) plus values."""
        return self._bytes

    @property
    def over_caps(self) -> bool:
        return self._bytes > self.caps.max_bytes or len(self._data) > self.caps.max_keys

    def put(self, key: str, value: bytes) -> None:
        """Store `value` under `key`, or raise `StateFull` (and change nothing)."""
        old = self._data.get(key)
        keys = len(self._data) + (old is None)
        size = self._bytes + entry_size(key, value)
        if old is not None:
            size -= entry_size(key, old)
        if keys > self.caps.max_keys and keys > len(self._data):
            raise StateFull(f"state would hold {keys} keys, the cap is {self.caps.max_keys}")
        if size > self.caps.max_bytes and size > self._bytes:
            raise StateFull(f"state would hold {size} bytes, the cap is {self.caps.max_bytes}")
        self[key] = value

    def copy(self) -> dict[str, bytes]:
        """A shallow copy (values are immutable bytes), e.g. for a snapshot."""
        return self._data.copy()

    def __getitem__(self, key: str) -> bytes:
        return self._data[key]

    def __setitem__(self, key: str, value: bytes) -> None:
        old = self._data.get(key)
        if old is not None:
            self._bytes -= entry_size(key, old)
        self._data[key] = value
        self._bytes += entry_size(key, value)

    def __delitem__(self, key: str) -> None:
        value = self._data.pop(key)
        self._bytes -= entry_size(key, value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"KvState({len(self._data)} keys, {self._bytes} bytes, caps {self.caps})"
