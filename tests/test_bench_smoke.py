"""The benches run end to end on tiny workloads and write complete reports.

Their time limits are bounds for a loaded machine (three test workers beside busy loops: the
chaos bench once took over 140 s there), not expectations: speed is the benches' own business."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bench_report import run_bench_report

CASES = {"append", "append, pre-serialized", "consume + ack"}


@pytest.mark.timeout(180)
def test_eventlog_bench_writes_positive_results(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "eventlog.py", "--messages", "200", "--size", "256", tmp_path=tmp_path, timeout=150
    )
    assert "client/raw" in stdout

    assert report["params"]["messages"] == 200
    assert report["params"]["repeats"] >= 1
    assert "nats-server" in report["machine"]["nats_server"]

    results = report["results"]
    assert {(r["mode"], r["case"]) for r in results} == {
        (mode, case) for mode in ("default", "always") for case in CASES
    }
    for r in results:
        for key in ("client_msgs_per_s", "raw_msgs_per_s", "ratio", "cpu_ratio"):
            assert r[key] > 0, (r["mode"], r["case"], key)
        assert len(r["client_runs"]) == len(r["raw_runs"]) == report["params"]["repeats"]
        assert all(run["msgs_per_s"] > 0 for run in r["client_runs"] + r["raw_runs"])

    costs = report["sync_cost"]
    # The pre-serialized case is compared with the raw runs of "append", listed once.
    assert {(c["case"], c["path"]) for c in costs} == {
        (case, path) for case in CASES for path in ("client", "raw")
    } - {("append, pre-serialized", "raw")}
    assert all(c["always_over_default"] > 0 for c in costs)


@pytest.mark.timeout(270)
def test_runtime_bench_writes_positive_results(tmp_path: Path) -> None:
    tiny = ["--deploys", "5", "--burst", "5", "--agents", "50", "--idle", "200"]
    tiny += ["--components", "0"]  # building and compiling a component takes ~10 s
    stdout, report = run_bench_report(
        "runtime.py",
        *tiny,
        *("--messages", "100", "--vectors", "300"),
        tmp_path=tmp_path,
        timeout=240,
    )
    assert "deploy → running p99" in stdout

    assert report["params"]["deploys"] == 5
    assert report["params"]["vectors"] == 300

    deploy = report["deploy"]
    assert 0 < deploy["p50_ms"] <= deploy["p99_ms"]
    assert deploy["burst"]["per_s"] > 0
    assert report["starts"]["per_s"] > 0
    messages = report["messages"]
    for side in ("swarm", "raw"):
        assert messages[side]["msgs_per_s"] > 0
        assert messages[side]["p50_ms"] > 0
        assert messages[side]["p50_ms_one_at_a_time"] > 0
    assert messages["ratio_msgs_per_s"] > 0
    assert report["idle_memory"]["agents"] == 200
    assert report["idle_memory"]["bytes_per_agent"] > 0
    assert report["idle_memory_component"]["status"] == "skipped"
    vectors = report["vector_search"]
    assert vectors["vectors"] == 300
    # Always measured: a report without numbers here is a failure, not a pass.
    assert vectors["status"] == "measured"
    assert vectors["p50_ms"] > 0
    assert vectors["raw_p50_ms"] > 0
    assert set(report["met"]) == {"deploy_p99", "starts_per_s", "idle_agents_per_pod"}


@pytest.mark.timeout(270)
def test_surfaces_bench_replay_writes_a_row_per_measure(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "surfaces.py",
        *("--case", "replay", "--events", "300", "--repeats", "1"),
        tmp_path=tmp_path,
        timeout=240,
    )
    assert "User surfaces" in stdout

    assert report["params"]["events"] == 300
    rows = {r["measure"]: r for r in report["results"]}
    assert set(rows) == {
        "timeline replay, events/s",
        "timeline --at (replay + evolve), events/s",
    }
    for row in rows.values():
        assert row["case"] == "replay"
        assert row["events"] >= 300
        assert row["swarm_per_s"] > 0
        assert row["raw_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["swarm_per_s"] / row["raw_per_s"])
        assert len(row["runs"]["swarm"]) == len(row["runs"]["raw"]) == 1
    assert rows["timeline replay, events/s"]["target"] == 0.5
    assert isinstance(rows["timeline replay, events/s"]["met"], bool)


@pytest.mark.timeout(360)
def test_gateway_bench_compares_the_api_with_the_client_layer(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "gateway.py",
        *("--commands", "12", "--reads", "12", "--concurrency", "4"),
        tmp_path=tmp_path,
        timeout=330,
    )
    assert "API / baseline" in stdout
    assert report["params"] == {"commands": 12, "reads": 12, "concurrency": 4}
    for measure in ("command", "read", "sse"):
        for path in ("api", "client"):
            figures = report[measure][path]
            assert 0 < figures["p50_ms"] <= figures["p95_ms"], (measure, path)
    assert report["commands_per_s"]["api"] > 0
    assert report["commands_per_s"]["client"] > 0


@pytest.mark.timeout(360)
def test_streaming_bench_writes_positive_results(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "streaming.py",
        *("--events", "600", "--keys", "20,300", "--batch", "100", "--repeats", "1"),
        tmp_path=tmp_path,
        timeout=330,
    )
    assert "faust/plain" in stdout

    assert report["params"] == {"events": 600, "keys": [20, 300], "batch": 100, "repeats": 1}
    assert report["machine"]["faust_streaming"] == "0.15.3"
    rows = report["results"]
    assert [(r["keys"], r["path"].split()[0]) for r in rows] == [
        (20, "plain"),
        (20, "faust"),
        (300, "plain"),
        (300, "faust"),
    ]
    for row in rows:
        assert row["events"] == 600
        assert row["events_per_s"] > 0
        assert row["cpu_us_per_event"] > 0
        assert len(row["runs"]) == 1
    for faust_ in rows[1::2]:
        assert faust_["ratio"] > 0
        assert faust_["start_s"] > 0
        assert faust_["met"] == (faust_["ratio"] >= faust_["target_ratio"])


@pytest.mark.timeout(450)
def test_chaos_bench_reports_every_scenario_it_ran(tmp_path: Path) -> None:
    """Two scenarios in quick mode (tests/faults/ runs all of them): one restarting a server
    under a pod, one with network namespaces, reported as skipped where they are not allowed."""
    stdout, report = run_bench_report(
        "chaos.py",
        *("--quick", "--scenario", "nats-kill", "--scenario", "leader-partition"),
        tmp_path=tmp_path,
        timeout=420,
    )
    assert "Chaos" in stdout
    assert "recovery p50 over all runs" in stdout

    assert report["params"]["quick"] is True
    assert report["params"]["trials"] == 1
    ran = {s["scenario"]: s for s in report["scenarios"]}
    assert set(ran) | set(report["skipped"]) == {"nats-kill", "leader-partition"}
    nats_kill = ran["nats-kill"]
    assert nats_kill["trials"] == len(nats_kill["runs"]) == 1
    assert nats_kill["commands_sent"] > 0
    assert nats_kill["outcomes_missing"] == nats_kill["outcomes_duplicated"] == 0
    assert nats_kill["recovery_p50_s"] > 0
    assert nats_kill["baseline_p50_s"] > 0
    assert nats_kill["replicas_agree"] is True
    for summary in ran.values():
        run = summary["runs"][0]
        assert {"commands_sent", "outcomes_missing", "recovery_s", "violations"} <= set(run)
    assert set(report["met"]) == {"no_missing", "no_duplicates", "recovery_p50"}


@pytest.mark.timeout(420)
def test_cli_bench_times_every_case_with_and_without_a_stack(tmp_path: Path) -> None:
    stdout, report = run_bench_report("cli.py", "--quick", tmp_path=tmp_path, timeout=400)
    assert "CLI start" in stdout

    assert report["params"] == {"runs": 3, "quick": True, "stack": True}
    # Each case ran as intended: a stack answered the second pair, none the first.
    codes = {(r["command"], r["stack"]): r["exit_codes"] for r in report["start"]}
    assert codes == {
        ("swarm --help", False): [0],
        ("swarm agent ls --help", False): [0],
        ("swarm status", False): [1],
        ("swarm agent ls", False): [4],
        ("swarm status", True): [0],
        ("swarm agent ls", True): [0],
    }
    for row in report["start"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"]
        assert row["baseline_p50_ms"] > 0
        assert len(row["runs_ms"]) == 3
        assert row["target_ms"] == (500.0 if row["stack"] else 300.0)
        assert row["met"] == (row["p50_ms"] < row["target_ms"])


@pytest.mark.timeout(270)
def test_security_bench_writes_positive_results(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        *("security.py", "--commands", "50", "--messages", "200", "--trials", "1"),
        tmp_path=tmp_path,
        timeout=240,
    )
    assert "signed + verified vs unsigned" in stdout
    assert "mesh request/reply/s, signed + verified vs neither" in stdout
    results = report["results"]
    assert set(results) == {"commands", "publish", "mesh"}
    assert results["mesh"]["target"] == 0.8
    for row in results.values():
        assert row["ratio"] > 0
        assert all(v > 0 for v in row["with_per_s"] + row["without_per_s"])
    assert results["commands"]["target"] == 0.8
