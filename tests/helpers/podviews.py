"""Hand-made events folded into a pod's view of the log (`runtime.podview.PodView`), one
sequence after another, as the pod folds SWARM_EVENTS."""

from __future__ import annotations

from runtime.podview import PodView
from schemas import Payload, event, events
from schemas.specs import AgentSpec, ModuleRef

SPEC = AgentSpec(version="v1", module=ModuleRef(sha256="0" * 64))


def fold(view: PodView, *payloads: Payload) -> None:
    """Each payload as the next event of the log (its aggregate: the agent, or the command)."""
    for p in payloads:
        aggregate = getattr(p, "agent_id", None) or getattr(p, "command_id", None)
        assert aggregate is not None
        view.fold(event(p, aggregate_id=aggregate, source="test"), view.applied_seq + 1)


def deployed(view: PodView, agent: str, namespace: str = "default") -> None:
    fold(
        view,
        events.AgentDeployed(
            agent_id=agent, namespace=namespace, name=agent, spec=SPEC, replicas=1
        ),
    )


def placed(view: PodView, agent: str = "a", replica: str = "a-0", pod: str = "p1") -> int:
    """Deploy `agent` (in namespace default, if new) and place `replica` on `pod`; its
    placement."""
    if agent not in view.agents:
        deployed(view, agent)
    fold(
        view,
        events.ReplicaRequested(agent_id=agent, replica_id=replica, version="v1", reason="t"),
        events.ReplicaScheduled(
            agent_id=agent, replica_id=replica, pod_id=pod, policy="t", reason=""
        ),
    )
    return view.replicas[replica].placed_seq
