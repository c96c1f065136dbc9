"""Publishing fuzzed commands to a real Hive and checking what it wrote.

The properties, checked after every batch:

* **Exactly one outcome per command.** Every command stored in SWARM_COMMANDS has exactly one
  outcome sealed by the Hive: on `swarm.evt.command.<id>.accepted|rejected` naming its position
  (`data.command_seq`), where `<id>` is the id the sender wrote, or on
  `swarm.evt.command._invalid.rejected` naming its position (`data.received.stream_seq`). The
  one exception is the Hive's idempotency rule: the very same bytes stored again (published
  without `Nats-Msg-Id`) are the same command, answered by the first copy's outcome.
  No command id ever has two outcomes, and nothing but the Hive writes outcomes here.
* **The Hive keeps deciding.** A fresh valid command is accepted within a few seconds.
* **Nothing it wrote fails to fold.** The replica's `fold_failures` stays 0.
* **What the schema accepts is read.** A schema-valid command is decided, never answered as
  unreadable.

`swarm.client.commands.wait_for_outcome` is also asked for each command with an id of its own,
as a client would, and must find the same outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings

from schemas import REGISTRY, DecodeError, commands, names
from services.hive.config import HiveSettings
from swarm.client.commands import build_command, send_and_wait, wait_for_outcome
from swarm.kernel.eventlog import EventLog
from swarm.kernel.seal import SealVerifier
from tests.fuzz.sends import RAW_MARK, Item, Reuse, render, subject_for

T = TypeVar("T")

_INVALID = names.outcome_subject(names.INVALID_COMMAND_ID, names.OUTCOME_REJECTED)


def hive_key(password: str) -> str:
    """The public key of the seal a Hive with this Raft password puts on its outcomes."""
    return HiveSettings(raft_password=password).seal_key().public.text


@dataclass
class Stored:
    """A command as stored in SWARM_COMMANDS."""

    seq: int
    subject: str
    body: bytes
    label: str
    #: The id the Hive reads from it (None when it reads none, or makes one up).
    readable_id: str | None
    #: Whether the sender gave it an id nobody else used (so a client can wait on it alone).
    own_id: bool

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def describe(self) -> str:
        shown = self.body[:300].decode("utf-8", "backslashreplace")
        more = f"... ({len(self.body)} bytes)" if len(self.body) > 300 else ""
        return f"#{self.seq} [{self.label}] on {self.subject}: {shown}{more}"


@dataclass
class Answer:
    event_seq: int
    subject: str
    #: The command id the outcome's subject names.
    command_id: str
    accepted: bool
    body: dict[str, Any]


@dataclass
class Outcomes:
    """Every outcome on SWARM_EVENTS, read incrementally, attributed to command positions."""

    seal: SealVerifier
    cursor: int = 1
    by_seq: dict[int, list[Answer]] = field(default_factory=lambda: defaultdict(list))
    by_id: dict[str, list[Answer]] = field(default_factory=lambda: defaultdict(list))
    unattributed: list[Answer] = field(default_factory=list)
    unsealed: list[int] = field(default_factory=list)

    async def refresh(self, log: EventLog) -> None:
        end = await log.last_sequence(names.STREAM_EVENTS)
        if end < self.cursor:
            return
        replay = log.replay(
            names.STREAM_EVENTS,
            start_seq=self.cursor,
            subjects=[f"{names.EVENTS_PREFIX}.{names.OUTCOME_AGGREGATE}.>"],
        )
        async for delivery in replay:
            self.cursor = delivery.stream_seq + 1
            if not self.seal.verify(delivery.data):
                self.unsealed.append(delivery.stream_seq)
                continue
            body = json.loads(delivery.data)
            parts = names.parse_event_subject(delivery.subject)
            assert parts is not None, delivery.subject
            answer = Answer(
                delivery.stream_seq,
                delivery.subject,
                parts[1],
                parts[2] == names.OUTCOME_ACCEPTED,
                body,
            )
            data = body.get("data", {})
            received = data.get("received") or {}
            if delivery.subject == _INVALID:
                position = received.get("stream_seq")
            else:
                position = data.get("command_seq")
                self.by_id[answer.command_id].append(answer)
            if isinstance(position, int):
                self.by_seq[position].append(answer)
            else:
                self.unattributed.append(answer)
        self.cursor = max(self.cursor, end + 1)


def readable_id(body: bytes) -> str | None:
    """The command id the Hive reads from `body`: what the sender wrote, if it is a token."""
    try:
        envelope = REGISTRY.decode(body, kind="command")
    except DecodeError as exc:
        found = exc.received.get("id")
        return found if isinstance(found, str) and names.is_token(found) else None
    except Exception:
        return None
    # An envelope without `id` gets a made-up one from the model's default: not the sender's.
    return str(envelope.id) if "id" in envelope.model_fields_set else None


class Problems(AssertionError):
    pass


@dataclass
class FuzzTarget:
    """One Hive (or a cluster) under fuzz, and everything sent to it so far."""

    client: EventLog
    reader: EventLog
    outcomes: Outcomes
    status: Callable[[], Awaitable[list[dict[str, Any]]]]
    sent: dict[int, Stored] = field(default_factory=dict)
    counter: int = 0
    #: Command ids the harness handed out, in order (for `Reuse`).
    history: list[tuple[str | None, bytes, str]] = field(default_factory=list)
    #: Checks that the replicas agree (a cluster); nothing for one replica.
    agree: Callable[[], Awaitable[None]] | None = None
    answer_within: float = 30.0
    probe_within: float = 15.0

    def _next_id(self) -> str:
        self.counter += 1
        return f"fz{self.counter}"

    async def publish(self, items: list[Item]) -> list[Stored]:
        """Publish a batch straight onto SWARM_COMMANDS with nats-py; returns what was stored."""
        stored: list[Stored] = []
        for item in items:
            body, subject, msg_id, label, command_id = self._resolve(item)
            headers = {names.HEADER_MSG_ID: msg_id} if msg_id else None
            ack = await self.client.js.publish(subject, body, headers=headers)
            self.history.append((command_id, body, subject))
            if ack.duplicate:
                continue  # JetStream kept the first one with this Nats-Msg-Id
            rid = readable_id(body)
            entry = Stored(int(ack.seq), subject, body, label, rid, own_id=False)
            self.sent[entry.seq] = entry
            stored.append(entry)
        ids = defaultdict(set)
        for entry in self.sent.values():
            if entry.readable_id is not None:
                ids[entry.readable_id].add(entry.digest)
        for entry in stored:
            entry.own_id = entry.readable_id is not None and len(ids[entry.readable_id]) == 1
        return stored

    def _resolve(self, item: Item) -> tuple[bytes, str, str | None, str, str | None]:
        if isinstance(item, Reuse):
            back = min(item.back, len(self.history))
            command_id: str | None
            command_id, body, subject = self.history[-back]
            if not item.same_bytes and item.obj is not None and command_id is not None:
                obj = {**item.obj, "id": command_id}
                body = json.dumps(obj, ensure_ascii=False).encode()
                subject = obj["type"]
                label = "reused_id"
            else:
                label = "same_bytes"
            msg_id = command_id if item.msg_id == "command_id" else None
            return body, subject, msg_id, label, command_id
        obj = dict(item.obj)
        command_id = None
        if item.mutation != "bad_id" and isinstance(obj.get("id"), str) and obj["id"] != RAW_MARK:
            command_id = obj["id"] = self._next_id()
        body = render(item, obj)
        msg_id = {"command_id": command_id, "none": None, "other": self._next_id() + "-m"}[
            item.msg_id
        ]
        return body, subject_for(obj, item), msg_id, item.mutation, command_id

    # -- properties -------------------------------------------------------------------------------

    def accepted(self) -> int:
        """Commands sent by this run that the Hive accepted."""
        return sum(any(a.accepted for a in self._own(e)) for e in self.sent.values())

    def _own(self, entry: Stored) -> list[Answer]:
        return self.outcomes.by_seq.get(entry.seq, [])

    def _answered_before(self, entry: Stored) -> bool:
        """Answered as the very same bytes stored earlier (the Hive's idempotency rule)."""
        if entry.readable_id is None:
            return False
        return any(
            earlier.seq < entry.seq
            and earlier.body == entry.body
            and any(a.command_id == entry.readable_id for a in self._own(earlier))
            for earlier in self.sent.values()
        )

    def _unanswered(self, entries: list[Stored]) -> list[Stored]:
        return [e for e in entries if not self._own(e) and not self._answered_before(e)]

    async def wait_answered(self, entries: list[Stored]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.answer_within
        while True:
            await self.outcomes.refresh(self.reader)
            missing = self._unanswered(entries)
            if not missing:
                return
            if loop.time() > deadline:
                raise Problems(
                    f"{len(missing)} command(s) got no outcome within {self.answer_within}s:\n"
                    + "\n".join(e.describe() for e in missing[:5])
                )
            await asyncio.sleep(0.1)

    def check_exactly_one(self) -> None:
        problems: list[str] = []
        for entry in self.sent.values():
            own = self._own(entry)
            if len(own) > 1:
                problems.append(
                    f"{len(own)} outcomes ({', '.join(a.subject for a in own)}) for "
                    + entry.describe()
                )
            elif not own and not self._answered_before(entry):
                problems.append("no outcome for " + entry.describe())
            for answer in own:
                if entry.label == "valid" and answer.body.get("data", {}).get("received"):
                    # What the exported schema accepts, the Hive's decoder must read.
                    problems.append(
                        f"a schema-valid command was refused as unreadable "
                        f"({answer.body['data'].get('reason')}): " + entry.describe()
                    )
                if answer.subject == _INVALID:
                    continue
                if answer.command_id != entry.readable_id:
                    problems.append(
                        f"answered on {answer.subject}, an id the sender never wrote "
                        f"(it wrote {entry.readable_id!r}): " + entry.describe()
                    )
        for command_id, answers in self.outcomes.by_id.items():
            if len(answers) > 1:
                problems.append(
                    f"command id {command_id} has {len(answers)} outcomes at "
                    f"{[a.event_seq for a in answers]}"
                )
        if self.outcomes.unsealed:
            problems.append(f"outcomes without the Hive's seal at {self.outcomes.unsealed}")
        if self.outcomes.unattributed:
            problems.append(
                "outcomes naming no command position: "
                + ", ".join(a.subject for a in self.outcomes.unattributed)
            )
        if problems:
            raise Problems("\n".join(problems))

    async def check_client_finds(self, entries: list[Stored]) -> None:
        """`wait_for_outcome`, as a client uses it, finds the outcome the Hive wrote."""
        for entry in entries:
            if not entry.own_id or entry.readable_id is None:
                continue
            found = await wait_for_outcome(
                self.reader, entry.readable_id, start_seq=1, within=10, command_seq=entry.seq
            )
            own = self._own(entry)
            expected = own[0].event_seq if own else None
            if found is None or (expected is not None and found.seq != expected):
                raise Problems(
                    f"wait_for_outcome found {found and found.subject} at "
                    f"{found and found.seq}, the Hive answered at {expected}: " + entry.describe()
                )

    async def check_still_deciding(self) -> None:
        probe = build_command(
            {"type": commands.CreateNamespace.TYPE, "data": {"name": f"probe{self.counter}"}},
            identity="user:fuzz",
            source="fuzz",
        )
        probe["id"] = self._next_id() + "-probe"
        probe["data"]["name"] = f"probe-{self.counter}"
        _, issued = await send_and_wait(self.reader, probe, within=self.probe_within)
        if issued is None or not issued.accepted:
            raise Problems(
                f"a fresh valid command was not accepted within {self.probe_within}s: "
                f"{issued and issued.outcome.body}"
            )

    async def check_folds(self) -> None:
        for status in await self.status():
            if status.get("fold_failures"):
                raise Problems(
                    f"replica {status.get('node')} has {status['fold_failures']} fold failures: "
                    f"{status.get('recent_fold_failures')}"
                )

    async def round(self, items: list[Item]) -> list[Stored]:
        """One batch: publish, wait for every outcome, and check every property."""
        stored = await self.publish(items)
        await self.wait_answered(stored)
        await self.check_still_deciding()
        await self.outcomes.refresh(self.reader)
        self.check_exactly_one()
        await self.check_client_finds(stored)
        await self.check_folds()
        if self.agree is not None:
            await self.agree()
        return stored


def seal_verifier(password: str) -> SealVerifier:
    return SealVerifier.from_text(hive_key(password))


class LoopBridge:
    """Runs coroutines on the event loop the Hive runs in, from the thread Hypothesis runs in
    (its test functions are synchronous; the Hive must keep running between examples)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 120.0) -> None:
        self.loop = loop
        self.timeout = timeout

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)


def fuzz_settings(batches: int) -> settings:
    """Hypothesis settings of a live run: `batches` examples (`SWARM_FUZZ_BATCHES` overrides),
    derandomized (set `SWARM_FUZZ_RANDOM=1`, and `--hypothesis-seed`, to explore further).

    No shrinking: it would re-publish to a Hive whose state every earlier batch changed, so it
    would not replay the same run; each failure names the one command it is about instead.
    """
    return settings(
        max_examples=int(os.environ.get("SWARM_FUZZ_BATCHES", batches)),
        deadline=None,
        derandomize=not os.environ.get("SWARM_FUZZ_RANDOM"),
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
