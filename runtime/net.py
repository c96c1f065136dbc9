"""The `net` capability: outbound HTTP(S) requests an agent asks its host to make.

WASI sockets cannot be granted with this wasmtime-py (runtime/ABI.md, "Capabilities"), so the
network reaches agents as a host call instead, `http_request`, with the same JSON contract for
core modules and components:

- request `{"method": str, "url": str, "headers": {str: str}, "body": str | "body_base64": str,
  "timeout_ms": int}` (all but `url` optional; `method` defaults to GET);
- answer `{"status": int, "headers": {str: str}, "body": str}` (`body_base64` instead of `body`
  when the body is not UTF-8), or `{"error": kind, "reason": str}` when the network failed the
  request (`kind`: "timeout", "connect", "too_large", "protocol").

This module parses and encodes those and makes the request (`HttpFetcher`). The shared host-call
rules (the grant, per-call counts, the deadline) are in runtime/hostcalls.py.

Rules of the fetch, each for a reason:
- http and https only; redirects are never followed (a 3xx is the answer, `location` included),
  since a redirect could lead to an address the guard below never saw;
- server-side request forgery: every address the host resolves to must be public
  (`swarm.kernel.addresses`) unless the pod allows private targets; otherwise `Refused`. The
  request then goes to the first of those addresses (see the end of this docstring);
- the whole exchange (name lookup included) runs on the fetcher's own threads and the calling
  thread waits at most the call's remaining deadline: host calls are not interrupted by epochs,
  so the host bounds its own time. A request still running then is told to stop and is closed
  at its next read (each network operation is bounded by the same timeout);
- the response body is read raw (no decompression: "Accept-Encoding: identity" is sent unless
  the agent asks otherwise, so a compressed bomb cannot inflate past the cap) and refused as
  "too_large" beyond `max_response_bytes`; nothing from the pod's environment (proxies, netrc)
  is used.

The guard connects to the address it checked (the URL's host is replaced by it; the name is
sent as `Host` and as the TLS server name, so certificates are still verified for the name), so
a name that resolves differently a moment later (DNS rebinding) cannot steer the request inside.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import structlog

from runtime.host import Refused
from swarm.kernel.addresses import first_non_public, resolve

log = structlog.get_logger(__name__)

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Headers httpx derives from the request itself; an agent setting them could desynchronise
#: the framing (length, encoding) or the connection, so they are refused.
FORBIDDEN_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
)
_REQUEST_KEYS: Final = frozenset({"method", "url", "headers", "body", "body_base64", "timeout_ms"})
_MAX_HEADERS: Final = 64

ErrorKind = Literal["timeout", "connect", "too_large", "protocol"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: Bounded by the call's remaining deadline (set by the host call, not the agent alone).
    timeout_s: float = 10.0
    max_response_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What the network answered: a status, or an `error` kind with its reason."""

    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    error: ErrorKind | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    method: str
    url: str
    #: The URL's host, lowercase (IDNA-encoded for international names).
    host: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout_ms: int | None


