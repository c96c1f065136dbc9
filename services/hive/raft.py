"""The Raft-replicated copy of the Hive's state (pysyncobj).

Raft entries carry batches of `(stream sequence, event bytes)` read from SWARM_EVENTS by the
leader; every replica folds them with the same `evolve`, skipping sequences it has applied, so a
batch submitted twice (after a leader change, or a callback that never fired) is harmless.

pysyncobj calls `apply_events` on its own thread. Readers on the asyncio thread take `lock` and
copy what they need; they never hold it across an await.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pysyncobj import SyncObj, SyncObjConf, replicated

from services.hive.evolve import fold_raw
from services.hive.state import HiveState

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RaftConfig:
    self_addr: str
    peers: tuple[str, ...]
    password: str
    data_dir: Path

    def conf(self) -> SyncObjConf:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        safe = self.self_addr.replace(":", "_")
        return SyncObjConf(
            # Without a password pysyncobj unpickles whatever reaches its port.
            password=self.password,
            journalFile=str(self.data_dir / f"raft-{safe}.journal"),
            fullDumpFile=str(self.data_dir / f"raft-{safe}.dump"),
            # Measured here: these give leader failover in ~0.6 s.
            raftMinTimeout=0.15,
            raftMaxTimeout=0.35,
            appendEntriesPeriod=0.03,
            # Entries carry up to a thousand events (~1 MB); pysyncobj's 64 KB default splits
            # each into many chunked messages and halved folding speed with 3 replicas.
            appendEntriesBatchSizeBytes=4 * 1024 * 1024,
            connectionRetryTime=0.2,
            connectionTimeout=0.5,
            leaderFallbackTimeout=1.0,
            autoTickPeriod=0.01,
            dynamicMembershipChange=False,
            logCompactionMinEntries=20_000,
            logCompactionMinTime=60,
        )


class ReplicatedState(SyncObj):  # type: ignore[misc]
    def __init__(self, config: RaftConfig) -> None:
        # Attributes that exist before the base constructor count as pysyncobj's own and are left
        # out of snapshots: right for the lock (it cannot be pickled), wrong for the state, which
        # is therefore created after it (pysyncobj's tick thread waits 0.1 s before applying).
        self.lock = threading.Lock()
        super().__init__(config.self_addr, list(config.peers), config.conf())
        self.hive = HiveState()

    @replicated  # type: ignore[untyped-decorator]
    def apply_events(self, batch: list[tuple[int, bytes]]) -> int:
        # `fold_raw` never raises: an entry that cannot be folded is recorded in the state (the
        # same on every replica) and skipped. An exception here would stop pysyncobj's apply
        # thread for good, and with it this replica.
        with self.lock:
            state = self.hive
            failures = state.fold_failure_count
            for seq, raw in batch:
                fold_raw(state, seq, raw)
            if state.fold_failure_count != failures:
                last = state.fold_failures[-1]
                log.warning(
                    "log entries could not be folded",
                    count=state.fold_failure_count - failures,
                    seq=last.seq,
                    type=last.type,
                    reason=last.reason,
                )
            return state.applied_seq

    def read(self, fn: Callable[[HiveState], T]) -> T:
        with self.lock:
            return fn(self.hive)

    @property
    def applied_seq(self) -> int:
        # pysyncobj's constructor inspects every attribute, before `hive` exists.
        hive: HiveState | None = self.__dict__.get("hive")
        return hive.applied_seq if hive is not None else 0

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def leader(self) -> str | None:
        leader = self._getLeader()
        return str(leader) if leader is not None else None

    def is_ready(self) -> bool:
        return bool(self.isReady())

    def term(self) -> int:
        """The current Raft term (from pysyncobj's public status)."""
        return int(self.getStatus().get("raft_term", 0))

    async def submit(self, batch: list[tuple[int, bytes]], timeout: float) -> int:
        """Replicate one batch and wait (bounded) until it is applied here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def done(result: Any, error: Any) -> None:
            # Runs on pysyncobj's thread.
            def settle() -> None:
                if future.done():
                    return
                if error == 0:
                    future.set_result(int(result))
                else:
                    future.set_exception(RaftError(f"raft refused the batch (reason {error})"))

            loop.call_soon_threadsafe(settle)

        self.apply_events(batch, callback=done)
        # Under load pysyncobj sometimes never calls back for an entry it did commit, so the
        # applied sequence is watched too: whichever says "done" first wins.
        last = batch[-1][0] if batch else 0
        deadline = loop.time() + timeout
        while not future.done():
            if self.applied_seq >= last:
                return self.applied_seq
            if loop.time() > deadline:
                raise TimeoutError(f"batch up to {last} not applied within {timeout}s")
            await asyncio.wait([future], timeout=0.005)
        return future.result()


class RaftError(RuntimeError):
    pass
