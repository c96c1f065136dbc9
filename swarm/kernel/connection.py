"""Opening a NATS connection: a bounded first attempt, then (for services) reconnects forever.

nats-py has one knob, `max_reconnect_attempts`, for both the first connection and reconnects,
and its first connection never gives up on its own with 0 or -1: it catches every error of a
connection attempt and tries the next server, so an unreachable server is retried until the
caller cancels. Cancelling is no way out either. On Python 3.11 `asyncio.wait_for` drops a
cancellation that arrives while a refused connection attempt is finishing; the retry loop then
keeps going, and a task that was meant to time out (or a thread that was meant to stop, or
`asyncio.run` cancelling what is left) waits for it forever. Seen in CI: a pod's heartbeat thread
did not stop within 10 s of `close()` while its server was down.

So the first connection is made with a finite number of attempts per server, which nats-py
ends itself with `NoServersError`, and no outer timeout or cancellation is needed. Once
connected, the client gets the reconnect limit its caller asked for (unlimited for services) by
setting the same option on the live client, whose reconnect loop reads it at each attempt.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NATS

from schemas import names
from swarm.kernel import env

#: Pause between two attempts on the same server.
RETRY_WAIT_S = 0.2

ErrorCallback = Callable[[Exception], Awaitable[None]]


class CannotConnect(Exception):
    """No server of the URL answered within the attempts; `cause` is the last error seen."""

    def __init__(self, url: str, cause: BaseException | None) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"cannot reach NATS at {url}: {describe(cause)}")


def _refused(exc: BaseException) -> bool:
    return "authorization violation" in str(exc).lower()


def _untrusted(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in str(exc)


def describe(exc: BaseException | None) -> str:
    """One line for a connection error: its message, or its type when it has none."""
    if exc is None:
        return "no answer"
    text = str(exc) or type(exc).__name__
    if _refused(exc):
        return (
            "the server refused the credentials (or their absence): authorization violation; "
            f"connect with the nkey seed file `swarm status -o json` names as nats_credentials "
            f"(${env.NATS_CREDENTIALS})"
        )
    if _untrusted(exc):
        return (
            f"the server's TLS certificate is not one this client trusts ({text}); verify it "
            f"against the stack's CA, which `swarm status -o json` names as nats_ca "
            f"(${env.NATS_CA})"
        )
    return text


def public_key(seed_file: Path) -> str:
    """The public key (`U…`) of the nkey seed in `seed_file`; ValueError if it holds none."""
    import nkeys  # here: only a connection with credentials needs it

    try:
        pair = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
    except (nkeys.NkeysError, ValueError) as exc:
        raise ValueError(f"{seed_file} holds no nkey seed") from exc
    public = pair.public_key.decode()
    pair.wipe()
    return str(public)


class _QuietTlsClose(logging.Filter):
    """Drops asyncio's warning at each TLS connection's end. nats-py upgrades a connection to
    TLS with a stream protocol that is never told it runs over TLS (Python 3.11's `start_tls`
    does not call its `connection_made`), so at the server's EOF asyncio warns
    "returning true from eof_received() has no effect when using ssl", on the CLI's stderr too.
    The connection closes all the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("returning true from eof_received()")


_QUIET_TLS_CLOSE = _QuietTlsClose()


