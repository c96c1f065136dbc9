"""Metric samples in the pods' format, as the autoscaler and the task queues read them."""

from __future__ import annotations

from typing import Any


def sample(
    time_s: float,
    replicas: list[tuple[str, int, int]],
    *,
    agent_id: str = "a1",
    pod_id: str = "p1",
    busy_ms: float = 0.0,
    calls: int = 0,
) -> dict[str, Any]:
    """A pod sample in the pods' format: (replica id, received, mailbox) per replica."""
    return {
        "pod_id": pod_id,
        "time_ms": int(time_s * 1000),
        "replicas": [
            {
                "agent_id": agent_id,
                "replica_id": rid,
                "namespace": "default",
                "name": "echo",
                "state": "running",
                "calls": calls,
                "errors": 0,
                "fuel_used": 0,
                "last_latency_ms": 0.0,
                "memory_bytes": 0,
                "mailbox": mailbox,
                "rejected": 0,
                "logs_dropped": 0,
                "topic_messages": 0,
                "topic_dropped": 0,
                "received": received,
                "busy_ms": busy_ms,
                "task_queues": ["jobs"],
            }
            for rid, received, mailbox in replicas
        ],
    }
