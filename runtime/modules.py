"""Compiled agent modules: validated against the ABI, compiled once, cached in memory and on disk.

A module is identified by the sha256 of its bytes plus the engine's fingerprint, so a restart or
a redeploy of the same agent deserializes machine code (milliseconds) instead of compiling it
again (up to seconds for big modules).

The disk cache holds native code that wasmtime maps and runs without re-checking it, so the
directory must be private to the pod: anyone who can write there can run code in the pod.
It is created with mode 0700 and files are replaced by atomic rename, never rewritten in place
(a deserialized module keeps its file mapped; truncating it under a live module would crash).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Generic, TypeVar

import structlog
import wasmtime

from runtime import abi
from runtime.engine import SandboxEngine
from runtime.errors import InvalidModule

log = structlog.get_logger(__name__)

_WASM_MAGIC = b"\0asm"

_C = TypeVar("_C")


@dataclass(frozen=True, slots=True)
class CompiledModule:
    """A module ready to instantiate: compiled, checked against the ABI, imports resolved."""

    sha256: str
    #: The engine it was compiled for; it runs in no other.
    engine: SandboxEngine
    module: wasmtime.Module
    instance_pre: wasmtime.InstancePre
    #: Linear memory the module asks for at instantiation, to refuse it before trying.
    min_memory_bytes: int
    has_init: bool


@dataclass(frozen=True, slots=True)
class CacheStats:
    compiles: int = 0
    disk_hits: int = 0
    memory_hits: int = 0
    #: Cache files that could not be used (corrupt, or from an incompatible wasmtime).
    disk_errors: int = 0


class MemoryTier(Generic[_C]):
    """The memory tier of a compile cache (this module's `ModuleCache`, `ComponentCache`): the
    `capacity` most recently used compiled codes by sha256, and the cache's counts. Thread-safe.
    """

    def __init__(self, capacity: int, counters: Iterable[str]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, _C] = OrderedDict()
        self._counts = dict.fromkeys(counters, 0)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def count(self, counter: str) -> None:
        with self._lock:
            self._counts[counter] += 1

    def hit(self, sha256: str) -> _C | None:
        """The compiled code of `sha256`, now the most recently used (a `memory_hits`), or None."""
        with self._lock:
            compiled = self._lru.get(sha256)
            if compiled is not None:
                self._lru.move_to_end(sha256)
                self._counts["memory_hits"] += 1
            return compiled

    def peek(self, sha256: str) -> _C | None:
        """The compiled code of `sha256` without counting a hit or making it recent, or None."""
        with self._lock:
            return self._lru.get(sha256)

    def put(self, sha256: str, compiled: _C, *, unless: Callable[[_C], bool] | None = None) -> None:
        """Keep `compiled` as the most recently used, dropping the least recently used beyond
        the capacity; not while the code kept for `sha256` satisfies `unless`."""
        with self._lock:
            current = self._lru.get(sha256)
            if current is not None and unless is not None and unless(current):
                return
            self._lru[sha256] = compiled
            self._lru.move_to_end(sha256)
            while len(self._lru) > self._capacity:
                self._lru.popitem(last=False)


def _wasm_type(ty: wasmtime.ValType) -> abi.WasmType | None:
    name = str(ty)
    if name == "i32":
        return "i32"
    if name == "i64":
        return "i64"
    return None


def _signature(ty: wasmtime.FuncType) -> abi.Signature | None:
    """The ABI's view of a function type; None when it uses types the ABI never does."""
    params = [_wasm_type(t) for t in ty.params]
    results = [_wasm_type(t) for t in ty.results]
    checked_params = tuple(t for t in params if t is not None)
    checked_results = tuple(t for t in results if t is not None)
    if len(checked_params) != len(params) or len(checked_results) != len(results):
        return None
    return abi.Signature(checked_params, checked_results)


def abi_problems(module: wasmtime.Module) -> list[str]:
    """Every way `module` departs from runtime/ABI.md; empty when it conforms."""
    problems: list[str] = []
    for imp in module.imports:
        where = f"{imp.module}::{imp.name}"
        if imp.module in abi.WASI_MODULES:
            problems.append(
                f"imports {where}: WASI is not available to core agents "
                "(the fs, net and env capabilities are not implemented for core modules yet)"
            )
        elif imp.module != abi.IMPORT_MODULE:
            problems.append(
                f'imports {where}: core agents may import only from "{abi.IMPORT_MODULE}"'
            )
        elif imp.name not in abi.IMPORTS:
            problems.append(f"imports {where}, which the host does not provide")
        else:
            expected = abi.IMPORTS[imp.name]
            ty = imp.type
            got = _signature(ty) if isinstance(ty, wasmtime.FuncType) else None
            if got != expected:
                problems.append(f"imports {where} with the wrong type; the ABI says {expected}")

    exports = {exp.name: exp.type for exp in module.exports}
    memory = exports.get(abi.EXPORT_MEMORY)
    if not isinstance(memory, wasmtime.MemoryType):
        problems.append(f'does not export a memory named "{abi.EXPORT_MEMORY}"')
    elif memory.is_64 or memory.is_shared:
        problems.append(f'exports "{abi.EXPORT_MEMORY}" as a 64-bit or shared memory')
    for required, functions in ((True, abi.REQUIRED_FUNCTIONS), (False, abi.OPTIONAL_FUNCTIONS)):
        for name, expected in functions.items():
            export_type = exports.get(name)
            if export_type is None:
                if required:
                    problems.append(f'does not export "{name}" {expected}')
            elif (
                not isinstance(export_type, wasmtime.FuncType)
                or _signature(export_type) != expected
            ):
                problems.append(f'exports "{name}" with the wrong type; the ABI says {expected}')
    return problems


def _min_memory_bytes(module: wasmtime.Module) -> int:
    for exp in module.exports:
        if exp.name == abi.EXPORT_MEMORY and isinstance(exp.type, wasmtime.MemoryType):
            return exp.type.limits.min * 65536
    return 0


class ModuleCache:
    """Loads modules for one engine: memory (LRU) first, then the disk cache, then compiling.

    Thread-safe. Two threads loading the same new module compile it once; loads of other
    modules are not held up by a compile in progress.
    """

    def __init__(
        self, engine: SandboxEngine, cache_dir: Path | None = None, *, capacity: int = 64
    ) -> None:
        self._memory: MemoryTier[CompiledModule] = MemoryTier(
            capacity, [counter.name for counter in fields(CacheStats)]
        )
        self._engine = engine
        self._dir = cache_dir
        if cache_dir is not None:
            cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def stats(self) -> CacheStats:
        return CacheStats(**self._memory.counts())

    def load(self, wasm: bytes) -> CompiledModule:
        """The compiled module for `wasm`; InvalidModule gives the engine's or the ABI's reason."""
        sha256 = hashlib.sha256(wasm).hexdigest()
        hit = self._memory.hit(sha256)
        if hit is not None:
            return hit
        with self._lock:
            key_lock = self._loading.setdefault(sha256, threading.Lock())
        with key_lock:
            try:
                # Another thread may have finished loading it while this one waited.
                hit = self._memory.hit(sha256)
                if hit is not None:
                    return hit
                compiled = self._load_uncached(sha256, wasm)
                self._memory.put(sha256, compiled)
                return compiled
            finally:
                # Only after the LRU has it, so a newcomer either waits here or finds it there.
                with self._lock:
                    if self._loading.get(sha256) is key_lock:
                        del self._loading[sha256]

    def _path(self, sha256: str) -> Path | None:
        if self._dir is None:
            return None
        return self._dir / f"{sha256}-{self._engine.fingerprint}.cwasm"

    def _load_uncached(self, sha256: str, wasm: bytes) -> CompiledModule:
        path = self._path(sha256)
        if path is not None and path.exists():
            try:
                module = wasmtime.Module.deserialize_file(self._engine.engine, str(path))
            except wasmtime.WasmtimeError as exc:
                self._memory.count("disk_errors")
                log.warning("module cache file unusable, compiling", path=str(path), error=str(exc))
            else:
                self._memory.count("disk_hits")
                return self._prepare(sha256, module)
        module = self._compile(wasm)
        self._memory.count("compiles")
        compiled = self._prepare(sha256, module)
        # Only modules that passed the ABI check reach the disk, so a cache file is always usable.
        if path is not None:
            self._store(path, module)
        return compiled

    def _compile(self, wasm: bytes) -> wasmtime.Module:
        # wasmtime.Module() would parse bytes that do not start with the wasm magic as WAT text;
        # agents ship binaries, so validate first for the engine's binary-format reason.
        try:
            wasmtime.Module.validate(self._engine.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"not a valid WebAssembly module: {exc}") from None
        if not wasm.startswith(_WASM_MAGIC):  # validate() already refuses these; belt and braces
            raise InvalidModule("not a WebAssembly binary (no \\0asm header)")
        try:
            return wasmtime.Module(self._engine.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"module does not compile: {exc}") from None

    def _prepare(self, sha256: str, module: wasmtime.Module) -> CompiledModule:
        problems = abi_problems(module)
        if problems:
            raise InvalidModule("module " + "; ".join(problems) + " (see runtime/ABI.md)")
        try:
            pre = self._engine.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"module cannot be linked: {exc}") from None
        has_init = any(exp.name == abi.EXPORT_INIT for exp in module.exports)
        return CompiledModule(
            sha256, self._engine, module, pre, _min_memory_bytes(module), has_init
        )

    def _store(self, path: Path, module: wasmtime.Module) -> None:
        store_compiled(path, module.serialize, "module")


def store_compiled(path: Path, serialize: Callable[[], bytes | bytearray], what: str) -> None:
    """Write compiled code to the cache atomically (a reader never sees half a file).

    Whoever can write the cache directory can make the pod run native code, hence the atomic
    rename into a directory only the pod may write. A cache that cannot be written costs a
    compile at the next start, nothing more, so failures are only logged.
    """
    try:
        data = serialize()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, wasmtime.WasmtimeError) as exc:
        log.warning(f"could not write {what} cache file", path=str(path), error=str(exc))
