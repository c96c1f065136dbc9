"""`swarm publish` against real JetStream, with a small responder standing in for the Hive.

The CLI runs in a worker thread (its own `asyncio.run`), the responder in the test's event loop:
the same split as a real CLI process and a real Hive, without a subprocess per test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from schemas import (
    REGISTRY,
    CommandAccepted,
    CommandRejected,
    DecodeError,
    FieldErrorModel,
    Payload,
    Registry,
    event,
    names,
    new_id,
)
from swarm.cli import connect, publish
from swarm.cli.output import CliError
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.tasks import cancel_and_wait
from tests.helpers.partial_cli import cli_with

# Test-only command and event types, in a registry of their own (plus the real outcomes), so
# nothing here changes `REGISTRY` or the exported schemas.
TEST_REGISTRY = Registry(entries=dict(REGISTRY.entries))
PING = "swarm.cmd.test.ping"


@TEST_REGISTRY.command("test", "ping")
class Ping(Payload):
    name: str
    replicas: int = 1
    labels: dict[str, str] = {}


@TEST_REGISTRY.event("test", "pinged")
class Pinged(Payload):
    name: str
    replicas: int


def _cli() -> typer.Typer:
    return cli_with(lambda app: publish.register(app, registry=TEST_REGISTRY))


async def invoke(
    args: Sequence[str], nats_url: str | None, *, stdin: str | None = None, **env: str | None
) -> Result:
    """Run the CLI in a thread, so its own event loop does not meet the test's."""
    argv = [*args, "--nats-url", nats_url] if nats_url else list(args)
    return await asyncio.to_thread(
        CliRunner().invoke, _cli(), ["publish", *argv], input=stdin, env=env or None
    )


async def respond(log: EventLog, after: int) -> None:
    """A stand-in Hive: answer every test command appended after sequence `after`.

    name "forbidden" is refused by a rule, "ignore" gets no answer at all, a command that does
    not decode is rejected with its field errors; anything else is accepted with one event.
    Outcome ids derive from the command id, so answering a redelivered command twice is harmless.
    """
    replay = log.replay(
        names.STREAM_COMMANDS, start_seq=after + 1, subjects=["swarm.cmd.test.>"], follow=True
    )
    async for delivery in replay:
        try:
            cmd = TEST_REGISTRY.decode(delivery.data, kind="command")
        except DecodeError as exc:
            command_id = str(exc.received.get("id", names.INVALID_COMMAND_ID))
            rejected = CommandRejected(
                command_id=command_id,
                command_type=exc.received.get("type"),
                reason=exc.reason,
                errors=[FieldErrorModel(**e.as_dict()) for e in exc.errors],
                received=exc.received,
            )
            await log.append(
                event(rejected, aggregate_id=command_id, source="test-hive", id=f"{command_id}-o")
            )
            continue
        if cmd.data.name == "ignore":
            continue
        if cmd.data.name == "forbidden":
            outcome: Payload = CommandRejected(
                command_id=cmd.id,
                command_type=cmd.type,
                reason="pings named 'forbidden' are not allowed",
                rule="policy.no-forbidden-names",
                errors=[FieldErrorModel(loc="data.name", msg="is forbidden", type="policy")],
            )
        else:
            pinged = event(
                Pinged(name=cmd.data.name, replicas=cmd.data.replicas),
                aggregate_id=cmd.id,
                source="test-hive",
                cause=cmd,
                id=f"{cmd.id}-e",
            )
            await log.append(pinged)
            outcome = CommandAccepted(command_id=cmd.id, command_type=cmd.type, events=[pinged.id])
        await log.append(
            event(outcome, aggregate_id=cmd.id, source="test-hive", cause=cmd, id=f"{cmd.id}-o")
        )


@pytest.fixture
async def hive(event_log: EventLog) -> AsyncIterator[None]:
    after = await event_log.last_sequence(names.STREAM_COMMANDS)
    task = asyncio.create_task(respond(event_log, after))
    yield
    await cancel_and_wait([task])
    assert task.cancelled(), task.exception()  # it answered until stopped, and never failed


async def last_command(log: EventLog) -> tuple[dict[str, Any], dict[str, str]]:
    seq = await log.last_sequence(names.STREAM_COMMANDS)
    msg = await log.js.get_msg(names.STREAM_COMMANDS, seq)
    return json.loads(msg.data or b""), dict(msg.headers or {})


