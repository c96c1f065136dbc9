"""What the fault scenarios share: real servers and services as processes, a client that keeps
sending commands through a fault, and the audit every scenario ends with.

Used by tests/faults/ and bench/chaos.py alike. Nothing here asserts: a scenario returns a
`ScenarioResult` (numbers and the list of broken promises), the tests assert on it and the
benchmark prints it.

The audit checks what Swarm promises whatever fails (DESIGN.md):

* every command on SWARM_COMMANDS, and every one the client sent, has exactly one outcome;
* no event is on the log twice (CloudEvent ids are unique, one `agent.deployed` per agent);
* the Hive replicas fold the log to the same state (equal digests at the same sequence).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import nats.errors
from nats.aio.client import Client as NATS

from schemas import command, commands, events, names
from schemas.specs import AgentSpec, ModuleRef, Resources
from services.hive.testing import HiveCluster
from swarm.devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    die_with_parent,
)
from swarm.devstack.stack import upgrade_database
from swarm.kernel.eventlog import AppendRequest, EventLog, EventLogError
from tests.helpers.history import WASM
from tests.helpers.waiting import true, wait_until

T = TypeVar("T")

#: A module that is never run: the commands of a burst deploy agents with no replicas.
NOOP_SPEC = AgentSpec(version="v1", module=ModuleRef(inline=WASM))
OUTCOMES = f"{names.EVENTS_PREFIX}.{names.OUTCOME_AGGREGATE}.*.*"
ACCEPTED = "swarm.command.accepted"
DEPLOYED = "swarm.agent.deployed"
CRASHED = "swarm.agent.replica_crashed"
LEADER_ELECTED = events.HiveLeaderElected.TYPE


# --- results -------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """What one run of a scenario measured, and every promise it saw broken (`violations`)."""

    scenario: str
    commands_sent: int = 0
    outcomes_missing: int = 0
    #: Commands with more than one outcome.
    outcomes_duplicated: int = 0
    #: Events stored more than once: repeated CloudEvent ids plus extra `agent.deployed`s.
    events_duplicated: int = 0
    #: Seconds from the fault to the first command accepted after it (by another leader, where
    #: the leader was the fault), or to the first successful write for the database fault.
    recovery_s: float | None = None
    #: The same run's raw recovery of the part that failed, without Swarm on top: the server
    #: accepting connections again, or Raft reporting a new leader.
    baseline_s: float | None = None
    replicas: int = 0
    replicas_agree: bool = False
    violations: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.outcomes_missing == 0
            and self.outcomes_duplicated == 0
            and self.events_duplicated == 0
            and self.replicas_agree
            and self.recovery_s is not None
            and not self.violations
        )

    def to_json(self) -> dict[str, Any]:
        """Every field in the order declared, `ok` after the scenario's name: a field added
        here reaches the chaos bench's report without a second list to keep in step."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"scenario": values.pop("scenario"), "ok": self.ok, **values}

    def explain(self) -> str:
        """Everything at once, for an assertion message."""
        return json.dumps(self.to_json(), indent=2, default=str)


# --- reading the log -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    seq: int
    subject: str
    type: str
    id: str
    source: str
    #: When JetStream stored it (the server's clock).
    stored: datetime
    data: dict[str, Any]

    @property
    def command_id(self) -> str | None:
        """The command this is the outcome of, if it is an outcome."""
        parts = self.subject.split(".")
        if len(parts) == 5 and parts[2] == names.OUTCOME_AGGREGATE:
            return parts[3]
        return None


async def read_log(
    log: EventLog, *, subjects: Sequence[str] = (), start_seq: int | None = None
) -> list[LogEntry]:
    """SWARM_EVENTS as it is now, leniently parsed (a foreign body is kept with empty fields)."""
    entries = []
    async for d in log.replay(names.STREAM_EVENTS, subjects=subjects, start_seq=start_seq):
        try:
            body = json.loads(d.data)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        data = body.get("data")
        entries.append(
            LogEntry(
                d.stream_seq,
                d.subject,
                str(body.get("type", "")),
                str(body.get("id", "")),
                str(body.get("source", "")),
                d.timestamp,
                data if isinstance(data, dict) else {},
            )
        )
    return entries


async def command_ids(log: EventLog) -> set[str]:
    """Ids of every command on SWARM_COMMANDS (from any sender: client, scheduler, pods)."""
    ids = set()
    async for d in log.replay(names.STREAM_COMMANDS):
        with contextlib.suppress(ValueError, KeyError, TypeError):  # not a command: no id
            ids.add(str(json.loads(d.data)["id"]))
    return ids


