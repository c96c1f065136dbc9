"""The Raft-replicated copy of the Hive's state (pysyncobj).

Raft agrees on which stretch of SWARM_EVENTS to fold next and what each event's bytes hash to
(`apply_range(lo, hi, digests)`, proposed by the leader's projector); every replica reads the
events themselves from JetStream (`feeder.py`, into its `LogCache`), checks each against its
agreed digest and folds it with the same `fold_raw`, skipping sequences it has folded, so a
range proposed twice (after a leader change, or a callback that never fired) is harmless.

Measured with 3 replicas on this 2-core machine, the first design (Raft entries carrying the
events' bytes) spent more on shipping them through pysyncobj (pickled, zlib-compressed and
encrypted, once per follower) than on folding them; JetStream already keeps the log replicated,
so Raft now carries about 8 bytes per event. An older entry with the bytes in it
(`apply_events`, from a journal or snapshot written before) is still folded.

Raft's own work never waits for folding either:

* the replicated methods (on pysyncobj's tick thread) only queue what was agreed in `pending`,
  which is part of the replicated state: a snapshot holds `hive` and what is still to fold;
* a fold thread drains `pending` into `hive` in small chunks, under `lock`, waiting for the
  feeder outside it when an event is not read yet;
* this class drives pysyncobj's ticks itself (`autoTick=False`, the public `doTick`), under the
  same `lock`, so a snapshot (pysyncobj forks its process to write one) never sees a half-folded
  event;
* `copy_state` and `read_quiet` pause the fold thread instead of holding `lock`, so a long copy
  (a new leader's working state, a digest) does not stall Raft.

Before, pysyncobj applied every committed entry on its tick thread, and folding a few thousand
events there (0.1-0.3 s under load) kept the leader from sending heartbeats: the followers
elected another leader about every 2 s while a long log was folded.

Readers on the asyncio thread take `lock` (or use `read_quiet`) and copy what they need; they
never hold it across an await. `applied_seq` is how far the state is folded.
"""

from __future__ import annotations

import _socket
import asyncio
import copy
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pysyncobj import SyncObj, SyncObjConf, replicated

from services.hive import raftframes
from services.hive.freezer import Freezer
from services.hive.logcache import DIGEST_BYTES, LogCache, digest_of
from swarm.domain import reputation, state
from swarm.domain.evolve import fold_raw
from swarm.domain.state import HiveState

# pysyncobj (tcp_connection -> win_inet_pton) replaces `socket.inet_ntop` on every OS with a
# Windows-only function that raises: anything in the Hive's process decoding an IPv6 address
# (psutil listing sockets, found by a test) broke. The C original is put back.
socket.inet_ntop = _socket.inet_ntop
# Frames longer than any a replica sends drop the connection before they are buffered.
raftframes.install()

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: pysyncobj pickles the state into its snapshot (`raft-*.dump`), so a snapshot names the
#: classes by module; those written before the domain moved to `swarm.domain` name these.
#: Unpickling looks modules up in `sys.modules` first, so the old names still load them.
for _old, _module in {
    "services.hive.state": state,
    "services.hive.reputation": reputation,
}.items():
    sys.modules.setdefault(_old, _module)

#: Events folded per hold of the lock (a few milliseconds), so ticks and readers interleave.
_FOLD_CHUNK = 16
#: How long the fold thread waits for the feeder to bring an event before looking again.
_FEED_WAIT_S = 1.0

#: What `pending` holds: `(seq, bytes)` from older entries, `(lo, hi, digests)` from ranges.
Agreed = tuple[int, bytes] | tuple[int, int, bytes]
#: The pause between two ticks (pysyncobj's own default period is 5x longer).
_TICK_PERIOD_S = 0.002


