"""Latency drift: a slow, persistent rise that no single window shows is found within a few
windows, as a warning with the CUSUM as its evidence; stationary noise, a slow daily swing and a
lone spike are not a drift."""

from __future__ import annotations

import math
import random

import pytest

from schemas.observer import FINDING_KINDS, LATENCY_DRIFT
from services.observer.analysis import Finding, Observatory
from services.observer.detectors import DriftCusum, SignalScore
from services.observer.finding import DRIFT_DETECTOR
from services.observer.scoring import _BY_SIGNAL, CRITICAL_KINDS, RANKS, DetectorConfig
from tests.observer.workload import START, T0, Step, messages, normal

pytestmark = pytest.mark.timeout(60)

#: A baseline of 100 ms measured in spreads of 10 % (what a mean of ~25 calls has).
BASELINE, SPREAD = 100.0, 0.1


def window(deviation: float) -> SignalScore:
    """A window whose latency is `deviation` spreads (in log) above the baseline."""
    value = BASELINE * math.exp(deviation * SPREAD)
    scale = SPREAD * BASELINE
    return SignalScore("latency", value, BASELINE, scale, (value - BASELINE) / scale)


def first_drift(cusum: DriftCusum, deviations: list[float]) -> int | None:
    for i, d in enumerate(deviations):
        if cusum.step(window(d)):
            return i
    return None


def noise(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0, 1) for _ in range(n)]


@pytest.mark.parametrize("slope", [0.5, 1.0, 2.0])
def test_a_slow_rise_is_caught_within_a_few_windows(slope: float) -> None:
    # Half a spread more per window: after 4 windows the mean of the rise is one spread, which
    # no z-score would flag in a single window.
    onset = 100
    deviations = noise(onset, seed=1) + [
        slope * (i + 1) + e for i, e in enumerate(noise(60, seed=2))
    ]
    found = first_drift(DriftCusum(), deviations)
    assert found is not None
    assert onset <= found <= onset + {0.5: 10, 1.0: 7, 2.0: 5}[slope]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_stationary_noise_over_thousands_of_windows_is_no_drift(seed: int) -> None:
    cusum = DriftCusum()
    rng = random.Random(seed)
    # Gaussian noise on a slow swing of one spread (a daily cycle the baseline lags behind).
    deviations = [rng.gauss(0, 1) + math.sin(2 * math.pi * i / 450) for i in range(20_000)]
    assert first_drift(cusum, deviations) is None
    assert cusum.windows == 20_000


def test_a_lone_spike_is_no_drift_and_a_reset_forgets_the_sum() -> None:
    cusum = DriftCusum()
    assert first_drift(cusum, [0.0] * 40 + [50.0, 0.0, 0.0]) is None
    assert cusum.total <= cusum.cap - cusum.slack
    # Three spreads above the baseline, window after window, is a drift within a few.
    found = first_drift(cusum, [3.0] * 6)
    assert found is not None
    assert found <= 4
    cusum.reset()
    assert (cusum.total, cusum.rising, cusum.drifting) == (0.0, 0, False)
    assert cusum.windows == 43 + found + 1  # the level keeps what it learnt


def test_nothing_adds_up_during_the_warm_up_and_the_state_round_trips() -> None:
    cusum = DriftCusum(warmup=30)
    assert first_drift(cusum, [3.0] * 30) is None
    assert cusum.total == 0.0
    assert first_drift(cusum, [6.0] * 3) == 2
    again = DriftCusum.from_json(cusum.to_json())
    assert again == cusum


def latency_drift(t: float, rng: random.Random) -> Step:
    """The tests' agent, its latency rising from START by 5 % of its level every second."""
    s = normal(t, rng)
    if t >= START:
        s.latency_ms *= 1 + 0.05 * (t - START)
    return s


def run(seconds: int, shape: object) -> list[Finding]:
    core = Observatory(DetectorConfig(), 2.0)
    findings = []
    for seq, t, body in messages(seconds, shape):  # type: ignore[arg-type]
        findings += [o.finding for o in core.apply_metrics(seq, t, body) if o.finding]
    return findings


def test_a_latency_drift_is_a_warning_before_any_single_window_says_so() -> None:
    findings = run(600, latency_drift)
    assert findings, "the drift was not found"
    first = findings[0]
    assert first.kind == LATENCY_DRIFT
    assert first.severity == "warning"
    delay = first.window_end - (T0 + START)
    assert 0 < delay <= 12
    assert first.drift > first.drift_limit > 0
    assert first.drift_windows >= 2
    # Found before any finding of the z-scores, as a warning only: a drift never stops an agent.
    later = [f for f in findings if f.kind != LATENCY_DRIFT]
    assert all(f.window_end > first.window_end for f in later)
    report = first.report()
    assert report.detector == DRIFT_DETECTOR
    assert report.severity == "warning"
    latency = next(s for s in report.signals if s.signal == "latency")
    assert latency.value > latency.baseline
    assert latency.score > latency.threshold == first.drift_limit
    assert "rising" in report.summary
    # A finding held in a table by an older Observer (no drift fields) still reads.
    doc = first.to_json()
    for key in ("drift", "drift_limit", "drift_windows"):
        del doc[key]
    assert Finding.from_json(doc).drift_limit == 0.0
    assert Finding.from_json(first.to_json()) == first


def test_noise_and_seasonality_give_no_drift() -> None:
    assert run(1800, normal) == []


def test_every_kind_the_observer_names_is_declared_in_the_schemas() -> None:
    named = {*_BY_SIGNAL.values(), *CRITICAL_KINDS, *RANKS, LATENCY_DRIFT}
    assert named <= set(FINDING_KINDS)
    assert LATENCY_DRIFT not in CRITICAL_KINDS


def test_extreme_windows_neither_poison_the_level_nor_hide_a_later_drift() -> None:
    """What a pod can send is finite, but ratios of extreme values overflow: inf / inf is NaN,
    which once learnt into the level would make every later comparison false."""
    cusum = DriftCusum()
    first_drift(cusum, noise(100, seed=3))
    for value, baseline, scale in [
        (1e308, 1e-300, 1e300),  # ln(inf) / inf
        (math.inf, 100.0, 10.0),
        (1e308, 100.0, 10.0),
        (0.0, 100.0, 10.0),
    ]:
        cusum.step(SignalScore("latency", value, baseline, scale, 0.0))
        assert math.isfinite(cusum.level)
        assert math.isfinite(cusum.total)
    cusum.reset()
    found = first_drift(cusum, [1.0 * (i + 1) + e for i, e in enumerate(noise(60, seed=4))])
    assert found is not None
    assert found <= 7
