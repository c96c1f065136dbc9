"""Latency drift: a slow, persistent rise that no single window shows is found within a few
windows; stationary noise, a slow daily swing and a lone spike are not a drift."""

from __future__ import annotations

import math
import random

import pytest

from services.observer.detectors import DriftCusum, SignalScore

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
