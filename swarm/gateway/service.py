"""What the routes share: the client (`swarm.client.swarm.Swarm`), and turning what it answers
into HTTP.

The routes call the client's verbs exactly as the CLI does (`gw.swarm.agents.scale(...)`);
commands given whole (`POST /v1/commands`) and webhook commands, whose secret depends on their
outcome (`swarm.client.webhooks`), are sent here. This module only turns results into answers.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any

import structlog
from fastapi import Request
from fastapi.responses import JSONResponse

from schemas import Payload
from swarm.client import commands, webhooks
from swarm.client.commands import Issued, NoOutcome, Outcome, Sent
from swarm.client.errors import INVALID, ClientError, FieldProblem
from swarm.client.swarm import Swarm, TooLarge
from swarm.gateway.models import CausedEvent, CommandResult
from swarm.gateway.problems import ProblemError
from swarm.gateway.settings import GatewaySettings
from swarm.kernel.eventlog import EventLog
from swarm.kernel.tasks import cancel_and_wait

#: CloudEvents `source` of the commands the API sends.
API_SOURCE = "swarm-api"
#: Commands sent with `?wait=false` remembered as pending, so polling them says "pending" rather
#: than "not found" until their outcome is in the log.
_PENDING_LIMIT = 10_000
#: Rules whose rejection means the request itself was wrong, not the state of things.
_INVALID_RULES = frozenset({"invalid", "type", "subject"})

#: How long the API keeps waiting, after answering 202, for the outcome of a webhook command
#: whose secret depends on it (see `Gateway.send`); and how many such waits at once.
SETTLE_WITHIN = 300.0
_SETTLE_LIMIT = 100

logger = structlog.get_logger("swarm.gateway")


class Gateway:
    """The API's connection to Swarm (one per process)."""

    def __init__(
        self, log: EventLog, settings: GatewaySettings, *, database_url: str | None = None
    ) -> None:
        self.log = log
        self.settings = settings
        self.swarm = Swarm(
            log,
            identity=settings.identity,
            source=API_SOURCE,
            timeout=settings.command_timeout,
            caused=True,
        )
        #: Postgres, where the Observer keeps behaviour vectors (`SWARM_DATABASE_URL`); optional.
        self.database_url = database_url
        self._pending: OrderedDict[str, commands.Sent] = OrderedDict()
        self._settling: set[asyncio.Task[None]] = set()

    # -- commands ---------------------------------------------------------------------------------

    def prepare(self, payload: type[Payload], data: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.swarm.command(payload, data)
        except ClientError as exc:
            raise invalid_command(exc) from None

    def check_size(self, event: Mapping[str, Any]) -> None:
        limit = self.log.max_payload
        size = len(commands.encode(event))
        if limit and size > limit:
            raise too_large(TooLarge(size, limit), command_id=str(event.get("id")))

    def within(self, wait: bool, timeout: float | None) -> float | None:
        """How long to wait for an outcome: None when not waiting at all."""
        if not wait:
            return None
        return timeout if timeout is not None else self.settings.command_timeout

    def timeout(self, wait: bool, timeout: float | None) -> float:
        """`?wait` and `?timeout` as a client verb's timeout (0: send without waiting)."""
        return self.within(wait, timeout) or 0.0

    @staticmethod
    def location(request: Request, command_id: str) -> str:
        """Where a command's outcome can be polled."""
        return str(request.url_for("get_command", command_id=command_id).path)

    async def send(
        self,
        event: Mapping[str, Any],
        *,
        wait: bool,
        timeout: float | None,
        new_webhook: webhooks.NewWebhook | None = None,
    ) -> tuple[Sent, Issued | None]:
        """Send a command (`new_webhook`'s with its secret stored first) and, with `wait`, wait
        for its outcome; a command answered later is remembered as pending.

        A webhook command's outcome decides what becomes of its secret (`webhooks.keep_books`):
        done now when the outcome came in time, else by a task that waits for it, since the
        caller has its answer already and will not come back to finish the job.
        """
        within = self.within(wait, timeout)
        settles = webhooks.keeps_books(event)
        # Taken before the publish, as `commands.send_and_wait` does: the outcome comes after.
        start = await self.swarm.floor() + 1 if settles else 1
        if new_webhook is not None:
            sent, issued = await webhooks.add(
                self.log, new_webhook, within=within, with_caused=True
            )
        else:
            sent, issued = await send_command(self.log, event, within)
        if issued is None:
            self.remember(sent)
            if settles:
                self._settle(event, start_seq=1 if sent.duplicate else start)
        return sent, issued

    async def execute(
        self,
        request: Request,
        event: Mapping[str, Any],
        *,
        wait: bool,
        timeout: float | None,
        what: str,
    ) -> JSONResponse:
        """Send a whole command (`event`), as `answer` does a client verb."""
        self.check_size(event)

        async def sending() -> Issued:
            sent, issued = await self.send(event, wait=wait, timeout=timeout)
            if issued is None:
                raise NoOutcome(sent, self.within(wait, timeout) or 0.0)
            return issued

        return await self.answer(request, sending(), what=what)

    async def answer(
        self, request: Request, command: Awaitable[Issued], *, what: str
    ) -> JSONResponse:
        """Await a command verb; answer its outcome (a rejection is a problem), or 202.

        A command whose outcome does not come within the timeout is answered 202 too: it stays
        queued for the Hive, and `GET /v1/commands/{id}` tells when it is decided.
        """
        try:
            issued = await command
        except NoOutcome as exc:
            # Not answered (yet): accepted for processing, as HTTP 202 says; poll the Location.
            self.remember(exc.sent)
            return JSONResponse(
                pending_result(exc.sent).model_dump(mode="json"),
                status_code=202,
                headers={"Location": self.location(request, exc.sent.id)},
            )
        except TooLarge as exc:
            raise too_large(exc) from None
        except ClientError as exc:
            if exc.code == INVALID:
                raise invalid_command(exc) from None
            raise
        if not issued.accepted:
            raise rejection(issued.outcome, command_id=issued.sent.id, what=what)
        return JSONResponse(
            result_of(issued).model_dump(mode="json"),
            status_code=200,
            headers={"Location": self.location(request, issued.sent.id)},
        )

    async def lookup(self, command_id: str) -> CommandResult:
        """A command's outcome, or "pending" for one this API sent that has none yet."""
        outcome = await commands.find_outcome(self.log, command_id)
        if outcome is not None:
            return outcome_result(command_id, outcome)
        sent = self._pending.get(command_id)
        if sent is None:
            raise ProblemError(
                404,
                "not-found",
                "Not found",
                f"no outcome for command {command_id} in the log, and this API has not sent it "
                "since it started",
                command_id=command_id,
            )
        return pending_result(sent)

    def remember(self, sent: commands.Sent) -> None:
        """Keep a command sent without an outcome, so polling it says "pending"."""
        self._pending[sent.id] = sent
        while len(self._pending) > _PENDING_LIMIT:
            self._pending.popitem(last=False)

    def _settle(self, event: Mapping[str, Any], *, start_seq: int) -> None:
        if len(self._settling) >= _SETTLE_LIMIT:
            logger.warning("too many webhook commands awaiting outcomes", command_id=event["id"])
            return
        work = webhooks.settle(self.log, event, start_seq=start_seq, within=SETTLE_WITHIN)
        task = asyncio.create_task(_quietly(work, str(event["id"])))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def close(self) -> None:
        """Stop waiting for outcomes (at shutdown)."""
        await cancel_and_wait(list(self._settling))


async def _quietly(work: Coroutine[Any, Any, object], command_id: str) -> None:
    # A background task's failure has no caller to go to: logged, not raised into the loop.
    try:
        await work
    except Exception as exc:
        logger.warning(
            "waiting for a webhook command's outcome failed",
            command_id=command_id,
            error=str(exc) or type(exc).__name__,
        )


async def send_command(
    log: EventLog, event: Mapping[str, Any], within: float | None
) -> tuple[Sent, Issued | None]:
    """Send `event`; with `within`, wait that long for its outcome (and the events it caused)."""
    if within is None:
        return await commands.send(log, event), None
    sent, issued = await commands.send_and_wait(log, event, within=within, with_caused=True)
    if issued is not None:
        # A webhook's removal deletes its secret, as `swarm webhook rm` does.
        await webhooks.keep_books(log, event, issued.outcome)
    return sent, issued


def pending_result(sent: Sent) -> CommandResult:
    return CommandResult(
        command_id=sent.id,
        type=sent.type,
        status="pending",
        command_seq=sent.seq,
        duplicate=sent.duplicate,
    )


def invalid_command(exc: ClientError, *, command_id: str | None = None) -> ProblemError:
    """A command the client layer refused to build, as a 422 problem; nothing was sent.

    Field locations are relative to the command's data, which request bodies mirror.
    """
    return ProblemError(
        422,
        "invalid-command",
        "Invalid command",
        exc.message,
        errors=[FieldProblem(f"body.{e.loc}", e.msg, e.type) for e in exc.errors],
        command_id=command_id,
    )


def too_large(exc: TooLarge, *, command_id: str | None = None) -> ProblemError:
    return ProblemError(413, "too-large", "Command too large", exc.message, command_id=command_id)


def result_of(issued: Issued) -> CommandResult:
    result = outcome_result(issued.sent.id, issued.outcome)
    caused = [
        CausedEvent(id=e.id, seq=e.seq, type=e.type, subject=e.subject) for e in issued.caused
    ]
    return result.model_copy(
        update={
            "type": issued.sent.type,
            "command_seq": issued.sent.seq,
            "duplicate": issued.sent.duplicate,
            "events": caused,
            "agent_id": issued.deployed_agent(),
        }
    )


def outcome_result(command_id: str, outcome: Outcome) -> CommandResult:
    data = (outcome.body or {}).get("data")
    command_type = data.get("command_type") if isinstance(data, dict) else None
    return CommandResult(
        command_id=command_id,
        type=command_type if isinstance(command_type, str) else None,
        status="accepted" if outcome.accepted else "rejected",
        outcome_seq=outcome.seq,
        outcome=outcome.body,
    )


def rejection(outcome: Outcome, *, command_id: str, what: str) -> ProblemError:
    """A rejected command as a problem: 422 for a malformed one, 404 for a missing target, else
    409 (the state of things, a quota or a policy refused it)."""
    said = commands.rejection_of(outcome)
    rule = said.rule or ""
    # A command the Hive could not decode comes back with field errors and no rule.
    malformed = rule in _INVALID_RULES or (not rule and said.errors)
    status = 422 if malformed else 404 if rule == "not_found" else 409
    return ProblemError(
        status,
        "rejected",
        "Command rejected",
        f"{what} rejected: {said.reason}",
        errors=said.errors,
        rule=said.rule,
        command_id=command_id,
    )


def nats_unavailable(exc: BaseException) -> ProblemError:
    """NATS failing to answer a read the API makes itself (not through the client's verbs)."""
    return ProblemError(503, "unavailable", "Swarm unavailable", f"NATS did not answer: {exc}")
