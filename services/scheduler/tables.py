"""The scheduler's state as stream-app tables: what the view holds, as JSON rows, and back.

Three tables (`swarm.kernel.streaming`), recovered from their changelog when the scheduler
starts:

* `pods`: pod id -> capacity, zone, labels, energy cost, status, and what the replicas it holds
  use (memory, fuel/s);
* `agents`: agent id -> its current and per-version demand (sizes, priority, bid,
  constraints), and whether it is deleted;
* `replicas`: (agent id, replica id) -> version, phase, pod, the sequence of its last placement
  (preemption picks the most recent), whether its pod counts it (`held`), and for a replica
  that waits its request: the sequence of its `replica_requested`, the event and correlation
  ids a proposal links to, and the rejections of proposals for it read so far (the attempt
  number of the next proposal).

One row per replica rather than a list per agent or pod: an event changes one replica, so a
write stays small however many replicas an agent or a pod has. The processor's handler writes
the rows an event touched; `view_of` rebuilds the `ClusterView` (and the attempts) from the
rows; `rows_of` encodes a whole view, which is how the tests compare the tables with a recount of
the log. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from schemas.specs import Capacity
from services.scheduler.view import (
    AgentView,
    ClusterView,
    Demand,
    PodView,
    ReplicaView,
)
from swarm.domain.placement import ReplicaKey

PODS = "pods"
AGENTS = "agents"
REPLICAS = "replicas"
TABLES = (PODS, AGENTS, REPLICAS)

Row = dict[str, Any]


def encode_demand(d: Demand) -> Row:
    return {
        "memory_mb": d.memory_mb,
        "fuel_per_s": d.fuel_per_s,
        "priority": d.priority,
        "max_price": d.max_price,
        "node_selector": [[k, v] for k, v in d.node_selector],
        "zones": list(d.zones),
        "avoid_zones": list(d.avoid_zones),
    }


def decode_demand(row: Mapping[str, Any]) -> Demand:
    return Demand(
        int(row["memory_mb"]),
        int(row["fuel_per_s"]),
        int(row["priority"]),
        None if row["max_price"] is None else float(row["max_price"]),
        tuple((str(k), str(v)) for k, v in row["node_selector"]),
        tuple(str(z) for z in row["zones"]),
        tuple(str(z) for z in row["avoid_zones"]),
    )


def encode_pod(pod: PodView) -> Row:
    return {
        "capacity": pod.capacity.model_dump(mode="json"),
        "zone": pod.zone,
        "labels": dict(sorted(pod.labels.items())),
        "energy_cost": pod.energy_cost,
        "status": pod.status,
        "used_memory_mb": pod.used_memory_mb,
        "used_fuel_per_s": pod.used_fuel_per_s,
    }


def pod_usage(pod: PodView | None) -> tuple[int, int, int] | None:
    """What changes on a pod when a replica event moves something on or off it."""
    return None if pod is None else (pod.used_memory_mb, pod.used_fuel_per_s, len(pod.replicas))


def encode_agent(agent: AgentView) -> Row:
    return {
        "current": encode_demand(agent.current),
        "versions": {v: encode_demand(d) for v, d in sorted(agent.versions.items())},
        "deleted": agent.deleted,
    }


def encode_replica(
    view: ClusterView, agent_id: str, replica: ReplicaView, attempts: Mapping[int, int]
) -> Row:
    key = (agent_id, replica.replica_id)
    seq = view.waiting.get(key)
    request = None
    if seq is not None:
        cause = view.causes.get(seq)
        request = {
            "seq": seq,
            "cause": list(cause) if cause is not None else None,
            "attempts": attempts.get(seq, 0),
        }
    pod = view.pods.get(replica.pod_id) if replica.pod_id is not None else None
    return {
        "version": replica.version,
        "phase": replica.phase,
        "pod_id": replica.pod_id,
        "placed_seq": replica.placed_seq,
        "held": pod is not None and key in pod.replicas,
        "request": request,
    }


def view_of(
    pods: Iterable[tuple[Any, Mapping[str, Any]]],
    agents: Iterable[tuple[Any, Mapping[str, Any]]],
    replicas: Iterable[tuple[Any, Mapping[str, Any]]],
    applied_seq: int,
) -> tuple[ClusterView, dict[int, int]]:
    """The view the rows describe, at `applied_seq`, and the attempts per waiting request."""
    view = ClusterView(applied_seq=applied_seq)
    for pod_id, row in pods:
        view.pods[str(pod_id)] = PodView(
            str(pod_id),
            Capacity.model_validate(row["capacity"]),
            zone=str(row["zone"]),
            labels={str(k): str(v) for k, v in row["labels"].items()},
            energy_cost=float(row["energy_cost"]),
            status=row["status"],
            used_memory_mb=int(row["used_memory_mb"]),
            used_fuel_per_s=int(row["used_fuel_per_s"]),
        )
    for agent_id, row in agents:
        view.agents[str(agent_id)] = AgentView(
            str(agent_id),
            decode_demand(row["current"]),
            {str(v): decode_demand(d) for v, d in row["versions"].items()},
            deleted=bool(row["deleted"]),
        )
    waits: list[tuple[int, ReplicaKey, Mapping[str, Any]]] = []
    for key, row in replicas:
        agent_id, replica_id = str(key[0]), str(key[1])
        agent = view.agents[agent_id]
        pod_id = row["pod_id"]
        agent.replicas[replica_id] = ReplicaView(
            replica_id,
            str(row["version"]),
            row["phase"],
            None if pod_id is None else str(pod_id),
            int(row["placed_seq"]),
        )
        if row["held"]:
            view.pods[str(pod_id)].replicas.add((agent_id, replica_id))
        if row["request"] is not None:
            waits.append((int(row["request"]["seq"]), (agent_id, replica_id), row["request"]))
    attempts: dict[int, int] = {}
    # `waiting` is ordered oldest request first, as folding the log orders it.
    for seq, key, request in sorted(waits, key=lambda w: w[0]):
        view.waiting[key] = seq
        view.requests[seq] = key
        if request["cause"] is not None:
            view.causes[seq] = (str(request["cause"][0]), str(request["cause"][1]))
        if request["attempts"]:
            attempts[seq] = int(request["attempts"])
    return view, attempts


def rows_of(view: ClusterView, attempts: Mapping[int, int]) -> dict[str, dict[Any, Row]]:
    """The three tables as a whole view gives them (what they must hold at its position)."""
    return {
        PODS: {p: encode_pod(pod) for p, pod in view.pods.items()},
        AGENTS: {a: encode_agent(agent) for a, agent in view.agents.items()},
        REPLICAS: {
            (a, r): encode_replica(view, a, replica, attempts)
            for a, agent in view.agents.items()
            for r, replica in agent.replicas.items()
        },
    }


__all__ = [
    "AGENTS",
    "PODS",
    "REPLICAS",
    "TABLES",
    "encode_agent",
    "encode_pod",
    "encode_replica",
    "pod_usage",
    "rows_of",
    "view_of",
]
