"""Online detectors over window signals: robust z-scores, half-space trees, behaviour distance.

Each detector learns what is normal for one agent (or, for the centroid, one deployment) from
the windows it has seen and scores a new window against that, before learning from it.
They are plain objects with no I/O, so the benchmark can run them over simulated time at full
speed, and each has an exact JSON form (`to_json`/`from_json`): the service keeps them in
stream-processing tables, whose values are JSON.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import operator
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from river import anomaly

from services.observer.features import SCORED, SIGNALS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_State = TypeVar("_State", bound="DataclassInstance")

#: 1.4826 * MAD estimates the standard deviation of normally distributed data.
MAD_TO_SIGMA = 1.4826

Direction = Literal["up", "both"]

#: Which way a signal is bad: more fuel, latency, errors, memory, waiting or logs per call is
#: suspicious. (The load, `message_rate`, is context: it is never scored.)
DIRECTIONS: dict[str, Direction] = {
    "fuel": "up",
    "latency": "up",
    "error_rate": "up",
    "message_rate": "both",
    "memory": "up",
    "queue_depth": "up",
    "log_rate": "up",
    "logs_per_call": "up",
    "queue_wait": "up",
    "behaviour_distance": "up",
}

#: Smallest spread a signal is measured against, in its own unit, so that a flat baseline
#: (an agent that never errs, an empty mailbox) does not turn any change into an infinite score.
ABSOLUTE_FLOORS: dict[str, float] = {
    "fuel": 1.0,
    "latency": 0.05,
    "error_rate": 0.02,
    "message_rate": 0.1,
    "memory": 0.1,
    "queue_depth": 1.0,
    "log_rate": 0.2,
    #: Lines per call; seconds in the mailbox.
    "logs_per_call": 0.2,
    "queue_wait": 1.0,
    "behaviour_distance": 0.02,
    #: A pod's loop lag summed over a window (ms; `machine.STALL`): a few ms of lateness is a
    #: loop's ordinary jitter, so a starved pod is tens of ms later than usual.
    "loop_lag": 10.0,
}

#: Spread floors proportional to a signal's level, where the signal's own noise is: latency and
#: fuel vary with the work each call gets; lines per call and mailbox waits from one window are
#: ragged (log lines are placed by their own clock, calls by the pod's samples, so a window's
#: lines and calls cover slightly different seconds). Memory is counted in whole pages and does
#: not wander with the work, so its floor is the MAD's and a small one. The rest use
#: `DetectorConfig.relative_floor`.
RELATIVE_FLOORS: dict[str, float] = {
    "memory": 0.01,
    "logs_per_call": 0.5,
    "queue_wait": 0.5,
}


@dataclass(frozen=True, slots=True)
class SignalScore:
    """How far one signal of one window is from its baseline."""

    signal: str
    value: float
    baseline: float
    #: The spread the deviation is measured in (robust sigma, floored).
    scale: float
    #: Signed robust z-score: (value - baseline) / scale.
    z: float

    def to_json(self) -> list[Any]:
        return [self.signal, self.value, self.baseline, self.scale, self.z]

    @classmethod
    def from_json(cls, doc: list[Any]) -> SignalScore:
        return cls(str(doc[0]), float(doc[1]), float(doc[2]), float(doc[3]), float(doc[4]))

    @classmethod
    def against(cls, signal: str, value: float, baseline: float, scale: float) -> SignalScore:
        return cls(signal, value, baseline, scale, (value - baseline) / scale)

    def z_of(self, value: float) -> float:
        """The z-score another value would have had against the same baseline and spread."""
        return (value - self.baseline) / self.scale

    def clipped(self, value: float, clip: float) -> float:
        """`value` within the baseline +- `clip` spreads: what a detector learns of a window
        (winsorising), so one wild window does not drag its baseline."""
        bound = clip * self.scale
        return min(max(value, self.baseline - bound), self.baseline + bound)

    @property
    def score(self) -> float:
        """The z-score in the signal's bad direction (0 when it moved the harmless way)."""
        if DIRECTIONS.get(self.signal, "both") == "up":
            return max(0.0, self.z)
        return abs(self.z)


