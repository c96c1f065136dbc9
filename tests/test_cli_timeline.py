"""`swarm timeline` against real JetStream: filters, formats, undecodable entries, follow."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import Result

from schemas import CommandAccepted, Payload, Registry, command, event, names, new_id
from swarm.cli import timeline
from swarm.cli.output import CliError
from swarm.client.text import parse_time
from swarm.client.timeline import Filters, intersect, subject_matches
from swarm.kernel.eventlog import AppendRequest, EventLog
from tests.helpers.outcomes import accepted
from tests.helpers.processes import reaped
from tests.helpers.timeline import invoke_timeline

LOCAL = Registry()


@LOCAL.command("tl", "create")
class CreateThing(Payload):
    name: str


@LOCAL.event("tl", "created")
class ThingCreated(Payload):
    name: str


@LOCAL.event("tl", "renamed")
class ThingRenamed(Payload):
    name: str
    previous: str


def items(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    parsed: list[dict[str, Any]] = json.loads(result.stdout)
    return parsed


@dataclass(frozen=True)
class Seeded:
    thing: str
    seqs: list[int]
    command_id: str
    before: datetime


@pytest.fixture
async def seeded(event_log: EventLog) -> Seeded:
    """One thing's history: a command, its two events and outcome, and two unreadable entries."""
    before = datetime.now(UTC) - timedelta(seconds=1)
    thing = new_id()
    cmd = command(CreateThing(name="first"), source="test", identity="user:ann")
    await event_log.append(cmd)
    created = event(ThingCreated(name="first"), aggregate_id=thing, source="test", cause=cmd)
    renamed = event(
        ThingRenamed(name="second [bold]x[/bold]", previous="first"),
        aggregate_id=thing,
        source="test",
        cause=created,
    )
    outcome = accepted(cmd, events=[created.id, renamed.id])
    seqs = [(await event_log.append(e)).seq for e in (created, renamed)]
    for subject, body in (
        (f"swarm.evt.tl.{thing}.broken", b"\x00\xffnot json"),
        (f"swarm.evt.tl.{thing}.odd", b'{"hello": 1}'),
    ):
        seqs.append((await event_log.append_raw(AppendRequest(subject, body, new_id()))).seq)
    await event_log.append(outcome)
    return Seeded(thing, seqs, cmd.id, before)


# --- Listing and formats -------------------------------------------------------------------------


async def test_json_lists_one_aggregate_in_order_including_undecodable_entries(
    nats_url: str, seeded: Seeded
) -> None:
    listed = items(
        await invoke_timeline(["--aggregate", "tl", "--id", seeded.thing, "-o", "json"], nats_url)
    )
    assert [i["seq"] for i in listed] == seeded.seqs
    created, renamed, broken, odd = listed
    assert created["event"]["type"] == "swarm.tl.created"
    assert created["subject"] == f"swarm.evt.tl.{seeded.thing}.created"
    assert created["stream"] == names.STREAM_EVENTS
    assert datetime.fromisoformat(created["time"]) >= seeded.before
    assert renamed["event"]["causationid"] == created["event"]["id"]
    assert broken["event"] is None
    assert broken["error"].startswith("not JSON")
    assert broken["raw"].endswith("not json")
    assert odd["event"] == {"hello": 1}
    assert odd["error"].startswith("not a CloudEvent")


