"""A faust transport whose producer writes table changelogs to JetStream.

faust-streaming ships only Kafka transports; this one is registered under the `jetstream` URL
scheme through the `faust.transports` entry point (see pyproject.toml), so an app configured
with `broker="jetstream://host:port"` gets it. Only the producer side is real: intake comes from
JetStream durable pull consumers feeding app channels (`swarm.kernel.streaming.app`), so the
Kafka-style consumer is never started and refuses to be used.

Changelog topics map to subjects: each faust topic name is routed (`Transport.route`) to a
JetStream stream and a subject prefix, and each message key becomes one more subject token, so a
stream with `max_msgs_per_subject=1` keeps exactly the last value per key, like a compacted Kafka
topic. A faust *transaction* is a pipelined batch: `begin_transaction`, `send` with the
transactional id, then `commit_transaction` appends everything sent at once and returns when
every message is stored (or raises); only the last message per stream is acknowledged, and its
sequence proves the others were stored (see `_Pipeline`). Every message carries a message id, so
a write that was not acknowledged in time is sent again, each message acknowledged on its own,
and JetStream drops what had landed already (see `_retry`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import json
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from faust.transport import base
from faust.transport.consumer import Consumer as _FaustConsumer
from faust.transport.producer import Producer as _FaustProducer
from faust.types import TP
from faust.types.tuples import RecordMetadata
from mode import Seconds

from schemas import names
from swarm.kernel.admin import LogAdmin
from swarm.kernel.eventlog import AppendFailed, AppendRequest, EventLog, NoResponders
from swarm.kernel.streaming._retry import (
    DEDUPE_WINDOW_S,
    WRITE_RETRY_S,
    WriteTimeout,
    append_all,
    retrying,
)

__all__ = ["Route", "Transport", "key_token", "token_key"]


def key_token(key: bytes) -> str:
    """A serialized key as one NATS subject token (URL-safe base64, no padding): reversible."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def token_key(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@dataclass(frozen=True, slots=True)
class Route:
    """Where one faust topic's messages go: a stream, and a subject prefix the key extends."""

    stream: str
    prefix: str
    #: Seconds a message is kept (windowed tables: their expiry); 0 keeps it forever.
    max_age: float = 0
    replicas: int = 1

    def subject(self, key: bytes | None) -> str:
        if not key:
            raise ValueError(f"a changelog message for {self.prefix} needs a key")
        return f"{self.prefix}.{key_token(key)}"


@dataclass(slots=True)
class _Transaction:
    #: (stream, subject, body) of every message sent in the transaction.
    messages: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: One future for every message of the transaction: they land together or fail together.
    done: asyncio.Future[RecordMetadata] | None = None
    topic: str = ""


class _Pipeline:
    """Publishes a batch of changelog messages and makes sure every one of them was stored.

    Only the last message per stream asks for an acknowledgement: its stream sequence must be
    the stream's previous last sequence plus the number of messages sent, which proves that
    every message before it was stored too (JetStream stores one connection's messages in
    order, and a changelog stream has one writer, its app). Another sequence or a refusal
    raises, and the app stops and recovers from what is on the log. One ack per batch instead
    of one per message saves ~10 µs of CPU per changelog write here.

    No acknowledgement in time (a slow or paused server) is not a reason to stop: the batch is
    sent again, with backoff, for up to `retry_for` seconds, this time each message acknowledged
    on its own. Each message has an id of its own (unique to this process: a restarted app
    re-writing a key after a crash must land, not be dropped as a repeat), so whatever of the
    first attempt was stored is dropped as a duplicate and each key is stored once.
    """

    def __init__(self, log: EventLog, retry_for: float = WRITE_RETRY_S) -> None:
        self._log = log
        self._last: dict[str, int] = {}
        self._retry_for = retry_for
        self._prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)

    async def publish(self, messages: list[tuple[str, str, bytes]]) -> None:
        groups: dict[str, list[tuple[str, bytes, str]]] = {}
        for stream, subject, body in messages:
            msg_id = f"{self._prefix}-{next(self._ids)}"
            groups.setdefault(stream, []).append((subject, body, msg_id))
        for stream, group in groups.items():
            await retrying(
                functools.partial(self._attempt, stream, group),
                what=f"changelog write to {stream}",
                budget=self._retry_for,
            )

    async def _attempt(self, stream: str, group: list[tuple[str, bytes, str]], n: int) -> None:
        if n == 0:
            await self._publish(stream, group)
        else:
            await self._again(stream, group)

    async def _publish(self, stream: str, group: list[tuple[str, bytes, str]]) -> None:
        log = self._log
        # Taken out while in flight: after any failure the stream's position is unknown and
        # is read again.
        last = self._last.pop(stream, None)
        if last is None:
            last = await log.last_sequence(stream)
        publish = log.publish
        for subject, body, msg_id in group[:-1]:
            await publish(subject, body, headers={names.HEADER_MSG_ID: msg_id})
        subject, body, msg_id = group[-1]
        try:
            reply = await log.request(
                subject, body, timeout=log.timeout, headers={names.HEADER_MSG_ID: msg_id}
            )
        except NoResponders:
            raise AppendFailed(f"no stream accepts {subject}") from None
        except TimeoutError:  # RequestTimeout included
            raise WriteTimeout(f"changelog write to {stream} not acknowledged in time") from None
        response = json.loads(reply.data)
        if "error" in response:
            error = response["error"]
            raise AppendFailed(f"changelog write refused: {error.get('description', error)}")
        seq = int(response["seq"])
        if seq != last + len(group):
            raise AppendFailed(
                f"changelog stream {stream} is at sequence {seq}, expected {last + len(group)}: "
                "a write was lost, or another process writes to it"
            )
        self._last[stream] = seq

    async def _again(self, stream: str, group: list[tuple[str, bytes, str]]) -> None:
        """The batch once more, every message acknowledged (stored now, or a duplicate of one
        stored before). The stream's last sequence is read again before the next batch."""
        self._last.pop(stream, None)
        await append_all(
            self._log, [AppendRequest(subject, body, msg_id) for subject, body, msg_id in group]
        )


