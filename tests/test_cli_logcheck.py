"""`swarm timeline verify` on real JetStream: each kind of defect planted in a clean log is found,
exactly it and where it is, and a clean log passes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from schemas import (
    CommandAccepted,
    CommandRejected,
    Envelope,
    command,
    commands,
    event,
    events,
    names,
    new_id,
)
from schemas.specs import Quota
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.seal import SealKey
from swarm.kernel.settings import Settings
from swarm.kernel.streams import stream_specs
from tests.helpers.outcomes import accepted, rejected
from tests.helpers.servers import own_nats
from tests.helpers.timeline import invoke_timeline, timeline_cli


async def verify(url: str, *args: str) -> Result:
    return await invoke_timeline(["verify", *args], url)


async def findings(url: str, *args: str) -> list[tuple[str, str, int]]:
    """(kind, stream, seq) of every finding; checks the exit code agrees."""
    result = await verify(url, "-o", "json", *args)
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.exit_code == (0 if report["ok"] else 1), result.output
    return [(f["kind"], f["stream"], f["seq"]) for f in report["findings"]]


async def answered(log: EventLog, replicas: int = 2) -> tuple[Envelope[Any], list[int]]:
    """A command, one event it caused and its outcome; (the command, the events' sequences)."""
    cmd = command(commands.ScaleAgent(name="a", replicas=replicas), source="test", identity="u:t")
    await log.append(cmd)
    # An event that folds into any state (verify folds the log as the replicas do).
    scaled = event(
        events.NamespaceCreated(name=f"ns-{replicas}", quota=Quota()),
        aggregate_id=f"ns-{replicas}",
        source="test",
        cause=cmd,
    )
    outcome = accepted(cmd, events=[scaled.id])
    return cmd, [(await log.append(e)).seq for e in (scaled, outcome)]


async def unanswered(log: EventLog) -> int:
    cmd = command(commands.ScaleAgent(name="b", replicas=1), source="test", identity="u:t")
    return (await log.append(cmd)).seq


async def test_a_clean_log_passes(own_nats_url: str, own_log: EventLog) -> None:
    await answered(own_log)
    await answered(own_log, 3)
    # A command the Hive could not read at all is answered on `_invalid`, naming its sequence.
    garbage = await own_log.append_raw(
        AppendRequest(commands.ScaleAgent.TYPE, b"\x00garbage", new_id())
    )
    rejected = event(
        CommandRejected(
            command_id=names.INVALID_COMMAND_ID,
            reason="body is not JSON",
            received={"stream_seq": garbage.seq},
        ),
        aggregate_id=names.INVALID_COMMAND_ID,
        source="test",
    )
    await own_log.append(rejected)
    assert await findings(own_nats_url) == []
    table = await verify(own_nats_url)
    assert table.exit_code == 0
    assert "checked 3 commands and 5 events: no findings" in table.stderr


async def test_a_command_without_outcome(own_nats_url: str, own_log: EventLog) -> None:
    skipped = await unanswered(own_log)
    await answered(own_log)
    assert await findings(own_nats_url) == [("missing-outcome", names.STREAM_COMMANDS, skipped)]


async def test_a_recent_command_is_pending_until_its_grace_ends(
    own_nats_url: str, own_log: EventLog
) -> None:
    await answered(own_log)
    recent = await unanswered(own_log)
    result = await verify(own_nats_url, "-o", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["findings"] == []
    assert [p["seq"] for p in report["pending"]] == [recent]
    assert await findings(own_nats_url, "--grace", "0") == [
        ("missing-outcome", names.STREAM_COMMANDS, recent)
    ]


async def test_a_second_outcome(own_nats_url: str, own_log: EventLog) -> None:
    cmd, (_, first) = await answered(own_log)
    second = rejected(cmd, "again")
    seq = (await own_log.append(second)).seq
    assert await findings(own_nats_url) == [("duplicate-outcome", names.STREAM_EVENTS, seq)]
    report = json.loads((await verify(own_nats_url, "-o", "json")).stdout)
    assert report["findings"][0]["related"] == [first, seq]


async def test_a_sequence_gap(tmp_path: Path) -> None:
    with own_nats(tmp_path / "nats") as url:
        settings = Settings(nats_url=url)
        log = await EventLog.connect(url, settings, ensure=False)
        # Swarm's streams refuse deletes; only a stream made without that guard can lose one.
        for spec in stream_specs(settings):
            config = spec.config()
            config.deny_delete = False
            await log.js.add_stream(config)
        await answered(log)
        _, (scaled, _) = await answered(log, 3)
        await answered(log, 4)
        await log.js.delete_msg(names.STREAM_EVENTS, scaled)
        await log.close()
        assert await findings(url) == [("gap", names.STREAM_EVENTS, scaled)]
        table = await verify(url)
        assert table.exit_code == 1
        assert f"sequence {scaled} missing" in table.stdout


async def test_events_that_do_not_decode(own_nats_url: str, own_log: EventLog) -> None:
    await answered(own_log)
    broken = await own_log.append_raw(AppendRequest("swarm.evt.agent.A1.bogus", b"\x00{", new_id()))
    unknown = {
        "specversion": "1.0",
        "id": new_id(),
        "source": "elsewhere",
        "type": "swarm.agent.teleported",
        "data": {"agent_id": "A1"},
    }
    odd = await own_log.append_raw(
        AppendRequest("swarm.evt.agent.A1.teleported", json.dumps(unknown).encode(), new_id())
    )
    assert await findings(own_nats_url) == [
        ("undecodable", names.STREAM_EVENTS, broken.seq),
        ("undecodable", names.STREAM_EVENTS, odd.seq),
    ]
    report = json.loads((await verify(own_nats_url, "-o", "json")).stdout)
    assert "unknown event type 'swarm.agent.teleported'" in report["findings"][1]["detail"]


async def test_a_cause_that_is_not_on_the_log(own_nats_url: str, own_log: EventLog) -> None:
    await answered(own_log)
    never_sent = command(commands.ScaleAgent(name="c", replicas=1), source="test")
    orphan = event(
        events.NamespaceUpdated(name="ns-2", quota=Quota(max_agents=1)),
        aggregate_id="ns-2",
        source="test",
        cause=never_sent,
    )
    seq = (await own_log.append(orphan)).seq
    assert await findings(own_nats_url) == [("dangling-causation", names.STREAM_EVENTS, seq)]


async def test_an_outcome_for_a_command_that_is_not_on_the_log(
    own_nats_url: str, own_log: EventLog
) -> None:
    await answered(own_log)
    ghost = new_id()
    outcome = event(
        CommandAccepted(command_id=ghost, command_type=commands.ScaleAgent.TYPE),
        aggregate_id=ghost,
        source="test",
    )
    seq = (await own_log.append(outcome)).seq
    assert await findings(own_nats_url) == [("orphan-outcome", names.STREAM_EVENTS, seq)]


async def test_jsonl_prints_one_finding_per_line(own_nats_url: str, own_log: EventLog) -> None:
    first = await unanswered(own_log)
    second = await unanswered(own_log)
    await answered(own_log)
    result = await verify(own_nats_url, "-o", "jsonl")
    assert result.exit_code == 1
    lines: Sequence[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["kind"], x["seq"]) for x in lines] == [
        ("missing-outcome", first),
        ("missing-outcome", second),
    ]


async def test_an_event_no_replica_could_fold(own_nats_url: str, own_log: EventLog) -> None:
    """A `pod.lost` for a pod that was never registered: every replica records it as a fold
    failure and goes on; verify names it with the replicas' reason."""
    await answered(own_log)
    lost = event(
        events.PodLost(pod_id="nowhere", reason="forged"), aggregate_id="nowhere", source="x"
    )
    seq = (await own_log.append(lost)).seq
    assert await findings(own_nats_url) == [("unfoldable", names.STREAM_EVENTS, seq)]
    report = json.loads((await verify(own_nats_url, "-o", "json")).stdout)
    assert "pod nowhere is not known" in report["findings"][0]["detail"]


async def test_an_outcome_without_the_hive_s_seal_is_foreign(
    own_nats_url: str, own_log: EventLog, tmp_path: Path
) -> None:
    """With the Hive's key known, an outcome it did not seal is reported and answers nothing."""
    key = SealKey.from_secret("verify-test-secret")
    cmd = command(commands.ScaleAgent(name="a", replicas=2), source="test", identity="u:t")
    await own_log.append(cmd)
    forged = rejected(cmd, "forged", source="hive/hive-0")
    forged_seq = (await own_log.append(forged)).seq
    real = accepted(cmd, source="hive/hive-0")
    await own_log.append_raw(
        AppendRequest(names.outcome_subject(cmd.id, "accepted"), key.seal(real.to_json()), real.id)
    )
    env = {"SWARM_HIVE_PUBLIC_KEY": key.public.text}
    result = await asyncio.to_thread(
        CliRunner().invoke,
        timeline_cli(),
        ["timeline", "verify", "-o", "json", "--nats-url", own_nats_url],
        env=env,
    )
    report = json.loads(result.stdout)
    assert [(f["kind"], f["seq"]) for f in report["findings"]] == [("foreign-outcome", forged_seq)]
    # Without the key, the forged one counts as a second outcome.
    assert [k for k, _, _ in await findings(own_nats_url)] == ["duplicate-outcome"]


async def test_the_same_command_sent_twice_needs_one_outcome_another_body_its_own(
    own_nats_url: str, own_log: EventLog
) -> None:
    cmd, _ = await answered(own_log)
    await own_log.append_raw(AppendRequest(cmd.type, cmd.to_json(), new_id()))  # same bytes
    other = command(
        commands.ScaleAgent(name="z", replicas=9), source="test", identity="u:t", id=cmd.id
    )
    reused = (await own_log.append_raw(AppendRequest(other.type, other.to_json(), new_id()))).seq
    await answered(own_log, 5)
    assert await findings(own_nats_url) == [("missing-outcome", names.STREAM_COMMANDS, reused)]
    rejected = event(
        CommandRejected(
            command_id=names.INVALID_COMMAND_ID,
            reason="id reused",
            rule="duplicate_id",
            received={"stream_seq": reused, "id": cmd.id},
        ),
        aggregate_id=names.INVALID_COMMAND_ID,
        source="test",
    )
    await own_log.append(rejected)
    assert await findings(own_nats_url) == []


async def test_a_command_nested_50000_levels_deep_does_not_stop_verify_or_time_travel(
    own_nats_url: str, own_log: EventLog
) -> None:
    """Both crashed on it before (RecursionError reading the command)."""
    await answered(own_log)
    deep = "[" * 50_000 + "]" * 50_000
    body = (
        '{"specversion":"1.0","id":"deep-1","source":"x","type":"swarm.cmd.namespace.create",'
        '"data":{"name":"d","quota":' + deep + "}}"
    ).encode()
    seq = (
        await own_log.append_raw(AppendRequest(commands.CreateNamespace.TYPE, body, "deep-1"))
    ).seq
    # Not answered here (no Hive runs): reported as such, not a crash.
    assert await findings(own_nats_url, "--grace", "0") == [
        ("missing-outcome", names.STREAM_COMMANDS, seq)
    ]
    lost = event(events.PodLost(pod_id="nowhere", reason="x"), aggregate_id="nowhere", source="x")
    lost_seq = (await own_log.append(lost)).seq
    at = await asyncio.to_thread(
        CliRunner().invoke,
        timeline_cli(),
        ["timeline", "--at", str(lost_seq), "-o", "json", "--nats-url", own_nats_url],
    )
    assert at.exit_code == 0, at.output
    state = json.loads(at.stdout)["state"]
    assert state["fold_failure_count"] == 1
    assert state["fold_failures"][0]["seq"] == lost_seq
