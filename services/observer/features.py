"""Window aggregation: per-replica metric samples and log lines become per-agent windows.

Pods publish cumulative counters per replica (calls, errors, fuel, latency sum) every few
seconds on SWARM_METRICS (runtime/pod.py, `Replica.metrics_json`), and agent log lines on
SWARM_LOGS. An agent's window sums the counter deltas of all its replicas over `window_s`
seconds of stream time, keeps the peaks of the gauges (memory, mailbox), counts log lines and
notes the pods its replicas ran on (for machine-wide findings, `machine`).

Signals are per call wherever the quantity grows with offered load (fuel, latency, errors and
log lines per call; the mailbox as the seconds a message waits in it), so that a busy agent
looks like itself; the raw rates (`message_rate`, `queue_depth`, `log_rate`) are kept as the
load the agent was under, never scored on their own.

Time is the JetStream timestamp of the metrics message, not a clock of ours: a replay after a
restart puts every sample in the same window again. A window closes when the agent's first
sample of a later window arrives, so closing depends on the metrics stream alone and a replay
closes the same windows with the same contents.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, get_args

from schemas.observer import WindowSignal

#: The signals a window yields, in the order of the behaviour vector.
SIGNALS: tuple[str, ...] = get_args(WindowSignal)

#: Signals that describe how the agent behaves per unit of work: the ones findings are about.
#: (`behaviour_distance`, from the deployment's centroid, is added by the detectors.)
SCORED: tuple[str, ...] = (
    "fuel",
    "latency",
    "error_rate",
    "memory",
    "logs_per_call",
    "queue_wait",
)


#: Windows after which an unreported replica's counters are forgotten.
_FORGET_WINDOWS = 30


class MalformedSample(ValueError):
    """A metrics or log message that is not what pods publish; skipped with this reason."""


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One replica's cumulative counters at one time (seconds since the epoch)."""

    time: float
    agent_id: str
    replica_id: str
    namespace: str
    name: str
    calls: int
    errors: int
    fuel_used: int
    #: Sum of call latencies (ms in handle calls); None from pods that do not send it (then the
    #: last latency stands for the calls since the previous sample).
    busy_ms: float | None
    last_latency_ms: float
    memory_bytes: int
    mailbox: int
    #: The pod that reported it ("" from pods that do not say).
    pod_id: str = ""
    #: The pod's worst event-loop lateness since its previous message (ms; the same on every
    #: sample of one message; 0 from pods that do not say): how starved the pod's process was.
    loop_lag_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class LogSample:
    time: float
    agent_id: str
    namespace: str
    name: str
    level: str


