"""The pod's mesh guard against its view of the log: an agent's message counts only while the log
places the replica it names on the pod that signed it, and a message naming a placement the
view has not read yet waits for the view (the sender's pod read the log first) rather than
being refused. Keys as `swarm up` issues them; no servers (tests/runtime/test_mesh_identity.py
runs the same through a real pod)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.meshguard import MeshGuard
from runtime.podview import PodView
from schemas import names
from swarm.devstack.principals import Roster, issue
from swarm.kernel.signing import CommandSigner, MeshClaim, mesh_signature_of
from tests.helpers.podviews import deployed, placed

pytestmark = pytest.mark.timeout(30)

SUBJECT = names.mesh_agent_subject("default", "b")


@dataclass(frozen=True, slots=True)
class Sent:
    """A mesh message as a subscriber gets it."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    reply: str = ""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    issue(tmp_path, [("pod-1", "pod"), ("pod-2", "pod")])
    return tmp_path


def signed(keys: Path, signer: str, claim: MeshClaim) -> Sent:
    headers = CommandSigner.from_seed_file(keys / f"{signer}.nk").mesh_headers(
        SUBJECT, b"hi", claim, time.time_ns() // 1_000_000
    )
    return Sent(SUBJECT, b"hi", headers)


async def test_an_agent_speaks_through_the_pod_the_log_places_it_on(keys: Path) -> None:
    view = PodView("pod-2")
    deployed(view, "a")
    seq = placed(view, "a", "a-0", "pod-1")
    guard = MeshGuard(Roster(keys / "principals.json"), view)
    claim = MeshClaim("agent:a", "a-0", seq)
    assert await guard.check(signed(keys, "pod-1", claim), "default") is None
    # Moved to pod-2: pod-1 no longer speaks for it, under the old placement or the new.
    moved = placed(view, "a", "a-0", "pod-2")
    refused = await guard.check(signed(keys, "pod-1", claim), "default")
    assert refused == (
        "forbidden: the message claims replica 'a-0' of agent 'a' placed on pod-1 "
        f"(placement {seq}), but the log places it on pod-2 (placement {moved})"
    )
    again = MeshClaim("agent:a", "a-0", moved)
    assert (await guard.check(signed(keys, "pod-1", again), "default") or "").startswith(
        "forbidden: the message claims replica 'a-0'"
    )
    assert await guard.check(signed(keys, "pod-2", again), "default") is None
    # Topics are global: an agent of another namespace may publish on one.
    deployed(view, "x", namespace="other")
    outsider = MeshClaim("agent:x", "x-0", placed(view, "x", "x-0", "pod-1"))
    assert await guard.check(signed(keys, "pod-1", outsider), None) is None
    assert (await guard.check(signed(keys, "pod-1", outsider), "default") or "").startswith(
        "forbidden: agent other/x may message agents of its own namespace alone"
    )
    assert guard.refused == {"forbidden": 3}


async def test_a_placement_the_view_has_not_read_yet_is_waited_for(keys: Path) -> None:
    """The sender's pod started its replica after reading the placement; the receiving pod may
    be a moment behind. Within `catch_up_s` the message waits; beyond it, it is refused."""
    view = PodView("pod-2")
    deployed(view, "a")
    guard = MeshGuard(Roster(keys / "principals.json"), view, catch_up_s=5)
    ahead = MeshClaim("agent:a", "a-0", view.applied_seq + 2)  # requested, then scheduled

    async def read_on() -> None:
        await asyncio.sleep(0.2)
        placed(view, "a", "a-0", "pod-1")

    checking = asyncio.create_task(guard.check(signed(keys, "pod-1", ahead), "default"))
    await read_on()
    assert await checking is None
    quick = MeshGuard(Roster(keys / "principals.json"), view, catch_up_s=0.2)
    never = MeshClaim("agent:a", "a-0", view.applied_seq + 50)
    started = time.monotonic()
    refused = await quick.check(signed(keys, "pod-1", never), "default")
    assert time.monotonic() - started >= 0.2
    assert (refused or "").startswith("forbidden: the message claims replica 'a-0'")


@pytest.mark.parametrize(
    "header", [names.HEADER_MESH_REPLICA, names.HEADER_MESH_PLACED, names.HEADER_MESH_TIME]
)
async def test_every_signed_header_is_covered_by_the_signature(keys: Path, header: str) -> None:
    view = PodView("pod-2")
    deployed(view, "a")
    seq = placed(view, "a", "a-0", "pod-1")
    sent = signed(keys, "pod-1", MeshClaim("agent:a", "a-0", seq))
    assert sent.headers is not None
    changed = {**sent.headers, header: sent.headers[header] + "1"}
    signature = mesh_signature_of(SUBJECT, b"hi", changed)
    assert signature is not None
    assert (signature.valid, signature.problem) == (
        False,
        "the signature does not match the message",
    )
    intact = mesh_signature_of(SUBJECT, b"hi", sent.headers)
    assert intact is not None
    assert intact.valid
