"""Strict values at the boundary: every number finite and bounded, every size bounded, any input
decoded or refused with a `DecodeError` (never another exception), and nothing the Hive writes
from a valid command beyond the bounds of the events it writes.

Inputs are built as raw JSON text, the way a plain NATS client could send them, so literals
Python's `json` would not produce (`1e400`, 400-digit integers) are sent as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

import schemas
from schemas import (
    REGISTRY,
    CommandRejected,
    DecodeError,
    Envelope,
    FieldErrorModel,
    Payload,
    Registry,
    event,
    names,
    new_id,
)
from schemas import commands as c
from schemas import events as ev
from schemas import webhooks as w
from schemas.outcomes import MAX_OUTCOME_TEXT
from schemas.registry import (
    MAX_DECODE_ERRORS,
    MAX_DEPTH,
    MAX_LOC_CHARS,
    MAX_MSG_CHARS,
    MAX_RECEIVED_CHARS,
    FieldError,
)
from schemas.specs import (
    INLINE_MODULE_MAX_CHARS,
    MAX_BACKOFF_S,
    MAX_REPLICAS,
    MAX_RESTARTS,
    MAX_WINDOW_S,
    AgentSpec,
    Capacity,
    ModuleRef,
    RestartPolicy,
)
from swarm.client.commands import validate_command
from swarm.client.errors import ClientError
from swarm.domain.evolve import evolve
from tests.helpers.history import WASM
from tests.helpers.sim import Sim

SCHEMA_DIR = Path(schemas.__file__).parent / "jsonschema"
PLACEHOLDER = '"@@literal@@"'

POD = {"pod_id": "p1", "capacity": {"memory_mb": 1024, "fuel_per_s": 10**9, "slots": 10}}
SPEC: dict[str, Any] = {"version": "v1", "module": {"sha256": "0" * 64}}
FINDING: dict[str, Any] = {
    "agent_id": "a1",
    "detector": "robust-z",
    "score": 0.5,
    "severity": "warning",
    "window_start": "2026-01-01T00:00:00Z",
    "window_end": "2026-01-01T00:01:00Z",
    "signals": [{"signal": "fuel", "value": 1.0, "baseline": 1.0, "score": 1.0, "threshold": 4.0}],
}


def _body(type_: str, data: Any, **attributes: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": new_id(),
        "source": "test",
        "type": type_,
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
        **attributes,
    }


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with the dotted `path` set to `value`."""
    copy: dict[str, Any] = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node: Any = copy
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[last] = value
    return copy


def _raw(type_: str, data: dict[str, Any], path: str, literal: str) -> bytes:
    """The command as JSON text with the number at `path` written as `literal`, verbatim."""
    text = json.dumps(_body(type_, _with(data, path, "@@literal@@")))
    assert text.count(PLACEHOLDER) == 1
    return text.replace(PLACEHOLDER, literal).encode()


def _refused(raw: bytes | str) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        REGISTRY.decode(raw, kind="command")
    return caught.value


# --- Finite, bounded numbers ---------------------------------------------------------------------

