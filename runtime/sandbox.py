"""One agent instance in its own wasmtime Store, called one message at a time.

Each call gets the instance's full fuel and a fresh epoch deadline, and the store's limiter caps
linear memory for the instance's life. Whatever goes wrong inside the guest ends as a typed
`SandboxError`; after any of them the instance is broken (its memory may be half-updated, or full)
and the pod must replace it with a fresh one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import wasmtime

from runtime import abi, hostcalls
from runtime.engine import SandboxEngine
from runtime.errors import (
    AgentTrap,
    DeadlineExceeded,
    FuelExhausted,
    InitFailed,
    InstanceBroken,
    InvalidModule,
    MemoryLimitExceeded,
    SandboxError,
)
from runtime.host import HostAPI
from runtime.limits import SandboxLimits
from runtime.modules import CompiledModule

_U32: Final = 0xFFFF_FFFF
_MIB: Final = 1024 * 1024
#: Wasm tables and memories an instance may create; the ABI needs one memory and a few tables.
_MAX_TABLES: Final = 4
_MAX_MEMORIES: Final = 1

_LiveT = TypeVar("_LiveT")


@dataclass(frozen=True, slots=True)
class _Live:
    """The parts of a running instance; dropped as a whole when the instance breaks."""

    store: wasmtime.Store
    memory: wasmtime.Memory
    alloc: wasmtime.Func
    handle: wasmtime.Func
    init: wasmtime.Func | None


@dataclass(frozen=True, slots=True)
class CallResult:
    #: What swarm_handle (or swarm_init) returned: 0 for success, else the agent's error code.
    status: int
    replies: tuple[bytes, ...]
    fuel_used: int
    duration_s: float
    #: Linear memory of the instance after the call.
    memory_bytes: int
    #: Log lines over the call's budget, counted instead of kept.
    logs_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 0


def _trap_reason(message: str) -> str:
    """One line from wasmtime's message: the trap, then its context, without the backtrace."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if "Caused by:" in lines:
        lines = lines[lines.index("Caused by:") + 1 :]
    causes = [
        line.split(": ", 1)[1] if line[:1].isdigit() and ": " in line else line for line in lines
    ]
    causes = [c.removeprefix("wasm trap: ") for c in causes] or ["unknown trap"]
    *context, trap = causes
    return f"{trap} ({'; '.join(context)})" if context else trap


class Instance(Generic[_LiveT]):
    """What every sandbox (`AgentSandbox`, `components.ComponentSandbox`) does around its calls.

    One `CallContext` for the instance's host functions, calls serialized by a lock, each one
    armed with the call's full fuel and a fresh epoch deadline, and a failure that breaks the
    instance for good: `_live` (the Store and what lives in it) is dropped with it.
    """

    _engine: SandboxEngine
    _deadline_ticks: int
    _live: _LiveT | None

    def __init__(self, limits: SandboxLimits, host: HostAPI) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._failure: SandboxError | None = None
        self._ctx = hostcalls.CallContext.under(limits, host)

    def _use_engine(self, engine: SandboxEngine) -> None:
        if not engine.running:
            raise RuntimeError(
                "start the SandboxEngine first: without its ticker no deadline fires"
            )
        self._engine = engine
        self._deadline_ticks = engine.deadline_ticks(self.limits.deadline_ms)

    @property
    def broken(self) -> bool:
        return self._failure is not None

    @property
    def failure(self) -> SandboxError | None:
        """Why the instance is broken (the error its failing call raised), if it is."""
        return self._failure

    def handle(self, message: bytes) -> CallResult:
        """Deliver one message to the agent's handler.

        A non-zero status from the agent is a result, not an error. Raises a `SandboxError`
        subclass if the guest fails, and `InstanceBroken` if it had failed before.
        """
        if len(message) > self.limits.budget.max_message_bytes:
            raise ValueError(
                f"message of {len(message)} bytes exceeds {self.limits.budget.max_message_bytes}"
            )
        if hostcalls.current() is self._ctx:
            # A HostAPI method calling back into its own agent would wait for itself forever.
            raise RuntimeError("re-entrant call: a host function called its own sandbox")
        with self._lock:
            return self._invoke(message)

    def close(self) -> None:
        """Free the instance now rather than at garbage collection. Safe to call twice."""
        with self._lock:
            if self._failure is None:
                self._break(InstanceBroken("the instance was closed"))

    def _invoke(self, message: bytes | None) -> CallResult:
        """One call: `message` to the handler, or None for the agent's init."""
        raise NotImplementedError

    def _usable(self) -> _LiveT:
        """The live instance, or `InstanceBroken` saying why there is none."""
        live = self._live
        if self._failure is not None or live is None:
            reason = self._failure.reason if self._failure else "the instance was closed"
            raise InstanceBroken(f"instance unusable: {reason}")
        return live

    def _arm(self, store: wasmtime.Store) -> hostcalls.CallContext:
        """Give the next call (or instantiation: a start function must be bounded like any
        call) its full fuel, a fresh deadline and a clean context, which is returned."""
        store.set_fuel(self.limits.fuel_per_call)
        store.set_epoch_deadline(self._engine.epoch_deadline(self._deadline_ticks))
        self._ctx.reset()
        return self._ctx

    def _break(self, error: SandboxError) -> None:
        self._failure = error
        # Dropping the store frees linear memory now; a memory bomb's 64 MiB should not wait
        # for the pod to drop its reference to the sandbox.
        self._live = None
        self._ctx.memory = None

    def _fuel_exhausted(self) -> FuelExhausted:
        return FuelExhausted(f"used all {self.limits.fuel_per_call} fuel of the call")

    def _deadline_exceeded(self, elapsed_s: float) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"ran past its deadline of {self.limits.deadline_ms} ms "
            f"(stopped after {elapsed_s * 1000:.0f} ms)"
        )


