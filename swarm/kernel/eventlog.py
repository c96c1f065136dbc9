"""The event-log client: append, consume and replay Swarm's JetStream streams.

Three guarantees the rest of Swarm builds on:

* **Appends are idempotent.** Every append carries a `Nats-Msg-Id`; a retry within the stream's
  duplicate window is answered with the original sequence and `duplicate=True`.
* **Appends can be conditional.** `expected_last_seq` makes JetStream refuse the write when
  another writer got there first (optimistic concurrency); the refusal is `ConcurrencyConflict`.
* **Consumption is at-least-once with bounded memory.** Durable pull consumers with explicit ack,
  a bounded `max_ack_pending` and redelivery after `ack_wait`; consumers must be idempotent and
  record the last stream sequence they applied together with its effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, Self

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import DEFAULT_SUB_PENDING_MSGS_LIMIT
from nats.aio.subscription import Subscription as _NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import (
    DEFAULT_PREFIX,
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    RawStreamMsg,
)
from nats.js.errors import (
    APIError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from schemas import names
from swarm.kernel import env
from swarm.kernel.connection import CannotConnect, connect_nats, settle
from swarm.kernel.streams import ensure_streams

if TYPE_CHECKING:
    # The models and the settings are pydantic: imported where used, so that a client that
    # only asks and reads raw bytes (`swarm status`) does not pay ~200 ms for them (bench/cli.py).
    from schemas import Envelope, Payload, Registry
    from swarm.kernel.settings import Settings
    from swarm.kernel.signing import CommandSigner, MeshClaim

_WRONG_LAST_SEQUENCE = 10071
_ACTUAL_SEQ = re.compile(r"wrong last sequence: (\d+)")
_DEFAULT_TIMEOUT = 5.0
#: Subjects of commands: what a client with credentials signs (`EventLog._signed`).
_COMMANDS = names.COMMANDS_PREFIX + "."
#: Subjects of queries: requests a client with credentials signs (`EventLog.request`).
_QUERIES = names.QUERY_PREFIX + "."
_DUPLICATE_IN_BATCH = 10201
_BATCH_ID = "Nats-Batch-Id"
_BATCH_SEQ = "Nats-Batch-Sequence"
_BATCH_COMMIT = "Nats-Batch-Commit"
#: nats-server's default limit on messages in one atomic batch.
MAX_ATOMIC_BATCH = 1000


class EventLogError(Exception):
    """Base of the errors this client raises on purpose."""


class ConcurrencyConflict(EventLogError):
    """An append stated the last sequence it expected on a subject and another write came first."""

    def __init__(self, subject: str, expected: int, actual: int | None) -> None:
        self.subject = subject
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"append to {subject} expected last sequence {expected}, the log is at "
            f"{actual if actual is not None else 'a different sequence'}"
        )


class DuplicateBatch(EventLogError):
    """An atomic batch repeated a stored message id: it was appended before, nothing was added."""


class AppendFailed(EventLogError):
    """JetStream refused or did not acknowledge an append."""


class AppendRefused(AppendFailed):
    """JetStream answered an append with an error: sending it again gets the same answer."""


class Unavailable(EventLogError):
    """NATS did not do what was asked: the connection is closed or lost, or the server refused.

    The message is nats-py's own, so what a caller prints about it reads as before.
    """


class ConnectionLost(Unavailable):
    """The connection is closed, or no server of the pool could be reached again."""


class Reconnecting(Unavailable):
    """The connection is down for now (being re-established, stale, or its buffer is full):
    the same call may succeed a moment later."""


class NoResponders(Unavailable):
    """A request found nobody subscribed to its subject."""


class ServiceUnavailable(Unavailable):
    """JetStream answered 503: it is starting (a server restart) or has no quorum for now; the
    same call may succeed a moment later."""


class RequestTimeout(Unavailable, TimeoutError):
    """No answer in time (to a request, a JetStream call, a flush); also a `TimeoutError`."""


class NotFound(EventLogError):
    """A stream, message, consumer, bucket, key or object that does not exist."""


def _seam_error(exc: BaseException) -> BaseException:
    """Our typed error for what nats-py raised (anything else is returned as it is)."""
    if isinstance(exc, EventLogError):
        return exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, nats.errors.NoRespondersError | NoStreamResponseError):
        return NoResponders(text)
    if isinstance(exc, NotFoundError):
        return NotFound(text)
    if isinstance(exc, ServiceUnavailableError):
        return ServiceUnavailable(text)
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError and asyncio's
        return RequestTimeout(text)
    if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.NoServersError):
        return ConnectionLost(text)
    if isinstance(
        exc,
        nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError,
    ):
        return Reconnecting(text)
    if isinstance(exc, nats.errors.Error):
        return Unavailable(text)
    return exc


def _raise_ours(exc: BaseException) -> NoReturn:
    mapped = _seam_error(exc)
    if mapped is exc:
        raise exc
    raise mapped from exc


#: What nats-py raises, for `except` clauses of the seam's hot paths.
_NATS_ERRORS = (nats.errors.Error, TimeoutError)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise nats-py's errors as ours (`Unavailable` and its kinds, `NotFound`).

    For the seam's modules only: callers of the log client never see a nats-py type. Paths
    taken once per message use `try`/`except _NATS_ERRORS` with `_raise_ours` instead, which
    costs nothing until something fails (a context manager costs about a microsecond).
    """
    try:
        yield
    except _NATS_ERRORS as exc:
        _raise_ours(exc)


