"""A real nats-server and an in-process Hive replica for one test, and ways to ask them things."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import Payload, command, commands, names
from schemas.specs import Capacity
from services.hive.config import HiveSettings
from services.hive.service import Hive
from swarm.devstack.embedded import free_port
from swarm.devstack.principals import ADMIN, load
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.settings import Settings
from tests.helpers.history import spec
from tests.helpers.servers import own_nats
from tests.helpers.waiting import wait_until

#: How long `Stack.query` waits for the Hive (see there).
QUERY_TIMEOUT_S = 15.0


@dataclass
class Stack:
    url: str
    client: EventLog
    root: Path
    hive: Hive | None = None
    hive_task: asyncio.Task[None] | None = None
    hive_starts: int = 0
    #: The principals whose signed commands alone the Hive takes (`HiveSettings`); None: any.
    principals_file: Path | None = None
    #: With principals: a connection of the stack's owner (the listing's first admin), which
    #: signs the queries `query` asks, as the Hive then answers only its principals' queries.
    owner: EventLog | None = None
    #: The key the Hive connects with (a server that admits principals alone); None: none.
    hive_credentials: Path | None = None

    async def start_hive(self) -> None:
        """One Hive replica in this process. Each start gets a new Raft directory: the replica
        rebuilds its state from the log, as a replacement replica would."""
        self.hive_starts += 1
        hive = self.hive = Hive(
            Settings(nats_url=self.url, nats_credentials=self.hive_credentials),
            HiveSettings(
                raft_self=f"127.0.0.1:{free_port()}",
                raft_password="secret-123",
                data_dir=self.root / f"hive-{self.hive_starts}",
                principals_file=self.principals_file,
            ),
        )
        self.hive_task = asyncio.create_task(hive.run())

        async def leading() -> bool:
            return bool(hive.describe().get("is_leader")) and hive.processor is not None

        await wait_until(leading, what="Hive leadership")

    async def stop_hive(self) -> None:
        if self.hive is not None and self.hive_task is not None:
            self.hive.stop()
            await asyncio.wait_for(self.hive_task, 10)
        self.hive = self.hive_task = None

    async def send(self, payloads: list[tuple[Payload, str]]) -> None:
        """Send commands as (payload, identity)."""
        await self.client.append_batch(
            [AppendRequest.of(command(p, source="test", identity=who)) for p, who in payloads]
        )

    async def register_pods(self, pods: dict[str, tuple[int, int]]) -> None:
        """pod id -> (memory MB, slots). Leases are long: no pod sends heartbeats here."""
        await self.send(
            [
                (
                    commands.RegisterPod(
                        pod_id=pod_id,
                        capacity=Capacity(memory_mb=memory, fuel_per_s=10**12, slots=slots),
                        lease_s=3600,
                    ),
                    f"pod:{pod_id}",
                )
                for pod_id, (memory, slots) in pods.items()
            ]
        )

    async def deploy(self, names_and_sizes: list[tuple[str, int, int]]) -> None:
        """(agent name, replicas, memory MB per replica)."""
        await self.send(
            [
                (commands.DeployAgent(name=name, spec=spec(memory=memory), replicas=n), "user:test")
                for name, n, memory in names_and_sizes
            ]
        )

    async def query(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        # An in-process Hive answers in milliseconds, but beside busy loops its loop can be
        # starved for seconds (2 s ran out in a stress run): a query is not what tests judge.
        # nats-py's own request (its errors, which tests catch) unless signed by the owner.
        ask = self.owner.request if self.owner is not None else self.client.nc.request
        reply = await ask(subject, json.dumps(body or {}).encode(), timeout=QUERY_TIMEOUT_S)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def pods(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = (await self.query(names.QUERY_PODS_LIST))["pods"]
        return pods

    async def placed(self) -> int:
        return sum(p["replicas"] for p in await self.pods())

    async def events_named(self, event: str) -> list[dict[str, Any]]:
        """The events on the log whose subject names `event` (`swarm.evt.<aggregate>.<id>.<event>`),
        decoded, in log order."""
        found = []
        async for d in self.client.replay(names.STREAM_EVENTS):
            parts = names.parse_event_subject(d.subject)
            if parts and parts[2] == event:
                found.append(json.loads(d.data))
        return found

    async def scheduled_per_replica(self) -> Counter[str]:
        """How many `replica_scheduled` events the log holds for each replica."""
        scheduled = await self.events_named("replica_scheduled")
        return Counter(e["data"]["replica_id"] for e in scheduled)

    async def rejections(self, command_type: str = commands.ProposePlacement.TYPE) -> Counter[str]:
        """Rules of the rejected commands of `command_type` (placement proposals) on the log."""
        rules: Counter[str] = Counter()
        async for d in self.client.replay(names.STREAM_EVENTS):
            parts = names.parse_event_subject(d.subject)
            if parts and parts[0] == names.OUTCOME_AGGREGATE and parts[2] == names.OUTCOME_REJECTED:
                data = json.loads(d.data)["data"]
                if data.get("command_type") == command_type:
                    rules[data.get("rule") or "?"] += 1
        return rules


@asynccontextmanager
async def running_stack(
    root: Path, *, principals_file: Path | None = None, authorize: bool = False
) -> AsyncIterator[Stack]:
    """A fresh nats-server (so no other test's streams or consumers leak in) and one Hive (taking
    only commands signed by the principals `principals_file` lists, when given). `authorize`:
    the server admits those principals alone, with their roles' permissions (as `swarm up`'s);
    `client` is then the owner's, and the Hive connects as the listing's first `hive`."""
    listed = list(load(principals_file).values()) if principals_file is not None else []
    if authorize and principals_file is None:
        raise ValueError("a server that admits principals alone needs their listing")
    owner = next((p for p in listed if p.role == ADMIN), None)
    with own_nats(root / "nats", principals_file=principals_file if authorize else None) as url:
        client = await EventLog.connect(
            url, name="test", credentials=owner.seed_file if authorize and owner else None
        )
        stack = Stack(url, client, root, principals_file=principals_file)
        if authorize:
            stack.hive_credentials = next(p.seed_file for p in listed if p.role == "hive")
        try:
            if owner is not None:
                stack.owner = await EventLog.connect(
                    url, name="test-owner", credentials=owner.seed_file, ensure=False
                )
            await stack.start_hive()
            yield stack
        finally:
            await stack.stop_hive()
            if stack.owner is not None:
                await stack.owner.close()
            await stack.client.close()