class AgentSandbox(Instance[_Live]):
    """An instantiated agent. Calls are serialized; run different sandboxes on different threads
    to run them in parallel (wasm runs without the GIL).

    Creating one instantiates the module in a new Store and runs `swarm_init` if exported, under
    the same limits as a call. Raises `MemoryLimitExceeded` if the module needs more memory than
    the limits allow, `InvalidModule` if it cannot be instantiated under them, `InitFailed` if
    swarm_init returns non-zero, and the call errors if swarm_init traps.
    """

    def __init__(
        self,
        engine: SandboxEngine,
        module: CompiledModule,
        limits: SandboxLimits,
        host: HostAPI,
    ) -> None:
        super().__init__(limits, host)
        self._use_engine(engine)
        if module.engine is not engine:
            raise ValueError("the module was loaded by another engine's ModuleCache")
        if module.min_memory_bytes > limits.memory_bytes:
            raise MemoryLimitExceeded(
                f"module needs {module.min_memory_bytes / _MIB:.1f} MiB of memory to start, "
                f"the limit is {limits.memory_bytes / _MIB:.1f} MiB"
            )
        self.module = module
        self._alloc_request = 0
        store = wasmtime.Store(engine.engine)
        store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=limits.max_table_elements,
            instances=1,
            tables=_MAX_TABLES,
            memories=_MAX_MEMORIES,
        )
        self._live = self._instantiate(store, module)
        self.init_result: CallResult | None = None
        if module.has_init:
            result = self._invoke(None)
            if not result.ok:
                self.close()
                raise InitFailed(f"swarm_init returned {result.status}", code=result.status)
            self.init_result = result

    def _instantiate(self, store: wasmtime.Store, module: CompiledModule) -> _Live:
        self._arm(store)
        started = time.perf_counter()
        try:
            with hostcalls.active(self._ctx):
                instance = module.instance_pre.instantiate(store)
        except (wasmtime.Trap, hostcalls.GuestAborted) as exc:
            self._failure = self._classify(exc, time.perf_counter() - started, store, None)
            raise self._failure from None
        except wasmtime.WasmtimeError as exc:
            # Not a trap: the store's limiter refused a table or memory the module declares.
            self._failure = InvalidModule(f"module cannot be instantiated within its limits: {exc}")
            raise self._failure from None
        exports = instance.exports(store)
        memory = exports[abi.EXPORT_MEMORY]
        alloc, handle = exports[abi.EXPORT_ALLOC], exports[abi.EXPORT_HANDLE]
        init = exports.get(abi.EXPORT_INIT)
        # ModuleCache checked kinds and types already; this only narrows them for mypy.
        if not (
            isinstance(memory, wasmtime.Memory)
            and isinstance(alloc, wasmtime.Func)
            and isinstance(handle, wasmtime.Func)
            and (init is None or isinstance(init, wasmtime.Func))
        ):
            raise InvalidModule("module exports do not match runtime/ABI.md")
        self._ctx.memory = memory
        return _Live(store, memory, alloc, handle, init)

    def _invoke(self, message: bytes | None) -> CallResult:
        """swarm_init, or a message delivered: swarm_alloc, copy it in, swarm_handle."""
        live = self._usable()
        store = live.store
        ctx = self._arm(store)
        self._alloc_request = 0
        started = time.perf_counter()
        try:
            with hostcalls.active(ctx):
                if message is None:
                    assert live.init is not None
                    status = live.init(store)
                else:
                    status = self._deliver(live, message)
        except (wasmtime.Trap, wasmtime.WasmtimeError, hostcalls.GuestAborted, SandboxError) as exc:
            error = self._classify(exc, time.perf_counter() - started, store, live.memory)
            self._break(error)
            raise error from None
        except BaseException as exc:
            # Our own bug, not the guest's: keep its traceback, but never reuse the instance.
            self._break(AgentTrap(f"sandbox failed: {type(exc).__name__}: {exc}"))
            raise
        duration = time.perf_counter() - started
        if ctx.fault is not None:  # a host function failed but the guest was not unwound
            self._break(ctx.fault)
            raise ctx.fault
        return CallResult(
            status=int(status),
            replies=tuple(ctx.replies),
            fuel_used=self.limits.fuel_per_call - store.get_fuel(),
            duration_s=duration,
            memory_bytes=live.memory.data_len(store),
            logs_dropped=ctx.logs_dropped,
        )

    def _deliver(self, live: _Live, message: bytes) -> int:
        store, size = live.store, len(message)
        # Remembered for _classify: an allocator failing for a message larger than the memory
        # left is out of memory even when there is still more than a page free.
        self._alloc_request = size
        ptr = int(live.alloc(store, size)) & _U32
        self._alloc_request = 0
        memory_size = live.memory.data_len(store)
        if ptr + size > memory_size:
            raise AgentTrap(
                f"trapped: {abi.EXPORT_ALLOC}({size}) returned [{ptr:#x}, +{size}), "
                f"outside guest memory ({memory_size} bytes)"
            )
        if size:
            live.memory.write(store, message, ptr)
        return int(live.handle(store, ptr, size))

    def _classify(
        self,
        exc: BaseException,
        elapsed_s: float,
        store: wasmtime.Store,
        memory: wasmtime.Memory | None,
    ) -> SandboxError:
        # The context's record is authoritative: the exception that reaches us may belong to
        # another sandbox's host call (see runtime/hostcalls.py).
        if self._ctx.fault is not None:
            return self._ctx.fault
        detail: str | None = None
        cause: SandboxError
        if isinstance(exc, SandboxError):
            cause = exc
        elif isinstance(exc, wasmtime.Trap):
            detail = exc.message
            if exc.trap_code is wasmtime.TrapCode.OUT_OF_FUEL:
                cause = self._fuel_exhausted()
            elif exc.trap_code is wasmtime.TrapCode.INTERRUPT:
                cause = self._deadline_exceeded(elapsed_s)
            else:
                cause = AgentTrap(f"trapped: {_trap_reason(detail)}", detail=detail)
        elif isinstance(exc, wasmtime.WasmtimeError):
            detail = str(exc)
            cause = AgentTrap(f"trapped: {_trap_reason(detail)}", detail=detail)
        else:
            # Another thread took this call's trap out of wasmtime-py's shared slot and left us
            # its host error; the trap is lost, but fuel and the clock say what stopped us.
            cause = self._inferred_cause(store, elapsed_s)
        if memory is not None and self._memory_full(store, memory, self._alloc_request):
            mib = self.limits.memory_bytes / _MIB
            return MemoryLimitExceeded(
                f"reached its memory limit of {mib:.1f} MiB, then: {cause.reason}",
                detail=detail or cause.detail,
            )
        return cause

    def _inferred_cause(self, store: wasmtime.Store, elapsed_s: float) -> SandboxError:
        if store.get_fuel() == 0:
            return self._fuel_exhausted()
        if elapsed_s * 1000 >= self.limits.deadline_ms:
            return self._deadline_exceeded(elapsed_s)
        return AgentTrap("trapped (wasmtime's trap detail was lost to a concurrent host error)")

    def _memory_full(self, store: wasmtime.Store, memory: wasmtime.Memory, wanted: int) -> bool:
        """True when the limiter would refuse one more page, or the `wanted` bytes.

        wasmtime does not tell the embedder that it refused a memory.grow (the guest just sees
        -1), so a failure with memory at the limit is put down to the limit: that is what an
        allocator that aborts, or a guest that ignores -1 and spins, looks like from outside.
        """
        growth = max(memory.page_size(store), wanted)
        return memory.data_len(store) + growth > self.limits.memory_bytes
