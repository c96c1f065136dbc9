"""What a request may read and send, by whom it acts for (`auth.Caller`): `Acting`.

The owner's token reaches everything, as the API's own principal does. A user's token:

* **commands** are sent signed with the user's own key and stamped `user:<name>`
  (`Gateway.client_for`), and the Hive alone judges them by the user's roles: a refusal (rule
  `access`) is a `403` with the Hive's reason (`service.rejection`);
* **a read of one namespace** (an agent, its logs, the agents behaving like it) needs a role
  there, any (a viewer reads): `403` otherwise, whether or not what it names exists, so a user
  learns nothing of namespaces it may not read;
* **listings** (agents, namespaces) hold only the namespaces where the user holds a role;
* **reads that span every namespace** (pods, the market, the event log and its stream, the
  timeline, traces, webhooks and their deliveries) need a role in every namespace (`-A`);
* **queueing a task** makes agents act, and a queue belongs to no namespace: it needs what
  messaging on a topic does (`policy.MESSAGE_ROLE` in every namespace);
* **a command's outcome** is the user's to read when the command was its own (it claimed
  `user:<name>`, which only its key or the owner's may: `policy.may_claim`), or with a role in
  every namespace.

The grants are the Hive's (`swarm.query.access.list`), asked once per request that needs them,
so a role given or revoked counts from the next request; the rule and its refusal's words are
the domain's (`policy.Reader`, `policy.role_refusal`), which the Hive applies to a user's own
queries on NATS too. Reads go over the API's own connection, whose queries the Hive answers in
full (the API is a service): these limits are the API's.

Every `/v1` route of a user's token needs a role in every namespace unless the route is marked
as judging access itself (`routes.common.judged`: commands, and the reads above that check a
namespace or filter), so a route added without a thought for users fails closed.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.specs import AccessRole
from swarm.client.access import READ_ROLE, Grant, Reader, role_refusal
from swarm.client.commands import Rule
from swarm.client.eventlog import EventLog
from swarm.client.swarm import Swarm
from swarm.gateway.auth import Caller
from swarm.gateway.problems import ProblemError


class Acting:
    """One request's caller, with the client that acts for it and the caller's grants (asked
    of the Hive at most once per request)."""

    def __init__(self, caller: Caller, swarm: Swarm, log: EventLog) -> None:
        self.caller = caller
        #: The client the request acts through: its commands carry the caller's identity and
        #: signature.
        self.swarm = swarm
        #: The same connection, signing as the caller (for commands sent whole).
        self.log = log
        self._grants: list[Grant] | None = None

    @property
    def identity(self) -> str:
        """What the request's commands claim (`user:<name>` for a user)."""
        return self.swarm.identity

    @property
    def limited(self) -> bool:
        """Whether the caller is held to roles (a user's token; not the owner's)."""
        return self.caller.user is not None

    async def grants(self) -> list[Grant]:
        if self._grants is None:
            views = await self.swarm.access.list()
            self._grants = [Grant(g.user, g.namespace, g.role) for g in views]
        return self._grants

    async def require(
        self, namespace: str | None, what: str, *, needed: AccessRole = READ_ROLE
    ) -> None:
        """Raise a `403` problem unless the caller holds `needed` (or more) in `namespace`
        (None: in every namespace); `what` names what it wanted ("read namespace team")."""
        user = self.caller.user
        if user is None:
            return
        refused = role_refusal(await self.grants(), user, namespace, needed, what)
        if refused is not None:
            raise ProblemError(403, "forbidden", "Forbidden", refused, rule=Rule.ACCESS)

    async def readable(self) -> Callable[[str], bool]:
        """Whether the caller may read a namespace, by its name."""
        reader = Reader(self.caller.user)
        if reader.user is None:
            return lambda _namespace: True
        grants = await self.grants()
        return lambda namespace: reader.reads(grants, namespace)


__all__ = ["READ_ROLE", "Acting"]
