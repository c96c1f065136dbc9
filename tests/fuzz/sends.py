"""What the fuzz tests publish: schema-valid commands, steered onto a few shared names so that
they meet each other's state, and mutations of them as a careless client or an attacker sends
them (wrong types, non-finite and out-of-range numbers as raw JSON text, huge ints, long
strings, extra and missing fields, deep nesting, bytes that are not UTF-8, lone surrogates,
broken JSON, a type that is not the subject, bad and reused ids, forged identities).

A `Send` is an instruction, not bytes: the harness gives each one a fresh command id when it
publishes it (ids must not collide across examples that share one Hive), and resolves `Reuse`
to the id or bytes of a command sent before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from hypothesis import strategies as st

from schemas import names
from tests.fuzz.schema_strategies import Json, command_object, command_types

#: Shared names: generated commands are steered onto them so they find each other's agents,
#: pods and namespaces instead of being refused as `not_found` every time. Agent ids are the ids
#: of the commands that deployed them, so command ids come from the same pool.
COMMAND_IDS = ("c0", "c1")
POD_IDS = ("p0", "p1")
AGENT_NAMES = ("a", "b")
NAMESPACES = ("default", "ns1")
#: Principals that are no one's own: forged or unknown (the right one is drawn most times).
OTHER_IDENTITIES = ("service:hive", "pod:p2", "agent:c0", "agent:c1", "user:", "nobody")
#: Commands only a service may send, and commands only their pod may send (or a user).
_SERVICE_ONLY = frozenset(
    {
        "swarm.cmd.placement.propose",
        "swarm.cmd.placement.preempt",
        "swarm.cmd.pod.expire",
        "swarm.cmd.replica.restart",
    }
)
_POD_SCOPED = frozenset(
    {"swarm.cmd.pod.register", "swarm.cmd.pod.deregister", "swarm.cmd.replica.report"}
)
#: What a history needs early to get anywhere: pods, namespaces, agents, placements.
SETUP_TYPES = (
    "swarm.cmd.pod.register",
    "swarm.cmd.namespace.create",
    "swarm.cmd.agent.deploy",
    "swarm.cmd.placement.propose",
    "swarm.cmd.replica.report",
)
#: Data fields that name a shared thing, and where their values come from.
_POOLS: dict[str, tuple[str, ...]] = {
    "agent_id": COMMAND_IDS,
    "pod_id": POD_IDS,
    "namespace": NAMESPACES,
    "webhook_id": COMMAND_IDS,
    "replica_id": tuple(f"{agent}-{n}" for agent in COMMAND_IDS for n in range(2)),  # see below
    "url": ("https://hooks.example/a", "http://127.0.0.1:9/x"),
}
#: `name` is an agent's name in agent commands and a namespace's in namespace commands.
_NAME_POOL = {"namespace": (*NAMESPACES, "ns2")}


def _principal(type_: str, data: Json) -> str:
    if type_ in _SERVICE_ONLY:
        return "service:scheduler"
    if type_ in _POD_SCOPED and isinstance(data.get("pod_id"), str):
        return f"pod:{data['pod_id']}"
    return "user:fuzz"


@st.composite
def steered_command(draw: st.DrawFn, types: tuple[str, ...] = ()) -> Json:
    """A schema-valid command (of one of `types`, if given) whose names, id and identity mostly
    point at the shared pools above and at the principal allowed to send it (else at someone
    else's)."""
    choices = st.sampled_from(types) if types else st.sampled_from(command_types())
    type_ = draw(choices if types else st.sampled_from(SETUP_TYPES) | choices)
    obj = dict(draw(command_object(type_)))
    data = dict(obj["data"])
    for key, value in data.items():
        pool: tuple[str, ...] | None = _POOLS.get(key)
        if key == "name":
            pool = _NAME_POOL.get(type_.split(".")[2], AGENT_NAMES)
        if pool is not None and isinstance(value, str) and draw(st.integers(0, 4)) < 4:
            data[key] = draw(st.sampled_from(pool))
    agent = data.get("agent_id")
    if isinstance(data.get("replica_id"), str) and agent in COMMAND_IDS:
        data["replica_id"] = f"{agent}-{draw(st.integers(0, 1))}"
    if "replicas" in data and isinstance(data["replicas"], int):
        data["replicas"] = min(data["replicas"], draw(st.integers(0, 3)))
    obj["data"] = data
    # Hypothesis favours small draws: 0 is the common case.
    if draw(st.integers(0, 5)) < 5:
        obj["identity"] = _principal(type_, data)
    elif draw(st.booleans()):
        obj["identity"] = draw(st.sampled_from(OTHER_IDENTITIES))
    if draw(st.integers(0, 3)) < 3:
        obj["id"] = draw(st.sampled_from(COMMAND_IDS))
    return obj


# --- instructions to the harness -----------------------------------------------------------------

Mutation = Literal[
    "valid",
    "wrong_type",
    "missing_field",
    "extra_field",
    "bad_extension",
    "long_string",
    "huge_int",
    "raw_number",
    "deep",
    "not_utf8",
    "lone_surrogate",
    "broken_json",
    "not_an_object",
    "duplicate_key",
    "subject_mismatch",
    "unknown_type",
    "event_type",
    "bad_id",
    "no_id",
    "forged_identity",
]
#: Every mutation but "valid".
MUTATIONS: list[Mutation] = [m for m in get_args(Mutation) if m != "valid"]
MsgId = Literal["command_id", "none", "other"]


@dataclass(frozen=True)
class Send:
    """Publish `obj` (a command as JSON) on `subject` after `mutation`; the harness fills `id`."""

    obj: Json
    mutation: Mutation
    msg_id: MsgId
    #: What the mutation needs (the path it changes, the raw text it splices in, ...).
    detail: dict[str, Any] = field(default_factory=dict)
    #: Publish on this subject instead of the command's type.
    subject: str | None = None


@dataclass(frozen=True)
class Reuse:
    """Send again what was sent `back` sends before: the very same bytes (`same_bytes`), or a
    new valid body under its id."""

    back: int
    same_bytes: bool
    msg_id: MsgId
    obj: Json | None = None


Item = Send | Reuse


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path to a value inside `value` (objects and arrays), the root excluded."""
    found: list[tuple[str | int, ...]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found.append((*prefix, k))
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.append((*prefix, i))
            found += _paths(v, (*prefix, i))
    return found


def get_at(obj: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def set_at(obj: Json, path: tuple[str | int, ...], value: Any) -> Json:
    """A deep copy of `obj` with the value at `path` replaced."""
    copy: Json = json.loads(json.dumps(obj))
    target: Any = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return copy


def delete_at(obj: Json, path: tuple[str | int, ...]) -> Json:
    copy: Json = json.loads(json.dumps(obj))
    target: Any = copy
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return copy


#: Placeholder the harness swaps for raw JSON text the json module would never write.
RAW_MARK = "\u2063raw\u2063"
RAW_NUMBERS = (
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1" + "0" * 5000,
    "-0",
    "1.0e308",
    "123456789012345678901234567890",
)
_OTHER_TYPES: tuple[Any, ...] = ("", "3", 3, -1, 2.5, True, None, [], {}, [1, "x"], {"k": "v"})


@st.composite
def mutated(draw: st.DrawFn, obj: Json) -> Send:
    """One mutation of the valid command `obj`."""
    kind: Mutation = draw(st.sampled_from(MUTATIONS))
    msg_id: MsgId = draw(st.sampled_from(["command_id", "none", "other"]))
    data_paths = [p for p in _paths(obj) if p[0] == "data"]
    any_path = draw(st.sampled_from(data_paths or [("data",)]))
    if kind == "wrong_type":
        current = get_at(obj, any_path)
        other = draw(st.sampled_from([v for v in _OTHER_TYPES if type(v) is not type(current)]))
        return Send(set_at(obj, any_path, other), kind, msg_id, {"path": any_path})
    if kind == "missing_field":
        path = draw(st.sampled_from([("id",), ("type",), ("source",), ("data",), *data_paths]))
        if path == ("id",):
            kind = "no_id"
        return Send(delete_at(obj, path), kind, msg_id, {"path": path})
    if kind == "extra_field":
        where = draw(st.sampled_from([*[p for p in data_paths if _is_obj(obj, p)], ("data",)]))
        target = dict(get_at(obj, where))
        target["unexpected_" + draw(st.sampled_from(["field", "x", "id"]))] = draw(
            st.sampled_from(_OTHER_TYPES)
        )
        return Send(set_at(obj, where, target), kind, msg_id, {"path": where})
    if kind == "bad_extension":
        name, value = draw(
            st.sampled_from(
                [
                    ("Bad-Name", "x"),
                    ("traceparent", {"nested": True}),
                    ("toolong" * 4, "x"),
                    ("big", 2**40),
                    ("list", [1, 2]),
                    ("text", "x" * 3000),
                ]
            )
        )
        return Send({**obj, name: value}, kind, msg_id, {"name": name})
    if kind == "long_string":
        size = draw(st.sampled_from([257, 513, 2049, 10_000, 300_000]))
        path = draw(st.sampled_from([("source",), ("identity",), ("type",), *data_paths]))
        return Send(set_at(obj, path, "x" * size), kind, msg_id, {"path": path, "size": size})
    if kind == "huge_int":
        value = draw(st.sampled_from([2**63, -(2**63) - 1, 10**30, -1, -(10**18), 2**31]))
        return Send(set_at(obj, any_path, value), kind, msg_id, {"path": any_path})
    if kind == "raw_number":
        text = draw(st.sampled_from(RAW_NUMBERS))
        numeric = [p for p in data_paths if _is_number(get_at(obj, p))] or [any_path]
        path = draw(st.sampled_from(numeric))
        return Send(set_at(obj, path, RAW_MARK), kind, msg_id, {"path": path, "raw": text})
    if kind == "deep":
        depth = draw(st.sampled_from([63, 65, 1_000, 100_000]))
        return Send(set_at(obj, any_path, RAW_MARK), kind, msg_id, {"raw": _nested(depth)})
    if kind == "not_utf8":
        raw = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
        return Send(obj, kind, msg_id, {"bytes": raw})
    if kind == "lone_surrogate":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d x", "\\udc00\\ud800"]))
        path = draw(st.sampled_from([("source",), ("id",), ("identity",), *data_paths]))
        return Send(set_at(obj, path, RAW_MARK), kind, msg_id, {"raw": f'"a{escape}b"'})
    if kind == "broken_json":
        cut = draw(st.integers(0, 400))
        style = draw(st.sampled_from(["truncate", "garbage", "empty", "comma"]))
        return Send(obj, kind, msg_id, {"cut": cut, "style": style})
    if kind == "not_an_object":
        text = draw(st.sampled_from(["null", "[]", "123", '"text"', "true", "[{}]"]))
        return Send(obj, kind, msg_id, {"text": text})
    if kind == "duplicate_key":
        return Send(obj, kind, msg_id, {"key": draw(st.sampled_from(["id", "type", "data"]))})
    if kind == "subject_mismatch":
        other = draw(st.sampled_from([t for t in command_types() if t != obj["type"]]))
        return Send(obj, kind, msg_id, subject=other)
    if kind == "unknown_type":
        type_ = draw(st.sampled_from(["swarm.cmd.nope.nothing", "swarm.cmd.agent.explode"]))
        return Send({**obj, "type": type_}, kind, msg_id, subject=type_)
    if kind == "event_type":
        return Send({**obj, "type": "swarm.agent.deployed"}, kind, msg_id)
    if kind == "bad_id":
        bad = draw(
            st.sampled_from(
                ["", "has space", "a.b", "*", ">", "x" * 65, 123, None, ["id"], "é", "_invalid"]
            )
        )
        return Send({**obj, "id": bad}, kind, msg_id, {"id": bad})
    if kind == "no_id":
        return Send({k: v for k, v in obj.items() if k != "id"}, kind, msg_id)
    # forged_identity: someone else's principal, or none that the Hive knows.
    identity = draw(
        st.sampled_from(
            [None, "", "nobody", "user:", "root:admin", "service:hive", "pod:p2", "agent:c3"]
        )
    )
    forged = {**obj, "identity": identity} if identity is not None else _without(obj, "identity")
    return Send(forged, "forged_identity", msg_id, {"identity": identity})


def _without(obj: Json, key: str) -> Json:
    return {k: v for k, v in obj.items() if k != key}


def _is_obj(obj: Json, path: tuple[str | int, ...]) -> bool:
    return isinstance(get_at(obj, path), dict)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def render(send: Send, obj: Json) -> bytes:
    """The bytes of `send`, with `obj` (its command, id filled in) as the base."""
    text = json.dumps(obj, ensure_ascii=False)
    detail = send.detail
    if "raw" in detail:
        text = text.replace(json.dumps(RAW_MARK, ensure_ascii=False), detail["raw"], 1)
    body = text.encode()
    if send.mutation == "not_utf8":
        # Inside the first string value after `"source":` (or wherever a quote opens).
        at = body.find(b'"', body.find(b":") + 1) + 1
        body = body[:at] + detail["bytes"] + body[at:]
    elif send.mutation == "broken_json":
        style = detail["style"]
        if style == "truncate":
            body = body[: min(detail["cut"], len(body) - 1)]
        elif style == "garbage":
            body = body + b"}garbage"
        elif style == "empty":
            body = b""
        else:
            body = body[:-1] + b",}"
    elif send.mutation == "not_an_object":
        body = detail["text"].encode()
    elif send.mutation == "duplicate_key":
        key = detail["key"]
        second = {"id": '"second-id"', "type": '"swarm.cmd.agent.delete"', "data": "{}"}[key]
        body = body[:-1] + f', "{key}": {second}}}'.encode()
    return body


def subject_for(obj: Any, send: Send) -> str:
    """Where it is published: its type when that is a command subject, else a command subject."""
    if send.subject is not None:
        return send.subject
    type_ = obj.get("type") if isinstance(obj, dict) else None
    if isinstance(type_, str) and type_ in command_types():
        return type_
    return "swarm.cmd.agent.deploy" if not isinstance(type_, str) else _safe_subject(type_)


def _safe_subject(type_: str) -> str:
    if type_.startswith(names.COMMANDS_PREFIX + ".") and re.fullmatch(r"[a-z0-9._]+", type_):
        return type_
    return "swarm.cmd.agent.deploy"


@st.composite
def batch(draw: st.DrawFn, *, valid_share: int = 2, max_size: int = 10) -> list[Item]:
    """A batch of sends: valid commands (`valid_share` in 1+`valid_share` of them), mutated
    ones, and re-sends of earlier ones (same bytes, or another body under their id)."""
    items: list[Item] = []
    size = draw(st.integers(1, max_size))
    for _ in range(size):
        base = draw(steered_command())
        roll = draw(st.integers(0, valid_share + 2))
        if roll < valid_share:
            items.append(Send(base, "valid", draw(st.sampled_from(["command_id", "none"]))))
        elif roll == valid_share and items:
            items.append(
                Reuse(
                    back=draw(st.integers(1, len(items))),
                    same_bytes=draw(st.booleans()),
                    msg_id=draw(st.sampled_from(["command_id", "none"])),
                    obj=base,
                )
            )
        else:
            items.append(draw(mutated(base)))
    return items
