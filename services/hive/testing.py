"""Hive replicas as real processes, for failover and recovery tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import names
from swarm.devstack.embedded import die_with_parent, free_port
from swarm.kernel.eventlog import Requester

PASSWORD = "test-raft-secret"


@dataclass
class Replica:
    addr: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    #: Run the replica through this command, e.g. `ip netns exec <namespace>`.
    prefix: tuple[str, ...] = ()

    @property
    def node(self) -> str:
        return "hive-" + self.addr.replace(".", "-").replace(":", "-")


@dataclass
class HiveCluster:
    nats_url: str
    root: Path
    size: int = 3
    replicas: list[Replica] = field(default_factory=list)
    #: Raft addresses (host:port) of the replicas instead of free loopback ports, e.g. in
    #: network namespaces; `size` follows their number.
    addrs: Sequence[str] = ()
    #: Per replica, a command to run it through (see `Replica.prefix`).
    prefixes: Sequence[Sequence[str]] = ()
    #: More environment for every replica (e.g. `SWARM_HIVE_PRINCIPALS_FILE`).
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.addrs:
            self.size = len(self.addrs)
            addrs = list(self.addrs)
        else:
            ports: set[int] = set()
            while len(ports) < self.size:
                ports.add(free_port())
            addrs = [f"127.0.0.1:{p}" for p in sorted(ports)]
        self.replicas = [
            Replica(
                addr,
                self.root / f"hive-{i}",
                prefix=tuple(self.prefixes[i]) if i < len(self.prefixes) else (),
            )
            for i, addr in enumerate(addrs)
        ]

    def start(self, index: int | None = None) -> None:
        for i, replica in enumerate(self.replicas):
            if index is not None and i != index:
                continue
            peers = ",".join(r.addr for r in self.replicas if r is not replica)
            env = {
                **os.environ,
                "SWARM_NATS_URL": self.nats_url,
                "SWARM_HIVE_RAFT_SELF": replica.addr,
                "SWARM_HIVE_RAFT_PEERS": json.dumps(peers.split(",") if peers else []),
                "SWARM_HIVE_RAFT_PASSWORD": PASSWORD,
                "SWARM_HIVE_DATA_DIR": str(replica.data_dir),
                # Info: leadership moves, what a failed fault test needs to be understood.
                "SWARM_LOG_LEVEL": "info",
                **self.env,
            }
            with (self.root / f"{replica.node}.log").open("ab") as log:
                replica.proc = subprocess.Popen(
                    [*replica.prefix, sys.executable, "-m", "services.hive"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent(signal.SIGKILL),
                )

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        proc = self.replicas[index].proc
        assert proc is not None
        proc.send_signal(sig)
        proc.wait(10)

    def signal(self, index: int, sig: int) -> None:
        """Send `sig` without waiting for anything (e.g. SIGSTOP / SIGCONT)."""
        proc = self.replicas[index].proc
        assert proc is not None
        proc.send_signal(sig)

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                # A paused replica would not act on SIGTERM before the wait below gives up.
                replica.proc.send_signal(signal.SIGCONT)
                replica.proc.terminate()
        for replica in self.replicas:
            if replica.proc is not None:
                try:
                    replica.proc.wait(10)
                except subprocess.TimeoutExpired:
                    replica.proc.kill()

    def alive(self) -> list[int]:
        return [
            i for i, r in enumerate(self.replicas) if r.proc is not None and r.proc.poll() is None
        ]

    async def status(
        self, nc: Requester, index: int, *, digest: bool = False, timeout: float = 5.0
    ) -> dict[str, Any] | None:
        body = json.dumps({"digest": digest}).encode()
        try:
            reply = await nc.request(
                f"{names.QUERY_STATUS}.{self.replicas[index].node}", body, timeout=timeout
            )
        except Exception:
            return None
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def leader(self, nc: Requester, timeout: float = 15.0) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for i in self.alive():
                st = await self.status(nc, i)
                if st and st.get("is_leader") and st.get("ready"):
                    return i
            await asyncio.sleep(0.05)
        raise TimeoutError("no Hive leader")

    async def converged(
        self, nc: Requester, log_end: int, timeout: float = 60.0
    ) -> dict[int, dict[str, Any]]:
        """Wait until every live replica folded the log to `log_end` and all are at the same
        point of it; returns their statuses with digests, each taken with its `applied_seq`.

        The same point, not only past `log_end`: the log may grow meanwhile (the reconciler
        writes), and replicas a few events apart have different digests without disagreeing.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        statuses: dict[int, dict[str, Any]] = {}
        while asyncio.get_running_loop().time() < deadline:
            statuses = await self._statuses(nc)
            if len(statuses) == len(self.alive()) and all(
                st["applied_seq"] >= log_end for st in statuses.values()
            ):
                # A digest renders the whole state: seconds for 20,000 agents. All replicas are
                # asked at once: asked one after the other on a loaded machine, the growing log
                # moved on between answers every time (seen: 2501, 2502, 2502 until the timeout).
                statuses = await self._statuses(nc, digest=True, timeout=60.0)
                if len(statuses) == len(self.alive()) and (
                    len({st["applied_seq"] for st in statuses.values()}) == 1
                ):
                    return statuses
            await asyncio.sleep(0.1)
        raise TimeoutError(f"replicas did not converge to {log_end}: {statuses}")

    async def _statuses(
        self, nc: Requester, *, digest: bool = False, timeout: float = 5.0
    ) -> dict[int, dict[str, Any]]:
        """The status of every live replica that answers, all asked at once."""
        alive = self.alive()
        answers = await asyncio.gather(
            *(self.status(nc, i, digest=digest, timeout=timeout) for i in alive)
        )
        return {i: st for i, st in zip(alive, answers, strict=True) if st}
