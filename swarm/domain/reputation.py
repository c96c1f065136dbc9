"""An agent's reputation: a trust score in [0, 1] moved by what the log says about it.

Pure and deterministic: time is the events' own `time`, never the wall clock, so every Hive
replica folds the same score. Good outcomes move trust a fraction of the way towards 1, bad ones
a fraction of the way towards 0 (so it never leaves [0, 1] and one event never wipes out a long
record); between events it decays exponentially back towards the prior, so an old misdeed is
forgiven and an old success stops vouching.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: Where a new agent starts and where trust drifts back to.
PRIOR = 0.8
#: Seconds for the distance to the prior to halve.
HALF_LIFE_S = 600.0
#: Fractions of the way towards 1 (good) or 0 (bad).
RUNNING = 0.05
CRASHED = 0.15
FAILED = 0.3
ANOMALY = {"info": 0.05, "warning": 0.2, "critical": 0.5}
#: A change smaller than this is not worth an event on the log.
PUBLISH_STEP = 0.1


@dataclass(slots=True)
class Reputation:
    trust: float = PRIOR
    #: Event time of the last change (decay runs from there).
    at: datetime | None = None
    #: The value last put on the log (`agent.reputation_changed`).
    published: float = PRIOR
    #: What moved it last.
    reason: str = "new agent"


def current(rep: Reputation, now: datetime) -> float:
    """The trust decayed to `now`."""
    if rep.at is None or now <= rep.at:
        return rep.trust
    factor: float = 0.5 ** ((now - rep.at).total_seconds() / HALF_LIFE_S)
    return PRIOR + (rep.trust - PRIOR) * factor


def observe(rep: Reputation, now: datetime, move: float, reason: str) -> None:
    """Apply an outcome at `now`: `move` > 0 goes that fraction towards 1, < 0 towards 0."""
    trust = current(rep, now)
    if move >= 0:
        trust += min(move, 1.0) * (1.0 - trust)
    else:
        trust -= min(-move, 1.0) * trust
    rep.trust = min(1.0, max(0.0, trust))
    rep.at = now if rep.at is None else max(rep.at, now)
    rep.reason = reason


def anomaly_move(severity: str, score: float) -> float:
    """How far a finding pulls trust down: by severity, scaled by the detector's score."""
    return -ANOMALY.get(severity, ANOMALY["warning"]) * max(0.0, min(1.0, score))


def worth_publishing(rep: Reputation, now: datetime) -> bool:
    return abs(current(rep, now) - rep.published) >= PUBLISH_STEP
