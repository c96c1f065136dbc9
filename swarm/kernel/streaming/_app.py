"""StreamApp: faust agents and tables fed by JetStream durable pull consumers.

The life of an app (`run()`, or `async with app:`):

1. Connect; make sure the dead-letter stream and the app's changelog stream exist.
2. Start the faust app in *channel mode*: its boot strategy starts the producer (the JetStream
   transport) and the agents, never a Kafka consumer or faust's Kafka-bound table recovery; the
   tables are started as runtime dependencies of the app, so their window-expiry timers run.
3. Recover: read the changelog stream to its end into the tables (values, the last sequence
   applied per key and processor, each processor's committed position). Only then:
4. Intake: each processor's durable pull consumer is (re)created at its position and fetches
   batches; a batch travels through the processor's faust channel to its faust agent, which
   runs the handler on each event in stream order, commits the changelog and acks.

Commit protocol per batch: dead letters and the handlers' outputs are appended first (outputs
deduplicated by their envelope ids), then every key the batch changed is written once with its
value before and after the batch and the sequences applied to it (pipelined, all acks awaited),
then the processor's position; only after that is the intake batch acked (AckPolicy ALL on its
last message, `max_ack_pending` = batch size so nothing beyond the batch is ever out). A write
JetStream does not acknowledge in time is sent again with backoff, deduplicated by its message
id, for up to `write_retry_s` seconds (`_retry`); only a write unacknowledged for that long, or
refused, stops the app; so does a fetch that fails for that long with the connection down (a
fetch that finds nothing in time just returns nothing). Recovery
rolls keys written by a commit whose position never landed back to their value before it, so
the tables are exactly at the positions, and the durable consumer is re-created just past them:
the interrupted batch runs again on the state it first saw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import faust
import structlog
from faust.app.base import BootStrategy
from faust.types import Message

from schemas import REGISTRY, Envelope, names
from swarm.kernel.admin import LogAdmin
from swarm.kernel.connection import nats_servers
from swarm.kernel.eventlog import AppendRequest, Consumer, Delivery, EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.streaming._retry import (
    MAX_WRITE_RETRY_S,
    WRITE_RETRY_S,
    append_all,
    retrying,
)
from swarm.kernel.streaming._table import ChangelogTable, Cursor, encode_key
from swarm.kernel.streaming._transport import Route, Transport, token_key
from swarm.kernel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

#: Dirty keys (or outputs) after which a batch commits early, for handlers that write many keys
#: per event: a commit stays bounded in size and time.
COMMIT_KEYS = 2000
#: Largest intake batch (it is also the consumer's `max_ack_pending`).
MAX_BATCH = 1000
_REASON_MAX = 500


class Status(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event as a handler sees it: the decoded body and where it sits in its stream."""

    seq: int
    subject: str
    #: When JetStream stored it; windowed tables place events by this time.
    timestamp: datetime
    #: What the processor's `decode` returned (an `Envelope` by default).
    envelope: Any
    headers: Mapping[str, str]
    #: `<app>.<processor>.<stream>`: what `derived_id` derives from, with `seq`.
    origin: str = ""

    def derived_id(self, n: int = 0) -> str:
        """An envelope id for the `n`-th output of this event, the same on every replay, so the
        event log drops a repeat of an output as a duplicate (a 26-character token)."""
        digest = hashlib.sha256(f"{self.origin}.{self.seq}.{n}".encode()).digest()
        return base64.b32encode(digest).decode()[:26]


class Handler(Protocol):
    """`handler(tables, event)`: changes tables; may return envelopes to append (outputs)."""

    def __call__(self, tables: Tables, event: StreamEvent, /) -> Iterable[Envelope[Any]] | None: ...


@dataclass(frozen=True, slots=True)
class Tumbling:
    """Fixed, non-overlapping windows of `size` seconds, dropped ~`expires` seconds after end."""

    size: float
    expires: float


@dataclass(frozen=True, slots=True)
class Hopping:
    """Windows of `size` seconds starting every `step` seconds, dropped ~`expires` after end."""

    size: float
    step: float
    expires: float


Window = Tumbling | Hopping


@dataclass(slots=True)
class Stats:
    """What the app did since it started (this process only)."""

    batches: int = 0
    processed: int = 0
    #: Redelivered events at or below the committed position: not run again.
    duplicates: int = 0
    malformed: int = 0
    failed: int = 0
    commits: int = 0
    #: Envelopes handlers returned, appended to the log.
    outputs: int = 0
    recovered_keys: int = 0
    #: Keys written by a commit whose position never landed, restored to before it.
    rolled_back_keys: int = 0
    #: Reasons of the last dead letters (the full record is on the dead-letter stream).
    dead_letters: list[str] = field(default_factory=list)


