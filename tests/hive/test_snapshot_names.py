"""A Raft snapshot written before the domain moved to `swarm.domain` still loads: pysyncobj
pickles the Hive's state, and such a snapshot names its classes `services.hive.state.*`."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from tests.helpers.interpreter import run_python
from tests.helpers.sim import Sim
from tests.helpers.steps import deploy_running

ROOT = Path(__file__).resolve().parents[2]


def old_snapshot() -> tuple[bytes, str]:
    """A state pickled as the code before the move named it, and its digest."""
    sim = Sim()
    deploy_running(sim, "echo", replicas=2)
    # Protocol 2 names a class as "module\nname\n", so the module can be renamed in place.
    data = pickle.dumps(sim.state, protocol=2)
    for module in (b"state", b"reputation"):
        data = data.replace(b"swarm.domain." + module + b"\n", b"services.hive." + module + b"\n")
    assert b"swarm.domain" not in data
    assert b"services.hive.state\nHiveState\n" in data
    return data, sim.state.digest()


@pytest.mark.timeout(60)
def test_a_snapshot_naming_the_old_modules_loads_into_the_same_state(tmp_path: Path) -> None:
    data, digest = old_snapshot()
    dump = tmp_path / "raft.dump"
    dump.write_bytes(data)
    # Without the Hive's Raft module nothing knows the old names: the control.
    load = f"import pickle; pickle.loads(open({str(dump)!r}, 'rb').read())"
    plain = run_python("-c", load, cwd=ROOT, timeout=50)
    assert plain.returncode != 0
    assert "No module named 'services.hive.state'" in plain.stderr

    import services.hive.raft  # noqa: F401  (what a Hive replica imports before loading)

    loaded = pickle.loads(data)
    assert loaded.digest() == digest
