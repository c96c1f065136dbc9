"""The window of SWARM_EVENTS a Hive replica has read but not folded yet.

Every replica reads the log itself (`feeder.py`); Raft only agrees on which positions to fold
and what their bytes must hash to (`raft.py`). This is where the two meet: the feeder puts the
bytes it reads here, the leader's projector takes contiguous runs from here to propose, and the
fold thread takes each event's bytes from here, checks them against the agreed digest, and drops
them once folded. Thread-safe (the feeder and projector run on the event loop, the fold thread
on its own); bounded, so a replica whose folding lags does not read the whole log into memory.
"""

from __future__ import annotations

import hashlib
import threading

#: Bytes of an event's sha256 that Raft carries per event: enough to tell the bytes apart.
DIGEST_BYTES = 8


def digest_of(raw: bytes) -> bytes:
    """The per-event digest Raft agrees on."""
    return hashlib.sha256(raw).digest()[:DIGEST_BYTES]


class LogCache:
    """Events by stream sequence, from the oldest not yet folded to the furthest read."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._events: dict[int, bytes] = {}
        #: Everything below this was folded (and dropped, or never kept).
        self._low = 1
        self._changed = threading.Condition()
        #: The sequence the fold thread waits for, when the feeder should (re)read from there.
        self.wanted: int | None = None

    def __len__(self) -> int:
        return len(self._events)

    @property
    def full(self) -> bool:
        return len(self._events) >= self.limit

    @property
    def _roomy(self) -> bool:
        # The feeder, once the cache was full, waits until half of it is free: woken after every
        # folded chunk instead (16 events), its thread handoffs were ~7% of a replica's CPU.
        return len(self._events) <= self.limit // 2

    def put(self, items: list[tuple[int, bytes]]) -> None:
        with self._changed:
            for seq, raw in items:
                if seq >= self._low:
                    self._events[seq] = raw
            self._changed.notify_all()

    def run(self, start: int, count: int) -> list[tuple[int, bytes]]:
        """Up to `count` contiguous events from `start`, as many as are here now."""
        with self._changed:
            out: list[tuple[int, bytes]] = []
            seq = start
            while len(out) < count and seq in self._events:
                out.append((seq, self._events[seq]))
                seq += 1
            return out

    def take(self, seq: int, timeout: float) -> bytes | None:
        """The bytes at `seq`, waiting up to `timeout` for the feeder; None if they did not come
        (and `wanted` asks the feeder to read from there)."""
        with self._changed:
            if seq not in self._events:
                self.wanted = seq
                self._changed.wait_for(lambda: seq in self._events, timeout)
            raw = self._events.get(seq)
            if raw is not None and self.wanted == seq:
                self.wanted = None
            return raw

    def drop_through(self, seq: int) -> None:
        """Forget everything at or below `seq` (folded)."""
        with self._changed:
            if seq - self._low > len(self._events):
                for old in [s for s in self._events if s <= seq]:
                    del self._events[old]
            else:
                for old in range(self._low, seq + 1):
                    self._events.pop(old, None)
            self._low = max(self._low, seq + 1)
            if self._roomy:
                self._changed.notify_all()

    def wait_for_room(self, timeout: float) -> bool:
        """Wait until at most half of the cache is taken; False if `timeout` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._roomy, timeout)


__all__ = ["DIGEST_BYTES", "LogCache", "digest_of"]