class Tables(Mapping[str, Any]):
    """The tables of an app by name, as its handlers get them.

    A plain table is a mutable mapping (`tables["counts"][key] += 1`); a windowed one is
    faust's window wrapper (`tables["recent"][key] += 1`, `tables["recent"][key].current()`).
    """

    def __init__(self) -> None:
        self._views: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)


@dataclass(slots=True)
class _Processor:
    name: str
    stream: str
    subjects: tuple[str, ...]
    durable: str
    handler: Handler
    decode: Callable[[bytes], Any]
    origin: str = ""
    channel: Any = None
    #: Highest sequence handled (or committed before a restart); anything at or below is a
    #: redelivery.
    high: int = 0
    committed: int = 0


@dataclass(slots=True)
class _Batch:
    deliveries: list[Delivery]
    done: asyncio.Future[None]
    #: The faust message the batch travels in. Its timestamp is what faust's window `current()`
    #: and `delta()` read, so it is moved to each event's stored time as the batch is processed.
    message: Message | None = None


class _Boot(BootStrategy):
    # Channel mode: the producer (JetStream transport) and the agents, nothing Kafka-bound.
    enable_kafka_consumer = False
    enable_web = False
    enable_sensors = False

    def tables(self) -> list[Any]:
        # faust's TableManager recovers from Kafka partitions; StreamApp recovers from the
        # JetStream changelog itself and starts each table on its own.
        return []


class _FaustApp(faust.App):
    BootStrategy = _Boot

    async def on_first_start(self) -> None:
        # faust creates a data directory in the working directory for its on-disk stores;
        # tables here live in memory and in the changelog.
        return None


