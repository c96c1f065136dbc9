"""The pod's mesh guard against its view of the log: an agent's message counts only while the log
places the replica it names on the pod that signed it, and a message naming a placement the
view has not read yet waits for the view (the sender's pod read the log first) rather than
being refused. Keys as `swarm up` issues them; no servers (tests/runtime/test_mesh_identity.py
runs the same through a real pod)."""

from __future__ import annotations

import asyncio
import string
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.meshguard import MeshGuard, Remembered
from runtime.podview import PodView
from schemas import names
from swarm.devstack.principals import Roster, issue, load
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


def signed(keys: Path, signer: str, claim: MeshClaim, reply: str = "") -> Sent:
    headers = CommandSigner.from_seed_file(keys / f"{signer}.nk").mesh_headers(
        SUBJECT, b"hi", claim, time.time_ns() // 1_000_000
    )
    return Sent(SUBJECT, b"hi", headers, reply)


async def test_an_agent_speaks_through_the_pod_the_log_places_it_on(keys: Path) -> None:
    view = PodView("pod-2")
    deployed(view, "a")
    seq = placed(view, "a", "a-0", "pod-1")
    guard = MeshGuard(Roster(keys / "principals.json"), view)
    claim = MeshClaim("agent:a", "a-0", seq)
    assert await guard.check(signed(keys, "pod-1", claim), "default", "b") is None
    # Moved to pod-2: pod-1 no longer speaks for it, under the old placement or the new.
    moved = placed(view, "a", "a-0", "pod-2")
    refused = await guard.check(signed(keys, "pod-1", claim), "default", "b")
    assert refused == (
        "forbidden: the message claims replica 'a-0' of agent 'a' placed on pod-1 "
        f"(placement {seq}), but the log places it on pod-2 (placement {moved})"
    )
    again = MeshClaim("agent:a", "a-0", moved)
    assert (await guard.check(signed(keys, "pod-1", again), "default", "b") or "").startswith(
        "forbidden: the message claims replica 'a-0'"
    )
    assert await guard.check(signed(keys, "pod-2", again), "default", "b") is None
    # Topics are global: an agent of another namespace may publish on one.
    deployed(view, "x", namespace="other")
    outsider = MeshClaim("agent:x", "x-0", placed(view, "x", "x-0", "pod-1"))
    assert await guard.check(signed(keys, "pod-1", outsider), None, "b") is None
    assert (await guard.check(signed(keys, "pod-1", outsider), "default", "b") or "").startswith(
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

    checking = asyncio.create_task(guard.check(signed(keys, "pod-1", ahead), "default", "b"))
    await read_on()
    assert await checking is None
    quick = MeshGuard(Roster(keys / "principals.json"), view, catch_up_s=0.2)
    never = MeshClaim("agent:a", "a-0", view.applied_seq + 50)
    started = time.monotonic()
    refused = await quick.check(signed(keys, "pod-1", never), "default", "b")
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


async def test_an_answer_goes_to_the_signer_alone_and_a_message_is_taken_once(
    keys: Path,
) -> None:
    """A message's reply subject is under its signer's own inbox prefix, or it has none; and
    the same signed message is taken once by an agent of this pod (another agent, reached on a
    topic, takes its own copy). The same body signed again is a new message."""
    view = PodView("pod-2")
    guard = MeshGuard(Roster(keys / "principals.json"), view)
    pod1 = next(p for p in load(keys / "principals.json").values() if p.name == "pod-1")
    own = f"{names.inbox_prefix(pod1.public_key)}.x1.1"
    claim = MeshClaim("pod:pod-1")
    # Another principal's inbox, the default prefix, or the signer's prefix without a token.
    pod2 = next(p for p in load(keys / "principals.json").values() if p.name == "pod-2")
    for elsewhere in (
        f"{names.inbox_prefix(pod2.public_key)}.x1.1",
        "_INBOX.x1.1",
        names.inbox_prefix(pod1.public_key),
    ):
        refused = await guard.check(signed(keys, "pod-1", claim, elsewhere), "default", "b")
        assert refused == (
            f"unauthenticated: the message is signed by pod-1 but its answer would go to "
            f"{elsewhere!r}, not under pod-1's own inbox prefix "
            f"{names.inbox_prefix(pod1.public_key)}: a message is answered to its signer "
            "alone (connect with that inbox prefix, as Swarm's clients do)"
        )
    message = signed(keys, "pod-1", claim, own)
    assert await guard.check(message, "default", "b") is None
    replayed = await guard.check(message, "default", "b")
    assert (replayed or "").startswith("replayed: the message (signed 0 s ago) was taken already")
    # One-way (no reply subject) and on a topic: each agent takes its copy once.
    one_way = signed(keys, "pod-1", claim)
    assert await guard.check(one_way, None, "b") is None
    assert await guard.check(one_way, None, "c") is None
    assert (await guard.check(one_way, None, "c") or "").startswith("replayed:")
    # Another spelling of the same signature (padding, a character out of the alphabet, the
    # last character's spare bits) verifies as well: it is the same message.
    assert message.headers is not None
    signature = message.headers[names.HEADER_MESH_SIGNATURE]
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    spare = alphabet[alphabet.index(signature[-1]) ^ 1]
    for spelling in (
        signature + "=",
        signature[:10] + "!" + signature[10:],
        signature[:-1] + spare,
    ):
        again = Sent(
            SUBJECT, b"hi", {**message.headers, names.HEADER_MESH_SIGNATURE: spelling}, own
        )
        assert mesh_signature_of(SUBJECT, b"hi", again.headers).valid  # type: ignore[union-attr]
        assert (await guard.check(again, "default", "b") or "").startswith("replayed:")
    # The same body, signed again (as every Swarm sender does for every send): a new message.
    assert await guard.check(signed(keys, "pod-1", claim, own), "default", "b") is None
    assert guard.refused == {"unauthenticated": 3, "replayed": 5}
    assert len(guard.taken) == 4


def test_the_replay_memory_is_bounded_by_its_window_and_its_capacity() -> None:
    """An entry goes once its window is over; beyond the capacity the oldest go early, and a
    message signed no later than any of those is refused (it may be one of them), while one
    signed later is taken: memory stays bounded, and nothing replayable is forgotten."""
    memory = Remembered(capacity=3, window_ms=1000)
    now = 10_000.0
    assert [memory.take((b"s%d" % i, "a"), 9_500 + i, now) for i in range(3)] == [True] * 3
    assert memory.take((b"s1", "a"), 9_501, now) is False
    assert memory.take((b"s1", "b"), 9_501, now) is True  # another agent's copy; s0 forgotten
    assert len(memory) == 3
    assert memory.floor_ms == 9_500
    # s0 was forgotten early: signed no later than that, refused; after it, taken.
    assert memory.take((b"s0", "a"), 9_500, now) is None
    assert memory.take((b"s9", "a"), 9_499, now) is None
    assert memory.take((b"s3", "a"), 9_503, now) is True
    assert len(memory) == 3
    # Once their window is over, the entries go by themselves (the window check refuses
    # their replays then).
    assert memory.take((b"late", "a"), 11_000, 11_000.0) is True
    assert len(memory) == 1
    for i in range(10_000):
        memory.take((b"flood%d" % i, "a"), 12_000 + i, 12_000.0 + i)
        assert len(memory) <= 3
    with pytest.raises(ValueError, match="at least one"):
        Remembered(capacity=0, window_ms=1000)