NUMBERS = [
    # (command type, valid data, path of the number, a valid literal, refused literals)
    (c.RegisterPod.TYPE, POD, "energy_cost", "2.5", ["Infinity", "-Infinity", "NaN", "1e400"]),
    (c.RegisterPod.TYPE, POD, "energy_cost", "2.5", ["-1e400", "1e7", "-0.5"]),
    (c.RegisterPod.TYPE, POD, "lease_s", "0.5", ["1e-300", "0", "0.49", "3601", "NaN"]),
    (c.RegisterPod.TYPE, POD, "capacity.memory_mb", "1048576", ["1" + "0" * 400, "0", "-1"]),
    (c.RegisterPod.TYPE, POD, "capacity.fuel_per_s", "1000000000000000", ["10000000000000001"]),
    (c.RegisterPod.TYPE, POD, "capacity.slots", "1000000", ["1000001"]),
    (c.ExpirePod.TYPE, {"pod_id": "p1"}, "last_heartbeat_age_s", "12.5", ["NaN", "1e400"]),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": SPEC},
        "spec.placement.max_price",
        "5.0",
        ["Infinity", "1e300", "0"],
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": SPEC},
        "spec.restart.window_s",
        "600.0",
        ["1e400", "NaN", "1e300"],
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": SPEC},
        "spec.restart.max_backoff_s",
        "60",
        ["86401", "Infinity"],
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": SPEC},
        "spec.healing.cooldown_s",
        "30",
        ["-Infinity", "1e12"],
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": SPEC},
        "spec.resources.fuel_per_s",
        "1000",
        ["1" + "0" * 400],
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": SPEC, "autoscale": {}},
        "autoscale.target_rate",
        "10.0",
        ["NaN", "1e-300", "1e400"],
    ),
    (
        c.CreateNamespace.TYPE,
        {"name": "team"},
        "quota.max_memory_mb",
        "1000000",
        ["1" + "0" * 400, "-1"],
    ),
    (c.ScaleAgent.TYPE, {"name": "echo"}, "replicas", "400", ["401", "1" + "0" * 400]),
    ("swarm.cmd.anomaly.report", FINDING, "signals.0.value", "-3.5", ["Infinity", "NaN"]),
    ("swarm.cmd.anomaly.report", FINDING, "signals.0.score", "7.0", ["1e400", "1e31"]),
]


@pytest.mark.parametrize(
    ("type_", "data", "path", "literal"),
    [(t, d, p, lit) for t, d, p, ok, bad in NUMBERS for lit in bad],
)
def test_out_of_range_or_non_finite_numbers_are_field_errors(
    type_: str, data: dict[str, Any], path: str, literal: str
) -> None:
    error = _refused(_raw(type_, data, path, literal))
    assert error.reason == f"invalid {type_}"
    located = [e for e in error.errors if e.loc == f"data.{path}"]
    assert located, error.errors
    assert located[0].type in {
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than_equal",
    }


@pytest.mark.parametrize(("type_", "data", "path", "literal"), [n[:4] for n in NUMBERS])
def test_the_same_fields_accept_a_value_within_bounds(
    type_: str, data: dict[str, Any], path: str, literal: str
) -> None:
    decoded = REGISTRY.decode(_raw(type_, data, path, literal), kind="command")
    assert decoded.type == type_


def test_every_model_in_schemas_refuses_inf_and_nan() -> None:
    models: list[type[pydantic.BaseModel]] = []
    pending: list[type[pydantic.BaseModel]] = [pydantic.BaseModel]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if sub.__module__.startswith("schemas.") and "[" not in sub.__name__:
                models.append(sub)
    assert len(models) > 60  # every payload and value, not a handful
    lenient = [m.__qualname__ for m in models if m.model_config.get("allow_inf_nan") is not False]
    assert lenient == []


def test_a_huge_integer_literal_is_refused_without_a_crash() -> None:
    error = _refused(_raw(c.RegisterPod.TYPE, POD, "capacity.memory_mb", "9" * 5000))
    assert error.reason.startswith("body is not JSON")


# --- Sizes ---------------------------------------------------------------------------------------

SIZES = [
    # (command type, data, the error's location, its type)
    (c.RegisterPod.TYPE, {**POD, "zone": "z" * 65}, "data.zone", "string_too_long"),
    (
        c.RegisterPod.TYPE,
        {**POD, "labels": {f"k{i}": "v" for i in range(65)}},
        "data.labels",
        "too_long",
    ),
    (c.RegisterPod.TYPE, {**POD, "labels": {"k" * 129: "v"}}, "data.labels.", "string_too_long"),
    (c.RegisterPod.TYPE, {**POD, "labels": {"k": "v" * 257}}, "data.labels.k", "string_too_long"),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": {**SPEC, "env": {f"E{i}": "" for i in range(65)}}},
        "data.spec.env",
        "too_long",
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": {**SPEC, "env": {"E": "x" * 4097}}},
        "data.spec.env.E",
        "string_too_long",
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": {**SPEC, "capabilities": ["fs"] * 9}},
        "data.spec.capabilities",
        "too_long",
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": {**SPEC, "autonomy": ["x" * 257]}},
        "data.spec.autonomy.0",
        "string_too_long",
    ),
    (
        c.DeployAgent.TYPE,
        {"name": "echo", "spec": {**SPEC, "placement": {"zones": ["z" * 65]}}},
        "data.spec.placement.zones.0",
        "string_too_long",
    ),
    (
        # Refused on its length, before 100 MB of base64 would be decoded.
        c.DeployAgent.TYPE,
        {
            "name": "echo",
            "spec": {**SPEC, "module": {"inline": "A" * (INLINE_MODULE_MAX_CHARS + 4)}},
        },
        "data.spec.module.inline",
        "string_too_long",
    ),
]


