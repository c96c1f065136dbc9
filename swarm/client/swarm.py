"""One handle on a Swarm stack for programs, the CLI and the HTTP API alike: `Swarm`.

    async with Swarm.connect("nats://127.0.0.1:4222", identity="user:ann") as swarm:
        issued = await swarm.agents.scale("default", "echo", replicas=3)
        for agent in await swarm.agents.list():
            print(agent.name, agent.status)

Shaped like `httpx.AsyncClient` and temporal's `Client`: one object per connection, verbs grouped
by what they act on (`agents`, `namespaces`, `pods`), typed answers (`schemas.views`, `Issued`),
one error type (`ClientError`) whose `code` says what kind of failure it was. A command verb
checks its command exactly as the Hive will decode it before anything is sent, and connecting
is lazy (the first verb that needs the server connects), so a mistake is reported without a
server, the way `swarm` reports a typo before looking for a stack.

A command's outcome comes back as `Issued`, accepted or rejected alike: rejection is an answer,
not a failure of the call (`Issued.rejection()` reads why). An outcome that does not come within
the timeout raises `NoOutcome`, which names the command sent (it stays queued for the Hive);
`timeout=0` sends without waiting. Reads reflect everything in the log when they began.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from schemas import Payload, commands
from swarm.client import commands as sending
from swarm.client.commands import DEFAULT_SOURCE, Issued, NoOutcome
from swarm.client.errors import INVALID, UNAVAILABLE, ClientError
from swarm.client.modules import with_module_kind
from swarm.client.queries import HiveQueries, QueryFailed
from swarm.kernel.eventlog import EventLog, EventLogError

if TYPE_CHECKING:
    from schemas.views import AgentDetailView, AgentView, GrantView, NamespaceView, PodView
    from swarm.client.timeline import Filters, LogEntry
    from swarm.client.timetravel import Change, Point, Snapshot
    from swarm.client.verify import Report
    from swarm.kernel.settings import Settings

__all__ = ["DEFAULT_TIMEOUT", "Agents", "Namespaces", "Pods", "Swarm", "Timeline", "TooLarge"]

#: How long a command verb waits for its outcome unless told otherwise.
DEFAULT_TIMEOUT = 10.0

#: Opens the connection a `Swarm` uses, on first need.
Opener = Callable[[], Awaitable[EventLog]]


class TooLarge(ClientError):
    """The command is larger than the NATS server takes in one message; nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the command is {size:,} bytes; NATS takes at most {limit:,}",
            code=INVALID,
            hint="push large modules with `swarm module push` and deploy them by sha256",
        )
        self.size = size
        self.limit = limit