async def test_jsonl_is_one_object_per_line(nats_url: str, seeded: Seeded) -> None:
    result = await invoke_timeline(["--id", seeded.thing, "-o", "jsonl"], nats_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == seeded.seqs


async def test_table_shows_every_entry_with_a_marker_for_undecodable_ones(
    nats_url: str, seeded: Seeded
) -> None:
    result = await invoke_timeline(["--id", seeded.thing], nats_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "TYPE", "AGGREGATE/ID", "DATA", "CORRELATION"]
    rows = lines[1:]
    assert len(rows) == 4
    assert rows[0].split()[0] == str(seeded.seqs[0])
    assert "swarm.tl.created" in rows[0]
    assert f"tl/{seeded.thing}" in rows[0]
    assert "name=first" in rows[0]
    assert seeded.command_id in rows[0]
    # User data is never read as rich markup.
    assert "name=second [bold]x[/bold] previous=first" in rows[1]
    assert timeline.UNDECODABLE in rows[2]
    assert "not JSON" in rows[2]
    assert "·\ufffdnot json" in rows[2]  # a NUL would garble a terminal; shown as a dot
    assert timeline.UNDECODABLE in rows[3]
    assert "not a CloudEvent" in rows[3]


async def test_nothing_matching_is_not_an_error(nats_url: str, event_log: EventLog) -> None:
    # `event_log` made the streams: an empty answer, not "no such stream".
    result = await invoke_timeline(["--id", new_id()], nats_url)
    assert result.exit_code == 0
    assert "no entries match" in result.stderr
    empty = await invoke_timeline(["--id", new_id(), "-o", "json"], nats_url)
    assert items(empty) == []


# --- Filters -------------------------------------------------------------------------------------


async def test_type_filter_exact_and_glob(nats_url: str, seeded: Seeded) -> None:
    exact = items(
        await invoke_timeline(
            ["--id", seeded.thing, "--type", "swarm.tl.renamed", "-o", "json"], nats_url
        )
    )
    assert [i["seq"] for i in exact] == [seeded.seqs[1]]
    globbed = items(
        await invoke_timeline(
            ["--id", seeded.thing, "--type", "swarm.tl.*", "-o", "json"], nats_url
        )
    )
    assert [i["seq"] for i in globbed] == seeded.seqs[:2]  # undecodable entries have no type
    partial = items(
        await invoke_timeline(["--id", seeded.thing, "--type", "*.re?amed", "-o", "json"], nats_url)
    )
    assert [i["seq"] for i in partial] == [seeded.seqs[1]]


async def test_subject_filter_with_wildcards(nats_url: str, seeded: Seeded) -> None:
    one = items(
        await invoke_timeline(
            ["--subject", f"swarm.evt.*.{seeded.thing}.odd", "-o", "json"], nats_url
        )
    )
    assert [i["seq"] for i in one] == [seeded.seqs[3]]
    two = items(
        await invoke_timeline(
            [
                "-s",
                f"swarm.evt.tl.{seeded.thing}.created",
                "-s",
                f"swarm.evt.tl.{seeded.thing}.broken",
                "-o",
                "json",
            ],
            nats_url,
        )
    )
    assert [i["seq"] for i in two] == [seeded.seqs[0], seeded.seqs[2]]


async def test_sequence_range_and_limit(nats_url: str, seeded: Seeded) -> None:
    first, second, third, _ = seeded.seqs
    ranged = items(
        await invoke_timeline(
            ["--id", seeded.thing, "--from-seq", str(second), "--to-seq", str(third), "-o", "json"],
            nats_url,
        )
    )
    assert [i["seq"] for i in ranged] == [second, third]
    limited = items(
        await invoke_timeline(["--id", seeded.thing, "-n", "2", "-o", "json"], nats_url)
    )
    assert [i["seq"] for i in limited] == [first, second]


async def test_time_window(nats_url: str, seeded: Seeded) -> None:
    recent = items(
        await invoke_timeline(["--id", seeded.thing, "--since", "1h", "-o", "json"], nats_url)
    )
    assert [i["seq"] for i in recent] == seeded.seqs
    before = (seeded.before - timedelta(seconds=5)).isoformat()
    older = items(
        await invoke_timeline(["--id", seeded.thing, "--until", before, "-o", "json"], nats_url)
    )
    assert older == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = items(
        await invoke_timeline(["--id", seeded.thing, "--since", future, "-o", "json"], nats_url)
    )
    assert later == []


async def test_all_merges_commands_and_events_by_time(nats_url: str, seeded: Seeded) -> None:
    listed = items(
        await invoke_timeline(["--all", "--id", seeded.command_id, "-o", "json"], nats_url)
    )
    assert [(i["stream"], i["event"]["type"]) for i in listed] == [
        (names.STREAM_COMMANDS, "swarm.cmd.tl.create"),
        (names.STREAM_EVENTS, CommandAccepted.TYPE),
    ]
    table = await invoke_timeline(["--all", "--id", seeded.command_id], nats_url)
    assert table.stdout.splitlines()[0].split()[0] == "LOG"
    assert "commands" in table.stdout
    assert "events" in table.stdout


async def test_commands_only(nats_url: str, seeded: Seeded) -> None:
    listed = items(
        await invoke_timeline(
            ["--commands", "--type", "swarm.cmd.tl.*", "--id", seeded.command_id, "-o", "json"],
            nats_url,
        )
    )
    assert [i["event"]["id"] for i in listed] == [seeded.command_id]
    assert listed[0]["event"]["identity"] == "user:ann"


async def test_correlation_shows_everything_one_command_set_off(
    nats_url: str, seeded: Seeded
) -> None:
    listed = items(
        await invoke_timeline(["--all", "--correlation", seeded.command_id, "-o", "json"], nats_url)
    )
    assert [i["event"]["type"] for i in listed] == [
        "swarm.cmd.tl.create",
        "swarm.tl.created",
        "swarm.tl.renamed",
        CommandAccepted.TYPE,
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday-ish"], "cannot read time 'yesterday-ish'"),
        (["--all", "--from-seq", "3"], "--from-seq/--to-seq number one stream"),
        (["--commands", "--all"], "give --commands or --all, not both"),
        (["--follow", "-o", "json"], "-o json prints one array"),
        (["--subject", "swarm.>.x"], "'swarm.>.x' is not a subject filter"),
        (["--subject", "swarm.ev*"], "is not a subject filter"),
        (["--id", "a.b"], "--id 'a.b' is not a single token"),
    ],
)
async def test_bad_options_are_readable_errors(args: list[str], message: str) -> None:
    result = await invoke_timeline(args, "nats://127.0.0.1:1")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


