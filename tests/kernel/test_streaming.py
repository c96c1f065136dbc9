"""swarm.kernel.streaming against a real nats-server: exactly-once tables across SIGKILLs,
recovery before intake, windows that expire after recovery, dead letters for malformed events
and failing handlers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import faust.transport
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, StreamConfig
from nats.js.errors import NotFoundError

import swarm.kernel.streaming as streaming
from schemas import event, names
from schemas import event as event_
from schemas.events import AgentScaled
from swarm.kernel.eventlog import AppendFailed, EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.streaming import Hopping, StreamApp, StreamEvent, Tables, Tumbling
from swarm.kernel.streaming._table import encode_key
from swarm.kernel.streaming._transport import Transport, key_token

ROOT = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def new_stream(js: JetStreamContext, name: str) -> str:
    """A fresh stream `name` on subjects `<name lowercased>.>`; returns the subject root."""
    root = name.lower()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{root}.>"]))
    return root


async def new_source(js: JetStreamContext, prefix: str) -> tuple[str, str, str]:
    """What one test reads from: a fresh stream `<PREFIX>...`, its subject root, and a fresh
    name for the app that reads it, `<prefix>...`."""
    stream = unique(prefix.upper())
    return stream, await new_stream(js, stream), unique(prefix)


async def publish(js: JetStreamContext, root: str, keys: Iterable[str]) -> int:
    last = 0
    futures = [await js.publish_async(f"{root}.{k}", json.dumps({"k": k}).encode()) for k in keys]
    for ack in await asyncio.gather(*futures):
        last = ack.seq
    return last


async def recount(log: EventLog, stream: str) -> Counter[str]:
    """What the counts must be: every event of the log, counted once."""
    counts: Counter[str] = Counter()
    async for delivery in log.replay(stream):
        counts[json.loads(delivery.data)["k"]] += 1
    return counts


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def die_at_position_write(app: StreamApp, app_name: str, nth: int, why: str) -> None:
    """Make `app` raise, as if its process died, in place of its `nth` write of positions to
    the changelog; every other send goes through."""
    positions_topic = f"{app_name}-{names.CHANGELOG_POSITIONS}"
    real_send = app._send
    sent_positions = 0

    async def cut(messages: Iterable[tuple[str, bytes, bytes]]) -> None:
        nonlocal sent_positions
        batch = list(messages)
        if batch and batch[0][0] == positions_topic:
            sent_positions += 1
            if sent_positions == nth:
                raise RuntimeError(f"injected: {why}")
        await real_send(batch)

    app._send = cut  # type: ignore[method-assign]


def counter_app(settings: Settings, name: str, stream: str, *, batch: int = 50) -> StreamApp:
    app = StreamApp(name, settings, batch=batch, ack_wait=5.0)
    app.table("counts", default=int)

    @app.processor(stream=stream, durable=name, decode=json.loads)
    def count(tables: Tables, event: StreamEvent) -> None:
        tables["counts"][event.envelope["k"]] += 1

    return app


async def committed_position(js: JetStreamContext, app: str) -> int:
    prefix = names.changelog_table_prefix(app, names.CHANGELOG_POSITIONS)
    try:
        msg = await js.get_last_msg(
            names.changelog_stream(app), f"{prefix}.{key_token(encode_key(app))}"
        )
    except NotFoundError:
        return 0
    return int(json.loads(msg.data or b"{}")["seq"])


def test_public_api_is_pinned() -> None:
    assert set(streaming.__all__) == {
        "COMMIT_KEYS",
        "Handler",
        "Hopping",
        "MAX_BATCH",
        "Stats",
        "Status",
        "StreamApp",
        "StreamEvent",
        "Tables",
        "Tumbling",
        "Window",
    }


def test_jetstream_transport_is_registered_through_the_entry_point() -> None:
    assert faust.transport.by_url("jetstream://127.0.0.1:4222") is Transport


# --- exactly-once across kills ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_counts_equal_a_recount_after_repeated_sigkills(
    event_log: EventLog, settings: Settings, nats_url: str
) -> None:
    js = event_log.js
    stream, root, app = await new_source(js, "kill")
    rng = random.Random(7)
    keys = [f"k{i}" for i in range(12)]
    await publish(js, root, (rng.choice(keys) for _ in range(1500)))

    async def keep_publishing() -> None:
        for _ in range(15):
            await publish(js, root, (rng.choice(keys) for _ in range(100)))
            await asyncio.sleep(0.3)

    publisher = asyncio.create_task(keep_publishing())
    kills_mid_stream = 0
    previous = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.kernel.streaming_counter", nats_url, app, stream]
    assert sys.executable
    try:
        for _ in range(4):
            proc = await asyncio.create_subprocess_exec(
                *command,
                "--batch",
                "40",
                "--delay",
                "0.0015",
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                # Let it recover and commit at least one more batch, then kill it at a random
                # moment: in a handler, between changelog writes and the position, or at an ack.
                start = previous

                async def advanced(start: int = start) -> bool:
                    return await committed_position(js, app) > start

                await until(advanced, 60)
                await asyncio.sleep(rng.uniform(0.05, 0.4))
            finally:
                proc.send_signal(signal.SIGKILL)
                _, stderr = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
            previous = await committed_position(js, app)
            if previous < await event_log.last_sequence(stream):
                kills_mid_stream += 1
    finally:
        await publisher
    assert kills_mid_stream >= 3

    last = await event_log.last_sequence(stream)
    final = counter_app(settings, app, stream)
    async with final:
        await until(lambda: final.position(app) >= last, 60)
        counts = final.snapshot("counts")
    assert final.stats.recovered_keys > 0
    expected = await recount(event_log, stream)
    assert sum(expected.values()) == last == 3000
    assert counts == dict(expected)


async def test_a_commit_cut_between_keys_and_position_counts_nothing_twice(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, app_name = await new_source(js, "cut")
    last = await publish(js, root, [f"k{i % 5}" for i in range(200)])

    first = counter_app(settings, app_name, stream, batch=20)
    die_at_position_write(first, app_name, 4, "the process died before writing its position")
    with pytest.raises(RuntimeError, match="injected"):
        await asyncio.wait_for(first.run(), 30)
    # The fourth batch's keys are on the changelog, its position is not.
    assert await committed_position(js, app_name) == 60

    second = counter_app(settings, app_name, stream, batch=20)
    async with second:
        # The fourth batch's keys were rolled back to the position; its events ran again.
        assert second.stats.rolled_back_keys == 5
        assert second.snapshot("counts") == {f"k{i}": 12 for i in range(5)}
        await until(lambda: second.position(app_name) >= last, 30)
        counts = second.snapshot("counts")
    assert counts == dict(await recount(event_log, stream))
    assert counts == {f"k{i}": 40 for i in range(5)}


# --- recovery before intake ---------------------------------------------------------------------


async def test_recovered_state_is_visible_to_the_first_event_after_a_restart(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "recover")
    last = await publish(js, root, ["a"] * 30 + ["b"] * 5)

    def build() -> StreamApp:
        app = StreamApp(name, settings, batch=10)
        app.table("counts", default=int)
        app.table("seen", default=int)

        @app.processor(stream=stream, durable=name, decode=json.loads)
        def count(tables: Tables, event: StreamEvent) -> None:
            key = event.envelope["k"]
            # What this event saw before counting itself.
            tables["seen"][str(event.seq)] = tables["counts"][key]
            tables["counts"][key] += 1

        return app

    first = build()
    async with first:
        await until(lambda: first.position(name) >= last, 30)

    after = await publish(js, root, ["a"])
    second = build()
    async with second:
        await until(lambda: second.position(name) >= after, 30)
        seen = second.snapshot("seen")
        counts = second.snapshot("counts")
    assert seen[str(after)] == 30
    assert counts == {"a": 31, "b": 5}
    # Nothing before the restart ran again.
    assert second.stats.processed == 1
    assert second.stats.recovered_keys == 2 + 35


# --- windows ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_windows_are_recovered_and_then_expire(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "window")

    def build() -> StreamApp:
        app = StreamApp(name, settings, batch=10, window_cleanup=0.2)
        app.table("recent", default=int, window=Tumbling(size=2, expires=8))

        @app.processor(stream=stream, durable=name, decode=json.loads)
        def count(tables: Tables, event: StreamEvent) -> None:
            tables["recent"][event.envelope["k"]] += 1

        return app

    last = await publish(js, root, ["x", "x", "y"])
    first = build()
    async with first:
        await until(lambda: first.position(name) >= last, 30)
        windows = first.snapshot("recent")
    assert sorted(v for v in windows.values()) in ([1, 2], [1, 1, 2], [1, 1, 1, 2], [1, 2, 2])
    assert {key for key, _ in windows} == {"x", "y"}
    # Windows live in a changelog stream of their own, dropped with them; the app's other
    # changelog (positions, plain tables) is kept forever.
    windowed = await js.stream_info(names.changelog_stream(name, "recent"))
    assert windowed.config.max_age == 2 + 2 * 8
    assert windowed.state.messages == len(windows)
    assert not (await js.stream_info(names.changelog_stream(name))).config.max_age

    second = build()
    async with second:
        recovered = second.snapshot("recent")
        assert recovered == windows
        # Expired after recovery by faust's cleanup timer, with no new event arriving.
        await until(lambda: not second.snapshot("recent"), 30)
        # A new event opens a new window, which the expired ones do not disturb.
        again = await publish(js, root, ["x"])
        await until(lambda: second.position(name) >= again, 30)
        assert list(second.snapshot("recent").values()) == [1]


# --- bad input ----------------------------------------------------------------------------------


async def dead_letters(log: EventLog, app: str, processor: str) -> list[Any]:
    subject = names.deadletter_subject(app, processor)
    return [d async for d in log.replay(names.STREAM_DEADLETTER, subjects=[subject])]


async def test_malformed_events_are_dead_lettered_and_the_app_goes_on(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "malformed")

    app = StreamApp(name, settings, batch=10)
    app.table("types", default=int)

    @app.processor(stream=stream, durable=name)  # strict decoding with the schema registry
    def count(tables: Tables, event: StreamEvent) -> None:
        tables["types"][event.envelope.type] += 1

    def scaled() -> bytes:
        return event(
            AgentScaled(agent_id="a1", replicas=2, previous=1), aggregate_id="a1", source="test"
        ).to_json()

    await js.publish(f"{root}.x", scaled())
    garbage = (await js.publish(f"{root}.x", b"\x00not json")).seq
    invalid = (await js.publish(f"{root}.x", b'{"specversion": "1.0", "type": "nope"}')).seq
    last = (await js.publish(f"{root}.x", scaled())).seq
    async with app:
        await until(lambda: app.position(name) >= last, 30)
        assert app.snapshot("types") == {"swarm.agent.scaled": 2}
        later = (await js.publish(f"{root}.x", scaled())).seq
        await until(lambda: app.position(name) >= later, 30)
        assert app.snapshot("types") == {"swarm.agent.scaled": 3}
    assert app.stats.malformed == 2

    letters = await dead_letters(event_log, name, name)
    assert [int(d.headers[names.HEADER_DEADLETTER_SEQ]) for d in letters] == [garbage, invalid]
    assert [d.data for d in letters] == [b"\x00not json", b'{"specversion": "1.0", "type": "nope"}']
    for letter in letters:
        assert letter.headers[names.HEADER_DEADLETTER_REASON].startswith("malformed: ")
        assert letter.headers[names.HEADER_DEADLETTER_STREAM] == stream


async def test_a_failing_handler_is_rolled_back_retried_then_dead_lettered(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "failing")
    calls: Counter[int] = Counter()

    def build() -> StreamApp:
        app = StreamApp(name, settings, batch=10, retries=2)
        app.table("counts", default=int)

        @app.processor(stream=stream, durable=name, decode=json.loads)
        def count(tables: Tables, event: StreamEvent) -> None:
            calls[event.seq] += 1
            tables["counts"]["all"] += 1
            tables["counts"][event.envelope["k"]] += 1
            if event.envelope["k"] == "boom":
                raise ValueError("cannot count boom")

        return app

    last = await publish(js, root, ["a", "b", "boom", "a"])
    boom = last - 1
    app = build()
    async with app:
        await until(lambda: app.position(name) >= last, 30)
        counts = app.snapshot("counts")
    # The failing event's writes were rolled back after each of its 3 attempts.
    assert counts == {"all": 3, "a": 2, "b": 1}
    assert calls[boom] == 3
    assert app.stats.failed == 1
    assert app.stats.processed == 3

    letters = await dead_letters(event_log, name, name)
    assert [int(d.headers[names.HEADER_DEADLETTER_SEQ]) for d in letters] == [boom]
    reason = letters[0].headers[names.HEADER_DEADLETTER_REASON]
    assert reason.startswith("handler failed 3 times: ValueError(")
    assert "cannot count boom" in reason

    # Once dead-lettered, the event is behind the committed position: not retried on restart.
    calls.clear()
    again = build()
    async with again:
        await asyncio.sleep(0.5)
        assert again.snapshot("counts") == counts
    assert not calls


async def test_tables_change_only_inside_handlers(settings: Settings) -> None:
    app = StreamApp(unique("outside"), settings)
    table = app.table("counts", default=int)
    with pytest.raises(RuntimeError, match="inside a processor"):
        table["x"] = 1


def test_bad_names_are_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="must match"):
        StreamApp("Bad-Name", settings)
    app = StreamApp(unique("names"), settings)
    with pytest.raises(ValueError, match="must match"):
        app.table("has.dot")
    with pytest.raises(ValueError, match="batch"):
        StreamApp(unique("batch"), settings, batch=0)


async def test_hopping_windows_count_each_event_in_every_window_it_falls_in(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "hopping")
    app = StreamApp(name, settings, batch=10)
    app.table("load", default=int, window=Hopping(size=4, step=2, expires=60))
    current: list[int] = []

    @app.processor(stream=stream, durable=name, decode=json.loads)
    def count(tables: Tables, event: StreamEvent) -> None:
        tables["load"]["a"] += 1
        current.append(tables["load"]["a"].current())

    last = await publish(js, root, ["a"] * 5)
    async with app:
        await until(lambda: app.position(name) >= last, 30)
        windows = app.snapshot("load")
    # size 4, step 2: every event lies in two overlapping windows.
    assert len(windows) in (2, 3)
    assert sum(windows.values()) == 2 * 5
    assert all(end - start == pytest.approx(4, abs=0.2) for _, (start, end) in windows)
    assert current[-1] >= 1


async def test_current_reads_the_window_of_the_events_stored_time_not_of_its_fetch(
    event_log: EventLog, settings: Settings
) -> None:
    # Events processed well after they were stored (a backlog, a restart) still count in, and
    # read back from, the window of the time they were stored: faust's `current()` reads the
    # time off the message it is handed, which the app moves to each event's stored time.
    js = event_log.js
    stream, root, name = await new_source(js, "lagging")
    app = StreamApp(name, settings, batch=10)
    app.table("load", default=int, window=Tumbling(size=1, expires=60))
    seen: list[tuple[float, int]] = []

    @app.processor(stream=stream, durable=name, decode=json.loads)
    def count(tables: Tables, event: StreamEvent) -> None:
        tables["load"]["a"] += 1
        seen.append((event.timestamp.timestamp(), tables["load"]["a"].current()))

    last = await publish(js, root, ["a"] * 3)
    published = time.time()
    # The app starts once the events' one-second window is over (a condition on the clock).
    await until(lambda: time.time() >= published + 1.2, 5)
    async with app:
        await until(lambda: app.position(name) >= last, 30)
    expected = [
        sum(1 for t, _ in seen[: i + 1] if int(t) == int(ts)) for i, (ts, _) in enumerate(seen)
    ]
    assert [value for _, value in seen] == expected


async def test_two_processors_share_tables_and_restart_without_double_counts(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    first_stream, second_stream = unique("FIRST"), unique("SECOND")
    first_root = await new_stream(js, first_stream)
    second_root = await new_stream(js, second_stream)
    name = unique("two")

    def build() -> StreamApp:
        app = StreamApp(name, settings, batch=7)
        app.table("counts", default=int)

        def count(tables: Tables, event: StreamEvent) -> None:
            tables["counts"][event.envelope["k"]] += 1

        app.processor(stream=first_stream, durable=f"{name}_a", decode=json.loads)(count)
        app.processor(stream=second_stream, durable=f"{name}_b", decode=json.loads)(count)
        return app

    # Both streams write the same keys, and their sequences overlap (1, 2, 3, ...): the
    # applied sequence of a key is kept per processor.
    a_last = await publish(js, first_root, ["x", "y"] * 20)
    b_last = await publish(js, second_root, ["x"] * 30)
    app = build()
    async with app:
        await until(lambda: app.position(f"{name}_a") >= a_last, 30)
        await until(lambda: app.position(f"{name}_b") >= b_last, 30)
        assert app.snapshot("counts") == {"x": 50, "y": 20}
        info = await js.consumer_info(first_stream, f"{name}_a")
        assert info.config.max_ack_pending == 7
        assert info.config.ack_policy == AckPolicy.ALL

    a_more = await publish(js, first_root, ["y"])
    again = build()
    async with again:
        await until(lambda: again.position(f"{name}_a") >= a_more, 30)
        assert again.snapshot("counts") == {"x": 50, "y": 21}
    assert again.stats.processed == 1


async def test_outputs_are_appended_once_even_when_their_batch_is_replayed(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "outputs")
    agent = unique("agent")

    def build() -> StreamApp:
        app = StreamApp(name, settings, batch=10)
        app.table("counts", default=int)

        @app.processor(stream=stream, durable=name, decode=json.loads)
        def count(tables: Tables, event: StreamEvent) -> list[Any]:
            tables["counts"]["n"] += 1
            n = tables["counts"]["n"]
            if n % 5:
                return []
            scaled = AgentScaled(agent_id=agent, replicas=n, previous=n - 5)
            return [event_(scaled, aggregate_id=agent, source=name, id=event.derived_id())]

        return app

    last = await publish(js, root, ["x"] * 50)
    first = build()
    die_at_position_write(first, name, 3, "died after the outputs, before the position")
    with pytest.raises(RuntimeError, match="injected"):
        await asyncio.wait_for(first.run(), 30)

    second = build()
    async with second:
        await until(lambda: second.position(name) >= last, 30)
    # Events 21-30 ran again on the state rolled back to position 20, returned their two
    # outputs again (n = 25, 30) with the same ids, and JetStream dropped those repeats.
    assert second.stats.rolled_back_keys == 1
    assert second.stats.outputs == 6
    subject = names.event_subject("agent", agent, "scaled")
    outputs = [d async for d in event_log.replay(names.STREAM_EVENTS, subjects=[subject])]
    replicas = [json.loads(d.data)["data"]["replicas"] for d in outputs]
    assert replicas == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]


async def test_deleting_the_changelog_rebuilds_the_tables_from_the_stream(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "reset")
    last = await publish(js, root, ["a", "b", "a"] * 10)
    first = counter_app(settings, name, stream, batch=8)
    async with first:
        await until(lambda: first.position(name) >= last, 30)
    await js.delete_stream(names.changelog_stream(name))

    second = counter_app(settings, name, stream, batch=8)
    async with second:
        assert second.snapshot("counts") == {}
        await until(lambda: second.position(name) >= last, 30)
        assert second.snapshot("counts") == {"a": 20, "b": 10}


async def test_a_second_writer_on_the_changelog_stops_the_app_instead_of_losing_writes(
    event_log: EventLog, settings: Settings
) -> None:
    js = event_log.js
    stream, root, name = await new_source(js, "intruder")
    last = await publish(js, root, ["a"] * 10)
    app = counter_app(settings, name, stream, batch=5)
    await app.start()
    try:
        await app.reached(name, last, timeout=30)
        # Another process writes to the app's changelog: the next commit cannot prove that
        # all its writes were stored (the sequence moved by one more), so the app stops.
        positions = names.changelog_table_prefix(name, names.CHANGELOG_POSITIONS)
        await js.publish(f"{positions}.{key_token(encode_key('other'))}", b'{"seq": 0}')
        more = await publish(js, root, ["a"] * 5)
        with pytest.raises(AppendFailed, match="another process writes to it"):
            await asyncio.wait_for(app.wait(), 30)
    finally:
        app.stop()
        await app.wait()

    again = counter_app(settings, name, stream, batch=5)
    async with again:
        await again.reached(name, more, timeout=30)
        assert again.snapshot("counts") == {"a": 15}