class StreamApp:
    """A stream-processing app: tables, processors, and a run loop. See the package docs."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        batch: int = 500,
        ack_wait: float = 30.0,
        retries: int = 2,
        fetch_timeout: float = 0.5,
        window_cleanup: float = 30.0,
        write_retry_s: float = WRITE_RETRY_S,
    ) -> None:
        self.name = name
        self.changelog_stream = names.changelog_stream(name)
        if settings.nats_url is None:
            raise ValueError("StreamApp needs settings.nats_url")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}")
        if not 0 < write_retry_s <= MAX_WRITE_RETRY_S:
            raise ValueError(f"write_retry_s must be in (0, {MAX_WRITE_RETRY_S:.0f}]")
        self.settings = settings
        self.batch = batch
        self.ack_wait = ack_wait
        self.retries = retries
        self.fetch_timeout = fetch_timeout
        #: Seconds a commit's writes are retried while JetStream does not acknowledge them.
        self.write_retry_s = write_retry_s
        self.status = Status.NEW
        self.stats = Stats()
        self.tables = Tables()
        #: Set once recovery is complete and intake has started.
        self.ready = asyncio.Event()
        servers = nats_servers(settings.nats_url)
        self._faust = _FaustApp(
            name,
            broker=[f"jetstream://{u.split('://', 1)[-1]}" for u in servers],
            store="memory://",
            Table=ChangelogTable,
            table_cleanup_interval=window_cleanup,
            web_enabled=False,
            stream_buffer_maxsize=4,
        )
        self._cursor = Cursor()
        self._faust_tables: dict[str, ChangelogTable] = {}
        self._topics: dict[str, str] = {}
        self._processors: dict[str, _Processor] = {}
        self._lock = asyncio.Lock()
        self._progress = asyncio.Condition()
        self._stop = asyncio.Event()
        self._log: EventLog | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None  # what stopped an intake loop
        self._txn = 0
        self._positions_topic = f"{name}-{names.CHANGELOG_POSITIONS}"
        self._route(self._positions_topic, names.CHANGELOG_POSITIONS)
        self._transport.write_retry_s = write_retry_s

    @property
    def _transport(self) -> Transport:
        transport = self._faust.producer.transport
        assert isinstance(transport, Transport)
        return transport

    def _route(self, topic: str, table: str, window: Window | None = None) -> None:
        # A windowed table gets a stream of its own, kept only as long as its windows live.
        route = Route(
            names.changelog_stream(self.name, table if window else None),
            names.changelog_table_prefix(self.name, table),
            # The last write to a window can come at its start; keep it past the window's drop.
            max_age=window.size + 2 * window.expires if window else 0,
            replicas=self.settings.stream_replicas,
        )
        self._transport.add_route(topic, route)

    # -- declaring --------------------------------------------------------------------------------

    def table(
        self, name: str, *, default: Callable[[], Any] | None = None, window: Window | None = None
    ) -> Any:
        """Declare a table (before `run()`); handlers reach it as `tables[name]`.

        Keys and values must be JSON-serializable (keys: str, int, or lists of them). With a
        window, keys are windowed by the time JetStream stored each event, and windows are
        dropped about `expires` seconds after they end, also after a restart.
        """
        if self.status is not Status.NEW:
            raise RuntimeError("declare tables before the app starts")
        names.changelog_table_prefix(self.name, name)  # validates the name
        table = self._faust.Table(name, default=default)
        assert isinstance(table, ChangelogTable)
        table.cursor = self._cursor
        self._faust_tables[name] = table
        view: Any = table
        if isinstance(window, Tumbling):
            view = table.tumbling(window.size, expires=window.expires)
        elif isinstance(window, Hopping):
            view = table.hopping(window.size, window.step, expires=window.expires)
        if window is not None:
            cursor = self._cursor
            view = view.relative_to(lambda _event: cursor.timestamp)
        topic = table.changelog_topic.get_topic_name()
        self._topics[name] = topic
        self._route(topic, name, window)
        self.tables._views[name] = view
        return view

    def processor(
        self,
        *,
        stream: str,
        durable: str,
        subjects: Sequence[str] = (),
        decode: Callable[[bytes], Any] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Run the decorated `handler(tables, event)` on every event of `stream` (filtered by
        `subjects`), in stream order, through the durable consumer `durable`.

        `decode` turns a message body into `event.envelope` (default: strict decoding with the
        schema registry); a body it refuses is dead-lettered as malformed. The handler must be
        a plain function that only changes tables; it may return envelopes, which are appended
        to the log (ids from `event.derived_id(n)` keep a replay from appending them twice).
        When it raises, its changes are rolled back and it runs again, up to `retries` more
        times, then the event is dead-lettered with the error as reason and processing goes on.
        """
        if self.status is not Status.NEW:
            raise RuntimeError("declare processors before the app starts")
        names.deadletter_subject(self.name, durable)  # validates the name

        def register(handler: Handler) -> Handler:
            if durable in self._processors:
                raise ValueError(f"processor {durable!r} is declared twice")
            proc = _Processor(
                durable,
                stream,
                tuple(subjects),
                durable,
                handler,
                decode or REGISTRY.decode,
                origin=f"{self.name}.{durable}.{stream}",
            )
            proc.channel = self._faust.channel(maxsize=4)

            async def agent(batches: Any) -> None:
                async for batch in batches:
                    try:
                        await self._process(proc, batch)
                    except BaseException as exc:
                        if not batch.done.done():
                            batch.done.set_exception(exc)
                        if not isinstance(exc, Exception):
                            raise
                    else:
                        batch.done.set_result(None)

            self._faust.agent(proc.channel, name=f"{self.name}.{durable}")(agent)
            self._processors[durable] = proc
            return handler

        return register

    # -- reading state ----------------------------------------------------------------------------

    def snapshot(self, table: str) -> dict[Any, Any]:
        """A copy of a table's contents (windowed tables: keyed by (key, (start, end)))."""
        return dict(self._faust_tables[table].data)

    def position(self, processor: str) -> int:
        """The last stream sequence the processor has committed."""
        return self._processors[processor].committed

    async def reached(self, processor: str, seq: int, timeout: float | None = None) -> None:
        """Wait until `processor` has committed stream sequence `seq` (or beyond).

        Raises `RuntimeError` (from the cause) as soon as the app stops short of it, e.g. on a
        commit that could not be written: a waiter learns why rather than waiting out `timeout`.
        """
        proc = self._processors[processor]

        def settled() -> bool:
            return proc.committed >= seq or self._failure is not None or self._stopped

        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(settled), timeout)
        if proc.committed < seq:
            raise RuntimeError(
                f"app {self.name} stopped before {processor} reached {seq}"
                f" (at {proc.committed}): {self._failure!r}"
            ) from self._failure

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> StreamApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        await self.wait()

    @property
    def _stopped(self) -> bool:
        return self.status is Status.STOPPED

    def stop(self) -> None:
        """Stop after the batch in progress; safe before start and twice."""
        self._stop.set()

    async def run(self) -> None:
        """Start, then process until `stop()`; raises when a commit cannot be written."""
        await self.start()
        await self.wait()

    async def start(self) -> None:
        """Recover the tables, then start intake; returns once events are being read."""
        if self.status is not Status.NEW:
            raise RuntimeError(f"app {self.name} was already started")
        self.status = Status.STARTING
        assert self.settings.nats_url is not None
        try:
            self._log = await EventLog.connect(
                self.settings.nats_url, self.settings, name=f"stream-{self.name}", ensure=False
            )
            self._transport.attach(self._log)
            await LogAdmin(self._log).ensure_deadletter()
            await self._faust.start()
            producer = self._faust.producer
            await producer.create_topic(self._positions_topic, 1, 1)
            for table in self._faust_tables.values():
                await self._faust.add_runtime_dependency(table)
            await self._recover()
            self._faust.flow_control.resume()
            for proc in self._processors.values():
                consumer = await self._bind(proc)
                self._tasks.append(asyncio.create_task(self._intake(proc, consumer)))
        except BaseException:
            await self._shutdown()
            raise
        self.status = Status.RUNNING
        self.ready.set()
        log.info("stream app started", app=self.name, recovered_keys=self.stats.recovered_keys)

    async def wait(self) -> None:
        """Until stopped; re-raises what stopped an intake loop (e.g. a failed commit), once.

        Safe to call again after it returned (or raised): it then returns at once."""
        if self.status in (Status.NEW, Status.STOPPED):
            self.status = Status.STOPPED
            return
        error: BaseException | None = None
        try:
            stop = asyncio.create_task(self._stop.wait())
            waiting: set[asyncio.Future[Any]] = {stop, *self._tasks}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and not task.cancelled() and task.exception():
                    error = task.exception()
            stop.cancel()
        finally:
            await self._shutdown()
        if error is not None:
            raise error

    async def _shutdown(self) -> None:
        self.status = Status.STOPPING
        self._stop.set()
        for task in self._tasks:
            if not task.done():
                # Intake stops between batches: a batch in the agent finishes and commits.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), self.fetch_timeout + 5)
        # Cancelled until done: a task that lost its cancellation (swarm.kernel.tasks) kept an
        # app that had given up on a silent server running until the server came back.
        await cancel_and_wait(self._tasks)
        with contextlib.suppress(Exception):
            await self._faust.stop()
        if self._log is not None:
            await self._log.close()
        self.status = Status.STOPPED
        async with self._progress:
            self._progress.notify_all()  # wakes `reached`, which now cannot be
        log.info("stream app stopped", app=self.name, processed=self.stats.processed)

    # -- recovery ---------------------------------------------------------------------------------

    async def _recover(self) -> None:
        assert self._log is not None
        admin = LogAdmin(self._log)
        prefix = f"{names.CHANGELOG_PREFIX}.{self.name}."
        # Positions first (every processor's, declared here or not): a key is restored to its
        # value before a commit whose position never landed.
        positions_prefix = names.changelog_table_prefix(self.name, names.CHANGELOG_POSITIONS)
        held = await admin.stream(self.changelog_stream, subjects=f"{positions_prefix}.*")
        positions: dict[str, int] = {}
        for subject in held.subjects:
            msg = await self._log.last_message(self.changelog_stream, subject)
            processor = json.loads(token_key(subject[len(positions_prefix) + 1 :]))
            positions[processor] = int(json.loads(msg.data or b"{}")["seq"])
        count = rolled_back = 0
        for stream in self._transport.streams:
            if not (await admin.stream(stream)).messages:
                # An empty stream would hold the replay for its idle timeout (1 s).
                continue
            async for delivery in self._log.replay(stream, batch=1000):
                table, _, token = delivery.subject[len(prefix) :].partition(".")
                if table in self._faust_tables:
                    restored = self._faust_tables[table].restore(
                        token_key(token), delivery.data, positions
                    )
                    rolled_back += restored
                    count += 1
        for proc in self._processors.values():
            proc.high = proc.committed = positions.get(proc.name, 0)
        self.stats.recovered_keys = count
        self.stats.rolled_back_keys = rolled_back

    # -- intake -----------------------------------------------------------------------------------

    async def _bind(self, proc: _Processor) -> Consumer:
        """The processor's durable consumer, positioned after what is committed.

        It is re-created on every start: pending acks of a previous (dead) incarnation would
        otherwise be redelivered only after `ack_wait`, and after newer events, out of order.
        The start is the committed position, never the consumer's own ack floor: the tables
        hold exactly what is committed, so with the changelog gone (a reset) the processor
        rebuilds them from the start of the stream rather than skipping to where it was.
        """
        assert self._log is not None
        return await self._log.consumer(
            proc.stream,
            proc.durable,
            fresh=True,
            ack_all=True,
            start_seq=proc.committed + 1,
            filter_subjects=proc.subjects,
            max_ack_pending=self.batch,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            pending_msgs_limit=self.batch * 4,
        )

    async def _intake(self, proc: _Processor, consumer: Consumer) -> None:
        try:
            await self._intake_batches(proc, consumer)
        except Exception as exc:
            self._failure = exc
            log.error("stream app failed", app=self.name, processor=proc.name, error=repr(exc))
            async with self._progress:
                self._progress.notify_all()
            raise

    async def _intake_batches(self, proc: _Processor, consumer: Consumer) -> None:
        loop = asyncio.get_running_loop()
        app = self._faust
        while not self._stop.is_set():
            deliveries = await self._fetch(proc, consumer)
            if not deliveries:
                continue
            batch = _Batch(deliveries, loop.create_future())
            batch.message = message = Message(
                proc.stream,
                0,
                batch.deliveries[-1].stream_seq,
                time.time(),
                0,
                None,
                None,
                None,
                None,
                generation_id=app.consumer_generation_id,
            )
            await proc.channel.put(app.create_event(None, batch, None, message))
            await batch.done

    async def _fetch(self, proc: _Processor, consumer: Consumer) -> list[Delivery]:
        """The next batch (empty when none came in time). A fetch that fails because the
        connection is down for now (nats-py reconnects) is repeated with backoff, like a write,
        for up to `write_retry_s` seconds; then, or on any other failure, the app stops."""
        return await retrying(
            lambda _n: consumer.fetch(self.batch, timeout=self.fetch_timeout),
            what=f"fetch from {proc.stream}",
            budget=self.write_retry_s,
            retry_log="fetch failed; retrying",
            recovered_log="fetch answered after retries",
            spent=None,
            app=self.name,
            processor=proc.name,
        )

    # -- processing -------------------------------------------------------------------------------

    async def _process(self, proc: _Processor, batch: _Batch) -> None:
        async with self._lock:
            tables = list(self._faust_tables.values())
            cursor = self._cursor
            dead: list[_DeadLetter] = []
            outputs: list[AppendRequest] = []
            for delivery in batch.deliveries:
                seq = delivery.stream_seq
                if seq <= proc.high:
                    self.stats.duplicates += 1
                    continue
                try:
                    envelope = proc.decode(delivery.data)
                except Exception as exc:
                    self.stats.malformed += 1
                    dead.append(self._dead_letter(proc, delivery, f"malformed: {exc}"))
                    proc.high = seq
                    continue
                event = StreamEvent(
                    seq,
                    delivery.subject,
                    delivery.timestamp,
                    envelope,
                    delivery.headers,
                    proc.origin,
                )
                cursor.processor, cursor.seq = proc.name, seq
                cursor.timestamp = delivery.timestamp.timestamp()
                if batch.message is not None:
                    batch.message.timestamp = cursor.timestamp
                error = self._handle(proc, tables, event, outputs)
                cursor.processor = None
                proc.high = seq
                if error is None:
                    self.stats.processed += 1
                else:
                    self.stats.failed += 1
                    reason = f"handler failed {self.retries + 1} times: {error!r}"
                    dead.append(self._dead_letter(proc, delivery, reason))
                if len(tables) == 1:
                    dirty = len(tables[0].dirty)
                else:
                    dirty = sum(len(t.dirty) for t in tables)
                if dirty >= COMMIT_KEYS or len(outputs) >= COMMIT_KEYS:
                    await self._commit(proc, tables, dead, outputs)
            await self._commit(proc, tables, dead, outputs)
            # AckPolicy.ALL: acking the last message acks the batch.
            await batch.deliveries[-1].ack()
            self.stats.batches += 1

    def _handle(
        self,
        proc: _Processor,
        tables: list[ChangelogTable],
        event: StreamEvent,
        outputs: list[AppendRequest],
    ) -> Exception | None:
        error: Exception | None = None
        for _ in range(self.retries + 1):
            for table in tables:
                table.begin()
            try:
                produced = proc.handler(self.tables, event)
                requests = [] if produced is None else [_output(e) for e in produced]
            except Exception as exc:
                for table in tables:
                    table.rollback()
                error = exc
                continue
            for table in tables:
                table.end()
            outputs.extend(requests)
            return None
        log.warning(
            "handler failed", app=self.name, processor=proc.name, seq=event.seq, error=repr(error)
        )
        return error

    def _dead_letter(self, proc: _Processor, delivery: Delivery, reason: str) -> _DeadLetter:
        reason = " ".join(reason.split())[:_REASON_MAX]
        log.warning(
            "event dead-lettered",
            app=self.name,
            processor=proc.name,
            seq=delivery.stream_seq,
            reason=reason,
        )
        self.stats.dead_letters = [*self.stats.dead_letters[-99:], reason]
        return _DeadLetter(
            names.deadletter_subject(self.name, proc.name),
            delivery.data,
            {
                # The source position makes a repeat after a crash a duplicate JetStream drops.
                names.HEADER_MSG_ID: f"{self.name}.{proc.name}.{proc.stream}.{delivery.stream_seq}",
                names.HEADER_DEADLETTER_REASON: reason,
                names.HEADER_DEADLETTER_STREAM: proc.stream,
                names.HEADER_DEADLETTER_SEQ: str(delivery.stream_seq),
                names.HEADER_DEADLETTER_SUBJECT: delivery.subject,
            },
        )

    async def _send(self, messages: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Send changelog messages through faust's producer as one pipelined transaction."""
        producer = self._faust.producer
        self._txn += 1
        tid = f"{self.name}-{self._txn}"
        await producer.begin_transaction(tid)
        try:
            for topic, key, value in messages:
                await producer.send(topic, key, value, 0, None, None, transactional_id=tid)
        except BaseException:
            await producer.abort_transaction(tid)
            raise
        await producer.commit_transaction(tid)

    async def _commit(
        self,
        proc: _Processor,
        tables: list[ChangelogTable],
        dead: list[_DeadLetter],
        outputs: list[AppendRequest],
    ) -> None:
        eventlog = self._log
        assert eventlog is not None
        for letter in dead:
            # Before the position moves past them, so a crash cannot lose a dead letter. Its
            # message id makes a repeat (a retry, or a replay after a crash) a duplicate.
            await retrying(
                functools.partial(_publish_dead_letter, eventlog, letter),
                what=f"dead letter to {letter.subject}",
                budget=self.write_retry_s,
            )
        dead.clear()
        if outputs:
            # Also before the position: a crash after them replays their events, which return
            # them again; their ids (see StreamEvent.derived_id) make JetStream drop the repeats,
            # as they do the repeats of a retried append.
            await retrying(
                lambda _n: append_all(eventlog, outputs),
                what=f"{len(outputs)} outputs of {self.name}",
                budget=self.write_retry_s,
            )
            self.stats.outputs += len(outputs)
            outputs.clear()
        if proc.high == proc.committed and not any(t.dirty for t in tables):
            return
        # Keys first, then (once every key is acknowledged) the position: a position on the
        # log means everything up to it is in the tables' changelog. A crash in between leaves
        # keys ahead of the position; their applied sequences keep a replay from counting twice.
        await self._send(
            (self._topics[t.name], key, value)
            for t in tables
            if t.dirty
            for key, value in t.pending()
        )
        position = json.dumps({"seq": proc.high}).encode()
        await self._send([(self._positions_topic, encode_key(proc.name), position)])
        proc.committed = proc.high
        self.stats.commits += 1
        async with self._progress:
            self._progress.notify_all()


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    """A dead letter: the original bytes, with why and where in headers."""

    subject: str
    body: bytes
    headers: dict[str, str]


async def _publish_dead_letter(log: EventLog, letter: _DeadLetter, _attempt: int) -> None:
    headers = dict(letter.headers)
    msg_id = headers.pop(names.HEADER_MSG_ID)
    # Through `append_all`: a write not acknowledged is a `WriteTimeout`, which is retried.
    await append_all(
        log, [AppendRequest(letter.subject, letter.body, msg_id, extra_headers=headers)]
    )


def _output(envelope: Envelope[Any]) -> AppendRequest:
    if not isinstance(envelope, Envelope):
        raise TypeError(f"a handler returns envelopes to append, not {type(envelope).__name__}")
    return AppendRequest.of(envelope)