@pytest.mark.parametrize(("type_", "data", "loc", "error_type"), SIZES)
def test_over_long_strings_lists_and_maps_are_field_errors(
    type_: str, data: dict[str, Any], loc: str, error_type: str
) -> None:
    error = _refused(json.dumps(_body(type_, data)))
    assert error.reason == f"invalid {type_}"
    assert any(e.loc.startswith(loc) and e.type == error_type for e in error.errors), error.errors


@pytest.mark.parametrize(
    ("attributes", "loc"),
    [
        ({"source": "s" * 513}, "source"),
        ({"correlationid": "c" * 257}, "correlationid"),
        ({"identity": "user:" + "x" * 252}, "identity"),
        ({"subject": "s" * 257}, "subject"),
    ],
)
def test_envelope_attributes_are_bounded(attributes: dict[str, Any], loc: str) -> None:
    error = _refused(json.dumps(_body(c.RegisterPod.TYPE, POD, **attributes)))
    assert [e.loc for e in error.errors] == [loc]


@pytest.mark.parametrize(
    ("extensions", "problem"),
    [
        ({f"ext{i}": "x" for i in range(17)}, "at most 16"),
        ({"traceparent": "x" * 2049}, "longer than 2048"),
        ({"counter": 2**31}, "32-bit integer"),
    ],
)
def test_foreign_extensions_are_bounded_in_number_size_and_range(
    extensions: dict[str, Any], problem: str
) -> None:
    error = _refused(json.dumps(_body(c.RegisterPod.TYPE, POD, **extensions)))
    assert problem in error.errors[0].msg
    kept = {f"ext{i}": "x" for i in range(14)} | {"traceparent": "x" * 2048, "n": 2**31 - 1}
    decoded = REGISTRY.decode(json.dumps(_body(c.RegisterPod.TYPE, POD, **kept)), kind="command")
    assert decoded.extensions == kept


def test_the_client_side_validation_gives_the_same_field_errors() -> None:
    """`swarm publish`/`swarm.client` validate with the Hive's decoder before sending."""
    for field, value in [("energy_cost", float("inf")), ("energy_cost", float("nan"))]:
        with pytest.raises(ClientError) as caught:
            validate_command(_body(c.RegisterPod.TYPE, {**POD, field: value}))
        assert [(p.loc, p.type) for p in caught.value.errors] == [
            (f"data.{field}", "finite_number")
        ]
    with pytest.raises(ClientError) as caught:
        validate_command(_body(c.RegisterPod.TYPE, {**POD, "lease_s": 1e-300}))
    assert [(p.loc, p.type) for p in caught.value.errors] == [
        ("data.lease_s", "greater_than_equal")
    ]
    with pytest.raises(ClientError) as caught:
        validate_command(_body(c.RegisterPod.TYPE, {**POD, "labels": {"k": "v" * 300}}))
    assert [p.loc for p in caught.value.errors] == ["data.labels.k"]


# --- Nesting -------------------------------------------------------------------------------------


def _nested(levels: int, *, spaced: bool = False) -> str:
    """A stop command whose body nests `levels` deep in all (the envelope is level one)."""
    inner = "[" * (levels - 1) + "]" * (levels - 1)
    sep = ": " if spaced else ":"
    head = '{"specversion":"1.0","id":"x1","source":"t","type"' + sep
    return head + f'"{c.StopAgent.TYPE}","data":{inner}}}'


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1000, 50_000])
@pytest.mark.parametrize("spaced", [False, True])
def test_input_nested_too_deep_is_a_decode_error(levels: int, spaced: bool) -> None:
    error = _refused(_nested(levels, spaced=spaced))
    assert error.reason.startswith("body is too deep")
    assert [(e.loc, e.type) for e in error.errors] == [("(root)", "too_deep")]


