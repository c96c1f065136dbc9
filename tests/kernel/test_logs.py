"""`SWARM_LOG_LEVEL` and `SWARM_LOG_FORMAT` decide what a service logs, and how."""

from __future__ import annotations

import asyncio
import json
import os
import signal
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


@pytest.mark.timeout(90)
async def test_a_service_process_logs_json_lines(nats_url: str) -> None:
    """`python -m services.webhooks` configures logging from its settings at start: with
    SWARM_LOG_FORMAT=json every line on its stderr is one JSON object."""
    env = {
        **os.environ,
        "SWARM_NATS_URL": nats_url,
        "SWARM_LOG_LEVEL": "info",
        "SWARM_LOG_FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.webhooks",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("webhook dispatcher started" in line for line in lines):
                line = (await process.stderr.readline()).decode()
                assert line, f"the service ended before it started: {lines}"
                lines.append(line)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 30)
    lines += rest.decode().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert {r["event"] for r in records} >= {
        "webhook dispatcher started",
        "webhook dispatcher stopped",
    }
    assert all(r["level"] in {"info", "warning", "error"} for r in records)