@dataclass(slots=True)
class _RollingBaseline:
    """The settings of a rolling baseline of one signal, `RobustZ` or `LoadModel`: both are
    set from the Observer's settings (`AgentAnalysis.reconfigure`) and floored alike
    (`floored_scale`)."""

    signal: str
    #: Windows learnt from at most.
    size: int = 60
    #: Spread floor as a share of the baseline (noise proportional to the level).
    relative_floor: float = 0.05
    #: Winsorising bound: values learned are clipped to baseline +- clip * scale, so one wild
    #: window does not drag the baseline, while a lasting level shift still moves it.
    clip: float = 4.0


@dataclass(slots=True)
class RobustZ(_RollingBaseline):
    """Rolling median and MAD of one signal over the last `size` windows.

    The spread has three floors: the robust sigma itself, `relative_floor` times the baseline
    (noise proportional to the level, as latencies and fuel have), and a counting-noise floor
    the caller passes per window (a rate from few calls is noisy by itself).
    """

    values: deque[float] = field(default_factory=deque)
    #: The same values in order, so the median is a lookup rather than a sort per window.
    ordered: list[float] = field(default_factory=list)
    #: The MAD moves slowly; it is recomputed every `_MAD_EVERY` learned values.
    mad: float = 0.0
    mad_age: int = 0

    def ready(self, min_samples: int) -> bool:
        return len(self.values) >= min_samples

    def to_json(self) -> dict[str, Any]:
        # `ordered` is the same values sorted: not stored twice.
        return _fields_json(self, skip="ordered")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RobustZ:
        baseline = _from_fields_json(cls, doc, skip="ordered")
        baseline.ordered = sorted(baseline.values)
        return baseline

    def median(self) -> float:
        ordered, n = self.ordered, len(self.ordered)
        mid = n // 2
        return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def score(self, value: float, calls: int = 0, seconds: float = 1.0) -> SignalScore:
        if not self.values:
            return SignalScore(self.signal, value, value, 1.0, 0.0)
        median = self.median()
        noise_floor = counting_floor(self.signal, value, median, calls, seconds)
        scale = floored_scale(
            self.signal, MAD_TO_SIGMA * self.mad, median, self.relative_floor, noise_floor
        )
        return SignalScore.against(self.signal, value, median, scale)

    def learn(self, value: float, scored: SignalScore | None = None) -> None:
        if scored is not None and scored.baseline != value:
            value = scored.clipped(value, self.clip)
        self.values.append(value)
        bisect.insort(self.ordered, value)
        while len(self.values) > self.size:
            old = self.values.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        self.mad_age += 1
        if self.mad_age >= _MAD_EVERY or len(self.values) <= _MAD_EVERY:
            median = self.median()
            self.mad = statistics.median(abs(v - median) for v in self.ordered)
            self.mad_age = 0


#: Learned values between two MAD recomputations.
_MAD_EVERY = 8


#: How a stored field is read back, by its annotation: every number is made the type its field
#: declares (a JSON document is free to write 1 for 1.0), and a deque of floats is rebuilt from
#: its list.
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "deque[float]": lambda values: deque(float(v) for v in values),
}


def _fields_json(state: DataclassInstance, skip: str = "") -> dict[str, Any]:
    """The JSON form of a detector that is nothing but its fields (`RobustZ`, `LoadModel`,
    `DriftCusum`): each field by name, in declaration order, a deque as a list. `skip` names a
    field derived from the others, not stored twice. One function for all of them, so a field
    added to a detector is saved and restored without a second list of names to keep in step."""
    return {
        name: list(value) if isinstance(value := getattr(state, name), deque) else value
        for name, _ in _stored(type(state), skip)
    }


def _from_fields_json(cls: type[_State], doc: dict[str, Any], skip: str = "") -> _State:
    """The detector `_fields_json` wrote (`skip` is left at its default, for the caller to
    derive)."""
    return cls(**{name: decode(doc[name]) for name, decode in _stored(cls, skip)})


@functools.cache
def _stored(
    cls: type[DataclassInstance], skip: str
) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """The fields `_fields_json` stores and how each is read back. Cached: detectors are
    written with every closed window, and `dataclasses.fields` costs more than the writing."""
    return tuple((f.name, _DECODERS[str(f.type)]) for f in fields(cls) if f.name != skip)


def floored_scale(
    signal: str, sigma: float, baseline: float, relative_floor: float, counting: float
) -> float:
    """The spread a deviation from `baseline` is measured in: the robust `sigma`, floored by
    `relative_floor` times the baseline (noise proportional to the level), the signal's
    `ABSOLUTE_FLOORS` entry and the `counting` noise of the few events behind a window."""
    return max(sigma, relative_floor * abs(baseline), ABSOLUTE_FLOORS.get(signal, 1e-6), counting)


