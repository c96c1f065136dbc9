"""The scheduler's intake: a stream app folding SWARM_EVENTS into its tables and the planner.

`Intake.app()` builds the `StreamApp` (`swarm.kernel.streaming`, app `scheduler`): tables
`pods`, `agents` and `replicas` (see `tables.py`) and one processor over SWARM_EVENTS. Its
handler folds each event into the planner (`Planner.apply`: the view, the attempts, what is in
flight) and writes the rows the event touched, so the tables always describe the view at the
processor's position. The tables are the state that survives: on start they are recovered from
their changelog (exactly once per event, whatever crashed when) and the planner's view is
rebuilt from them, with no replay of the log. The view is the planner's in-memory form of the
same rows, which the market clears against.

The handler returns no outputs: proposals come from the scheduler's planning pass, with ids
that are a function of the request and the rejections read (`proposals.proposal_id`), so a
proposal re-sent after a restart is dropped by JetStream as a duplicate all the same.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

from schemas import REGISTRY, CommandRejected, Envelope, events, names
from services.scheduler.planner import Planner, Retry
from services.scheduler.proposals import parse_proposal_id
from services.scheduler.tables import (
    AGENTS,
    PODS,
    REPLICAS,
    TABLES,
    encode_agent,
    encode_pod,
    encode_replica,
    pod_usage,
    view_of,
)
from services.scheduler.view import HANDLED
from swarm.domain.placement import ReplicaKey
from swarm.kernel.seal import SealVerifier
from swarm.kernel.settings import Settings
from swarm.kernel.streaming import StreamApp, StreamEvent, Tables

#: CloudEvents types of the events the planner folds; every other event only moves the position.
_MODELS: list[type[Any]] = [*HANDLED, CommandRejected]
FOLDED: frozenset[str] = frozenset(m.TYPE for m in _MODELS)
_AGENT_EVENTS = (events.AgentDeployed, events.AgentRolloutStarted, events.AgentDeleted)
_POD_EVENTS = (events.PodRegistered, events.PodLost)


def decode(body: bytes, seal: SealVerifier | None = None) -> Envelope[Any] | None:
    """Strictly decode the events the planner folds; None for the others (not decoded), and
    for outcomes without the Hive's seal when its key is known (a foreign write answers none
    of our proposals)."""
    head = json.loads(body)
    if not isinstance(head, dict) or head.get("type") not in FOLDED:
        return None
    if seal is not None and head.get("type") == CommandRejected.TYPE and not seal.verify(body):
        return None
    return REGISTRY.decode(body)


class Intake:
    """Keeps the planner's view equal to the tables, event by event."""

    def __init__(
        self,
        planner: Planner,
        *,
        clock: Callable[[], float],
        on_retry: Callable[[Retry], None] = lambda _retry: None,
        seal: SealVerifier | None = None,
    ) -> None:
        self.planner = planner
        self.seal = seal
        self.clock = clock
        self.on_retry = on_retry
        #: Set after every event folded: the planning pass may have something to do.
        self.changed = asyncio.Event()
        self._stale = True

    def app(self, settings: Settings, *, batch: int = 500) -> StreamApp:
        """A new incarnation of the stream app; the view is rebuilt from its recovered tables."""
        app = StreamApp(names.SCHEDULER_APP, settings, batch=batch)
        for table in TABLES:
            app.table(table)
        app.processor(
            stream=names.STREAM_EVENTS,
            durable=names.SCHEDULER_PROCESSOR,
            decode=functools.partial(decode, seal=self.seal),
        )(self.handle)
        self._stale = True
        return app

    def sync(self, app: StreamApp) -> None:
        """After `app.start()`: rebuild the view from the recovered tables, unless an event
        was already folded into it (which rebuilt it first)."""
        if self._stale:
            self._rebuild(app.tables, app.position(names.SCHEDULER_PROCESSOR))

    def _rebuild(self, tables: Tables, applied_seq: int) -> None:
        view, attempts = view_of(
            tables[PODS].items(), tables[AGENTS].items(), tables[REPLICAS].items(), applied_seq
        )
        self.planner.restore(view, attempts)
        self._stale = False
        self.changed.set()

    def handle(self, tables: Tables, event: StreamEvent) -> None:
        """The processor: fold one event into the planner, write what it changed."""
        if self._stale:
            self._rebuild(tables, event.seq - 1)
        envelope: Envelope[Any] | None = event.envelope
        if envelope is None:
            self.planner.skip(event.seq)
            return
        try:
            retry = self._fold(tables, envelope, event.seq)
        except Exception:
            # The app rolls the tables back and runs the event again: rebuild the view from
            # them first, whatever the failed fold left in it.
            self._stale = True
            raise
        if retry is not None:
            self.on_retry(retry)
        self.changed.set()

    def _fold(self, tables: Tables, envelope: Envelope[Any], seq: int) -> Retry | None:
        planner = self.planner
        view = planner.view
        data = envelope.data
        agent_id: str | None = getattr(data, "agent_id", None)
        replica_id: str | None = getattr(data, "replica_id", None)
        replicas: set[ReplicaKey] = set()
        pod_ids: set[str] = set()
        if isinstance(data, CommandRejected):
            # A rejection of our proposal counts an attempt on its (still waiting) request.
            parsed = parse_proposal_id(data.command_id)
            key = view.requests.get(parsed[0]) if parsed is not None else None
            if key is not None:
                replicas.add(key)
        elif agent_id is not None:
            agent = view.agents.get(agent_id)
            if isinstance(data, (events.AgentDeployed, events.AgentDeleted)) and agent is not None:
                # Deleting forgets its replicas' requests; a deploy starts the agent afresh.
                replicas.update((agent_id, r) for r in agent.replicas)
            elif replica_id is not None:
                replicas.add((agent_id, replica_id))
                replica = agent.replicas.get(replica_id) if agent is not None else None
                if replica is not None and replica.pod_id is not None:
                    pod_ids.add(replica.pod_id)  # it may leave this pod
        pod_id: str | None = getattr(data, "pod_id", None)
        if pod_id is not None:
            pod_ids.add(pod_id)
        usage = {p: pod_usage(view.pods.get(p)) for p in pod_ids}

        retry = planner.apply(envelope, seq, self.clock())

        view = planner.view
        for p in pod_ids:
            pod = view.pods.get(p)
            if pod is not None and (isinstance(data, _POD_EVENTS) or pod_usage(pod) != usage[p]):
                tables[PODS][p] = encode_pod(pod)
        if agent_id is not None:
            agent = view.agents.get(agent_id)
            if agent is None:
                if agent_id in tables[AGENTS]:
                    del tables[AGENTS][agent_id]
            elif isinstance(data, _AGENT_EVENTS):
                tables[AGENTS][agent_id] = encode_agent(agent)
        attempts = planner.attempts
        for key in replicas:
            owner = view.agents.get(key[0])
            replica = owner.replicas.get(key[1]) if owner is not None else None
            if replica is not None:
                tables[REPLICAS][key] = encode_replica(view, key[0], replica, attempts)
            elif key in tables[REPLICAS]:
                del tables[REPLICAS][key]
        return retry


__all__ = ["FOLDED", "Intake", "decode"]