# --- Accepted, rejected, no answer ---------------------------------------------------------------


@pytest.mark.usefixtures("hive")
async def test_accepted_command_prints_the_events_it_caused(
    nats_url: str, event_log: EventLog
) -> None:
    result = await invoke(
        [PING, "--data", '{"name": "a"}', "--set", "replicas=3", "--set", "labels.tier=gold"],
        nats_url,
    )
    assert result.exit_code == 0, result.output
    sent, headers = await last_command(event_log)
    assert sent["type"] == PING
    assert sent["data"] == {"name": "a", "replicas": 3, "labels": {"tier": "gold"}}
    assert sent["source"] == publish.CLI_SOURCE
    assert sent["identity"] == Settings().identity
    assert sent["dataschema"] == names.dataschema(PING, 1)
    assert headers[names.HEADER_MSG_ID] == sent["id"]
    assert f"accepted {PING} {sent['id']}" in result.stdout
    assert "swarm.test.pinged" in result.stdout
    assert f"{sent['id']}-e" in result.stdout  # the caused event, found in the log


@pytest.mark.usefixtures("hive")
async def test_rejected_command_prints_reason_rule_and_field_errors(nats_url: str) -> None:
    result = await invoke([PING, "--set", "name=forbidden"], nats_url)
    assert result.exit_code == 1, result.output
    assert "rejected" in result.stdout
    assert "pings named 'forbidden' are not allowed" in result.stdout
    assert "policy.no-forbidden-names" in result.stdout
    assert "data.name" in result.stdout
    assert "is forbidden" in result.stdout


@pytest.mark.usefixtures("hive")
async def test_json_output_is_the_outcome_cloudevent(nats_url: str, event_log: EventLog) -> None:
    result = await invoke([PING, "--set", "name=b", "-o", "json"], nats_url)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    sent, _ = await last_command(event_log)
    assert outcome["type"] == CommandAccepted.TYPE
    assert outcome["data"]["command_id"] == sent["id"]
    assert outcome["correlationid"] == sent["id"]


@pytest.mark.usefixtures("hive")
async def test_no_outcome_in_time_exits_3_with_a_hint(nats_url: str) -> None:
    result = await invoke([PING, "--set", "name=ignore", "--timeout", "0.5"], nats_url)
    assert result.exit_code == 3, result.output
    assert "no outcome for" in result.stderr
    assert "within 0.5s — is the Hive running? (`swarm status`)" in result.stderr
    assert "Traceback" not in result.output


async def test_no_wait_prints_id_and_sequence(nats_url: str, event_log: EventLog) -> None:
    result = await invoke([PING, "--set", "name=c", "--no-wait", "-o", "json"], nats_url)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    sent, _ = await last_command(event_log)
    assert printed["id"] == sent["id"]
    assert printed["seq"] == await event_log.last_sequence(names.STREAM_COMMANDS)
    assert printed["duplicate"] is False


# --- Input ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("hive")
async def test_file_input_yaml_with_just_type_and_data(nats_url: str, tmp_path: Path) -> None:
    path = tmp_path / "cmd.yaml"
    path.write_text(f"type: {PING}\ndata:\n  name: from-yaml\n  replicas: 2\n")
    result = await invoke(["-f", str(path), "-o", "yaml"], nats_url)
    assert result.exit_code == 0, result.output
    assert "type: swarm.command.accepted" in result.stdout


@pytest.mark.usefixtures("hive")
async def test_stdin_cloudevent_keeps_its_id_and_a_resend_finds_the_first_outcome(
    nats_url: str, event_log: EventLog
) -> None:
    command_id = new_id()
    document = json.dumps(
        {
            "specversion": "1.0",
            "id": command_id,
            "source": "someone-else",
            "type": PING,
            "time": "2024-05-01T12:00:00Z",
            "data": {"name": "stdin"},
        }
    )
    first = await invoke(["-f", "-", "-o", "json"], nats_url, stdin=document)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["data"]["command_id"] == command_id
    sent, _ = await last_command(event_log)
    assert sent["source"] == "someone-else"

    # Same id again: JetStream drops the duplicate; the outcome is the one already in the log.
    before = await event_log.last_sequence(names.STREAM_EVENTS)
    again = await invoke(["-f", "-", "-o", "json"], nats_url, stdin=document)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert await event_log.last_sequence(names.STREAM_EVENTS) == before