async def test_unreachable_nats(nats_url: str) -> None:
    result = await invoke_timeline([], "nats://127.0.0.1:1")
    assert result.exit_code == 4
    assert "cannot reach NATS at nats://127.0.0.1:1" in result.stderr


# --- Follow --------------------------------------------------------------------------------------


async def finish(running: asyncio.Task[Result], release: Callable[[], Awaitable[object]]) -> Result:
    """The result of a `--follow --limit N` run.

    Should the run still be waiting (the behaviour under test is broken), more matching entries
    are fed to it until its limit ends it: a thread cannot be cancelled, and must not outlive the
    test.
    """
    for _ in range(5):
        done, _ = await asyncio.wait({running}, timeout=5)
        if done:
            return running.result()
        await release()
    raise AssertionError("--follow did not end after its --limit")


async def test_follow_prints_new_entries_as_they_are_appended(
    nats_url: str, event_log: EventLog
) -> None:
    thing = new_id()

    async def append(name: str) -> int:
        appended = await event_log.append(
            event(ThingCreated(name=name), aggregate_id=thing, source="test")
        )
        return appended.seq

    old = await append("old")
    running = asyncio.create_task(
        invoke_timeline(["--id", thing, "--follow", "-o", "jsonl", "--limit", "3"], nats_url)
    )
    await asyncio.sleep(0.5)  # most likely past the history by now; correct either way
    new = [await append("new-1"), await append("new-2")]
    result = await finish(running, lambda: append("extra"))
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["seq"] for p in printed] == [old, *new]
    assert [p["event"]["data"]["name"] for p in printed] == ["old", "new-1", "new-2"]


async def test_follow_all_interleaves_both_streams(nats_url: str, event_log: EventLog) -> None:
    cmd = command(CreateThing(name="live"), source="test")
    outcome = accepted(cmd)
    running = asyncio.create_task(
        invoke_timeline(
            ["--all", "--follow", "--id", cmd.id, "-o", "jsonl", "--limit", "2"], nats_url
        )
    )
    await asyncio.sleep(0.5)
    await event_log.append(cmd)
    await event_log.append(outcome)
    result = await finish(
        running, lambda: event_log.append(outcome.model_copy(update={"id": new_id()}))
    )
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((p["stream"], p["event"]["id"]) for p in printed) == [
        (names.STREAM_COMMANDS, cmd.id),
        (names.STREAM_EVENTS, outcome.id),
    ]


