"""`swarm timeline` against a session recorded by a real Hive: `--at` shows exactly the state the
Hive reported at that sequence, `diff` what changed in between, `verify` finds nothing wrong, and
`export` | `import` moves the log to a second nats-server whose own Hive folds it to the same
digest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from schemas import Payload, command, commands, names, new_id
from schemas.specs import Capacity, Quota
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import AppendRequest, EventLog
from tests.helpers.history import spec
from tests.helpers.servers import own_nats
from tests.helpers.stack import Stack, running_stack
from tests.helpers.timeline import invoke_timeline
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@dataclass
class Recorded:
    stack: Stack
    #: (applied_seq, state) as the Hive answered `swarm.query.state.full` after each phase.
    first: tuple[int, dict[str, Any]]
    second: tuple[int, dict[str, Any]]
    agent_ids: dict[str, str]
    #: Sequence of the one entry of SWARM_EVENTS that is not a Swarm event.
    foreign: int


async def settle(
    stack: Stack, payloads: list[tuple[Payload, str]], raw: Sequence[bytes] = ()
) -> tuple[int, dict[str, Any]]:
    """Send commands, wait for every outcome and for the Hive to fold the whole log; returns
    the Hive's own answer to a full-state query."""
    envelopes = [command(p, source="test", identity=who) for p, who in payloads]
    await stack.client.append_batch([AppendRequest.of(e) for e in envelopes])
    ids = [e.id for e in envelopes]
    for body in raw:
        ids.append(json.loads(body)["id"])
        await stack.client.append_raw(AppendRequest(commands.DeployAgent.TYPE, body, ids[-1]))

    async def answered() -> bool:
        for command_id in ids:
            if (
                await stack.client.last_sequence(
                    names.STREAM_EVENTS, names.outcome_wildcard(command_id)
                )
                == 0
            ):
                return False
        return True

    await wait_until(answered, 45, "outcomes")
    end = await stack.client.last_sequence(names.STREAM_EVENTS)
    answer: dict[str, Any] = {}

    async def folded() -> bool:
        nonlocal answer
        answer = await stack.query(names.QUERY_STATE)
        return bool(answer["applied_seq"] >= end)

    await wait_until(folded, 45, "Hive folded the log")
    assert answer["applied_seq"] == end, "the Hive wrote events nobody asked for"
    return answer["applied_seq"], answer["state"]


async def agent_detail(stack: Stack, name: str, namespace: str = "default") -> dict[str, Any]:
    answer = await stack.query(names.QUERY_AGENTS_GET, {"name": name, "namespace": namespace})
    detail: dict[str, Any] = answer["agent"]
    return detail


@pytest.fixture(scope="module")
async def recorded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Recorded]:
    async with running_stack(tmp_path_factory.mktemp("recorded")) as stack:
        capacity = Capacity(memory_mb=1024, fuel_per_s=10**9, slots=8)
        await settle(
            stack,
            [
                (commands.CreateNamespace(name="team", quota=Quota(max_agents=5)), "user:ann"),
                (commands.RegisterPod(pod_id="p1", capacity=capacity, lease_s=3600), "pod:p1"),
                (commands.DeployAgent(name="a1", spec=spec(memory=64), replicas=3), "user:ann"),
                (
                    commands.DeployAgent(namespace="team", name="a2", spec=spec(), replicas=1),
                    "user:bob",
                ),
            ],
        )
        a1 = await agent_detail(stack, "a1")
        replica = a1["instances"][0]["replica_id"]
        place = commands.ProposePlacement(
            agent_id=a1["agent_id"], replica_id=replica, pod_id="p1", policy="test"
        )
        await settle(stack, [(place, "service:scheduler")])
        report = commands.ReportReplica(
            agent_id=a1["agent_id"], replica_id=replica, pod_id="p1", status="running"
        )
        first = await settle(stack, [(report, "pod:p1")])
        await asyncio.sleep(0.05)  # the second phase is logged strictly later (for --at TIME)
        a2 = await agent_detail(stack, "a2", "team")
        # A foreign writer's bytes on the event log: every replica consumes the sequence without
        # folding anything, and so must time travel.
        noise = AppendRequest("swarm.evt.foreign.x.noise", b"\x00 not an event", new_id())
        foreign = (await stack.client.append_raw(noise)).seq
        malformed = json.dumps({"id": new_id(), "type": commands.DeployAgent.TYPE}).encode()
        second = await settle(
            stack,
            [
                (commands.ScaleAgent(name="a1", replicas=1), "user:ann"),
                (commands.DeleteAgent(namespace="team", name="a2"), "user:bob"),
                (commands.UpdateNamespace(name="team", quota=Quota(max_agents=9)), "user:ann"),
                (commands.ScaleAgent(name="nobody", replicas=1), "user:ann"),  # rejected
            ],
            raw=[malformed],
        )
        yield Recorded(stack, first, second, {"a1": a1["agent_id"], "a2": a2["agent_id"]}, foreign)