async def test_local_validation_failure_exits_2_and_sends_nothing(
    nats_url: str, event_log: EventLog
) -> None:
    before = await event_log.last_sequence(names.STREAM_COMMANDS)
    result = await invoke([PING, "--set", "name=x", "--set", "replicas=many"], nats_url)
    assert result.exit_code == 2, result.output
    assert f"invalid {PING}" in result.stderr
    assert "data.replicas" in result.stderr
    assert "int_type" in result.stderr
    assert "--no-validate" in result.stderr
    assert await event_log.last_sequence(names.STREAM_COMMANDS) == before


@pytest.mark.usefixtures("hive")
async def test_no_validate_sends_anyway_and_shows_the_servers_rejection(
    nats_url: str, event_log: EventLog
) -> None:
    unknown = await invoke(["swarm.cmd.test.unknown", "--set", "x=1"], nats_url)
    assert unknown.exit_code == 2
    assert "unknown command type 'swarm.cmd.test.unknown'" in unknown.stderr
    assert PING in unknown.stderr  # lists the known ones

    result = await invoke(
        [PING, "--set", "name=x", "--set", "replicas=many", "--no-validate"], nats_url
    )
    assert result.exit_code == 1, result.output
    assert "data.replicas" in result.stdout  # the responder's field errors, as a table
    sent, _ = await last_command(event_log)
    assert sent["data"]["replicas"] == "many"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no command type"),
        (["swarm.agent.deployed"], "is not a command type"),
        (["swarm.cmd.test.*", "--no-validate"], "is not a valid subject"),
        ([PING, "--data", "[1]"], "--data must be a JSON object"),
        ([PING, "--data", "{oops"], "--data is not JSON"),
        ([PING, "--set", "novalue"], "expected key=value"),
        ([PING, "--set", "name=a", "--set", "name.first=b"], "name is not an object"),
        ([PING, "-f", "/nonexistent/cmd.json"], "cannot read /nonexistent/cmd.json"),
    ],
)
async def test_invalid_input_is_a_readable_error(args: list[str], message: str) -> None:
    # No server is needed: input is checked before connecting.
    result = await invoke(args, "nats://127.0.0.1:1")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_set_values_are_json_when_they_parse() -> None:
    data = publish.apply_sets(
        {"keep": 1},
        ["a.b.c=3", "flag=true", "list=[1,2]", "text=hello world", 'quoted="7"', "eq=a=b"],
    )
    assert data == {
        "keep": 1,
        "a": {"b": {"c": 3}},
        "flag": True,
        "list": [1, 2],
        "text": "hello world",
        "quoted": "7",
        "eq": "a=b",
    }


def test_build_command_fills_the_envelope_and_keeps_what_was_given() -> None:
    built = publish.build_command(
        {"type": PING, "id": "given-id", "data": {"name": "a"}},
        sets=["replicas=2"],
        identity="user:ann",
        registry=TEST_REGISTRY,
    )
    assert built["id"] == "given-id"
    assert built["data"] == {"name": "a", "replicas": 2}
    assert built["specversion"] == "1.0"
    assert built["datacontenttype"] == "application/json"
    assert built["identity"] == "user:ann"
    assert built["time"].endswith("+00:00")
    publish.validate_command(built, TEST_REGISTRY)  # what the CLI builds, the Hive accepts


# --- Finding NATS --------------------------------------------------------------------------------


async def test_unreachable_nats_is_one_readable_line() -> None:
    result = await invoke([PING, "--set", "name=a"], "nats://127.0.0.1:1")
    assert result.exit_code == 4, result.output
    assert "cannot reach NATS at nats://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.output


async def test_without_a_url_or_stack_says_how_to_start_one(tmp_path: Path) -> None:
    result = await invoke(
        [PING, "--set", "name=a"], None, SWARM_NATS_URL=None, SWARM_DATA_DIR=str(tmp_path)
    )
    assert result.exit_code == 4, result.output
    assert "no Swarm stack found: run `swarm up` or pass --nats-url" in result.stderr