class Swarm:
    """A connection to one stack, with its verbs; `async with` closes what it opened.

    Given an `EventLog`, it uses it and leaves closing it to its owner; given an opener (as
    `connect` does), it opens on first need and closes on `aclose`.
    """

    def __init__(
        self,
        log: EventLog | Opener,
        *,
        identity: str,
        source: str = DEFAULT_SOURCE,
        timeout: float = DEFAULT_TIMEOUT,
        on_stale: Callable[[str], None] | None = None,
        caused: bool = False,
    ) -> None:
        self.identity = identity
        #: Outcomes come with the events their commands caused (one more read of the log each).
        self.caused = caused
        self.source = source
        self.timeout = timeout
        self._on_stale = on_stale
        self._log = log if isinstance(log, EventLog) else None
        self._opener = None if isinstance(log, EventLog) else log
        self._opening = asyncio.Lock()
        self.agents = Agents(self)
        self.namespaces = Namespaces(self)
        self.access = Access(self)
        self.pods = Pods(self)
        self.timeline = Timeline(self)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        settings: Settings | None = None,
        identity: str | None = None,
        source: str = DEFAULT_SOURCE,
        timeout: float = DEFAULT_TIMEOUT,
        wait: float = 5.0,
        reconnects: int = -1,
        name: str = "swarm-client",
    ) -> Swarm:
        """A client of the NATS server at `url`, connecting on first use (`wait` s at most).

        `identity` defaults to the settings' (`SWARM_IDENTITY`); the settings' NATS credentials
        (`SWARM_NATS_CREDENTIALS`) connect and sign its commands; with the Hive's public key in
        the settings, only outcomes the Hive sealed are taken. A lost connection is retried
        `reconnects` times (-1: without limit, as a long-lived program wants; a one-shot tool
        that must not hang in silence passes a small number).
        """
        from swarm.kernel.connection import CannotConnect, connect_nats, describe
        from swarm.kernel.settings import Settings

        chosen = settings or Settings()

        async def opener() -> EventLog:
            credentials = chosen.nats_credentials
            try:
                nc = await connect_nats(
                    url, name=name, timeout=wait, reconnects=reconnects, credentials=credentials
                )
            except CannotConnect as exc:
                raise ClientError(
                    f"cannot reach NATS at {url}: {describe(exc.cause)}", code=UNAVAILABLE
                ) from None
            # Its commands are signed with the same key it connected with.
            return EventLog(nc, chosen, timeout=wait, credentials=credentials)

        return cls(opener, identity=identity or chosen.identity, source=source, timeout=timeout)

    async def log(self) -> EventLog:
        """The connection, opened now if this is its first use."""
        if self._log is not None:
            return self._log
        async with self._opening:
            if self._log is None:
                assert self._opener is not None
                self._log = await self._opener()
        return self._log

    async def aclose(self) -> None:
        """Close the connection if this client opened it; safe to call twice."""
        log, opened = self._log, self._opener is not None
        if opened and log is not None:
            self._log = None
            await log.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- reads ------------------------------------------------------------------------------------

    async def queries(self) -> HiveQueries:
        """A query client for one read: each remembers the `applied_seq` of its last answer,
        which concurrent reads must not overwrite for each other."""
        return HiveQueries(await self.log(), on_stale=self._on_stale)

    async def floor(self) -> int:
        """The log position a read must reflect: everything written before it began."""
        log = await self.log()
        try:
            return await sending.read_floor(log)
        except (EventLogError, TimeoutError) as exc:
            raise ClientError(f"NATS did not answer: {exc}", code=UNAVAILABLE) from None

    # -- commands ---------------------------------------------------------------------------------

    def command(self, payload: type[Payload], data: Mapping[str, Any]) -> dict[str, Any]:
        """The CloudEvent of a command from this client, checked as the Hive will decode it."""
        return sending.prepare(payload, data, identity=self.identity, source=self.source)

    async def send(
        self,
        event: Mapping[str, Any],
        *,
        timeout: float | None = None,
        with_caused: bool = False,
    ) -> Issued:
        """Send a prepared command and wait up to `timeout` s (0: not at all) for its outcome."""
        log = await self.log()
        size, limit = len(sending.encode(event)), log.max_payload
        if limit and size > limit:
            raise TooLarge(size, limit)
        within = self.timeout if timeout is None else timeout
        if within <= 0:
            raise NoOutcome(await sending.send(log, event), within)
        sent, issued = await sending.send_and_wait(
            log, event, within=within, with_caused=with_caused or self.caused
        )
        if issued is None:
            raise NoOutcome(sent, within)
        return issued

    async def execute(
        self,
        payload: type[Payload],
        data: Mapping[str, Any],
        *,
        timeout: float | None = None,
        with_caused: bool = False,
    ) -> Issued:
        """Check, send and await one command: what every command verb does."""
        event = self.command(payload, data)
        return await self.send(event, timeout=timeout, with_caused=with_caused)


class _Verbs:
    """A group of a client's verbs (`swarm.agents`, `swarm.pods`, ...) on its connection."""

    def __init__(self, swarm: Swarm) -> None:
        self._swarm = swarm

    async def _read(self) -> tuple[HiveQueries, int]:
        """A query client for one read, and the log position the read must reflect (everything
        written before it began)."""
        swarm = self._swarm
        queries = await swarm.queries()
        return queries, await swarm.floor()


