"""Observer detection quality and throughput on a labelled synthetic workload.

One run: generate pod metrics messages (as runtime/pod.py publishes them: cumulative counters
per replica) for many agents over simulated time, with normal noise, a daily-like seasonality
and planted incidents of known start and end, feed them through the Observer's pure core
(`services.observer.analysis.Observatory`) at full speed, and score the findings.

Incidents (one kind each, drawn uniformly):
  spike        latency x U(4, 10) for U(4, 20) s
  level_shift  fuel per call x U(3, 8) for U(120, 240) s (a cost blowup)
  drift        latency or memory rising linearly to x U(3, 6) over U(60, 180) s, held 60 s
  loop         every call runs into the 1 s deadline and fails, at fuel per call 1e8, U(20, 60) s

An incident counts as detected when a finding about its agent has a window overlapping
[start, end + tolerance]; a finding overlapping no incident span is a false positive.
Detection delay = finding window end - incident start (simulated seconds), plus the time the
machine check held the finding back, if it did (`Holds`).
The generator's parameters are fixed in `Workload` below and were not changed while tuning the
detectors. Baseline row: the same messages through window aggregation only (no detectors).

Load ramp (`LoadRamp`, no planted incident): agents whose offered load ramps from idle to a
peak and back (cycles of `cycle_s`), some of them past their capacity, so their mailboxes fill;
log lines in proportion to calls (published as log lines, placed by their own time); latency
rising a little with the pod's utilisation; and two machine-wide slowdowns: one pod starved of
CPU (latency x3, a third of its capacity) and, later, every pod at once. Nothing there should be
worth stopping an agent for: the row counts critical agent findings per hour (target 0), and the
machine findings (the pod's and the cluster's slowdown should each be one).

Runner rows (`--runner`, on by default): the same messages published to SWARM_METRICS on an
embedded nats-server, then read by the pure core through a plain replay (fetch + apply, no state
kept anywhere: the baseline) and by the Observer's StreamApp (`services.observer.stream`:
durable consumer, tables, changelog commits, acks). Stream time is the JetStream timestamp, so
the window there is set to two publishing intervals of a pod, for about as many windows per
agent as the simulation has; both paths must end with the same windows, which is checked.

Writes a table and bench/results/observer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from schemas import names
from services.observer.analysis import AgentState, Finding, Observatory
from services.observer.config import ObserverSettings
from services.observer.features import LogSample, WindowAggregator, parse_metrics
from services.observer.machine import MachineFinding
from services.observer.scoring import DetectorConfig
from services.observer.stream import build_app
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings

KINDS = ("spike", "level_shift", "drift", "loop")


@dataclass(frozen=True, slots=True)
class Fleet:
    """What both workloads simulate: `agents` agents, `agents_per_pod` to a pod, each pod
    publishing its replicas' counters every `sample_s` for `duration_s`, judged in windows of
    `window_s`."""

    agents: int = 200
    duration_s: float = 1800.0
    sample_s: float = 1.0
    window_s: float = 2.0
    agents_per_pod: int = 10


@dataclass(frozen=True, slots=True)
class Workload(Fleet):
    #: No incident starts before this (detectors need a baseline) or ends after the run.
    quiet_start_s: float = 300.0
    #: Share of agents with one planted incident.
    incident_share: float = 0.6
    season_period_s: float = 900.0
    season_rate_amplitude: float = 0.4
    season_latency_amplitude: float = 0.2
    latency_sigma: float = 0.5
    fuel_sigma: float = 0.3
    tolerance_s: float = 10.0
    seed: int = 1


_DEFAULT = Workload()


@dataclass(slots=True)
class Incident:
    agent: int
    kind: str
    start: float
    end: float
    factor: float
    target: str = ""
    detected_at: float | None = None


@dataclass(slots=True)
class Profile:
    rate: float
    latency_ms: float
    fuel: float
    error_p: float
    memory_mb: float
    logs_per_call: float
    phase: float
    incident: Incident | None = None


@dataclass(slots=True)
class Counters:
    calls: int = 0
    errors: int = 0
    fuel: int = 0
    latency_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _profiles(w: Workload, rng: np.random.Generator) -> list[Profile]:
    profiles = []
    for i in range(w.agents):
        p = Profile(
            rate=float(math.exp(rng.uniform(math.log(1), math.log(40)))),
            latency_ms=float(math.exp(rng.uniform(math.log(2), math.log(200)))),
            fuel=float(math.exp(rng.uniform(math.log(1e4), math.log(1e7)))),
            error_p=float(rng.uniform(0, 0.03)),
            memory_mb=float(rng.uniform(2, 64)),
            logs_per_call=float(rng.uniform(0, 1)),
            phase=float(rng.uniform(0, 0.2)),
        )
        if rng.random() < w.incident_share:
            kind = KINDS[int(rng.integers(len(KINDS)))]
            start = float(rng.uniform(w.quiet_start_s, w.duration_s - 300))
            if kind == "spike":
                inc = Incident(i, kind, start, start + rng.uniform(4, 20), rng.uniform(4, 10))
            elif kind == "level_shift":
                inc = Incident(i, kind, start, start + rng.uniform(120, 240), rng.uniform(3, 8))
            elif kind == "drift":
                ramp = float(rng.uniform(60, 180))
                target = "latency" if rng.random() < 0.5 else "memory"
                # Held 60 s at the top: the ramp ends at `end - 60`.
                inc = Incident(i, kind, start, start + ramp + 60, rng.uniform(3, 6), target)
            else:
                inc = Incident(i, kind, start, start + rng.uniform(20, 60), 1.0)
            p.incident = inc
        profiles.append(p)
    return profiles


def _step(p: Profile, t: float, w: Workload, rng: np.random.Generator) -> dict[str, float]:
    """One agent's activity in the second before `t`: calls, errors, fuel, latency sum, memory."""
    season = math.sin(2 * math.pi * (t / w.season_period_s + p.phase))
    rate = p.rate * (1 + w.season_rate_amplitude * season)
    latency = p.latency_ms * (1 + w.season_latency_amplitude * season)
    fuel, memory, error_p = p.fuel, p.memory_mb, p.error_p
    inc = p.incident
    looping = False
    if inc is not None and inc.start <= t < inc.end:
        if inc.kind == "spike":
            latency *= inc.factor
        elif inc.kind == "level_shift":
            fuel *= inc.factor
        elif inc.kind == "drift":
            progress = min(1.0, (t - inc.start) / (inc.end - 60 - inc.start))
            grow = 1 + (inc.factor - 1) * progress
            if inc.target == "latency":
                latency *= grow
            else:
                memory *= grow
        else:
            looping = True
    if looping:
        return {"calls": 1, "errors": 1, "fuel": 1e8, "latency": 1000.0, "memory": memory}
    n = int(rng.poisson(rate * w.sample_s))
    errors = int(rng.binomial(n, error_p)) if n else 0
    lat = float(np.sum(latency * rng.lognormal(-(w.latency_sigma**2) / 2, w.latency_sigma, n)))
    fu = float(np.sum(fuel * rng.lognormal(-(w.fuel_sigma**2) / 2, w.fuel_sigma, n)))
    mem = memory * (1 + 0.02 * float(rng.standard_normal()))
    return {"calls": n, "errors": errors, "fuel": fu, "latency": lat, "memory": mem}


