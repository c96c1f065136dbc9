"""The leader's command loop: read a command, decide, write its events and outcome, ack.

Exactly one outcome per command, whatever crashes:

* A command's events and its outcome are one atomic append, so the log never holds events
  without their outcome (or the reverse).
* The outcome is appended with "expect no earlier message on this command's outcome subjects",
  so a second outcome for the same command is impossible even beyond the dedupe window; message
  ids derived from the command id make a repeated append a no-op inside it.
* The command is acked only after its append; a leader that dies before acking leaves it to be
  redelivered to the next leader, which finds the outcome already there.

What is written can always be folded, and nothing a client sends can stop the loop:

* **Fold what is written.** Every body is built, decoded back from its bytes and folded into the
  working state before it is appended, by the same `fold_checked` every replica uses on the log.
  A decision whose events would not decode or fold is not written; the command is rejected with
  the reason instead (rule `internal`).
* **Poison commands end.** Any exception while reading, deciding or building one command becomes
  its rejected outcome. A command whose handling still fails `max_attempts` times, or that was
  delivered `max_deliveries` times, is copied to SWARM_DEADLETTER (`names.HIVE_DEADLETTER`, with
  the reason) and rejected (rule `poison`), so it never holds up the others for long.
* **Sealed outcomes.** Every outcome carries the Hive's seal
  (`swarm.kernel.seal`), chained to the one sealed before it, and an accepted outcome the sha256
  of each event it caused: `swarm timeline verify` finds an entry changed or removed later. An
  outcome somebody else wrote first on a command's subject does not answer it: the Hive writes
  its own after it, and readers that know the Hive's key ignore the foreign one.
* **One body per command id.** A second, different body published under an id that was already
  answered (without `Nats-Msg-Id`, or after the dedupe window) is answered on
  `swarm.evt.command._invalid.rejected` (rule `duplicate_id`) instead of being dropped silently.
* **Fenced.** A new leader first appends `hive.leader_elected`; every append after that expects the
  stream to end exactly where this leader's last write did (`Nats-Expected-Last-Sequence`). A
  deposed leader that wakes up (paused, partitioned) fails that check on its next write, so it
  never writes once its successor has. Any such conflict (another writer, a foreign entry) makes
  the leader rebuild its working state from the agreed one and decide again.

Decisions are taken on a working copy of the agreed state that the leader advances with its own
appends (it is the only writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from schemas import (
    REGISTRY,
    CommandAccepted,
    CommandRejected,
    DecodeError,
    Envelope,
    FieldErrorModel,
    Payload,
    event,
    events,
    names,
    utcnow,
)
from schemas.specs import AgentSpec
from services.hive.raft import ReplicatedState
from swarm.devstack.principals import Roster
from swarm.domain.decide import Decision, decide
from swarm.domain.evolve import evolve, fold_checked
from swarm.domain.outcome import Rejection, Rule
from swarm.domain.policy import check_access, check_principal
from swarm.domain.state import HiveState
from swarm.kernel.admin import LogAdmin
from swarm.kernel.eventlog import (
    MAX_ATOMIC_BATCH,
    AppendFailed,
    AppendRequest,
    ConcurrencyConflict,
    Delivery,
    DuplicateBatch,
    EventLog,
    EventLogError,
    NotFound,
)
from swarm.kernel.ids import IdKey
from swarm.kernel.seal import SealKey, entry_digest
from swarm.kernel.signing import signature_of

log = structlog.get_logger(__name__)

_REASON_LIMIT = 2000
_RECEIVED_LIMIT = 256
#: Handling failures of one command (not the log's) before it is given up.
MAX_ATTEMPTS = 3
#: Deliveries of one command before it is given up whatever failed (a backstop for failures
#: this leader could not count: a crash while handling it, another leader's attempts).
MAX_DELIVERIES = 25
#: Redelivery delay after a failed append, growing with each delivery up to this.
_MAX_NAK_DELAY = 30.0


class NotCaughtUp(RuntimeError):
    """The agreed state did not reach the log's end in time (e.g. Raft lost its quorum)."""


class LeadershipLost(NotCaughtUp):
    """Leadership went while the leader waited for the agreed state: it stops at once, handing
    back what it fetched, instead of waiting out the catch-up timeout with those commands held
    (a cut-off leader's state never catches up until its link is back)."""


class Unfoldable(Exception):
    """A decision's events do not survive the round trip through bytes and `evolve`."""


