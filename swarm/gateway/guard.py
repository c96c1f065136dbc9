"""The request guard: what every request must pass before FastAPI or a route reads it.

FastAPI reads and parses a route's body before it solves the route's dependencies
(`fastapi/routing.py`, `get_request_handler`), so a token checked by a dependency is checked
only once the whole body is in memory: a 150 MB body without a token took the API from 195 to
948 MiB. This ASGI middleware sits in front of the routing (only Starlette's error middleware,
which passes `receive` through untouched, is outside it) and answers with a problem document
itself, in this order:

1. a request under `/v1` carries a token of the API (401), judged from its headers alone; whom
   it acts for (`auth.Caller`) is left in the request's scope as `user`, as Starlette's
   authentication middleware leaves it;
2. its path and query string percent-decode to UTF-8, and the headers the API reads as text are
   ASCII (400);
3. a body declared larger than the limit (`Content-Length`) is refused before any of it is
   read, and one sent in chunks is counted as it comes and refused once it passes the limit
   (413), so a request never holds more than the limit in memory;
4. a body sent as JSON to `/v1` is JSON the API can read (`json_body`; 400).

A request refused before its body was read is answered with `Connection: close`; otherwise the
server would read the rest of the body (to throw it away and keep the connection), and a client
streaming 150 MB would send all of it.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swarm.client.errors import FieldProblem
from swarm.gateway import json_body
from swarm.gateway.auth import Authenticator, Caller
from swarm.gateway.problems import ProblemError, response_of

#: Requests under this path need a bearer token.
PROTECTED_PREFIX = "/v1"
#: The API's own description, behind the token too unless the API is told its docs are public.
DOCUMENTS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
#: Headers the API reads as text (obs-text, bytes over 0x7f, is not text: RFC 9110 §5.5).
#: `Authorization` is not here: a token that is not ASCII is simply not the token.
TEXT_HEADERS = ("content-type", "idempotency-key", "last-event-id")


class RequestGuard:
    """ASGI middleware enforcing the token, readable text and the body limit (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        max_body_bytes: int,
        public_docs: bool = False,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes
        self.public_docs = public_docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = _route_path(scope)
        protected = _is_protected(path)
        needs_token = protected or (path in DOCUMENTS and not self.public_docs)
        refused = self._judge_head(scope, headers, needs_token=needs_token)
        if refused is not None:
            await _answer(scope, receive, send, refused, close=_may_have_body(headers))
            return
        body = await self._read_body(receive)
        if isinstance(body, ProblemError):
            await _answer(scope, receive, send, body, close=True)
            return
        if body is None:
            return  # the client left mid-body: nobody to answer
        if protected and body and _is_json(headers):
            problem = json_body.unreadable(body)
            if problem is not None:
                detail = f"the body is not JSON the API reads ({json_body.RULES})"
                unreadable = _bad_request(detail, problem)
                await _answer(scope, receive, send, unreadable, close=False)
                return
        await self.app(scope, _replay(body, receive), send)

    def _judge_head(
        self, scope: Scope, headers: Headers, *, needs_token: bool
    ) -> ProblemError | None:
        if needs_token:
            if len(headers.getlist("authorization")) > 1:
                # One request, one caller: which of two tokens counts is not left to chance
                # (or to a proxy that keeps the first or the last).
                return ProblemError(
                    401,
                    "unauthorized",
                    "Unauthorized",
                    "send one Authorization header, not several",
                    headers={"WWW-Authenticate": 'Bearer realm="swarm", error="invalid_request"'},
                )
            caller = self.authenticator.caller(headers.get("authorization"))
            if not isinstance(caller, Caller):
                return caller
            scope["user"] = caller
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and not _decodes(raw_path):
            return _bad_request(
                "the path is not text: it percent-decodes to bytes that are not UTF-8",
                FieldProblem("path", "not UTF-8 once percent-decoded", "utf8"),
            )
        if not _decodes(scope.get("query_string", b"")):
            return _bad_request(
                "the query string is not text: it percent-decodes to bytes that are not UTF-8",
                FieldProblem("query", "not UTF-8 once percent-decoded", "utf8"),
            )
        for name, value in scope["headers"]:
            header = name.decode("latin-1")
            if header in TEXT_HEADERS and not value.isascii():
                return _bad_request(
                    f"the {header} header is not text: it has bytes over 0x7f",
                    FieldProblem(f"header.{header}", "not ASCII", "ascii"),
                )
        # The server has checked it is digits; whatever it says, no more than the limit is read.
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit():
            digits = declared.lstrip("0") or "0"
            # Compared by length first: `int()` of thousands of digits is itself slow.
            longer = len(digits) > len(str(self.max_body_bytes))
            if longer or int(digits) > self.max_body_bytes:
                return self._too_large(f"the body is declared as {digits} bytes")
        return None

    async def _read_body(self, receive: Receive) -> bytes | ProblemError | None:
        """The whole body (at most the limit), a 413 problem once it passes the limit, or None
        when the client disconnects first."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return self._too_large(f"the body passed {self.max_body_bytes:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, what: str) -> ProblemError:
        return ProblemError(
            413,
            "too-large",
            "Request too large",
            f"{what}; the API reads at most {self.max_body_bytes:,} (SWARM_API_MAX_BODY_BYTES)",
        )


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path the app may be mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def _is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _decodes(raw: bytes) -> bool:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _may_have_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _is_json(headers: Headers) -> bool:
    """Whether FastAPI would parse the body as JSON (it does for these media types)."""
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _bad_request(detail: str, problem: FieldProblem) -> ProblemError:
    return ProblemError(400, "bad-request", "Bad request", detail, errors=[problem])


async def _answer(
    scope: Scope, receive: Receive, send: Send, problem: ProblemError, *, close: bool
) -> None:
    response = response_of(Request(scope), problem)
    if close:
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body read already, then the server's own (for disconnects)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