def _number(row: dict[str, Any], key: str, default: float | None = None) -> float:
    value = row.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedSample(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedSample(f"{key} must be a non-empty string, got {value!r}")
    return value


def _object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedSample(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedSample("not a JSON object")
    return doc


#: Longest pod id taken from a metrics message (pod ids are NATS tokens of at most 64).
_MAX_POD_ID = 64
#: Largest loop lag taken from a metrics message (a day; more is a broken clock, not a stall).
_MAX_LAG_MS = 86_400_000.0


def _loop_lag(doc: dict[str, Any]) -> float:
    """The pod's `pod.loop_lag_ms`, or 0 (unknown) when it has none that makes sense: the
    replica rows matter more, so a message whose pod section is odd keeps them."""
    pod = doc.get("pod")
    lag = pod.get("loop_lag_ms") if isinstance(pod, dict) else None
    if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not math.isfinite(lag):
        return 0.0
    return min(max(float(lag), 0.0), _MAX_LAG_MS)


def parse_metrics(body: bytes, time: float) -> list[ReplicaSample]:
    """The replica rows of one pod metrics message (`{"pod_id", "replicas": [...]}`)."""
    doc = _object(body)
    rows = doc.get("replicas")
    if not isinstance(rows, list):
        raise MalformedSample("replicas must be a list")
    pod_id = doc.get("pod_id", "")
    if not isinstance(pod_id, str) or len(pod_id) > _MAX_POD_ID:
        raise MalformedSample(f"pod_id must be a string of at most {_MAX_POD_ID} characters")
    lag = _loop_lag(doc)
    samples = []
    for row in rows:
        if not isinstance(row, dict):
            raise MalformedSample("a replica row is not an object")
        total = row.get("busy_ms")
        samples.append(
            ReplicaSample(
                time=time,
                agent_id=_text(row, "agent_id"),
                replica_id=_text(row, "replica_id"),
                namespace=_text(row, "namespace"),
                name=_text(row, "name"),
                calls=int(_number(row, "calls")),
                errors=int(_number(row, "errors")),
                fuel_used=int(_number(row, "fuel_used")),
                busy_ms=None if total is None else _number(row, "busy_ms"),
                last_latency_ms=_number(row, "last_latency_ms", 0.0),
                memory_bytes=int(_number(row, "memory_bytes", 0)),
                mailbox=int(_number(row, "mailbox", 0)),
                pod_id=pod_id,
                loop_lag_ms=lag,
            )
        )
    return samples


def parse_log(body: bytes) -> LogSample:
    """One agent log line as `runtime.replica` publishes it (time in milliseconds)."""
    row = _object(body)
    return LogSample(
        time=_number(row, "time_ms") / 1000,
        agent_id=_text(row, "agent_id"),
        namespace=_text(row, "namespace"),
        name=_text(row, "name"),
        level=_text(row, "level"),
    )


@dataclass(slots=True)
class Window:
    """One agent's activity in [start, end): sums over its replicas and peaks of gauges."""

    agent_id: str
    namespace: str
    name: str
    start: float
    end: float
    calls: int = 0
    errors: int = 0
    fuel: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0
    memory_bytes: int = 0
    mailbox_max: int = 0
    log_lines: int = 0
    samples: int = 0
    #: Pods the agent's replicas reported from in this window (sorted).
    pods: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def load(self) -> float:
        """Calls per second: the load the agent carried in this window."""
        return self.calls / self.seconds

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field, several times slower.
        doc = {f: getattr(self, f) for f in _WINDOW_FIELDS}
        doc["pods"] = list(self.pods)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Window:
        window = cls(**doc)
        window.pods = list(window.pods)
        return window

    def signals(self) -> dict[str, float]:
        """The window's signals; those per call are left out of a window without calls, since
        an idle agent has no latency rather than a latency of zero.

        - `logs_per_call`: an agent that logs a line per message logs twice as many lines at
          twice the load, and is the same agent;
        - `queue_wait`: seconds a message waits in the mailbox (its peak depth over the calls
          per second, Little's law), which stays small however deep a busy agent's mailbox
          gets, and grows when the agent stops keeping up.
        """
        out: dict[str, float] = {
            "message_rate": self.calls / self.seconds,
            "memory": self.memory_bytes / 2**20,
            "queue_depth": float(self.mailbox_max),
            "log_rate": self.log_lines / self.seconds,
        }
        if self.calls:
            out["fuel"] = self.fuel / self.calls
            out["latency"] = self.latency_ms_sum / self.calls
            out["error_rate"] = self.errors / self.calls
            out["logs_per_call"] = self.log_lines / self.calls
            out["queue_wait"] = self.mailbox_max * self.seconds / self.calls
        return out


_WINDOW_FIELDS = tuple(f.name for f in fields(Window))


@dataclass(slots=True)
class _Counters:
    calls: int
    errors: int
    fuel: int
    latency_ms: float
    time: float = 0.0


@dataclass(slots=True)
class WindowAggregator:
    """Turns one agent's samples into closed windows of `window_s` seconds."""

    agent_id: str
    namespace: str
    name: str
    window_s: float
    open: Window | None = None
    #: Last counters per replica, to take deltas (a counter that went down restarted from 0).
    last: dict[str, _Counters] = field(default_factory=dict)
    #: Log lines that arrived ahead of their window, by window index.
    early_logs: dict[int, int] = field(default_factory=dict)
    #: Log lines whose window had closed already (counted, not attributed).
    late_logs: int = 0

    def _index(self, time: float) -> int:
        return math.floor(time / self.window_s)

    def to_json(self) -> dict[str, Any]:
        """Everything the aggregator holds, as JSON values (exact: floats round-trip)."""
        return {
            "agent_id": self.agent_id,
            "namespace": self.namespace,
            "name": self.name,
            "window_s": self.window_s,
            "open": None if self.open is None else self.open.to_json(),
            "last": {
                r: [c.calls, c.errors, c.fuel, c.latency_ms, c.time] for r, c in self.last.items()
            },
            # JSON object keys are strings.
            "early_logs": {str(i): n for i, n in self.early_logs.items()},
            "late_logs": self.late_logs,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WindowAggregator:
        return cls(
            doc["agent_id"],
            doc["namespace"],
            doc["name"],
            doc["window_s"],
            None if doc["open"] is None else Window.from_json(doc["open"]),
            {r: _Counters(*c) for r, c in doc["last"].items()},
            {int(i): n for i, n in doc["early_logs"].items()},
            doc["late_logs"],
        )

    def _new(self, index: int) -> Window:
        start = index * self.window_s
        window = Window(self.agent_id, self.namespace, self.name, start, start + self.window_s)
        window.log_lines = self.early_logs.pop(index, 0)
        return window

    def add(self, sample: ReplicaSample) -> Window | None:
        """Fold one sample in; returns the window it closed, if any."""
        index = self._index(sample.time)
        closed = None
        if self.open is None:
            self.open = self._new(index)
        elif index > self._index(self.open.start):
            closed, self.open = self.open, self._new(index)
            self._prune(sample.time)
        window = self.open
        window.samples += 1
        if sample.pod_id and sample.pod_id not in window.pods:
            window.pods.append(sample.pod_id)
            window.pods.sort()
        window.memory_bytes = max(window.memory_bytes, sample.memory_bytes)
        window.mailbox_max = max(window.mailbox_max, sample.mailbox)
        before = self.last.get(sample.replica_id)
        if sample.busy_ms is not None:
            latency = sample.busy_ms
        elif before is None:
            latency = 0.0
        elif sample.calls < before.calls:  # restarted from zero
            latency = sample.last_latency_ms * sample.calls
        else:
            # A pod without busy_ms: the last call's latency stands for every call since.
            latency = before.latency_ms + sample.last_latency_ms * (sample.calls - before.calls)
        now = _Counters(sample.calls, sample.errors, sample.fuel_used, latency, sample.time)
        self.last[sample.replica_id] = now
        if before is None:
            return closed  # the first sample is only a reference point for deltas
        if now.calls < before.calls:
            before = _Counters(0, 0, 0, 0.0, sample.time)
        calls = now.calls - before.calls
        window.calls += calls
        window.errors += max(0, now.errors - before.errors)
        window.fuel += max(0, now.fuel - before.fuel)
        window.latency_ms_sum += max(0.0, now.latency_ms - before.latency_ms)
        if calls:
            window.latency_ms_max = max(window.latency_ms_max, sample.last_latency_ms)
        return closed

    def add_log(self, line: LogSample) -> None:
        index = self._index(line.time)
        current = None if self.open is None else self._index(self.open.start)
        if current is None or index > current:
            # Bounded: logs stamped far in the future (a skewed pod clock) are not hoarded.
            if current is None or index - current <= 16:
                self.early_logs[index] = self.early_logs.get(index, 0) + 1
        elif index == current and self.open is not None:
            self.open.log_lines += 1
        else:
            self.late_logs += 1

    def _prune(self, now: float) -> None:
        # Replicas that stopped (or moved) leave their last counters behind; one unseen for
        # many windows is gone, and a replica that comes back starts as a new reference point.
        horizon = now - _FORGET_WINDOWS * self.window_s
        for replica_id in [r for r, c in self.last.items() if c.time < horizon]:
            del self.last[replica_id]