def test_url_resolution_order(tmp_path: Path) -> None:
    no_env = Settings(nats_url=None, data_dir=tmp_path)
    with pytest.raises(CliError, match="no Swarm stack found"):
        connect.resolve_nats_url(None, no_env)

    (tmp_path / connect.STACK_STATE_FILE).write_text(json.dumps({"pid": 1}))
    with pytest.raises(CliError, match="no Swarm stack found"):
        connect.resolve_nats_url(None, no_env)

    (tmp_path / connect.STACK_STATE_FILE).write_text("{broken")
    with pytest.raises(CliError, match="cannot read"):
        connect.resolve_nats_url(None, no_env)

    (tmp_path / connect.STACK_STATE_FILE).write_text(json.dumps({"nats_url": "nats://h:1"}))
    from_stack = connect.resolve_nats_url(None, no_env)
    assert from_stack.url == "nats://h:1"
    assert from_stack.origin.endswith(connect.STACK_STATE_FILE)

    with_env = Settings(nats_url="nats://env:2", data_dir=tmp_path)
    assert connect.resolve_nats_url(None, with_env).url == "nats://env:2"
    assert connect.resolve_nats_url("nats://flag:3", with_env).url == "nats://flag:3"


def test_the_stacks_own_url_given_outright_comes_with_its_owners_credentials(
    tmp_path: Path,
) -> None:
    """`--nats-url` copied from `swarm status` must not lock the stack's owner out: the URL of
    the chosen stack's server carries what the stack recorded for it; another URL nothing."""
    seed = tmp_path / "principals" / "admin.nk"
    (tmp_path / connect.STACK_STATE_FILE).write_text(
        json.dumps({"nats_url": "nats://h:1", "nats_credentials": str(seed)})
    )
    settings = Settings(nats_url=None, data_dir=tmp_path)
    assert connect.resolve_nats_url(None, settings).credentials == seed
    assert connect.resolve_nats_url("nats://h:1", settings).credentials == seed
    assert connect.resolve_nats_url("nats://h:1", settings).origin == "--nats-url"
    assert connect.resolve_nats_url("nats://other:1", settings).credentials is None
    with_env = Settings(nats_url="nats://h:1", data_dir=tmp_path)
    assert connect.resolve_nats_url(None, with_env).credentials == seed


@pytest.mark.usefixtures("hive")
async def test_the_stack_state_file_is_used(nats_url: str, tmp_path: Path) -> None:
    (tmp_path / connect.STACK_STATE_FILE).write_text(json.dumps({"nats_url": nats_url}))
    result = await invoke(
        [PING, "--set", "name=via-stack"], None, SWARM_NATS_URL=None, SWARM_DATA_DIR=str(tmp_path)
    )
    assert result.exit_code == 0, result.output


async def test_outcome_on_the_invalid_subject_is_matched_by_received_id(
    event_log: EventLog,
) -> None:
    """A command the Hive cannot parse is answered on `_invalid`, carrying the id it read."""
    command_id = new_id()
    start = await event_log.last_sequence(names.STREAM_EVENTS) + 1
    for received_id in ("someone-else", command_id):
        rejected = CommandRejected(
            command_id=names.INVALID_COMMAND_ID, reason="unreadable", received={"id": received_id}
        )
        await event_log.append(
            event(rejected, aggregate_id=names.INVALID_COMMAND_ID, source="test-hive")
        )
    outcome = await publish.wait_for_outcome(
        event_log, command_id, start_seq=start, within=2.0, registry=TEST_REGISTRY
    )
    assert outcome is not None
    assert not outcome.accepted
    assert outcome.seq == start + 1  # the other sender's rejection was skipped
    assert isinstance(outcome.envelope and outcome.envelope.data, CommandRejected)


async def test_wait_for_outcome_gives_up_after_its_time(event_log: EventLog) -> None:
    start = await event_log.last_sequence(names.STREAM_EVENTS) + 1
    loop = asyncio.get_running_loop()
    began = loop.time()
    outcome = await publish.wait_for_outcome(event_log, new_id(), start_seq=start, within=0.3)
    assert outcome is None
    assert 0.3 <= loop.time() - began < 2.0
