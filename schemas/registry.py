"""Which payload model belongs to which CloudEvents `type`, and how old versions are upcast.

Decoding is strict: unknown fields, wrong types and unknown event types are errors, reported
field by field so the sender can fix exactly what was wrong. Data written by an older schema
version is upcast step by step (v1 -> v2 -> ...) before validation; the log itself is never
rewritten.

Any input, however hostile, ends as a decoded envelope or a `DecodeError` whose reason, field
errors and `received` attributes are bounded in number and length (they are echoed in the
rejection the Hive writes): bytes that are not UTF-8, lone surrogates, nesting deeper than
`MAX_DEPTH`, numbers beyond any bound, and whatever the parser or an upcaster chokes on.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import json
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Literal, TypeVar

import pydantic
import pydantic_core

from schemas import names
from schemas.envelope import Envelope, Payload
from schemas.fields import FieldError as FieldError  # where it was first defined

Kind = Literal["command", "event"]
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
PT = TypeVar("PT", bound=type[Payload])

#: Nesting of JSON arrays and objects a message may have; a valid Swarm message has fewer than
#: ten levels. Deeper input is refused before it is parsed.
MAX_DEPTH = 64
#: Field errors one DecodeError lists (one more says how many were left out), and the length
#: of each location and message: a sender's 100,000 unknown keys get a short answer.
MAX_DECODE_ERRORS = 32
MAX_LOC_CHARS = 256
MAX_MSG_CHARS = 512
MAX_DECODE_REASON_CHARS = 1024
#: Envelope attributes of an undecodable message kept in `received`, each cut to this length.
RECEIVED_ATTRIBUTES = ("id", "type", "source", "correlationid", "identity")
MAX_RECEIVED_CHARS = 256


class DecodeError(ValueError):
    """Raised when bytes are not a valid Swarm command or event.

    `received` holds whatever envelope attributes could be read (id, type, source, ...), so an
    answer can still be addressed to the sender of a half-broken message. Everything in it is
    bounded and encodable: the reason (`MAX_DECODE_REASON_CHARS`), at most `MAX_DECODE_ERRORS`
    + 1 field errors with short locations and messages, and `received` values that are strings
    of at most `MAX_RECEIVED_CHARS` (a value cut short ends in "…", so a cut id is never a
    valid one).
    """

    def __init__(
        self,
        reason: str,
        errors: Iterable[FieldError] = (),
        received: dict[str, Any] | None = None,
    ) -> None:
        self.reason = _text(reason, MAX_DECODE_REASON_CHARS)
        self.errors = _bounded_errors(errors)
        self.received = {
            k: _text(v, MAX_RECEIVED_CHARS)
            for k, v in (received or {}).items()
            if k in RECEIVED_ATTRIBUTES and isinstance(v, str)
        }
        detail = "; ".join(f"{e.loc}: {e.msg}" for e in self.errors)
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


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
    #: Modules that register into this registry, imported at its first lookup: importing
    #: `schemas.names` alone (what a CLI verb needs) then costs no model building, and the
    #: registry is still whole when something decodes.
    modules: tuple[str, ...] = ()
    _loaded: bool = field(default=False, repr=False)

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

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.modules:
                importlib.import_module(module)

    def __iter__(self) -> Iterator[Entry]:
        self._load()
        return iter(sorted(self.entries.values(), key=lambda e: (e.kind, e.type)))

    def get(self, type_: str) -> Entry | None:
        self._load()
        return self.entries.get(type_)

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, raw: bytes | str, *, kind: Kind | None = None) -> Envelope[Any]:
        """Validate `raw` as a CloudEvent whose payload is a registered type.

        Raises `DecodeError` with field-level errors; never anything else for bad input.
        """
        self._load()
        data = _utf8(raw)
        fast = self._decode_fast(data, kind)
        if fast is not None:
            return fast
        return self._decode_full(data, kind)

    def _decode_full(self, data: bytes, kind: Kind | None) -> Envelope[Any]:
        """The careful path: every check in turn, each failure with its own reason and errors."""
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            msg = f"byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8"
            raise DecodeError(
                f"body is not JSON: {msg}", [FieldError("(root)", msg, "utf8_invalid")]
            ) from None
        if _nested_deeper_than(data, MAX_DEPTH):
            msg = f"JSON arrays and objects nest deeper than {MAX_DEPTH} levels"
            raise DecodeError(f"body is too deep: {msg}", [FieldError("(root)", msg, "too_deep")])
        try:
            # pydantic's own parser, as on the fast path: it refuses lone surrogates (which no
            # answer could quote) and integers of more than 4300 digits, and limits nesting.
            obj = pydantic_core.from_json(data)
        except ValueError as exc:
            raise DecodeError(
                f"body is not JSON ({exc})", [FieldError("(root)", str(exc), "json_invalid")]
            ) from None
        except (RecursionError, MemoryError) as exc:
            raise _too_big(exc) from None
        if not isinstance(obj, dict):
            raise DecodeError(f"body must be a JSON object, got {type(obj).__name__}")
        received = {k: obj[k] for k in RECEIVED_ATTRIBUTES if isinstance(obj.get(k), str)}
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
                f"unknown {what} type {_quoted(type_)}",
                [FieldError("type", f"not a known {what} type", "unknown_type")],
                received,
            )
        schema_version = _version_of(obj.get("dataschema"), entry)
        if isinstance(schema_version, FieldError):
            raise DecodeError("unsupported schema version", [schema_version], received)
        raw: bytes | str = data
        if schema_version < entry.model.VERSION:
            obj = self._upcast(obj, entry, schema_version, received)
            raw = json.dumps(obj)
        # The model makes up an id when none is given (for envelopes built in code); a message
        # without one is refused, as CloudEvents requires: a made-up id differs on every read,
        # so the sender could not find the outcome, nor a redelivery match the first answer.
        no_id = [] if "id" in obj else [FieldError("id", "Field required", "missing")]
        try:
            envelope: Envelope[Any] = _envelope_model(entry.model).model_validate_json(raw)
        except pydantic.ValidationError as exc:
            errors = no_id + [
                FieldError(".".join(str(p) for p in e["loc"]) or "(root)", e["msg"], e["type"])
                for e in exc.errors(include_url=False)
            ]
            raise DecodeError(f"invalid {entry.type}", errors, received) from None
        except (RecursionError, MemoryError) as exc:
            raise _too_big(exc, received) from None
        if no_id:
            raise DecodeError(f"invalid {entry.type}", no_id, received)
        return envelope

    def _decode_fast(self, data: bytes, kind: Kind | None) -> Envelope[Any] | None:
        """One validation pass for the common case: a current-version message whose `type` sits
        where Swarm writes it. Anything unusual (other layout, old version, invalid) returns None
        and takes the full path, which also produces the field-level errors.

        No depth check here: a message that validates is as shallow as the models, and pydantic's
        parser refuses deep input by itself (the full path then says why)."""
        start = data.find(b'"type":"')
        if start < 0:
            return None
        end = data.find(b'"', start + 8)
        entry = self.entries.get(data[start + 8 : end].decode("utf-8", "replace"))
        if entry is None or (kind is not None and entry.kind != kind):
            return None
        try:
            envelope: Envelope[Any] = _envelope_model(entry.model).model_validate_json(data)
        except (pydantic.ValidationError, RecursionError, MemoryError):
            return None
        expected = names.dataschema(entry.type, entry.model.VERSION)
        if envelope.type != entry.type or envelope.dataschema not in (None, expected):
            return None
        if "id" not in envelope.model_fields_set:
            return None  # the full path says it is missing
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
            try:
                data = fn(dict(data))
            except Exception as exc:  # an upcaster reads old data as it should be; bad input
                # (a missing or mistyped field) is the sender's problem, not a decoder crash.
                msg = f"v{step} data could not be upcast ({type(exc).__name__}: {exc})"
                raise DecodeError(
                    f"invalid {entry.type}", [FieldError("data", msg, "upcast_failed")], received
                ) from None
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
    if not (tail.isascii() and tail.isdigit() and len(tail) <= 9) or not (
        1 <= int(tail) <= entry.model.VERSION
    ):
        return FieldError(
            "dataschema",
            f"version must be 1..{entry.model.VERSION}, got {_quoted(tail)}",
            "dataschema",
        )
    return int(tail)


# --- bounding what a decode error says -----------------------------------------------------------


def _text(value: str, limit: int) -> str:
    """`value` cut to `limit` characters (ending in "…" when cut), lone surrogates escaped: it is
    quoted in an event, which must encode as UTF-8."""
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return value


def _quoted(value: str, limit: int = 64) -> str:
    """A sender's value in a reason: repr of at most `limit` characters."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}…"


