"""One wasmtime engine per pod: its configuration, its epoch clock and its host-function Linker.

Every agent of a pod shares the engine, so compiled code, the Linker and the epoch counter are
shared too; isolation comes from one Store per agent instance (runtime/sandbox.py).
"""

from __future__ import annotations

import enum
import hashlib
import importlib.metadata
import json
import math
import platform
import threading
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Literal

import wasmtime

from runtime import abi
from runtime.hostcalls import build_linker

OptLevel = Literal["none", "speed", "speed_and_size"]
#: "cranelift" optimizes (slow to compile, fast to run); "winch" is wasmtime's baseline compiler
#: (tier 1 on x86-64): measured here on a 19 MB Python component, 1.7 s of CPU to compile instead
#: of 12 s, running its Python about 1.8x slower. Components start on winch code while
#: cranelift compiles in the background (runtime/components.py).
Strategy = Literal["cranelift", "winch"]
#: The C API's `WASMTIME_STRATEGY_WINCH` (wasmtime.h: AUTO 0, CRANELIFT 1, WINCH 2).
_WASMTIME_STRATEGY_WINCH = 2


class StrategyUnavailable(Exception):
    """This wasmtime cannot compile with the asked strategy (its Python API offers no switch)."""


def _use_winch(config: wasmtime.Config) -> None:
    """Select winch. wasmtime-py 50's `Config.strategy` accepts only "auto" and "cranelift",
    although the C API it binds has winch: this is the one call to its generated bindings, and
    tests/runtime/test_components.py checks it still works with the pinned version."""
    try:
        from wasmtime import _ffi

        _ffi.wasmtime_config_strategy_set(config.ptr(), _WASMTIME_STRATEGY_WINCH)
    except (ImportError, AttributeError, TypeError) as exc:
        raise StrategyUnavailable(f"wasmtime offers no winch switch here: {exc}") from None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    #: Epoch granularity: deadlines are enforced to within about one tick.
    epoch_tick_ms: int = 10
    opt_level: OptLevel = "speed"
    strategy: Strategy = "cranelift"
    #: Guest stack; deep recursion traps (stack overflow) instead of growing past this.
    max_wasm_stack: int = 512 * 1024

    def __post_init__(self) -> None:
        if self.epoch_tick_ms < 1:
            raise ValueError("epoch_tick_ms must be >= 1")

    def fingerprint(self) -> str:
        """Identifies compiled code: modules compiled under another fingerprint are not reused.

        wasmtime refuses incompatible serialized code by itself; putting its version, the host
        and the settings in the cache key also keeps pods of different versions that share a
        cache directory from overwriting each other's files.
        """
        settings = asdict(self)
        del settings["epoch_tick_ms"]  # a runtime setting; compiled code does not depend on it
        if settings["strategy"] == "cranelift":
            del settings["strategy"]  # the fingerprint of code cached before it was a setting
        identity = {
            "wasmtime": importlib.metadata.version("wasmtime"),
            "machine": platform.machine(),
            "system": platform.system(),
            "abi": abi.ABI_VERSION,
            "consume_fuel": True,
            "epoch_interruption": True,
            **settings,
        }
        encoded = json.dumps(identity, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]


class TickerState(enum.Enum):
    STOPPED = "stopped"
    RUNNING = "running"


class EpochTicker:
    """A daemon thread advancing the engine's epoch every `interval_s`, which is what makes
    epoch deadlines fire. `start` and `stop` are idempotent, and it can be started again."""

    def __init__(self, engine: wasmtime.Engine, interval_s: float) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: (when the running thread started, ticks it has added): what `behind` reads.
        self._clock: tuple[float | None, int] = (None, 0)

    @property
    def state(self) -> TickerState:
        return TickerState.RUNNING if self._thread is not None else TickerState.STOPPED

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="swarm-epoch-ticker", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            thread.join(timeout)

    def behind(self) -> int:
        """Ticks the epoch owes the clock now (a late wake-up has not caught up yet). A deadline
        set now adds them, so the catch-up never cuts a call short of its time."""
        started, ticks = self._clock
        if started is None:
            return 0
        return max(0, int((time.monotonic() - started) / self._interval_s) - ticks)

    def _run(self, stop: threading.Event) -> None:
        # The epoch follows the monotonic clock, not the number of wake-ups: on a busy machine
        # every wake-up comes late (waiting for a core, then for the GIL), and one increment per
        # wake-up let a 1 s deadline run 3.6 s (measured with the suite beside a CPU hog). A late
        # wake-up catches up on the ticks it missed, so a deadline ends within about one tick and
        # one wake-up delay of its time.
        started = time.monotonic()
        ticks = 0
        self._clock = (started, ticks)
        while True:
            due = int((time.monotonic() - started) / self._interval_s)
            for _ in range(due - ticks):
                self._engine.increment_epoch()
            ticks = max(ticks, due)
            self._clock = (started, ticks)  # one assignment: `behind` reads a consistent pair
            if stop.wait(started + (ticks + 1) * self._interval_s - time.monotonic()):
                return


class SandboxEngine:
    """The pod's engine. Start it (or use `with`) before running agents: without the ticker,
    deadlines never fire and only fuel would stop a looping agent."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        wasm_config = wasmtime.Config()
        wasm_config.consume_fuel = True
        wasm_config.epoch_interruption = True
        wasm_config.cranelift_opt_level = self.config.opt_level
        wasm_config.max_wasm_stack = self.config.max_wasm_stack
        if self.config.strategy == "winch":
            _use_winch(wasm_config)
        self.engine = wasmtime.Engine(wasm_config)
        self.linker = build_linker(self.engine)
        self.fingerprint = self.config.fingerprint()
        self.ticker = EpochTicker(self.engine, self.config.epoch_tick_ms / 1000)

    @property
    def running(self) -> bool:
        return self.ticker.state is TickerState.RUNNING

    def start(self) -> None:
        self.ticker.start()

    def stop(self) -> None:
        """Safe before `start` and twice. Running calls keep their fuel limit but lose their
        deadline, so stop the engine only after the agents."""
        self.ticker.stop()

    def deadline_ticks(self, deadline_ms: int) -> int:
        # One extra tick because the deadline counts from the current epoch, which may be about
        # to end: the call gets at least `deadline_ms` and at most one tick more.
        return math.ceil(deadline_ms / self.config.epoch_tick_ms) + 1

    def epoch_deadline(self, ticks: int) -> int:
        """What to give `Store.set_epoch_deadline` for `ticks` (from `deadline_ticks`) now:
        plus the ticks the epoch still owes the clock, which a late ticker adds at once."""
        return ticks + self.ticker.behind()

    def __enter__(self) -> SandboxEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
