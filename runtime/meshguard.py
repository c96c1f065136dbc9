"""Who may talk to this pod's agents: every mesh message is checked before an agent sees it.

A stack's principals (`swarm.devstack.principals`; the pod is given their listing as the Hive
is) sign what they send on the mesh (`swarm.kernel.signing.MeshClaim`: headers naming the
signer, the identity it acts as, for an agent its replica and placement, and the time). The
guard takes a message only when

* it is signed, the signature holds, and the signer is a principal of the stack
  (else `unauthenticated: …`);
* it was signed within `window_s` of this pod's clock (a message replayed later is refused);
* the signer's role may act as the identity it claims, by the rule the Hive applies to commands
  (`swarm.domain.policy.may_claim`) (else `forbidden: …`);
* for an agent (`agent:<agent id>`): the log places the replica the message names on the pod
  that signed it, at the placement it names, and that agent is of the receiving agent's
  namespace (agents message agents of their own namespace alone; topics are global). A
  message naming a placement this pod's view of the log has not reached yet waits (at most
  `catch_up_s`) for the view: the sender's pod read it first;
* for a user (a principal of role `user`): it holds the role messaging takes in the receiving
  agent's namespace (`swarm.domain.policy.check_message`, with the grants of this pod's view
  of the log; a grant made a moment ago counts once the pod has read it);
* its answer goes to its signer alone: a reply subject, when it has one, is under the signer's
  own inbox prefix (`names.inbox_prefix`), where a `swarm up` stack lets that principal alone
  listen, as for a query (`swarm.kernel.queryguard`). A signed message read off the wire and
  sent again with another reply subject is refused (else `unauthenticated: …`);
* it was not taken already by the same agent on this pod: the guard remembers the signatures
  it took within the window (`Remembered`, at most `memory` of them), so a message read off
  the wire and sent again as it was is refused (`replayed: …`), however soon. Every sender
  signs each message afresh, with a nonce (`swarm.kernel.signing`), so a message sent again
  (a retry, the same body twice) is a new one. Another pod does not know what this one took:
  a replay that reaches another replica of the agent, on another pod, is taken there once.

The checks of who may claim what run on the pod's event loop as the message arrives (`admit`);
the signature's arithmetic (`verify`, ~110 us of libsodium, which runs without the GIL) on the
worker thread that then calls the agent, just before the call (runtime/replica.py `_call`), so
a message whose signature does not hold may wait in the mailbox, and is refused there. What the
guard refuses is answered with the reason as a platform error (`Swarm-Error`), or dropped for a
topic message, and counted (`refused`, by kind: `unauthenticated`, `forbidden`, `replayed`, in
the pod's metrics); the agent never sees it. Without a listing (a stack whose NATS admits
anyone, most tests) there is no guard at all, as the Hive checks no signatures without one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from runtime.podview import PodView
from schemas import names
from swarm.devstack.principals import Principal, Roster
from swarm.domain.policy import check_message, may_claim
from swarm.kernel.eventlog import Message
from swarm.kernel.signing import FRESH_S, MeshSignature, mesh_signature_of, signer_of, verify_mesh

#: How far a message's signing time may be from this pod's clock (as a query's from the
#: Hive's: `swarm.kernel.queryguard`).
WINDOW_S = FRESH_S
#: How long a message naming a placement this pod has not read yet waits for its view.
CATCH_UP_S = 2.0
#: How long the guard trusts what it looked up in the listing: a key rotated or removed stops
#: counting within this (the listing's file is not stat'ed for every message: ~30 us of the
#: ~200 us a check costs on a busy machine, bench/security.py).
ROSTER_TTL_S = 1.0
_POLL_S = 0.01
#: How many signatures taken within the window a pod remembers (`Remembered`): ~35 MB at most,
#: and 800 messages a second for the whole window (a pod here answered at most ~1,100 mesh
#: requests a second unchecked, ~750 checked: bench/security.py). Beyond, it forgets the
#: oldest early and refuses what was signed no later than those.
MEMORY = 100_000


class Remembered:
    """The mesh messages a pod took within the window, by their signature and the agent that
    took them: one that comes again is refused (`take`). Bounded twice: an entry goes once its
    window is over (the window check refuses its replay then), and beyond `capacity` the
    oldest go early, after which a message signed no later than any of them is refused too
    (it may be one of them): what could be replayed is never forgotten, and a pod busier than
    `capacity` messages per window takes only what was signed recently enough."""

    def __init__(self, capacity: int, window_ms: float) -> None:
        if capacity < 1:
            raise ValueError(f"a replay memory holds at least one message, not {capacity}")
        self.capacity = capacity
        self.window_ms = window_ms
        #: (signature, agent id) -> signing time (ms, the sender's clock), in the order taken.
        self._taken: OrderedDict[tuple[bytes, str], int] = OrderedDict()
        #: The latest signing time forgotten before its window was over.
        self.floor_ms: float = -math.inf

    def __len__(self) -> int:
        return len(self._taken)

    def take(self, key: tuple[bytes, str], signed_ms: int, now_ms: float) -> bool | None:
        """Remember `key` (signed at `signed_ms`) as taken: True when it was new, False when it
        was taken already, None when it may have been (signed no later than one forgotten
        early). On the event loop: nothing else runs between the look and the remembering."""
        self._expire(now_ms)
        if key in self._taken:
            return False
        if signed_ms <= self.floor_ms:
            return None
        while len(self._taken) >= self.capacity:
            _, forgotten = self._taken.popitem(last=False)
            self.floor_ms = max(self.floor_ms, forgotten)
        self._taken[key] = signed_ms
        return True

    def _expire(self, now_ms: float) -> None:
        # In the order taken, which is not quite the order signed (senders' clocks differ): an
        # entry whose window ended waits behind an older one for at most one window more.
        taken = self._taken
        while taken:
            key, signed_ms = next(iter(taken.items()))
            if now_ms - signed_ms <= self.window_ms:
                return
            del taken[key]


class MeshGuard:
    def __init__(
        self,
        roster: Roster,
        view: PodView,
        *,
        window_s: float = WINDOW_S,
        catch_up_s: float = CATCH_UP_S,
        clock: Callable[[], float] = time.time,
        memory: int = MEMORY,
    ) -> None:
        self.roster = roster
        self.view = view
        self.window_ms = window_s * 1000
        self.catch_up_s = catch_up_s
        self.clock = clock
        self._known: dict[str, tuple[float, Principal | None]] = {}
        #: What this pod's agents took within the window: a message taken is not taken again.
        self.taken = Remembered(memory, self.window_ms)
        #: Messages refused, by the kind of refusal (`unauthenticated`, `forbidden`,
        #: `replayed`).
        self.refused: Counter[str] = Counter()

    async def check(self, msg: Message, namespace: str | None, agent_id: str) -> str | None:
        """Why `msg`, to agent `agent_id` of `namespace` (None: on a topic, which are global),
        must not reach it; None when it may (`admit`, then `verify`)."""
        reason, signature = await self.admit(msg, namespace, agent_id)
        if reason is None and signature is not None:
            reason = self.verify(msg, signature)
            if reason is not None:
                self.count(reason)
        return reason

    async def admit(
        self, msg: Message, namespace: str | None, agent_id: str
    ) -> tuple[str | None, MeshSignature | None]:
        """Everything but the signature's arithmetic: (why `msg` must not reach agent
        `agent_id`, or None; the signature `verify` must then check before the agent is
        called). What it refuses is counted; what it admits is remembered as taken. The pod
        runs this on its event loop and `verify` on the worker thread that runs the agent
        next, where libsodium's ~110 us run beside the loop."""
        reason, signature = await self._admit(msg, namespace, agent_id)
        if reason is not None:
            self.count(reason)
        return reason, signature

    def verify(self, msg: Message, signature: MeshSignature) -> str | None:
        """Why the signature `admit` read does not hold (not counted: see `count`); any
        thread."""
        assert msg.headers is not None
        problem = verify_mesh(msg.subject, msg.data, msg.headers, signature)
        if problem is None:
            return None
        return f"unauthenticated: the message's signature does not hold: {problem}"

    def count(self, reason: str) -> None:
        """Count a refusal (on the event loop)."""
        self.refused[reason.partition(":")[0]] += 1

    async def _admit(
        self, msg: Message, namespace: str | None, agent_id: str
    ) -> tuple[str | None, MeshSignature | None]:
        signature = mesh_signature_of(msg.subject, msg.data, msg.headers, verify=False)
        if signature is None:
            return (
                "unauthenticated: the message is not signed; this stack's agents take messages "
                "signed by one of its principals (Swarm's clients sign with "
                "$SWARM_NATS_CREDENTIALS)"
            ), None
        reason = await self._claim(signature, namespace)
        if reason is None:
            reason = self._answered_to(msg, signature)
        if reason is None:
            # Last, after every await: remembered only when admitted, and nothing runs on the
            # loop between the look and the remembering. Before the arithmetic (`verify`), so
            # a copy that comes while the first is checked is refused too; a forged copy (a
            # seen signature on another body) can only follow the message it copies.
            reason = self._first_time(msg, signature, agent_id)
        return reason, signature if reason is None else None

    def _answered_to(self, msg: Message, signature: MeshSignature) -> str | None:
        """Why `msg`'s answer must not go where it asks (None: to nobody, or under its signer's
        own inbox prefix)."""
        if not msg.reply:
            return None  # a one-way message (an agent's `send`, a topic): no answer to steal
        # A principal of the listing (`_claim` found it): its key is a valid token.
        own = names.inbox_prefix(signature.signer)
        if msg.reply.startswith(f"{own}."):
            return None
        principal = self._principal(signature.signer)
        name = principal.name if principal is not None else signature.signer
        return (
            f"unauthenticated: the message is signed by {name} but its answer would go to "
            f"{_printable(msg.reply, 120)}, not under {name}'s own inbox prefix {own}: a message "
            "is answered to its signer alone (connect with that inbox prefix, as Swarm's "
            "clients do)"
        )

    def _first_time(self, msg: Message, signature: MeshSignature, agent_id: str) -> str | None:
        """Why `msg` must not be taken again by agent `agent_id` (None: it was not taken yet,
        and now it is)."""
        assert msg.headers is not None  # signed: `mesh_signature_of` found the headers
        try:
            # By its bytes, not its text: base64 decoding forgives padding, characters out of
            # the alphabet and the last character's spare bits, so one signature has many
            # spellings that all verify.
            raw = base64.urlsafe_b64decode(msg.headers[names.HEADER_MESH_SIGNATURE] + "==")
        except (binascii.Error, ValueError):
            return "unauthenticated: the message's signature does not hold: it is not base64"
        key = (raw, agent_id)
        now_ms = self.clock() * 1000
        new = self.taken.take(key, signature.time_ms, now_ms)
        if new:
            return None
        age = f"{(now_ms - signature.time_ms) / 1000:.0f} s ago"
        if new is False:
            return (
                f"replayed: the message (signed {age}) was taken already: a message sent "
                "again must be signed again (Swarm's clients sign every send)"
            )
        return (
            f"replayed: the message was signed {age}, before messages this pod had to forget "
            f"early (it remembers the last {self.taken.capacity} it took, fewer than came "
            f"within {self.window_ms / 1000:g} s), so it may be one of them: sign it again"
        )

    async def _claim(self, signature: MeshSignature, namespace: str | None) -> str | None:
        principal = signer_of(signature, self._principal, self, what="message", taker="the mesh")
        if isinstance(principal, str):
            return principal
        identity = signature.claim.identity
        may = may_claim(principal.role, principal.name, identity)
        if may is not None:
            return (
                f"forbidden: the message claims identity {_printable(identity)} but is signed "
                f"by {principal.name} (role {principal.role}), who may act only as {may}"
            )
        if identity.startswith("agent:"):
            return await self._agent(signature, principal.name, namespace)
        if principal.role == "user":
            refused = check_message(self.view.grants, principal.name, namespace)
            return None if refused is None else f"forbidden: {refused}"
        return None

    def _principal(self, public_key: str) -> Principal | None:
        now = time.monotonic()
        known = self._known.get(public_key)
        if known is not None and now - known[0] < ROSTER_TTL_S:
            return known[1]
        if len(self._known) > 4096:  # strangers' keys must not grow it without bound
            self._known.clear()
        principal = self.roster.get(public_key)
        self._known[public_key] = (now, principal)
        return principal

    async def _agent(self, signature: MeshSignature, pod: str, namespace: str | None) -> str | None:
        """Whether the log places the sending replica on pod `pod`, and the sender may message
        an agent of `namespace`."""
        claim = signature.claim
        agent_id = claim.identity.removeprefix("agent:")
        view = self.view
        if view.applied_seq < claim.placed_seq:
            deadline = asyncio.get_running_loop().time() + self.catch_up_s
            while view.applied_seq < claim.placed_seq:
                if asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(_POLL_S)
        replica = view.replicas.get(claim.replica)
        if (
            replica is None
            or replica.agent_id != agent_id
            or replica.pod_id != pod
            or replica.placed_seq != claim.placed_seq
        ):
            where = (
                "does not know it"
                if replica is None or replica.agent_id != agent_id
                else f"places it on {replica.pod_id or 'no pod'} (placement {replica.placed_seq})"
            )
            return (
                f"forbidden: the message claims replica {_printable(claim.replica)} of agent "
                f"{_printable(agent_id)} placed on {pod} (placement {claim.placed_seq}), "
                f"but the log {where}"
            )
        agent = view.agents.get(agent_id)
        if namespace is not None and (agent is None or agent.namespace != namespace):
            sender = f"{agent.namespace}/{agent.name}" if agent is not None else agent_id
            return (
                f"forbidden: agent {sender} may message agents of its own namespace alone, "
                f"not of {namespace}"
            )
        return None


def _printable(value: str, limit: int = 60) -> str:
    return repr(value[:limit])


__all__ = ["CATCH_UP_S", "MEMORY", "WINDOW_S", "MeshGuard", "Remembered"]
