"""Pod metrics messages for tests: one agent per message, counters as runtime/pod.py sends."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from schemas import names
from services.observer.analysis import Finding, Observatory
from services.observer.machine import MachineFinding

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


@dataclass(slots=True)
class Load:
    """One agent's second: calls, and what those calls cost and left behind."""

    calls: int
    errors: int = 0
    fuel_per_call: float = 50_000
    latency_per_call_ms: float = 10.0
    memory_mb: float = 8.0
    mailbox: int = 0
    log_lines: int = 0


def pod_messages(
    seconds: int,
    agents: int,
    shape: Callable[[int, float, random.Random], Load],
    *,
    pods: int = 1,
    seed: int = 5,
) -> Iterator[tuple[str, int, float, bytes | list[bytes]]]:
    """Per simulated second, each pod's log lines (`("logs", seq, t, [line, ...])`, placed in
    the second before) and then its metrics message (`("metrics", seq, t, body)`); `agents`
    agents per pod, `shape(agent, t, rng)` says what agent `agent` (0-based, over all pods) did
    in the second before `t`."""
    rng = random.Random(seed)
    total = agents * pods
    calls = [0] * total
    errors = [0] * total
    fuel = [0] * total
    busy = [0.0] * total
    metrics_seq = logs_seq = 0
    for k in range(1, seconds + 1):
        t = float(k)
        for p in range(pods):
            rows = []
            lines = []
            for a in range(p * agents, (p + 1) * agents):
                s = shape(a, t, rng)
                calls[a] += s.calls
                errors[a] += s.errors
                fuel[a] += int(s.fuel_per_call * s.calls * rng.lognormvariate(0, 0.05))
                busy[a] += s.latency_per_call_ms * s.calls * rng.lognormvariate(0, 0.05)
                rows.append(
                    {
                        "agent_id": f"agent-{a}",
                        "replica_id": f"agent-{a}-r1",
                        "namespace": "default",
                        "name": f"agent-{a}",
                        "calls": calls[a],
                        "errors": errors[a],
                        "fuel_used": fuel[a],
                        "last_latency_ms": s.latency_per_call_ms,
                        "busy_ms": busy[a],
                        "memory_bytes": int(s.memory_mb * 2**20),
                        "mailbox": s.mailbox,
                    }
                )
                for _ in range(s.log_lines):
                    at = (T0 + t - rng.random()) * 1000
                    line = {
                        "time_ms": at,
                        "agent_id": f"agent-{a}",
                        "namespace": "default",
                        "name": f"agent-{a}",
                        "level": "debug",
                        "kind": "log",
                        "message": "echoing a message",
                    }
                    lines.append(json.dumps(line).encode())
            if lines:
                logs_seq += len(lines)
                yield "logs", logs_seq - len(lines) + 1, T0 + t, lines
            metrics_seq += 1
            body = {"pod_id": f"p{p + 1}", "replicas": rows}
            yield "metrics", metrics_seq, T0 + t, json.dumps(body).encode()


def observe_messages(
    core: Observatory, events: Iterable[tuple[str, int, float, bytes | list[bytes]]]
) -> tuple[list[tuple[int, Finding]], list[MachineFinding], list[Finding]]:
    """Apply `pod_messages` to the core: the agent findings it reported, each with the sequence
    of the message that reported it, the machine findings, and the findings held back a window."""
    reported: list[tuple[int, Finding]] = []
    machine: list[MachineFinding] = []
    held: list[Finding] = []
    for kind, seq, t, payload in events:
        if isinstance(payload, list):
            for n, line in enumerate(payload):
                core.apply_log(seq + n, line)
            continue
        assert kind == "metrics"
        reported += [(seq, o.finding) for o in core.apply_metrics(seq, t, payload) if o.finding]
        reported += [(seq, f) for f in core.released]  # held back a window by the machine check
        held += core.held
        machine += core.machine_findings
    return reported, machine, held


def empty_tables() -> dict[str, dict[str, Any]]:
    """The Observer stream app's tables (`TableSync` keeps the core in them), empty."""
    return {
        names.OBSERVER_TABLE_WINDOWS: {},
        names.OBSERVER_TABLE_DETECTORS: {},
        names.OBSERVER_TABLE_DEPLOYMENTS: {},
        names.OBSERVER_TABLE_MACHINES: {},
    }


def feed(
    core: Observatory, events: Iterable[tuple[str, int, float, bytes | list[bytes]]]
) -> tuple[list[Finding], list[MachineFinding]]:
    """Apply `pod_messages` to the core: the agent findings and machine findings it made."""
    reported, machine, _ = observe_messages(core, events)
    return [f for _, f in reported], machine


#: When `planted` incidents start, in simulated seconds.
START = 400.0


def planted(change: str, until: float = 10_000) -> object:
    def shape(t: float, rng: random.Random) -> Step:
        s = normal(t, rng)
        if not START <= t < until:
            return s
        if change == "spike":
            s.latency_ms *= 6
        elif change == "shift":
            s.fuel *= 5
        elif change == "drift":
            s.memory_mb *= 1 + (t - START) / 30  # +100 % every 30 s
        elif change == "loop":
            return Step(1, 1, 100_000_000, 1000.0, s.memory_mb)
        return s

    return shape