def generate(w: Workload) -> tuple[list[tuple[int, float, bytes]], list[Incident], int]:
    """Pod metrics messages (seq, time, body), the planted incidents, and the sample count."""
    rng = np.random.default_rng(w.seed)
    profiles = _profiles(w, rng)
    counters = [Counters() for _ in profiles]
    messages = []
    rows = 0
    steps = int(w.duration_s / w.sample_s)
    t0 = 1_800_000_000.0  # an arbitrary epoch, aligned to windows
    seq = 0
    for k in range(1, steps + 1):
        t = k * w.sample_s
        for pod in range(0, w.agents, w.agents_per_pod):
            replicas = []
            for i in range(pod, min(pod + w.agents_per_pod, w.agents)):
                s = _step(profiles[i], t, w, rng)
                c = counters[i]
                c.calls += int(s["calls"])
                c.errors += int(s["errors"])
                c.fuel += int(s["fuel"])
                c.latency_ms += s["latency"]
                replicas.append(
                    {
                        "agent_id": f"agent-{i}",
                        "replica_id": f"replica-{i}",
                        "namespace": "bench",
                        "name": f"a{i}",
                        "state": "running",
                        "calls": c.calls,
                        "errors": c.errors,
                        "fuel_used": c.fuel,
                        "last_latency_ms": s["latency"] / max(s["calls"], 1),
                        "busy_ms": round(c.latency_ms, 3),
                        "memory_bytes": int(s["memory"] * 2**20),
                        "mailbox": 0,
                    }
                )
            seq += 1
            rows += len(replicas)
            body = json.dumps({"pod_id": f"pod-{pod}", "replicas": replicas}).encode()
            messages.append((seq, t0 + t, body))
    incidents = [p.incident for p in profiles if p.incident is not None]
    for inc in incidents:
        inc.start += t0
        inc.end += t0
    return messages, incidents, rows


