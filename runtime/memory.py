"""Agent vector memory in PostgreSQL + pgvector (table `agent_memory`, migration 0002).

Host functions run on the pod's executor threads inside a wasm call, so this uses psycopg's
synchronous API with a small thread-safe pool: up to `pool_size` autocommit connections, opened
when first needed, each with pgvector's types registered (the extension exists once migration
0001 ran). Every statement filters on the namespace, the agent id: replicas of one agent share
their memory and no agent ever sees another's.

Failures map onto the host API: a vector of the wrong dimension is `InvalidArgument` (the guest
sees `INVALID`); an unreachable, busy or unmigrated database is `NotAvailable` (`UNAVAILABLE`).
Each call is one autocommit statement, so a failed call has had no effect (ABI.md).
"""

from __future__ import annotations

import math
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import structlog
from pgvector import Vector
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from runtime.embeddings import Embedder
from runtime.host import JSON, InvalidArgument, NotAvailable, VectorHit
from swarm.kernel.database import psycopg_url

log = structlog.get_logger(__name__)

#: Dimension of every stored vector: all-MiniLM-L6-v2's embedding size (migration 0002).
DIMENSIONS = 384

_STORE = """
INSERT INTO agent_memory (agent_namespace, key, embedding, data)
VALUES (%s, %s, %s, %s)
ON CONFLICT (agent_namespace, key)
DO UPDATE SET embedding = EXCLUDED.embedding, data = EXCLUDED.data, created_at = now()
"""

_SEARCH = """
SELECT key, embedding <=> %s AS distance, data
FROM agent_memory
WHERE agent_namespace = %s
ORDER BY distance
LIMIT %s
"""


class VectorMemory:
    """Namespaced vector store and cosine search; safe to share between threads."""

    def __init__(
        self,
        database_url: str,
        *,
        pool_size: int = 4,
        dimensions: int = DIMENSIONS,
        connect_timeout_s: int = 2,
        statement_timeout_ms: int = 2000,
        acquire_timeout_s: float = 1.0,
        embedder: Embedder | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.dimensions = dimensions
        self.embedder = embedder
        self._url = psycopg_url(database_url)
        self._size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms
        self._acquire_timeout_s = acquire_timeout_s
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._opened = 0
        self._closed = False
        self._lock = threading.Lock()

    # -- the API -----------------------------------------------------------------------------------

    def store(self, namespace: str, key: str, vector: Sequence[float], data: JSON) -> None:
        """Store or replace `vector` (with `data`) under `key` in `namespace`."""
        embedding = self._checked(vector, "vector")
        with self._connection() as conn:
            conn.execute(_STORE, (namespace, key, embedding, Jsonb(data)))

    def search(self, namespace: str, vector: Sequence[float], k: int) -> list[VectorHit]:
        """The `k` vectors of `namespace` nearest to `vector`, best first; score = cosine
        similarity (1 - cosine distance; 0 for a zero vector, which points nowhere)."""
        if k < 1:
            raise InvalidArgument(f"k must be at least 1, not {k}")
        embedding = self._checked(vector, "query")
        with self._connection() as conn:
            rows = conn.execute(_SEARCH, (embedding, namespace, k)).fetchall()
        hits = []
        for key, distance, data in rows:
            score = 0.0 if distance is None or math.isnan(distance) else 1.0 - float(distance)
            hits.append(VectorHit(key, score, data))
        return hits

    def store_text(self, namespace: str, key: str, text: str, data: JSON) -> None:
        self.store(namespace, key, self._embed(text), data)

    def search_text(self, namespace: str, text: str, k: int) -> list[VectorHit]:
        return self.search(namespace, self._embed(text), k)

    def close(self) -> None:
        """Close idle connections; connections in use are closed when given back."""
        with self._lock:
            self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            conn.close()

    def __enter__(self) -> VectorMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------

    def _embed(self, text: str) -> list[float]:
        if self.embedder is None:
            raise NotAvailable("this host has no text embedder; pass a vector")
        return self.embedder.embed([text])[0]

    def _checked(self, vector: Sequence[float], what: str) -> Vector:
        if len(vector) != self.dimensions:
            raise InvalidArgument(
                f"{what} has {len(vector)} dimensions; agent memory holds "
                f"{self.dimensions}-dimensional vectors (all-MiniLM-L6-v2)"
            )
        if not all(math.isfinite(x) for x in vector):
            raise InvalidArgument(f"{what} has a number that is not finite")
        return Vector(list(vector))

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._acquire()
        healthy = True
        try:
            yield conn
        except psycopg.Error as exc:
            healthy = not conn.closed and not isinstance(exc, psycopg.OperationalError)
            log.warning("vector memory query failed", error=str(exc).strip())
            raise NotAvailable(f"vector memory failed: {str(exc).strip()}") from None
        finally:
            self._release(conn, healthy)

    def _acquire(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._closed:
                raise NotAvailable("vector memory is closed")
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            opening = self._opened < self._size
            if opening:
                self._opened += 1
        if opening:
            try:
                return self._open()
            except BaseException:
                with self._lock:
                    self._opened -= 1
                raise
        try:
            return self._idle.get(timeout=self._acquire_timeout_s)
        except queue.Empty:
            raise NotAvailable("vector memory is busy") from None

    def _release(self, conn: psycopg.Connection[Any], healthy: bool) -> None:
        with self._lock:
            keep = healthy and not self._closed and not conn.closed
            if not keep:
                self._opened -= 1
        if keep:
            self._idle.put(conn)
        else:
            conn.close()

    def _open(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._connect_timeout_s,
                options=f"-c statement_timeout={self._statement_timeout_ms}",
            )
        except psycopg.Error as exc:
            log.warning("vector memory database unreachable", error=str(exc).strip())
            raise NotAvailable(f"vector memory database unreachable: {exc}") from None
        try:
            register_vector(conn)
            # pgvector >= 0.8: keep scanning the HNSW graph until k rows of the namespace are
            # found (a plain HNSW scan returns at most ef_search rows before the filter).
            conn.execute("SET hnsw.ef_search = 100")
            if _iterative_scans(conn):
                conn.execute("SET hnsw.iterative_scan = relaxed_order")
        except psycopg.Error as exc:
            conn.close()
            log.warning("vector memory database not ready", error=str(exc).strip())
            raise NotAvailable(
                f"vector memory database not ready (pgvector, migrations?): {exc}"
            ) from None
        return conn


def _iterative_scans(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        return False
    parts = tuple(int(p) for p in re.findall(r"\d+", str(row[0]))[:2])
    return parts >= (0, 8)


class AgentMemory:
    """The vector memory of one agent: `VectorMemory` bound to a namespace, shaped as the
    `vector_store` / `vector_search` methods of a `HostAPI`."""

    def __init__(self, memory: VectorMemory, namespace: str) -> None:
        self.memory = memory
        self.namespace = namespace

    def vector_store(self, id: str, vector: Sequence[float], data: JSON) -> None:
        self.memory.store(self.namespace, id, vector, data)

    def vector_search(self, vector: Sequence[float], k: int) -> list[VectorHit]:
        return self.memory.search(self.namespace, vector, k)


__all__ = ["DIMENSIONS", "AgentMemory", "VectorMemory"]