#: Assumed coefficient of variation of one call's fuel or latency.
PER_CALL_CV = 0.5


def counting_floor(signal: str, value: float, baseline: float, calls: int, seconds: float) -> float:
    """The spread a signal has from counting few events alone (binomial or Poisson noise).

    An error rate from 4 calls moves in steps of 0.25 however healthy the agent is; a message
    rate from 3 calls in a second has a Poisson spread of sqrt(3). Scores are measured against
    at least this, so quiet agents do not page for their own sampling noise.
    """
    if signal == "error_rate":
        p = min(max(value, 0.05), 0.95)
        return math.sqrt(p * (1 - p) / max(calls, 1))
    if signal == "message_rate":
        return math.sqrt(max(calls, 1)) / seconds
    if signal in ("fuel", "latency"):
        # A mean of n calls whose own spread is about half their level (a prior, not tuned).
        # Calls are skewed (a few slow ones), so a mean of very few of them strays further
        # than the normal approximation says: the (1 + 1/n) widens the spread for them.
        if calls <= 0:
            return 0.0
        return PER_CALL_CV * abs(baseline) / math.sqrt(calls) * (1 + 1 / calls)
    if signal == "logs_per_call" and calls > 0:
        # Lines counted over n calls: a Poisson count around the usual lines per call.
        return math.sqrt(max(baseline, value, 1.0 / calls) / calls)
    return 0.0


@dataclass(slots=True)
class LoadModel(_RollingBaseline):
    """An agent's latency as a function of its load: ln(latency) = a + b ln(calls per second),
    fitted over the last `size` windows with calls, and a window scored by how far its latency
    is from what this agent's calls take at this load.

    A busier agent on a busier machine answers somewhat slower (a call waits for a worker, the
    GIL, the CPU) and is the same agent; a call slower than its calls at this load is not. The
    fit also takes the load's daily swing out of the spread a deviation is measured against,
    so a real change stands out sooner.

    The slope is a least-squares fit kept within [0, 1] (latency never improves with load, nor
    grows faster than it for an agent that keeps up), the intercept the median of the log
    residuals, the spread the MAD of the relative residuals (value / expected - 1); all are
    refitted every `_MAD_EVERY` windows. Values learnt are clipped to the expected value +-
    `clip` spreads, so an incident does not drag the model. Loads below those learnt are taken
    as the lightest learnt (`expected`); loads far above are the caller's to judge
    (`seen_at`). The spread has the floors of
    `RobustZ` (relative, absolute, counting), as fractions of the expected value.
    """

    signal: str = "latency"
    size: int = 120
    #: ln load and ln value of the windows learnt (two lists: cheaper to write as JSON).
    xs: deque[float] = field(default_factory=deque)
    ys: deque[float] = field(default_factory=deque)
    a: float = 0.0
    b: float = 0.0
    #: MAD of the relative residuals.
    mad: float = 0.0
    age: int = 0

    def ready(self, min_samples: int) -> bool:
        return len(self.xs) >= min_samples

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LoadModel:
        return _from_fields_json(cls, doc)

    def seen_at(self, load: float, step: float) -> int:
        """Windows learnt at a load of at least `load / step`: how well this load is known."""
        floor = _ln(load / step)
        return sum(1 for x in self.xs if x >= floor)

    def expected(self, load: float) -> float:
        """This agent's latency at `load`. Below the lightest load learnt the model does not
        extrapolate: a slope fitted over a narrow range of loads (a few minutes of steady
        traffic) would promise calls several times faster than any it has seen, and a starved
        machine, serving fewer calls, would then look like every agent's own latency spike."""
        x = _ln(load)
        if self.xs:
            x = max(x, min(self.xs))
        return math.exp(self.a + self.b * x)

    def score(self, value: float, calls: int, seconds: float) -> SignalScore:
        if not self.xs:
            return SignalScore(self.signal, value, value, 1.0, 0.0)
        expected = self.expected(calls / seconds)
        counting = PER_CALL_CV / math.sqrt(calls) * (1 + 1 / calls) if calls > 0 else 0.0
        scale = floored_scale(
            self.signal,
            MAD_TO_SIGMA * self.mad * expected,
            expected,
            self.relative_floor,
            counting * expected,
        )
        return SignalScore.against(self.signal, value, expected, scale)

    def learn(self, value: float, calls: int, seconds: float, scored: SignalScore | None) -> None:
        if scored is not None and self.xs:
            value = scored.clipped(value, self.clip)
        self.xs.append(_ln(calls / seconds))
        self.ys.append(_ln(value))
        while len(self.xs) > self.size:
            self.xs.popleft()
            self.ys.popleft()
        self.age += 1
        if self.age >= _MAD_EVERY or len(self.xs) <= _MAD_EVERY:
            self._fit()
            self.age = 0

    def _fit(self) -> None:
        xs, ys = self.xs, self.ys
        n = len(xs)
        mean_x = sum(xs) / n
        sxx = sum((x - mean_x) ** 2 for x in xs)
        if sxx > 1e-9:
            mean_y = sum(ys) / n
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
            self.b = min(max(slope, 0.0), 1.0)
        else:
            self.b = 0.0
        self.a = statistics.median(y - self.b * x for x, y in zip(xs, ys, strict=True))
        relative = [math.exp(y - self.a - self.b * x) - 1 for x, y in zip(xs, ys, strict=True)]
        centre = statistics.median(relative)
        self.mad = statistics.median(abs(r - centre) for r in relative)


