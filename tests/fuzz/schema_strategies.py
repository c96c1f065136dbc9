"""Hypothesis strategies for commands, generated from the exported JSON Schemas.

Every `swarm.cmd.*` schema listed in `schemas/jsonschema/index.json` (the whole CloudEvents
envelope, with its payload under `data`) is turned into a strategy of JSON objects that the
schema accepts.

Why an adapter around hypothesis-jsonschema rather than its `from_schema` alone (0.23.1, its
latest release, checked against these schemas):

* Objects fail: its object strategy drives a private Hypothesis helper
  (`conjecture.utils.many(...).more()`) that Hypothesis 6.170 replaced by a context manager, so
  every object schema raises `AttributeError: 'many' object has no attribute 'more'`.
* `$ref`s fail: it resolves them against the document's `$id` (`swarm:schemas/...`), which it
  takes for a remote reference it will not fetch.

So `$ref`s are inlined here, objects, arrays and `anyOf` are built here (required keys always,
optional ones drawn, extra keys only where `additionalProperties` allows them), and every leaf
(strings with patterns and formats, bounded numbers, enums, consts) goes to hypothesis-jsonschema,
which is what it does best.

A few rules of the models are cross-field checks that JSON Schema does not state (exactly one of
`module.sha256` / `module.inline`, inline modules in base64, topics without repeats, a priority
that agrees with its priority class, `min_replicas <= max_replicas`); `_REPAIRS` makes drawn
values keep them, so "valid" means what the Hive's decoder accepts. Anything else the schema
accepts and the decoder refuses is a disagreement `test_schema_valid_commands_decode` reports.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from schemas.export import DEFAULT_DIR
from schemas.specs import PRIORITY_CLASSES

Json = dict[str, Any]

#: Keys drawn beyond the named ones in an open object (labels, env, foreign extensions), and
#: items in an array: enough to reach every rule about them, few enough to keep bodies small.
MAX_EXTRA_KEYS = 3
MAX_ITEMS = 3
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id"})


@cache
def command_schemas(directory: Path = DEFAULT_DIR) -> dict[str, Json]:
    """Command type -> its exported JSON Schema, for every command in the index."""
    index = json.loads((directory / "index.json").read_text())
    return {
        entry["type"]: json.loads((directory / entry["file"]).read_text())
        for entry in index
        if entry["kind"] == "command"
    }


def command_types() -> list[str]:
    return sorted(command_schemas())


@cache
def command_object(type_: str) -> st.SearchStrategy[Json]:
    """JSON objects that the schema of command `type_` accepts (envelope and payload).

    Built once per type: building walks the schema and compiles its patterns (milliseconds)."""
    schema = command_schemas()[type_]
    return _strategy(_inline(schema, schema.get("$defs", {})))


def any_command_object() -> st.SearchStrategy[Json]:
    return st.sampled_from(command_types()).flatmap(command_object)


# --- the adapter ---------------------------------------------------------------------------------


def _inline(node: Any, defs: Json) -> Any:
    """`node` with every local `$ref` replaced by what it names (our schemas have no cycles)."""
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        prefix = "#/$defs/"
        if not ref.startswith(prefix):
            raise ValueError(f"unsupported $ref {ref!r}")
        target = dict(defs[ref.removeprefix(prefix)])
        return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}


def _strategy(schema: Json) -> st.SearchStrategy[Any]:
    if "anyOf" in schema:
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", *_ANNOTATIONS)}
        return st.one_of([_strategy({**rest, **option}) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    drawn: st.SearchStrategy[Any]
    if kind == "object" or (kind is None and "properties" in schema):
        drawn = _object(schema)
    elif kind == "array":
        drawn = _array(schema)
    else:
        leaf = {k: v for k, v in schema.items() if k not in _ANNOTATIONS}
        drawn = from_schema(leaf)
    repair = _REPAIRS.get(schema.get("title", ""))
    return drawn.flatmap(repair) if repair else drawn


def _object(schema: Json) -> st.SearchStrategy[Json]:
    properties: Json = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fixed = {k: _strategy(v) for k, v in properties.items() if k in required}
    optional = {k: _strategy(v) for k, v in properties.items() if k not in required}
    base = st.fixed_dictionaries(fixed, optional=optional)
    extra_schema = schema.get("additionalProperties", True)
    if extra_schema is False:
        return base
    # `maxProperties` bounds the whole object: extras only fill what the named keys leave.
    room = schema.get("maxProperties", len(properties) + MAX_EXTRA_KEYS) - len(properties)
    room = max(0, min(MAX_EXTRA_KEYS, room))
    if room == 0:
        return base
    name_schema = {"type": "string", **schema.get("propertyNames", {})}
    names = from_schema(name_schema).filter(lambda n: n not in properties)
    values = _strategy(extra_schema) if isinstance(extra_schema, dict) else _any_json()
    extras = st.dictionaries(names, values, max_size=room)
    return st.tuples(base, extras).map(lambda pair: {**pair[1], **pair[0]})


def _array(schema: Json) -> st.SearchStrategy[list[Any]]:
    items = schema.get("items", {})
    low = schema.get("minItems", 0)
    high = min(schema.get("maxItems", MAX_ITEMS), max(low, MAX_ITEMS))
    return st.lists(_strategy(items) if items else _any_json(), min_size=low, max_size=high)


def _any_json() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=4,
    )


# --- what the schema does not say ----------------------------------------------------------------


def _module_ref(value: Json) -> st.SearchStrategy[Json]:
    """Exactly one of sha256 / inline, and an inline module is base64 (of a few bytes here)."""
    sha = value.get("sha256")
    rest = {k: v for k, v in value.items() if k not in ("sha256", "inline")}
    by_sha = (
        st.just({**rest, "sha256": sha})
        if sha is not None
        else st.text("0123456789abcdef", min_size=64, max_size=64).map(
            lambda s: {**rest, "sha256": s}
        )
    )
    inline = st.binary(max_size=48).map(lambda b: {**rest, "inline": base64.b64encode(b).decode()})
    return st.one_of(by_sha, inline)


def _agent_spec(value: Json) -> st.SearchStrategy[Json]:
    spec = dict(value)
    for key in ("topics", "task_queues"):
        if key in spec:
            spec[key] = list(dict.fromkeys(spec[key]))
    named = (spec.get("placement") or {}).get("priority_class")
    if named is not None and spec.get("priority", 0) not in (0, PRIORITY_CLASSES[named]):
        spec["priority"] = PRIORITY_CLASSES[named]
    return st.just(spec)


def _autoscale_policy(value: Json) -> st.SearchStrategy[Json]:
    low, high = value.get("min_replicas", 1), value.get("max_replicas", 10)
    if low > high:
        value = {**value, "min_replicas": high, "max_replicas": low}
    return st.just(value)


_REPAIRS: dict[str, Callable[[Any], st.SearchStrategy[Json]]] = {
    "ModuleRef": _module_ref,
    "AgentSpec": _agent_spec,
    "AutoscalePolicy": _autoscale_policy,
}