def test_unclosed_nesting_is_a_decode_error() -> None:
    error = _refused('{"type":"swarm.cmd.agent.stop","data":' + "[" * 50_000)
    assert error.reason.startswith("body is too deep")


def test_nesting_up_to_the_limit_is_judged_on_its_fields() -> None:
    error = _refused(_nested(MAX_DEPTH))
    assert error.reason == f"invalid {c.StopAgent.TYPE}"
    assert [e.loc for e in error.errors] == ["data"]


def test_brackets_inside_strings_are_not_nesting() -> None:
    deep_text = "[{" * 250  # 500 characters: as long as a stop reason may be
    body = json.dumps(_body(c.StopAgent.TYPE, {"name": "echo", "reason": deep_text}))
    for raw in (body, body.replace('"type": ', '"type"  :  ')):  # fast and full path
        assert REGISTRY.decode(raw, kind="command").data.reason == deep_text
    quoted = '\\"' + "[" * 400  # an escaped quote does not end the string
    escaped = json.dumps(_body(c.StopAgent.TYPE, {"name": "echo", "reason": quoted}))
    decoded = REGISTRY.decode(escaped.replace('"type": ', '"type" : '), kind="command")
    assert decoded.data.reason == quoted
    huge = json.dumps(_body(c.StopAgent.TYPE, {"name": "echo", "reason": "[" * 50_000}))
    assert [e.type for e in _refused(huge).errors] == ["string_too_long"]


# --- Text that is not text -----------------------------------------------------------------------


def test_bytes_that_are_not_utf8_are_a_decode_error() -> None:
    raw = json.dumps(_body(c.RegisterPod.TYPE, POD)).encode().replace(b'"p1"', b'"p\xff1"')
    error = _refused(raw)
    assert error.reason.startswith("body is not JSON")
    assert error.errors[0].type == "utf8_invalid"


@pytest.mark.parametrize("where", ["id", "source", "pod_id"])
def test_lone_surrogates_are_a_decode_error(where: str) -> None:
    body = _body(c.RegisterPod.TYPE, POD)
    if where == "pod_id":
        body["data"] = {**POD, "pod_id": "\ud800"}
    else:
        body[where] = "a\ud800"
    escaped = json.dumps(body)  # "\ud800" as a JSON escape
    assert "\\ud800" in escaped
    assert _refused(escaped).reason.startswith("body is not JSON")
    assert _refused(escaped.encode()).reason.startswith("body is not JSON")
    as_text = json.dumps(body, ensure_ascii=False)  # a str holding the lone surrogate itself
    error = _refused(as_text)
    assert error.reason.startswith("body is not JSON")
    assert error.errors[0].type == "utf8_invalid"
    _answer_round_trips(error)


# --- What a refusal says is bounded and can be written --------------------------------------------


def _answer_round_trips(error: DecodeError) -> CommandRejected:
    """The rejection the Hive writes for `error` (see services/hive/processor.py), encoded and
    decoded again as every replica would."""
    rejected = CommandRejected(
        command_id=names.INVALID_COMMAND_ID,
        command_type=error.received.get("type"),
        reason=error.reason,
        errors=[FieldErrorModel(**e.as_dict()) for e in error.errors],
        received={**error.received, "subject": "swarm.cmd." + "x" * 3000, "stream_seq": 2**40},
    )
    env = event(rejected, aggregate_id=names.INVALID_COMMAND_ID, source="hive")
    wire = env.to_json()
    back = REGISTRY.decode(wire, kind="event")
    assert back.data == rejected
    assert len(wire) < 64 * 1024
    return rejected


def test_a_flood_of_errors_is_answered_briefly() -> None:
    junk = {f"{i:05d}" + "k" * 300: i for i in range(2_000)}
    body = _body(c.RegisterPod.TYPE, {**POD, **junk}, id="i" * 10_000, source="s" * 10_000)
    error = _refused(json.dumps(body))
    assert len(error.errors) == MAX_DECODE_ERRORS + 1
    assert error.errors[-1].type == "too_many_errors"
    assert all(len(e.loc) <= MAX_LOC_CHARS for e in error.errors)
    assert set(error.received) == {"id", "type", "source"}
    assert len(error.received["id"]) == MAX_RECEIVED_CHARS
    assert error.received["id"].endswith("…")
    assert not names.is_token(error.received["id"])
    _answer_round_trips(error)


