"""The host functions of the ABI: argument checks, budgets, guest-memory access, the Linker.

One `wasmtime.Linker` per engine carries these functions for every agent, so they cannot close
over an instance. Each sandbox call instead makes its `CallContext` the thread's active context:
a store runs on one thread at a time and a host function runs synchronously on the thread that
called into wasm, so the active context is exactly the instance that is calling.

Failure discipline. A host function never lets a Python error escape as itself: a guest mistake
becomes `AgentTrap`, a host failure `HostCallFailed`, recorded on the context before the guest is
aborted. wasmtime-py hands a host function's exception back through one process-wide slot
(`wasmtime._func.LAST_EXCEPTION`), which another thread's trapping call can pick up first; the
record on the context is what the sandbox trusts, never the exception that comes out.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import wasmtime

from runtime import abi, net
from runtime.abi import Destination, ErrorCode, LogLevel
from runtime.errors import AgentTrap, DeadlineExceeded, HostCallFailed, SandboxError
from runtime.host import JSON, HostAPI, InvalidArgument, NotAvailable, Refused
from runtime.kvstate import StateFull
from runtime.limits import CallBudget, Capability, SandboxLimits

_U32: Final = 0xFFFF_FFFF
_I32_MAX: Final = 0x7FFF_FFFF

_T = TypeVar("_T")


class CallContext:
    """What the host functions may touch for one agent instance; reset before every call."""

    __slots__ = (
        "budget",
        "capabilities",
        "deadline",
        "deadline_ms",
        "emits",
        "fault",
        "host",
        "http_answer",
        "http_requests",
        "kv_ops",
        "logs",
        "logs_dropped",
        "memory",
        "net_allow",
        "output_bytes",
        "replies",
        "sends",
        "vector_ops",
    )

    def __init__(
        self,
        host: HostAPI,
        budget: CallBudget,
        *,
        capabilities: frozenset[Capability] = frozenset(),
        deadline_ms: int | None = None,
        net_allow: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.budget = budget
        #: What the spec grants; host calls behind a capability ("net") check it.
        self.capabilities = capabilities
        #: The call's wall-clock limit, so host calls that wait (http_request) can bound it.
        self.deadline_ms = deadline_ms
        #: The hosts http_request may reach (`AgentSpec.network.allow`); empty: any.
        self.net_allow = net_allow
        #: Set once the instance exists; the wasm start function runs before that.
        self.memory: wasmtime.Memory | None = None
        self.reset()

    @classmethod
    def under(cls, limits: SandboxLimits, host: HostAPI) -> CallContext:
        """The context of an instance run under `limits`: its call budget, the capabilities it
        was granted, its deadline and the hosts its network grant may reach."""
        return cls(
            host,
            limits.budget,
            capabilities=limits.capabilities,
            deadline_ms=limits.deadline_ms,
            net_allow=limits.net_allow,
        )

    def reset(self) -> None:
        self.replies: list[bytes] = []
        self.sends = 0
        self.emits = 0
        self.logs = 0
        self.logs_dropped = 0
        self.kv_ops = 0
        self.vector_ops = 0
        self.http_requests = 0
        #: The last http_request answer of this call, for http_response (core modules).
        self.http_answer: bytes | None = None
        self.output_bytes = 0
        self.fault: SandboxError | None = None
        #: time.monotonic() by which the call must be over (reset is called as it starts).
        self.deadline = (
            math.inf if self.deadline_ms is None else time.monotonic() + self.deadline_ms / 1000
        )


_active = threading.local()


@contextmanager
def active(ctx: CallContext) -> Iterator[None]:
    """Make `ctx` the one the host functions see while this thread runs the guest."""
    previous: CallContext | None = getattr(_active, "ctx", None)
    _active.ctx = ctx
    try:
        yield
    finally:
        _active.ctx = previous


def current() -> CallContext | None:
    """The context of the sandbox call this thread is running, if any."""
    ctx: CallContext | None = getattr(_active, "ctx", None)
    return ctx


class GuestBug(Exception):
    """A guest mistake that has no error code to return: the guest is trapped with this reason."""


class DeadlineReached(Exception):
    """A host call used up the call's deadline: the guest is stopped with `DeadlineExceeded`
    (deterministically, rather than whenever the next epoch check happens to come)."""


class GuestAborted(Exception):
    """Raised through wasmtime to unwind the guest; the sandbox reads `CallContext.fault`."""


def run_guarded(qualified: str, call: Callable[[CallContext], _T]) -> _T:
    """Run one host function (`qualified` names it in reasons) in the active context.

    What goes wrong is recorded as the context's `fault` and the guest is unwound with
    `GuestAborted`: a `GuestBug` traps the agent, `DeadlineReached` is its deadline, anything
    else is the host's failure. Core modules and components both call their functions through
    this, so a failure means the same whichever calling convention met it.
    """
    ctx = current()
    if ctx is None:
        # Only reachable if a store escaped its sandbox; trap rather than guess an instance.
        raise GuestAborted(f"{qualified} called outside a sandbox call")
    error: SandboxError
    try:
        return call(ctx)
    except GuestBug as bug:
        error = AgentTrap(f"{qualified}: {bug}")
    except DeadlineReached as exc:
        error = DeadlineExceeded(f"ran past its deadline of {ctx.deadline_ms} ms: {exc}")
    except Exception as exc:
        error = HostCallFailed(f"{qualified} failed in the host: {type(exc).__name__}: {exc}")
    ctx.fault = error
    raise GuestAborted(error.reason)


# --- guest memory --------------------------------------------------------------------------------


def _memory(ctx: CallContext) -> wasmtime.Memory:
    if ctx.memory is None:
        raise GuestBug("host functions are unavailable in the wasm start function; use swarm_init")
    return ctx.memory


def _span(ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int, what: str) -> int:
    """Check that [ptr, ptr + length) lies in guest memory; returns the unsigned pointer.

    Pointers and lengths are i32 on the wire and unsigned by the ABI, so -1 is 4 GiB, not a
    Python negative index (wasmtime's `Memory.read` would silently clamp a bad slice).
    """
    ptr &= _U32
    length &= _U32
    size = _memory(ctx).data_len(caller)
    if ptr + length > size:
        raise GuestBug(f"{what} [{ptr:#x}, +{length}) lies outside guest memory ({size} bytes)")
    return ptr


def _read(ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
    if length == 0:
        return b""
    return bytes(_memory(ctx).read(caller, ptr, ptr + length))


def _read_upto(
    ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int, most: int
) -> bytes:
    """The guest's bytes at [ptr, ptr + length) (checked by `_span`), cut after `most` + 1.

    A name or message longer than the budget's `most` is refused for its length; one byte past
    the limit says so as well as the whole would, without copying a huge one out of the guest.
    """
    return _read(ctx, caller, ptr, min(length & _U32, most + 1))


def _write(ctx: CallContext, caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
    # Memory.write refuses a zero-length write at the very end of memory; nothing to do anyway.
    if data:
        _memory(ctx).write(caller, data, ptr)


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def charge(ctx: CallContext, size: int) -> bool:
    if ctx.output_bytes + size > ctx.budget.max_output_bytes:
        return False
    ctx.output_bytes += size
    return True


def _length_result(
    ctx: CallContext, caller: wasmtime.Caller, out: int, cap: int, data: bytes
) -> int:
    """The snprintf convention shared by kv_get and vector_search (see ABI.md)."""
    if len(data) > _I32_MAX:
        return ErrorCode.LIMIT
    if len(data) <= cap & _U32:
        _write(ctx, caller, out, data)
    return len(data)


# --- the host functions' checks, once their arguments are in hand -------------------------------
# Core modules (below) copy the arguments out of guest memory, components (runtime/components.py)
# get them lifted by the canonical ABI; both then meet these same checks and budgets.


def ask_host(fn: Callable[[], _T]) -> _T | ErrorCode:
    """Run one HostAPI call; the host's refusals (see `HostAPI`) become the ABI's codes."""
    try:
        return fn()
    except InvalidArgument:
        return ErrorCode.INVALID
    except NotAvailable:
        return ErrorCode.UNAVAILABLE
    except StateFull:
        return ErrorCode.LIMIT
    except Refused:
        return ErrorCode.DENIED


def call_host(fn: Callable[[], object]) -> ErrorCode:
    """Run one HostAPI call that answers nothing: OK, or the code of the host's refusal."""
    result = ask_host(fn)
    return result if isinstance(result, ErrorCode) else ErrorCode.OK


def admit_reply(ctx: CallContext, size: int) -> None:
    """Check a reply of `size` bytes against the call's budget and charge it for its output."""
    budget = ctx.budget
    # No return value to report a refusal with, and a silently dropped reply would be a lie.
    if len(ctx.replies) >= budget.max_replies:
        raise GuestBug(f"more than {budget.max_replies} replies in one call")
    if size > budget.max_message_bytes:
        raise GuestBug(f"reply of {size} bytes exceeds {budget.max_message_bytes}")
    if not charge(ctx, size):
        raise GuestBug(f"replies exceed the call's output budget of {budget.max_output_bytes}")


def admit_log(ctx: CallContext) -> bool:
    """Count one log line against the call's budget; False when the budget is used up and the
    line is dropped (counted in `logs_dropped`)."""
    # Logs are diagnostics: losing some beats killing the agent, and the count tells the pod.
    if ctx.logs >= ctx.budget.max_logs:
        ctx.logs_dropped += 1
        return False
    ctx.logs += 1
    return True


def _outgoing(
    ctx: CallContext,
    name: bytes,
    body: bytes,
    done: int,
    most: int,
    parse: Callable[[str], _T | None],
) -> _T | ErrorCode:
    """What a send and an emit both check: `done` of at most `most` so far this call, the sizes
    of the name and the body, the name parsed by `parse`, the output budget (charged)."""
    budget = ctx.budget
    if done >= most or len(name) > budget.max_name_bytes:
        return ErrorCode.LIMIT
    if len(body) > budget.max_message_bytes:
        return ErrorCode.LIMIT
    text = _text(name)
    parsed = parse(text) if text is not None else None
    if parsed is None:
        return ErrorCode.INVALID
    if not charge(ctx, len(body)):
        return ErrorCode.LIMIT
    return parsed


def _event_type(text: str) -> str | None:
    return text if abi.is_event_type(text) else None


def send(ctx: CallContext, to: bytes, message: bytes) -> ErrorCode:
    """`send` of `message` to the destination `to` (UTF-8, `Destination.parse`)."""
    destination = _outgoing(ctx, to, message, ctx.sends, ctx.budget.max_sends, Destination.parse)
    if isinstance(destination, ErrorCode):
        return destination
    ctx.sends += 1
    return call_host(lambda: ctx.host.send(destination, message))


def emit(ctx: CallContext, event_type: bytes, data: bytes) -> ErrorCode:
    """`emit` of an event of `event_type` (UTF-8, `abi.is_event_type`) carrying `data`."""
    type_ = _outgoing(ctx, event_type, data, ctx.emits, ctx.budget.max_emits, _event_type)
    if isinstance(type_, ErrorCode):
        return type_
    ctx.emits += 1
    return call_host(lambda: ctx.host.emit(type_, data))


def _kv_key(ctx: CallContext, raw: bytes) -> str | ErrorCode:
    """The key of a kv call that the call's kv budget still allows, or LIMIT or INVALID."""
    if ctx.kv_ops >= ctx.budget.max_kv_ops or len(raw) > ctx.budget.max_name_bytes:
        return ErrorCode.LIMIT
    key = _text(raw)
    if not key:
        return ErrorCode.INVALID
    return key


def kv_get(ctx: CallContext, key: bytes) -> bytes | ErrorCode:
    """`kv_get`: the key's value, NOT_FOUND when it has none, or a refusal."""
    checked = _kv_key(ctx, key)
    if isinstance(checked, ErrorCode):
        return checked
    ctx.kv_ops += 1
    value = ask_host(lambda: ctx.host.kv_get(checked))
    return ErrorCode.NOT_FOUND if value is None else value


def kv_put(ctx: CallContext, key: bytes, value: bytes) -> ErrorCode:
    """`kv_put`: OK, or a refusal (LIMIT when the state's caps do not allow the value)."""
    if len(value) > ctx.budget.max_message_bytes:
        return ErrorCode.LIMIT
    checked = _kv_key(ctx, key)
    if isinstance(checked, ErrorCode):
        return checked
    if not charge(ctx, len(value)):
        return ErrorCode.LIMIT
    ctx.kv_ops += 1
    return call_host(lambda: ctx.host.kv_put(checked, value))


def kv_delete(ctx: CallContext, key: bytes) -> ErrorCode:
    """`kv_delete`: OK, or NOT_FOUND when the key had no value, or a refusal."""
    checked = _kv_key(ctx, key)
    if isinstance(checked, ErrorCode):
        return checked
    ctx.kv_ops += 1
    deleted = ask_host(lambda: ctx.host.kv_delete(checked))
    if isinstance(deleted, ErrorCode):
        return deleted
    return ErrorCode.OK if deleted else ErrorCode.NOT_FOUND


def random_bytes(ctx: CallContext, size: int) -> bytes:
    """`random`: `size` bytes from the host, at most the budget's `max_random_bytes`."""
    if size > ctx.budget.max_random_bytes:
        raise GuestBug(f"asked for {size} random bytes, at most {ctx.budget.max_random_bytes}")
    data = ctx.host.random(size)
    if len(data) != size:
        raise RuntimeError(f"host returned {len(data)} random bytes instead of {size}")
    return data


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _json(raw: bytes) -> Any:
    """Parsed JSON, or None for anything malformed (NaN and Infinity included)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def _vector(value: object, max_dims: int) -> list[float] | None:
    if not isinstance(value, list) or not 0 < len(value) <= max_dims:
        return None
    numbers: list[float] = []
    for item in value:
        # bool is an int in Python, but `true` is not a coordinate.
        if isinstance(item, bool) or not isinstance(item, int | float):
            return None
        number = float(item)
        if not math.isfinite(number):
            return None
        numbers.append(number)
    return numbers


def _vector_or_text(request: dict[str, Any], max_dims: int) -> list[float] | str | None:
    """The "vector" or the "text" of a vector request: exactly one of them (ABI.md)."""
    if ("vector" in request) == ("text" in request):
        return None
    if "text" in request:
        text = request["text"]
        return text if isinstance(text, str) and text else None
    return _vector(request["vector"], max_dims)


def vector_store_request(ctx: CallContext, raw: bytes) -> ErrorCode:
    """`vector_store` once its request is in hand: what core modules and components share."""
    budget = ctx.budget
    if ctx.vector_ops >= budget.max_vector_ops or len(raw) > budget.max_message_bytes:
        return ErrorCode.LIMIT
    request = _json(raw)
    if not isinstance(request, dict) or not set(request) <= {"id", "vector", "text", "data"}:
        return ErrorCode.INVALID
    id_ = request.get("id")
    what = _vector_or_text(request, budget.max_vector_dims)
    if not isinstance(id_, str) or not id_ or len(id_.encode()) > budget.max_name_bytes:
        return ErrorCode.INVALID
    if what is None:
        return ErrorCode.INVALID
    data: JSON = request.get("data")
    if not charge(ctx, len(raw)):
        return ErrorCode.LIMIT
    ctx.vector_ops += 1
    if isinstance(what, str):
        text = what
        return call_host(lambda: ctx.host.vector_store_text(id_, text, data))
    vector = what
    return call_host(lambda: ctx.host.vector_store(id_, vector, data))


def vector_search_request(ctx: CallContext, raw: bytes) -> bytes | ErrorCode:
    """`vector_search` once its query is in hand: the hits as JSON, or a refusal."""
    budget = ctx.budget
    if ctx.vector_ops >= budget.max_vector_ops or len(raw) > budget.max_message_bytes:
        return ErrorCode.LIMIT
    query = _json(raw)
    if not isinstance(query, dict) or not set(query) <= {"vector", "text", "k"}:
        return ErrorCode.INVALID
    what = _vector_or_text(query, budget.max_vector_dims)
    k = query.get("k", 10)
    if what is None or isinstance(k, bool) or not isinstance(k, int):
        return ErrorCode.INVALID
    if not 0 < k <= budget.max_search_k:
        return ErrorCode.LIMIT
    ctx.vector_ops += 1
    if isinstance(what, str):
        text = what
        hits = ask_host(lambda: ctx.host.vector_search_text(text, k))
    else:
        vector = what
        hits = ask_host(lambda: ctx.host.vector_search(vector, k))
    if isinstance(hits, ErrorCode):
        return hits
    result = json.dumps(
        [{"id": hit.id, "score": hit.score, "data": hit.data} for hit in hits[:k]],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    if len(result) > budget.max_message_bytes:
        return ErrorCode.LIMIT
    return result


def http_request(ctx: CallContext, raw: bytes) -> bytes | ErrorCode:
    """`http_request` once its request is in hand: the JSON answer (runtime/net.py), or a code.

    Codes say the host did nothing: DENIED (no "net" grant, a host the spec's `network.allow`
    does not list, or a non-public address), LIMIT (the
    call's request count, sizes or time are used up), INVALID (a malformed request),
    UNAVAILABLE (the host makes no requests). What the network did is in the answer.
    """
    budget = ctx.budget
    if "net" not in ctx.capabilities:
        return ErrorCode.DENIED
    if ctx.http_requests >= budget.max_http_requests or len(raw) > budget.max_message_bytes:
        return ErrorCode.LIMIT
    parsed = net.parse_request(_json(raw))
    if isinstance(parsed, str):
        return ErrorCode.INVALID
    if len(parsed.body) > budget.max_http_request_bytes:
        return ErrorCode.LIMIT
    if ctx.net_allow and not net.host_allowed(parsed.host, ctx.net_allow):
        return ErrorCode.DENIED
    # Host calls are not interrupted at the deadline, so the request must end by it.
    timeout_s = ctx.deadline - time.monotonic()
    if parsed.timeout_ms is not None:
        timeout_s = min(timeout_s, parsed.timeout_ms / 1000)
    if timeout_s <= 0.001:
        return ErrorCode.LIMIT
    if not charge(ctx, len(raw)):
        return ErrorCode.LIMIT
    ctx.http_requests += 1
    request = net.HttpRequest(
        method=parsed.method,
        url=parsed.url,
        headers=parsed.headers,
        body=parsed.body,
        timeout_s=timeout_s,
        max_response_bytes=budget.max_http_response_bytes,
    )
    response = ask_host(lambda: ctx.host.http_request(request))
    if isinstance(response, ErrorCode):
        return response
    if time.monotonic() >= ctx.deadline:
        raise DeadlineReached(f"http_request to {parsed.url} ran into the call's deadline")
    return net.encode_response(response)


# --- host functions of core modules ---------------------------------------------------------------
# Each takes the active context and the caller first, then the raw i32/i64 arguments.


def _reply(ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int) -> None:
    ptr = _span(ctx, caller, ptr, length, "reply")
    length &= _U32
    admit_reply(ctx, length)
    ctx.replies.append(_read(ctx, caller, ptr, length))


def _name_and_body(
    ctx: CallContext,
    caller: wasmtime.Caller,
    name_ptr: int,
    name_len: int,
    ptr: int,
    length: int,
    what: tuple[str, str],
) -> tuple[bytes, bytes]:
    """The name (destination, event type, kv key) and the body of a send, emit or kv_put out of
    guest memory; `what` calls them something a trap's reason can tell apart."""
    name_ptr = _span(ctx, caller, name_ptr, name_len, what[0])
    ptr = _span(ctx, caller, ptr, length, what[1])
    budget = ctx.budget
    return (
        _read_upto(ctx, caller, name_ptr, name_len, budget.max_name_bytes),
        _read_upto(ctx, caller, ptr, length, budget.max_message_bytes),
    )


def _send(
    ctx: CallContext, caller: wasmtime.Caller, to_ptr: int, to_len: int, ptr: int, length: int
) -> int:
    what = ("send destination", "send message")
    return send(ctx, *_name_and_body(ctx, caller, to_ptr, to_len, ptr, length, what))


def _emit(
    ctx: CallContext, caller: wasmtime.Caller, type_ptr: int, type_len: int, ptr: int, length: int
) -> int:
    what = ("event type", "event data")
    return emit(ctx, *_name_and_body(ctx, caller, type_ptr, type_len, ptr, length, what))


def _log(ctx: CallContext, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
    ptr = _span(ctx, caller, ptr, length, "log message")
    length &= _U32
    if not admit_log(ctx):
        return
    kept = min(length, ctx.budget.max_log_bytes)
    message = _read(ctx, caller, ptr, kept).decode("utf-8", errors="replace")
    if kept < length:
        message += f"... [{length - kept} bytes cut]"
    ctx.host.log(LogLevel.clamp(level), message)


def _kv_get(
    ctx: CallContext, caller: wasmtime.Caller, key_ptr: int, key_len: int, out: int, cap: int
) -> int:
    key_ptr = _span(ctx, caller, key_ptr, key_len, "kv key")
    out = _span(ctx, caller, out, cap, "kv output buffer")
    value = kv_get(ctx, _read_upto(ctx, caller, key_ptr, key_len, ctx.budget.max_name_bytes))
    if isinstance(value, ErrorCode):
        return value
    return _length_result(ctx, caller, out, cap, value)


def _kv_put(
    ctx: CallContext, caller: wasmtime.Caller, key_ptr: int, key_len: int, ptr: int, length: int
) -> int:
    what = ("kv key", "kv value")
    return kv_put(ctx, *_name_and_body(ctx, caller, key_ptr, key_len, ptr, length, what))


def _kv_delete(ctx: CallContext, caller: wasmtime.Caller, key_ptr: int, key_len: int) -> int:
    key_ptr = _span(ctx, caller, key_ptr, key_len, "kv key")
    return kv_delete(ctx, _read_upto(ctx, caller, key_ptr, key_len, ctx.budget.max_name_bytes))


def _now_ms(ctx: CallContext, caller: wasmtime.Caller) -> int:
    return ctx.host.now_ms()


def _random(ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int) -> None:
    ptr = _span(ctx, caller, ptr, length, "random buffer")
    _write(ctx, caller, ptr, random_bytes(ctx, length & _U32))


def _http_request(
    ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int, out: int, cap: int
) -> int:
    ptr = _span(ctx, caller, ptr, length, "http_request request")
    out = _span(ctx, caller, out, cap, "http_request output buffer")
    length &= _U32
    ctx.http_answer = None
    if length > ctx.budget.max_message_bytes:
        return ErrorCode.LIMIT
    result = http_request(ctx, _read(ctx, caller, ptr, length))
    if isinstance(result, ErrorCode):
        return result
    # Kept so that an answer larger than `cap` is fetched with http_response, not fetched twice.
    ctx.http_answer = result
    return _length_result(ctx, caller, out, cap, result)


def _http_response(ctx: CallContext, caller: wasmtime.Caller, out: int, cap: int) -> int:
    out = _span(ctx, caller, out, cap, "http_response output buffer")
    if ctx.http_answer is None:
        return ErrorCode.NOT_FOUND
    return _length_result(ctx, caller, out, cap, ctx.http_answer)


def _vector_store(ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int) -> int:
    ptr = _span(ctx, caller, ptr, length, "vector_store request")
    request = _read_upto(ctx, caller, ptr, length, ctx.budget.max_message_bytes)
    return vector_store_request(ctx, request)


def _vector_search(
    ctx: CallContext, caller: wasmtime.Caller, ptr: int, length: int, out: int, cap: int
) -> int:
    ptr = _span(ctx, caller, ptr, length, "vector_search query")
    out = _span(ctx, caller, out, cap, "vector_search output buffer")
    query = _read_upto(ctx, caller, ptr, length, ctx.budget.max_message_bytes)
    result = vector_search_request(ctx, query)
    if isinstance(result, ErrorCode):
        return result
    return _length_result(ctx, caller, out, cap, result)


_IMPLEMENTATIONS: Final[dict[str, Callable[..., Any]]] = {
    "reply": _reply,
    "send": _send,
    "emit": _emit,
    "log": _log,
    "kv_get": _kv_get,
    "kv_put": _kv_put,
    "kv_delete": _kv_delete,
    "now_ms": _now_ms,
    "random": _random,
    "vector_store": _vector_store,
    "vector_search": _vector_search,
    "http_request": _http_request,
    "http_response": _http_response,
}


def _guarded(name: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    qualified = f"{abi.IMPORT_MODULE}.{name}"

    def host_function(caller: wasmtime.Caller, *args: int) -> Any:
        return run_guarded(qualified, lambda ctx: impl(ctx, caller, *args))

    host_function.__qualname__ = host_function.__name__ = f"host_{name}"
    return host_function


def functype(signature: abi.Signature) -> wasmtime.FuncType:
    types = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}
    return wasmtime.FuncType(
        [types[p]() for p in signature.params], [types[r]() for r in signature.results]
    )


def build_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """The Linker every agent of `engine` is instantiated through."""
    linker = wasmtime.Linker(engine)
    for name, signature in abi.IMPORTS.items():
        linker.define_func(
            abi.IMPORT_MODULE,
            name,
            functype(signature),
            _guarded(name, _IMPLEMENTATIONS[name]),
            access_caller=True,
        )
    return linker