class Agents(_Verbs):
    """`swarm.agents`: deploy, change and read agents."""

    async def list(self, namespace: str | None = None) -> list[AgentView]:
        """Agents (not deleted) of one namespace, or of every one."""
        queries, floor = await self._read()
        return await queries.agent_views(namespace, at_least=floor)

    async def get(self, namespace: str, name: str) -> AgentDetailView:
        """One agent, with its replicas, versions, rollout and health."""
        queries, floor = await self._read()
        return await queries.agent_detail(namespace, name, at_least=floor)

    async def deploy(
        self,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
        *,
        replicas: int | None = None,
        autoscale: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Issued:
        """Deploy a new agent; the events it caused come back with the outcome (the
        `agent.deployed` one names the new agent's id)."""
        data: dict[str, Any] = {"namespace": namespace, "name": name, "spec": dict(spec)}
        if replicas is not None:
            data["replicas"] = replicas
        if autoscale is not None:
            data["autoscale"] = dict(autoscale)
        return await self._with_module(commands.DeployAgent, data, timeout, with_caused=True)

    async def scale(
        self, namespace: str, name: str, *, replicas: int, timeout: float | None = None
    ) -> Issued:
        data = {"namespace": namespace, "name": name, "replicas": replicas}
        return await self._swarm.execute(commands.ScaleAgent, data, timeout=timeout)

    async def rollout(
        self,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
        *,
        max_surge: int | None = None,
        timeout: float | None = None,
    ) -> Issued:
        """Roll out a new version: new replicas start before old ones stop."""
        data: dict[str, Any] = {"namespace": namespace, "name": name, "spec": dict(spec)}
        if max_surge is not None:
            data["max_surge"] = max_surge
        return await self._with_module(commands.RolloutAgent, data, timeout)

    async def rollback(
        self,
        namespace: str,
        name: str,
        *,
        to_version: str | None = None,
        timeout: float | None = None,
    ) -> Issued:
        """Roll back to `to_version`, or to the previous version."""
        data: dict[str, Any] = {"namespace": namespace, "name": name}
        if to_version is not None:
            data["to_version"] = to_version
        return await self._swarm.execute(commands.RollbackAgent, data, timeout=timeout)

    async def stop(
        self,
        namespace: str,
        name: str,
        *,
        reason: str = "stopped by request",
        timeout: float | None = None,
    ) -> Issued:
        """Stop every replica; the agent and its versions are kept."""
        data = {"namespace": namespace, "name": name, "reason": reason}
        return await self._swarm.execute(commands.StopAgent, data, timeout=timeout)

    async def delete(self, namespace: str, name: str, *, timeout: float | None = None) -> Issued:
        """Stop every replica and remove the agent (its events stay in the log)."""
        data = {"namespace": namespace, "name": name}
        return await self._swarm.execute(commands.DeleteAgent, data, timeout=timeout)

    async def autoscale(
        self,
        namespace: str,
        name: str,
        policy: Mapping[str, Any] | None,
        *,
        timeout: float | None = None,
    ) -> Issued:
        """Set the agent's autoscaling policy, or with None remove it; the autoscaler brings the
        replica count within the new bounds on its next pass."""
        data = {
            "namespace": namespace,
            "name": name,
            "autoscale": None if policy is None else dict(policy),
        }
        return await self._swarm.execute(commands.AutoscaleAgent, data, timeout=timeout)

    async def quarantine(
        self, namespace: str, name: str, *, reason: str, timeout: float | None = None
    ) -> Issued:
        """Stop giving the agent messages and tasks (its replicas keep running)."""
        from schemas.healing import QuarantineAgent

        return await self._by_id(QuarantineAgent, namespace, name, reason, timeout)

    async def release(
        self, namespace: str, name: str, *, reason: str, timeout: float | None = None
    ) -> Issued:
        """Give a quarantined agent messages and tasks again."""
        from schemas.healing import ReleaseAgent

        return await self._by_id(ReleaseAgent, namespace, name, reason, timeout)

    async def _by_id(
        self,
        payload: type[Payload],
        namespace: str,
        name: str,
        reason: str,
        timeout: float | None,
    ) -> Issued:
        # These commands name the agent by id: checked first (with a stand-in id), then the id
        # is looked up, so a bad reason needs no server.
        swarm = self._swarm
        swarm.command(payload, {"agent_id": "0" * 26, "reason": reason})
        queries, floor = await self._read()
        agent = await queries.agent(namespace, name, at_least=floor)
        data = {"agent_id": agent["agent_id"], "reason": reason}
        return await swarm.execute(payload, data, timeout=timeout)

    async def _with_module(
        self,
        payload: type[Payload],
        data: dict[str, Any],
        timeout: float | None,
        *,
        with_caused: bool = False,
    ) -> Issued:
        swarm = self._swarm
        # Checked before the module store is asked: a mistake needs no server.
        swarm.command(payload, data)
        spec = await with_module_kind(await swarm.log(), data["spec"])
        event = swarm.command(payload, {**data, "spec": spec})
        return await swarm.send(event, timeout=timeout, with_caused=with_caused)


class Namespaces(_Verbs):
    """`swarm.namespaces`: create, change and read namespaces (with their quotas)."""

    async def list(self) -> list[NamespaceView]:
        queries, floor = await self._read()
        return await queries.namespace_views(at_least=floor)

    async def create(
        self,
        name: str,
        *,
        quota: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Issued:
        data: dict[str, Any] = {"name": name}
        if quota is not None:
            data["quota"] = dict(quota)
        return await self._swarm.execute(commands.CreateNamespace, data, timeout=timeout)

    async def quota_with(self, name: str, changes: Mapping[str, float | None]) -> dict[str, Any]:
        """The namespace's quota with `changes` written over it (None: that limit unlimited).

        An update replaces the whole quota, so the limits not changed are read first. Two
        updates at the same moment can overwrite each other's limits; a namespace's quota is
        an administrator's setting, rarely edited concurrently.
        """
        for namespace in await self.list():
            if namespace.name == name:
                merged = {**namespace.quota.model_dump(), **changes}
                return {key: value for key, value in merged.items() if value is not None}
        raise QueryFailed(
            f"namespace {name} not found",
            error_code="not_found",
            hint=f"`swarm namespace ls` lists them; `swarm namespace create {name}`",
        )

    async def update(
        self, name: str, *, quota: Mapping[str, Any], timeout: float | None = None
    ) -> Issued:
        """Replace the namespace's quota (`quota_with` keeps the limits not given)."""
        data = {"name": name, "quota": dict(quota)}
        return await self._swarm.execute(commands.UpdateNamespace, data, timeout=timeout)


class Access(_Verbs):
    """`swarm.access`: who may act in which namespace (`swarm.domain.policy.check_access`)."""

    async def list(self) -> list[GrantView]:
        queries, floor = await self._read()
        return await queries.grant_views(at_least=floor)

    async def grant(
        self,
        user: str,
        role: str,
        *,
        namespace: str | None = None,
        timeout: float | None = None,
    ) -> Issued:
        """Give `user` `role` in `namespace` (None: every namespace)."""
        data = {"user": user, "role": role, "namespace": namespace}
        return await self._swarm.execute(commands.GrantAccess, data, timeout=timeout)

    async def revoke(
        self, user: str, *, namespace: str | None = None, timeout: float | None = None
    ) -> Issued:
        data = {"user": user, "namespace": namespace}
        return await self._swarm.execute(commands.RevokeAccess, data, timeout=timeout)


class Pods(_Verbs):
    """`swarm.pods`: the pods the Hive knows, with their capacity and replicas."""

    async def list(self) -> list[PodView]:
        queries, floor = await self._read()
        return await queries.pod_views(at_least=floor)


class Timeline(_Verbs):
    """`swarm.timeline`: the event log itself, read filtered and in order, the Hive's state at a
    point of it, the difference between two points, and what is wrong with it."""

    async def read(
        self, streams: Sequence[str], filters: Filters, *, follow: bool = False
    ) -> AsyncIterator[LogEntry]:
        """The entries of `streams` that match, merged by time; with `follow`, then live."""
        from contextlib import aclosing

        from swarm.client.timeline import read

        log = await self._swarm.log()
        async with aclosing(read(log, streams, filters, follow=follow)) as entries:
            async for entry in entries:
                yield entry

    async def state_at(self, point: Point) -> Snapshot:
        """The Hive's state as the log held it at `point` (folded here, not asked of the Hive)."""
        from swarm.client.timetravel import fold_until

        (snapshot,) = await fold_until(await self._swarm.log(), [point])
        return snapshot

    async def diff(self, first: Point, second: Point) -> tuple[Snapshot, Snapshot, list[Change]]:
        """The states at two points, the first not later than the second, and what changed."""
        from swarm.client.timetravel import diff_states, fold_pair

        before, after = await fold_pair(await self._swarm.log(), first, second)
        return before, after, diff_states(before.state, after.state)

    async def verify(self, *, grace: float = 30.0) -> Report:
        """Gaps, undecodable entries, commands without exactly one outcome (older than `grace`
        seconds), events that do not fold, causation that points nowhere."""
        from swarm.client.verify import verify

        return await verify(await self._swarm.log(), grace=grace)
