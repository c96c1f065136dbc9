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
Detection delay = finding window end - incident start (simulated seconds).
The generator's parameters are fixed in `Workload` below and were not changed while tuning the
detectors. Baseline row: the same messages through window aggregation only (no detectors).

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
import os
import platform
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

from schemas import names
from services.observer.analysis import AgentState, Finding, Observatory
from services.observer.config import ObserverSettings
from services.observer.features import WindowAggregator, parse_metrics
from services.observer.scoring import DetectorConfig
from services.observer.stream import build_app
from swarm.kernel.embedded import EmbeddedNats
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings

KINDS = ("spike", "level_shift", "drift", "loop")


@dataclass(frozen=True, slots=True)
class Workload:
    agents: int = 200
    duration_s: float = 1800.0
    sample_s: float = 1.0
    window_s: float = 2.0
    agents_per_pod: int = 10
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


def detect(
    messages: list[tuple[int, float, bytes]], window_s: float, config: DetectorConfig
) -> tuple[list[Finding], float]:
    core = Observatory(config, window_s)
    findings = []
    started = time.perf_counter()
    for seq, t, body in messages:
        for observation in core.apply_metrics(seq, t, body):
            if observation.finding is not None:
                findings.append(observation.finding)
    return findings, time.perf_counter() - started


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
    findings: list[Finding], incidents: list[Incident], tolerance: float
) -> dict[str, dict[str, float]]:
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
        if hit.detected_at is None:
            hit.detected_at = f.window_end
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
    args = parser.parse_args()
    # The runner logs every finding and its app's life; the tables below say what it did.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    workload = Workload(agents=args.agents, duration_s=args.duration, seed=args.seed)
    config = DetectorConfig()

    started = time.perf_counter()
    messages, incidents, rows = generate(workload)
    generated_s = time.perf_counter() - started
    baseline_s = aggregate_only(messages, workload.window_s)
    findings, detect_s = detect(messages, workload.window_s, config)
    quality = score(findings, incidents, workload.tolerance_s)
    kinds: dict[str, dict[str, int]] = {}
    for inc in incidents:
        if inc.detected_at is not None:
            # The kind the detector named for the incident's first finding.
            named = next(
                f.kind
                for f in sorted(findings, key=lambda f: f.window_end)
                if f.agent_id == f"agent-{inc.agent}" and f.window_end == inc.detected_at
            )
            kinds.setdefault(inc.kind, {}).setdefault(named, 0)
            kinds[inc.kind][named] += 1

    throughput = {
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
        "bench": "observer",
        "workload": asdict(workload),
        "detector": asdict(config),
        "quality": quality,
        "named_kinds": kinds,
        "throughput": throughput,
        "targets": {"f1": 0.9, "median_delay_s": 5.0},
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    console.print(f"wrote {args.json}")
    if not math.isfinite(overall["f1"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
