"""The services a sandboxed agent can ask its host for, and an in-memory host.

The sandbox checks every argument against the ABI and the call budget before a `HostAPI` method
is called, so implementations receive well-formed, size-bounded values. The methods are
synchronous because they run inside a wasm call on the sandbox's thread; an asyncio pod bridges
with `asyncio.run_coroutine_threadsafe(...).result(timeout)` and keeps that timeout below the
agent's deadline (the epoch deadline cannot interrupt a host call, only the wasm after it).
"""

from __future__ import annotations

import hashlib
import math
import os
import random as _random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from runtime.abi import Destination, LogLevel
from runtime.kvstate import KvState, StateCaps

if TYPE_CHECKING:
    from runtime.net import HttpFetcher, HttpRequest, HttpResponse

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None


class NotAvailable(Exception):
    """The host does not offer this service (the guest sees `ErrorCode.UNAVAILABLE`)."""


class InvalidArgument(Exception):
    """The host judged a well-formed argument unusable, e.g. an unknown agent or a vector of
    the wrong dimension (the guest sees `ErrorCode.INVALID`)."""


class Refused(Exception):
    """The host's policy forbids what was asked, e.g. a request to a private address (the guest
    sees `ErrorCode.DENIED`)."""


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: str
    score: float
    data: JSON


class HostAPI(Protocol):
    """What the pod implements for each agent instance.

    Raise `NotAvailable`, `InvalidArgument`, `Refused` or `runtime.kvstate.StateFull` for
    outcomes the guest should handle; any other exception aborts the guest's call with
    `HostCallFailed` and the instance is replaced.
    """

    def kv_get(self, key: str) -> bytes | None: ...

    def kv_put(self, key: str, value: bytes) -> None:
        """Store the value; raise `StateFull` when the state's caps do not allow it (LIMIT)."""
        ...

    def kv_delete(self, key: str) -> bool:
        """Remove the key; False if it had no value (NOT_FOUND)."""
        ...

    def send(self, to: Destination, message: bytes) -> None: ...

    def emit(self, type: str, data: bytes) -> None: ...

    def log(self, level: LogLevel, message: str) -> None: ...

    def now_ms(self) -> int: ...

    def random(self, size: int) -> bytes: ...

    def vector_store(self, id: str, vector: Sequence[float], data: JSON) -> None: ...

    def vector_search(self, vector: Sequence[float], k: int) -> list[VectorHit]: ...

    def vector_store_text(self, id: str, text: str, data: JSON) -> None:
        """`vector_store` of the host's embedding of `text` (ABI.md: the "text" variant)."""
        ...

    def vector_search_text(self, text: str, k: int) -> list[VectorHit]:
        """`vector_search` by the host's embedding of `text`."""
        ...

    def http_request(self, request: HttpRequest) -> HttpResponse:
        """Make an outbound HTTP request (the `net` capability, runtime/net.py); return within
        `request.timeout_s`. Network failures are answers (`HttpResponse.error`); a target the
        pod's policy forbids raises `Refused`."""
        ...


@dataclass(frozen=True, slots=True)
class SentMessage:
    to: Destination
    message: bytes


@dataclass(frozen=True, slots=True)
class EmittedEvent:
    type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class LogLine:
    level: LogLevel
    message: str