def _bounded_errors(errors: Iterable[FieldError]) -> tuple[FieldError, ...]:
    kept: list[FieldError] = []
    left_out = 0
    for error in errors:
        if len(kept) < MAX_DECODE_ERRORS:
            kept.append(
                FieldError(
                    _text(error.loc, MAX_LOC_CHARS),
                    _text(error.msg, MAX_MSG_CHARS),
                    _text(error.type, 64),
                )
            )
        else:
            left_out += 1
    if left_out:
        kept.append(FieldError("(root)", f"{left_out} more errors not listed", "too_many_errors"))
    return tuple(kept)


def _too_big(exc: BaseException, received: dict[str, Any] | None = None) -> DecodeError:
    msg = f"the input exhausted the decoder ({type(exc).__name__})"
    return DecodeError(
        f"body is too big or deep: {msg}", [FieldError("(root)", msg, "too_big")], received
    )


def _utf8(raw: bytes | str) -> bytes:
    """The bytes of `raw`; a str must be encodable (a lone surrogate is not text)."""
    if not isinstance(raw, str):
        return bytes(raw)
    try:
        return raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"character {raw[exc.start]!r} at offset {exc.start} is not UTF-8 text"
        raise DecodeError(
            f"body is not JSON: {msg}", [FieldError("(root)", msg, "utf8_invalid")]
        ) from None


