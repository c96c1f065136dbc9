"""Agents that are WebAssembly components of the WIT world `swarm:agent` (runtime/wit/agent.wit).

Python agents built with componentize-py (runtime/build.py) are components. They get the same
host services, budgets, limits and typed failures as core modules (runtime/ABI.md); only the
calling convention differs (the canonical ABI moves bytes and strings, no pointers). This module
has the two pieces the core path has in runtime/modules.py and runtime/sandbox.py:

- `ComponentCache` compiles a component once and keeps it in memory (LRU) and on disk, serialized,
  under the same directory conventions as `ModuleCache` (private 0700 directory, atomic renames;
  the file name carries the sha256 and the engine fingerprint). A new component first gets
  quick baseline code (winch) and its optimized code (cranelift) in the background, and the pods
  of a machine share one directory so it is compiled once per machine (see the class);
- `ComponentSandbox` instantiates one in its own Store with fuel, an epoch deadline per call and
  a memory limit, and answers `handle(message) -> CallResult` like `AgentSandbox`.

componentize-py components import WASI preview 2 (the Python runtime needs a clock, random and
stdio); they get a WASI context with no preopened directories, no environment, no arguments and
no network, and their stdout/stderr are captured (bounded) so a Python traceback becomes the
reason of the failure. The spec's capabilities widen that context (`wasi_config`, runtime/ABI.md):
"env" sets the environment to the spec's `env`, "fs" preopens a per-replica scratch directory
as `/data`; "net" enables the `http-request` host function (WASI sockets stay denied: this
wasmtime-py has no switch for them).
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import gc
import hashlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import structlog
import wasmtime
import wasmtime.component as wc

from runtime import hostcalls
from runtime.abi import ErrorCode, LogLevel
from runtime.engine import SandboxEngine, StrategyUnavailable
from runtime.errors import (
    AgentTrap,
    InitFailed,
    InvalidModule,
    MemoryLimitExceeded,
    SandboxError,
)
from runtime.host import HostAPI
from runtime.limits import SandboxLimits
from runtime.modules import CacheStats, MemoryTier, store_compiled
from runtime.sandbox import CallResult, Instance, _trap_reason

log = structlog.get_logger(__name__)

#: The WIT package version this host implements; components built against it import these names.
WIT_VERSION: Final = "0.1.0"
HOST_INTERFACE: Final = f"swarm:agent/host@{WIT_VERSION}"
HANDLER_INTERFACE: Final = f"swarm:agent/handler@{WIT_VERSION}"
WIT_DIR: Final = Path(__file__).parent / "wit"
WORLD: Final = "agent"

#: Version and layer bytes of a component binary (a core module has 01 00 00 00).
COMPONENT_HEADER: Final = b"\0asm\x0d\x00\x01\x00"
_MIB: Final = 1024 * 1024
#: A component is several core instances, memories and tables (Python, libc, WASI adapter...).
_MAX_INSTANCES: Final = 64
_MAX_TABLES: Final = 64
_MAX_MEMORIES: Final = 16
#: Captured guest stdout/stderr per call (the tail is kept: a traceback ends with the error).
_MAX_OUTPUT: Final = 4096
#: Where the "fs" capability's scratch directory appears in the guest.
SCRATCH_GUEST_PATH: Final = "/data"


def is_component(wasm: bytes) -> bool:
    return wasm[:8] == COMPONENT_HEADER


@dataclass(frozen=True, slots=True)
class CompiledComponent:
    sha256: str
    engine: SandboxEngine
    component: wc.Component
    init_index: wc.ExportIndex
    handle_index: wc.ExportIndex
    #: Compiled by cranelift; False: winch's baseline code, replaced once the optimized is ready.
    optimized: bool = True


# --- host functions ------------------------------------------------------------------------------
# Same checks and budgets as runtime/hostcalls.py, on values the canonical ABI already lifted.


def _reply(ctx: hostcalls.CallContext, message: bytes) -> None:
    hostcalls.admit_reply(ctx, len(message))
    ctx.replies.append(message)


def _send(ctx: hostcalls.CallContext, to: str, message: bytes) -> int:
    return hostcalls.send(ctx, to.encode(), message)


def _emit(ctx: hostcalls.CallContext, event_type: str, data: bytes) -> int:
    return hostcalls.emit(ctx, event_type.encode(), data)


def _log(ctx: hostcalls.CallContext, level: int, message: str) -> None:
    if not hostcalls.admit_log(ctx):
        return
    budget = ctx.budget
    raw = message.encode()
    if len(raw) > budget.max_log_bytes:
        kept = raw[: budget.max_log_bytes].decode("utf-8", errors="ignore")
        message = f"{kept}... [{len(raw) - budget.max_log_bytes} bytes cut]"
    ctx.host.log(LogLevel.clamp(level), message)


def _kv_get(ctx: hostcalls.CallContext, key: str) -> bytes | int:
    value = hostcalls.kv_get(ctx, key.encode())
    return int(value) if isinstance(value, ErrorCode) else bytes(value)


def _kv_put(ctx: hostcalls.CallContext, key: str, value: bytes) -> int:
    return hostcalls.kv_put(ctx, key.encode(), value)


def _kv_delete(ctx: hostcalls.CallContext, key: str) -> int:
    return hostcalls.kv_delete(ctx, key.encode())


def _now_ms(ctx: hostcalls.CallContext) -> int:
    return ctx.host.now_ms()


def _random(ctx: hostcalls.CallContext, size: int) -> bytes:
    return hostcalls.random_bytes(ctx, size)


def _vector_store(ctx: hostcalls.CallContext, request_text: str) -> int:
    return hostcalls.vector_store_request(ctx, request_text.encode())


def _vector_search(ctx: hostcalls.CallContext, query_text: str) -> str | int:
    result = hostcalls.vector_search_request(ctx, query_text.encode())
    return int(result) if isinstance(result, ErrorCode) else result.decode()


def _http_request(ctx: hostcalls.CallContext, request_text: str) -> str | int:
    result = hostcalls.http_request(ctx, request_text.encode())
    return int(result) if isinstance(result, ErrorCode) else result.decode()


def _as_code(impl: Callable[..., Any]) -> Callable[..., Any]:
    """IntEnum results become plain ints: wasmtime lowers `s32` from `int`."""

    def wrapped(ctx: hostcalls.CallContext, *args: Any) -> Any:
        result = impl(ctx, *args)
        return int(result) if isinstance(result, ErrorCode) else result

    return wrapped


#: WIT function names (kebab-case) to implementations.
_IMPLEMENTATIONS: Final[dict[str, Callable[..., Any]]] = {
    "reply": _reply,
    "send": _as_code(_send),
    "emit": _as_code(_emit),
    "log": _log,
    "kv-get": _kv_get,
    "kv-put": _as_code(_kv_put),
    "kv-delete": _as_code(_kv_delete),
    "now-ms": _now_ms,
    "random": _random,
    "vector-store": _as_code(_vector_store),
    "vector-search": _vector_search,
    "http-request": _http_request,
}


def _guarded(name: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    qualified = f"{HOST_INTERFACE}#{name}"

    def host_function(_store: wasmtime.StoreContext, *args: Any) -> Any:
        return hostcalls.run_guarded(qualified, lambda ctx: impl(ctx, *args))

    host_function.__qualname__ = host_function.__name__ = f"host_{name.replace('-', '_')}"
    return host_function


#: The `swarm:agent/host` functions by WIT name, as the Linker gives them to components:
#: `(store, *args)`, run while a `hostcalls.CallContext` is active; a guest mistake or a host
#: failure is recorded as the context's `fault` and raised as `hostcalls.GuestAborted`.
#: `swarm_agent.testing` calls the same functions, so agents' unit tests meet the same checks.
HOST_FUNCTIONS: Final[Mapping[str, Callable[..., Any]]] = MappingProxyType(
    {name: _guarded(name, impl) for name, impl in _IMPLEMENTATIONS.items()}
)


def build_component_linker(engine: wasmtime.Engine) -> wc.Linker:
    """WASI preview 2 (sandboxed by the Store's WasiConfig) plus the `swarm:agent/host` instance."""
    linker = wc.Linker(engine)
    linker.add_wasip2()
    with linker.root() as root, root.add_instance(HOST_INTERFACE) as host:
        for name, function in HOST_FUNCTIONS.items():
            host.add_func(name, function)
    return linker


# --- compiling and caching ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComponentCacheStats(CacheStats):
    """What a `ModuleCache` counts, where `compiles` are the optimizing (cranelift) ones, in the
    foreground or the background, and the baseline compiles besides."""

    #: Baseline (winch) compiles: the quick first compile of a component not cached yet.
    baseline_compiles: int = 0


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on `<path>.lock` (nothing without a path): pods of one machine sharing a
    cache directory compile a component once, the others wait and read the file."""
    if path is None:
        yield
        return
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class ComponentCache:
    """Loads components for one engine: memory (LRU) first, then the disk cache, then compiling.

    Tiers. A component found in neither cache is compiled by winch, wasmtime's baseline compiler
    (about 7x less CPU than cranelift on a Python component; its code runs about 1.8x slower), so
    its first instance starts in seconds; cranelift then compiles it in a background thread, the
    result goes to memory and disk, and every later load gets it (a restart, a scale-up, another
    pod of the machine). A running instance stays on the code it started on: moving it would
    mean a new instance, whose `init` (and whatever it sends) would run again without the agent
    having done anything to deserve a restart. With `baseline=False`, or where this wasmtime has
    no winch, `load` compiles with cranelift and returns only then.

    The disk cache may be shared by the pods of a machine (and `ModuleCache`'s directory):
    component files are named `<sha256>-<fingerprint>.component.cwasm`, written by atomic rename,
    and an optimizing compile holds an exclusive lock on `<file>.lock`, so one pod compiles and
    the others read its file. Thread-safe; foreground compiles are serialized (two at once only
    compete for the same cores), memory hits never wait for a compile.
    """

    def __init__(
        self,
        engine: SandboxEngine,
        cache_dir: Path | None = None,
        *,
        capacity: int = 16,
        baseline: bool = True,
    ) -> None:
        self._memory: MemoryTier[CompiledComponent] = MemoryTier(
            capacity, [counter.name for counter in dataclasses.fields(ComponentCacheStats)]
        )
        self.engine = engine
        self.linker = build_component_linker(engine.engine)
        self._dir = cache_dir
        if cache_dir is not None:
            cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._compile_lock = threading.Lock()
        self._want_baseline = baseline
        self._baseline: tuple[SandboxEngine, wc.Linker] | None = None
        #: sha256 -> set once its optimizing compile in the background is over (done or failed).
        self._optimizing: dict[str, threading.Event] = {}

    @property
    def cache_dir(self) -> Path | None:
        return self._dir

    @property
    def stats(self) -> ComponentCacheStats:
        return ComponentCacheStats(**self._memory.counts())

    def path(self, sha256: str) -> Path | None:
        if self._dir is None:
            return None
        return self._dir / f"{sha256}-{self.engine.fingerprint}.component.cwasm"

    def engines(self) -> tuple[SandboxEngine, ...]:
        """The engines components of this cache may belong to (the baseline one once made)."""
        baseline = self._baseline
        return (self.engine,) if baseline is None else (self.engine, baseline[0])

    def linker_for(self, component: CompiledComponent) -> wc.Linker:
        baseline = self._baseline
        if component.engine is self.engine:
            return self.linker
        if baseline is not None and component.engine is baseline[0]:
            return baseline[1]
        raise ValueError("the component was loaded by another engine's ComponentCache")

    def load(self, wasm: bytes) -> CompiledComponent:
        """The compiled component; InvalidModule with the engine's reason if it is not one we
        can run (not a component, not of the `swarm:agent` world, does not compile)."""
        sha256 = hashlib.sha256(wasm).hexdigest()
        hit = self._memory.hit(sha256)
        if hit is not None:
            return hit
        with self._compile_lock:
            hit = self._memory.hit(sha256)  # loaded while this thread waited
            if hit is not None:
                return hit
            compiled = self._load_uncached(sha256, wasm)
            self._remember(compiled)
            return compiled

    def cached(self, sha256: str) -> CompiledComponent | None:
        """The optimized component by its digest, from memory or disk, or None: for a pod that
        would rather not fetch bytes it has already compiled."""
        hit = self._memory.hit(sha256)
        if hit is not None and hit.optimized:
            return hit
        compiled = self._from_disk(sha256)
        if compiled is not None:
            self._remember(compiled)
        return compiled

    def optimized(self, sha256: str) -> CompiledComponent | None:
        """The optimized component if it is in memory now (never waits, never reads disk)."""
        compiled = self._memory.peek(sha256)
        return compiled if compiled is not None and compiled.optimized else None

    def wait_optimized(self, sha256: str, timeout: float | None = None) -> bool:
        """Wait for a background optimizing compile of `sha256`; True when none is running."""
        with self._lock:
            event = self._optimizing.get(sha256)
        return event is None or event.wait(timeout)

    def close(self) -> None:
        """Stop the baseline engine's clock; safe twice. Instances on baseline code lose their
        deadline, so close the cache after them (a pod's cache lives as long as the pod)."""
        baseline = self._baseline
        if baseline is not None:
            baseline[0].stop()

    # -- inside ---------------------------------------------------------------------------------

    def _remember(self, compiled: CompiledComponent) -> None:
        # Never replace optimized code by baseline code.
        self._memory.put(
            compiled.sha256,
            compiled,
            unless=lambda current: current.optimized and not compiled.optimized,
        )

    def _from_disk(self, sha256: str) -> CompiledComponent | None:
        path = self.path(sha256)
        if path is None or not path.exists():
            return None
        try:
            component = wc.Component.deserialize_file(self.engine.engine, str(path))
        except wasmtime.WasmtimeError as exc:
            self._memory.count("disk_errors")
            log.warning("component cache file unusable", path=str(path), error=str(exc))
            return None
        self._memory.count("disk_hits")
        return self._prepare(sha256, component, self.engine, optimized=True)

    def _load_uncached(self, sha256: str, wasm: bytes) -> CompiledComponent:
        compiled = self._from_disk(sha256)
        if compiled is not None:
            return compiled
        if not is_component(wasm):
            raise InvalidModule("not a WebAssembly component (no component header)")
        baseline = self._baseline_engine()
        if baseline is None:
            return self._compile_optimized(sha256, wasm)
        try:
            component = wc.Component(baseline.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"component does not compile: {exc}") from None
        self._memory.count("baseline_compiles")
        compiled = self._prepare(sha256, component, baseline, optimized=False)
        event = threading.Event()
        with self._lock:
            self._optimizing[sha256] = event
        threading.Thread(
            target=self._optimize,
            args=(sha256, wasm, event),
            name=f"swarm-optimize-{sha256[:12]}",
            daemon=True,
        ).start()
        return compiled

    def _compile_optimized(self, sha256: str, wasm: bytes) -> CompiledComponent:
        path = self.path(sha256)
        with _file_lock(path):
            compiled = self._from_disk(sha256)  # another pod of the machine may have made it
            if compiled is not None:
                return compiled
            try:
                component = wc.Component(self.engine.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise InvalidModule(f"component does not compile: {exc}") from None
            self._memory.count("compiles")
            compiled = self._prepare(sha256, component, self.engine, optimized=True)
            if path is not None:
                store_compiled(path, component.serialize, "component")
        return compiled

    def _optimize(self, sha256: str, wasm: bytes, done: threading.Event) -> None:
        try:
            self._remember(self._compile_optimized(sha256, wasm))
        except Exception as exc:  # the agent keeps running, on baseline code
            log.warning("optimizing compile failed", sha256=sha256, error=str(exc))
        finally:
            with self._lock:
                self._optimizing.pop(sha256, None)
            done.set()

    def _baseline_engine(self) -> SandboxEngine | None:
        if not self._want_baseline:
            return None
        if self._baseline is None:
            try:
                engine = SandboxEngine(dataclasses.replace(self.engine.config, strategy="winch"))
            except (StrategyUnavailable, wasmtime.WasmtimeError) as exc:
                log.warning(
                    "no baseline compiler; components compile with cranelift", error=str(exc)
                )
                self._want_baseline = False
                return None
            engine.start()
            self._baseline = (engine, build_component_linker(engine.engine))
        return self._baseline[0]

    def _prepare(
        self, sha256: str, component: wc.Component, engine: SandboxEngine, *, optimized: bool
    ) -> CompiledComponent:
        interface = component.get_export_index(HANDLER_INTERFACE)
        if interface is None:
            raise InvalidModule(
                f'component does not export "{HANDLER_INTERFACE}" (build it for the '
                f"swarm:agent world, runtime/wit/agent.wit)"
            )
        init = component.get_export_index("init", interface)
        handle = component.get_export_index("handle", interface)
        if init is None or handle is None:
            raise InvalidModule(f'component\'s "{HANDLER_INTERFACE}" lacks init or handle')
        imports = component.type.imports(engine.engine)
        for name in imports:
            if name.startswith("swarm:") and name != HOST_INTERFACE:
                raise InvalidModule(
                    f"component imports {name}; this host provides {HOST_INTERFACE}"
                )
            if not name.startswith(("swarm:", "wasi:")):
                raise InvalidModule(f"component imports {name}, which the host does not provide")
        return CompiledComponent(sha256, engine, component, init, handle, optimized)


# --- the sandbox ---------------------------------------------------------------------------------


class _Output:
    """The guest's stdout/stderr, keeping the last `_MAX_OUTPUT` bytes."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data = (self.data + chunk)[-_MAX_OUTPUT:]

    def exception(self) -> str:
        """The last line of a Python traceback the guest printed (`ValueError: ...`), if any.

        componentize-py prints an uncaught exception's traceback, then a Rust panic message
        (`thread '<unnamed>' panicked at ...`), then traps.
        """
        text = self.data.decode("utf-8", "replace")
        if "Traceback (most recent call last)" not in text:
            return ""
        tail = text.rsplit("Traceback (most recent call last)", 1)[1]
        # Out of memory, CPython cannot format the exception and dumps the object instead.
        for prefix in ("object repr     :", "object type name:"):
            for line in tail.splitlines():
                if line.startswith(prefix):
                    return line.removeprefix(prefix).strip()
        for line in tail.splitlines()[1:]:
            if line and not line[0].isspace():
                return line.strip()
        return ""


#: Live sandboxes, closed at interpreter exit: a Store dropped during interpreter finalization
#: lets wasmtime's WASI output threads call back into a Python that is gone (a Rust panic).
_SANDBOXES: weakref.WeakSet[ComponentSandbox] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for sandbox in list(_SANDBOXES):
        sandbox.close()
    gc.collect()  # Stores only reachable from garbage cycles go now, not during finalization


@dataclass(slots=True)
class _Live:
    store: wasmtime.Store
    init: wc.Func
    handle: wc.Func


def wasi_config(
    limits: SandboxLimits, scratch_dir: Path | None, output: Callable[[bytes], None]
) -> wasmtime.WasiConfig:
    """The WASI context of one instance: nothing (no preopens, env, args or network) beyond what
    `limits.capabilities` grant. stdout and stderr go to `output`.

    - "env": the environment is exactly `limits.env` (never anything of the pod's own);
    - "fs": `scratch_dir` (which must exist) is preopened read-write as `/data`, nothing else;
    - "net" is not WASI here (wasmtime-py's `WasiConfig` has no network switch): it is the
      `http-request` host function (runtime/net.py); WASI sockets stay denied.
    """
    granted = limits.capabilities
    wasi = wasmtime.WasiConfig()
    if "env" in granted and limits.env:
        wasi.env = [[name, value] for name, value in limits.env]
    if "fs" in granted:
        if scratch_dir is None:
            raise InvalidModule("fs capability granted but this pod has no scratch directory")
        if not scratch_dir.is_dir():
            raise InvalidModule(f"fs capability: scratch directory {scratch_dir} does not exist")
        wasi.preopen_dir(str(scratch_dir), SCRATCH_GUEST_PATH, True)
    wasi.stdout_custom = output
    wasi.stderr_custom = output
    return wasi


class ComponentSandbox(Instance[_Live]):
    """An instantiated component agent; the component twin of `AgentSandbox`.

    Creating one instantiates the component in a new Store and calls the handler's `init`
    under the same limits as a message (`InitFailed` if it returns non-zero). `handle` returns a
    `CallResult`; any guest failure raises a `SandboxError` subclass and breaks the instance.
    `scratch_dir` is the replica's own directory, preopened as `/data` if "fs" is granted.

    It runs the code it started on for its whole life (see `ComponentCache`, "Tiers").
    """

    def __init__(
        self,
        cache: ComponentCache,
        component: CompiledComponent,
        limits: SandboxLimits,
        host: HostAPI,
        *,
        scratch_dir: Path | None = None,
    ) -> None:
        super().__init__(limits, host)
        self.component = component
        self._cache = cache
        self._scratch_dir = scratch_dir
        self._output = _Output()
        self._live = None
        self._start(component)

    def _start(self, component: CompiledComponent) -> None:
        """Make a new instance of `component` in a new Store the live one, and run its `init`."""
        engine = component.engine
        if engine not in self._cache.engines():
            raise ValueError("the component was loaded by another engine's ComponentCache")
        self._use_engine(engine)
        wasi = wasi_config(self.limits, self._scratch_dir, self._output.write)
        store = wasmtime.Store(engine.engine)
        store.set_limits(
            memory_size=self.limits.memory_bytes,
            table_elements=self.limits.max_table_elements,
            instances=_MAX_INSTANCES,
            tables=_MAX_TABLES,
            memories=_MAX_MEMORIES,
        )
        store.set_wasi(wasi)
        self._live = self._instantiate(self._cache.linker_for(component), store, component)
        self.component = component
        _SANDBOXES.add(self)
        result = self._invoke(None)
        if not result.ok:
            self.close()
            raise InitFailed(f"init returned {result.status}", code=result.status)
        self.init_result = result

    def _instantiate(
        self, linker: wc.Linker, store: wasmtime.Store, component: CompiledComponent
    ) -> _Live:
        self._arm(store)
        started = time.perf_counter()
        error: SandboxError | None = None
        try:
            with hostcalls.active(self._ctx):
                instance = linker.instantiate(store, component.component)
        except (wasmtime.WasmtimeError, hostcalls.GuestAborted) as exc:
            error = self._classify(exc, time.perf_counter() - started, store)
        if error is not None:
            del store  # see _invoke
            self._break(error)
            raise error
        init = instance.get_func(store, component.init_index)
        handle = instance.get_func(store, component.handle_index)
        if init is None or handle is None:
            raise InvalidModule(f'component\'s "{HANDLER_INTERFACE}" lacks init or handle')
        return _Live(store, init, handle)

    def _invoke(self, message: bytes | None) -> CallResult:
        live = self._usable()
        store = live.store
        ctx = self._arm(store)
        self._output.data = b""
        started = time.perf_counter()
        error: SandboxError | None = None
        status = 0
        try:
            with hostcalls.active(ctx):
                if message is None:
                    status = live.init(store)
                    live.init.post_return(store)
                else:
                    status = live.handle(store, message)
                    live.handle.post_return(store)
        except (wasmtime.WasmtimeError, hostcalls.GuestAborted, SandboxError) as exc:
            error = self._classify(exc, time.perf_counter() - started, store)
        except BaseException as exc:
            self._break(AgentTrap(f"sandbox failed: {type(exc).__name__}: {exc}"))
            raise
        duration = time.perf_counter() - started
        fuel_used = self.limits.fuel_per_call - store.get_fuel()
        error = error or ctx.fault
        if error is not None:
            # Raised outside the except block and without this frame's reference to the Store,
            # so a failure kept by the caller does not keep the instance (and its WASI context,
            # whose output threads must not outlive the interpreter) alive.
            del live, store
            self._break(error)
            raise error
        return CallResult(
            status=int(status),
            replies=tuple(ctx.replies),
            fuel_used=fuel_used,
            duration_s=duration,
            memory_bytes=0,  # wasmtime-py exposes no component memories; see report
            logs_dropped=ctx.logs_dropped,
        )

    def _classify(
        self, exc: BaseException, elapsed_s: float, store: wasmtime.Store
    ) -> SandboxError:
        if self._ctx.fault is not None:
            return self._ctx.fault
        if isinstance(exc, SandboxError):
            return exc
        lost = isinstance(exc, hostcalls.GuestAborted)
        # A GuestAborted without a fault of ours is another sandbox's host error that wasmtime-py's
        # process-wide exception slot handed to this call (see runtime/hostcalls.py).
        detail = "" if lost else str(exc)
        if store.get_fuel() == 0 or "all fuel consumed" in detail:
            return self._fuel_exhausted()
        if "interrupt" in detail or elapsed_s * 1000 >= self.limits.deadline_ms:
            return self._deadline_exceeded(elapsed_s)
        mib = self.limits.memory_bytes / _MIB
        if "exceeds memory limits" in detail:  # refused at instantiation
            return MemoryLimitExceeded(
                f"needs more memory to start than its limit of {mib:.1f} MiB: "
                f"{_trap_reason(detail)}",
                detail=detail,
            )
        exception = self._output.exception()
        if exception.startswith("MemoryError"):
            return MemoryLimitExceeded(
                f"reached its memory limit of {mib:.1f} MiB, then: {exception}", detail=detail
            )
        if exception:
            return AgentTrap(f"uncaught Python exception: {exception}", detail=detail)
        if lost:
            return AgentTrap("trapped (wasmtime's trap detail was lost to a concurrent host error)")
        return AgentTrap(f"trapped: {_trap_reason(detail)}", detail=detail)