# --- --at ----------------------------------------------------------------------------------------


async def test_at_a_sequence_shows_the_state_the_hive_reported_there(recorded: Recorded) -> None:
    url = recorded.stack.url
    for seq, state in (recorded.first, recorded.second):
        shown = as_json(await invoke_timeline(["--at", str(seq), "-o", "json"], url))
        assert shown["applied_seq"] == seq
        assert shown["state"] == state
        digest = (await recorded.stack.query(names.QUERY_DIGEST))["digest"]
        if seq == recorded.second[0]:  # the Hive is at the end of the log: it says the same
            assert shown["digest"] == digest
    # The two points differ, so the comparison above could have failed.
    assert recorded.first[1] != recorded.second[1]


async def test_at_a_time_shows_the_state_of_everything_logged_until_then(
    recorded: Recorded,
) -> None:
    url = recorded.stack.url
    seq = recorded.first[0]
    (entry,) = as_json(
        await invoke_timeline(["--from-seq", str(seq), "--to-seq", str(seq), "-o", "json"], url)
    )
    shown = as_json(await invoke_timeline(["--at", entry["time"], "-o", "json"], url))
    assert shown["applied_seq"] == seq
    assert shown["state"] == recorded.first[1]


async def test_at_as_a_table_names_the_point_and_what_exists(recorded: Recorded) -> None:
    result = await invoke_timeline(["--at", str(recorded.first[0])], recorded.stack.url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Hive state at #{recorded.first[0]}" in out
    assert recorded.agent_ids["a1"] in out
    assert recorded.agent_ids["a2"] in out
    assert "p1" in out
    later = await invoke_timeline(["--at", str(recorded.second[0])], recorded.stack.url)
    assert recorded.agent_ids["a2"] not in later.stdout  # deleted before it ran: gone


async def test_at_before_anything_and_past_the_end(recorded: Recorded) -> None:
    empty = as_json(await invoke_timeline(["--at", "0", "-o", "json"], recorded.stack.url))
    assert empty["applied_seq"] == 0
    assert empty["state"]["agents"] == {}
    beyond = await invoke_timeline(["--at", "999999", "-o", "json"], recorded.stack.url)
    assert json.loads(beyond.stdout)["state"] == recorded.second[1]
    assert "the log ends at" in beyond.stderr


async def test_at_refuses_listing_filters(recorded: Recorded) -> None:
    result = await invoke_timeline(["--at", "3", "--type", "swarm.agent.*"], recorded.stack.url)
    assert result.exit_code == 2
    assert "--at shows the whole state at one point; --type" in result.stderr


# --- diff ----------------------------------------------------------------------------------------


async def test_diff_shows_what_changed_between_two_points(recorded: Recorded) -> None:
    a1, a2 = recorded.agent_ids["a1"], recorded.agent_ids["a2"]
    first, second = recorded.first[0], recorded.second[0]
    report = as_json(
        await invoke_timeline(["diff", str(first), str(second), "-o", "json"], recorded.stack.url)
    )
    assert report["from"]["applied_seq"] == first
    assert report["to"]["applied_seq"] == second
    changes = {c["path"]: c for c in report["changes"]}
    assert changes[f"agents.{a1}.replicas_desired"] == {
        "path": f"agents.{a1}.replicas_desired",
        "op": "changed",
        "before": 3,
        "after": 1,
    }
    assert changes["namespaces.team.quota.max_agents"]["before"] == 5
    assert changes["namespaces.team.quota.max_agents"]["after"] == 9
    assert changes["applied_seq"]["after"] == second
    assert all(not path.startswith("pods.") or "last_seq" not in path for path in changes)
    # a2 was deleted before any replica ran, so it left the state: every leaf of it is removed.
    gone = {c["op"] for path, c in changes.items() if path.startswith(f"agents.{a2}.")}
    assert gone == {"removed"}
    assert changes[f"agents.{a2}.agent_id"]["before"] == a2
    assert "by_name.team/a2" in changes
    nothing = as_json(
        await invoke_timeline(["diff", str(second), str(second), "-o", "json"], recorded.stack.url)
    )
    assert nothing["changes"] == []
    table = await invoke_timeline(["diff", str(first), str(second)], recorded.stack.url)
    assert f"agents.{a1}.replicas_desired" in table.stdout
    assert "~" in table.stdout


async def test_diff_points_must_be_in_order(recorded: Recorded) -> None:
    result = await invoke_timeline(["diff", "9", "3"], recorded.stack.url)
    assert result.exit_code == 2
    assert "the first point must come before the second" in result.stderr


# --- verify --------------------------------------------------------------------------------------


async def test_verify_finds_only_the_foreign_entry_in_a_recorded_session(
    recorded: Recorded,
) -> None:
    result = await invoke_timeline(["verify", "-o", "json"], recorded.stack.url)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [(f["kind"], f["seq"]) for f in report["findings"]] == [
        ("undecodable", recorded.foreign)
    ]
    assert report["pending"] == []
    assert report["checked"]["events"] == recorded.second[0]
    assert report["checked"]["commands"] == await recorded.stack.client.last_sequence(
        names.STREAM_COMMANDS
    )


# --- export | import -----------------------------------------------------------------------------


async def contents(log: EventLog, stream: str) -> list[tuple[int, str, bytes]]:
    """(seq, subject, id or, for what is not JSON, the bytes) of everything in `stream`."""

    def identity(data: bytes) -> bytes:
        try:
            return str(json.loads(data)["id"]).encode()
        except ValueError:
            return data

    return [(d.stream_seq, d.subject, identity(d.data)) async for d in log.replay(stream)]


async def test_export_import_reproduces_the_log_and_the_hive_state(
    recorded: Recorded, tmp_path: Path
) -> None:
    source = recorded.stack
    batch = tmp_path / "log.json"
    exported = await invoke_timeline(["export", "-f", str(batch)], source.url)
    assert exported.exit_code == 0, exported.output
    items = json.loads(batch.read_text())
    total = recorded.second[0] + await source.client.last_sequence(names.STREAM_COMMANDS)
    assert len(items) == total
    assert all(i["specversion"] == "1.0" and i[names.EXPORT_ATTR_STREAM] for i in items)

    server = EmbeddedNats(tmp_path / "target")
    url = server.start()
    target: Stack | None = None
    try:
        first = await invoke_timeline(["import", str(batch)], url)
        assert first.exit_code == 0, first.output
        log = await EventLog.connect(url, name="target")
        target = Stack(url, log, tmp_path)
        for stream in (names.STREAM_EVENTS, names.STREAM_COMMANDS):
            assert await contents(log, stream) == await contents(source.client, stream)

        again = await invoke_timeline(["import", str(batch)], url)
        assert again.exit_code == 0, again.output
        assert "imported 0" in again.stderr
        assert await log.last_sequence(names.STREAM_EVENTS) == recorded.second[0]

        # The target's own Hive folds the imported log to the source Hive's state, and decides
        # none of the imported commands again (each already has its outcome). Leading a log
        # that is not empty, it first records its election: the one event it adds.
        await target.start_hive()
        end = recorded.second[0]

        async def folded() -> bool:
            return bool((await target.query(names.QUERY_DIGEST))["applied_seq"] > end)

        await wait_until(folded, 30, "target Hive folded the import and its election")
        theirs = (await target.query(names.QUERY_STATE))["state"]
        ours = (await source.query(names.QUERY_STATE))["state"]
        assert theirs == {**ours, "applied_seq": end + 1}
        await asyncio.sleep(0.5)  # time to (wrongly) decide an imported command again
        assert await log.last_sequence(names.STREAM_EVENTS) == end + 1
        added = [d async for d in log.replay(names.STREAM_EVENTS, start_seq=end + 1)]
        assert [d.subject.rsplit(".", 1)[1] for d in added] == ["leader_elected"]
        verified = json.loads((await invoke_timeline(["verify", "-o", "json"], url)).stdout)
        assert [(f["kind"], f["seq"]) for f in verified["findings"]] == [
            ("undecodable", recorded.foreign)
        ]
    finally:
        if target is not None:
            await target.stop_hive()
            await target.client.close()
        server.stop()


async def test_a_time_means_the_same_on_a_stack_the_log_was_imported_into(
    recorded: Recorded, tmp_path: Path
) -> None:
    """Times are the events' own, which import keeps: `--at TIME` and a time range give the same
    answer on the target as on the source, although the target stored everything later."""
    source = recorded.stack
    first = recorded.first[0]
    listed = as_json(await invoke_timeline(["--from-seq", str(first), "-o", "json"], source.url))
    happened = datetime.fromisoformat(listed[0]["time"])
    # The next event that says when it happened (the foreign bytes after `first` do not).
    later = next(
        item
        for item in listed[1:]
        if item["event"] is not None and datetime.fromisoformat(item["time"]) > happened
    )
    between = (happened + (datetime.fromisoformat(later["time"]) - happened) / 2).isoformat()
    batch = tmp_path / "log.json"
    assert (await invoke_timeline(["export", "-f", str(batch)], source.url)).exit_code == 0

    with own_nats(tmp_path / "target") as url:
        imported = await invoke_timeline(["import", str(batch)], url)
        assert imported.exit_code == 0, imported.output

        ours = as_json(await invoke_timeline(["--at", between, "-o", "json"], source.url))
        theirs = as_json(await invoke_timeline(["--at", between, "-o", "json"], url))
        assert first <= ours["applied_seq"] < later["seq"]
        assert ours["state"]["agents"]  # not the empty state: the comparison below can fail
        assert theirs == ours
        assert theirs["digest"] == ours["digest"]

        def timed(items: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
            # Entries without a time of their own (the foreign bytes, the malformed command without
            # `time`) are listed by when each stack stored them, which import cannot keep.
            return [
                (i["stream"], i["seq"], i["time"])
                for i in items
                if i["event"] is not None and i["event"].get("time")
            ]

        for window in (["--until", between], ["--since", between], ["--all", "--until", between]):
            mine = timed(as_json(await invoke_timeline([*window, "-o", "json"], source.url)))
            copied = timed(as_json(await invoke_timeline([*window, "-o", "json"], url)))
            assert mine, window
            assert copied == mine, window

        # Where the times come from: the events' own, while the target stored them at import.
        assert f"{names.STREAM_EVENTS}: imported {recorded.second[0]}" in imported.stderr
        assert f"source #1-#{recorded.second[0]}" in imported.stderr
        assert "kept as their own" in imported.stderr
        (entry,) = as_json(
            await invoke_timeline(["--from-seq", "1", "--to-seq", "1", "-o", "json"], url)
        )
        assert entry["time"] == entry["event"]["time"].replace("Z", "+00:00")
        assert datetime.fromisoformat(entry["stored"]) > datetime.fromisoformat(later["time"])


async def test_import_while_the_target_hive_runs_writes_nothing_again(
    recorded: Recorded, tmp_path: Path
) -> None:
    source = recorded.stack
    batch = tmp_path / "log.json"
    assert (await invoke_timeline(["export", "-f", str(batch)], source.url)).exit_code == 0
    commands_sent = await source.client.last_sequence(names.STREAM_COMMANDS)
    async with running_stack(tmp_path) as target:
        hive = target.hive
        assert hive is not None
        imported = await invoke_timeline(["import", str(batch)], target.url)
        assert imported.exit_code == 0, imported.output

        async def all_handled() -> bool:
            return bool(hive.describe()["commands_handled"] >= commands_sent)

        await wait_until(all_handled, 30, "target Hive handled every imported command")
        end = recorded.second[0]
        assert await target.client.last_sequence(names.STREAM_EVENTS) == end

        async def folded() -> bool:
            return bool((await target.query(names.QUERY_DIGEST))["applied_seq"] >= end)

        await wait_until(folded, 30, "target Hive folded the import")
        theirs = await target.query(names.QUERY_DIGEST)
        ours = await source.query(names.QUERY_DIGEST)
        assert theirs["applied_seq"] == end
        assert theirs["digest"] == ours["digest"]


async def test_diff_between_a_time_and_a_sequence(recorded: Recorded) -> None:
    url = recorded.stack.url
    first, second = recorded.first[0], recorded.second[0]
    (entry,) = as_json(
        await invoke_timeline(["--from-seq", str(first), "--to-seq", str(first), "-o", "json"], url)
    )
    by_seq = as_json(await invoke_timeline(["diff", str(first), str(second), "-o", "json"], url))
    mixed = as_json(await invoke_timeline(["diff", entry["time"], str(second), "-o", "json"], url))
    assert mixed["from"]["applied_seq"] == first
    assert mixed["changes"] == by_seq["changes"]
    backwards = await invoke_timeline(["diff", str(second), entry["time"]], url)
    assert backwards.exit_code == 2
