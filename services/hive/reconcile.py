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
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import structlog

from schemas import Payload, command, commands, names, utcnow
from swarm.domain import heal
from swarm.domain.state import HiveState
from swarm.kernel.eventlog import (
    AppendFailed,
    AppendRequest,
    EventLog,
    EventLogError,
    Message,
    NoResponders,
    RequestTimeout,
    Subscription,
)
from swarm.kernel.ids import IdKey

log = structlog.get_logger(__name__)


#: Inter-arrival gaps kept per pod, to measure its heartbeat jitter.
_GAPS = 64
#: Gaps needed before the lease adapts to them.
_MIN_GAPS = 8
#: A lease stretches to this many times the slowest recent gap (the 98th percentile)...
_STRETCH = 4.0
#: ...but never beyond this many times the pod's own lease.
_MAX_STRETCH = 6.0
#: How long a pod has to answer its first liveness probe; each further one in a row gets twice
#: as long as the one before.
PROBE_TIMEOUT_S = 1.0
#: Probes in a row a pod must leave unanswered before it is declared lost. One slow answer on a
#: loaded machine (the pod's heartbeat thread and this loop compete with everything else for two
#: cores) is not death; a pod nobody listens for (its connection is gone) is lost at once.
PROBES = 2
#: A probe that timed out this much later than asked timed out because this process stalled,
#: not because the pod did: it says nothing about the pod.
_STALLED = 1.5

#: What a probe found: an answer, nobody listening, no answer in time, or nothing (this side
#: stalled).
Probe = Literal["answered", "gone", "silent", "unknown"]


class Heartbeats:
    """Last time each pod was heard from (monotonic clock), and how regularly, on every replica.

    Leases live here, not in the replicated state: a heartbeat every second per pod does not
    belong on the audit log. A newly elected leader counts its election as a heartbeat from every
    pod (a grace period), the way Kubernetes' node controller does after a restart.

    A lease adapts to the jitter measured: on a loaded machine (the pod's or this one) beats
    arrive late and bunched, and a pod that beats every second but now and then misses five
    seconds is busy, not gone. The lease is the pod's own, stretched to `_STRETCH` times the
    slowest recent gap, at most `_MAX_STRETCH` times its own.
    """

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.gaps: dict[str, deque[float]] = {}
        self.since = time.monotonic()

    async def subscribe(self, log_: EventLog) -> Subscription:
        async def on_beat(msg: Message) -> None:
            self.beat(msg.subject.rsplit(".", 1)[1])

        return await log_.subscribe(f"{names.HEARTBEAT_PREFIX}.*", on_beat)

    def beat(self, pod_id: str, at: float | None = None) -> None:
        now = time.monotonic() if at is None else at
        last = self.seen.get(pod_id)
        if last is not None and now > last:
            self.gaps.setdefault(pod_id, deque(maxlen=_GAPS)).append(now - last)
        self.seen[pod_id] = now

    def age(self, pod_id: str) -> float:
        return time.monotonic() - max(self.seen.get(pod_id, 0.0), self.since)

    def lease(self, pod_id: str, base: float) -> float:
        """The lease `pod_id` is held to: `base`, stretched to its measured jitter."""
        gaps = self.gaps.get(pod_id)
        if gaps is None or len(gaps) < _MIN_GAPS:
            return base
        ordered = sorted(gaps)
        slow = ordered[min(len(ordered) - 1, int(0.98 * len(ordered)))]
        return min(max(base, _STRETCH * slow), _MAX_STRETCH * base)

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
        #: Probes each late pod has left unanswered in a row.
        self.silent: dict[str, int] = {}

    async def run(self, still_leader: Callable[[], bool]) -> None:
        self.heartbeats.reset_grace()
        while still_leader():
            state = self.working()
            if state is not None:
                try:
                    await self._send(await self._confirmed(self.plan(state)), state)
                except AppendFailed as exc:
                    log.warning("reconcile could not send", error=str(exc))
            await asyncio.sleep(self.interval)

    def plan(self, state: HiveState) -> list[tuple[str, Payload]]:
        """(command id, payload) for everything that needs fixing now."""
        out: list[tuple[str, Payload]] = []
        now = self.clock()
        for pod in state.pods.values():
            if pod.status == "ready" and pod.pod_id not in self.heartbeats.seen:
                # Its registration is its first sign of life: the lease of a pod that registers
                # long after this replica was elected runs from now, not from the election.
                self.heartbeats.beat(pod.pod_id)
            lease = self.heartbeats.lease(pod.pod_id, pod.lease_s)
            if pod.status == "ready" and self.heartbeats.age(pod.pod_id) > lease:
                out.append(
                    (
                        f"expire-{pod.pod_id}-{pod.last_seq}",
                        commands.ExpirePod(
                            pod_id=pod.pod_id,
                            last_heartbeat_age_s=round(self.heartbeats.age(pod.pod_id), 3),
                            lease_s=round(lease, 3),
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

    async def _confirmed(self, planned: list[tuple[str, Payload]]) -> list[tuple[str, Payload]]:
        """`planned`, less the pods whose lease ran out but that may still be alive.

        A pod is declared lost only when it is gone: its heartbeats are late *and* nobody
        listens on its probe subject, or it left `PROBES` probes in a row unanswered (each given
        twice as long as the one before). A pod that answers is busy, not gone; its answer counts
        as a heartbeat. A probe that timed out while this process stalled is not counted. Probes
        go out together, so a hung pod costs the loop one probe timeout per round."""
        late = [
            (n, p)
            for n, (_, p) in enumerate(planned)
            if isinstance(p, commands.ExpirePod) and p.last_heartbeat_age_s > 0
        ]
        late_pods = {p.pod_id for _, p in late}
        self.silent = {pod: k for pod, k in self.silent.items() if pod in late_pods}
        if not late:
            return planned
        found = await asyncio.gather(
            *(
                self._probe(p.pod_id, PROBE_TIMEOUT_S * 2 ** self.silent.get(p.pod_id, 0))
                for _, p in late
            )
        )
        keep = dict(enumerate(planned))
        for (n, payload), probe in zip(late, found, strict=True):
            pod_id = payload.pod_id
            if probe == "silent":
                self.silent[pod_id] = self.silent.get(pod_id, 0) + 1
            if probe == "answered":
                log.info("pod heartbeats late, but it answers", pod=pod_id)
                self.heartbeats.beat(pod_id)
                self.silent.pop(pod_id, None)
                del keep[n]
            elif probe == "gone" or self.silent.get(pod_id, 0) >= PROBES:
                self.silent.pop(pod_id, None)
                command_id, _ = planned[n]
                keep[n] = (command_id, payload.model_copy(update={"probed": True}))
            else:
                log.info("pod heartbeats late and a probe went unanswered", pod=pod_id, probe=probe)
                del keep[n]
        return [keep[n] for n in sorted(keep)]

    async def _probe(self, pod_id: str, timeout: float) -> Probe:
        started = time.monotonic()
        try:
            await self.log.request(names.probe_subject(pod_id), b"", timeout=timeout)
        except NoResponders:
            return "gone"
        except (RequestTimeout, TimeoutError):
            stalled = time.monotonic() - started > _STALLED * timeout
            return "unknown" if stalled else "silent"
        except EventLogError:  # this side's connection is down: nothing learned of the pod
            return "unknown"
        return "answered"

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