def test_an_unknown_type_of_any_length_is_quoted_briefly() -> None:
    error = _refused(json.dumps(_body("swarm.cmd." + "x" * 100_000, POD)))
    assert error.errors[0].type == "unknown_type"
    assert len(error.reason) < 200
    _answer_round_trips(error)


def test_a_decode_error_holds_only_encodable_text() -> None:
    error = DecodeError(
        "bad \ud800",
        [FieldError("data.\ud800", "m\udfff" * 1000, "t")],
        {"id": "\ud800", "type": "x" * 1000, "other": "dropped", "source": 5},
    )
    assert set(error.received) == {"id", "type"}
    assert all(len(e.msg) <= MAX_MSG_CHARS for e in error.errors)
    rejected = _answer_round_trips(error)
    assert rejected.received["id"] == "\\ud800"


def test_a_rejection_cannot_echo_unbounded_input() -> None:
    with pytest.raises(pydantic.ValidationError):
        CommandRejected(command_id="x", reason="r", received={"deep": {"a": [1]}})  # type: ignore[dict-item]
    with pytest.raises(pydantic.ValidationError):
        CommandRejected(command_id="x", reason="r", received={f"k{i}": i for i in range(33)})
    long = CommandRejected(
        command_id="x",
        reason="r" * 10**6,
        errors=[{"loc": "l" * 2000, "msg": "m" * 10**6, "type": "t"}],
    )  # type: ignore[list-item]
    assert len(long.reason) == len(long.errors[0].msg) == MAX_OUTCOME_TEXT
    assert long.reason.endswith("…")
    assert len(long.errors[0].loc) == 1024


# --- Decoder robustness beyond the models --------------------------------------------------------

FRAGILE = Registry()


@FRAGILE.event("gizmo", "made", version=2)
class GizmoMade(Payload):
    name: str


@FRAGILE.upcaster(GizmoMade.TYPE, 1)
def _gizmo_v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"name": data.pop("label")}  # KeyError on data without a label


def _gizmo(dataschema: str, data: dict[str, Any]) -> str:
    return json.dumps(_body(GizmoMade.TYPE, data, subject="g1", dataschema=dataschema))


def test_an_upcaster_choking_on_bad_old_data_is_a_decode_error() -> None:
    assert FRAGILE.decode(_gizmo(names.dataschema(GizmoMade.TYPE, 1), {"label": "g"})).data == (
        GizmoMade(name="g")
    )
    with pytest.raises(DecodeError) as caught:
        FRAGILE.decode(_gizmo(names.dataschema(GizmoMade.TYPE, 1), {"name": "g"}))
    assert caught.value.errors[0].type == "upcast_failed"
    assert "KeyError" in caught.value.errors[0].msg


@pytest.mark.parametrize("tail", ["²", "1" * 5000, "٣"])
def test_a_schema_version_that_is_not_a_plain_number_is_a_decode_error(tail: str) -> None:
    prefix = names.dataschema(GizmoMade.TYPE, 1)[:-1]
    with pytest.raises(DecodeError) as caught:
        FRAGILE.decode(_gizmo(prefix + tail, {"name": "g"}))
    assert caught.value.errors[0].loc == "dataschema"
    assert len(caught.value.errors[0].msg) < 200


# --- The Hive's own extremes stay within the events' bounds --------------------------------------


def _round_trip_all(sim: Sim) -> None:
    for payload in sim.log:
        aggregate = payload.TYPE.split(".")[1]
        aggregate_id = getattr(payload, names.AGGREGATE_ID_FIELDS[aggregate])
        env: Envelope[Any] = event(payload, aggregate_id=aggregate_id, source="hive")
        assert REGISTRY.decode(env.to_json(), kind="event").data == payload


