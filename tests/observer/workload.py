"""Pod metrics messages for tests: one agent per message, counters as runtime/pod.py sends."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: Window-aligned start of simulated time.
T0 = 1_800_000_000.0


@dataclass(slots=True)
class Step:
    calls: int
    errors: int
    fuel: float
    latency_ms: float
    memory_mb: float


def normal(t: float, rng: random.Random) -> Step:
    """20 calls/s with noise and a seasonal swing of +-30 % over a 300 s period."""
    season = math.sin(2 * math.pi * t / 300)
    calls = max(1, round(rng.gauss(20 * (1 + 0.3 * season), 3)))
    latency = calls * 10 * (1 + 0.2 * season) * rng.lognormvariate(0, 0.1)
    fuel = calls * 50_000 * rng.lognormvariate(0, 0.1)
    return Step(calls, int(rng.random() < 0.05), fuel, latency, 8 * (1 + 0.01 * rng.random()))


def messages(
    seconds: int,
    shape: Callable[[float, random.Random], Step] = normal,
    *,
    agent: str = "agent-1",
    seed: int = 3,
) -> Iterator[tuple[int, float, bytes]]:
    """(seq, time, body) once per simulated second."""
    rng = random.Random(seed)
    calls = errors = fuel = 0
    latency = 0.0
    for k in range(1, seconds + 1):
        t = float(k)
        s = shape(t, rng)
        calls, errors, fuel = calls + s.calls, errors + s.errors, fuel + int(s.fuel)
        latency += s.latency_ms
        row = {
            "agent_id": agent,
            "replica_id": f"{agent}-r1",
            "namespace": "default",
            "name": agent,
            "calls": calls,
            "errors": errors,
            "fuel_used": fuel,
            "last_latency_ms": s.latency_ms / max(s.calls, 1),
            "busy_ms": latency,
            "memory_bytes": int(s.memory_mb * 2**20),
            "mailbox": 0,
        }
        yield k, T0 + t, json.dumps({"pod_id": "p1", "replicas": [row]}).encode()