@dataclass(frozen=True, slots=True)
class LoadRamp(Fleet):
    """Busy, not broken: offered load that rises and falls, and two machine-wide slowdowns."""

    agents: int = 40
    #: One cycle of offered load: idle 10 %, ramp up 20 %, peak 20 %, ramp down 20 %, low 30 %.
    cycle_s: float = 600.0
    peak_rate_min: float = 5.0
    peak_rate_max: float = 80.0
    #: Share of agents that cannot keep up with their peak (their mailboxes fill).
    saturating_share: float = 0.3
    mailbox_size: int = 256
    #: Latency at a pod's full utilisation, over latency at rest (contention, not misbehaviour).
    busy_latency: float = 1.3
    #: A pod starved of CPU, then every pod: latency x `slowdown`, capacity / `slowdown`.
    slowdown: float = 3.0
    pod_slowdown_at: float = 0.45
    cluster_slowdown_at: float = 0.75
    slowdown_s: float = 120.0
    seed: int = 2


@dataclass(frozen=True, slots=True)
class Episode:
    scope: str
    pods: tuple[str, ...]
    start: float
    end: float


_RAMP = LoadRamp()


def _offered(u: float) -> float:
    """The offered load's shape over one cycle (0..1 of its peak)."""
    if u < 0.1:
        return 0.0
    if u < 0.3:
        return (u - 0.1) / 0.2
    if u < 0.5:
        return 1.0
    if u < 0.7:
        return 1.0 - 0.9 * (u - 0.5) / 0.2
    return 0.1


