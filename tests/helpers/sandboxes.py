"""What the sandbox fixtures (tests/runtime/conftest.py) hand a test: a sandbox maker's type and
the fixed clock of their host."""

from __future__ import annotations

from collections.abc import Callable

from runtime.sandbox import AgentSandbox

#: Fixed time for MemoryHost, so now_ms is checkable.
NOW_MS = 1_700_000_000_000

MakeSandbox = Callable[..., AgentSandbox]