def _ln(value: float) -> float:
    return math.log(max(value, 1e-9))


@dataclass(slots=True)
class DriftCusum:
    """A one-sided CUSUM of one signal's deviation from its baseline: a slow, persistent rise
    (a drift) that no single window shows, accumulated over the windows it lasts.

    A window's deviation is ln(value / baseline) in spreads: the relative spread its z-score is
    measured in (`SignalScore.scale / baseline`, which counts the calls behind it). It is taken
    from its own recent level, an exponentially weighted mean of the deviations (weight
    `weight`, each clipped to +-`clip`): the baselines leave a slow residue, a daily swing the
    load model does not take out (on the benchmark's workload, windows 2 s apart and 100 s apart
    alike correlate by about 0.2), which a CUSUM would otherwise add up into findings. A drift
    rises much faster than that level follows it.

    Each window adds its deviation above the level less `slack`, at most `cap - slack` (one wild
    window is a spike, for the z-scores to judge, not a drift: `cap - slack` stays below
    `limit`; a cap well above the slack lets a clear rise count in full, so it is found in two
    windows rather than three), and the sum never goes below 0.
    The signal drifts while the sum is above `limit`. The sum is kept below `2 * limit`, so once
    the rise stops it falls back under the limit within a few windows. Nothing adds up during
    the first `warmup` windows (a young baseline's misfit is not a drift). `reset` forgets the
    sum, not the level: a window that says nothing about the agent itself (its machine was
    slow) must count neither toward nor against a drift.
    """

    signal: str = "latency"
    slack: float = 1.0
    limit: float = 5.0
    cap: float = 5.0
    weight: float = 0.1
    clip: float = 3.0
    warmup: int = 30
    level: float = 0.0
    total: float = 0.0
    #: Windows learnt into the level.
    windows: int = 0
    #: Windows in a row the sum has been above 0: how long the rise has lasted.
    rising: int = 0

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DriftCusum:
        return _from_fields_json(cls, doc)

    @property
    def drifting(self) -> bool:
        return self.total > self.limit

    def step(self, scored: SignalScore) -> bool:
        """Add one window, scored against its baseline, and learn it into the level; whether
        the signal drifts now."""
        if scored.baseline <= 0 or scored.scale <= 0:
            return self.drifting
        u = _ln(scored.value / scored.baseline) / (scored.scale / scored.baseline)
        if math.isnan(u):
            # inf/inf from extreme (finite) counters a pod sent: says nothing, and a NaN
            # learnt into the level would silence the detector for good.
            return self.drifting
        if self.windows >= self.warmup:
            rise = min(u - self.level, self.cap) - self.slack
            self.total = min(max(0.0, self.total + rise), 2 * self.limit)
            self.rising = self.rising + 1 if self.total > 0 else 0
        self.level += self.weight * (min(max(u, -self.clip), self.clip) - self.level)
        self.windows += 1
        return self.drifting

    def reset(self) -> None:
        self.total, self.rising = 0.0, 0


#: What the trees see: the per-call signals and the distance from the deployment's centroid
#: (not the load, so that a busy agent is not an unusual combination).
TREE_FEATURES: tuple[str, ...] = (*SCORED, "behaviour_distance")


