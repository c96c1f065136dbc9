"""`swarm timeline export` / `import` between two real nats-servers: fidelity (subjects, ids,
order, foreign bytes), idempotency without the dedupe window, conflicts, and bad files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from schemas import command, commands, event, events, names, new_id
from swarm.client import transfer
from swarm.client.errors import ClientError
from swarm.kernel.eventlog import Appended, AppendRequest, EventLog
from tests.helpers.outcomes import accepted
from tests.helpers.servers import own_nats
from tests.helpers.timeline import invoke_timeline


@pytest.fixture
def source_url(tmp_path: Path) -> Iterator[str]:
    with own_nats(tmp_path / "source") as url:
        yield url


@pytest.fixture
def target_url(tmp_path: Path) -> Iterator[str]:
    with own_nats(tmp_path / "target") as url:
        yield url


@pytest.fixture
async def source(source_url: str) -> AsyncIterator[EventLog]:
    async with await EventLog.connect(source_url, name="source") as log:
        yield log


@pytest.fixture
async def target(target_url: str) -> AsyncIterator[EventLog]:
    # Connected without creating streams: import must manage with a bare server.
    async with await EventLog.connect(target_url, name="target", ensure=False) as log:
        yield log


async def stored(log: EventLog, stream: str) -> list[tuple[int, str, bytes]]:
    return [(d.stream_seq, d.subject, d.data) async for d in log.replay(stream)]


async def fill(log: EventLog, n: int = 3) -> None:
    """`n` answered commands, plus a foreign non-CloudEvent entry in each stream."""
    for i in range(n):
        cmd = command(commands.ScaleAgent(name=f"a{i}", replicas=i), source="test")
        await log.append(cmd)
        scaled = event(
            events.AgentScaled(agent_id=f"A{i}", replicas=i, previous=0),
            aggregate_id=f"A{i}",
            source="test",
            cause=cmd,
        )
        outcome = accepted(cmd, events=[scaled.id])
        await log.append(scaled)
        await log.append(outcome)
    await log.append_raw(AppendRequest("swarm.evt.agent.X.noise", b"\x00\xff not json", new_id()))
    await log.append_raw(AppendRequest("swarm.cmd.agent.scale", b'{"id":"no spec"}', new_id()))


async def export(url: str, path: Path, *args: str) -> list[dict[str, object]]:
    result = await invoke_timeline(["export", "-f", str(path), *args], url)
    assert result.exit_code == 0, result.output
    items: list[dict[str, object]] = json.loads(await asyncio.to_thread(path.read_text))
    return items


async def test_round_trip_keeps_every_entry_byte_for_byte(
    source: EventLog, source_url: str, target: EventLog, target_url: str, tmp_path: Path
) -> None:
    await fill(source)
    items = await export(source_url, tmp_path / "log.json")
    assert [i[names.EXPORT_ATTR_STREAM] for i in items] == [names.STREAM_EVENTS] * 7 + [
        names.STREAM_COMMANDS
    ] * 4
    raw = [i for i in items if i["type"] == names.EXPORT_RAW_TYPE]
    assert [(i[names.EXPORT_ATTR_SUBJECT], i[names.EXPORT_ATTR_SEQ]) for i in raw] == [
        ("swarm.evt.agent.X.noise", 7),
        ("swarm.cmd.agent.scale", 4),
    ]
    result = await invoke_timeline(["import", str(tmp_path / "log.json")], target_url)
    assert result.exit_code == 0, result.output
    assert "SWARM_EVENTS: imported 7, 0 already there" in result.stderr
    for stream in (names.STREAM_EVENTS, names.STREAM_COMMANDS):
        theirs, ours = await stored(target, stream), await stored(source, stream)
        assert [(s, subj) for s, subj, _ in theirs] == [(s, subj) for s, subj, _ in ours]
        for (_, _, mine), (_, _, original) in zip(theirs, ours, strict=True):
            try:
                assert json.loads(mine) == json.loads(original)
            except ValueError:
                assert mine == original  # foreign bytes come back unchanged


async def test_import_continues_where_the_target_stops_and_never_duplicates(
    source: EventLog, source_url: str, target: EventLog, target_url: str, tmp_path: Path
) -> None:
    await fill(source)
    await export(source_url, tmp_path / "start.json", "--only", "events", "--to-seq", "4")
    await export(source_url, tmp_path / "all.json")
    assert (
        await invoke_timeline(["import", str(tmp_path / "start.json")], target_url)
    ).exit_code == 0
    assert await target.last_sequence(names.STREAM_EVENTS) == 4
    result = await invoke_timeline(["import", str(tmp_path / "all.json")], target_url)
    assert result.exit_code == 0, result.output
    assert "SWARM_EVENTS: imported 3, 4 already there" in result.stderr
    # Again, and a shorter file too: nothing is added (the dedupe window is not what saves us).
    for name in ("all.json", "start.json"):
        again = await invoke_timeline(["import", str(tmp_path / name)], target_url)
        assert again.exit_code == 0, again.output
    assert await target.last_sequence(names.STREAM_EVENTS) == 7
    assert await target.last_sequence(names.STREAM_COMMANDS) == 4
    assert [s[:2] for s in await stored(target, names.STREAM_EVENTS)] == [
        s[:2] for s in await stored(source, names.STREAM_EVENTS)
    ]


async def test_a_target_holding_something_else_is_refused_unless_forced(
    source: EventLog, source_url: str, target: EventLog, target_url: str, tmp_path: Path
) -> None:
    await fill(source)
    await export(source_url, tmp_path / "all.json")
    await target.ensure_streams()
    other = event(
        events.AgentScaled(agent_id="Z", replicas=1, previous=0), aggregate_id="Z", source="t"
    )
    await target.append(other)
    refused = await invoke_timeline(["import", str(tmp_path / "all.json")], target_url)
    assert refused.exit_code == 1
    assert "SWARM_EVENTS on the target already holds 1 entries" in refused.stderr
    assert "--force" in refused.stderr
    assert await target.last_sequence(names.STREAM_EVENTS) == 1

    forced = await invoke_timeline(["import", "--force", str(tmp_path / "all.json")], target_url)
    assert forced.exit_code == 0, forced.output
    held = await stored(target, names.STREAM_EVENTS)
    assert len(held) == 8
    assert json.loads(held[0][2])["id"] == other.id
    again = await invoke_timeline(["import", "--force", str(tmp_path / "all.json")], target_url)
    assert again.exit_code == 0
    assert await target.last_sequence(names.STREAM_EVENTS) == 8


async def test_export_filters(source: EventLog, source_url: str, tmp_path: Path) -> None:
    await fill(source)
    items = await export(source_url, tmp_path / "scaled.json", "--type", "swarm.agent.scaled")
    assert [i["type"] for i in items] == ["swarm.agent.scaled"] * 3
    commands_only = await export(source_url, tmp_path / "cmds.json", "--only", "commands")
    assert {i[names.EXPORT_ATTR_STREAM] for i in commands_only} == {names.STREAM_COMMANDS}
    stdout = await invoke_timeline(["export", "--only", "events", "--to-seq", "1"], source_url)
    assert [i[names.EXPORT_ATTR_SEQ] for i in json.loads(stdout.stdout)] == [1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "the file is not JSON"),
        ('{"a": 1}', "must hold a JSON array"),
        ('[{"specversion": "1.0", "id": "x", "type": "t"}]', "item 0: CloudEvents attribute"),
        (
            '[{"specversion": "1.0", "id": "x", "type": "t", "source": "s", '
            '"swarmstream": "ELSEWHERE", "swarmsubject": "swarm.evt.a.b.c"}]',
            "swarmstream must be one of",
        ),
        (
            '[{"specversion": "1.0", "id": "x", "type": "t", "source": "s", '
            '"swarmstream": "SWARM_EVENTS", "swarmsubject": "swarm.cmd.a.b"}]',
            "does not belong to SWARM_EVENTS",
        ),
    ],
)
async def test_bad_files_are_refused_before_anything_is_written(
    target: EventLog, target_url: str, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = await invoke_timeline(["import", str(path)], target_url)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    # Not even the streams were created.
    assert [s.config.name for s in await target.js.streams_info()] == []


async def test_a_concurrent_writer_stops_the_import_instead_of_interleaving(
    source: EventLog, source_url: str, target_url: str, tmp_path: Path
) -> None:
    await fill(source)
    await export(source_url, tmp_path / "all.json", "--only", "events")
    items = transfer.parse_batch(await asyncio.to_thread((tmp_path / "all.json").read_text))

    class Racing(EventLog):
        """Another writer gets in just before the import's first append."""

        async def append_atomic(self, requests: Sequence[AppendRequest]) -> list[Appended]:
            await self.append_raw(AppendRequest("swarm.evt.agent.Z.raced", b"{}", new_id()))
            return await super().append_atomic(requests)

    log = await Racing.connect(target_url, name="racing")
    try:
        with pytest.raises(ClientError, match="another writer appended to SWARM_EVENTS"):
            await transfer.import_stream(log, names.STREAM_EVENTS, items, force=False)
        held = await stored(log, names.STREAM_EVENTS)
        assert [subject for _, subject, _ in held] == ["swarm.evt.agent.Z.raced"]
    finally:
        await log.close()
