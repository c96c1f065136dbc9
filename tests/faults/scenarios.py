"""The fault scenarios, each a coroutine that builds its own fleet under `root`, injects one
fault while work flows, and returns a `ScenarioResult`; tests/faults/ asserts on them and
bench/chaos.py runs them all and prints them.

`Load` sizes a run: the tests and the benchmark use the defaults, `bench/chaos.py --quick` a
smaller one. Commands flow at ~200/s from a client that re-sends what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nats.errors
import psycopg

from runtime.abi import ErrorCode
from runtime.memory import DIMENSIONS
from swarm.kernel.database import psycopg_url
from tests.faults import netns
from tests.faults.harness import (
    CRASHED,
    CommandStream,
    Fleet,
    ScenarioResult,
    elapsed,
    now,
    read_log,
    wait_for,
    writes_after_deposal,
)
from tests.helpers.agents import ECHO, agent
from tests.helpers.waiting import true


class Unavailable(Exception):
    """This machine cannot run the scenario (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class Load:
    #: Commands acknowledged before the fault, so the Hive is busy when it strikes.
    warmup: int = 100
    #: Commands per batch, and the pause between batches (~200 commands/s by default).
    batch: int = 10
    interval: float = 0.05
    #: How long a fault is held (pause, partition) and how long work goes on after it ends.
    hold_s: float = 2.0
    after_s: float = 2.0


async def _commands_flowing(fleet: Fleet, prefix: str, load: Load) -> CommandStream:
    """Commands flowing from a client of `fleet`, the first `load.warmup` acknowledged, so the
    Hive is busy when the fault strikes."""
    stream = CommandStream(fleet.log, prefix, batch=load.batch, interval=load.interval)
    stream.start()
    await stream.wait_acked(load.warmup)
    return stream


async def _audit_deposal(
    fleet: Fleet,
    result: ScenarioResult,
    stream: CommandStream,
    load: Load,
    fault: datetime,
    old_node: str,
    before_seq: int,
) -> None:
    """Work goes on `load.after_s` after a leader's fault ends; then the audit of every command
    sent (the deposed leader's writes aside), and of what that leader wrote after its
    successor's `hive.leader_elected`."""
    await asyncio.sleep(load.after_s)
    await stream.stop()
    found = await fleet.check(result, stream.sent, fault, not_from=f"hive/{old_node}")
    violations, details = writes_after_deposal(found.entries, old_node, before_seq)
    result.violations += violations
    result.details.update(details)


# --- 1. nats-server killed and restarted ---------------------------------------------------------


async def nats_killed(root: Path, load: Load = Load()) -> ScenarioResult:
    """SIGKILL of nats-server during a command burst, restarted on its port and store: every
    client (Hive replicas, scheduler, pod, this one) reconnects, the echo agent answers again."""
    began = time.monotonic()
    result = ScenarioResult("nats-server SIGKILL + restart")
    async with Fleet(root, replicas=3, pods=1) as fleet:
        await fleet.deploy("echo", ECHO)
        await wait_for(lambda: fleet.running("echo"), 60, "echo running")
        stream = await _commands_flowing(fleet, "n", load)
        server = fleet.nats.proc
        assert server is not None
        fault, killed = now(), time.monotonic()
        server.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.wait)
        result.details["restart_attempts"] = await fleet.restart(fleet.nats)
        result.baseline_s = result.details["nats_down_s"] = elapsed(killed)
        echo = asyncio.create_task(_echo_back(fleet, killed))
        await asyncio.sleep(load.after_s)
        await stream.stop()
        result.details["client_retries"] = stream.retries
        result.details["echo_back_s"] = await echo
        if result.details["echo_back_s"] is None:
            result.violations.append("the echo agent did not answer again after the restart")
        # A deploy after the restart goes the whole way: Hive, scheduler, pod all reconnected.
        await fleet.deploy("echo-after", ECHO)
        await fleet.check(result, stream.sent, fault)
        await _agents_running(fleet, result, ["echo", "echo-after"])
    result.elapsed_s = elapsed(began)
    return result


