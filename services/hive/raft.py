"""The Raft-replicated copy of the Hive's state (pysyncobj).

Raft entries carry batches of `(stream sequence, event bytes)` read from SWARM_EVENTS by the
leader; every replica folds them with the same `fold_raw`, skipping sequences it has taken, so a
batch submitted twice (after a leader change, or a callback that never fired) is harmless.

Raft's own work never waits for folding. Measured with 3 replicas folding 40,000 events on this
2-core machine: pysyncobj applied every committed entry on its tick thread, and folding a few
thousand events there (0.1-0.3 s under load) kept the leader from sending heartbeats, so the
followers elected another leader about every 2 s; each new leader then copied the whole state
under the lock, stalling its own ticks in turn. So here:

* `apply_events` (on the tick thread) only queues the batch in `pending`, which is part of the
  replicated state: a snapshot holds `hive` and what is still to be folded into it;
* a fold thread drains `pending` into `hive` in small chunks, under `lock`;
* this class drives pysyncobj's ticks itself (`autoTick=False`, the public `doTick`), under the
  same `lock`, so a snapshot (pysyncobj forks its process to write one) never sees a half-folded
  event;
* `copy_state` and `read_quiet` pause the fold thread instead of holding `lock`, so a long copy
  (a new leader's working state, a digest) does not stall Raft.

Readers on the asyncio thread take `lock` (or use `read_quiet`) and copy what they need; they
never hold it across an await. `applied_seq` is how far the state is folded.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import deque
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

#: Events folded per hold of the lock (a few milliseconds), so ticks and readers interleave.
_FOLD_CHUNK = 64
#: The pause between two ticks (pysyncobj's own default period is 5x longer).
_TICK_PERIOD_S = 0.002


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
            # Ticks are driven by ReplicatedState itself (see the module docstring).
            autoTick=False,
            dynamicMembershipChange=False,
            logCompactionMinEntries=20_000,
            logCompactionMinTime=60,
        )


class ReplicatedState(SyncObj):  # type: ignore[misc]
    def __init__(self, config: RaftConfig) -> None:
        # Attributes that exist before the base constructor count as pysyncobj's own and are left
        # out of snapshots: right for the locks and threads (they cannot be pickled), wrong for
        # the state, which is therefore created after it. The first tick loads a snapshot over it.
        self.lock = threading.RLock()
        self._work = threading.Condition(self.lock)
        self._fold_gate = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        super().__init__(config.self_addr, list(config.peers), config.conf())
        self.hive = HiveState()
        #: Batches committed by Raft but not folded yet, oldest first (replicated state).
        self.pending: deque[tuple[int, bytes]] = deque()
        #: The last sequence taken into `pending` (replicated state).
        self.queued_seq = 0
        self._threads = [
            threading.Thread(target=self._tick_loop, name="raft-tick", daemon=True),
            threading.Thread(target=self._fold_loop, name="raft-fold", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @replicated  # type: ignore[untyped-decorator]
    def apply_events(self, batch: list[tuple[int, bytes]]) -> int:
        """Raft committed `batch`: queue what is new for the fold thread (on the tick thread,
        which holds `lock`)."""
        with self.lock:
            taken = max(self.queued_seq, self.hive.applied_seq)
            for seq, raw in batch:
                if seq > taken:
                    self.pending.append((seq, raw))
                    taken = seq
            self.queued_seq = taken
            self._work.notify()
            return taken

    def _tick_loop(self) -> None:
        # A tick never waits for the network holding the lock, and the loop sleeps outside it:
        # Python's locks are not fair, and a thread that releases and at once re-acquires one
        # starved the fold thread (measured: one replica folded 5.5k events/s, busy 30%).
        while not self._stopping.is_set():
            try:
                with self.lock:
                    self.doTick(0.0)
            except Exception:
                log.exception("raft tick failed")
            time.sleep(_TICK_PERIOD_S)

    def _fold_loop(self) -> None:
        while not self._stopping.is_set():
            with self.lock:
                if not self.pending:
                    self._work.wait(0.05)
                    continue
            with self._fold_gate, self.lock:
                # `fold_raw` never raises: an entry it cannot fold is recorded in the state
                # (the same on every replica) and skipped.
                state, pending = self.hive, self.pending
                failures = state.fold_failure_count
                for _ in range(min(_FOLD_CHUNK, len(pending))):
                    seq, raw = pending.popleft()
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

    def read(self, fn: Callable[[HiveState], T]) -> T:
        """`fn` of the state, under `lock` (keep `fn` short: Raft waits for it)."""
        with self.lock:
            return fn(self.hive)

    def read_quiet(self, fn: Callable[[HiveState], T]) -> T:
        """`fn` of the state with folding paused rather than Raft: for long reads (a digest).

        Only the fold thread changes `hive`, and a snapshot from the leader replaces it with
        another object, so the object read stays whole while the gate is held."""
        with self._fold_gate:
            return fn(self.hive)

    def copy_state(self) -> HiveState:
        """A deep copy of the state (a new leader's working state), folding paused meanwhile."""
        return self.read_quiet(copy.deepcopy)

    @property
    def applied_seq(self) -> int:
        # pysyncobj's constructor inspects every attribute, before `hive` exists.
        hive: HiveState | None = self.__dict__.get("hive")
        return hive.applied_seq if hive is not None else 0

    def destroy(self) -> None:
        """Stop ticking and folding, then close Raft's connections; safe to call twice."""
        self._stopping.set()
        with self.lock:
            self._work.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads = []
        super().destroy()

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
