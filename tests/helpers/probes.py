"""A pod's liveness probe and heartbeat thread, seen from outside as the Hive sees them."""

from __future__ import annotations

import json
import threading
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from schemas import names


async def probe(nc: NATS, pod_id: str) -> dict[str, Any] | None:
    """The pod's answer to a liveness probe, as the Hive sends it; None without one."""
    try:
        reply = await nc.request(names.probe_subject(pod_id), b"", timeout=2)
    except (nats.errors.Error, TimeoutError):
        return None
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def answering(nc: NATS, pod_id: str) -> bool:
    return await probe(nc, pod_id) is not None


async def nobody_listens(nc: NATS, pod_id: str) -> bool:
    """Whether the server says no one is subscribed to the pod's probe any more (its heartbeat
    connection closed); an answer, or none in time, is not that."""
    try:
        await nc.request(names.probe_subject(pod_id), b"", timeout=2)
    except nats.errors.NoRespondersError:
        return True
    except (nats.errors.Error, TimeoutError):
        return False
    return False


def heartbeat_threads(pod_id: str) -> list[threading.Thread]:
    """The live heartbeat threads of pod `pod_id` in this process (`runtime.heartbeat` names
    them)."""
    return [t for t in threading.enumerate() if t.name == f"pod-{pod_id}-heartbeat"]
