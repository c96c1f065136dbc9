"""Keeping Python's cycle collector off the Hive's state while a replica folds a backlog.

The folded state is long-lived data without reference cycles (plain dataclasses and pydantic
models): every object in it is freed by reference counting when the state drops it, and the cycle
collector can never reclaim any of it. Yet CPython runs a full collection, a pass over every
tracked object in the process, each time the oldest generation has grown by a quarter, so folding
a long log scans the growing state again and again. Measured on bench/hive.py's workload (20,000
agents from 40,000 events, 37 tracked objects per agent): seven full passes, 47 of the 94 us that
`fold_raw` took per event in a loop, and about 40 of the ~140 us of CPU a Hive replica spent per
folded event.

So while a backlog is being folded the fold thread freezes (`gc.freeze`) what exists after each
chunk: frozen objects are left out of every collection, and freezing costs the same whatever
their number. Reference counting still frees them as usual. What a freeze could keep is garbage
that is in a reference cycle and still alive when frozen (an asyncio task, an exception and its
traceback); so nothing stays frozen for long:

* once the backlog is folded, everything is handed back to the collector (`gc.unfreeze`), which
  makes one full pass at its next turn, as it would have anyway;
* a backlog that lasts longer than `max_frozen_s` is interrupted by one full collection.

Process-wide by nature (the collector is); only the fold thread calls it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

#: The longest the collector is kept off what exists (one full collection ends it).
MAX_FROZEN_S = 60.0


class Freezer:
    def __init__(
        self, max_frozen_s: float = MAX_FROZEN_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_frozen_s = max_frozen_s
        self.clock = clock
        #: When the current freeze began; None when nothing is frozen by this freezer.
        self.since: float | None = None

    def folded(self, backlog: bool) -> None:
        """After a chunk was folded: freeze while more is agreed and waiting, else thaw."""
        if not backlog:
            if self.since is not None:
                self.thaw()
            return
        if self.since is None:
            self.since = self.clock()
        elif self.clock() - self.since > self.max_frozen_s:
            self.thaw()
            gc.collect()
            return
        gc.freeze()

    def thaw(self) -> None:
        """Hand everything frozen back to the collector; safe to call twice."""
        if self.since is not None:
            self.since = None
            gc.unfreeze()


__all__ = ["MAX_FROZEN_S", "Freezer"]
