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
import logging
import structlog
from swarm.kernel.logs import configure_logging
configure_logging({level!r}, {fmt!r})
log = structlog.get_logger("probe")
log.info("an info line", n=1)
log.warning("a warning line", n=2)
logging.getLogger("uvicorn.error").warning("a library's line")
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
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["event"] == "a warning line"
    assert record["level"] == "warning"
    assert record["n"] == 2
    assert "timestamp" in record
    # A standard library logger's line is a JSON object too, naming its logger.
    library = json.loads(lines[1])
    assert (library["event"], library["logger"]) == ("a library's line", "uvicorn.error")
    both = run("info", "console")
    assert len(both) == 3
    assert "an info line" in both[0]
    assert not both[0].startswith("{")


def test_auto_is_json_when_stderr_is_not_a_terminal() -> None:
    # Under `swarm up`, in a container, in this test: stderr is a file or a pipe.
    lines = run("info", "auto")
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["an info line", "a warning line", "a library's line"]
    from swarm.kernel.settings import Settings

    assert Settings().log_format == "auto"


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


def test_auto_is_readable_on_a_terminal() -> None:
    import pty

    primary, secondary = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT.format(level="info", fmt="auto")],
            stderr=secondary,
            timeout=60,
            check=True,
        )
        assert done.returncode == 0
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    lines = [line for line in b"".join(chunks).decode().splitlines() if line.strip()]
    assert len(lines) == 3, lines
    assert "an info line" in lines[0]
    assert not any(line.lstrip().startswith("{") for line in lines)