@pytest.mark.timeout(240)
def test_a_crash_loop_at_the_restart_bound_writes_decodable_events() -> None:
    """`crashes` reaches max_restarts + 1, backoffs grow to 2**1000 times the largest backoff,
    and crash reasons of the longest allowed length are quoted in failure and status reasons."""
    sim = Sim()
    sim.ok(
        c.RegisterPod(pod_id="p1", capacity=Capacity(memory_mb=1024, fuel_per_s=10**9, slots=9)),
        "pod:p1",
    )
    restart = RestartPolicy(
        max_restarts=MAX_RESTARTS,
        window_s=MAX_WINDOW_S,
        backoff_s=MAX_BACKOFF_S,
        max_backoff_s=0.001,
    )
    module = ModuleRef(inline=WASM)
    spec = AgentSpec(version="v1", module=module, restart=restart)
    sim.ok(c.DeployAgent(name="loop", spec=spec, replicas=1))
    (agent,) = sim.state.agents.values()
    replica_id = next(iter(agent.replicas))
    a = agent.agent_id
    for crash in range(MAX_RESTARTS + 1):
        if crash:
            sim.tick(0.002)
            sim.ok(c.RestartReplica(agent_id=a, replica_id=replica_id), "service:hive")
        sim.ok(
            c.ProposePlacement(agent_id=a, replica_id=replica_id, pod_id="p1", policy="test"),
            "service:scheduler",
        )
        # A replica may crash while it starts (scheduled): one report fewer per round.
        crashed = c.ReportReplica(
            agent_id=a, replica_id=replica_id, pod_id="p1", status="crashed", reason="r" * 2000
        )
        sim.ok(crashed, "pod:p1")
    assert agent.replicas[replica_id].phase == "failed"
    crashes = [p.crashes for p in sim.log if p.TYPE == "swarm.agent.replica_crashed"]
    assert crashes[-1] == MAX_RESTARTS + 1
    _round_trip_all(sim)


def test_the_most_replicas_and_the_longest_reasons_write_decodable_events() -> None:
    sim = Sim()
    module = ModuleRef(inline=WASM)
    spec = AgentSpec(version="v1", module=module)
    sim.ok(c.DeployAgent(name="many", spec=spec, replicas=MAX_REPLICAS))
    sim.ok(c.StopAgent(name="many", reason="s" * 500))
    sim.ok(
        c.RegisterPod(
            pod_id="p1",
            capacity=Capacity(memory_mb=1024, fuel_per_s=10**9, slots=9),
            labels={"k" * 128: "v" * 256},
            zone="z" * 64,
            energy_cost=1e6,
            lease_s=0.5,
        ),
        "pod:p1",
    )
    sim.ok(c.DeregisterPod(pod_id="p1", reason="d" * 500), "pod:p1")
    _round_trip_all(sim)


def test_a_rejection_quoting_the_longest_webhook_url_can_be_written() -> None:
    """decide quotes a webhook URL (<= 2,048 characters) with repr and in urlsplit's complaint
    about its port; characters repr escapes take ten each. The rejection still fits."""
    url = "http://h:" + "\U000e0001" * 2039
    outcome = Sim().rejected(
        w.AddWebhook(url=url, filter="swarm.evt.>", secret_fingerprint="0" * 16)
    )
    assert len(outcome.reason) > 30_000
    rejected = CommandRejected(
        command_id="c1",
        command_type=w.AddWebhook.TYPE,
        reason=outcome.reason,
        rule=outcome.rule,
        errors=[FieldErrorModel(**e) for e in outcome.errors],
    )
    wire = event(rejected, aggregate_id="c1", source="hive").to_json()
    assert REGISTRY.decode(wire, kind="event").data == rejected