@dataclass
class Audit:
    commands: set[str]
    outcomes: Counter[str]
    entries: list[LogEntry]

    @property
    def missing(self) -> set[str]:
        return self.commands - set(self.outcomes)

    @property
    def duplicated(self) -> dict[str, int]:
        return {c: n for c, n in self.outcomes.items() if n > 1}

    def events_duplicated(self) -> int:
        ids = Counter(e.id for e in self.entries)
        deployed = Counter(
            (e.data.get("namespace"), e.data.get("name"))
            for e in self.entries
            if e.type == DEPLOYED
        )
        return sum(n - 1 for n in ids.values()) + sum(n - 1 for n in deployed.values())


#: How long the audit waits for outcomes while none arrives, and at most in all. Generous: the
#: scenarios judge that none is lost or doubled; how fast the cluster recovers is
#: `bench/chaos.py`'s measure. Beside busy loops and the rest of the suite, a cluster healing from
#: a partition took 50 s to decide its last commands (leadership moved six times on the starved
#: machine), and another decided ~5 a second for 100 s: waiting while outcomes still come tells
#: a slow cluster from a stuck one.
AUDIT_STALL_S = 45.0
AUDIT_TIMEOUT_S = 150.0


async def audit(
    log: EventLog,
    sent: set[str],
    *,
    timeout: float = AUDIT_TIMEOUT_S,
    stall: float = AUDIT_STALL_S,
) -> Audit:
    """Wait until every command has an outcome, then read the whole log; give up when no new
    outcome came for `stall` seconds, or after `timeout` in all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    answered, progressed = -1, loop.time()
    while True:
        wanted = await command_ids(log) | sent
        outcomes = Counter(
            e.command_id for e in await read_log(log, subjects=[OUTCOMES]) if e.command_id
        )
        if len(outcomes) > answered:
            answered, progressed = len(outcomes), loop.time()
        now = loop.time()
        if wanted <= set(outcomes) or now > deadline or now - progressed > stall:
            break
        await asyncio.sleep(0.5)
    return Audit(wanted, outcomes, await read_log(log))


def recovery_after(
    entries: Sequence[LogEntry], fault: datetime, *, not_from: str | None = None
) -> float | None:
    """Seconds from `fault` to the first command accepted after it, by a writer other than
    `not_from` (a CloudEvents source), or None if there was none."""
    for e in entries:
        if e.type == ACCEPTED and e.stored > fault and e.source != not_from:
            return (e.stored - fault).total_seconds()
    return None


def writes_after_deposal(
    entries: Sequence[LogEntry], old_node: str, after_seq: int
) -> tuple[list[str], dict[str, Any]]:
    """What the old leader `old_node` wrote after another replica was elected (after sequence
    `after_seq`), until it was itself elected again; as (violations, details).

    The election is the new leader's `hive.leader_elected` event. Without one the fence is not
    in place, which is a violation of its own; what the old leader wrote after the new leader's
    first write is then reported in the details for diagnosis.
    """
    source = f"hive/{old_node}"
    later = [e for e in entries if e.seq > after_seq]
    details: dict[str, Any] = {"old_leader": old_node}
    violations: list[str] = []
    elected = next(
        (e for e in later if e.type == LEADER_ELECTED and e.data.get("node") != old_node), None
    )
    if elected is None:
        violations.append("no hive.leader_elected by a new leader after the fault: no fence")
        anchor = next(
            (e for e in later if e.source.startswith("hive/") and e.source != source), None
        )
        if anchor is not None:
            stray = _written_by(later, source, old_node, anchor.seq)
            details["old_leader_writes_after_new_leaders_first_write"] = len(stray)
            details["new_leaders_first_write_seq"] = anchor.seq
        return violations, details
    details["new_leader"] = elected.data.get("node")
    details["leader_elected_seq"] = elected.seq
    stray = _written_by(later, source, old_node, elected.seq)
    details["old_leader_writes_after_election"] = len(stray)
    if stray:
        violations.append(
            f"the deposed leader {old_node} wrote {len(stray)} event(s) after "
            f"{elected.data.get('node')} was elected at seq {elected.seq}: {stray[:5]}"
        )
    return violations, details


def _written_by(entries: Sequence[LogEntry], source: str, node: str, after: int) -> list[str]:
    found = []
    for e in entries:
        if e.seq <= after:
            continue
        if e.type == LEADER_ELECTED and e.data.get("node") == node:
            break  # elected again: its writes are legitimate from here on
        if e.source == source:
            found.append(f"{e.seq}:{e.type}")
    return found


# --- a client that keeps sending -----------------------------------------------------------------


def deploy_request(name: str) -> AppendRequest:
    payload = commands.DeployAgent(name=name, spec=NOOP_SPEC, replicas=0)
    return AppendRequest.of(command(payload, source="faults", identity="user:faults"))


class CommandStream:
    """Deploys agents without replicas (one name each) in small batches at a steady pace until
    stopped, re-sending a batch under the same ids until JetStream acknowledged all of it: what a
    careful client does through an outage, and safe because appends are deduplicated by id.

    Batches do not wait for each other (up to `in_flight` at once): a publish lost with a dying
    connection costs its own batch the ack timeout, not every command after it.
    """

    def __init__(
        self,
        log: EventLog,
        prefix: str,
        *,
        batch: int = 10,
        interval: float = 0.05,
        in_flight: int = 8,
    ) -> None:
        self.log = log
        self.prefix = prefix
        self.batch = batch
        self.interval = interval
        self.sent: set[str] = set()
        self.acked: set[str] = set()
        #: Appends that failed and were sent again.
        self.retries = 0
        self._slots = asyncio.Semaphore(in_flight)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"commands-{self.prefix}")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batches in flight are acknowledged, or give up on them after `timeout`
        seconds (their commands stay in `sent`, so the audit reports them if they are lost)."""
        self._stop.set()
        if self._task is not None:
            await self._task
        batches = set(self._batches)
        if not batches:
            return
        _, late = await asyncio.wait(batches, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        for task in batches:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def wait_acked(self, count: int, timeout: float = 30.0) -> None:
        await wait_for(lambda: true(len(self.acked) >= count), timeout, f"{count} commands acked")

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            await self._slots.acquire()
            requests = [deploy_request(f"{self.prefix}-{n + i}") for i in range(self.batch)]
            n += self.batch
            self.sent.update(r.msg_id for r in requests)
            task = asyncio.create_task(self._send(requests))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def _send(self, requests: list[AppendRequest]) -> None:
        try:
            while True:
                try:
                    await self.log.append_batch(requests)
                    break
                except (EventLogError, nats.errors.Error, TimeoutError):
                    # The outage itself: send the same batch again.
                    self.retries += 1
                    await asyncio.sleep(0.1)
            self.acked.update(r.msg_id for r in requests)
        finally:
            self._slots.release()


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """`wait_until` with the scenarios' arguments: `timeout` positional, a poll every 50 ms."""
    await wait_until(check, timeout, what, interval=interval)


# --- the fleet -----------------------------------------------------------------------------------


@dataclass
class Fleet:
    """NATS (and PostgreSQL), a Hive cluster, and optionally the scheduler and pods, all real
    processes under `root`; an async context manager that always tears everything down.

    Servers are started and restarted on one dedicated thread: a child's parent-death signal
    fires when the thread that forked it ends, and this one lives exactly as long as the fleet,
    while the event loop stays free to watch clients ride through the restart.
    """

    root: Path
    replicas: int = 3
    pods: int = 0
    database: bool = False
    nats_host: str = "127.0.0.1"
    #: Raft addresses and launch prefixes of the replicas (network namespaces), if not loopback.
    hive_addrs: Sequence[str] = ()
    hive_prefixes: Sequence[Sequence[str]] = ()

    nats: EmbeddedNats = field(init=False)
    postgres: EmbeddedPostgres | None = field(default=None, init=False)
    cluster: HiveCluster = field(init=False)
    log: EventLog = field(init=False)
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    #: Ids of the commands the fleet itself sent (deploys).
    sent: set[str] = field(default_factory=set, init=False)
    _servers: ThreadPoolExecutor = field(init=False)

    @property
    def nc(self) -> NATS:
        return self.log.nc

    @property
    def url(self) -> str:
        return self.nats.url

    async def in_server_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._servers, fn)

    async def __aenter__(self) -> Self:
        self._servers = ThreadPoolExecutor(1, thread_name_prefix="fault-servers")
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.nats = EmbeddedNats(self.root / "nats", host=self.nats_host)
        try:
            await self._start(self.nats)
            if self.database:
                self.postgres = EmbeddedPostgres(self.root / "postgres")
                await self._start(self.postgres)
                await asyncio.to_thread(upgrade_database, self.postgres.url)
            self.log = await EventLog.connect(self.url, name="faults-client")
            (self.root / "hive").mkdir(exist_ok=True)
            self.cluster = HiveCluster(
                self.url,
                self.root / "hive",
                size=self.replicas,
                addrs=self.hive_addrs,
                prefixes=self.hive_prefixes,
            )
            self.cluster.start()
            await self.cluster.leader(self.nc, timeout=60)
            if self.pods:
                self._spawn("scheduler", "services.scheduler", {})
                for i in range(self.pods):
                    pod = f"pod-{i}"
                    self._spawn(
                        pod,
                        "runtime",
                        {
                            "SWARM_POD_ID": pod,
                            "SWARM_POD_CACHE_DIR": str(self.root / pod / "modules"),
                            "SWARM_POD_SNAPSHOT_INTERVAL_S": "0.5",
                        },
                    )
                await wait_for(self._pods_ready, 60, "pods registered", interval=0.2)
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._teardown()

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> None:
        full = {
            **os.environ,
            "SWARM_NATS_URL": self.url,
            "SWARM_DATABASE_URL": self.postgres.url if self.postgres else "",
            "SWARM_LOG_LEVEL": "warning",
            **env,
        }
        with (self.root / "logs" / f"{name}.log").open("ab") as out:
            self.services[name] = subprocess.Popen(
                [sys.executable, "-m", module],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )

    async def _pods_ready(self) -> bool:
        wanted = {f"pod-{i}" for i in range(self.pods)}
        try:
            pods = (await self.query(names.QUERY_PODS_LIST))["pods"]
        except (nats.errors.Error, TimeoutError):
            return False
        return wanted <= {p["pod_id"] for p in pods if p.get("status") != "lost"}

    async def _teardown(self) -> None:
        for proc in self.services.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.services.values():
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        with contextlib.suppress(AttributeError):
            await asyncio.to_thread(self.cluster.stop)
        with contextlib.suppress(Exception):  # not connected, or the server is gone
            await self.log.close()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        with contextlib.suppress(AttributeError):
            await asyncio.to_thread(self.nats.stop)
        self._servers.shutdown(wait=True)

    async def _start(self, server: EmbeddedNats | EmbeddedPostgres, attempts: int = 3) -> None:
        """Start a server, trying again if it fails at once. Seen here: another pytest session
        on the machine resets /tmp/pytest-of-<user> to mode 0700 just after PostgreSQL's start
        opened it for the server's own user, which then cannot reach its data dir."""
        for attempt in range(1, attempts + 1):
            try:
                await self.in_server_thread(server.start)
                return
            except EmbeddedServerError:
                if attempt == attempts:
                    raise
                await asyncio.sleep(0.5)

    # -- faults ------------------------------------------------------------------------------------

    async def restart(self, server: EmbeddedNats | EmbeddedPostgres, timeout: float = 60.0) -> int:
        """Start a server that was killed again (same port, same data), retrying while it
        cannot start yet, as the stack's supervisor does; returns the attempts it took."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.in_server_thread(server.restart)
                return attempts
            except EmbeddedServerError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    # -- asking the Hive ---------------------------------------------------------------------------

    async def log_end(self) -> int:
        return await self.log.last_sequence(names.STREAM_EVENTS)

    async def query(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.nc.request(subject, json.dumps(body or {}).encode(), timeout=2)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def agent(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = (await self.query(names.QUERY_AGENTS_GET, {"name": name})).get(
            "agent"
        ) or {}
        return found

    async def deploy(self, name: str, wasm: bytes, **spec: Any) -> str:
        """Deploy one agent with one replica; returns the command id."""
        module = ModuleRef(inline=base64.b64encode(wasm).decode())
        agent_spec = AgentSpec(
            version="v1", module=module, resources=Resources(memory_mb=16), **spec
        )
        request = AppendRequest.of(
            command(
                commands.DeployAgent(name=name, spec=agent_spec, replicas=1),
                source="faults",
                identity="user:faults",
            )
        )
        await self.log.append_raw(request)
        self.sent.add(request.msg_id)
        return request.msg_id

    async def running(self, name: str) -> bool:
        """The agent's one replica runs (as the Hive sees it)."""
        try:
            instances = (await self.agent(name)).get("instances", [])
        except (nats.errors.Error, TimeoutError, ValueError):
            return False
        live = [r for r in instances if r["phase"] not in ("stopped", "failed")]
        return len(live) == 1 and live[0]["phase"] == "running"

    async def ask(self, name: str, body: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
        """(reply, whether it is a platform error rather than the agent's answer)."""
        reply = await self.nc.request(
            names.mesh_agent_subject("default", name), body, timeout=timeout
        )
        return reply.data, bool(reply.headers and reply.headers.get(names.HEADER_AGENT_ERROR))

    async def leader_other_than(self, excluded: int, timeout: float = 30.0) -> int:
        """The index of a ready leader that is not `excluded` (asking only the others, briefly:
        a paused replica answers nothing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for i in self.cluster.alive():
                if i == excluded:
                    continue
                st = await self.cluster.status(self.nc, i, timeout=0.5)
                if st and st.get("is_leader") and st.get("ready"):
                    return i
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no leader other than replica {excluded}")

    # -- the audit ---------------------------------------------------------------------------------

    async def check(
        self,
        result: ScenarioResult,
        sent: set[str],
        fault: datetime,
        *,
        not_from: str | None = None,
        timeout: float = AUDIT_TIMEOUT_S,
    ) -> Audit:
        """Fill in the general checks: outcomes, duplicates, recovery, replica agreement."""
        sent = sent | self.sent
        found = await audit(self.log, sent, timeout=timeout)
        result.commands_sent = len(sent)
        result.outcomes_missing = len(found.missing)
        result.outcomes_duplicated = len(found.duplicated)
        result.events_duplicated = found.events_duplicated()
        if found.missing:
            result.details["missing_sample"] = sorted(found.missing)[:5]
        if found.duplicated:
            result.details["duplicated_sample"] = dict(list(found.duplicated.items())[:5])
        if result.recovery_s is None:
            result.recovery_s = recovery_after(found.entries, fault, not_from=not_from)
        stored = [e.stored for e in found.entries if e.command_id and e.stored > fault]
        if stored:
            # Commands a stalled leader had fetched wait for redelivery: this shows how long.
            result.details["last_outcome_after_fault_s"] = round(
                (max(stored) - fault).total_seconds(), 3
            )
        result.details["commands_on_log"] = len(found.commands)
        result.details["events_on_log"] = len(found.entries)
        result.replicas = self.cluster.size
        result.replicas_agree, why = await self.replicas_agree()
        if why:
            result.details["replicas"] = why
        if found.missing or not result.replicas_agree:
            result.details["hive_logs"] = self.hive_log_tails()
            result.details["hive_consumer"] = await self.hive_consumer()
        return found

    async def hive_consumer(self) -> dict[str, Any]:
        """Where the Hive's command consumer stands: commands not yet delivered, delivered and
        not settled, redelivered."""
        try:
            info = await self.log.js.consumer_info(
                names.STREAM_COMMANDS, names.CONSUMER_HIVE_COMMANDS
            )
        except Exception as exc:  # a diagnosis: whatever went wrong is the answer
            return {"error": repr(exc)}
        return {
            "num_pending": info.num_pending,
            "num_ack_pending": info.num_ack_pending,
            "num_redelivered": info.num_redelivered,
            "num_waiting": info.num_waiting,
            "delivered_stream_seq": info.delivered.stream_seq if info.delivered else None,
            "ack_floor_stream_seq": info.ack_floor.stream_seq if info.ack_floor else None,
        }

    def hive_log_tails(self, lines: int = 25) -> dict[str, list[str]]:
        """The last lines each replica logged: what a failed run on CI leaves to go on."""
        tails = {}
        for replica in self.cluster.replicas:
            path = self.cluster.root / f"{replica.node}.log"
            try:
                text = path.read_text(errors="replace")
            except OSError as exc:
                tails[replica.node] = [f"(no log: {exc})"]
                continue
            tails[replica.node] = [line[:300] for line in text.splitlines()[-lines:]]
        return tails

    async def replicas_agree(self, timeout: float = 60.0) -> tuple[bool, str | None]:
        """All replicas alive, at the log's end and with one digest. The log may still grow
        (pods report), so unequal positions are asked again; unequal digests at one position
        are a split."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        why = "never asked"
        while loop.time() < deadline:
            if len(self.cluster.alive()) != self.cluster.size:
                return False, f"replicas alive: {self.cluster.alive()}"
            end = await self.log.last_sequence(names.STREAM_EVENTS)
            try:
                statuses = await self.cluster.converged(
                    self.nc, end, timeout=max(deadline - loop.time(), 1.0)
                )
            except TimeoutError as exc:
                return False, str(exc)
            seqs = {st["applied_seq"] for st in statuses.values()}
            digests = {st["digest"] for st in statuses.values()}
            if len(statuses) == self.cluster.size and len(seqs) == 1:
                if len(digests) == 1:
                    return True, None
                return False, f"digests differ at seq {seqs.pop()}: {statuses}"
            why = f"replicas at different positions: {statuses}"
            await asyncio.sleep(0.2)
        return False, why


def now() -> datetime:
    return datetime.now(UTC)


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 3)


__all__ = [
    "NOOP_SPEC",
    "Audit",
    "CommandStream",
    "Fleet",
    "LogEntry",
    "ScenarioResult",
    "audit",
    "command_ids",
    "read_log",
    "recovery_after",
    "wait_for",
    "writes_after_deposal",
]