@dataclass(frozen=True, slots=True)
class RaftConfig:
    self_addr: str
    peers: tuple[str, ...]
    password: str
    data_dir: Path
    #: The address the Raft port listens on; None: `self_addr`.
    bind_addr: str | None = None

    def conf(self) -> SyncObjConf:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        safe = self.self_addr.replace(":", "_")
        return SyncObjConf(
            # Without a password pysyncobj unpickles whatever reaches its port.
            password=self.password,
            # pysyncobj binds 0.0.0.0 unless told: the port would answer on every interface.
            bindAddress=self.bind_addr or self.self_addr,
            journalFile=str(self.data_dir / f"raft-{safe}.journal"),
            fullDumpFile=str(self.data_dir / f"raft-{safe}.dump"),
            # 0.15-0.35 s gave a failover in ~0.3 s on a quiet machine, but on a loaded one
            # (2 cores, three replicas folding a long log) a starved tick thread cost an election
            # every ~2 s; 0.4-0.8 s (connectionTimeout must be >= the maximum) holds there.
            raftMinTimeout=0.4,
            raftMaxTimeout=0.8,
            appendEntriesPeriod=0.03,
            # Entries are small now (ranges: ~8 bytes per event), but old ones carried events.
            appendEntriesBatchSizeBytes=4 * 1024 * 1024,
            connectionRetryTime=0.2,
            connectionTimeout=1.0,
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
        #: The events this replica read from the log and has not folded yet (not replicated).
        self.cache = LogCache()
        #: Why folding waits, when it does for long (a digest that does not match), for status.
        self.stalled: str | None = None
        #: Keeps the cycle collector off the state while a backlog is folded (`freezer.py`).
        self._freezer = Freezer()
        super().__init__(config.self_addr, list(config.peers), config.conf())
        self.hive = HiveState()
        #: What Raft committed and is not folded yet, oldest first (replicated state).
        self.pending: deque[Agreed] = deque()
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
        """An entry of the older format (the bytes themselves): queue what is new."""
        with self.lock:
            taken = max(self.queued_seq, self.hive.applied_seq)
            for seq, raw in batch:
                if seq > taken:
                    self.pending.append((seq, raw))
                    taken = seq
            self.queued_seq = taken
            self._work.notify()
            return taken

    @replicated  # type: ignore[untyped-decorator]
    def apply_range(self, lo: int, hi: int, digests: bytes) -> int:
        """Raft agreed to fold `lo..hi`, whose bytes hash to `digests` (`DIGEST_BYTES` each):
        queue it for the fold thread (on the tick thread, which holds `lock`)."""
        with self.lock:
            taken = max(self.queued_seq, self.hive.applied_seq)
            if lo > taken + 1:
                # A gap would leave events unfolded for good: refused, the projector proposes
                # again from where this replica stands once its submit times out.
                log.error("refusing a range past a gap", lo=lo, hi=hi, queued=taken)
            elif hi > taken and len(digests) == (hi - lo + 1) * DIGEST_BYTES:
                self.pending.append((lo, hi, digests))
                self.queued_seq = hi
            self._work.notify()
            return self.queued_seq

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
                head = self.pending[0]
                applied = self.hive.applied_seq
            if len(head) == 2:
                self._fold_items(head)
            else:
                self._fold_range(head, applied)
            self._freezer.folded(backlog=bool(self.pending))
        self._freezer.thaw()

    def _fold_items(self, head: Agreed) -> None:
        """Entries of the older format: the bytes came with them."""
        with self._fold_gate, self.lock:
            state, pending = self.hive, self.pending
            failures = state.fold_failure_count
            count = 0
            while pending and len(pending[0]) == 2 and count < _FOLD_CHUNK:
                seq, raw = pending.popleft()  # type: ignore[misc]
                fold_raw(state, seq, raw)
                count += 1
            self._report(state, failures)

    def _fold_range(self, head: Agreed, applied: int) -> None:
        """Fold the next chunk of an agreed range: bytes from the feeder, checked against their
        digests outside the lock, folded under it."""
        lo, hi, digests = head  # type: ignore[misc]
        start = max(lo, applied + 1)
        chunk: list[tuple[int, bytes]] = []
        for seq in range(start, min(hi, start + _FOLD_CHUNK - 1) + 1):
            raw = self.cache.take(seq, _FEED_WAIT_S)
            if raw is None:
                break  # not read yet (the feeder was told where to read)
            at = (seq - lo) * DIGEST_BYTES
            if digest_of(raw) != digests[at : at + DIGEST_BYTES]:
                # The log holds other bytes at `seq` than the leader read: never fold them.
                self.stalled = f"event {seq} does not match the digest Raft agreed on"
                log.error("log entry does not match its agreed digest; folding waits", seq=seq)
                self.cache.drop_through(seq)  # read it again
                time.sleep(_FEED_WAIT_S)
                break
            chunk.append((seq, raw))
        with self._fold_gate, self.lock:
            if not self.pending or self.pending[0] is not head:
                return  # replaced meanwhile (a snapshot was installed)
            state = self.hive
            failures = state.fold_failure_count
            for seq, raw in chunk:
                fold_raw(state, seq, raw)
            if state.applied_seq >= hi:
                self.pending.popleft()
            self._report(state, failures)
        if chunk:
            self.stalled = None
            self.cache.drop_through(chunk[-1][0])

    @staticmethod
    def _report(state: HiveState, failures: int) -> None:
        # `fold_raw` never raises: an entry it cannot fold is recorded in the state (the same
        # on every replica) and skipped.
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

    async def submit(self, lo: int, hi: int, digests: bytes, timeout: float) -> int:
        """Propose folding `lo..hi` and wait (bounded) until it is folded here or queued."""
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
                    future.set_exception(RaftError(f"raft refused the range (reason {error})"))

            loop.call_soon_threadsafe(settle)

        self.apply_range(lo, hi, digests, callback=done)
        # Under load pysyncobj sometimes never calls back for an entry it did commit, so the
        # folded sequence is watched too: whichever says "done" first wins.
        deadline = loop.time() + timeout
        try:
            while not future.done():
                if self.applied_seq >= hi:
                    return self.applied_seq
                if loop.time() > deadline:
                    raise TimeoutError(f"range up to {hi} not agreed within {timeout}s")
                await asyncio.wait([future], timeout=0.005)
        finally:
            # Not waited for any more: a late answer (a refusal once leadership moved) must not
            # end as "Future exception was never retrieved" in the log.
            future.cancel()
        result = future.result()
        if result < hi:
            raise RaftError(f"range {lo}..{hi} was not taken (this replica stands at {result})")
        return result


class RaftError(RuntimeError):
    pass
