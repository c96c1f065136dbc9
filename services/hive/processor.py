"""The leader's command loop: read a command, decide, write its events and outcome, ack.

Exactly one outcome per command, whatever crashes:

* A command's events and its outcome are one atomic append, so the log never holds events
  without their outcome (or the reverse).
* The outcome is appended with "expect no earlier message on this command's outcome subjects",
  so a second outcome for the same command is impossible even beyond the dedupe window; message
  ids derived from the command id make a repeated append a no-op inside it.
* The command is acked only after its append; a leader that dies before acking leaves it to be
  redelivered to the next leader, which finds the outcome already there.

Decisions are taken on a working copy of the agreed state that the leader advances with its own
appends (it is the only writer). If the log holds anything the leader did not write (a gap in
sequences, a concurrency conflict), the working copy is rebuilt from the agreed state once the
projection has folded the log that far.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
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
    names,
    utcnow,
)
from services.hive.decide import Decision, Rejection, decide
from services.hive.evolve import evolve
from services.hive.raft import ReplicatedState
from services.hive.state import HiveState
from swarm.kernel.eventlog import (
    MAX_ATOMIC_BATCH,
    AppendFailed,
    AppendRequest,
    ConcurrencyConflict,
    Delivery,
    DuplicateBatch,
    EventLog,
)

log = structlog.get_logger(__name__)


class NotCaughtUp(RuntimeError):
    """The agreed state did not reach the log's end in time (e.g. Raft lost its quorum)."""


