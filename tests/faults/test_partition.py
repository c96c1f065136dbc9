"""A Hive leader cut off from its peers (network namespaces) while it still reaches NATS, and
the namespaces' clean-up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.faults import netns
from tests.faults.scenarios import leader_partitioned

pytestmark = pytest.mark.timeout(360)


@pytest.fixture(autouse=True)
def namespaces_allowed() -> None:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"cannot build network namespaces here: {reason}")


def listing(*what: str) -> str:
    return subprocess.run(["ip", *what], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
async def test_a_cut_off_leader_stops_deciding_and_catches_up_after_healing(
    tmp_path: Path,
) -> None:
    result = await leader_partitioned(tmp_path)
    assert result.ok, result.explain()
    assert result.details["old_leader_stepped_down_s"] < result.details["cut_s"]
    assert f"swf-{os.getpid()}-" not in listing("netns", "list")  # all gone again


def test_a_network_that_fails_half_way_is_removed() -> None:
    network = netns.Network(size=2)
    # The second replica's namespace exists already, so create() fails after making others.
    subprocess.run(["ip", "netns", "add", network.namespace(1)], check=True)
    try:
        with pytest.raises(netns.NetnsError, match="exists"):
            network.create()
        assert network.switch not in listing("netns", "list")
        assert network.namespace(0) not in listing("netns", "list")
        assert network.host_link not in listing("link")
        assert network.namespace(1) in listing("netns", "list")  # not its own: left alone
    finally:
        subprocess.run(["ip", "netns", "del", network.namespace(1)], check=False)


def test_namespaces_of_a_dead_run_are_swept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = netns.Network(size=1, run=f"{dead.pid}-abcdef")
    subprocess.run(["ip", "netns", "add", stale.switch], check=True)
    try:
        netns.sweep_stale()
        assert stale.switch not in listing("netns", "list")
    finally:
        subprocess.run(["ip", "netns", "del", stale.switch], check=False, capture_output=True)
