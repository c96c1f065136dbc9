"""Behaviour vectors in Postgres + pgvector, and `swarm observe similar` over them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from services.observer.analysis import Observatory
from services.observer.behaviour import DIMENSIONS, BehaviourRow, BehaviourStore
from services.observer.scoring import DetectorConfig
from swarm.cli.app import app
from swarm.devstack.stack import upgrade_database
from tests.observer.workload import Step, messages, normal


def heavy(t: float, rng: object) -> Step:
    """Few, slow, fuel-hungry calls: another kind of agent than `normal`."""
    return Step(2, 0, 5e8, 2 * 800.0, 300.0)


def rows(agent: str, shape: object) -> list[BehaviourRow]:
    core = Observatory(DetectorConfig(), 2.0)
    out = []
    for seq, t, body in messages(40, shape, agent=agent):  # type: ignore[arg-type]
        for o in core.apply_metrics(seq, t, body):
            w = o.window
            out.append(BehaviourRow(w.agent_id, w.namespace, w.name, w.end, o.vector, w.signals()))
    return out


def test_similar_agents_are_nearest(database_url: str) -> None:
    assert upgrade_database(database_url) == "0003"
    store = BehaviourStore(database_url)
    try:
        batches = [
            rows("obs-alike-1", normal),
            rows("obs-alike-2", normal),
            rows("obs-heavy-1", heavy),
        ]
        for batch in batches:
            assert len(batch[0].vector) == DIMENSIONS
            store.store(batch)
            store.store(batch)  # a replayed window is not stored twice
        count = store._connection().execute(
            "SELECT count(*) FROM agent_behaviour WHERE agent_id = 'obs-alike-1'"
        )
        assert count.fetchone() == (len(batches[0]),)

        near = store.similar("obs-alike-1", 5)
        ours = [r for r in near if r.agent_id.startswith("obs-")]
        assert [r.agent_id for r in ours] == ["obs-alike-2", "obs-heavy-1"]
        assert ours[0].distance < 0.01 < ours[1].distance
        assert store.resolve("default/obs-heavy-1") == "obs-heavy-1"
        assert store.resolve("nobody") is None
    finally:
        store.close()

    result = CliRunner().invoke(
        app,
        [
            "observe",
            "similar",
            "obs-alike-2",
            "-k",
            "3",
            "-o",
            "json",
            "--database-url",
            database_url,
        ],
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["agent_id"] == "obs-alike-2"
    assert answer["similar"][0]["agent_id"] == "obs-alike-1"

    missing = CliRunner().invoke(
        app, ["observe", "similar", "nobody", "--database-url", database_url]
    )
    assert missing.exit_code == 2
    assert "no behaviour recorded" in missing.output
