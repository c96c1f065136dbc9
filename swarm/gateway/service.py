"""What the routes share: the client (`swarm.client.swarm.Swarm`) each caller acts through, and
turning what it answers into HTTP.

The routes call the client's verbs exactly as the CLI does (`acting.swarm.agents.scale(...)`);
commands given whole (`POST /v1/commands`) and webhook commands, whose secret depends on their
outcome (`swarm.client.webhooks`), are sent here. This module only turns results into answers.

**Acting for a user.** A request with a user's token (`swarm.gateway.auth`) acts through a
client of its own (`client_for`): the API's one NATS connection, seen through a view that signs
the commands appended through it with the user's key (`EventLog.signing_as`), stamped
`user:<name>`. The Hive then takes the command as the user's and applies the user's roles, as it
would to the same command sent by `swarm` with the user's seed. One view per user key, made on
the user's first request and kept (a rotated key is a new one), rather than a NATS connection
per user: a connection per user would cost a TLS handshake and a socket per user and bring
nothing more, since what the Hive trusts is the signature, not the connection a command came
on, and the reads are limited by the API itself (`swarm.gateway.access`). The price is that the
API holds every user's seed (it reads them from the principals' directory); it could act as any
user before too (its own key may claim any `user:` identity), so its reach is not widened, and
the users' is narrowed to their roles.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any

import structlog
from fastapi import Request
from fastapi.responses import JSONResponse

from schemas import Payload, names
from swarm.client import commands, webhooks
from swarm.client.commands import Issued, NoOutcome, Outcome, Rule, Sent
from swarm.client.errors import INVALID, ClientError, FieldProblem
from swarm.client.eventlog import EventLog, NotFound
from swarm.client.lifecycle import cancel_and_wait
from swarm.client.swarm import Swarm, TooLarge
from swarm.gateway.access import Acting
from swarm.gateway.auth import Caller
from swarm.gateway.models import CausedEvent, CommandResult
from swarm.gateway.problems import ProblemError
from swarm.gateway.settings import GatewaySettings

#: CloudEvents `source` of the commands the API sends.
API_SOURCE = "swarm-api"
#: Commands sent with `?wait=false` remembered as pending, so polling them says "pending" rather
#: than "not found" until their outcome is in the log.
_PENDING_LIMIT = 10_000
#: Rules whose rejection means the request itself was wrong, not the state of things.
_INVALID_RULES = frozenset({Rule.INVALID, Rule.TYPE, Rule.SUBJECT})
#: Rules whose rejection means the caller may not do it: who it is, not what it sent.
_FORBIDDEN_RULES = frozenset({Rule.ACCESS, Rule.IDENTITY, Rule.SIGNATURE})
#: How many users' clients are kept (`Gateway.client_for`); past it the oldest is made again.
_CLIENTS_LIMIT = 1000

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
        #: The client of the owner's token: the API's own identity and key.
        self.swarm = self._client(log, settings.identity)
        #: Postgres, where the Observer keeps behaviour vectors (`SWARM_DATABASE_URL`); optional.
        self.database_url = database_url
        #: Commands sent without an outcome yet, and the user that sent each (None: the owner).
        self._pending: OrderedDict[str, tuple[commands.Sent, str | None]] = OrderedDict()
        self._settling: set[asyncio.Task[None]] = set()
        #: Users' clients by public key (see the module).
        self._clients: OrderedDict[str, Swarm] = OrderedDict()

    def _client(self, log: EventLog, identity: str) -> Swarm:
        return Swarm(
            log,
            identity=identity,
            source=API_SOURCE,
            timeout=self.settings.command_timeout,
            caused=True,
        )

    def client_for(self, caller: Caller) -> Swarm:
        """The client `caller`'s requests act through: the API's own for the owner's token; for
        a user's, one that signs with the user's key and claims `user:<name>` (see the module)."""
        if caller.user is None or caller.signer is None:
            return self.swarm
        client = self._clients.get(caller.public_key)
        if client is None:
            view = self.log.signing_as(caller.signer)
            client = self._clients[caller.public_key] = self._client(view, f"user:{caller.user}")
            while len(self._clients) > _CLIENTS_LIMIT:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(caller.public_key)
        return client

    async def acting(self, caller: Caller) -> Acting:
        """What one request of `caller` acts through (its own, per request: it keeps the
        caller's grants for that request alone)."""
        client = self.client_for(caller)
        return Acting(caller, client, await client.log())

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
        acting: Acting,
        event: Mapping[str, Any],
        *,
        wait: bool,
        timeout: float | None,
        new_webhook: webhooks.NewWebhook | None = None,
    ) -> tuple[Sent, Issued | None]:
        """Send a command (`new_webhook`'s with its secret stored first) as `acting`'s caller
        and, with `wait`, wait for its outcome; a command answered later is remembered as
        pending.

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
                acting.log, new_webhook, within=within, with_caused=True
            )
        else:
            sent, issued = await send_command(acting.log, event, within)
        if issued is None:
            self.remember(sent, acting.caller)
            if settles:
                self._settle(event, start_seq=1 if sent.duplicate else start)
        return sent, issued

    async def execute(
        self,
        request: Request,
        acting: Acting,
        event: Mapping[str, Any],
        *,
        wait: bool,
        timeout: float | None,
        what: str,
    ) -> JSONResponse:
        """Send a whole command (`event`) as `acting`'s caller, as `answer` does a client verb."""
        self.check_size(event)

        async def sending() -> Issued:
            sent, issued = await self.send(acting, event, wait=wait, timeout=timeout)
            if issued is None:
                raise NoOutcome(sent, self.within(wait, timeout) or 0.0)
            return issued

        return await self.answer(request, acting.caller, sending(), what=what)

    async def answer(
        self, request: Request, caller: Caller, command: Awaitable[Issued], *, what: str
    ) -> JSONResponse:
        """Await a command verb; answer its outcome (a rejection is a problem), or 202.

        A command whose outcome does not come within the timeout is answered 202 too: it stays
        queued for the Hive, and `GET /v1/commands/{id}` tells when it is decided.
        """
        try:
            issued = await command
        except NoOutcome as exc:
            # Not answered (yet): accepted for processing, as HTTP 202 says; poll the Location.
            self.remember(exc.sent, caller)
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

    async def lookup(self, acting: Acting, command_id: str) -> CommandResult:
        """A command's outcome, or "pending" for one this API sent that has none yet; for a
        user, of a command it sent (else it needs a role in every namespace)."""
        outcome = await commands.find_outcome(self.log, command_id)
        if outcome is not None:
            if acting.limited and not await self._claimed_by(outcome, command_id, acting.identity):
                await acting.require(None, f"read the outcome of command {command_id}")
            return outcome_result(command_id, outcome)
        sent, sender = self._pending.get(command_id, (None, None))
        if sent is not None and acting.limited and sender != acting.caller.user:
            await acting.require(None, f"read the outcome of command {command_id}")
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

    async def _claimed_by(self, outcome: Outcome, command_id: str, identity: str) -> bool:
        """Whether command `command_id`, which `outcome` answers, claimed `identity` (read from
        SWARM_COMMANDS, where the outcome says it is)."""
        data = (outcome.body or {}).get("data")
        seq = data.get("command_seq") if isinstance(data, dict) else None
        if not isinstance(seq, int):
            return False  # an outcome written before it named its command's place
        try:
            stored = await self.log.message(names.STREAM_COMMANDS, seq)
        except NotFound:
            return False
        try:
            body = json.loads(stored.data)
        except ValueError:
            return False
        return (
            isinstance(body, dict)
            and body.get("id") == command_id
            and body.get("identity") == identity
        )

    def remember(self, sent: commands.Sent, caller: Caller) -> None:
        """Keep a command sent without an outcome, so polling it says "pending"."""
        self._pending[sent.id] = (sent, caller.user)
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
    """A rejected command as a problem: 422 for a malformed one, 404 for a missing target, 403
    when its sender may not send it (a user without the role: rule `access`), else 409 (the
    state of things, a quota or a policy refused it)."""
    said = commands.rejection_of(outcome)
    rule = said.rule or ""
    # A command the Hive could not decode comes back with field errors and no rule.
    malformed = rule in _INVALID_RULES or (not rule and said.errors)
    status = (
        422
        if malformed
        else 404
        if rule == Rule.NOT_FOUND
        else 403
        if rule in _FORBIDDEN_RULES
        else 409
    )
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
