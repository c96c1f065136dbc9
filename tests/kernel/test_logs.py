"""`SWARM_LOG_LEVEL` and `SWARM_LOG_FORMAT` decide what a service logs, and how."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import structlog
from swarm.kernel.logs import configure_logging
configure_logging({level!r}, {fmt!r})
log = structlog.get_logger("probe")
log.info("an info line", n=1)
log.warning("a warning line", n=2)
"""


def run(level: str, fmt: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(level=level, fmt=fmt)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stderr.splitlines()


def test_the_level_filters_and_json_is_one_object_per_line() -> None:
    lines = run("warning", "json")
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "a warning line"
    assert record["level"] == "warning"
    assert record["n"] == 2
    assert "timestamp" in record
    both = run("info", "console")
    assert len(both) == 2
    assert "an info line" in both[0]


def test_an_unknown_level_is_refused() -> None:
    from swarm.kernel.logs import configure_logging

    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")
