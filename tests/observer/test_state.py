"""The Observer's state has an exact JSON form: a core whose state goes through JSON after every
message decides exactly what an uninterrupted core decides (same windows, scores, findings)."""

from __future__ import annotations

import json
import random

import pytest

from schemas import names
from services.observer.analysis import AgentState, DeploymentState, Observatory
from services.observer.detectors import TREE_FEATURES, MultivariateTrees
from services.observer.features import parse_metrics
from services.observer.scoring import DetectorConfig
from services.observer.stream import TableSync, report
from swarm.kernel.ids import IdKey
from tests.observer.workload import START, empty_tables, messages, planted

CONFIG = DetectorConfig()


def through_json(core: Observatory) -> Observatory:
    """A new core holding `core`'s state as it comes back from JSON text."""
    again = Observatory(CONFIG, core.window_s)
    for agent_id, state in core.agents.items():
        windows = json.loads(json.dumps(state.window_json()))
        analysis = json.loads(json.dumps(state.analysis.to_json()))
        again.agents[agent_id] = AgentState.from_json(windows, analysis, CONFIG)
    for namespace, deployment in core.deployments.items():
        doc = json.loads(json.dumps(deployment.to_json()))
        again.deployments[namespace] = DeploymentState.from_json(doc)
    return again


# CPU-bound: ~17 s on a quiet machine here, and over 60 s beside four busy loops (stress run I).
@pytest.mark.timeout(240)
def test_state_through_json_after_every_message_decides_the_same() -> None:
    shape = planted("shift")
    straight = Observatory(CONFIG, 2.0)
    rebuilt = Observatory(CONFIG, 2.0)
    findings = 0
    windows = 0
    for seq, t, body in messages(int(START) + 120, shape):  # type: ignore[arg-type]
        expected = straight.apply_metrics(seq, t, body)
        got = rebuilt.apply_metrics(seq, t, body)
        assert [(o.window, o.score, o.threshold, o.trees, o.finding) for o in got] == [
            (o.window, o.score, o.threshold, o.trees, o.finding) for o in expected
        ]
        findings += sum(o.finding is not None for o in got)
        windows += len(got)
        rebuilt = through_json(rebuilt)
    assert findings >= 1
    assert windows > 200
    # The trees had learnt (their masses pivoted) before the incident, so they were restored
    # with masses, not afresh.
    trees = straight.agents["agent-1"].analysis.trees.to_json()
    assert not trees["first_window"]
    assert rebuilt.agents["agent-1"].analysis.trees.to_json() == trees
    assert rebuilt.agents["agent-1"].window_json() == straight.agents["agent-1"].window_json()


def test_trees_of_another_shape_start_afresh() -> None:
    trees = MultivariateTrees()
    rng = random.Random(2)
    for _ in range(60):
        trees.model.learn_one({f: rng.random() for f in TREE_FEATURES})  # type: ignore[no-untyped-call]
    doc = trees.to_json()
    assert MultivariateTrees.from_json(doc).to_json() == doc
    doc["shape"] = "0" * 16
    fresh = MultivariateTrees.from_json(doc)
    assert fresh.to_json() == {"seed": trees.seed}


def test_table_sync_reloads_what_a_rollback_put_back() -> None:
    """The service's handlers keep the core's objects between messages; after a handler failed
    and the module put the tables back, the objects are reloaded from the tables, so the run
    decides exactly what an uninterrupted core decides."""
    straight = Observatory(CONFIG, 2.0)
    core = Observatory(CONFIG, 2.0)
    sync = TableSync(core)
    tables = empty_tables()
    pods = {"p1"}
    failures = 0
    for seq, t, body in messages(int(START) + 60, planted("shift")):  # type: ignore[arg-type]
        expected = straight.apply_metrics(seq, t, body)
        samples = parse_metrics(body, t)
        agents = {s.agent_id for s in samples}
        if seq % 37 == 0:
            # A handler that fails after the core applied the message: the tables are put back
            # as they were (by the module), the core's objects are forgotten, the event runs again.
            before = {name: dict(table) for name, table in tables.items()}
            namespaces = sync.load(tables, agents, {"default"}, pods)  # type: ignore[arg-type]
            core.apply_samples(seq, samples)
            sync.save(tables, agents, namespaces)  # type: ignore[arg-type]
            tables = before
            sync.forget(agents, namespaces, pods)
            failures += 1
        namespaces = sync.load(tables, agents, {"default"}, pods)  # type: ignore[arg-type]
        got = core.apply_samples(seq, samples)
        sync.save(tables, agents, namespaces)  # type: ignore[arg-type]
        assert [(o.window, o.score, o.finding) for o in got] == [
            (o.window, o.score, o.finding) for o in expected
        ]
    assert failures >= 10
    state = straight.agents["agent-1"]
    assert tables[names.OBSERVER_TABLE_WINDOWS]["agent-1"] == state.window_json()
    assert tables[names.OBSERVER_TABLE_DETECTORS]["agent-1"] == state.analysis.to_json()
    deployment = straight.deployments["default"].to_json()
    assert tables[names.OBSERVER_TABLE_DEPLOYMENTS]["default"] == deployment
    machines = tables[names.OBSERVER_TABLE_MACHINES]
    assert machines["p1"] == straight.machines.pod("p1").to_json()
    assert machines["*"] == straight.machines.cluster.to_json()
    assert machines["p1"]["metrics_seq"] > 0


def test_only_recent_findings_are_reported() -> None:
    """Findings read again from old metrics (a first start, a rebuild) are not sent again."""
    core = Observatory(CONFIG, 2.0)
    found = [
        o
        for seq, t, body in messages(int(START) + 60, planted("shift"))  # type: ignore[arg-type]
        for o in core.apply_metrics(seq, t, body)
        if o.finding is not None
    ]
    assert found
    finding = found[0].finding
    assert finding is not None
    ids = IdKey.from_secret("observer-test-secret", "observer")
    assert report(found[0], finding.window_end + 1, 3600.0, ids) is not None
    sent = report(found[0], finding.window_end + 3599, 3600.0, ids)
    assert sent is not None
    assert sent.id == report(found[0], finding.window_end + 2, 3600.0, ids).id  # type: ignore[union-attr]
    assert sent.id != report(found[0], finding.window_end + 2, 3600.0, IdKey.random()).id  # type: ignore[union-attr]
    assert sent.data.kind == finding.kind
    assert report(found[0], finding.window_end + 3601, 3600.0, ids) is None
