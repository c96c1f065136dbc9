"""Which payload model belongs to which CloudEvents `type`, and how old versions are upcast.

Decoding is strict: unknown fields, wrong types and unknown event types are errors, reported
field by field so the sender can fix exactly what was wrong. Data written by an older schema
version is upcast step by step (v1 -> v2 -> ...) before validation; the log itself is never
rewritten.
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pydantic

from schemas import names
from schemas.envelope import Envelope, Payload

Kind = Literal["command", "event"]
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
PT = TypeVar("PT", bound=type[Payload])


@dataclass(frozen=True, slots=True)
class FieldError:
    """One thing wrong with one field, addressed by a dotted path (`data.replicas`)."""

    loc: str
    msg: str
    type: str

    def as_dict(self) -> dict[str, str]:
        return {"loc": self.loc, "msg": self.msg, "type": self.type}


class DecodeError(ValueError):
    """Raised when bytes are not a valid Swarm command or event.

    `received` holds whatever envelope attributes could be read (id, type, source, ...), so an
    answer can still be addressed to the sender of a half-broken message.
    """

    def __init__(
        self,
        reason: str,
        errors: Iterable[FieldError] = (),
        received: dict[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.errors = tuple(errors)
        self.received = received or {}
        detail = "; ".join(f"{e.loc}: {e.msg}" for e in self.errors)
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    type: str
    model: builtins.type[Payload]  # `builtins.`: the field above shadows `type` here
    aggregate: str | None = None
    event: str | None = None


@dataclass(slots=True)
class Registry:
    """Type name -> payload model, plus upcasters keyed by (type, from_version)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)

    # -- registration -----------------------------------------------------------------------------

    def command(self, domain: str, verb: str, *, version: int = 1) -> Callable[[PT], PT]:
        """Class decorator: register a command payload for `swarm.cmd.<domain>.<verb>`."""

        def register(model: PT) -> PT:
            type_ = names.command_subject(domain, verb)
            self._add(Entry("command", type_, model), version)
            return model

        return register

    def event(self, aggregate: str, event: str, *, version: int = 1) -> Callable[[PT], PT]:
        """Class decorator: register an event payload of type `swarm.<aggregate>.<event>`."""

        def register(model: PT) -> PT:
            type_ = names.event_type(aggregate, event)
            self._add(Entry("event", type_, model, aggregate, event), version)
            return model

        return register

    def upcaster(self, type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function turning `data` of `from_version` into `from_version + 1`."""

        def register(fn: Upcaster) -> Upcaster:
            key = (type_, from_version)
            if key in self.upcasters:
                raise ValueError(f"upcaster for {type_} v{from_version} registered twice")
            self.upcasters[key] = fn
            return fn

        return register

    def _add(self, entry: Entry, version: int) -> None:
        if entry.type in self.entries:
            raise ValueError(f"{entry.type} registered twice")
        entry.model.TYPE = entry.type
        entry.model.VERSION = version
        self.entries[entry.type] = entry

    # -- lookup -----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self.entries.values(), key=lambda e: (e.kind, e.type)))

    def get(self, type_: str) -> Entry | None:
        return self.entries.get(type_)

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, raw: bytes | str, *, kind: Kind | None = None) -> Envelope[Any]:
        """Validate `raw` as a CloudEvent whose payload is a registered type.

        Raises `DecodeError` with field-level errors; never anything else for bad input.
        """
        fast = self._decode_fast(raw, kind)
        if fast is not None:
            return fast
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"body is not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise DecodeError(f"body must be a JSON object, got {type(obj).__name__}")
        received = {
            k: obj[k]
            for k in ("id", "type", "source", "correlationid", "identity")
            if isinstance(obj.get(k), str)
        }
        type_ = obj.get("type")
        if not isinstance(type_, str):
            raise DecodeError(
                "missing CloudEvents attribute 'type'",
                [FieldError("type", "Field required", "missing")],
                received,
            )
        entry = self.entries.get(type_)
        if entry is None or (kind is not None and entry.kind != kind):
            what = kind or "command or event"
            raise DecodeError(
                f"unknown {what} type {type_!r}",
                [FieldError("type", f"not a known {what} type", "unknown_type")],
                received,
            )
        schema_version = _version_of(obj.get("dataschema"), entry)
        if isinstance(schema_version, FieldError):
            raise DecodeError("unsupported schema version", [schema_version], received)
        if schema_version < entry.model.VERSION:
            obj = self._upcast(obj, entry, schema_version, received)
            raw = json.dumps(obj)
        try:
            envelope: Envelope[Any] = _envelope_model(entry.model).model_validate_json(raw)
        except pydantic.ValidationError as exc:
            errors = [
                FieldError(".".join(str(p) for p in e["loc"]) or "(root)", e["msg"], e["type"])
                for e in exc.errors(include_url=False)
            ]
            raise DecodeError(f"invalid {entry.type}", errors, received) from None
        return envelope

    def _decode_fast(self, raw: bytes | str, kind: Kind | None) -> Envelope[Any] | None:
        """One validation pass for the common case: a current-version message whose `type` sits
        where Swarm writes it. Anything unusual (other layout, old version, invalid) returns None
        and takes the full path, which also produces the field-level errors."""
        data = raw.encode() if isinstance(raw, str) else raw
        start = data.find(b'"type":"')
        if start < 0:
            return None
        end = data.find(b'"', start + 8)
        entry = self.entries.get(data[start + 8 : end].decode("utf-8", "replace"))
        if entry is None or (kind is not None and entry.kind != kind):
            return None
        try:
            envelope: Envelope[Any] = _envelope_model(entry.model).model_validate_json(data)
        except pydantic.ValidationError:
            return None
        expected = names.dataschema(entry.type, entry.model.VERSION)
        if envelope.type != entry.type or envelope.dataschema not in (None, expected):
            return None
        return envelope

    def _upcast(
        self, obj: dict[str, Any], entry: Entry, version: int, received: dict[str, Any]
    ) -> dict[str, Any]:
        data = obj.get("data")
        if not isinstance(data, dict):
            raise DecodeError(
                "data must be an object",
                [FieldError("data", "not an object", "dict_type")],
                received,
            )
        for step in range(version, entry.model.VERSION):
            fn = self.upcasters.get((entry.type, step))
            if fn is None:
                raise DecodeError(
                    f"no upcaster from {entry.type} v{step}",
                    [FieldError("dataschema", f"v{step} cannot be read", "no_upcaster")],
                    received,
                )
            data = fn(dict(data))
        return {
            **obj,
            "data": data,
            "dataschema": names.dataschema(entry.type, entry.model.VERSION),
        }


def _version_of(dataschema: object, entry: Entry) -> int | FieldError:
    """The schema version named by `dataschema`; absent means the current version."""
    if dataschema is None:
        return entry.model.VERSION
    prefix = f"{names.DATASCHEMA_PREFIX}/{entry.type}/v"
    if not isinstance(dataschema, str) or not dataschema.startswith(prefix):
        return FieldError("dataschema", f"expected {prefix}<n>", "dataschema")
    tail = dataschema[len(prefix) :]
    if not tail.isdigit() or not 1 <= int(tail) <= entry.model.VERSION:
        return FieldError(
            "dataschema", f"version must be 1..{entry.model.VERSION}, got {tail!r}", "dataschema"
        )
    return int(tail)


#: The one registry every Swarm component decodes with.
REGISTRY = Registry()


@functools.cache
def _envelope_model(model: type[Payload]) -> type[Envelope[Any]]:
    """`Envelope[model]`, kept for good: pydantic caches parametrized generics only weakly, so a
    decoder that drops every envelope it decoded (folding a long log) had the class rebuilt,
    at milliseconds each, hundreds of times per 10k events."""
    return Envelope[model]  # type: ignore[valid-type]