@dataclass(slots=True)
class _Pending:
    delivery: Delivery
    command: Envelope[Any] | None
    #: The events and outcome as they will be read back from the log, and what will be written.
    envelopes: list[Envelope[Any]]
    requests: list[AppendRequest]


class CommandProcessor:
    def __init__(
        self,
        eventlog: EventLog,
        raft: ReplicatedState,
        *,
        source: str,
        seal: SealKey,
        ids: IdKey,
        principals: Roster | None = None,
        node: str = "hive",
        term: Callable[[], int] = lambda: 0,
        clock: Callable[[], datetime] = utcnow,
        catch_up_timeout: float = 15.0,
        max_attempts: int = MAX_ATTEMPTS,
        max_deliveries: int = MAX_DELIVERIES,
    ) -> None:
        self.log = eventlog
        self.raft = raft
        self.source = source
        self.seal = seal
        #: The stack's principals; with them, only commands they signed count.
        self.principals = principals
        self.ids = ids
        self.node = node
        self.term = term
        self.clock = clock
        self.catch_up_timeout = catch_up_timeout
        self.max_attempts = max_attempts
        self.max_deliveries = max_deliveries
        self.working: HiveState | None = None
        #: The stream sequence this leader's next append must follow (its fence).
        self.end = 0
        self.handled = 0
        self.dead_lettered = 0
        self._still_leader: Callable[[], bool] = lambda: True
        #: Handling failures per command (stream sequence of the delivery), with the last reason.
        self._failures: dict[int, tuple[int, str]] = {}
        #: Where a foreign outcome already sits on a command's outcome subjects: the Hive's own
        #: outcome is written after it (command id -> that outcome's sequence).
        self._foreign: dict[str, int] = {}
        #: Commands whose message ids were taken by someone else: salted on the next try.
        self._salt: dict[str, str] = {}
        #: Module sha256s found in the object store.
        self._modules: set[str] = set()
        #: Fetched deliveries not yet acked or nak'd, by stream sequence.
        self._unsettled: dict[int, Delivery] = {}

    async def run(self, still_leader: Callable[[], bool]) -> None:
        self._still_leader = still_leader
        await LogAdmin(self.log).ensure_deadletter()
        consumer = await self.log.consumer(
            names.STREAM_COMMANDS,
            names.CONSUMER_HIVE_COMMANDS,
            max_ack_pending=512,
            ack_wait=15.0,
        )
        try:
            await self.resync()
            await self._announce()
            while still_leader():
                deliveries = await consumer.fetch(128, timeout=0.2)
                self._unsettled = {d.stream_seq: d for d in deliveries}
                if deliveries and still_leader():
                    await self._handle_batch(deliveries)
        except LeadershipLost as exc:
            log.info("leadership lost while catching up", error=str(exc))
        finally:
            await self._hand_back()
            await consumer.close()
            self.working = None

    async def _hand_back(self) -> None:
        """Give what this leader fetched but did not settle back to the stream at once.

        Otherwise it stays invisible to the next leader until `ack_wait` (15 s) runs out: under
        load leadership can move every few seconds, and each move would stall the commands in
        flight that long."""
        unsettled, self._unsettled = self._unsettled, {}
        for delivery in unsettled.values():
            with contextlib.suppress(EventLogError, TimeoutError):
                await delivery.nak()

    async def resync(self, at_least: int | None = None) -> HiveState:
        """Rebuild the working state from the agreed one once it has folded the whole log."""
        target = (
            at_least if at_least is not None else await self.log.last_sequence(names.STREAM_EVENTS)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.catch_up_timeout
        while self.raft.applied_seq < target:
            if not self._still_leader():
                raise LeadershipLost(f"no longer leading at {self.raft.applied_seq}")
            if loop.time() > deadline:
                raise NotCaughtUp(f"agreed state at {self.raft.applied_seq}, log at {target}")
            await asyncio.sleep(0.005)
        # In a thread: copying a big state takes seconds (20,000 agents: ~3 s here), which on
        # the event loop would hold up queries, heartbeats and the projector meanwhile.
        self.working = await asyncio.to_thread(self.raft.copy_state)
        self.end = self.working.applied_seq
        return self.working

    def _sealed(self, body: bytes) -> bytes:
        """`body` sealed, chained to the entry the Hive sealed last (as the working state has
        folded it: the leader's own writes advance it)."""
        working = self.working
        assert working is not None
        return self.seal.seal(body, previous=working.chain_head or None)

    def _own_event(self, payload: Payload, aggregate_id: str, time: datetime) -> Envelope[Any]:
        """An event the Hive writes on its own account, caused by no command it decided: its
        election as leader, or the rejection of input that is not a valid command."""
        return event(
            payload,
            aggregate_id=aggregate_id,
            source=self.source,
            identity="service:hive",
            time=time,
        )

    async def _announce(self) -> None:
        """Put this leader's election on the log before its first decision (its fence).

        Not on an empty log: there is nothing a deposed leader could decide wrongly there, and
        an empty log stays open to `swarm timeline import` with the Hive running."""
        while self._still_leader():
            working = self.working
            assert working is not None
            if self.end == 0:
                return
            payload = events.HiveLeaderElected(
                node=self.node, term=max(0, self.term()), applied_seq=working.applied_seq
            )
            env = self._own_event(payload, self.node, self.clock())
            request = AppendRequest(
                subject=names.event_subject(names.HIVE_AGGREGATE, self.node, "leader_elected"),
                # Not sealed: outside the chain of outcomes, an election changes nothing but
                # the fence (a replica's state after it differs only in `applied_seq`).
                body=env.to_json(),
                msg_id=f"leader:{self.node}:{payload.term}:{self.end}",
                expected_stream_seq=self.end,
            )
            try:
                fold_checked(working, self.end + 1, request.body)
                appended = await self.log.append_atomic([request])
            except (ConcurrencyConflict, DuplicateBatch, AppendFailed) as exc:
                log.info("leader election not recorded yet; retrying", error=str(exc))
                await asyncio.sleep(0.05)
                await self.resync()
                continue
            self.end = appended[-1].seq
            log.info("leader election recorded", node=self.node, seq=self.end)
            return

    # -- commands ---------------------------------------------------------------------------------

    async def _handle_batch(self, deliveries: list[Delivery]) -> None:
        """Decide commands in order and write them in as few atomic appends as fit.

        An atomic append takes ~3 ms on nats-server whatever its size, so writing one per command
        would cap the Hive at a few hundred commands per second. The leader is the only writer and
        fences its appends, so the sequences a group will get are known in advance: each decision
        is folded into the working state at its sequence before the next command is decided. If
        the append fails, the working state is rebuilt and the group is written again one command
        at a time, which settles every edge case (already written, conflict, partial
        redelivery, a foreign write) with the per-command rules.
        """
        group: list[_Pending] = []
        size = 0
        # JetStream checks every expectation in an atomic batch against the stream as it was
        # before the batch, so only the first write to an aggregate in a group may state one;
        # the batch being atomic guarantees nothing else lands between its messages.
        covered: set[str] = set()
        ids: set[str] = set()
        for delivery in deliveries:
            if not self._still_leader():
                return  # handed back to the stream for the next leader (`_hand_back`)
            if delivery.num_delivered > self.max_deliveries:
                if group:
                    await self._commit(group)
                    group, size, covered, ids = [], 0, set(), set()
                await self._give_up(delivery, f"delivered {delivery.num_delivered} times")
                continue
            missing = await self._missing_modules(delivery)
            pending = self._prepare(delivery, missing)
            # Also an unreadable body's id, when its answer goes to that id's subject: two of
            # them in one atomic append would repeat a message id and fail the whole group.
            command_id = _command_id(pending)
            if group and (
                size + len(pending.requests) > MAX_ATOMIC_BATCH
                or (command_id is not None and command_id in ids)
            ):
                await self._commit(group)
                group, size, covered, ids = [], 0, set(), set()
                pending = self._prepare(delivery, missing)
            try:
                self._fold_ahead(pending, self.end + size + 1)
            except Unfoldable as exc:
                # The working state may be half changed: write what came before, rebuild, and
                # answer this command with why.
                if group:
                    await self._commit(group)
                    group, size, covered, ids = [], 0, set(), set()
                await self.resync()
                pending = self._refusal(delivery, pending.command, str(exc))
                self._fold_ahead(pending, self.end + 1)
            pending.requests = [_first_expectation_only(r, covered) for r in pending.requests]
            group.append(pending)
            size += len(pending.requests)
            if command_id is not None:
                ids.add(command_id)
        if group:
            await self._commit(group)

    async def _missing_modules(self, delivery: Delivery) -> frozenset[str]:
        """The module sha256s a deploy or rollout names that are not in the object store.

        Looked up here, outside `decide` (which does no I/O), and handed to it as a fact: a
        deploy of a module nobody pushed is rejected (rule `module`) instead of crash-looping on
        every pod it is placed on. Modules are immutable, so one found stays known."""
        if b'"sha256"' not in delivery.data:
            return frozenset()
        try:
            command = REGISTRY.decode(delivery.data, kind="command")
        except Exception:
            return frozenset()  # answered as unreadable by `_prepare`
        spec = getattr(command.data, "spec", None)
        digest = spec.module.sha256 if isinstance(spec, AgentSpec) else None
        if digest is None or digest in self._modules:
            return frozenset()
        try:
            store = await LogAdmin(self.log).modules()
            if await store.info(digest) is None:
                return frozenset({digest})
        except NotFound:  # no module store at all
            return frozenset({digest})
        except (EventLogError, TimeoutError) as exc:
            # Not knowing is no reason to refuse: the pods report a module they cannot fetch.
            log.warning("could not look up a module", sha256=digest, error=str(exc))
            return frozenset()
        self._modules.add(digest)
        return frozenset()

    def _prepare(
        self, delivery: Delivery, missing_modules: frozenset[str] = frozenset()
    ) -> _Pending:
        """The command's outcome and events as they will be written; never raises."""
        working = self.working
        assert working is not None
        now = self.clock()
        try:
            command = REGISTRY.decode(delivery.data, kind="command")
        except DecodeError as exc:
            return self._unparsed(delivery, exc.reason, exc.errors, exc.received, now)
        except Exception as exc:  # the decoder's own failure must not become ours
            return self._unparsed(delivery, f"body cannot be read ({_describe(exc)})", (), {}, now)
        outcome: Decision | Rejection
        unsigned = self._unsigned(delivery.data, command, working)
        if command.type != delivery.subject:
            outcome = Rejection(
                f"type {command.type} was published on {delivery.subject}", rule=Rule.SUBJECT
            )
        elif unsigned is not None:
            outcome = unsigned
        else:
            try:
                outcome = decide(working, command, now, missing_modules=missing_modules)
            except Exception as exc:
                log.exception("deciding a command failed", command=command.id, type=command.type)
                outcome = Rejection(
                    f"the Hive could not decide this command ({_describe(exc)}); "
                    "nothing was carried out",
                    rule=Rule.INTERNAL,
                )
        try:
            return self._built(delivery, command, outcome, now)
        except Exception as exc:
            log.warning("a decision could not be written", command=command.id, error=str(exc))
            return self._refusal(delivery, command, f"its events cannot be written: {exc}")

    def _unsigned(
        self, data: bytes, command: Envelope[Any], working: HiveState
    ) -> Rejection | None:
        """Why the command does not count as its signer's (no signature, a broken one, a key
        that is no principal of the stack, an identity the principal may not claim, or a user
        without the role it needs where the command acts); None when it does, or when this
        Hive takes unsigned commands (no principals configured)."""
        if self.principals is None:
            return None
        signature = signature_of(data)
        if signature is None:
            return Rejection(
                "the command is not signed: this stack takes commands signed by one of its "
                "principals (swarm.kernel.signing; the swarm CLI and Swarm's clients sign with "
                "$SWARM_NATS_CREDENTIALS)",
                rule=Rule.SIGNATURE,
            )
        if not signature.valid:
            return Rejection(
                f"the command's signature does not hold: {signature.problem}", rule=Rule.SIGNATURE
            )
        principal = self.principals.get(signature.signer)
        if principal is None:
            return Rejection(
                f"the command is signed by {_printable(signature.signer, 60)}, which is no "
                "principal of this stack",
                rule=Rule.SIGNATURE,
            )
        return check_principal(principal.role, principal.name, command) or check_access(
            working, principal.role, command
        )

    def _refusal(self, delivery: Delivery, command: Envelope[Any] | None, why: str) -> _Pending:
        """A rejection for a command whose decision cannot be written or folded."""
        now = self.clock()
        if command is None:
            return self._unparsed(delivery, why, (), {}, now)
        return self._built(delivery, command, Rejection(why, rule=Rule.INTERNAL), now)

    def _fold_ahead(self, pending: _Pending, first_seq: int) -> None:
        """Fold what `pending` will write into the working state, at the sequences it will get.

        `pending.envelopes` are its bodies decoded back from their bytes (`_built`), so this is
        what every replica will fold from the log."""
        working = self.working
        assert working is not None
        for offset, envelope in enumerate(pending.envelopes):
            try:
                evolve(working, first_seq + offset, envelope)
            except Exception as exc:
                raise Unfoldable(f"its events cannot be folded ({_describe(exc)})") from exc

    async def _commit(self, group: list[_Pending]) -> None:
        requests = [r for p in group for r in p.requests]
        requests[0] = dataclasses.replace(requests[0], expected_stream_seq=self.end)
        try:
            appended = await self.log.append_atomic(requests)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Refused (written before, a conflict, a foreign write) or anything else: one by one,
            # each command's own failures counted, so one bad command cannot stop the group.
            log.info(
                "group append refused; writing one by one", commands=len(group), error=str(exc)
            )
            await self.resync()
            for pending in group:
                await self._write_one(pending.delivery)
            return
        self.end = appended[-1].seq
        for pending in group:
            self.handled += 1
            self._unsettled.pop(pending.delivery.stream_seq, None)
            self._failures.pop(pending.delivery.stream_seq, None)
            await pending.delivery.ack()

    async def _write_one(self, delivery: Delivery) -> None:
        """Write one command on fresh state, counting failures that are the command's own."""
        try:
            await self._write(delivery)
        except (NotCaughtUp, asyncio.CancelledError):
            raise
        except (EventLogError, TimeoutError) as exc:
            # The log's trouble, not the command's: try again later.
            log.warning(
                "command not written; redelivering", seq=delivery.stream_seq, error=str(exc)
            )
            await self._retry_later(delivery)
        except Exception as exc:
            log.exception("handling a command failed", seq=delivery.stream_seq)
            count, _ = self._failures.get(delivery.stream_seq, (0, ""))
            self._failures[delivery.stream_seq] = (count + 1, _describe(exc))
            await self.resync()
            if count + 1 >= self.max_attempts:
                await self._give_up(delivery, f"failed {count + 1} times: {_describe(exc)}")
            else:
                await self._retry_later(delivery)

    async def _write(self, delivery: Delivery) -> None:
        for _ in range(4):
            if not self._still_leader():
                return  # unacked: redelivered to the next leader
            pending = self._prepare(delivery, await self._missing_modules(delivery))
            try:
                self._fold_ahead(pending, self.end + 1)
            except Unfoldable as exc:
                await self.resync()
                pending = self._refusal(delivery, pending.command, str(exc))
                self._fold_ahead(pending, self.end + 1)
            requests = list(pending.requests)
            requests[0] = dataclasses.replace(requests[0], expected_stream_seq=self.end)
            try:
                appended = await self.log.append_atomic(requests)
            except (DuplicateBatch, ConcurrencyConflict) as exc:
                # Written before (we crashed before acking), or someone else wrote: look at what
                # is there, on a state rebuilt from the log.
                await self.resync()
                if await self._settled(pending, duplicate=isinstance(exc, DuplicateBatch)):
                    return
                continue
            except AppendFailed as exc:
                log.warning("append failed; command will be redelivered", error=str(exc))
                await self.resync()
                await self._retry_later(delivery)
                return
            self.end = appended[-1].seq
            await self._done(delivery, _command_id(pending))
            return
        log.warning(
            "command still conflicts after four writes; redelivering",
            seq=delivery.stream_seq,
            deliveries=delivery.num_delivered,
        )
        await self._retry_later(delivery)

    async def _done(self, delivery: Delivery, command_id: str | None = None) -> None:
        self.handled += 1
        self._unsettled.pop(delivery.stream_seq, None)
        self._failures.pop(delivery.stream_seq, None)
        if command_id is not None:
            self._foreign.pop(command_id, None)
            self._salt.pop(command_id, None)
        await delivery.ack()

    async def _retry_later(self, delivery: Delivery) -> None:
        self._unsettled.pop(delivery.stream_seq, None)
        delay = min(0.5 * 2 ** min(delivery.num_delivered - 1, 8), _MAX_NAK_DELAY)
        await delivery.nak(delay=delay)

    async def _settled(self, pending: _Pending, *, duplicate: bool) -> bool:
        """After a refused append: True when the command needs nothing more (answered before,
        or now answered as a reused id); False to decide and write it again."""
        delivery = pending.delivery
        command_id = _command_id(pending)
        if command_id is None:
            if duplicate:  # our `invalid:<seq>` answer was written before
                await self._done(delivery)
                return True
            return False
        answered = await self._existing_answer(command_id, delivery)
        if answered is not None:
            if _same_command(answered, delivery):
                await self._done(delivery, command_id)
            else:
                await self._reused_id(delivery, command_id, answered)
            return True
        if duplicate:
            # Our message ids were taken by a writer that is not the Hive: use others.
            self._salt[command_id] = "~" + self.ids.tag("salt", command_id, delivery.stream_seq)
        return False

    async def _existing_answer(
        self, command_id: str, delivery: Delivery
    ) -> CommandAccepted | CommandRejected | None:
        """The outcome on the log that answers `command_id`, if any.

        That is one the Hive sealed, or an exact answer to this very command that was stored
        before it (a log imported from another stack: `swarm timeline import` writes events
        first, each outcome naming its command's position and digest). Anything else on the
        command's subjects is a foreign write: one written ahead cannot know the command's bytes,
        one written after it is not before it. Where a foreign outcome sits is remembered, so
        the Hive's own is written after it.
        """
        subject = names.outcome_wildcard(command_id)
        last = await self.log.last_sequence(names.STREAM_EVENTS, subject)
        if last == 0:
            return None
        found: CommandAccepted | CommandRejected | None = None
        replay = self.log.replay(names.STREAM_EVENTS, subjects=[subject], idle_timeout=0.5)
        async for stored in replay:
            if found is not None:
                continue  # read to the end: the replay closes its consumer there
            try:
                data = REGISTRY.decode(stored.data, kind="event").data
            except DecodeError:
                continue
            if not isinstance(data, CommandAccepted | CommandRejected):
                continue
            if self.seal.public.verify(stored.data) or (
                _answers_exactly(data, delivery) and stored.timestamp <= delivery.timestamp
            ):
                found = data
        if found is None:
            log.warning("foreign outcome on a command's subject", command=command_id, seq=last)
            self._foreign[command_id] = last
        return found

    async def _reused_id(
        self, delivery: Delivery, command_id: str, first: CommandAccepted | CommandRejected
    ) -> None:
        """Answer a second, different command sent under an id that was already answered."""
        where = f" (SWARM_COMMANDS #{first.command_seq})" if first.command_seq else ""
        reason = (
            f"command id {command_id} was already used by another command{where}; a command id "
            "is an idempotency key: send this command with a new id"
        )
        await self._write_invalid(delivery, reason, rule=Rule.DUPLICATE_ID, command_id=command_id)

    async def _give_up(self, delivery: Delivery, why: str) -> None:
        """Keep the command in SWARM_DEADLETTER and answer it, so it stops coming back."""
        reason = _printable(f"gave up on this command: {why}; it was moved to SWARM_DEADLETTER")
        log.warning("command given up", seq=delivery.stream_seq, reason=reason)
        try:
            await self.log.dead_letter(
                names.HIVE_DEADLETTER,
                delivery,
                stream=names.STREAM_COMMANDS,
                reason=reason,
                msg_id=f"hive.commands.{delivery.stream_seq}",
            )
        except AppendFailed as exc:
            log.warning("could not dead-letter a command; redelivering", error=str(exc))
            await self._retry_later(delivery)
            return
        self.dead_lettered += 1
        await self._write_invalid(
            delivery, reason, rule=Rule.POISON, command_id=_readable_id(delivery)
        )

    async def _write_invalid(
        self, delivery: Delivery, reason: str, *, rule: Rule, command_id: str | None
    ) -> None:
        """A rejection on `swarm.evt.command._invalid.rejected` naming the id it is about."""
        received: dict[str, Any] = {"subject": delivery.subject, "stream_seq": delivery.stream_seq}
        if command_id is not None:
            received["id"] = command_id
        answer = CommandRejected(
            command_id=names.INVALID_COMMAND_ID,
            command_seq=delivery.stream_seq,
            command_digest=_digest(delivery.data),
            reason=_printable(reason),
            rule=rule.value,
            received=received,
        )
        env = self._own_event(answer, names.INVALID_COMMAND_ID, self.clock())
        for _ in range(4):
            # Sealed on each try: after a resync the chain may end elsewhere.
            request = AppendRequest(
                subject=names.outcome_subject(names.INVALID_COMMAND_ID, "rejected"),
                body=self._sealed(env.to_json()),
                msg_id=self._invalid_msg_id(delivery),
                expected_stream_seq=self.end,
            )
            try:
                assert self.working is not None
                fold_checked(self.working, self.end + 1, request.body)
                appended = await self.log.append_atomic([request])
            except DuplicateBatch:
                await self.resync()
                break  # answered before (the message id is keyed: only we write it)
            except ConcurrencyConflict:
                await self.resync()
                continue
            except AppendFailed as exc:
                log.warning("could not answer a command; redelivering", error=str(exc))
                await self.resync()
                await self._retry_later(delivery)
                return
            self.end = appended[-1].seq
            break
        else:
            await self._retry_later(delivery)
            return
        await self._done(delivery, command_id)

    def _invalid_msg_id(self, delivery: Delivery) -> str:
        """Keyed, so nobody can take it first and make the Hive believe it answered."""
        return f"invalid:{delivery.stream_seq}:{self.ids.tag('invalid', delivery.stream_seq)}"

    # -- building what is written -----------------------------------------------------------------

    def _built(
        self,
        delivery: Delivery,
        command: Envelope[Any],
        outcome: Decision | Rejection,
        now: datetime,
    ) -> _Pending:
        """The command's events and sealed outcome as bytes, and as they decode back."""
        working = self.working
        assert working is not None
        salt = self._salt.get(command.id, "")
        requests: list[AppendRequest] = []
        expected_for: set[str] = set()
        events_ = outcome.events if isinstance(outcome, Decision) else []
        if len(events_) >= MAX_ATOMIC_BATCH:
            raise ValueError(f"{len(events_)} events do not fit in one atomic append")
        event_ids: list[str] = []
        event_digests: list[str] = []
        for n, payload in enumerate(events_):
            aggregate, aggregate_id = _aggregate_of(payload)
            env = event(
                payload,
                aggregate_id=aggregate_id,
                source=self.source,
                cause=command,
                id=f"{command.id}-{n}" if len(command.id) <= 56 else None,
                time=now,
            )
            event_ids.append(env.id)
            wildcard = names.aggregate_subjects(aggregate, aggregate_id)
            expected = None
            if wildcard not in expected_for:
                expected_for.add(wildcard)
                expected = _last_seq(working, aggregate, aggregate_id)
            body = env.to_json()
            event_digests.append(entry_digest(body))
            requests.append(
                AppendRequest(
                    subject=names.event_subject(
                        aggregate, aggregate_id, payload.TYPE.rsplit(".", 1)[1]
                    ),
                    body=body,
                    msg_id=f"{command.id}:{n}{salt}",
                    expected_last_seq=expected,
                    expected_subject=wildcard if expected is not None else None,
                )
            )
        answer: Payload
        common: dict[str, Any] = {
            "command_id": command.id,
            "command_type": command.type,
            "command_seq": delivery.stream_seq,
            "command_digest": _digest(delivery.data),
        }
        if isinstance(outcome, Decision):
            answer = CommandAccepted(**common, events=event_ids, digests=event_digests)
        else:
            answer = CommandRejected(
                **common,
                reason=_printable(outcome.reason),
                rule=outcome.rule.value,
                errors=[FieldErrorModel(**e) for e in outcome.errors],
            )
        answer_env = event(
            answer, aggregate_id=command.id, source=self.source, cause=command, time=now
        )
        accepted = isinstance(outcome, Decision)
        requests.append(
            AppendRequest(
                subject=names.outcome_subject(command.id, "accepted" if accepted else "rejected"),
                body=self._sealed(answer_env.to_json()),
                msg_id=f"{command.id}:outcome{salt}",
                expected_last_seq=self._foreign.get(command.id, 0),
                expected_subject=names.outcome_wildcard(command.id),
            )
        )
        max_payload = self.log.max_payload
        for request in requests:
            if max_payload and len(request.body) > max_payload:
                raise ValueError(
                    f"an event of {len(request.body)} bytes exceeds the log's limit of "
                    f"{max_payload} bytes per message"
                )
        envelopes = [REGISTRY.decode(r.body, kind="event") for r in requests]
        return _Pending(delivery, command, envelopes, requests)

    def _unparsed(
        self,
        delivery: Delivery,
        reason: str,
        errors: Any,
        received: dict[str, Any],
        now: datetime,
    ) -> _Pending:
        """The answer to input that is not a valid command, addressed as well as what was
        readable allows."""
        seen: dict[str, Any] = {
            k: _printable(v, _RECEIVED_LIMIT) for k, v in received.items() if isinstance(v, str)
        }
        seen.update({"subject": _printable(delivery.subject), "stream_seq": delivery.stream_seq})
        raw_id = received.get("id")
        command_id = raw_id if isinstance(raw_id, str) and names.is_token(raw_id) else None
        if command_id is not None and command_id in self._foreign:
            command_id = None  # its own subject holds a foreign outcome: answer on _invalid
        aggregate_id = command_id or names.INVALID_COMMAND_ID
        raw_type = received.get("type")
        rejected = CommandRejected(
            command_id=aggregate_id,
            command_type=_printable(raw_type, _RECEIVED_LIMIT)
            if isinstance(raw_type, str)
            else None,
            command_seq=delivery.stream_seq,
            command_digest=_digest(delivery.data),
            reason=_printable(reason),
            errors=[
                FieldErrorModel(loc=_printable(e.loc, 200), msg=_printable(e.msg), type=e.type)
                for e in list(errors)[:50]
            ],
            received=seen,
        )
        env = self._own_event(rejected, aggregate_id, now)
        request = AppendRequest(
            subject=names.outcome_subject(aggregate_id, "rejected"),
            body=self._sealed(env.to_json()),
            msg_id=(
                f"{command_id}:outcome{self._salt.get(command_id, '')}"
                if command_id
                else self._invalid_msg_id(delivery)
            ),
            expected_last_seq=0 if command_id else None,
            expected_subject=names.outcome_wildcard(command_id) if command_id else None,
        )
        return _Pending(delivery, None, [REGISTRY.decode(request.body, kind="event")], [request])


def _first_expectation_only(request: AppendRequest, covered: set[str]) -> AppendRequest:
    subject = request.expected_subject or request.subject
    if request.expected_last_seq is None:
        covered.add(subject)
        return request
    if subject in covered:
        return dataclasses.replace(request, expected_last_seq=None, expected_subject=None)
    covered.add(subject)
    return request


def _aggregate_of(payload: Payload) -> tuple[str, str]:
    aggregate = payload.TYPE.split(".")[1]
    return aggregate, str(getattr(payload, names.AGGREGATE_ID_FIELDS[aggregate]))


def _last_seq(state: HiveState, aggregate: str, aggregate_id: str) -> int:
    if aggregate == "agent":
        agent = state.agents.get(aggregate_id)
        return agent.last_seq if agent else 0
    if aggregate == "pod":
        pod = state.pods.get(aggregate_id)
        return pod.last_seq if pod else 0
    if aggregate == "namespace":
        ns = state.namespaces.get(aggregate_id)
        return ns.last_seq if ns else 0
    if aggregate == names.WEBHOOK_AGGREGATE:
        hook = state.webhooks.get(aggregate_id)
        return hook.last_seq if hook else 0
    if aggregate == names.ACCESS_AGGREGATE:
        return state.access_seq.get(aggregate_id, 0)
    return 0


def _command_id(pending: _Pending) -> str | None:
    if pending.command is not None:
        return str(pending.command.id)
    # An unparsed command answered on its own outcome subject.
    subject = pending.requests[-1].subject
    parsed = names.parse_event_subject(subject)
    if parsed is None or parsed[1] == names.INVALID_COMMAND_ID:
        return None
    return parsed[1]


def _same_command(answer: CommandAccepted | CommandRejected, delivery: Delivery) -> bool:
    """Whether the outcome on the log answers this very command (a redelivery, or the same bytes
    sent again), rather than another one that reused its id."""
    if answer.command_seq is None or answer.command_seq == delivery.stream_seq:
        return True
    return answer.command_digest is None or answer.command_digest == _digest(delivery.data)


def _answers_exactly(answer: CommandAccepted | CommandRejected, delivery: Delivery) -> bool:
    """The outcome names this command's position and bytes."""
    return (
        answer.command_seq == delivery.stream_seq
        and answer.command_digest is not None
        and answer.command_digest == _digest(delivery.data)
    )


def _readable_id(delivery: Delivery) -> str | None:
    try:
        raw = REGISTRY.decode(delivery.data, kind="command").id
    except Exception:  # whatever made us give up may be in the way of reading it too
        return None
    return str(raw)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _describe(exc: BaseException) -> str:
    text = str(exc) or "no details"
    return _printable(f"{type(exc).__name__}: {text}", 500)


def _printable(text: str, limit: int = _REASON_LIMIT) -> str:
    """`text` cut to `limit` characters, with what JSON cannot carry (lone surrogates) replaced."""
    clean = text.encode("utf-8", "replace").decode("utf-8")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
