"""The host functions of runtime/ABI.md, called from a guest with chosen (and bad) arguments."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence

import pytest

from runtime.abi import Destination, ErrorCode, LogLevel
from runtime.errors import AgentTrap, HostCallFailed
from runtime.host import (
    JSON,
    TOY_DIMENSIONS,
    EmittedEvent,
    LogLine,
    MemoryHost,
    NotAvailable,
    SentMessage,
    VectorHit,
    toy_embedding,
)
from runtime.limits import CallBudget, SandboxLimits
from runtime.sandbox import AgentSandbox
from tests.helpers import agents
from tests.helpers.agents import payload_at, proxy, proxy_message, results
from tests.helpers.sandboxes import NOW_MS, MakeSandbox

OK, NOT_FOUND, LIMIT, INVALID, UNAVAILABLE = (
    ErrorCode.OK,
    ErrorCode.NOT_FOUND,
    ErrorCode.LIMIT,
    ErrorCode.INVALID,
    ErrorCode.UNAVAILABLE,
)


def call_two(
    sandbox: AgentSandbox, name: str, first: bytes, second: bytes, *, repeat: int = 1
) -> list[int]:
    """Call a (ptr, len, ptr, len) host function with `first` and `second` as the two buffers."""
    base = payload_at(name)
    message = proxy_message(
        base, len(first), base + len(first), len(second), payload=first + second, repeat=repeat
    )
    return results(sandbox.handle(message).replies[-1])


def with_budget(**budget: int) -> SandboxLimits:
    return SandboxLimits(budget=CallBudget(**budget))


# --- reply ---------------------------------------------------------------------------------------


def test_replies_come_back_in_order(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("reply"))
    base = payload_at("reply")

    result = sandbox.handle(proxy_message(base, 3, payload=b"abc", repeat=3))

    assert result.replies == (b"abc", b"abc", b"abc")


def test_too_many_replies_trap(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("reply"), with_budget(max_replies=2))

    with pytest.raises(AgentTrap, match=r"swarm\.reply: more than 2 replies"):
        sandbox.handle(proxy_message(payload_at("reply"), 1, payload=b"x", repeat=3))


def test_replies_over_the_output_budget_trap(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("reply"), with_budget(max_output_bytes=10))

    with pytest.raises(AgentTrap, match="output budget of 10"):
        sandbox.handle(proxy_message(payload_at("reply"), 4, payload=b"abcd", repeat=3))


# --- guest pointers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ptr", "length"),
    [
        (0xFFFF_0000, 16),  # far past the end of memory
        (65536 - 4, 8),  # straddles the end
        (0, -1),  # a negative length is 4 GiB, not a Python slice
        (-1, 1),
    ],
)
def test_out_of_bounds_pointer_is_a_contained_trap(
    make_sandbox: MakeSandbox, ptr: int, length: int
) -> None:
    sandbox = make_sandbox(proxy("reply"))

    with pytest.raises(AgentTrap, match=r"swarm\.reply: reply .* outside guest memory"):
        sandbox.handle(proxy_message(ptr, length))

    assert sandbox.broken


def test_zero_length_at_the_end_of_memory_is_fine(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("reply"))

    assert sandbox.handle(proxy_message(65536, 0)).replies == (b"",)


@pytest.mark.parametrize("name", ["send", "emit", "kv_get", "kv_put", "vector_search"])
def test_every_pointer_argument_is_checked(make_sandbox: MakeSandbox, name: str) -> None:
    sandbox = make_sandbox(proxy(name))

    with pytest.raises(AgentTrap, match="outside guest memory"):
        sandbox.handle(proxy_message(payload_at(name), 1, 0x7FFF_FFF0, 64, payload=b"x"))


# --- send and emit -------------------------------------------------------------------------------


def test_send_to_an_agent_and_a_topic(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    sandbox = make_sandbox(proxy("send"))

    assert call_two(sandbox, "send", b"agent:bob", b'{"hi":1}') == [OK]
    assert call_two(sandbox, "send", b"topic:prices", b"") == [OK]

    assert host.sent == [
        SentMessage(Destination("agent", "bob"), b'{"hi":1}'),
        SentMessage(Destination("topic", "prices"), b""),
    ]


@pytest.mark.parametrize(
    "destination", [b"bob", b"queue:bob", b"agent:", b"agent:a.b", b"topic:>", b"agent:\xff"]
)
def test_send_to_a_bad_destination_is_invalid(
    make_sandbox: MakeSandbox, host: MemoryHost, destination: bytes
) -> None:
    sandbox = make_sandbox(proxy("send"))

    assert call_two(sandbox, "send", destination, b"{}") == [INVALID]
    assert host.sent == []


def test_sends_over_the_budget_are_refused(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    sandbox = make_sandbox(proxy("send"), with_budget(max_sends=2))

    assert call_two(sandbox, "send", b"agent:bob", b"m", repeat=4) == [OK, OK, LIMIT, LIMIT]
    assert len(host.sent) == 2
    # The budget is per call.
    assert call_two(sandbox, "send", b"agent:bob", b"m") == [OK]


def test_oversized_message_is_refused(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    sandbox = make_sandbox(proxy("send"), with_budget(max_message_bytes=1000))
    to = b"agent:bob"

    # The message is any 1001 bytes of guest memory (from address 0).
    message = proxy_message(payload_at("send"), len(to), 0, 1001, payload=to)

    assert results(sandbox.handle(message).replies[-1]) == [LIMIT]
    assert host.sent == []


def test_emit_records_events(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    sandbox = make_sandbox(proxy("emit"))

    assert call_two(sandbox, "emit", b"order.placed", b'{"id":1}') == [OK]
    assert call_two(sandbox, "emit", b"order..placed", b"{}") == [INVALID]
    assert call_two(sandbox, "emit", b"", b"{}") == [INVALID]

    assert host.events == [EmittedEvent("order.placed", b'{"id":1}')]


def test_host_refusal_becomes_an_error_code(make_sandbox: MakeSandbox) -> None:
    class NoMesh(MemoryHost):
        def send(self, to: Destination, message: bytes) -> None:
            raise NotAvailable("no mesh here")

    sandbox = make_sandbox(proxy("send"), host_api=NoMesh())

    assert call_two(sandbox, "send", b"agent:bob", b"m") == [UNAVAILABLE]
    assert not sandbox.broken


def test_host_failure_is_not_blamed_on_the_agent(make_sandbox: MakeSandbox) -> None:
    class Broken(MemoryHost):
        def emit(self, type: str, data: bytes) -> None:
            raise ConnectionError("event log unreachable")

    sandbox = make_sandbox(proxy("emit"), host_api=Broken())

    with pytest.raises(HostCallFailed, match=r"swarm\.emit failed in the host: ConnectionError"):
        call_two(sandbox, "emit", b"x", b"{}")
    assert sandbox.broken


# --- log -----------------------------------------------------------------------------------------


def test_log_levels_are_clamped_and_long_lines_cut(
    make_sandbox: MakeSandbox, host: MemoryHost
) -> None:
    sandbox = make_sandbox(proxy("log"), with_budget(max_log_bytes=4))
    base = payload_at("log")

    sandbox.handle(proxy_message(2, base, 2, payload=b"ok"))
    sandbox.handle(proxy_message(99, base, 2, payload=b"hi"))
    sandbox.handle(proxy_message(-5, base, 10, payload=b"0123456789"))
    sandbox.handle(proxy_message(1, base, 2, payload=b"\xff!"))

    assert host.logs == [
        LogLine(LogLevel.WARN, "ok"),
        LogLine(LogLevel.ERROR, "hi"),
        LogLine(LogLevel.DEBUG, "0123... [6 bytes cut]"),
        LogLine(LogLevel.INFO, "\ufffd!"),
    ]


def test_logs_over_the_budget_are_dropped_and_counted(
    make_sandbox: MakeSandbox, host: MemoryHost
) -> None:
    sandbox = make_sandbox(proxy("log"), with_budget(max_logs=3))

    result = sandbox.handle(proxy_message(1, payload_at("log"), 1, payload=b"x", repeat=10))

    assert len(host.logs) == 3
    assert result.logs_dropped == 7
    assert not sandbox.broken


# --- kv ------------------------------------------------------------------------------------------


def test_kv_get_length_convention(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    host.kv["k"] = b"0123456789"
    sandbox = make_sandbox(agents.reader("kv_get"))

    def kv_get(key: bytes, cap: int) -> tuple[int, bytes]:
        status, buffer = sandbox.handle(struct.pack("<I", cap) + key).replies
        return results(status)[0], buffer

    assert kv_get(b"k", 0) == (10, b"")  # asks for the length only
    assert kv_get(b"k", 4) == (10, bytes(4))  # too small: the length, nothing written
    assert kv_get(b"k", 10) == (10, b"0123456789")
    assert kv_get(b"k", 12) == (10, b"0123456789" + bytes(2))
    assert kv_get(b"missing", 12) == (NOT_FOUND, bytes(12))
    assert kv_get(b"", 12)[0] == INVALID
    assert kv_get(b"\xff", 12)[0] == INVALID


def test_kv_put_then_get_round_trip(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    sandbox = make_sandbox(proxy("kv_put"))

    assert call_two(sandbox, "kv_put", b"greeting", b"hello") == [OK]
    assert call_two(sandbox, "kv_put", b"empty", b"") == [OK]

    assert host.kv == {"greeting": b"hello", "empty": b""}


def test_kv_ops_over_the_budget_are_refused(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("kv_put"), with_budget(max_kv_ops=3))

    assert call_two(sandbox, "kv_put", b"k", b"v", repeat=5) == [OK, OK, OK, LIMIT, LIMIT]


def test_kv_key_over_the_name_budget_is_refused(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("kv_put"))

    assert call_two(sandbox, "kv_put", b"k" * 257, b"v") == [LIMIT]


# --- now_ms and random ---------------------------------------------------------------------------


def test_now_ms_is_the_hosts_clock(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("now_ms"))

    assert results(sandbox.handle(proxy_message()).replies[-1], wide=True) == [NOW_MS]


def test_random_fills_the_buffer(make_sandbox: MakeSandbox) -> None:
    # A dedicated agent: fill 32 bytes at 64 with randomness, reply with them.
    agent = agents.agent(
        """
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (call $random (i32.const 64) (i32.const 32))
    (call $reply (i32.const 64) (i32.const 32))
    (i32.const 0))