def generate_ramp(
    w: LoadRamp,
) -> tuple[list[tuple[float, int, bytes | LogSample]], list[Episode], int]:
    """Metrics messages and log lines in the order they reach the Observer, as (time, seq,
    body or line); the machine-wide episodes; the number of metric samples."""
    rng = np.random.default_rng(w.seed)
    t0 = 1_800_000_000.0
    pods = [f"pod-{p}" for p in range(0, w.agents, w.agents_per_pod)]
    pod_of = [pods[i // w.agents_per_pod] for i in range(w.agents)]
    peak = np.exp(rng.uniform(math.log(w.peak_rate_min), math.log(w.peak_rate_max), w.agents))
    saturating = rng.random(w.agents) < w.saturating_share
    capacity = np.where(saturating, peak * rng.uniform(0.5, 0.8, w.agents), peak * 3)
    latency = np.exp(rng.uniform(math.log(2), math.log(200), w.agents))
    fuel = np.exp(rng.uniform(math.log(1e4), math.log(1e7), w.agents))
    error_p = rng.uniform(0, 0.03, w.agents)
    logs_per_call = rng.uniform(0, 1.5, w.agents)
    memory = rng.uniform(2, 64, w.agents)
    phase = rng.uniform(0, 0.1, w.agents)
    starved = pods[0]
    episodes = [
        Episode(
            "pod",
            (starved,),
            t0 + w.pod_slowdown_at * w.duration_s,
            t0 + w.pod_slowdown_at * w.duration_s + w.slowdown_s,
        ),
        Episode(
            "cluster",
            tuple(pods),
            t0 + w.cluster_slowdown_at * w.duration_s,
            t0 + w.cluster_slowdown_at * w.duration_s + w.slowdown_s,
        ),
    ]
    mailbox = np.zeros(w.agents)
    calls = np.zeros(w.agents, dtype=np.int64)
    errors = np.zeros(w.agents, dtype=np.int64)
    fuel_used = np.zeros(w.agents, dtype=np.int64)
    busy = np.zeros(w.agents)
    out: list[tuple[float, int, bytes | LogSample]] = []
    metrics_seq = logs_seq = rows = 0
    for k in range(1, int(w.duration_s / w.sample_s) + 1):
        t = t0 + k * w.sample_s
        slow = {p: w.slowdown for e in episodes if e.start <= t < e.end for p in e.pods}
        u = (k * w.sample_s / w.cycle_s + phase) % 1.0
        offered = rng.poisson(peak * np.array([_offered(x) for x in u]) * w.sample_s)
        cap = np.array([c / slow.get(pod_of[i], 1.0) for i, c in enumerate(capacity)])
        served = np.minimum(offered + mailbox, np.floor(cap * w.sample_s)).astype(np.int64)
        mailbox = np.minimum(mailbox + offered - served, w.mailbox_size)
        utilisation = {
            p: float(
                sum(served[i] for i in range(w.agents) if pod_of[i] == p)
                / max(sum(cap[i] for i in range(w.agents) if pod_of[i] == p) * w.sample_s, 1)
            )
            for p in pods
        }
        for i in range(w.agents):
            n = int(served[i])
            if not n:
                continue
            factor = (1 + (w.busy_latency - 1) * utilisation[pod_of[i]]) * slow.get(pod_of[i], 1.0)
            busy[i] += float(np.sum(latency[i] * factor * rng.lognormal(-0.125, 0.5, n)))
            fuel_used[i] += int(np.sum(fuel[i] * rng.lognormal(-0.045, 0.3, n)))
            errors[i] += int(rng.binomial(n, error_p[i]))
            calls[i] += n
            for _ in range(int(rng.poisson(n * logs_per_call[i]))):
                # Lines go out as the calls run, and reach the Observer a little later.
                at = t - w.sample_s * float(rng.random())
                logs_seq += 1
                line = LogSample(at, f"ramp-{i}", "ramp", f"r{i}", "info")
                out.append((at + float(rng.uniform(0, 0.5)), logs_seq, line))
        for p, pod in enumerate(pods):
            members = range(p * w.agents_per_pod, min((p + 1) * w.agents_per_pod, w.agents))
            replicas = [
                {
                    "agent_id": f"ramp-{i}",
                    "replica_id": f"ramp-{i}-r",
                    "namespace": "ramp",
                    "name": f"r{i}",
                    "calls": int(calls[i]),
                    "errors": int(errors[i]),
                    "fuel_used": int(fuel_used[i]),
                    "last_latency_ms": 0.0,
                    "busy_ms": round(float(busy[i]), 3),
                    "memory_bytes": int(memory[i] * (1 + 0.02 * rng.standard_normal()) * 2**20),
                    "mailbox": int(mailbox[i]),
                }
                for i in members
            ]
            metrics_seq += 1
            rows += len(replicas)
            body = json.dumps({"pod_id": pod, "replicas": replicas}).encode()
            out.append((t, metrics_seq, body))
    out.sort(key=lambda e: e[0])
    return out, episodes, rows


def run_ramp(
    w: LoadRamp, config: DetectorConfig
) -> tuple[list[Finding], list[MachineFinding], float, Holds]:
    """Feed the load ramp through the core in arrival order: findings, machine findings, s,
    and the findings held back a window."""
    events, _, _ = generate_ramp(w)
    core = Observatory(config, w.window_s)
    findings: list[Finding] = []
    machine: list[MachineFinding] = []
    holds = Holds()
    started = time.perf_counter()
    for at, seq, item in events:
        if isinstance(item, LogSample):
            core.apply_line(seq, item)
            continue
        for observation in core.apply_metrics(seq, at, item):
            if observation.finding is not None:
                findings.append(observation.finding)
        findings += core.released
        holds.take(core, at)
        machine += core.machine_findings
    return findings, machine, time.perf_counter() - started, holds


def score_ramp(
    w: LoadRamp, findings: list[Finding], machine: list[MachineFinding], episodes: list[Episode]
) -> dict[str, Any]:
    hours = w.duration_s / 3600
    critical = [f for f in findings if f.severity == "critical"]
    by_kind: dict[str, int] = {}
    for f in findings:
        key = f"{f.kind} {f.severity}"
        by_kind[key] = by_kind.get(key, 0) + 1
    recognised = []
    for e in episodes:
        mine = [
            m
            for m in machine
            if m.window_end > e.start
            and m.window_start <= e.end + 10
            and (m.scope == e.scope or (e.scope == "pod" and m.pod_id in e.pods))
        ]
        recognised.append(
            {
                "scope": e.scope,
                "pods": len(e.pods),
                "findings": len(mine),
                "delay_s": min(m.window_end for m in mine) - e.start if mine else None,
            }
        )
    outside = [
        m
        for m in machine
        if not any(m.window_end > e.start and m.window_start <= e.end + 10 for e in episodes)
    ]
    return {
        "agents": w.agents,
        "duration_s": w.duration_s,
        "findings": len(findings),
        "critical_findings": len(critical),
        "critical_per_hour": len(critical) / hours,
        "warnings_per_hour": (len(findings) - len(critical)) / hours,
        "findings_by_kind": by_kind,
        "machine_findings": [
            {"scope": m.scope, "pod": m.pod_id, "kind": m.kind, "withheld": m.withheld}
            for m in machine
        ],
        "machine_findings_outside_episodes": len(outside),
        "episodes": recognised,
    }


def aggregate_only(messages: list[tuple[int, float, bytes]], window_s: float) -> float:
    """Seconds to parse and window the messages, without detectors (the baseline)."""
    started = time.perf_counter()
    aggregators: dict[str, WindowAggregator] = {}
    for _, t, body in messages:
        for sample in parse_metrics(body, t):
            agg = aggregators.get(sample.agent_id)
            if agg is None:
                agg = aggregators[sample.agent_id] = WindowAggregator(
                    sample.agent_id, sample.namespace, sample.name, window_s
                )
            agg.add(sample)
    return time.perf_counter() - started


@dataclass(slots=True)
class Holds:
    """Agent findings the machine check held back a window (`machine.py`, Timing): how many,
    how many it reported after all, and the delay that added to those."""

    held: int = 0
    released: int = 0
    #: Finding id -> seconds it was held back (released findings).
    added_s: dict[str, float] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)

    def take(self, core: Observatory, t: float) -> None:
        for f in core.held:
            self.held += 1
            self.since[f.id] = t
        for f in core.released:
            self.released += 1
            self.added_s[f.id] = t - self.since.pop(f.id, t)

    def to_json(self) -> dict[str, float]:
        added = list(self.added_s.values())
        return {
            "held": self.held,
            "released": self.released,
            # Explained by their machine (a finding still held when the run ended counts too).
            "withheld": self.held - self.released,
            "median_added_delay_s": statistics.median(added) if added else math.nan,
            "max_added_delay_s": max(added) if added else math.nan,
        }


def detect(
    messages: list[tuple[int, float, bytes]], window_s: float, config: DetectorConfig
) -> tuple[list[Finding], float, Holds]:
    core = Observatory(config, window_s)
    findings = []
    holds = Holds()
    started = time.perf_counter()
    for seq, t, body in messages:
        for observation in core.apply_metrics(seq, t, body):
            if observation.finding is not None:
                findings.append(observation.finding)
        # Findings the machine check held back a window (the delay counts from their window).
        findings += core.released
        holds.take(core, t)
    return findings, time.perf_counter() - started, holds


async def runner(messages: list[tuple[int, float, bytes]], pods: int) -> dict[str, Any]:
    """Events/s of the pure core fed by a plain replay and of the StreamApp, on one stream."""
    with tempfile.TemporaryDirectory(prefix="bench-observer-") as tmp:
        server = EmbeddedNats(Path(tmp))
        url = server.start()
        try:
            return await _runner(url, messages, pods)
        finally:
            server.stop()


async def _runner(url: str, messages: list[tuple[int, float, bytes]], pods: int) -> dict[str, Any]:
    settings = Settings(nats_url=url)
    log = await EventLog.connect(url, settings, name="bench-observer")
    try:
        subject = names.metrics_subject("bench", "agent")
        # One at a time, so the stored timestamps are spread about evenly (bursts would put
        # many of a pod's messages into one window).
        started = time.perf_counter()
        for _, _, body in messages:
            await log.js.publish(subject, body)
        span = time.perf_counter() - started
        last = await log.last_sequence(names.STREAM_METRICS)
        # Two publishing intervals of one pod: windows close about every other pod message.
        window_s = 2 * span * pods / len(messages)
        config = ObserverSettings(window_s=window_s, store_behaviour=False)

        core = Observatory(config.detector(), window_s)
        started, cpu = time.perf_counter(), time.process_time()
        async for d in log.replay(names.STREAM_METRICS, batch=1000):
            core.apply_metrics(d.stream_seq, d.timestamp.timestamp(), d.data)
        plain_s, plain_cpu = time.perf_counter() - started, time.process_time() - cpu

        app = build_app(settings, config)
        started, cpu = time.perf_counter(), time.process_time()
        async with app:
            await app.reached(names.OBSERVER_METRICS_PROCESSOR, last, timeout=600)
            app_s, app_cpu = time.perf_counter() - started, time.process_time() - cpu
            windows = app.snapshot(names.OBSERVER_TABLE_WINDOWS)
            detectors = app.snapshot(names.OBSERVER_TABLE_DETECTORS)
        for agent, state in core.agents.items():
            saved = AgentState.from_json(windows[agent], detectors.get(agent), core.config)
            if saved.window_json() != state.window_json():
                raise AssertionError(f"the StreamApp's windows of {agent} differ from the core's")
        closed = sum(a.windows for a in core.agents.values())
        return {
            "messages": last,
            "window_s": window_s,
            "windows_closed": closed,
            "plain_messages_per_s": last / plain_s,
            "plain_cpu_us_per_message": plain_cpu / last * 1e6,
            "app_messages_per_s": last / app_s,
            "app_cpu_us_per_message": app_cpu / last * 1e6,
            "app_over_plain": plain_s / app_s,
            "commits": app.stats.commits,
        }
    finally:
        await log.close()


def score(
    findings: list[Finding],
    incidents: list[Incident],
    tolerance: float,
    added_s: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Recall, precision and delays. A finding's time is its window's end, plus the time the
    machine check held it back (`added_s`, by finding id)."""
    added_s = added_s or {}
    by_agent: dict[str, list[Incident]] = {}
    for inc in incidents:
        by_agent.setdefault(f"agent-{inc.agent}", []).append(inc)
    false_positives: dict[str, int] = {}
    true_findings = 0
    for f in sorted(findings, key=lambda f: f.window_end):
        hit = None
        for inc in by_agent.get(f.agent_id, []):
            if f.window_end > inc.start and f.window_start <= inc.end + tolerance:
                hit = inc
                break
        if hit is None:
            false_positives[f.kind] = false_positives.get(f.kind, 0) + 1
            continue
        true_findings += 1
        at = f.window_end + added_s.get(f.id, 0.0)
        if hit.detected_at is None or at < hit.detected_at:
            hit.detected_at = at
    rows: dict[str, dict[str, float]] = {}
    fp_total = sum(false_positives.values())
    for kind in (*KINDS, "all"):
        mine = [i for i in incidents if kind in ("all", i.kind)]
        found = [i for i in mine if i.detected_at is not None]
        delays = [i.detected_at - i.start for i in found if i.detected_at is not None]
        recall = len(found) / len(mine) if mine else 0.0
        row: dict[str, float] = {
            "incidents": len(mine),
            "detected": len(found),
            "recall": recall,
            "median_delay_s": statistics.median(delays) if delays else math.nan,
            "p90_delay_s": float(np.percentile(delays, 90)) if delays else math.nan,
        }
        if kind == "all":
            precision = true_findings / (true_findings + fp_total) if findings else 0.0
            row["findings"] = len(findings)
            row["false_positives"] = fp_total
            row["precision"] = precision
            row["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows[kind] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=_DEFAULT.agents)
    parser.add_argument("--duration", type=float, default=_DEFAULT.duration_s)
    parser.add_argument("--seed", type=int, default=_DEFAULT.seed)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "observer.json"
    )
    parser.add_argument(
        "--runner",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the StreamApp runner on a nats-server",
    )
    parser.add_argument("--ramp-agents", type=int, default=_RAMP.agents)
    parser.add_argument("--ramp-duration", type=float, default=_RAMP.duration_s)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run (12 agents, 700 s; load ramp 20 agents, 600 s) for smoke tests",
    )
    args = parser.parse_args()
    load_at_start = _common.load_average()
    if args.quick:
        args.agents, args.duration = 12, 700.0
        args.ramp_agents, args.ramp_duration = 20, 600.0
    # The runner logs every finding and its app's life; the tables below say what it did.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    workload = Workload(agents=args.agents, duration_s=args.duration, seed=args.seed)
    config = DetectorConfig()

    started = time.perf_counter()
    messages, incidents, rows = generate(workload)
    generated_s = time.perf_counter() - started
    baseline_s = aggregate_only(messages, workload.window_s)
    findings, detect_s, holds = detect(messages, workload.window_s, config)
    quality = score(findings, incidents, workload.tolerance_s, holds.added_s)
    kinds: dict[str, dict[str, int]] = {}
    for inc in incidents:
        if inc.detected_at is not None:
            # The kind the detector named for the incident's first finding.
            named = next(
                f.kind
                for f in sorted(findings, key=lambda f: f.window_end)
                if f.agent_id == f"agent-{inc.agent}"
                and f.window_end + holds.added_s.get(f.id, 0.0) == inc.detected_at
            )
            kinds.setdefault(inc.kind, {}).setdefault(named, 0)
            kinds[inc.kind][named] += 1

    ramp = LoadRamp(
        agents=args.ramp_agents,
        duration_s=args.ramp_duration,
        cycle_s=min(600.0, args.ramp_duration),
    )
    _, episodes, ramp_rows = generate_ramp(ramp)
    ramp_findings, ramp_machine, ramp_s, ramp_holds = run_ramp(ramp, config)
    ramp_quality = score_ramp(ramp, ramp_findings, ramp_machine, episodes)
    ramp_quality["held"] = ramp_holds.to_json()
    ramp_quality["samples"] = ramp_rows
    ramp_quality["detect_s"] = ramp_s
    drift = quality["drift"]
    # Drifts of memory (counted in pages: little noise) and of latency (a mean of a few calls:
    # much noise) are found at very different speeds; the median mixes them.
    drift_by_target = {}
    for target in ("memory", "latency"):
        mine = [i for i in incidents if i.kind == "drift" and i.target == target]
        delays = [i.detected_at - i.start for i in mine if i.detected_at is not None]
        drift_by_target[target] = {
            "incidents": len(mine),
            "detected": len(delays),
            "median_delay_s": statistics.median(delays) if delays else math.nan,
        }
    targets: dict[str, dict[str, Any]] = {
        "false_critical_per_hour": {"target": 0, "value": ramp_quality["critical_per_hour"]},
        "drift_recall": {"target": 0.95, "value": drift["recall"]},
        "drift_median_delay_s": {"target": 10.0, "value": drift["median_delay_s"]},
        "precision": {"target": 0.95, "value": quality["all"]["precision"]},
        "f1": {"target": 0.95, "value": quality["all"]["f1"]},
    }
    for name, measure in targets.items():
        value, goal = measure["value"], measure["target"]
        lower_is_better = name in ("false_critical_per_hour", "drift_median_delay_s")
        met = (
            value <= goal
            if name == "false_critical_per_hour"
            else (value < goal if lower_is_better else value >= goal)
        )
        measure["met"] = bool(met) and math.isfinite(value)

    throughput: dict[str, Any] = {
        "samples": rows,
        "messages": len(messages),
        "aggregate_only_samples_per_s": rows / baseline_s,
        "detect_samples_per_s": rows / detect_s,
        "detect_over_aggregate": baseline_s / detect_s,
        "generate_s": generated_s,
    }
    if args.runner:
        pods = math.ceil(workload.agents / workload.agents_per_pod)
        throughput["runner"] = asyncio.run(runner(messages, pods))
    console = Console()
    table = Table(
        title=f"Observer detection ({workload.agents} agents, {workload.duration_s:.0f} s)"
    )
    for column in ("kind", "incidents", "detected", "recall", "median delay s", "p90 delay s"):
        table.add_column(column, justify="right")
    for kind, row in quality.items():
        table.add_row(
            kind,
            f"{row['incidents']:.0f}",
            f"{row['detected']:.0f}",
            f"{row['recall']:.3f}",
            f"{row['median_delay_s']:.1f}",
            f"{row['p90_delay_s']:.1f}",
        )
    console.print(table)
    overall = quality["all"]
    console.print(
        f"precision {overall['precision']:.3f}  recall {overall['recall']:.3f}  "
        f"F1 {overall['f1']:.3f}  findings {overall['findings']:.0f}  "
        f"false positives {overall['false_positives']:.0f}"
    )
    console.print(f"named kinds per planted kind: {kinds}")
    console.print(
        "drift median delay by target: "
        + ", ".join(
            f"{t} {d['median_delay_s']:.1f} s ({d['detected']}/{d['incidents']})"
            for t, d in drift_by_target.items()
        )
    )
    for label, held in (("incidents", holds.to_json()), ("load ramp", ramp_quality["held"])):
        console.print(
            f"machine check ({label}): {held['held']} findings held back a window, "
            f"{held['released']} reported after all (delay added: median "
            f"{held['median_added_delay_s']:.1f} s, max {held['max_added_delay_s']:.1f} s), "
            f"{held['withheld']} explained by their machine"
        )
    load = Table(
        title=(
            f"Load ramp, no planted incident ({ramp.agents} agents, {ramp.duration_s:.0f} s, "
            "machine-wide slowdowns of one pod and of every pod)"
        )
    )
    for column in ("findings", "critical / h", "warnings / h", "machine findings", "by kind"):
        load.add_column(column, justify="right")
    load.add_row(
        f"{ramp_quality['findings']}",
        f"{ramp_quality['critical_per_hour']:.1f}",
        f"{ramp_quality['warnings_per_hour']:.1f}",
        ", ".join(f"{m['scope']} {m['pod']} {m['kind']}" for m in ramp_quality["machine_findings"])
        or "none",
        ", ".join(f"{k}: {n}" for k, n in sorted(ramp_quality["findings_by_kind"].items()))
        or "none",
    )
    console.print(load)
    goals = Table(title="Targets")
    for column in ("measure", "value", "target", "met"):
        goals.add_column(column, justify="right")
    for name, measure in targets.items():
        goals.add_row(
            name,
            f"{measure['value']:.3f}",
            f"{measure['target']}",
            "yes" if measure["met"] else "NO",
        )
    console.print(goals)
    speed = Table(title="Throughput (metric samples = one replica row of a pod message)")
    speed.add_column("path")
    speed.add_column("samples/s", justify="right")
    speed.add_row(
        "aggregate only (raw baseline)", f"{throughput['aggregate_only_samples_per_s']:,.0f}"
    )
    speed.add_row("aggregate + detect", f"{throughput['detect_samples_per_s']:,.0f}")
    console.print(speed)
    if args.runner:
        run = throughput["runner"]
        per_message = rows / len(messages)
        through = Table(
            title=(
                f"Through JetStream ({run['messages']:,} messages, {run['windows_closed']:,} "
                f"windows of {run['window_s'] * 1000:.2f} ms stream time)"
            )
        )
        for column in ("path", "messages/s", "samples/s", "CPU us/message", "vs plain"):
            through.add_column(column, justify="right")
        through.add_row(
            "core over a plain replay (raw baseline)",
            f"{run['plain_messages_per_s']:,.0f}",
            f"{run['plain_messages_per_s'] * per_message:,.0f}",
            f"{run['plain_cpu_us_per_message']:,.0f}",
            "1.00x",
        )
        through.add_row(
            "StreamApp runner (tables, changelog, acks)",
            f"{run['app_messages_per_s']:,.0f}",
            f"{run['app_messages_per_s'] * per_message:,.0f}",
            f"{run['app_cpu_us_per_message']:,.0f}",
            f"{run['app_over_plain']:.2f}x",
        )
        console.print(through)
    report = {
        **_common.report(
            "observer",
            {k: v for k, v in vars(args).items() if k != "json"},
            load_at_start,
        ),
        "workload": asdict(workload),
        "detector": asdict(config),
        "quality": quality,
        "held": holds.to_json(),
        "named_kinds": kinds,
        "drift_by_target": drift_by_target,
        "load_ramp": {"workload": asdict(ramp), **ramp_quality},
        "targets": targets,
        "throughput": throughput,
    }
    _common.write_report(args.json, report, console, default=float)
    if not math.isfinite(overall["f1"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