def test_a_rejection_quoting_a_thousand_long_version_names_can_be_written() -> None:
    """A rollback to a version the agent never had lists the versions it has: as many as were
    ever rolled out. The Hive's rejection is cut to its bound, not refused."""
    sim = Sim()
    module = ModuleRef(inline=WASM)
    versions = [f"v{i:04d}-" + "x" * 58 for i in range(1000)]
    sim.ok(c.DeployAgent(name="old", spec=AgentSpec(version=versions[0], module=module)))
    (agent_id,) = sim.state.agents
    # The rollouts' own events, folded directly: deciding a thousand rollouts takes minutes.
    for seq, version in enumerate(versions[1:], start=sim.seq + 1):
        started = ev.AgentRolloutStarted(
            agent_id=agent_id,
            spec=AgentSpec(version=version, module=module),
            from_version=sim.state.agents[agent_id].spec.version,
            max_surge=1,
        )
        evolve(sim.state, seq, event(started, aggregate_id=agent_id, source="hive"))
    assert len(sim.state.agents[agent_id].history) == 1000
    outcome = sim.rejected(c.RollbackAgent(name="old", to_version="never"))
    assert len(outcome.reason) > MAX_OUTCOME_TEXT
    rejected = CommandRejected(command_id="c1", reason=outcome.reason, rule=outcome.rule)
    assert len(rejected.reason) == MAX_OUTCOME_TEXT
    wire = event(rejected, aggregate_id="c1", source="hive").to_json()
    assert REGISTRY.decode(wire, kind="event").data == rejected


# --- Bounds in the exported JSON Schemas ---------------------------------------------------------

_LOWER = {"minimum", "exclusiveMinimum"}
_UPPER = {"maximum", "exclusiveMaximum"}
_STRING_BOUNDS = {"maxLength", "pattern", "enum", "const"}
_TYPED = {"type", "anyOf", "oneOf", "allOf", "$ref", "const", "enum"}


def unbounded(schema: Any, where: str = "") -> list[str]:
    """Where `schema` (a JSON Schema document) lets a value be as big as a sender likes: numbers
    without both a lower and an upper bound, strings without a length bound (a pattern, an enum,
    a constant or a date-time also bound them), arrays without maxItems, open objects without
    maxProperties, and values of no stated type at all."""
    found: list[str] = []
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            found += unbounded(item, f"{where}/{i}")
        return found
    if not isinstance(schema, dict):
        return found
    types = schema.get("type", [])
    for type_ in types if isinstance(types, list) else [types]:
        keys = schema.keys()
        if type_ in ("number", "integer") and not (_LOWER & keys and _UPPER & keys):
            found.append(f"{where}: {type_} without a lower and an upper bound")
        if type_ == "string" and not (_STRING_BOUNDS & keys or schema.get("format") == "date-time"):
            found.append(f"{where}: string without maxLength")
        if type_ == "array" and "maxItems" not in keys:
            found.append(f"{where}: array without maxItems")
        open_ = schema.get("additionalProperties", False) is not False
        if type_ == "object" and open_ and "maxProperties" not in keys:
            found.append(f"{where}: open object without maxProperties")
    values = [*schema.get("properties", {}).items()]
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), dict):
            values.append((key, schema[key]))
    for name, value in values:
        if isinstance(value, dict) and not _TYPED & value.keys():
            found.append(f"{where}/{name}: value of any type")
    for key, value in schema.items():
        if isinstance(value, dict | list):
            found += unbounded(value, f"{where}/{key}")
    return found


def test_every_exported_schema_bounds_every_value() -> None:
    # What the system reads (commands, events); not the query answers it writes (views).
    files = sorted(
        p
        for p in SCHEMA_DIR.glob("*.json")
        if p.name != "index.json" and not p.name.startswith("swarm.view.")
    )
    assert len(files) > 50
    problems = [p for f in files for p in unbounded(json.loads(f.read_text()), f.name)]
    assert problems == []


def test_the_schema_check_finds_what_is_unbounded() -> None:
    class Loose(pydantic.BaseModel):
        count: int
        ratio: float = pydantic.Field(ge=0)
        name: str
        tags: list[str] = pydantic.Field(max_length=3)
        extra: dict[str, int] = pydantic.Field(max_length=3)
        anything: Any = None
        bounded: int = pydantic.Field(ge=0, le=9)
        when: str = pydantic.Field(json_schema_extra={"format": "date-time"})

    problems = unbounded(Loose.model_json_schema(), "Loose")
    assert len(problems) == 6, problems
    for field in ("count", "ratio", "name", "tags/items", "extra/additionalProperties"):
        assert any(f"/{field}:" in p for p in problems), (field, problems)
    assert any("/anything: value of any type" in p for p in problems)