# --- nesting depth, without parsing --------------------------------------------------------------

#: A JSON string, or an unterminated one up to the end (possessive, so that scanning stays
#: linear whatever quotes and backslashes the input holds).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Opening brackets become +1, closing ones -1 (as signed bytes).
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_CHUNK = 64 * 1024


def _nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether JSON arrays and objects in `data` nest deeper than `limit`, brackets inside strings
    not counted. About 30 ms per MB of brackets; free for input with few of them."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    steps = _STRING.sub(b"", data).translate(_STEPS, _NOT_BRACKETS)
    if steps.count(1) <= limit:
        return False
    depth = 0
    for start in range(0, len(steps), _CHUNK):
        levels = list(accumulate(array("b", steps[start : start + _CHUNK]), initial=depth))
        if max(levels) > limit:
            return True
        depth = levels[-1]
    return False


#: The one registry every Swarm component decodes with.
REGISTRY = Registry(
    modules=tuple(
        f"schemas.{m}"
        for m in (
            "commands",
            "events",
            "healing",
            "machine",
            "market",
            "observer",
            "outcomes",
            "webhooks",
        )
    )
)


@functools.cache
def _envelope_model(model: type[Payload]) -> type[Envelope[Any]]:
    """`Envelope[model]`, kept for good: pydantic caches parametrized generics only weakly, so a
    decoder that drops every envelope it decoded (folding a long log) had the class rebuilt,
    at milliseconds each, hundreds of times per 10k events."""
    return Envelope[model]  # type: ignore[valid-type]