async def _echo_back(fleet: Fleet, since: float, timeout: float = 30.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await fleet.ask("echo", b"ping", timeout=1.0) == (b"ping", False):
                return elapsed(since)
        except (nats.errors.Error, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    return None


async def _agents_running(fleet: Fleet, result: ScenarioResult, agents: list[str]) -> None:
    for name, proc in fleet.services.items():
        if proc.poll() is not None:
            result.violations.append(f"{name} exited with {proc.returncode}")
    for name in agents:
        try:
            await wait_for(functools.partial(fleet.running, name), 30, f"{name} running")
        except TimeoutError:
            result.violations.append(f"agent {name} is not running: {await fleet.agent(name)}")


# --- 2. PostgreSQL killed during vector writes ---------------------------------------------------

#: Stores the message (a vector_store request) in its vector memory and replies with the host
#: call's code as an i32: 0, or e.g. UNAVAILABLE while the database is down.
VECTOR_WRITER = agent(
    """
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 64) (call $vector_store (local.get $ptr) (local.get $len)))
    (call $reply (i32.const 64) (i32.const 4))
    (i32.const 0))
""",
    imports=("vector_store", "reply"),
)


def _store_request(n: int) -> bytes:
    # A short JSON: one non-zero coordinate pattern per key, the rest zeros.
    vector = [1, n % 97, *([0] * (DIMENSIONS - 2))]
    return f'{{"id":"w-{n}","vector":[{",".join(map(str, vector))}],"data":{n}}}'.encode()


@dataclass
class _Writes:
    acked: dict[str, float]
    #: key -> (host code, seconds after the fault it was answered)
    failed: dict[str, tuple[int, float]]
    platform_errors: list[str]
    no_answer: list[str]
    slowest_s: float = 0.0


async def _write_vectors(
    fleet: Fleet, name: str, stop: asyncio.Event, writes: _Writes, timeout: float = 10.0
) -> None:
    n = 0
    while not stop.is_set():
        key, body = f"w-{n}", _store_request(n)
        n += 1
        sent = time.monotonic()
        try:
            data, platform_error = await fleet.ask(name, body, timeout=timeout)
        except (nats.errors.Error, TimeoutError):
            writes.no_answer.append(key)
            continue
        took = time.monotonic() - sent
        writes.slowest_s = max(writes.slowest_s, took)
        if platform_error:
            writes.platform_errors.append(f"{key}: {data[:200]!r}")
        elif data == struct.pack("<i", ErrorCode.OK):
            writes.acked[key] = time.monotonic()
        else:
            writes.failed[key] = (struct.unpack("<i", data)[0], time.monotonic())
        await asyncio.sleep(0.02)


async def postgres_killed(root: Path, load: Load = Load()) -> ScenarioResult:
    """SIGKILL of PostgreSQL while an agent writes vector memory: writes during the outage fail
    with UNAVAILABLE (no pod crash, no hang), the server comes back on its port and data, writes
    succeed again, and every write the agent was told succeeded is in the database."""
    began = time.monotonic()
    result = ScenarioResult("PostgreSQL SIGKILL + restart")
    async with Fleet(root, replicas=3, pods=1, database=True) as fleet:
        assert fleet.postgres is not None
        await fleet.deploy("memo", VECTOR_WRITER)
        await wait_for(lambda: fleet.running("memo"), 60, "memo running")
        agent_id = (await fleet.agent("memo"))["agent_id"]
        writes = _Writes({}, {}, [], [])
        stop = asyncio.Event()
        writer = asyncio.create_task(_write_vectors(fleet, "memo", stop, writes))
        await wait_for(lambda: true(len(writes.acked) >= 20), 60, "20 vector writes")
        server = fleet.postgres.proc
        assert server is not None
        fault, killed = now(), time.monotonic()
        acked_before = len(writes.acked)
        server.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.wait)
        result.details["restart_attempts"] = await fleet.restart(fleet.postgres)
        result.baseline_s = result.details["postgres_down_s"] = elapsed(killed)
        try:
            await wait_for(
                lambda: true(len(writes.acked) >= acked_before + 20), 60, "writes after restart"
            )
        except TimeoutError:
            result.violations.append("vector writes did not succeed again after the restart")
        stop.set()
        await writer
        # Backends of a killed postmaster finish what they are doing, so a write may still
        # succeed just after the kill: recovery counts from the kill to the first success
        # after the first failure.
        failed_at = min((t for _, t in writes.failed.values() if t > killed), default=None)
        back = min((t for t in writes.acked.values() if failed_at and t > failed_at), default=None)
        if back is not None:
            result.recovery_s = round(back - killed, 3)
        unavailable = [k for k, (code, _) in writes.failed.items() if code == ErrorCode.UNAVAILABLE]
        other = {k: c for k, (c, _) in writes.failed.items() if c != ErrorCode.UNAVAILABLE}
        result.details.update(
            writes_acked=len(writes.acked),
            writes_acked_after_fault=sum(t > killed for t in writes.acked.values()),
            writes_failed_unavailable=len(unavailable),
            slowest_write_s=round(writes.slowest_s, 3),
        )
        if not unavailable:
            result.violations.append("no write failed: the outage was never seen by the agent")
        if other:
            result.violations.append(f"writes failed with unexpected codes: {other}")
        if writes.platform_errors:
            result.violations.append(f"platform errors (agent failed): {writes.platform_errors}")
        if writes.no_answer:
            result.violations.append(f"writes never answered (hang): {writes.no_answer}")
        stored = await asyncio.to_thread(_stored_keys, fleet.postgres.url, agent_id)
        lost = sorted(set(writes.acked) - stored)
        if lost:
            result.violations.append(f"{len(lost)} acknowledged writes lost: {lost[:10]}")
        # Stored although the agent was told it failed (the commit's answer was lost with the
        # server): not a broken promise of the host API's, but worth knowing.
        result.details["failed_but_stored"] = sorted(set(unavailable) & stored)
        # The agent only sees UNAVAILABLE; the operator must find the reason in the pod's log.
        said = _log_lines(fleet.root / "logs" / "pod-0.log", "vector memory")
        result.details["pod_logged"] = said[:1]
        if unavailable and not said:
            result.violations.append("the pod logged no reason for the failed writes")
        await fleet.check(result, set(), fault)
        crashed = [
            e.seq
            for e in await read_log(fleet.log)
            if e.type == CRASHED and e.subject.count(agent_id)
        ]
        if crashed:
            result.violations.append(f"the agent's replica crashed (events {crashed})")
        await _agents_running(fleet, result, ["memo"])
    result.elapsed_s = elapsed(began)
    return result


def _log_lines(path: Path, needle: str) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip()[:300] for line in text.splitlines() if needle in line]