def squash(z: float) -> float:
    """A signed z-score mapped into [0, 1] (0.5 is the baseline), the range half-space trees
    partition."""
    return 0.5 + 0.5 * math.tanh(z / 8)


@dataclass(slots=True)
class MultivariateTrees:
    """river's HalfSpaceTrees over the squashed z-scores of all signals of a window.

    The z-scores make the trees' input stationary and scale-free (each agent is compared with
    itself), so one fixed [0, 1] box fits every agent; the trees catch unusual combinations
    that no single z-score shows.
    """

    seed: int = 7
    model: anomaly.HalfSpaceTrees = field(init=False)
    #: Digest of the grown trees' splits, which never change (computed once, see `to_json`).
    shape: str = field(default="", init=False, compare=False)

    def __post_init__(self) -> None:
        self.model = anomaly.HalfSpaceTrees(
            n_trees=10,
            height=6,
            window_size=50,
            seed=self.seed,
            limits=dict.fromkeys(TREE_FEATURES, (0.0, 1.0)),
        )

    def to_json(self) -> dict[str, Any]:
        """The trees' masses and window counter (see `from_json`)."""
        model: Any = self.model
        if not model.trees:
            return {"seed": self.seed}
        if not self.shape:
            self.shape = _shape(model)
        nodes = model._tree_nodes
        return {
            "seed": self.seed,
            "shape": self.shape,
            "counter": model.counter,
            "first_window": model._first_window,
            "r_mass": [list(map(_R_MASS, tree)) for tree in nodes],
            "l_mass": [list(map(_L_MASS, tree)) for tree in nodes],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> MultivariateTrees:
        """Trees from `to_json`.

        river has no serialisation of its own but pickle. A tree's shape (split features and
        thresholds) follows from the seed and the features alone; only the node masses and the
        window counter change as it learns. So the shape is grown again from the seed, exactly
        as river grows it on the first `learn_one`, and the masses are put back; the shape's
        digest guards against a river that grows other trees (then the trees start afresh).
        Not a base64 pickle in the JSON: unpickling a changelog message would run whatever
        anyone allowed to publish on `swarm.changelog.>` put there, and the pickle is ~60 KB
        in base64 against ~6 KB of masses (both rewritten with every closed window).
        """
        trees = cls(int(doc["seed"]))
        if "r_mass" not in doc:
            return trees
        model: Any = trees.model
        model.learn_one(dict.fromkeys(TREE_FEATURES, 0.5))  # grows the trees
        trees.shape = _shape(model)
        tree_nodes = model._tree_nodes
        sizes = [len(t) for t in tree_nodes]
        if (
            trees.shape != doc["shape"]
            or [len(r) for r in doc["r_mass"]] != sizes
            or [len(m) for m in doc["l_mass"]] != sizes
        ):
            return cls(int(doc["seed"]))
        for nodes, r_mass, l_mass in zip(tree_nodes, doc["r_mass"], doc["l_mass"], strict=True):
            for node, r, m in zip(nodes, r_mass, l_mass, strict=True):
                node.r_mass, node.l_mass = r, m
        model.counter = int(doc["counter"])
        model._first_window = bool(doc["first_window"])
        return trees

    @staticmethod
    def features(scores: dict[str, SignalScore]) -> dict[str, float]:
        return {s: squash(scores[s].z) if s in scores else 0.5 for s in TREE_FEATURES}

    def score(self, scores: dict[str, SignalScore]) -> float:
        return float(self.model.score_one(self.features(scores)))  # type: ignore[no-untyped-call]

    def learn(self, scores: dict[str, SignalScore]) -> None:
        self.model.learn_one(self.features(scores))  # type: ignore[no-untyped-call]


_R_MASS = operator.attrgetter("r_mass")
_L_MASS = operator.attrgetter("l_mass")


def _shape(model: Any) -> str:
    """A digest of the trees' split features and thresholds."""
    digest = hashlib.sha256()
    for nodes in model._tree_nodes:
        for node in nodes:
            split = f"{getattr(node, 'feature', '')}:{getattr(node, 'threshold', '')};"
            digest.update(split.encode())
    return digest.hexdigest()[:16]


#: Typical magnitude of each signal, so every dimension of a behaviour vector counts alike.
_SCALES: dict[str, float] = {
    "fuel": 1e9,
    "latency": 60_000.0,
    "error_rate": 1.0,
    "message_rate": 10_000.0,
    "memory": 4096.0,
    "queue_depth": 1024.0,
    "log_rate": 10_000.0,
}


def behaviour_vector(signals: dict[str, float]) -> list[float]:
    """The window as a unit vector: log-scaled signals, each divided by its typical range.

    Unit length makes cosine distance compare the shape of behaviour (what an agent spends its
    calls on) rather than its volume. A missing signal (no calls) counts as 0.
    """
    return _unit_vector(signals, SIGNALS, _SCALES)


#: What a behaviour *shape* is made of: how the agent spends a call, whatever the load.
SHAPE_SIGNALS: tuple[str, ...] = ("fuel", "latency", "error_rate", "memory", "logs_per_call")
_SHAPE_SCALES: dict[str, float] = {**_SCALES, "logs_per_call": 1000.0}


def shape_vector(signals: dict[str, float]) -> list[float]:
    """Like `behaviour_vector`, over the per-call signals only: twice the traffic, twice the
    lines logged and a deeper mailbox leave it where it was, so the distance from the
    deployment's centroid measures unlike its peers, not busier than them."""
    return _unit_vector(signals, SHAPE_SIGNALS, _SHAPE_SCALES)


def _unit_vector(
    signals: dict[str, float], names: tuple[str, ...], scales: dict[str, float]
) -> list[float]:
    """`names` of `signals`, log-scaled and each divided by its typical range in `scales` (the
    error rate, already in [0, 1], as it is), normalised to unit length."""
    raw = [
        math.log1p(max(signals.get(s, 0.0), 0.0)) / math.log1p(scales[s])
        if s != "error_rate"
        else min(max(signals.get(s, 0.0), 0.0), 1.0)
        for s in names
    ]
    # A constant component keeps the vector defined (and comparable) for an idle agent.
    raw.append(0.1)
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def cosine_distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0:
        return 1.0
    return max(0.0, 1.0 - dot / (na * nb))


_PER_CALL = frozenset({"fuel", "latency", "error_rate", "logs_per_call", "queue_wait"})


@dataclass(slots=True)
class Profile:
    """An agent's behaviour smoothed over windows, weighted by how many calls each window saw:
    a window of one call moves it a little, a busy window a lot, so the behaviour vector is not
    at the mercy of a quiet window's sampling noise."""

    #: Calls at which a window moves the profile half way.
    half_calls: float = 10.0
    signals: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"half_calls": self.half_calls, "signals": dict(self.signals)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Profile:
        return cls(doc["half_calls"], dict(doc["signals"]))

    def learn(self, signals: dict[str, float], calls: int) -> list[float]:
        """Fold one window in; returns the behaviour vector (see `shape` for the other)."""
        weight = calls / (calls + self.half_calls) if calls else 0.0
        for name, value in signals.items():
            per_call = name in _PER_CALL
            a = weight if per_call else max(weight, 0.5)
            before = self.signals.get(name)
            self.signals[name] = value if before is None else (1 - a) * before + a * value
        return behaviour_vector(self.signals)

    def shape(self) -> list[float]:
        return shape_vector(self.signals)


@dataclass(slots=True)
class Centroid:
    """The deployment's normal behaviour: an exponentially weighted mean of its agents' vectors
    in windows that were not flagged."""

    alpha: float = 0.05
    vector: list[float] | None = None
    windows: int = 0

    def to_json(self) -> dict[str, Any]:
        vector = None if self.vector is None else list(self.vector)
        return {"alpha": self.alpha, "vector": vector, "windows": self.windows}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Centroid:
        vector = doc["vector"]
        return cls(doc["alpha"], None if vector is None else list(vector), doc["windows"])

    def distance(self, vector: list[float]) -> float | None:
        if self.vector is None or len(self.vector) != len(vector):
            return None  # nothing learnt yet (or learnt from vectors of an older shape)
        return cosine_distance(vector, self.vector)

    def learn(self, vector: list[float]) -> None:
        if self.vector is not None and len(self.vector) != len(vector):
            self.vector, self.windows = None, 0  # vectors of an older shape: start afresh
        self.windows += 1
        if self.vector is None:
            self.vector = list(vector)
            return
        # Faster at first, so the first few agents' windows do not anchor the centroid forever.
        a = max(self.alpha, 1.0 / self.windows)
        self.vector = [(1 - a) * c + a * v for c, v in zip(self.vector, vector, strict=True)]
