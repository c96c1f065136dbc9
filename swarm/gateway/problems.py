"""Every error the API returns has one shape: RFC 9457 problem details (`application/problem+json`).

`type` is a stable URI naming the kind of problem, `title` its summary, `status` the HTTP status,
`detail` what happened this time; `errors` lists field-level problems (request validation, or a
command the Hive rejected for its fields), `rule` the Hive's rule that refused a command, and
`command_id` the command concerned. FastAPI's own validation errors, unknown routes and methods,
missing credentials and unexpected exceptions are all turned into this shape, and a 500 never
carries a trace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from swarm.client.errors import (
    INVALID,
    NO_OUTCOME,
    UNAVAILABLE,
    ClientError,
    FieldProblem,
)
from swarm.client.queries import QueryFailed

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Base of the `type` URIs; they name kinds of problems and are documented in the README.
TYPE_BASE = "https://swarm.dev/problems/"

log = structlog.get_logger("swarm.gateway")


class FieldError(BaseModel):
    loc: str = Field(description="Where: dotted path of the field (e.g. `body.spec.version`).")
    msg: str
    type: str = ""


class Problem(BaseModel):
    """An error (RFC 9457 problem details, with Swarm's extensions)."""

    type: str = Field(description="URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] = Field(default_factory=list)
    rule: str | None = Field(default=None, description="The Hive's rule that refused a command.")
    command_id: str | None = None


class ProblemResponse(JSONResponse):
    """A problem document, written in ASCII: its text may echo what a client sent, and a lone
    surrogate in it (which UTF-8 cannot encode) must not turn the answer into a 500."""

    media_type = PROBLEM_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class ProblemError(Exception):
    """Raised by a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        errors: Sequence[FieldProblem] = (),
        rule: str | None = None,
        command_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.errors = tuple(errors)
        self.rule = rule
        self.command_id = command_id
        self.headers = dict(headers or {})


def response_of(request: Request | None, exc: ProblemError) -> JSONResponse:
    """The problem document `exc` stands for."""
    problem = Problem(
        type=TYPE_BASE + exc.kind,
        title=exc.title,
        status=exc.status,
        detail=exc.detail,
        instance=request.url.path if request is not None else None,
        errors=[FieldError(loc=e.loc, msg=e.msg, type=e.type) for e in exc.errors],
        rule=exc.rule,
        command_id=exc.command_id,
    )
    return ProblemResponse(
        problem.model_dump(mode="json"), status_code=exc.status, headers=exc.headers
    )


def from_client_error(exc: ClientError) -> ProblemError:
    """A client-layer failure as the HTTP problem it is."""
    if isinstance(exc, QueryFailed):
        if exc.error_code == "not_found":
            return ProblemError(404, "not-found", "Not found", exc.message)
        return ProblemError(409, "query-failed", "Query refused", exc.message)
    if exc.code == INVALID:
        return ProblemError(
            422, "invalid-command", "Invalid command", exc.message, errors=exc.errors
        )
    if exc.code == NO_OUTCOME:
        return ProblemError(504, "no-outcome", "No outcome in time", exc.message)
    if exc.code == UNAVAILABLE:
        return ProblemError(503, "unavailable", "Swarm unavailable", exc.message)
    # FAILED outside a query's refusal: the Hive answered something unreadable.
    return ProblemError(502, "bad-answer", "Bad answer from the Hive", exc.message)


def _status_title(status: int) -> tuple[str, str]:
    kinds = {
        400: ("bad-request", "Bad request"),
        401: ("unauthorized", "Unauthorized"),
        403: ("forbidden", "Forbidden"),
        404: ("not-found", "Not found"),
        405: ("method-not-allowed", "Method not allowed"),
        406: ("not-acceptable", "Not acceptable"),
        413: ("too-large", "Request too large"),
        415: ("unsupported-media-type", "Unsupported media type"),
    }
    return kinds.get(status, ("http-error", "HTTP error"))


def install(app: FastAPI) -> None:
    """Route every kind of error through `response_of`."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return response_of(request, exc)

    async def on_client_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ClientError)
        return await on_problem(request, from_client_error(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldProblem(
                ".".join(str(part) for part in e.get("loc", ())),
                str(e.get("msg", "")),
                str(e.get("type", "")),
            )
            for e in exc.errors()
        ]
        return response_of(
            request,
            ProblemError(
                422,
                "invalid-request",
                "Invalid request",
                f"the request does not match the API: {len(errors)} problem(s), listed in `errors`",
                errors=errors,
            ),
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind, title = _status_title(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}"
        return response_of(
            request, ProblemError(exc.status_code, kind, title, detail, headers=exc.headers)
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged here with its trace; the caller gets no internals, only that it was our fault.
        log.error("unhandled error", path=request.url.path, exc_info=exc)
        return response_of(
            request, ProblemError(500, "internal", "Internal error", "the API failed; see its log")
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(ClientError, on_client_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def problem_schema_ref() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Problem"}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problems a route may answer with."""
    described = {
        400: (
            "The request cannot be read: a path, query or header that is not text, or a JSON "
            "body that is not UTF-8 JSON within the API's limits (see `errors`)."
        ),
        401: "Missing or wrong bearer token.",
        403: (
            "A user's token without the role this takes: the Hive refused the command (rule "
            "`access`), or the read is of a namespace where the user holds no role."
        ),
        404: "No such resource.",
        409: "The Hive rejected the command (see `rule`).",
        413: "The body is over the API's limit, or what it makes is larger than NATS accepts.",
        422: "The request or the command it makes is invalid (see `errors`).",
        500: "The API failed unexpectedly.",
        502: "The Hive answered something the API cannot read.",
        503: "NATS or the Hive cannot be reached.",
    }
    return {
        status: {
            "description": described.get(status, "Problem."),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": problem_schema_ref()}},
        }
        for status in statuses
    }
