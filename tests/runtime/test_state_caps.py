"""Caps on an agent's key-value state (runtime/kvstate.py), as the state sees them and as a core
module sees them through kv_put / kv_delete (ErrorCode.LIMIT, NOT_FOUND)."""

from __future__ import annotations

import struct

import pytest

from runtime.abi import ErrorCode
from runtime.host import MemoryHost
from runtime.kvstate import KvState, StateCaps, StateFull
from runtime.limits import CallBudget, SandboxLimits
from runtime.sandbox import AgentSandbox
from tests.helpers.agents import KV_STORE, kv_fill, kv_message
from tests.helpers.sandboxes import MakeSandbox

OK, NOT_FOUND, LIMIT = ErrorCode.OK, ErrorCode.NOT_FOUND, ErrorCode.LIMIT


# --- the state -----------------------------------------------------------------------------------


def test_size_counts_keys_and_values_through_every_change() -> None:
    state = KvState({"a": b"123"})
    assert (state.size, len(state)) == (4, 1)
    state.put("bé", b"xy")  # the key counts in UTF-8: 3 bytes
    assert state.size == 4 + 5
    state.put("a", b"1")  # overwrite: the old value no longer counts
    assert state.size == 2 + 5
    del state["bé"]
    assert (state.size, len(state)) == (2, 1)
    state["c"] = b""  # unchecked assignment still counts
    assert (state.size, len(state)) == (3, 2)
    assert state == {"a": b"1", "c": b""}
    assert state.copy() == {"a": b"1", "c": b""}


def test_a_write_past_the_byte_cap_is_refused_and_changes_nothing() -> None:
    state = KvState(caps=StateCaps(max_bytes=10, max_keys=100))
    state.put("k", b"123456789")  # exactly 10
    with pytest.raises(StateFull, match="11 bytes, the cap is 10"):
        state.put("j", b"")
    with pytest.raises(StateFull):
        state.put("k", b"1234567890")
    assert state == {"k": b"123456789"}
    assert state.size == 10
    # Room comes back by overwriting with less, or by deleting.
    state.put("k", b"12345678")
    state.put("j", b"")
    del state["k"]
    state.put("k", b"1234567")
    assert state.size == 1 + 8


def test_a_new_key_past_the_key_cap_is_refused_but_overwrites_are_not() -> None:
    state = KvState(caps=StateCaps(max_bytes=1000, max_keys=2))
    state.put("a", b"1")
    state.put("b", b"2")
    with pytest.raises(StateFull, match="3 keys, the cap is 2"):
        state.put("c", b"3")
    state.put("a", b"11")
    assert state == {"a": b"11", "b": b"2"}


def test_zero_caps_allow_no_state() -> None:
    state = KvState(caps=StateCaps(max_bytes=0, max_keys=0))
    with pytest.raises(StateFull):
        state.put("k", b"")
    assert len(state) == 0


def test_a_state_restored_over_its_caps_is_kept_and_may_only_shrink() -> None:
    """The caps were lowered after the state was saved: nothing is lost, nothing may grow."""
    state = KvState({"a": b"x" * 50, "b": b"y" * 50}, StateCaps(max_bytes=60, max_keys=1))
    assert state.over_caps
    assert state.size == 102
    with pytest.raises(StateFull):
        state.put("c", b"")  # a new key grows both
    with pytest.raises(StateFull):
        state.put("a", b"x" * 51)  # more bytes
    state.put("a", b"x" * 10)  # less: allowed while still over the caps
    assert state.size == 62
    del state["b"]
    assert not state.over_caps
    state.put("a", b"x" * 59)  # back under the caps: ordinary rules
    with pytest.raises(StateFull):
        state.put("a", b"x" * 60)


def test_caps_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="StateCaps"):
        StateCaps(max_bytes=-1)
    with pytest.raises(ValueError, match="state_keys"):
        SandboxLimits(state_keys=-1)


# --- through the host functions of a core module -------------------------------------------------


def code(sandbox: AgentSandbox, message: bytes) -> int:
    result = sandbox.handle(message)
    assert result.ok
    value: int = struct.unpack("<i", result.replies[0])[0]
    return value


def get(sandbox: AgentSandbox, key: str) -> tuple[int, bytes]:
    replies = sandbox.handle(kv_message("g", key)).replies
    return struct.unpack("<i", replies[0])[0], b"".join(replies[1:])


def test_kv_put_past_the_caps_is_limit_and_the_agent_keeps_running(
    make_sandbox: MakeSandbox,
) -> None:
    host = MemoryHost(state_caps=StateCaps(max_bytes=3000, max_keys=3))
    sandbox = make_sandbox(KV_STORE, host_api=host)

    assert code(sandbox, kv_fill("a", 1000)) == OK
    assert code(sandbox, kv_fill("b", 1000)) == OK
    assert code(sandbox, kv_fill("c", 1000)) == LIMIT  # 3003 bytes
    assert code(sandbox, kv_fill("c", 997)) == OK  # exactly 3000
    assert code(sandbox, kv_message("p", "d")) == LIMIT  # a fourth key, even empty
    assert host.kv.size == 3000
    assert set(host.kv) == {"a", "b", "c"}
    assert not sandbox.broken

    # Deleting frees room; deleting what is not there says so.
    assert code(sandbox, kv_message("d", "b")) == OK
    assert code(sandbox, kv_message("d", "b")) == NOT_FOUND
    assert get(sandbox, "b") == (NOT_FOUND, b"")
    assert code(sandbox, kv_message("p", "d", b"hello")) == OK
    assert get(sandbox, "d") == (5, b"hello")
    assert host.kv.size == 1001 + 998 + 6


def test_a_state_over_its_caps_loads_and_refuses_growth(make_sandbox: MakeSandbox) -> None:
    host = MemoryHost(state_caps=StateCaps(max_bytes=100, max_keys=10))
    host.kv["big"] = b"z" * 500  # as restored from a snapshot saved under a larger cap
    sandbox = make_sandbox(KV_STORE, host_api=host)

    assert get(sandbox, "big") == (500, b"z" * 500)
    assert code(sandbox, kv_message("p", "x", b"1")) == LIMIT
    assert code(sandbox, kv_message("p", "big", b"smaller")) == OK
    assert code(sandbox, kv_message("p", "x", b"1")) == OK


def test_kv_delete_counts_against_the_kv_budget(make_sandbox: MakeSandbox) -> None:
    host = MemoryHost()
    host.kv["k"] = b"v"
    sandbox = make_sandbox(KV_STORE, SandboxLimits(budget=CallBudget(max_kv_ops=0)), host)

    assert code(sandbox, kv_message("d", "k")) == LIMIT
    assert host.kv == {"k": b"v"}


def test_kv_delete_refuses_bad_keys(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(KV_STORE, host_api=MemoryHost())

    assert code(sandbox, kv_message("d", "")) == ErrorCode.INVALID
    assert code(sandbox, b"d\x01\xff") == ErrorCode.INVALID  # not UTF-8