class MemoryHost:
    """A `HostAPI` that keeps everything in memory: for tests and for embedding the sandbox.

    Sends, events and log lines are collected in lists; kv state is a `KvState` under
    `state_caps` (unbounded up to the spec's maxima by default). Vector memory is a
    brute-force cosine search over everything stored (fine for thousands of vectors, which is
    what tests and small embeddings need); all vectors must have the dimension of the first one.
    `seed` makes `random` reproducible and `clock` (milliseconds) makes `now_ms` controllable.

    Text for vector memory is embedded by `embed` (e.g. `toy_embedding`, a test double); without
    one the text variants of `vector_store` / `vector_search` are `NotAvailable`. `http` (an
    `HttpFetcher`) makes the `net` capability's requests; without one they are `NotAvailable`.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        clock: Callable[[], int] | None = None,
        embed: Callable[[str], Sequence[float]] | None = None,
        http: HttpFetcher | None = None,
        state_caps: StateCaps | None = None,
    ) -> None:
        self.kv = KvState(caps=state_caps)
        self.sent: list[SentMessage] = []
        self.events: list[EmittedEvent] = []
        self.logs: list[LogLine] = []
        self.vectors: dict[str, tuple[tuple[float, ...], JSON]] = {}
        self._rng = _random.Random(seed) if seed is not None else None
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._embed = embed
        self._http = http
        # One host may serve agents running on several threads.
        self._lock = threading.Lock()

    def kv_get(self, key: str) -> bytes | None:
        with self._lock:
            return self.kv.get(key)

    def kv_put(self, key: str, value: bytes) -> None:
        with self._lock:
            self.kv.put(key, value)

    def kv_delete(self, key: str) -> bool:
        with self._lock:
            return self.kv.pop(key, None) is not None

    def send(self, to: Destination, message: bytes) -> None:
        with self._lock:
            self.sent.append(SentMessage(to, message))

    def emit(self, type: str, data: bytes) -> None:
        with self._lock:
            self.events.append(EmittedEvent(type, data))

    def log(self, level: LogLevel, message: str) -> None:
        with self._lock:
            self.logs.append(LogLine(level, message))

    def now_ms(self) -> int:
        return self._clock()

    def random(self, size: int) -> bytes:
        if self._rng is None:
            return os.urandom(size)
        with self._lock:
            return self._rng.randbytes(size)

    def vector_store(self, id: str, vector: Sequence[float], data: JSON) -> None:
        with self._lock:
            dims = self._dims()
            if dims is not None and len(vector) != dims:
                raise InvalidArgument(f"vector has {len(vector)} dimensions, memory holds {dims}")
            self.vectors[id] = (tuple(vector), data)

    def vector_search(self, vector: Sequence[float], k: int) -> list[VectorHit]:
        with self._lock:
            dims = self._dims()
            if dims is not None and len(vector) != dims:
                raise InvalidArgument(f"query has {len(vector)} dimensions, memory holds {dims}")
            hits = [
                VectorHit(id, _cosine(vector, stored), data)
                for id, (stored, data) in self.vectors.items()
            ]
        hits.sort(key=lambda hit: (-hit.score, hit.id))
        return hits[:k]

    def vector_store_text(self, id: str, text: str, data: JSON) -> None:
        self.vector_store(id, self._embedded(text), data)

    def vector_search_text(self, text: str, k: int) -> list[VectorHit]:
        return self.vector_search(self._embedded(text), k)

    def http_request(self, request: HttpRequest) -> HttpResponse:
        if self._http is None:
            raise NotAvailable("this host makes no network requests")
        return self._http.fetch(request)

    def _embedded(self, text: str) -> Sequence[float]:
        if self._embed is None:
            raise NotAvailable("this host has no text embedder; pass a vector")
        return self._embed(text)

    def _dims(self) -> int | None:
        for stored, _ in self.vectors.values():
            return len(stored)
        return None


#: Dimensions of `toy_embedding`.
TOY_DIMENSIONS = 64


def toy_embedding(text: str, dimensions: int = TOY_DIMENSIONS) -> list[float]:
    """A deterministic stand-in for a text embedding model, for tests only: NOT semantic.

    Each lowercased whitespace-separated word is hashed (SHA-256) onto one coordinate with a
    sign, and the sum is normalised: texts sharing words score higher than texts that do not,
    identical texts score 1, and nothing else about meaning is captured. Use it as
    `MemoryHost(embed=toy_embedding)`; real pods embed with all-MiniLM-L6-v2.
    """
    vector = [0.0] * dimensions
    for word in text.lower().split():
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    # A zero vector points nowhere: it is similar to nothing rather than a division error.
    if norm == 0.0:
        return 0.0
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norm
