"""How long a process has run, as `swarm up` reports what the user waited ("ready in")."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from swarm.devstack.stack import seconds_since_start

pytestmark = pytest.mark.timeout(60)

#: One clock tick (/proc's unit), and rounding of /proc/uptime's hundredths.
TICK = 0.02


def test_the_age_of_a_process_is_exact_to_the_tick() -> None:
    """psutil's start time adds a boot time in whole seconds, so an age taken from it was up
    to a second off (a stack "ready in 8.6 s" after a 7.9 s wait); counted from boot at both
    ends it lies between the time around the process's start and now."""
    before = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    after = time.monotonic()
    try:
        age = seconds_since_start(child.pid)
        now = time.monotonic()
    finally:
        child.communicate(b"")
    assert now - after - TICK <= age <= now - before + TICK
