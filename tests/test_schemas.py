"""The public contracts in `schemas/`: envelope, strict decoding, upcasting, names, exported files.

Registries built here are test-local, so nothing registered for a test leaks into `REGISTRY` (and
so into the committed JSON Schema files the staleness test compares against).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
import typer
from typer.testing import CliRunner

from schemas import (
    REGISTRY,
    CommandAccepted,
    CommandRejected,
    DecodeError,
    Envelope,
    Payload,
    RawEnvelope,
    Registry,
    command,
    event,
    export,
    names,
    new_id,
    subject_of,
)
from swarm.cli import schemas_cmd
from tests.helpers.interpreter import run_python
from tests.helpers.partial_cli import cli_with

# --- A test-local registry -----------------------------------------------------------------------

LOCAL = Registry()


@LOCAL.command("widget", "make")
class MakeWidget(Payload):
    """Make a widget."""

    name: str
    size: int = 1


@LOCAL.event("widget", "made", version=3)
class WidgetMade(Payload):
    """v3: `label` (v1) became `name` (v2), then `colour` was added (v3)."""

    name: str
    colour: str


@LOCAL.upcaster(WidgetMade.TYPE, 1)
def _widget_made_v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"name": data.pop("label"), **data}


@LOCAL.upcaster(WidgetMade.TYPE, 2)
def _widget_made_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "colour": "grey"}


def _command_json(**changes: Any) -> str:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": new_id(),
        "source": "test",
        "type": MakeWidget.TYPE,
        "time": "2024-05-01T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {"name": "w", "size": 2},
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not None})


# --- Envelope ------------------------------------------------------------------------------------


def test_envelope_fills_defaults_and_serializes_without_nulls() -> None:
    envelope = Envelope[MakeWidget](source="test", type=MakeWidget.TYPE, data=MakeWidget(name="w"))
    assert envelope.specversion == "1.0"
    assert names.is_token(envelope.id)
    assert len(envelope.id) == 26
    assert envelope.time.tzinfo is not None
    wire = json.loads(envelope.to_json())
    assert "subject" not in wire
    assert "correlationid" not in wire
    assert wire["data"] == {"name": "w", "size": 1}


def test_envelope_keeps_foreign_extensions_and_refuses_bad_ones() -> None:
    kept = LOCAL.decode(_command_json(traceparent="00-abc-def-01"))
    assert kept.extensions == {"traceparent": "00-abc-def-01"}
    assert json.loads(kept.to_json())["traceparent"] == "00-abc-def-01"
    with pytest.raises(DecodeError) as bad_name:
        LOCAL.decode(_command_json(Trace_Parent="x"))
    assert "extension attribute" in bad_name.value.errors[0].msg
    with pytest.raises(DecodeError) as bad_value:
        LOCAL.decode(_command_json(tags={"a": 1}))
    assert "must be a string" in bad_value.value.errors[0].msg


def test_envelope_and_payload_are_frozen() -> None:
    envelope = LOCAL.decode(_command_json())
    with pytest.raises(pydantic.ValidationError):
        envelope.data.name = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        envelope.id = "x"  # type: ignore[misc]


def test_raw_envelope_reads_unknown_types_leniently() -> None:
    raw = RawEnvelope.model_validate_json(
        _command_json(type="swarm.cmd.future.thing", data={"anything": [1, 2]})
    )
    assert raw.type == "swarm.cmd.future.thing"
    assert raw.data == {"anything": [1, 2]}


# --- Strict decoding -----------------------------------------------------------------------------


def test_decode_returns_the_typed_payload() -> None:
    envelope = LOCAL.decode(_command_json(), kind="command")
    assert isinstance(envelope.data, MakeWidget)
    assert envelope.data == MakeWidget(name="w", size=2)
    assert envelope.time == datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "loc", "code"),
    [
        ({"data": {"name": "w", "size": "2"}}, "data.size", "int_type"),
        ({"data": {"name": "w", "colour": "red"}}, "data.colour", "extra_forbidden"),
        ({"data": {"size": 2}}, "data.name", "missing"),
        ({"id": "not a token!"}, "id", "string_pattern_mismatch"),
        ({"time": "2024-05-01T12:00:00"}, "time", "value_error"),
        ({"specversion": "0.3"}, "specversion", "literal_error"),
        ({"source": None}, "source", "missing"),
    ],
)
def test_decode_reports_field_level_errors(changes: dict[str, Any], loc: str, code: str) -> None:
    with pytest.raises(DecodeError) as caught:
        LOCAL.decode(_command_json(**changes))
    error = caught.value
    assert error.reason == f"invalid {MakeWidget.TYPE}"
    assert [(e.loc, e.type) for e in error.errors] == [(loc, code)]
    assert error.received["type"] == MakeWidget.TYPE  # enough to address an answer


def test_decode_rejects_unknown_types_and_the_wrong_kind() -> None:
    with pytest.raises(DecodeError) as unknown:
        LOCAL.decode(_command_json(type="swarm.cmd.widget.paint"))
    assert unknown.value.errors[0].type == "unknown_type"
    with pytest.raises(DecodeError) as wrong_kind:
        LOCAL.decode(_command_json(), kind="event")
    assert wrong_kind.value.reason == f"unknown event type {MakeWidget.TYPE!r}"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"[1, 2]", "body must be a JSON object, got list"),
        (b"\xff\xfe", "body is not JSON"),
        (b'{"id": "x1"}', "missing CloudEvents attribute 'type'"),
    ],
)
def test_decode_never_raises_anything_but_decode_error(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        LOCAL.decode(raw)
    assert caught.value.reason.startswith(reason)


def test_decode_keeps_what_it_could_read_of_a_broken_command() -> None:
    with pytest.raises(DecodeError) as caught:
        LOCAL.decode(json.dumps({"id": "abc", "type": 5, "source": "me", "identity": "user:x"}))
    assert caught.value.received == {"id": "abc", "source": "me", "identity": "user:x"}


# --- Upcasting -----------------------------------------------------------------------------------


def _made(version: int | None, data: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": new_id(),
        "source": "test",
        "type": WidgetMade.TYPE,
        "time": "2024-05-01T12:00:00Z",
        "subject": "w1",
        "data": data,
    }
    if version is not None:
        body["dataschema"] = names.dataschema(WidgetMade.TYPE, version)
    return json.dumps(body)


def test_upcasters_run_step_by_step_from_the_stored_version() -> None:
    from_v1 = LOCAL.decode(_made(1, {"label": "old"}))
    assert from_v1.data == WidgetMade(name="old", colour="grey")
    assert from_v1.dataschema == names.dataschema(WidgetMade.TYPE, 3)
    from_v2 = LOCAL.decode(_made(2, {"name": "mid"}))
    assert from_v2.data == WidgetMade(name="mid", colour="grey")
    current = LOCAL.decode(_made(3, {"name": "new", "colour": "red"}))
    assert current.data == WidgetMade(name="new", colour="red")
    unstated = LOCAL.decode(_made(None, {"name": "new", "colour": "red"}))
    assert unstated.data.colour == "red"  # no dataschema means the current version


def test_upcasting_refuses_unknown_versions_and_missing_steps() -> None:
    with pytest.raises(DecodeError) as future:
        LOCAL.decode(_made(4, {"name": "x", "colour": "y"}))
    assert future.value.errors[0].loc == "dataschema"
    with pytest.raises(DecodeError) as foreign:
        LOCAL.decode(_made(None, {}).replace('"subject"', '"dataschema": "http://x", "subject"'))
    assert foreign.value.errors[0].type == "dataschema"

    gap = Registry()

    @gap.event("gadget", "made", version=2)
    class GadgetMade(Payload):
        name: str

    body = _made(1, {"name": "g"}).replace(WidgetMade.TYPE, GadgetMade.TYPE)
    with pytest.raises(DecodeError) as missing:
        gap.decode(body)
    assert missing.value.errors[0].type == "no_upcaster"


def test_registry_refuses_double_registration() -> None:
    local = Registry()

    @local.command("twice", "done")
    class Once(Payload):
        pass

    with pytest.raises(ValueError, match="registered twice"):

        @local.command("twice", "done")
        class Again(Payload):
            pass

    local.upcaster(Once.TYPE, 1)(lambda data: data)
    with pytest.raises(ValueError, match="registered twice"):
        local.upcaster(Once.TYPE, 1)(lambda data: data)


# --- Building envelopes --------------------------------------------------------------------------


def test_built_events_inherit_correlation_and_identity_from_their_cause() -> None:
    cmd = command(MakeWidget(name="w"), source="cli", identity="user:ann")
    assert subject_of(cmd) == cmd.type == "swarm.cmd.widget.make"
    assert cmd.dataschema == names.dataschema(MakeWidget.TYPE, 1)
    first = event(WidgetMade(name="w", colour="red"), aggregate_id="w1", source="hive", cause=cmd)
    assert (first.correlationid, first.causationid, first.identity) == (cmd.id, cmd.id, "user:ann")
    assert subject_of(first) == "swarm.evt.widget.w1.made"
    second = event(WidgetMade(name="w", colour="blue"), aggregate_id="w1", source="x", cause=first)
    assert (second.correlationid, second.causationid) == (cmd.id, first.id)


def test_outcomes_are_registered_events_on_the_command_aggregate() -> None:
    cmd = command(MakeWidget(name="w"), source="cli")
    accepted = event(
        CommandAccepted(command_id=cmd.id, command_type=cmd.type),
        aggregate_id=cmd.id,
        source="hive",
        cause=cmd,
    )
    assert subject_of(accepted) == names.outcome_subject(cmd.id, "accepted")
    decoded = REGISTRY.decode(accepted.to_json(), kind="event")
    assert isinstance(decoded.data, CommandAccepted)
    assert REGISTRY.get(CommandRejected.TYPE) is not None


# --- Names ---------------------------------------------------------------------------------------


def test_subject_helpers_build_and_parse_the_documented_subjects() -> None:
    assert names.command_subject("agent", "deploy") == "swarm.cmd.agent.deploy"
    assert names.event_subject("agent", "a1", "running") == "swarm.evt.agent.a1.running"
    assert names.aggregate_subjects("agent", "a1") == "swarm.evt.agent.a1.*"
    assert names.event_type("agent", "running") == "swarm.agent.running"
    assert names.outcome_subject("c1", "rejected") == "swarm.evt.command.c1.rejected"
    assert names.outcome_wildcard("c1") == "swarm.evt.command.c1.*"
    assert names.dataschema("swarm.agent.running", 2) == "swarm:schemas/swarm.agent.running/v2"
    assert names.parse_event_subject("swarm.evt.agent.a1.running") == ("agent", "a1", "running")
    assert names.parse_event_subject("swarm.cmd.agent.deploy") is None
    assert names.parse_event_subject("swarm.evt.agent.a1") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: names.command_subject("Agent", "deploy"),
        lambda: names.command_subject("agent", "de.ploy"),
        lambda: names.event_subject("agent", "a.1", "running"),
        lambda: names.event_subject("agent", "*", "running"),
        lambda: names.outcome_wildcard(">"),
        lambda: names.event_type("agent", ""),
    ],
)
def test_subject_helpers_refuse_names_that_would_break_subjects(call: Any) -> None:
    with pytest.raises(ValueError, match="must match"):
        call()


def test_tokens_are_what_a_command_id_may_be() -> None:
    assert names.is_token(new_id())
    assert names.is_token("a-b_C9")
    assert not names.is_token("")
    assert not names.is_token("a.b")
    assert not names.is_token("x" * 65)


# --- Exported JSON Schema ------------------------------------------------------------------------


def test_committed_json_schemas_match_the_models() -> None:
    # If this fails: run `swarm schemas export` and commit schemas/jsonschema/.
    assert export.stale() == []


def test_export_writes_validatable_schemas_and_detects_drift(tmp_path: Path) -> None:
    written = export.write(tmp_path, LOCAL, {})
    assert sorted(p.name for p in written) == [
        "index.json",
        "swarm.cmd.widget.make.v1.json",
        "swarm.widget.made.v3.json",
    ]
    assert export.stale(tmp_path, LOCAL, {}) == []
    schema = json.loads((tmp_path / "swarm.widget.made.v3.json").read_text())
    assert schema["$id"] == "swarm:schemas/swarm.widget.made/v3"
    assert schema["properties"]["type"] == {"const": "swarm.widget.made", "title": "Type"}
    index = json.loads((tmp_path / "index.json").read_text())
    assert {(i["type"], i["kind"], i["version"]) for i in index} == {
        ("swarm.cmd.widget.make", "command", 1),
        ("swarm.widget.made", "event", 3),
    }

    (tmp_path / "swarm.widget.made.v3.json").write_text("{}")
    (tmp_path / "swarm.widget.gone.v1.json").write_text("{}")
    assert export.stale(tmp_path, LOCAL, {}) == [
        "swarm.widget.gone.v1.json",
        "swarm.widget.made.v3.json",
    ]
    rewritten = export.write(tmp_path, LOCAL, {})
    assert {p.name for p in rewritten} == {"swarm.widget.gone.v1.json", "swarm.widget.made.v3.json"}
    assert not (tmp_path / "swarm.widget.gone.v1.json").exists()
    assert export.write(tmp_path, LOCAL, {}) == []  # idempotent


def test_exported_schema_validates_real_commands(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    export.write(tmp_path, LOCAL, {})
    schema = json.loads((tmp_path / "swarm.cmd.widget.make.v1.json").read_text())
    good = json.loads(command(MakeWidget(name="w"), source="cli").to_json())
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "data": {"name": 3}}, schema)


# --- `swarm schemas` -----------------------------------------------------------------------------


def _cli() -> typer.Typer:
    return cli_with(lambda app: app.add_typer(schemas_cmd.app, name="schemas"))


def test_cli_export_and_check(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "out"
    stale = runner.invoke(_cli(), ["schemas", "export", "--dir", str(target), "--check"])
    assert stale.exit_code == 1
    assert "stale:" in stale.stdout
    assert "index.json" in stale.stdout
    assert not target.exists()  # --check writes nothing

    wrote = runner.invoke(_cli(), ["schemas", "export", "--dir", str(target)])
    assert wrote.exit_code == 0, wrote.output
    assert export.stale(target) == []
    assert "wrote" in wrote.stdout

    clean = runner.invoke(_cli(), ["schemas", "export", "--dir", str(target), "--check"])
    assert clean.exit_code == 0
    assert "up to date" in clean.stdout


def test_cli_ls_lists_every_registered_type() -> None:
    result = CliRunner().invoke(_cli(), ["schemas", "ls", "-o", "json"])
    assert result.exit_code == 0, result.output
    listed = {(r["type"], r["kind"], r["version"]) for r in json.loads(result.stdout)}
    assert listed == {(e.type, e.kind, e.model.VERSION) for e in REGISTRY}
    table = CliRunner().invoke(_cli(), ["schemas", "ls"])
    assert CommandRejected.TYPE in table.stdout
    assert "CommandRejected" in table.stdout


def test_cli_show_prints_the_exported_schema() -> None:
    runner = CliRunner()
    result = runner.invoke(_cli(), ["schemas", "show", CommandRejected.TYPE])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(
        export.render()[f"{CommandRejected.TYPE}.v{CommandRejected.VERSION}.json"]
    )
    fields = runner.invoke(_cli(), ["schemas", "show", CommandRejected.TYPE, "-o", "table"])
    assert fields.exit_code == 0
    assert "reason" in fields.stdout
    assert "list[FieldErrorModel]" in fields.stdout

    typo = runner.invoke(_cli(), ["schemas", "show", "swarm.command.rejectd"])
    assert typo.exit_code == 2
    assert "unknown type" in typo.stderr
    assert CommandRejected.TYPE in typo.stderr
    assert "Traceback" not in typo.output


def test_payload_fields_that_are_none_survive_a_round_trip() -> None:
    """Unset envelope attributes are omitted, but None in a payload is data and is kept."""
    from datetime import UTC, datetime

    from schemas import REGISTRY, event
    from schemas.events import ReplicaCrashed

    crashed = ReplicaCrashed(
        agent_id="a1", replica_id="a1-0", pod_id=None, reason="trap", crashes=3, restart_at=None
    )
    env = event(crashed, aggregate_id="a1", source="test", time=datetime.now(UTC))
    body = json.loads(env.to_json())
    assert "causationid" not in body
    assert body["data"]["restart_at"] is None
    assert body["data"]["pod_id"] is None
    assert REGISTRY.decode(env.to_json()).data == crashed


def test_the_package_exports_load_on_first_use_and_the_registry_is_whole() -> None:
    """`from schemas import names` builds no model (a CLI verb's start-up); the first registry
    lookup loads every module that registers a contract, whatever was imported before."""
    import schemas

    assert set(schemas.__all__) == set(schemas._HOME)
    root = Path(schemas.__file__).parent
    registering = {f"schemas.{p.stem}" for p in root.glob("*.py") if "@REGISTRY." in p.read_text()}
    assert set(REGISTRY.modules) == registering
    probe = (
        "import sys\n"
        "from schemas import names\n"
        "assert 'schemas.commands' not in sys.modules, 'names built the models'\n"
        "from schemas.registry import REGISTRY\n"
        "entry = REGISTRY.get(names.command_subject('agent', 'deploy'))\n"
        "assert entry is not None\n"
        "print(len(list(REGISTRY)))\n"
    )
    result = run_python("-c", probe, cwd=root.parent)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(list(REGISTRY))
