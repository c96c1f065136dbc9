"""The Agent Orchestrator's reconcile loop (leader only): compare what runs with what should.

It never changes state itself. It notices pods whose lease ran out, crashed replicas whose
backoff has elapsed and misbehaving agents (`heal.py`), and sends the commands that fix them
(`pod.expire`, `replica.restart`, `agent.quarantine`, `replica.rewind`, `agent.revert`), so
every self-healing step is decided by the same rules and is on the log with its reason. Command
ids are derived from what they fix (keyed, so nobody else can predict them), so sending one
twice is deduplicated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import Payload, command, commands, names, utcnow
from services.hive import heal
from services.hive.state import HiveState
from swarm.kernel.eventlog import AppendFailed, AppendRequest, EventLog
from swarm.kernel.ids import IdKey

log = structlog.get_logger(__name__)


class Heartbeats:
    """Last time each pod was heard from (monotonic clock), on every replica.

    Leases live here, not in the replicated state: a heartbeat every second per pod does not
    belong on the audit log. A newly elected leader counts its election as a heartbeat from every
    pod (a grace period), the way Kubernetes' node controller does after a restart.
    """

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.since = time.monotonic()

    async def subscribe(self, nc: NATS) -> Subscription:
        async def on_beat(msg: Msg) -> None:
            self.seen[msg.subject.rsplit(".", 1)[1]] = time.monotonic()

        return await nc.subscribe(f"{names.HEARTBEAT_PREFIX}.*", cb=on_beat)

    def age(self, pod_id: str) -> float:
        return time.monotonic() - max(self.seen.get(pod_id, 0.0), self.since)

    def reset_grace(self) -> None:
        self.since = time.monotonic()


class Reconciler:
    def __init__(
        self,
        eventlog: EventLog,
        heartbeats: Heartbeats,
        working: Callable[[], HiveState | None],
        *,
        ids: IdKey,
        interval: float = 0.25,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.log = eventlog
        self.ids = ids
        self.heartbeats = heartbeats
        self.working = working
        self.interval = interval
        self.clock = clock

    async def run(self, still_leader: Callable[[], bool]) -> None:
        self.heartbeats.reset_grace()
        while still_leader():
            state = self.working()
            if state is not None:
                try:
                    await self._send(self.plan(state), state)
                except AppendFailed as exc:
                    log.warning("reconcile could not send", error=str(exc))
            await asyncio.sleep(self.interval)

    def plan(self, state: HiveState) -> list[tuple[str, Payload]]:
        """(command id, payload) for everything that needs fixing now."""
        out: list[tuple[str, Payload]] = []
        now = self.clock()
        for pod in state.pods.values():
            if pod.status == "ready" and self.heartbeats.age(pod.pod_id) > pod.lease_s:
                out.append(
                    (
                        f"expire-{pod.pod_id}-{pod.last_seq}",
                        commands.ExpirePod(
                            pod_id=pod.pod_id,
                            last_heartbeat_age_s=round(self.heartbeats.age(pod.pod_id), 3),
                        ),
                    )
                )
            elif pod.status == "lost" and pod.replicas:
                out.append(
                    (
                        f"expire-{pod.pod_id}-{pod.last_seq}-{len(pod.replicas)}",
                        commands.ExpirePod(pod_id=pod.pod_id, last_heartbeat_age_s=0.0),
                    )
                )
        for agent in state.agents.values():
            for replica in agent.replicas.values():
                if (
                    replica.phase == "crashed"
                    and replica.restart_at is not None
                    and replica.restart_at <= now
                ):
                    out.append(
                        (
                            f"restart-{replica.replica_id}-{len(replica.crashes)}",
                            commands.RestartReplica(
                                agent_id=agent.agent_id, replica_id=replica.replica_id
                            ),
                        )
                    )
        # Anomalies recorded on the log: quarantine, rewind or roll back per the agent's policy.
        out += heal.plan(state, now)
        return out

    async def _send(self, planned: list[tuple[str, Payload]], state: HiveState) -> None:
        if not planned:
            return
        requests = []
        for command_id, payload in planned:
            # A healing step names the finding it acts on, so `swarm trace` links the two.
            causation, correlation = heal.cause_of(state, payload) or (None, None)
            env = command(
                payload,
                source="hive/reconcile",
                id=self._id(command_id),
                identity="service:hive",
                causationid=causation,
                correlationid=correlation,
            )
            requests.append(AppendRequest.of(env))
        await self.log.append_batch(requests)

    def _id(self, planned: str) -> str:
        """The command id of a planned fix: the same for the same fix on every replica (so a
        new leader repeating it is deduplicated), unguessable to anyone else (so nobody can
        answer it first), with the kind of fix readable in front (`expire-…`, `quar-…`)."""
        kind = planned.split("-", 1)[0]
        prefix = kind if names.is_token(kind) and len(kind) <= 16 else "fix"
        return self.ids.derive(prefix, planned)