class Producer(_FaustProducer):
    """Writes faust topic messages to JetStream, each key on its own subject."""

    transport: Transport

    def __post_init__(self) -> None:
        self._transactions: dict[str, _Transaction] = {}
        self._declared: set[str] = set()
        self._pipeline: _Pipeline | None = None

    async def on_start(self) -> None:
        await super().on_start()
        await self.transport.eventlog()

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        *,
        config: Mapping[str, Any] | None = None,
        timeout: Seconds = 30.0,
        retention: Seconds | None = None,
        compacting: bool | None = None,
        deleting: bool | None = None,
        ensure_created: bool = False,
    ) -> None:
        """Create the stream a topic is routed to (one message per subject), if missing."""
        route = self.transport.route(topic)
        if route.stream in self._declared:
            return
        log = await self.transport.eventlog()
        # faust asks windowed changelogs to be kept for the window's expiry; that is honoured
        # through the route, which gives each windowed table a stream of its own, since one
        # max_age on a shared stream would also drop the other tables' keys.
        await LogAdmin(log).ensure_changelog_stream(
            route.stream,
            self.transport.stream_subjects[route.stream],
            max_age=route.max_age or None,
            replicas=route.replicas,
            # Outlasts every retry of a write (see `_Pipeline`); JetStream wants it within the
            # max age (a windowed table's messages are gone after that anyway).
            dedupe_window=min(DEDUPE_WINDOW_S, route.max_age or DEDUPE_WINDOW_S),
        )
        self._declared.add(route.stream)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        # No message id: JetStream deduplicates nothing, so re-writing a key's value after a
        # crash lands (the latest write wins) instead of being dropped as a repeat.
        route = self.transport.route(topic)
        subject = route.subject(key)
        if transactional_id is not None:
            txn = self._transactions.get(transactional_id)
            if txn is None:
                raise RuntimeError(f"transaction {transactional_id} was not begun")
            txn.messages.append((route.stream, subject, value or b""))
            if txn.done is None:
                txn.done = asyncio.get_running_loop().create_future()
                txn.topic = topic
            return txn.done
        # Outside a transaction: one message, through the same counted path.
        await (await self._get_pipeline()).publish([(route.stream, subject, value or b"")])
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        future.set_result(_metadata(topic, partition or 0, -1, timestamp))
        return future

    async def _get_pipeline(self) -> _Pipeline:
        if self._pipeline is None:
            transport = self.transport
            self._pipeline = _Pipeline(await transport.eventlog(), transport.write_retry_s)
        return self._pipeline

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        fut = await self.send(
            topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
        )
        return await fut

    async def begin_transaction(self, transactional_id: str) -> None:
        if transactional_id in self._transactions:
            raise RuntimeError(f"transaction {transactional_id} is already open")
        self._transactions[transactional_id] = _Transaction()

    async def maybe_begin_transaction(self, transactional_id: str) -> None:
        if transactional_id not in self._transactions:
            self._transactions[transactional_id] = _Transaction()

    async def commit_transaction(self, transactional_id: str) -> None:
        """Append everything the transaction sent, pipelined; returns once all are stored.

        Not atomic: a crash can leave a prefix written. Callers that need to know a whole
        transaction landed write their marker in a second one (StreamApp writes positions so).
        JetStream atomic batches would do it in one, but cost ~10-30 ms each here, whatever
        their size, against ~1 ms for a pipelined batch of a few hundred messages.
        """
        txn = self._transactions.pop(transactional_id)
        if not txn.messages:
            return
        pipeline = await self._get_pipeline()
        try:
            await pipeline.publish(txn.messages)
        except BaseException as exc:
            if txn.done is not None and not txn.done.done():
                txn.done.set_exception(exc)
                txn.done.exception()  # retrieved here: the caller gets it raised
            raise
        if txn.done is not None:
            txn.done.set_result(_metadata(txn.topic, 0, -1, None))

    async def abort_transaction(self, transactional_id: str) -> None:
        txn = self._transactions.pop(transactional_id, None)
        if txn is not None and txn.done is not None:
            txn.done.cancel()

    async def stop_transaction(self, transactional_id: str) -> None:
        await self.abort_transaction(transactional_id)

    async def flush(self) -> None:
        await self.buffer.flush()

    def key_partition(self, topic: str, key: bytes) -> TP:
        return TP(topic, 0)

    def supports_headers(self) -> bool:
        return True


