"""A whole stack (`swarm up --detach`) against foreign writes on its log, seen through the CLI:
`swarm status` reports what the Hive could not fold, `swarm publish` takes only the Hive's sealed
outcome, `swarm timeline verify` names the foreign outcome and the unfoldable event."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas import CommandRejected, event, events, names
from swarm.kernel.eventlog import AppendRequest, EventLog
from tests.helpers.cli_process import run_cli

pytestmark = pytest.mark.timeout(180)


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> Any:
    return run_cli(args, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A running stack; the CLI finds it through SWARM_DATA_DIR (no URL given)."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["SWARM_DATA_DIR"] = str(data_dir)
    up = run(["up", "--detach"], env, tmp_path, timeout=90)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env, tmp_path
    finally:
        run(["down"], env, tmp_path)


def status(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    result = run(["status", "-o", "json"], env, cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


async def write(url: str, requests: list[AppendRequest], report: dict[str, Any]) -> list[int]:
    """Append `requests` as the stack's owner: the one principal besides the Hive that may
    write on the log (tests/test_stack_auth.py), here writing what the Hive did not."""
    log = await EventLog.connect(
        url,
        ensure=False,
        credentials=Path(report["nats_credentials"]),
        ca=Path(report["nats_ca"]),
    )
    try:
        return [(await log.append_raw(r)).seq for r in requests]
    finally:
        await log.close()


def test_foreign_writes_are_reported_and_answer_nothing(
    stack: tuple[dict[str, str], Path],
) -> None:
    env, cwd = stack
    report = wait_for(
        lambda: (r := status(env, cwd))["hive"] and r["hive"][0].get("is_leader") and r,
        60,
        "the Hive to lead",
    )
    assert report["hive_public_key"] == report["hive"][0]["seal_public_key"]
    url = report["nats_url"]

    # A `pod.lost` for a pod that never registered, and an outcome for a command to come.
    lost = event(
        events.PodLost(pod_id="nowhere", reason="forged"), aggregate_id="nowhere", source="x"
    )
    forged = event(
        CommandRejected(command_id="ns-robust-1", reason="forged", rule="state"),
        aggregate_id="ns-robust-1",
        source="hive/hive-0",
        identity="service:hive",
    )
    lost_seq, forged_seq = asyncio.run(
        write(url, [AppendRequest.of(lost), AppendRequest.of(forged)], report)
    )

    # The command's id, given in a document on stdin, is the one the forged outcome names.
    doc = json.dumps({"id": "ns-robust-1"})
    published = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarm.cli.app",
            "publish",
            "swarm.cmd.namespace.create",
            "--set",
            "name=robust",
            "-f",
            "-",
            "-o",
            "json",
        ],
        input=doc,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert published.returncode == 0, published.stdout + published.stderr
    answer = json.loads(published.stdout)  # the outcome CloudEvent
    assert answer["type"] == "swarm.command.accepted", answer
    assert answer[names.EXTENSION_HIVE_SEAL]

    hive = wait_for(
        lambda: (r := status(env, cwd)["hive"]) and r[0]["fold_failures"] >= 1 and r,
        30,
        "the fold failure to show",
    )
    assert hive[0]["recent_fold_failures"][0]["seq"] == lost_seq
    table = run(["status"], env, cwd)
    assert "could not be folded" in table.stdout, table.stdout

    verified = run(["timeline", "verify", "-o", "json"], env, cwd)
    findings = {(f["kind"], f["seq"]) for f in json.loads(verified.stdout)["findings"]}
    assert ("unfoldable", lost_seq) in findings
    assert ("foreign-outcome", forged_seq) in findings

    listed = run(["agent", "ls", "-o", "json"], env, cwd)
    assert listed.returncode == 0, listed.stderr