class Message(Protocol):
    """A core NATS message as a subscriber or a requester gets it (nats-py's `Msg` is one)."""

    @property
    def subject(self) -> str: ...

    @property
    def reply(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> dict[str, str] | None: ...


class Requester(Protocol):
    """What can send a request and wait for its answer: an `EventLog`, or (in tests that talk
    to a cluster over their own connection) a nats-py client."""

    async def request(self, subject: str, body: bytes, /, *, timeout: float) -> Message: ...


#: What a subscription calls with each message, on the connection's delivery task.
Handler = Callable[[Message], Awaitable[None]]


class Subscription:
    """Interest in a subject; `close` stops it, and is safe twice or on a lost connection."""

    def __init__(self, sub: _NatsSubscription) -> None:
        self._sub = sub

    @property
    def subject(self) -> str:
        return self._sub.subject

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as a stream keeps it, read by its sequence or as the last on a subject."""

    stream: str
    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str]
    time: datetime | None


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an append landed. `duplicate` means the message id was seen before."""

    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class AppendRequest:
    subject: str
    body: bytes
    msg_id: str
    expected_last_seq: int | None = None
    #: Subject (may be a wildcard) that `expected_last_seq` refers to; defaults to `subject`.
    expected_subject: str | None = None
    #: The stream's last sequence before this message (a fence: nobody else wrote since).
    expected_stream_seq: int | None = None
    #: More headers stored with the message (e.g. where a task's answer goes).
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    #: A command this client sends is signed with its key (`EventLog._signed`); a relay that
    #: stores another sender's bytes as they are (`swarm timeline import`) says False.
    sign: bool = True

    @classmethod
    def of(
        cls,
        envelope: Envelope[Any],
        *,
        expected_last_seq: int | None = None,
        expected_subject: str | None = None,
    ) -> AppendRequest:
        """Append an envelope on its own subject, deduplicated by its id."""
        from schemas import subject_of

        return cls(
            subject_of(envelope),
            envelope.to_json(),
            envelope.id,
            expected_last_seq,
            expected_subject,
        )

    def headers(self) -> dict[str, str]:
        headers = {**self.extra_headers, names.HEADER_MSG_ID: self.msg_id}
        if self.expected_last_seq is not None:
            headers[names.HEADER_EXPECTED_LAST_SUBJECT_SEQ] = str(self.expected_last_seq)
            if self.expected_subject is not None:
                headers[names.HEADER_EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = self.expected_subject
        if self.expected_stream_seq is not None:
            headers[names.HEADER_EXPECTED_LAST_SEQ] = str(self.expected_stream_seq)
        return headers

    @property
    def conditional(self) -> bool:
        return self.expected_last_seq is not None or self.expected_stream_seq is not None


@dataclass(slots=True)
class Delivery:
    """One message as read from a stream, with its position and delivery count.

    Treat it as immutable. It is not `frozen` because a frozen dataclass sets every field
    through `object.__setattr__`: ~1.5 us per message, about a tenth of what a replayed message
    costs in `swarm timeline` (bench/surfaces.py).
    """

    subject: str
    data: bytes
    headers: dict[str, str]
    stream_seq: int
    consumer_seq: int
    num_delivered: int
    num_pending: int
    timestamp: datetime
    _msg: Msg | None = None

    def decode(self, registry: Registry | None = None) -> Envelope[Any]:
        """Strictly decode the body (with every command and event, unless `registry` says
        otherwise); raises `schemas.DecodeError` with field-level errors."""
        if registry is None:
            from schemas import REGISTRY

            registry = REGISTRY
        return registry.decode(self.data)

    @property
    def msg_id(self) -> str | None:
        return self.headers.get(names.HEADER_MSG_ID)

    async def _settle(self, send: Callable[[Msg], Awaitable[object]]) -> None:
        # Every way of answering for a message fails alike: a delivery read without its
        # message (a replay's) has nothing to answer, and nats-py's errors come out as ours.
        # One more coroutine per call costs ~0.2 us, nothing beside the ~40 us of a message.
        if self._msg is not None:
            try:
                await send(self._msg)
            except _NATS_ERRORS as exc:
                _raise_ours(exc)

    async def ack(self) -> None:
        await self._settle(lambda msg: msg.ack())

    async def ack_sync(self, timeout: float = _DEFAULT_TIMEOUT) -> None:
        """Ack and wait until the server has recorded it (use before reading consumer state)."""
        await self._settle(lambda msg: msg.ack_sync(timeout=timeout))

    async def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery, after `delay` seconds if given."""
        await self._settle(lambda msg: msg.nak(delay=delay))

    async def term(self) -> None:
        """Never redeliver this message (it can never be processed)."""
        await self._settle(lambda msg: msg.term())

    async def in_progress(self) -> None:
        """Reset the ack timer for a message that takes long to process."""
        await self._settle(lambda msg: msg.in_progress())

    @classmethod
    def of(cls, msg: Message, *, keep: bool = True) -> Delivery:
        # The position is read from the ack subject here rather than through `msg.metadata`,
        # which builds two dataclasses and a datetime per message (~3 us of the ~5 us this took,
        # of ~40 us CPU per consumed message in bench/eventlog.py). Forms (ADR-15), o = 0 or 2:
        #   $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
        #   $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>
        #     .<pending>.<token>
        tokens = (msg.reply or "").split(".")
        o = 0 if len(tokens) == 9 else 2
        if tokens[:2] != ["$JS", "ACK"] or (len(tokens) != 9 and len(tokens) < 11):
            raise EventLogError(f"not a stream message: {msg.subject} (reply {msg.reply!r})")
        return cls(
            msg.subject,
            msg.data,
            msg.headers or {},  # nats-py builds a fresh dict per message; nothing else keeps it
            int(tokens[o + 5]),
            int(tokens[o + 6]),
            int(tokens[o + 4]),
            int(tokens[o + 8]),
            datetime.fromtimestamp(int(tokens[o + 7]) / 1e9, UTC),
            msg if keep and isinstance(msg, Msg) else None,
        )


class Consumer:
    """A durable pull consumer: fetch a batch, process, ack each message (or nak/term it)."""

    def __init__(self, sub: JetStreamContext.PullSubscription, stream: str, durable: str) -> None:
        self._sub = sub
        self.stream = stream
        self.durable = durable

    async def fetch(self, batch: int = 100, timeout: float = 1.0) -> list[Delivery]:
        """Up to `batch` messages; an empty list when none arrived within `timeout` seconds."""
        return await _fetch(self._sub, batch, timeout, keep=True)

    async def pending(self) -> tuple[int, int]:
        """(messages not yet delivered, messages delivered but not acked)."""
        with translated():
            info = await self._sub.consumer_info()
        return info.num_pending or 0, info.num_ack_pending or 0

    async def close(self) -> None:
        """Stop reading; the durable consumer and its position stay on the server."""
        closed = (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError)
        with contextlib.suppress(*closed):
            await self._sub.unsubscribe()


class EventLog:
    """Append to and read from Swarm's streams over one NATS connection."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings | Callable[[], Settings] | None = None,
        *,
        timeout: float = _DEFAULT_TIMEOUT,
        credentials: Path | None = None,
    ):
        """`credentials`: the nkey seed file this client signs the commands it appends and the
        queries it asks with (`swarm.kernel.signing`); read on the first of them. A query's
        answer comes only to the signer's own inbox prefix (`swarm.kernel.queryguard`), so
        `nc` must have been connected with that key (`connect` does)."""
        self.nc = nc
        #: The settings, or what makes them the first time they are needed (see `settings`).
        self._settings = settings
        self.timeout = timeout
        self._credentials = credentials
        self._signer: CommandSigner | None = None
        #: The log a view (`signing_as`) was made from: its queries are signed with the
        #: connection's key, under whose inbox prefix the answers arrive.
        self._maker: EventLog | None = None
        #: The JetStream API's subject prefix, for readers that speak the API directly
        #: (swarm.kernel.logscan); nats-py keeps its own copy private.
        self.api_prefix = DEFAULT_PREFIX
        self.js: JetStreamContext = nc.jetstream(timeout=timeout, prefix=self.api_prefix)
        self._acks: _AckMux | None = None
        #: A view made by `signing_as`: the connection is its maker's to close.
        self._borrowed = False

    def signing_as(self, signer: CommandSigner) -> EventLog:
        """This connection, signing the commands appended through it with `signer`'s key
        instead of its own: the HTTP API sends each user's commands over its one connection,
        signed by that user (`swarm.gateway.service`). The view shares the connection and its
        settings; closing it closes nothing, closing this closes both. Its queries are still
        signed with this connection's key: their answers arrive under its inbox prefix, and
        are answered as this log's principal's (the HTTP API limits a user's reads itself)."""
        view = EventLog(self.nc, self._settings, timeout=self.timeout)
        view._signer = signer
        view._maker = self
        view._borrowed = True
        view.api_prefix = self.api_prefix
        return view

    @classmethod
    async def connect(
        cls,
        url: str,
        settings: Settings | None = None,
        *,
        name: str = "swarm",
        timeout: float = _DEFAULT_TIMEOUT,
        ensure: bool = True,
        credentials: Path | None = None,
        ca: Path | None = None,
    ) -> Self:
        """Connect to NATS and (by default) make sure the streams exist. `credentials`: the
        nkey seed file, else the settings' (`SWARM_NATS_CREDENTIALS`); `ca`: the CA that
        signed the server's TLS certificate, else `$SWARM_NATS_CA` (`connect_nats`)."""

        async def on_error(exc: Exception) -> None:
            # Imported here: a client that never connects this way (the CLI) need not import
            # structlog at all (swarm.kernel.logs).
            import structlog

            structlog.get_logger(__name__).warning("nats error", error=str(exc))

        credentials = (
            credentials
            or (settings.nats_credentials if settings else None)
            or env.nats_credentials()
        )
        try:
            # Once connected, it reconnects without limit: services outlive a server restart.
            nc = await connect_nats(
                url,
                name=name,
                timeout=timeout,
                on_error=on_error,
                credentials=credentials,
                ca=ca,
            )
        except CannotConnect as exc:
            raise EventLogError(str(exc)) from exc
        self = cls(nc, settings, timeout=timeout, credentials=credentials)
        if ensure:
            await self.ensure_streams()
        return self

    @property
    def settings(self) -> Settings:
        """The settings the streams are made with and outcomes checked by: as given, or made by
        the function given, or read from the environment, the first time they are needed (a
        CLI read that needs none skips pydantic-settings, ~55 ms here: bench/cli.py)."""
        if self._settings is None:
            from swarm.kernel.settings import Settings

            self._settings = Settings()
        elif callable(self._settings):
            self._settings = self._settings()
        return self._settings

    async def ensure_streams(self) -> None:
        with translated():
            await ensure_streams(self.js, self.settings)

    async def close(self) -> None:
        """Flush pending appends and close; safe to call twice. A view (`signing_as`) closes
        nothing: its connection is its maker's."""
        if self._borrowed or self.nc.is_closed:
            return
        # flush + close rather than drain: drain waits for every subscription's local queue to be
        # processed, which never happens for fetched-but-unread pull messages (they are simply
        # redelivered to the next reader, as at-least-once intends).
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await self.nc.flush(timeout=max(1, round(self.timeout)))
        await self.nc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- core NATS: messages that are not stored ---------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def max_payload(self) -> int:
        """The largest message the server takes now (it may change on a reconnect)."""
        return int(self.nc.max_payload)

    def new_inbox(self) -> str:
        """A unique subject to receive answers on."""
        return self.nc.new_inbox()

    async def publish(
        self,
        subject: str,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        reply: str = "",
        claim: MeshClaim | None = None,
    ) -> None:
        """Send one message nobody stores (heartbeats, mesh traffic, answers to requests).

        `claim`: a mesh message, signed as sent by that identity when this client has
        credentials (`swarm.kernel.signing.MeshClaim`); without credentials it goes unsigned,
        as to a stack whose pods verify nothing."""
        headers = self._mesh_signed(subject, body, headers, claim)
        try:
            await self.nc.publish(
                subject, body, reply=reply, headers=dict(headers) if headers else None
            )
        except _NATS_ERRORS as exc:
            _raise_ours(exc)

    async def respond(
        self, msg: Message, body: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer `msg` on its reply subject; a message that asked for no answer gets none."""
        if msg.reply:
            await self.publish(msg.reply, body, headers=headers)

    async def request(
        self,
        subject: str,
        body: bytes = b"",
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        claim: MeshClaim | None = None,
    ) -> Message:
        """Send a request and wait for the first answer: `NoResponders` when nobody listens,
        `RequestTimeout` when nobody answered within `timeout` (default: the log's). `claim`:
        a mesh request, signed as sent by that identity (see `publish`). A query
        (`swarm.query.…`) is signed as this client's when it has credentials
        (`swarm.kernel.queryguard`)."""
        if claim is None and subject.startswith(_QUERIES):
            headers = self._query_signed(subject, body, headers)
        else:
            headers = self._mesh_signed(subject, body, headers, claim)
        try:
            return await self.nc.request(
                subject,
                body,
                timeout=self.timeout if timeout is None else timeout,
                headers=dict(headers) if headers else None,
            )
        except _NATS_ERRORS as exc:
            _raise_ours(exc)

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str = "",
        max_msgs: int = 0,
        pending_msgs_limit: int | None = None,
    ) -> Subscription:
        """Call `handler` with every message on `subject` (one member of `queue` gets each);
        the subscription ends by itself after `max_msgs` messages when that is not 0."""
        with translated():
            sub = await self.nc.subscribe(
                subject,
                queue=queue,
                cb=handler,
                max_msgs=max_msgs,
                pending_msgs_limit=pending_msgs_limit or DEFAULT_SUB_PENDING_MSGS_LIMIT,
            )
        return Subscription(sub)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the server has read everything sent so far (`settle`)."""
        with translated():
            await settle(self.nc, self.timeout if timeout is None else timeout)

    # -- reading stored messages by position -------------------------------------------------------

    async def message(self, stream: str, seq: int) -> StoredMessage:
        """The message at `seq` in `stream`; `NotFound` when there is none (or no stream)."""
        with translated():
            raw = await self.js.get_msg(stream, seq)
        return _stored(stream, raw)

    async def last_message(self, stream: str, subject: str) -> StoredMessage:
        """The last message on `subject` (wildcards allowed) in `stream`; `NotFound` if none."""
        with translated():
            raw = await self.js.get_last_msg(stream, subject)
        return _stored(stream, raw)

    # -- appending --------------------------------------------------------------------------------

    async def append(
        self,
        envelope: Envelope[Payload],
        *,
        expected_last_seq: int | None = None,
        expected_subject: str | None = None,
    ) -> Appended:
        """Append one envelope on its subject, deduplicated by its id."""
        return await self.append_raw(
            AppendRequest.of(
                envelope, expected_last_seq=expected_last_seq, expected_subject=expected_subject
            )
        )

    async def append_raw(
        self, request: AppendRequest, *, registry: Registry | None = None
    ) -> Appended:
        """Append pre-serialized bytes.

        With a `registry` the body is strictly decoded first and a malformed one is refused with
        `schemas.DecodeError` before anything is written; relays that forward foreign bytes on
        purpose pass none.
        """
        if registry is not None:
            registry.decode(request.body)
        request = self._signed(request)
        try:
            ack = await self.js.publish(
                request.subject, request.body, timeout=self.timeout, headers=request.headers()
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._failure(exc, request) from exc
        return _appended(ack)

    @property
    def credentials(self) -> Path | None:
        """The nkey seed file this client signs with (None: it signs nothing, or it is a view
        given its signer by `signing_as`)."""
        return self._credentials

    @property
    def _signs(self) -> bool:
        return self._signer is not None or self._credentials is not None

    def _key(self) -> CommandSigner:
        if self._signer is None:
            from swarm.kernel.signing import CommandSigner

            assert self._credentials is not None
            self._signer = CommandSigner.from_seed_file(self._credentials)
        return self._signer

    def mesh_headers(self, subject: str, body: bytes, claim: MeshClaim) -> dict[str, str]:
        """The headers that sign a mesh message as sent by `claim` (none without credentials).
        Any thread: a pod signs an agent's answer on the worker thread that ran the agent."""
        if not self._signs:
            return {}
        return self._key().mesh_headers(subject, body, claim, time.time_ns() // 1_000_000)

    def _mesh_signed(
        self,
        subject: str,
        body: bytes,
        headers: Mapping[str, str] | None,
        claim: MeshClaim | None,
    ) -> Mapping[str, str] | None:
        if claim is None or not self._signs:
            return headers
        signed = self.mesh_headers(subject, body, claim)
        return {**headers, **signed} if headers else signed

    def _query_signed(
        self, subject: str, body: bytes, headers: Mapping[str, str] | None
    ) -> Mapping[str, str] | None:
        if self._maker is not None:
            # A view's answers arrive under its connection's inbox prefix: signed as that.
            return self._maker._query_signed(subject, body, headers)
        if not self._signs:
            return headers
        signed = self._key().query_headers(subject, body, time.time_ns() // 1_000_000)
        return {**headers, **signed} if headers else signed

    def _signed(self, request: AppendRequest) -> AppendRequest:
        """A command signed with this client's key, when it has one; anything else as it is."""
        if not request.sign or not self._signs:
            return request
        if not request.subject.startswith(_COMMANDS):
            return request
        return dataclasses.replace(request, body=self._key().sign(request.body))

    @staticmethod
    def _failure(exc: BaseException, request: AppendRequest) -> BaseException:
        if isinstance(exc, APIError):
            return _translate(exc, request)
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return AppendFailed(f"no stream accepts subject {request.subject}")
        if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
            return AppendFailed(f"no acknowledgement for {request.subject} in time")
        if isinstance(exc, nats.errors.Error):
            return AppendFailed(f"append to {request.subject} failed: {exc}")
        return exc

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[Appended]:
        """Append many messages pipelined: all are sent before any acknowledgement is awaited.

        Results are in request order. If any append fails, the first failure is raised after
        every ack is in, so the fate of each other message is settled; messages are deduplicated,
        so retrying the whole batch is safe.
        """
        requests = [self._signed(r) for r in requests]
        with translated():
            if self._acks is None:
                self._acks = await _AckMux.open(self.nc)
            futures = [await self._acks.send(r.subject, r.body, r.headers()) for r in requests]
        _, pending = await asyncio.wait(futures, timeout=self.timeout)
        if pending:
            self._acks.abandon(pending)
        appended: list[Appended] = []
        for request, future in zip(requests, futures, strict=True):
            if future.cancelled():
                raise AppendFailed(f"no acknowledgement for {request.subject} in time")
            exc = future.exception()
            if exc is not None:
                raise self._failure(exc, request) from exc
            appended.append(_appended(future.result()))
        return appended

    async def append_atomic(self, requests: Sequence[AppendRequest]) -> list[Appended]:
        """Append all of `requests` or none of them (JetStream atomic batch, nats-server 2.12+).

        Expected-sequence checks and message-id dedupe apply inside the batch: a conflict raises
        `ConcurrencyConflict` and a batch containing an already-stored message id raises
        `DuplicateBatch`; in both cases nothing of the batch was stored.
        """
        if not requests:
            return []
        if len(requests) > MAX_ATOMIC_BATCH:
            raise ValueError(f"an atomic batch holds at most {MAX_ATOMIC_BATCH} messages")
        from schemas import new_id

        batch_id = new_id()
        requests = [self._signed(r) for r in requests]
        last = len(requests)
        for n, request in enumerate(requests, 1):
            headers = request.headers()
            headers[_BATCH_ID] = batch_id
            headers[_BATCH_SEQ] = str(n)
            if n < last:
                with translated():
                    await self.nc.publish(request.subject, request.body, headers=headers)
                continue
            headers[_BATCH_COMMIT] = "1"
            try:
                reply = await self.nc.request(
                    request.subject, request.body, timeout=self.timeout, headers=headers
                )
            except nats.errors.NoRespondersError as exc:
                raise AppendFailed(f"no stream accepts subject {request.subject}") from exc
            except (TimeoutError, nats.errors.TimeoutError) as exc:
                raise AppendFailed(f"atomic batch {batch_id} not acknowledged in time") from exc
            except nats.errors.Error as exc:
                raise AppendFailed(f"atomic batch {batch_id} failed: {exc}") from exc
        resp = json.loads(reply.data)
        error = resp.get("error")
        if error:
            code = error.get("err_code")
            if code == _DUPLICATE_IN_BATCH:
                raise DuplicateBatch(error.get("description", "duplicate message id"))
            api_error = APIError(
                code=error.get("code"), err_code=code, description=error.get("description")
            )
            first_check = next((r for r in requests if r.conditional), requests[0])
            raise _translate(api_error, first_check)
        end = int(resp["seq"])
        count = int(resp.get("count", last))
        return [Appended(resp["stream"], end - count + 1 + i, False) for i in range(count)]

    async def dead_letter(
        self, subject: str, delivery: Delivery, *, stream: str, reason: str, msg_id: str
    ) -> Appended:
        """Keep `delivery` in SWARM_DEADLETTER on `subject` with why, and where it came from.

        `msg_id` should name the source position, so a repeat after a crash is a duplicate.
        """
        headers = {
            names.HEADER_MSG_ID: msg_id,
            # Headers travel as ASCII lines.
            names.HEADER_DEADLETTER_REASON: " ".join(reason.split())[:1000]
            .encode("ascii", "replace")
            .decode(),
            names.HEADER_DEADLETTER_STREAM: stream,
            names.HEADER_DEADLETTER_SEQ: str(delivery.stream_seq),
            names.HEADER_DEADLETTER_SUBJECT: delivery.subject,
        }
        try:
            ack = await self.js.publish(
                subject, delivery.data, timeout=self.timeout, headers=headers
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise AppendFailed(f"dead letter to {subject} failed: {exc}") from exc
        return _appended(ack)

    async def last_sequence(self, stream: str, subject: str | None = None) -> int:
        """Last sequence in `stream`, or of the last message on `subject` (0 when there is none)."""
        with translated():
            if subject is None:
                info = await self.js.stream_info(stream)
                return int(info.state.last_seq)
            try:
                msg = await self.js.get_last_msg(stream, subject)
            except NotFoundError:
                return 0
            return int(msg.seq or 0)

    # -- consuming --------------------------------------------------------------------------------

    async def consumer(
        self,
        stream: str,
        durable: str,
        *,
        filter_subjects: Sequence[str] = (),
        max_ack_pending: int = 1000,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        backoff: Sequence[float] | None = None,
        start_seq: int | None = None,
        description: str | None = None,
        pending_msgs_limit: int | None = None,
        ack_all: bool = False,
        fresh: bool = False,
    ) -> Consumer:
        """Bind to (creating if needed) a durable pull consumer with explicit acks.

        `max_ack_pending` bounds how many messages may be out unacknowledged; a consumer that dies
        without acking gets its messages redelivered to the next reader after `ack_wait`. It
        reads from the stream's start, or from `start_seq` when given; `pending_msgs_limit`
        bounds what waits in this process (default: twice `max_ack_pending`, at least 512).
        With `ack_all`, acking a message acks every one delivered before it (a batch at once).
        `fresh` deletes the durable first, so nothing of a previous reader's pending acks is
        redelivered out of order: it starts over at `start_seq`.
        """
        config = ConsumerConfig(
            durable_name=durable,
            description=description,
            ack_policy=AckPolicy.ALL if ack_all else AckPolicy.EXPLICIT,
            deliver_policy=(
                DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE
            ),
            opt_start_seq=start_seq,
            max_ack_pending=max_ack_pending,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            backoff=list(backoff) if backoff else None,
            filter_subjects=list(filter_subjects) or None,
        )
        if fresh:
            await self.delete_consumer(stream, durable)
        # Creating a durable that exists updates its limits and keeps its position.
        with translated():
            await self.js.add_consumer(stream, config)
            sub = await self.js.pull_subscribe_bind(
                durable,
                stream,
                pending_msgs_limit=pending_msgs_limit or max(max_ack_pending * 2, 512),
            )
        return Consumer(sub, stream, durable)

    async def delete_consumer(self, stream: str, durable: str) -> None:
        with contextlib.suppress(NotFound), translated():
            await self.js.delete_consumer(stream, durable)

    # -- replaying --------------------------------------------------------------------------------

    async def reader(
        self,
        stream: str,
        *,
        start_seq: int | None = None,
        start_time: datetime | None = None,
        subjects: Sequence[str] = (),
        batch: int = 1000,
    ) -> Reader:
        """An ordered, ephemeral, ack-less reader of `stream` from a sequence or a time."""
        name = await self.ephemeral_consumer(
            stream, start_seq=start_seq, start_time=start_time, subjects=subjects
        )
        with translated():
            sub = await self.js.pull_subscribe_bind(
                name,
                stream,
                pending_msgs_limit=batch * 4,
                pending_bytes_limit=64 * 1024 * 1024,
            )
        return Reader(self, sub, stream, name)

    async def ephemeral_consumer(
        self,
        stream: str,
        *,
        start_seq: int | None = None,
        start_time: datetime | None = None,
        subjects: Sequence[str] = (),
    ) -> str:
        """Create an ordered, ack-less, in-memory consumer of `stream` from a sequence or a
        time (filtered on `subjects` by the server) and return its name. The server removes it
        after 30 s without a pull; `delete_consumer` removes it at once."""
        if start_seq is not None and start_time is not None:
            raise ValueError("give start_seq or start_time, not both")
        if start_seq is not None:
            policy, opt_seq, opt_time = DeliverPolicy.BY_START_SEQUENCE, max(start_seq, 1), None
        elif start_time is not None:
            policy, opt_seq, opt_time = DeliverPolicy.BY_START_TIME, None, start_time
        else:
            policy, opt_seq, opt_time = DeliverPolicy.ALL, None, None
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=policy,
            opt_start_seq=opt_seq,
            opt_start_time=opt_time,
            filter_subjects=list(subjects) or None,
            inactive_threshold=30.0,
            max_waiting=8,
            mem_storage=True,
        )
        with translated():
            info = await self.js.add_consumer(stream, config)
        return str(info.name)

    def pull_subject(self, stream: str, consumer: str) -> str:
        """Where a pull request for `consumer`'s next messages goes, for readers that send their
        own (`swarm.kernel.logscan`): the JetStream API subject, built from our own prefix."""
        return f"{self.api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    async def replay(
        self,
        stream: str,
        *,
        start_seq: int | None = None,
        start_time: datetime | None = None,
        subjects: Sequence[str] = (),
        batch: int = 1000,
        follow: bool = False,
        idle_timeout: float = 1.0,
    ) -> AsyncIterator[Delivery]:
        """Read `stream` in order, from a sequence or a time.

        Without `follow` the iteration ends at the message that was last when it started;
        with `follow` it keeps waiting for new messages until the caller stops iterating.
        Messages are read in batches of `batch`, never one round trip per message.
        """
        end = await self.last_sequence(stream)
        if start_seq is not None and start_seq > end and not follow:
            return
        reader = await self.reader(
            stream, start_seq=start_seq, start_time=start_time, subjects=subjects, batch=batch
        )
        try:
            while True:
                deliveries = await reader.fetch(batch, timeout=idle_timeout)
                if not deliveries:
                    if follow:
                        continue
                    # Nothing within the idle timeout: with filters, the messages up to `end`
                    # may simply not match, so the consumer's position tells whether we are done.
                    if await reader.caught_up():
                        return
                    continue
                for delivery in deliveries:
                    if not follow and delivery.stream_seq > end:
                        return
                    yield delivery
                    if not follow and (delivery.stream_seq >= end or delivery.num_pending == 0):
                        return
        finally:
            await reader.close()


class Reader:
    """An ordered ephemeral consumer: batches of messages in stream order, no acks."""

    def __init__(
        self, log: EventLog, sub: JetStreamContext.PullSubscription, stream: str, name: str
    ) -> None:
        self._log = log
        self._sub = sub
        self.stream = stream
        self.name = name
        #: Messages `fetch` has returned (the consumer acknowledges nothing, so it delivers
        #: each message once and its delivered count is comparable).
        self.returned = 0

    async def fetch(self, batch: int = 1000, timeout: float = 1.0) -> list[Delivery]:
        """Up to `batch` messages in stream order; empty when none arrived within `timeout`."""
        deliveries = await _fetch(self._sub, batch, timeout, keep=False)
        self.returned += len(deliveries)
        return deliveries

    async def caught_up(self) -> bool:
        """Nothing left to read: none pending on the server, and none it delivered that no
        fetch has returned yet. A pull's messages can arrive after the fetch that asked for them
        timed out (a busy machine); the next fetch returns them, and a replay that ended on
        "none pending" alone lost them (an event page, an export missed its last messages)."""
        with translated():
            info = await self._sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        return (info.num_pending or 0) == 0 and delivered <= self.returned

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await self._sub.unsubscribe()
            await asyncio.wait_for(
                self._log.js.delete_consumer(self.stream, self.name), self._log.timeout
            )


async def _fetch(
    sub: JetStreamContext.PullSubscription, batch: int, timeout: float, *, keep: bool
) -> list[Delivery]:
    try:
        with translated():
            msgs = await sub.fetch(batch, timeout=timeout)
    except TimeoutError:  # RequestTimeout too: nothing arrived in time
        return []
    return [Delivery.of(m, keep=keep) for m in msgs]


class _AckMux:
    """Pipelined JetStream publishing: one reply subscription, one future per message.

    nats-py's `publish_async` does the same but never resolves a future whose ack is an API
    error (its handler raises instead of setting the exception), which would turn a
    wrong-last-sequence conflict into a timeout. Concurrent `js.publish` requests are correct
    but ~45% slower here. This keeps the fast path and reports every error on its own message.
    """

    def __init__(self, nc: NATS, prefix: str, limit: int) -> None:
        self._nc = nc
        self._prefix = prefix
        self._futures: dict[str, asyncio.Future[PubAck]] = {}
        self._next = 0
        # Bounds how many acks may be outstanding, so a huge batch cannot exhaust memory.
        self._slots = asyncio.Semaphore(limit)

    @classmethod
    async def open(cls, nc: NATS, limit: int = 4096) -> _AckMux:
        mux = cls(nc, nc.new_inbox(), limit)
        await nc.subscribe(f"{mux._prefix}.*", cb=mux._on_reply)
        return mux

    async def send(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        await self._slots.acquire()
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        try:
            await self._nc.publish(subject, body, reply=f"{self._prefix}.{token}", headers=headers)
        except BaseException:
            self._release(token)
            raise
        return future

    def _release(self, token: str) -> asyncio.Future[PubAck] | None:
        # Called by the reply handler directly rather than as a done-callback: a callback costs
        # an extra event-loop turn per message, ~5 of ~22 us CPU per append in bench/eventlog.py.
        future = self._futures.pop(token, None)
        if future is not None:
            self._slots.release()
        return future

    def abandon(self, futures: Iterable[asyncio.Future[PubAck]]) -> None:
        """Stop waiting for acks that did not come in time: cancel them, free their slots."""
        waiting = {f for f in futures if not f.done()}
        for token, future in list(self._futures.items()):
            if future in waiting:
                self._release(token)
                future.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._release(msg.subject[len(self._prefix) + 1 :])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            resp = json.loads(msg.data)
        except ValueError as exc:
            future.set_exception(AppendFailed(f"unreadable acknowledgement: {exc}"))
            return
        if "error" in resp:
            err = resp["error"]
            future.set_exception(
                APIError(
                    code=err.get("code"),
                    err_code=err.get("err_code"),
                    description=err.get("description"),
                )
            )
        else:
            future.set_result(PubAck.from_response(resp))


def _stored(stream: str, raw: RawStreamMsg) -> StoredMessage:
    return StoredMessage(
        stream=raw.stream or stream,
        seq=int(raw.seq or 0),
        subject=raw.subject or "",
        data=raw.data or b"",
        headers=dict(raw.headers or {}),
        time=raw.time,
    )


def _appended(ack: PubAck) -> Appended:
    return Appended(stream=ack.stream, seq=int(ack.seq), duplicate=bool(ack.duplicate))


def _translate(exc: APIError, request: AppendRequest) -> EventLogError:
    if exc.err_code == _WRONG_LAST_SEQUENCE and request.conditional:
        # JetStream says the same for a subject and a stream expectation; either way another
        # write came first.
        match = _ACTUAL_SEQ.search(exc.description or "")
        stream_fence = request.expected_last_seq is None
        return ConcurrencyConflict(
            "(the stream)" if stream_fence else request.expected_subject or request.subject,
            (
                request.expected_stream_seq
                if stream_fence and request.expected_stream_seq is not None
                else request.expected_last_seq or 0
            ),
            int(match.group(1)) if match else None,
        )
    if isinstance(exc, ServiceUnavailableError):
        # 503: JetStream is starting or has no quorum; not an answer about this message.
        return AppendFailed(f"append to {request.subject} failed: {exc.description or exc}")
    return AppendRefused(f"append to {request.subject} refused: {exc.description}")