async def test_ctrl_c_ends_follow_quietly(nats_url: str, event_log: EventLog) -> None:
    # `event_log` made the streams, so the follow runs (it exits 4 on a server without them).
    script = (
        "import typer\n"
        "from swarm.cli import timeline\n"
        "app = typer.Typer()\n"
        "app.callback()(lambda: None)\n"
        "timeline.register(app)\n"
        "app()\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        "timeline",
        "--follow",
        "--nats-url",
        nats_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    async with reaped(proc):
        assert proc.stdout is not None
        # Printed once the history is being read; the exit is awaited, however long a loaded
        # machine takes to start Python and unwind (the test's own timeout bounds both).
        header = await proc.stdout.readline()
        assert b"SEQ" in header, (header, await proc.communicate())
        proc.send_signal(signal.SIGINT)
        _, stderr = await proc.communicate()
    assert proc.returncode == 130
    assert b"Traceback" not in stderr


# --- Pieces --------------------------------------------------------------------------------------


def test_parse_time() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_time("10m", now=now) == now - timedelta(minutes=10)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("1.5d", now=now) == now - timedelta(days=1.5)
    assert parse_time("1w", now=now) == now - timedelta(weeks=1)
    assert parse_time("now", now=now) == now
    assert parse_time("2024-04-30T10:00:00Z") == datetime(2024, 4, 30, 10, tzinfo=UTC)
    assert parse_time("2024-04-30T12:00:00+02:00") == datetime(2024, 4, 30, 10, tzinfo=UTC)
    assert parse_time("2024-04-30") == datetime(2024, 4, 30, tzinfo=UTC)  # no offset: UTC
    with pytest.raises(CliError):
        parse_time("10 parsecs")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("swarm.evt.>", ">", "swarm.evt.>"),
        ("swarm.evt.>", "swarm.*.agent.>", "swarm.evt.agent.>"),
        ("swarm.evt.>", "swarm.cmd.>", None),
        ("swarm.evt.*.x.*", "swarm.evt.agent.*.running", "swarm.evt.agent.x.running"),
        ("a.b", "a.b.c", None),
        ("a.>", "a", None),
        ("a.*", "a.b", "a.b"),
    ],
)
def test_intersect(a: str, b: str, expected: str | None) -> None:
    assert intersect(a, b) == expected
    assert intersect(b, a) == expected


def test_subject_matches() -> None:
    assert subject_matches("swarm.evt.>", "swarm.evt.agent.a1.running")
    assert subject_matches("swarm.evt.*.a1.*", "swarm.evt.agent.a1.running")
    assert not subject_matches("swarm.evt.*.a1", "swarm.evt.agent.a1.running")
    assert not subject_matches("swarm.cmd.>", "swarm.evt.agent.a1.running")


@pytest.mark.parametrize(
    ("filters", "events", "commands"),
    [
        (Filters(), [], []),
        (Filters(aggregate="agent", aggregate_id="a1"), ["swarm.evt.agent.a1.*"], None),
        (Filters(type_glob="swarm.agent.*"), ["swarm.evt.agent.*.*"], []),
        (Filters(type_glob="swarm.agent.run*"), ["swarm.evt.agent.*.*"], []),
        (Filters(type_glob="swarm.cmd.agent.deploy"), [], ["swarm.cmd.agent.deploy"]),
        (Filters(type_glob="other.agent.x"), None, []),
        (Filters(type_glob="swarm.agent.x.y"), [], None),
        (Filters(type_glob="swarm.a b.>"), [], []),
        (Filters(type_glob="swarm.pod.*", aggregate="agent"), None, None),
        (Filters(subjects=("swarm.cmd.>",)), None, []),
        (Filters(subjects=(">",), aggregate="command"), ["swarm.evt.command.*.*"], []),
        (
            Filters(subjects=("swarm.evt.agent.>", "swarm.evt.agent.a1.*")),
            ["swarm.evt.agent.>"],
            None,
        ),
        (Filters(subjects=("swarm.evt.*.a1.>", "swarm.evt.agent.>")), [], None),
    ],
)
def test_server_side_filters(
    filters: Filters, events: list[str] | None, commands: list[str] | None
) -> None:
    """The consumer filter narrows what the server sends, never below what should match."""
    assert filters.server_subjects(names.STREAM_EVENTS) == events
    assert filters.server_subjects(names.STREAM_COMMANDS) == commands