def _metadata(topic: str, partition: int, offset: int, timestamp: float | None) -> RecordMetadata:
    tp = TP(topic, partition)
    return RecordMetadata(
        topic=topic,
        partition=partition,
        topic_partition=tp,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=0,
    )


class Consumer(_FaustConsumer):
    """Never started: intake comes from JetStream durable consumers feeding channels."""

    def assignment(self) -> set[TP]:
        return set()

    def topic_partitions(self, topic: str) -> int | None:
        return None

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "the jetstream transport has no Kafka-style consumer; feed app channels instead"
        )

    _commit = _getmany = _seek = seek_to_committed = _refuse
    _to_message = _new_consumer_thread = _refuse
    subscribe = position = seek_to_beginning = seek_wait = seek = _refuse
    highwater = earliest_offsets = highwaters = getmany = create_topic = _refuse
    key_partition = _refuse

    def close(self) -> None:
        return None


class Transport(base.Transport):
    """The `jetstream://` faust transport: a JetStream producer, no consumer."""

    Consumer: ClassVar[type[_FaustConsumer]] = Consumer
    Producer: ClassVar[type[_FaustProducer]] = Producer
    driver_version = "swarm-jetstream-1"

    def __init__(self, url: Any, app: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(url, app, loop=loop)
        self._routes: dict[str, Route] = {}
        #: Subjects to create a routed stream with, when several routes share one stream.
        self.stream_subjects: dict[str, list[str]] = {}
        self._log: EventLog | None = None
        self._owns_log = False
        #: Seconds an unacknowledged changelog write is retried before the app stops.
        self.write_retry_s = WRITE_RETRY_S

    def attach(self, log: EventLog) -> None:
        """Use an already connected event log instead of connecting from the broker URL."""
        self._log = log

    def add_route(self, topic: str, route: Route) -> None:
        self._routes[topic] = route
        subjects = self.stream_subjects.setdefault(route.stream, [])
        if f"{route.prefix}.*" not in subjects:
            subjects.append(f"{route.prefix}.*")

    @property
    def streams(self) -> list[str]:
        """Every stream some route writes to."""
        return list(self.stream_subjects)

    def route(self, topic: str) -> Route:
        try:
            return self._routes[topic]
        except KeyError:
            raise LookupError(
                f"faust topic {topic!r} has no JetStream route; only table changelogs "
                "declared through swarm.kernel.streaming.StreamApp are written"
            ) from None

    async def eventlog(self) -> EventLog:
        if self._log is None:
            servers = ",".join(f"nats://{u.host}:{u.port or 4222}" for u in self.url)
            self._log = await EventLog.connect(servers, name=f"faust-{self.app.conf.id}")
            self._owns_log = True
        return self._log

    async def close(self) -> None:
        if self._log is not None and self._owns_log:
            await self._log.close()
        self._log = None