class CommandProcessor:
    def __init__(
        self,
        eventlog: EventLog,
        raft: ReplicatedState,
        *,
        source: str,
        clock: Callable[[], datetime] = utcnow,
        catch_up_timeout: float = 15.0,
    ) -> None:
        self.log = eventlog
        self.raft = raft
        self.source = source
        self.clock = clock
        self.catch_up_timeout = catch_up_timeout
        self.working: HiveState | None = None
        self.handled = 0

    async def run(self, still_leader: Callable[[], bool]) -> None:
        consumer = await self.log.consumer(
            names.STREAM_COMMANDS,
            names.CONSUMER_HIVE_COMMANDS,
            max_ack_pending=512,
            ack_wait=15.0,
        )
        try:
            await self.resync()
            while still_leader():
                deliveries = await consumer.fetch(128, timeout=0.2)
                if deliveries and still_leader():  # else unacked: redelivered to the next leader
                    await self._handle_batch(deliveries)
        finally:
            await consumer.close()
            self.working = None

    async def resync(self, at_least: int | None = None) -> HiveState:
        """Rebuild the working state from the agreed one once it has folded the whole log."""
        target = (
            at_least if at_least is not None else await self.log.last_sequence(names.STREAM_EVENTS)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.catch_up_timeout
        while self.raft.applied_seq < target:
            if loop.time() > deadline:
                raise NotCaughtUp(f"agreed state at {self.raft.applied_seq}, log at {target}")
            await asyncio.sleep(0.005)
        self.working = self.raft.read(copy.deepcopy)
        return self.working

    # -- commands ---------------------------------------------------------------------------------

    async def _handle_batch(self, deliveries: list[Delivery]) -> None:
        """Decide commands in order and write them in as few atomic appends as fit.

        An atomic append takes ~3 ms on nats-server whatever its size, so writing one per command
        would cap the Hive at a few hundred commands per second. The leader is the only writer,
        so the sequences a batch will get are known in advance: each decision is folded into the
        working state at its predicted sequence before the next command is decided. If the
        append fails or lands elsewhere than predicted, the working state is rebuilt and the
        group is written again one command at a time, which settles every edge case (already
        written, conflict, partial redelivery) with the per-command rules.
        """
        working = self.working
        assert working is not None
        group: list[_Pending] = []
        size = 0
        # JetStream checks every expectation in an atomic batch against the stream as it was
        # before the batch, so only the first write to an aggregate in a group may state one;
        # the batch being atomic guarantees nothing else lands between its messages.
        covered: set[str] = set()
        for delivery in deliveries:
            pending = self._prepare(working, delivery)
            if size + len(pending.requests) > MAX_ATOMIC_BATCH and group:
                await self._commit(group)
                working = self.working
                assert working is not None
                group, size, covered = [], 0, set()
                pending = self._prepare(working, delivery)
            pending.requests = [_first_expectation_only(r, covered) for r in pending.requests]
            for env in pending.envelopes:
                evolve(working, working.applied_seq + 1, env)
            group.append(pending)
            size += len(pending.requests)
        if group:
            await self._commit(group)

    def _prepare(self, working: HiveState, delivery: Delivery) -> _Pending:
        now = self.clock()
        try:
            command = REGISTRY.decode(delivery.data, kind="command")
        except DecodeError as exc:
            envelopes, requests = self._unparsed(delivery, exc, now)
            return _Pending(delivery, None, envelopes, requests)
        outcome: Decision | Rejection
        if command.type != delivery.subject:
            outcome = Rejection(
                f"type {command.type} was published on {delivery.subject}", rule="subject"
            )
        else:
            outcome = decide(working, command, now)
        envelopes, requests = self._requests(working, command, outcome, now)
        return _Pending(delivery, command, envelopes, requests)

    async def _commit(self, group: list[_Pending]) -> None:
        requests = [r for p in group for r in p.requests]
        expected_first = self._predicted_start(group)
        try:
            appended = await self.log.append_atomic(requests)
        except (DuplicateBatch, ConcurrencyConflict, AppendFailed) as exc:
            log.info(
                "group append refused; writing one by one", commands=len(group), error=str(exc)
            )
            await self.resync()
            for pending in group:
                await self._write_one(pending)
            return
        if appended and appended[0].seq != expected_first:
            await self.resync(at_least=appended[-1].seq)
        for pending in group:
            self.handled += 1
            await pending.delivery.ack()

    def _predicted_start(self, group: list[_Pending]) -> int:
        assert self.working is not None
        return self.working.applied_seq - sum(len(p.envelopes) for p in group) + 1

    async def _write_one(self, pending: _Pending) -> None:
        """Write one command on fresh state: decide again, append, settle every refusal."""
        delivery, command = pending.delivery, pending.command
        if command is None:
            await self._write_unparsed(pending)
            return
        assert self.working is not None
        if command.type != delivery.subject:
            outcome: Decision | Rejection = Rejection(
                f"type {command.type} was published on {delivery.subject}", rule="subject"
            )
        else:
            outcome = decide(self.working, command, self.clock())
        await self._write(delivery, command, outcome)

    async def _write(
        self, delivery: Delivery, command: Envelope[Any], outcome: Decision | Rejection
    ) -> None:
        for attempt in range(3):
            assert self.working is not None
            now = self.clock()
            envelopes, requests = self._requests(self.working, command, outcome, now)
            try:
                appended = await self.log.append_atomic(requests)
            except DuplicateBatch:
                break  # written before (we crashed before acking): the outcome is there
            except ConcurrencyConflict:
                if await self._answered(command.id):
                    break
                # Someone else wrote to one of these aggregates: decide again on fresh state.
                log.warning("concurrency conflict; resyncing", command=command.id, attempt=attempt)
                await self.resync()
                outcome = decide(self.working, command, self.clock())
                continue
            except AppendFailed as exc:
                log.warning(
                    "append failed; command will be redelivered", command=command.id, error=str(exc)
                )
                await delivery.nak(delay=0.5)
                return
            await self._fold(envelopes, [a.seq for a in appended])
            break
        else:
            await delivery.nak(delay=1.0)
            return
        self.handled += 1
        await delivery.ack()

    def _requests(
        self, state: HiveState, command: Envelope[Any], outcome: Decision | Rejection, now: datetime
    ) -> tuple[list[Envelope[Any]], list[AppendRequest]]:
        envelopes: list[Envelope[Any]] = []
        requests: list[AppendRequest] = []
        expected_for: set[str] = set()
        events = outcome.events if isinstance(outcome, Decision) else []
        for n, payload in enumerate(events):
            aggregate, aggregate_id = _aggregate_of(payload)
            env = event(
                payload,
                aggregate_id=aggregate_id,
                source=self.source,
                cause=command,
                id=f"{command.id}-{n}" if len(command.id) <= 56 else None,
                time=now,
            )
            wildcard = names.aggregate_subjects(aggregate, aggregate_id)
            expected = None
            if wildcard not in expected_for:
                expected_for.add(wildcard)
                expected = _last_seq(state, aggregate, aggregate_id)
            envelopes.append(env)
            requests.append(
                AppendRequest(
                    subject=names.event_subject(
                        aggregate, aggregate_id, payload.TYPE.rsplit(".", 1)[1]
                    ),
                    body=env.to_json(),
                    msg_id=f"{command.id}:{n}",
                    expected_last_seq=expected,
                    expected_subject=wildcard if expected is not None else None,
                )
            )
        answer: Payload
        if isinstance(outcome, Decision):
            answer = CommandAccepted(
                command_id=command.id, command_type=command.type, events=[e.id for e in envelopes]
            )
        else:
            answer = CommandRejected(
                command_id=command.id,
                command_type=command.type,
                reason=outcome.reason,
                rule=outcome.rule,
                errors=[FieldErrorModel(**e) for e in outcome.errors],
            )
        answer_env = event(
            answer, aggregate_id=command.id, source=self.source, cause=command, time=now
        )
        envelopes.append(answer_env)
        requests.append(
            AppendRequest(
                subject=names.outcome_subject(
                    command.id, "accepted" if isinstance(outcome, Decision) else "rejected"
                ),
                body=answer_env.to_json(),
                msg_id=f"{command.id}:outcome",
                expected_last_seq=0,
                expected_subject=names.outcome_wildcard(command.id),
            )
        )
        return envelopes, requests

    async def _fold(self, envelopes: list[Envelope[Any]], seqs: list[int]) -> None:
        working = self.working
        assert working is not None
        if seqs and seqs[0] != working.applied_seq + 1:
            # Something else was written since our last append: fold the log, not our guess.
            await self.resync(at_least=seqs[-1])
            return
        for env, seq in zip(envelopes, seqs, strict=True):
            evolve(working, seq, env)

    async def _answered(self, command_id: str) -> bool:
        return (
            await self.log.last_sequence(names.STREAM_EVENTS, names.outcome_wildcard(command_id))
            > 0
        )

    def _unparsed(
        self, delivery: Delivery, exc: DecodeError, now: datetime
    ) -> tuple[list[Envelope[Any]], list[AppendRequest]]:
        """The answer to input that is not a valid command, addressed as well as what was
        readable allows."""
        received: dict[str, Any] = {
            **exc.received,
            "subject": delivery.subject,
            "stream_seq": delivery.stream_seq,
        }
        raw_id = exc.received.get("id")
        command_id = raw_id if isinstance(raw_id, str) and names.is_token(raw_id) else None
        aggregate_id = command_id or names.INVALID_COMMAND_ID
        rejected = CommandRejected(
            command_id=aggregate_id,
            command_type=exc.received.get("type")
            if isinstance(exc.received.get("type"), str)
            else None,
            reason=exc.reason,
            errors=[FieldErrorModel(**e.as_dict()) for e in exc.errors],
            received=received,
        )
        env = event(
            rejected,
            aggregate_id=aggregate_id,
            source=self.source,
            identity="service:hive",
            time=now,
        )
        request = AppendRequest(
            subject=names.outcome_subject(aggregate_id, "rejected"),
            body=env.to_json(),
            msg_id=f"{command_id}:outcome" if command_id else f"invalid:{delivery.stream_seq}",
            expected_last_seq=0 if command_id else None,
            expected_subject=names.outcome_wildcard(command_id) if command_id else None,
        )
        return [env], [request]

    async def _write_unparsed(self, pending: _Pending) -> None:
        try:
            appended = await self.log.append_atomic(pending.requests)
        except (DuplicateBatch, ConcurrencyConflict):
            pass  # answered before
        except AppendFailed as err:
            log.warning("could not answer malformed command", error=str(err))
            await pending.delivery.nak(delay=0.5)
            return
        else:
            await self._fold(pending.envelopes, [a.seq for a in appended])
        self.handled += 1
        await pending.delivery.ack()


@dataclass(slots=True)
class _Pending:
    delivery: Delivery
    command: Envelope[Any] | None
    envelopes: list[Envelope[Any]]
    requests: list[AppendRequest]


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
    return 0
