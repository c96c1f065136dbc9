"""An in-memory Hive: decide + evolve without servers, for testing the rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import Envelope, Payload, command, event, names
from swarm.domain.decide import Decision, Rejection, decide
from swarm.domain.evolve import evolve
from swarm.domain.state import HiveState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Sim:
    state: HiveState = field(default_factory=HiveState)
    now: datetime = T0
    log: list[Payload] = field(default_factory=list)
    #: The events as written, the one at sequence n at index n - 1 (for folding other views).
    envelopes: list[Envelope[Any]] = field(default_factory=list)
    seq: int = 0

    def send(self, payload: Payload, identity: str = "user:test") -> Decision | Rejection:
        env = command(payload, source="test", identity=identity, time=self.now)
        outcome = decide(self.state, env, self.now)
        if isinstance(outcome, Decision):
            for p in outcome.events:
                aggregate = p.TYPE.split(".")[1]
                agg_id = getattr(p, names.AGGREGATE_ID_FIELDS[aggregate])
                self.seq += 1
                written = event(p, aggregate_id=agg_id, source="hive", cause=env, time=self.now)
                evolve(self.state, self.seq, written)
                self.log.append(p)
                self.envelopes.append(written)
        return outcome

    def ok(self, payload: Payload, identity: str = "user:test") -> list[Payload]:
        outcome = self.send(payload, identity)
        assert isinstance(outcome, Decision), outcome
        return outcome.events

    def rejected(self, payload: Payload, identity: str = "user:test") -> Rejection:
        outcome = self.send(payload, identity)
        assert isinstance(outcome, Rejection), outcome
        return outcome

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def types(self, events: list[Any]) -> list[str]:
        return [e.TYPE.removeprefix("swarm.") for e in events]