def nats_servers(url: str) -> list[str]:
    """The servers a NATS URL setting names: one URL, or a cluster's comma-separated
    (`SWARM_NATS_URL=nats://nats-1:4222,nats://nats-2:4222,...` in docker-compose.yml), which
    nats-py accepts only as a list."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect_nats(
    url: str,
    *,
    name: str,
    timeout: float,
    attempts: int = 2,
    reconnects: int = -1,
    on_error: ErrorCallback | None = None,
    credentials: Path | None = None,
    ca: Path | None = None,
) -> NATS:
    """A connection to the first server of `url` that answers, or `CannotConnect`.

    Each server gets `attempts` tries of at most `timeout` seconds each, `RETRY_WAIT_S` apart.
    Once connected, a lost connection is retried `reconnects` times per server: -1 (services:
    the server may restart) without limit, 0 not at all. `on_error` hears every later
    connection error (not the first attempts': the last of those is `CannotConnect.cause`).
    `credentials`: the nkey seed file to sign the server's challenge with (a `swarm up` stack
    admits no one without one: `swarm.devstack.principals`); by default `$SWARM_NATS_CREDENTIALS`,
    which `swarm up` sets for each process it starts. With credentials, replies (requests,
    JetStream, buckets) arrive under the key's own inbox prefix (`names.inbox_prefix`), the only
    inboxes a stack lets the principal read. `ca`: the CA certificate to verify the server's TLS
    certificate against (a `swarm up` stack's listener speaks TLS alone, with a CA of its own:
    `swarm.devstack.tls`); by default `$SWARM_NATS_CA`. Without one, plain NATS (or the system's
    CAs, if the server asks for TLS).
    """
    credentials = credentials or env.nats_credentials()
    ca = ca or env.nats_ca()
    servers = nats_servers(url)
    if not servers:
        raise CannotConnect(url, ValueError("no server URL given"))
    inbox = names.INBOX_ROOT
    if credentials is not None:
        try:
            inbox = names.inbox_prefix(public_key(credentials))
        except (OSError, ValueError) as exc:
            raise CannotConnect(url, exc) from exc
    tls: ssl.SSLContext | None = None
    if ca is not None:
        try:
            tls = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise CannotConnect(url, OSError(f"cannot read the NATS CA {ca}: {exc}")) from exc
        logging.getLogger("asyncio").addFilter(_QUIET_TLS_CLOSE)  # once: the same filter
    seen: list[Exception] = []
    connected = False
    untrusted = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        if not connected:
            seen.append(exc)
            if _untrusted(exc):
                untrusted.set()
        elif on_error is not None:
            await on_error(exc)

    attempt = asyncio.ensure_future(
        nats.connect(
            servers,
            name=name,
            connect_timeout=timeout,
            # A server is dropped from the pool once it has failed more than this many times.
            max_reconnect_attempts=max(1, attempts - 1),
            reconnect_time_wait=RETRY_WAIT_S,
            allow_reconnect=reconnects != 0,
            error_cb=error_cb,
            nkeys_seed=str(credentials) if credentials is not None else None,
            inbox_prefix=inbox,
            tls=tls,
        )
    )
    refusal = asyncio.ensure_future(untrusted.wait())
    try:
        await asyncio.wait({attempt, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
        if not attempt.done():
            # A certificate this client does not trust: nats-py would next wait forever for
            # the failed TLS stream to close (on Python 3.11 a failed `start_tls` never tells
            # the stream it lost its connection; seen: `connect_nats` without the stack's CA
            # hung), and no later attempt could fare better. It waits in a plain await there,
            # where a cancellation is not lost.
            attempt.cancel()
            await asyncio.wait({attempt}, timeout=timeout)
    try:
        if attempt.cancelled():
            raise OSError("the server's TLS certificate is not trusted")
        nc = attempt.result()
    except (OSError, TimeoutError, ValueError, nats.errors.Error) as exc:
        cause = seen[-1] if seen and isinstance(exc, nats.errors.NoServersError) else exc
        # A refusal of the credentials says more than what the next attempt met (the server
        # hangs up on a refused client: seen under load, "connection reset by peer").
        refused = [e for e in seen if _refused(e) or _untrusted(e)]
        raise CannotConnect(url, refused[-1] if refused else cause) from exc
    connected = True
    # nats-py reads the option at each reconnect; 0 would mean "without limit" to it.
    nc.options["max_reconnect_attempts"] = reconnects if reconnects > 0 else -1
    return nc


__all__ = [
    "CannotConnect",
    "ErrorCallback",
    "connect_nats",
    "describe",
    "nats_servers",
    "public_key",
]


async def settle(nc: NATS, timeout: float) -> None:
    """Return once the server has read everything `nc` sent before the call (subscriptions
    included), so that another connection may count on them.

    One `nc.flush()` does not promise that in nats-py 2.16: it writes its PING straight to the
    socket, while a SUB or PUB issued just before still waits in the client's buffer for the
    flusher task, so the PONG can come back before the server has read the SUB. Measured with a
    subscribe, a flush and a request from a second connection, 500 times: 3 "no responders" on
    an idle machine, 20-34 with three busy cores; CI saw a liveness probe and a market query miss
    a subscription that had just been flushed. The flusher has written the buffer by the time
    the first PONG is read (it was woken before the PING went out), so a second round trip
    follows everything: 0 misses in the same runs."""
    whole = max(1, round(timeout))
    await nc.flush(timeout=whole)
    await nc.flush(timeout=whole)
