"""Demand forecasts for the autoscaler: one series per agent and signal, sampled on a fixed step.

The model is river's online Holt-Winters without seasonality, i.e. Holt's linear trend (a level
and a trend, each exponentially smoothed); `ewma` drops the trend and is simple exponential
smoothing. Both learn one value per step in O(1), so thousands of agents cost nothing, and a
forecast `h` steps ahead is `level + h * trend`. Seasonal Holt-Winters would need a season
length in steps and several seasons of history before it helps; demand ramps are what a
scale-up has to get ahead of, and the trend term is what sees them coming.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from schemas.specs import ForecastMethod


@functools.cache
def _holt_winters() -> Any:
    """river's forecaster (river has no type annotations: it is used through this one name).

    Imported on first use, by the first autoscaled agent: `river.time_series` pulls in
    `river.metrics` and scipy.stats, 1-4 s of CPU that every scheduler start paid (measured with
    `python -X importtime`), also in the many stacks whose agents nobody autoscales."""
    from river import time_series

    return time_series.HoltWinters


#: Smoothing of the level and the trend: quick enough to follow a ramp within a few samples,
#: smooth enough that one noisy sample does not move a decision much.
ALPHA = 0.5
BETA = 0.3
#: How fast the measured time between samples replaces the configured step.
STEP_SMOOTHING = 0.3


@dataclass(slots=True)
class Forecaster:
    """One series (e.g. an agent's message rate) learned one sample per step.

    `step_s` starts as the configured step and then follows the time actually seen between
    samples (smoothed), so a horizon in seconds stays right when samples come slower than the
    autoscaler ticks (a tick without a fresh sample learns nothing: repeating the last value
    would flatten the trend).
    """

    method: ForecastMethod
    step_s: float
    samples: int = 0
    last: float = 0.0
    last_at: float | None = None
    _model: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._model = _holt_winters()(alpha=ALPHA, beta=BETA if self.method == "holt" else None)

    def learn(self, value: float, at: float | None = None) -> None:
        if at is not None:
            if self.last_at is not None and at > self.last_at:
                self.step_s += STEP_SMOOTHING * ((at - self.last_at) - self.step_s)
            self.last_at = at
        self._model.learn_one(float(value))
        self.samples += 1
        self.last = float(value)

    def steps(self, horizon_s: float) -> int:
        return max(1, math.ceil(horizon_s / self.step_s - 1e-9))

    def forecast(self, horizon_s: float) -> float:
        """The value expected `horizon_s` from the last sample; never below zero. Until the model
        has its two initial samples, the last value (a flat forecast)."""
        if self.samples < 2:
            return max(0.0, self.last)
        predicted = self._model.forecast(self.steps(horizon_s))[-1]
        return max(0.0, float(predicted))


__all__ = ["ALPHA", "BETA", "STEP_SMOOTHING", "Forecaster"]
