"""SandboxEngine and its epoch ticker: lifecycle, deadlines in ticks, cache fingerprints."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.engine import EngineConfig, EpochTicker, SandboxEngine, TickerState


def ticker_threads() -> int:
    return sum(thread.name == "swarm-epoch-ticker" for thread in threading.enumerate())


def test_ticker_start_and_stop_are_idempotent() -> None:
    engine = SandboxEngine()
    before = ticker_threads()

    engine.stop()  # before start: nothing to do
    engine.start()
    engine.start()
    assert engine.running
    assert ticker_threads() == before + 1

    engine.stop()
    engine.stop()
    assert not engine.running
    assert ticker_threads() == before


def test_ticker_can_be_restarted() -> None:
    engine = SandboxEngine()
    ticker = EpochTicker(engine.engine, 0.001)

    states = [ticker.state]
    ticker.start()
    ticker.stop()
    ticker.start()
    states.append(ticker.state)
    ticker.stop()
    states.append(ticker.state)

    assert states == [TickerState.STOPPED, TickerState.RUNNING, TickerState.STOPPED]


def test_engine_as_context_manager_stops_its_ticker() -> None:
    with SandboxEngine() as engine:
        assert engine.running
    assert not engine.running


def test_deadline_ticks_never_shorten_the_deadline() -> None:
    engine = SandboxEngine(EngineConfig(epoch_tick_ms=10))

    assert engine.deadline_ticks(1) == 2
    assert engine.deadline_ticks(10) == 2
    assert engine.deadline_ticks(11) == 3
    assert engine.deadline_ticks(1000) == 101


def test_fingerprint_follows_compile_settings_only() -> None:
    base = EngineConfig()

    assert base.fingerprint() == EngineConfig().fingerprint()
    assert base.fingerprint() == EngineConfig(epoch_tick_ms=5).fingerprint()
    assert base.fingerprint() != EngineConfig(opt_level="none").fingerprint()
    assert base.fingerprint() != EngineConfig(max_wasm_stack=1 << 20).fingerprint()


def test_engine_config_is_validated() -> None:
    with pytest.raises(ValueError, match="epoch_tick_ms"):
        EngineConfig(epoch_tick_ms=0)


def test_stop_joins_the_ticker_thread() -> None:
    engine = SandboxEngine(EngineConfig(epoch_tick_ms=1))
    before = set(threading.enumerate())
    engine.start()
    (thread,) = set(threading.enumerate()) - before
    time.sleep(0.01)

    engine.stop()

    assert not thread.is_alive()