def _stored_keys(url: str, namespace: str) -> set[str]:
    with psycopg.connect(psycopg_url(url), connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT key FROM agent_memory WHERE agent_namespace = %s", (namespace,)
        ).fetchall()
    return {str(r[0]) for r in rows}


# --- 3. the Hive leader paused -------------------------------------------------------------------


async def leader_paused(root: Path, load: Load = Load()) -> ScenarioResult:
    """SIGSTOP of the Hive leader for longer than its election timeout, then SIGCONT, while
    commands keep coming: a new leader is elected and decides, and the old one writes nothing
    after the new one's `hive.leader_elected` (until it is itself elected again)."""
    began = time.monotonic()
    result = ScenarioResult("Hive leader SIGSTOP / SIGCONT")
    async with Fleet(root, replicas=3) as fleet:
        stream = await _commands_flowing(fleet, "p", load)
        old = await fleet.cluster.leader(fleet.nc)
        old_node = fleet.cluster.replicas[old].node
        before_seq = await fleet.log_end()
        fault, paused = now(), time.monotonic()
        fleet.cluster.signal(old, signal.SIGSTOP)
        try:
            new = await fleet.leader_other_than(old)
            result.baseline_s = result.details["new_leader_after_s"] = elapsed(paused)
            result.details["new_leader"] = fleet.cluster.replicas[new].node
            await asyncio.sleep(max(load.hold_s - (time.monotonic() - paused), 0.0))
        except TimeoutError:
            result.violations.append("no new leader while the old one was paused")
        finally:
            fleet.cluster.signal(old, signal.SIGCONT)
        result.details["paused_s"] = elapsed(paused)
        await _audit_deposal(fleet, result, stream, load, fault, old_node, before_seq)
    result.elapsed_s = elapsed(began)
    return result


# --- 4. a Hive replica cut off by a network namespace --------------------------------------------


async def leader_partitioned(root: Path, load: Load = Load()) -> ScenarioResult:
    """The Hive leader loses its Raft link (network namespaces; it still reaches NATS): it stops
    deciding, the other two elect a leader and go on, and after the link is back it catches up
    to the same state. Raises `Unavailable` where network namespaces cannot be made."""
    reason = netns.unavailable()
    if reason:
        raise Unavailable(reason)
    began = time.monotonic()
    result = ScenarioResult("Hive leader partitioned (netns)")
    network = netns.Network(size=3)
    network.create()
    try:
        addrs = [f"{network.raft_host(i)}:{4300 + i}" for i in range(3)]
        prefixes = [network.prefix(i) for i in range(3)]
        async with Fleet(
            root,
            replicas=3,
            nats_host=network.nats_host,
            hive_addrs=addrs,
            hive_prefixes=prefixes,
        ) as fleet:
            stream = await _commands_flowing(fleet, "c", load)
            old = await fleet.cluster.leader(fleet.nc)
            old_node = fleet.cluster.replicas[old].node
            before_seq = await fleet.log_end()
            fault, cut = now(), time.monotonic()
            network.cut(old)
            try:
                await fleet.leader_other_than(old)
                result.baseline_s = result.details["new_leader_after_s"] = elapsed(cut)
                await wait_for(
                    lambda: _not_leader(fleet, old), 10, "the cut-off leader to step down"
                )
                result.details["old_leader_stepped_down_s"] = elapsed(cut)
                await asyncio.sleep(max(load.hold_s - (time.monotonic() - cut), 0.0))
            except TimeoutError as exc:
                result.violations.append(str(exc))
            finally:
                network.heal(old)
            result.details["cut_s"] = elapsed(cut)
            await _audit_deposal(fleet, result, stream, load, fault, old_node, before_seq)
    finally:
        network.destroy()
    result.elapsed_s = elapsed(began)
    return result


async def _not_leader(fleet: Fleet, index: int) -> bool:
    st = await fleet.cluster.status(fleet.nc, index, timeout=1.0)
    return st is not None and not st.get("is_leader")


Scenario = Callable[[Path, Load], Awaitable[ScenarioResult]]

#: Short names (the benchmark's --scenario) in the order they run.
SCENARIOS: dict[str, Scenario] = {
    "nats-kill": nats_killed,
    "postgres-kill": postgres_killed,
    "leader-pause": leader_paused,
    "leader-partition": leader_partitioned,
}


__all__ = ["SCENARIOS", "Load", "Unavailable"]