def parse_request(request: Any) -> ParsedRequest | str:
    """The request of `http_request` (already JSON-decoded), or why it is malformed."""
    if not isinstance(request, dict) or not set(request) <= _REQUEST_KEYS:
        return f"a request is an object with keys among {sorted(_REQUEST_KEYS)}"
    method = request.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        return f"method must be one of {sorted(METHODS)}"
    url = request.get("url")
    if not isinstance(url, str):
        return "url must be a string"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        return f"bad url: {exc}"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "url must be http:// or https:// with a host"
    headers = request.get("headers", {})
    if not isinstance(headers, dict) or len(headers) > _MAX_HEADERS:
        return f"headers must be an object of at most {_MAX_HEADERS} strings"
    pairs: list[tuple[str, str]] = []
    for name, value in headers.items():
        if not isinstance(value, str) or not _header_ok(name, value):
            return f"bad header {name!r}"
        if name.lower() in FORBIDDEN_HEADERS:
            return f"header {name!r} is set by the host"
        pairs.append((name, value))
    if "body" in request and "body_base64" in request:
        return "give body or body_base64, not both"
    body = b""
    if "body" in request:
        if not isinstance(request["body"], str):
            return "body must be a string"
        body = request["body"].encode()
    elif "body_base64" in request:
        try:
            body = base64.b64decode(request["body_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            return "body_base64 is not base64"
    timeout_ms = request.get("timeout_ms")
    if timeout_ms is not None and (
        isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 1
    ):
        return "timeout_ms must be a positive integer"
    return ParsedRequest(
        method.upper(), url, parsed.raw_host.decode("ascii"), tuple(pairs), body, timeout_ms
    )


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether `host` matches one of `AgentSpec.network.allow`'s patterns: the same name, or
    for `*.example.org` any name ending in `.example.org`."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def _header_ok(name: str, value: str) -> bool:
    # RFC 9110 token for the name; printable ASCII (no CR/LF: header injection) for the value.
    if not name or len(name) > 256 or len(value) > 8192:
        return False
    if not all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name):
        return False
    return all(c == "\t" or " " <= c <= "~" for c in value)


def encode_response(response: HttpResponse) -> bytes:
    """The JSON answer of `http_request`."""
    out: dict[str, Any]
    if response.error is not None:
        out = {"error": response.error, "reason": response.reason}
    else:
        out = {"status": response.status, "headers": dict(response.headers)}
        try:
            out["body"] = response.body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(response.body).decode()
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


class _Cancelled(Exception):
    pass


class HttpFetcher:
    """Makes agents' HTTP requests for one pod (thread-safe; `close` when the pod stops).

    `allow_private` lifts the address guard (tests, or a pod meant to reach its own network).
    `threads` bounds the requests in flight, including ones abandoned at their caller's deadline
    and still winding down.
    """

    def __init__(self, *, allow_private: bool = False, threads: int = 16) -> None:
        self.allow_private = allow_private
        self._client = httpx.Client(follow_redirects=False, trust_env=False)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="swarm-net")
        self._lock = threading.Lock()
        #: Requests made (refused ones included), for metrics.
        self.requests = 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, request: HttpRequest) -> HttpResponse:
        """The response, or `HttpResponse.error`; raises `Refused` for a forbidden target.

        Returns within `request.timeout_s` (plus scheduling noise) whatever the network does.
        """
        with self._lock:
            self.requests += 1
        started = time.monotonic()
        cancel = threading.Event()
        future = self._pool.submit(self._exchange, request, started + request.timeout_s, cancel)
        try:
            response = future.result(timeout=request.timeout_s)
        except concurrent.futures.TimeoutError:
            cancel.set()
            future.cancel()
            response = HttpResponse(
                error="timeout", reason=f"no complete answer within {request.timeout_s:.3f} s"
            )
        except Refused as exc:
            log.info("agent http request refused", url=_loggable(request.url), reason=str(exc))
            raise
        log.info(
            "agent http request",
            method=request.method,
            url=_loggable(request.url),
            status=response.status,
            error=response.error,
            bytes=len(response.body),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response

    def _exchange(
        self, request: HttpRequest, deadline: float, cancel: threading.Event
    ) -> HttpResponse:
        url = httpx.URL(request.url)
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        headers = httpx.Headers(list(request.headers))
        headers.setdefault("accept-encoding", "identity")
        extensions: dict[str, Any] = {}
        if not self.allow_private:
            try:
                addresses = resolve(host, port)
            except OSError as exc:
                return HttpResponse(error="connect", reason=f"cannot resolve {host}: {exc}")
            hit = first_non_public(addresses)
            if hit is not None:
                address, why = hit
                raise Refused(
                    f"{host} resolves to {address} ({why}); this pod allows public addresses "
                    "only (SWARM_POD_NET_ALLOW_PRIVATE)"
                )
            # Connect to the address just checked, not to whatever the name resolves to next
            # (DNS rebinding); the name still goes to the server as Host and TLS server name.
            headers["host"] = url.netloc.decode("ascii")
            if url.scheme == "https":
                extensions["sni_hostname"] = host
            url = url.copy_with(host=str(addresses[0]))
        remaining = deadline - time.monotonic()
        if remaining <= 0 or cancel.is_set():
            return HttpResponse(error="timeout", reason="the deadline passed before connecting")
        built = self._client.build_request(
            request.method,
            url,
            headers=headers,
            content=request.body or None,
            timeout=httpx.Timeout(remaining),
            extensions=extensions,
        )
        try:
            response = self._client.send(built, stream=True)
        except httpx.TimeoutException as exc:
            return HttpResponse(error="timeout", reason=_reason(exc))
        except (httpx.ConnectError, httpx.NetworkError) as exc:
            return HttpResponse(error="connect", reason=_reason(exc))
        except httpx.HTTPError as exc:
            return HttpResponse(error="protocol", reason=_reason(exc))
        try:
            return self._read(response, request, deadline, cancel)
        finally:
            response.close()

    @staticmethod
    def _read(
        response: httpx.Response, request: HttpRequest, deadline: float, cancel: threading.Event
    ) -> HttpResponse:
        cap = request.max_response_bytes
        declared = response.headers.get("content-length", "")
        # A HEAD answer announces the length of a body it does not send.
        if request.method != "HEAD" and declared.isdigit() and int(declared) > cap:
            return HttpResponse(
                error="too_large",
                reason=f"response of {declared} bytes exceeds the limit of {cap}",
            )
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_raw():
                if cancel.is_set() or time.monotonic() > deadline:
                    raise _Cancelled
                size += len(chunk)
                if size > cap:
                    return HttpResponse(
                        error="too_large", reason=f"response exceeds the limit of {cap} bytes"
                    )
                chunks.append(chunk)
        except _Cancelled:
            return HttpResponse(error="timeout", reason="the deadline passed while reading")
        except httpx.TimeoutException as exc:
            return HttpResponse(error="timeout", reason=_reason(exc))
        except httpx.HTTPError as exc:
            return HttpResponse(error="protocol", reason=_reason(exc))
        return HttpResponse(
            status=response.status_code,
            headers=tuple(response.headers.items()),
            body=b"".join(chunks),
        )


def _loggable(url: str) -> str:
    """The URL without credentials, query or fragment, which may carry secrets (API keys)."""
    try:
        return str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))
    except httpx.InvalidURL:
        return "<invalid url>"


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