""",
        imports=("random", "reply"),
    )
    sandbox = make_sandbox(agent)

    first, second = sandbox.handle(b"").replies[0], sandbox.handle(b"").replies[0]

    assert len(first) == 32
    assert first != second


def test_random_over_the_budget_traps(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(proxy("random"), with_budget(max_random_bytes=16))

    with pytest.raises(AgentTrap, match="asked for 17 random bytes"):
        sandbox.handle(proxy_message(0, 17))


# --- vector memory -------------------------------------------------------------------------------


def _store(sandbox: AgentSandbox, request: JSON | bytes) -> int:
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    base = payload_at("vector_store")
    return results(sandbox.handle(proxy_message(base, len(raw), payload=raw)).replies[-1])[0]


def _search(sandbox: AgentSandbox, query: JSON, cap: int = 1024) -> tuple[int, bytes]:
    status, buffer = sandbox.handle(struct.pack("<I", cap) + json.dumps(query).encode()).replies
    return results(status)[0], buffer


def test_vector_store_and_search(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    sandbox = make_sandbox(proxy("vector_store"))

    assert _store(sandbox, {"id": "a", "vector": [1, 0], "data": {"text": "east"}}) == OK
    assert _store(sandbox, {"id": "b", "vector": [0, 1]}) == OK
    assert _store(sandbox, {"id": "c", "vector": [1, 1, 1]}) == INVALID  # wrong dimension

    assert host.vectors == {"a": ((1.0, 0.0), {"text": "east"}), "b": ((0.0, 1.0), None)}


@pytest.mark.parametrize(
    "request_",
    [
        b"not json",
        b'{"id": "a", "vector": [NaN]}',
        b'{"id": "a", "vector": [Infinity]}',
        b'{"id": "a", "vector": [true]}',
        b'{"id": "a", "vector": []}',
        b'{"id": "", "vector": [1]}',
        b'{"vector": [1]}',
        b'{"id": "a", "vector": [1], "extra": 1}',
        b"[" * 100_000,
    ],
)
def test_malformed_vector_requests_are_invalid(make_sandbox: MakeSandbox, request_: bytes) -> None:
    assert _store(make_sandbox(proxy("vector_store")), request_) == INVALID


def test_vector_search_returns_json_best_first(make_sandbox: MakeSandbox, host: MemoryHost) -> None:
    host.vector_store("a", [1.0, 0.0], {"n": 1})
    host.vector_store("b", [0.0, 1.0], None)
    host.vector_store("c", [1.0, 1.0], "diagonal")
    sandbox = make_sandbox(agents.reader("vector_search"))

    length, buffer = _search(sandbox, {"vector": [2, 0], "k": 2})
    hits = json.loads(buffer[:length])
    too_small, nothing = _search(sandbox, {"vector": [2, 0], "k": 2}, cap=length - 1)

    assert [(hit["id"], hit["data"]) for hit in hits] == [("a", {"n": 1}), ("c", "diagonal")]
    assert [hit["score"] for hit in hits] == pytest.approx([1.0, 2**-0.5])
    assert (too_small, nothing) == (length, bytes(length - 1))
    assert _search(sandbox, {"vector": [1, 0], "k": 0})[0] == LIMIT
    assert _search(sandbox, {"vector": [1, 0], "k": 101})[0] == LIMIT
    assert _search(sandbox, {"vector": [1, 0, 0]})[0] == INVALID  # wrong dimension


def test_vector_ops_are_unavailable_without_vector_memory(make_sandbox: MakeSandbox) -> None:
    class NoVectors(MemoryHost):
        def vector_store(self, id: str, vector: Sequence[float], data: JSON) -> None:
            raise NotAvailable("no vector memory on this pod")

    sandbox = make_sandbox(proxy("vector_store"), host_api=NoVectors())

    assert _store(sandbox, {"id": "a", "vector": [1]}) == UNAVAILABLE


def test_unpacking_helper_matches_the_wire(make_sandbox: MakeSandbox) -> None:
    # Guard for the helpers above: the proxy reads u32 repeat, then i32 arguments.
    assert (
        proxy_message(1, -1, payload=b"z", repeat=2) == struct.pack("<III", 2, 1, 2**32 - 1) + b"z"
    )


def test_a_host_calling_back_into_its_own_agent_is_refused(make_sandbox: MakeSandbox) -> None:
    sandboxes: list[AgentSandbox] = []

    class Reentrant(MemoryHost):
        def kv_put(self, key: str, value: bytes) -> None:
            sandboxes[0].handle(b"again")

    sandboxes.append(make_sandbox(proxy("kv_put"), host_api=Reentrant()))

    with pytest.raises(HostCallFailed, match="re-entrant call"):
        call_two(sandboxes[0], "kv_put", b"k", b"v")


# --- text for vector memory ----------------------------------------------------------------------


class RecordingHost(MemoryHost):
    """Records which HostAPI vector method the host functions chose, with its arguments."""

    def __init__(self) -> None:
        super().__init__(seed=1, embed=toy_embedding)
        self.calls: list[tuple[object, ...]] = []

    def vector_store(self, id: str, vector: Sequence[float], data: JSON) -> None:
        self.calls.append(("vector_store", id, list(vector), data))
        super().vector_store(id, vector, data)

    def vector_store_text(self, id: str, text: str, data: JSON) -> None:
        self.calls.append(("vector_store_text", id, text, data))
        MemoryHost.vector_store(self, id, toy_embedding(text), data)  # not recorded again

    def vector_search(self, vector: Sequence[float], k: int) -> list[VectorHit]:
        self.calls.append(("vector_search", list(vector), k))
        return super().vector_search(vector, k)

    def vector_search_text(self, text: str, k: int) -> list[VectorHit]:
        self.calls.append(("vector_search_text", text, k))
        return MemoryHost.vector_search(self, toy_embedding(text), k)


def test_vector_store_parses_the_text_and_the_vector_variant(make_sandbox: MakeSandbox) -> None:
    host = RecordingHost()
    sandbox = make_sandbox(proxy("vector_store"), host_api=host)

    assert _store(sandbox, {"id": "t", "text": "red apples", "data": {"n": 1}}) == OK
    assert _store(sandbox, {"id": "v", "vector": [1.0] * TOY_DIMENSIONS}) == OK

    assert host.calls == [
        ("vector_store_text", "t", "red apples", {"n": 1}),
        ("vector_store", "v", [1.0] * TOY_DIMENSIONS, None),
    ]
    assert host.vectors["t"] == (tuple(toy_embedding("red apples")), {"n": 1})


def test_vector_search_parses_the_text_and_the_vector_variant(make_sandbox: MakeSandbox) -> None:
    host = RecordingHost()
    host.vector_store_text("fruit", "red apples and green pears", "f")
    host.vector_store_text("cars", "fast cars on the road", "c")
    host.calls.clear()
    sandbox = make_sandbox(agents.reader("vector_search"), host_api=host)

    length, buffer = _search(sandbox, {"text": "red apples", "k": 2})
    hits = json.loads(buffer[:length])
    cars: list[JSON] = list(toy_embedding("cars"))
    length_v, _ = _search(sandbox, {"vector": cars, "k": 1})

    assert [hit["id"] for hit in hits] == ["fruit", "cars"]
    assert hits[0]["score"] > hits[1]["score"]
    assert length_v > 0
    assert host.calls == [
        ("vector_search_text", "red apples", 2),
        ("vector_search", toy_embedding("cars"), 1),
    ]


@pytest.mark.parametrize(
    "request_",
    [
        {"id": "a", "text": "x", "vector": [1]},  # both
        {"id": "a", "data": 1},  # neither
        {"id": "a", "text": ""},
        {"id": "a", "text": 7},
        {"id": "a", "text": ["x"]},
        {"id": "a", "text": None},
        {"text": "no id"},
    ],
)
def test_vector_store_needs_exactly_one_of_vector_and_text(
    make_sandbox: MakeSandbox, request_: JSON
) -> None:
    host = RecordingHost()

    assert _store(make_sandbox(proxy("vector_store"), host_api=host), request_) == INVALID
    assert host.calls == []


@pytest.mark.parametrize(
    "query",
    [
        {"text": "x", "vector": [1], "k": 1},  # both
        {"k": 1},  # neither
        {},
        {"text": ""},
        {"text": 3},
        {"text": "x", "extra": 1},
    ],
)
def test_vector_search_needs_exactly_one_of_vector_and_text(
    make_sandbox: MakeSandbox, query: JSON
) -> None:
    host = RecordingHost()

    assert _search(make_sandbox(agents.reader("vector_search"), host_api=host), query)[0] == INVALID
    assert host.calls == []


def test_text_search_checks_k_like_vector_search(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.reader("vector_search"), host_api=RecordingHost())

    assert _search(sandbox, {"text": "x", "k": 0})[0] == LIMIT
    assert _search(sandbox, {"text": "x", "k": 101})[0] == LIMIT
    assert _search(sandbox, {"text": "x", "k": True})[0] == INVALID


def test_text_is_unavailable_on_a_memory_host_without_an_embedder(
    make_sandbox: MakeSandbox, host: MemoryHost
) -> None:
    store = make_sandbox(proxy("vector_store"))
    search = make_sandbox(agents.reader("vector_search"))

    assert _store(store, {"id": "a", "text": "hello"}) == UNAVAILABLE
    assert _search(search, {"text": "hello"})[0] == UNAVAILABLE
    assert host.vectors == {}  # a failed call has had no effect


def test_memory_host_text_round_trip_with_the_toy_embedding() -> None:
    host = MemoryHost(embed=toy_embedding)
    host.vector_store_text("a", "the quick brown fox", None)
    host.vector_store_text("b", "lazy dogs sleep all day", None)

    assert [hit.id for hit in host.vector_search_text("quick fox", 2)] == ["a", "b"]
    assert host.vector_search_text("the quick brown fox", 1)[0].score == pytest.approx(1.0)
    # Deterministic, normalised, and the same dimension as its constant says.
    assert toy_embedding("Fox fox") == toy_embedding("fox FOX")
    assert len(toy_embedding("x")) == TOY_DIMENSIONS
    assert math.fsum(x * x for x in toy_embedding("a b c")) == pytest.approx(1.0)
    assert toy_embedding("   ") == [0.0] * TOY_DIMENSIONS


def test_components_and_core_modules_share_the_vector_rules() -> None:
    """Python agents pass the same JSON through the component world; text must work there too."""
    import json

    from runtime import components
    from runtime.host import MemoryHost, toy_embedding
    from runtime.hostcalls import CallContext
    from runtime.limits import CallBudget

    ctx = CallContext(MemoryHost(embed=toy_embedding), CallBudget())
    stored = components._vector_store(ctx, '{"id": "a", "text": "cats purr", "data": 1}')
    assert stored == 0
    assert components._vector_store(ctx, '{"id": "b"}') == -3  # neither vector nor text
    hits = components._vector_search(ctx, '{"text": "cats purr", "k": 1}')
    assert isinstance(hits, str)
    assert [h["id"] for h in json.loads(hits)] == ["a"]
