"""The CloudEvents 1.0 envelope (structured JSON mode) around every command and event.

One frozen envelope, many payloads: payload models never repeat envelope fields. The envelope is
generic in its payload so that decoding validates envelope and payload in one pass over the bytes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from ulid import ULID

from schemas import names

_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")

#: Foreign extension attributes one event may carry, the length of a string one, and the range
#: of an integer one (CloudEvents' Integer is 32-bit).
MAX_EXTENSIONS = 16
MAX_EXTENSION_CHARS = 2048
_INT32 = (-(2**31), 2**31 - 1)
#: Length of the optional string attributes (ids, `identity`, `subject`, `dataschema`).
MAX_ATTRIBUTE_CHARS = 256

#: Attributes defined by the CloudEvents spec or by Swarm; anything else is a foreign extension.
_KNOWN_ATTRIBUTES = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "dataschema",
        "subject",
        "data",
        "correlationid",
        "causationid",
        "identity",
    }
)


_OPTIONAL_ATTRIBUTES = ("dataschema", "subject", "correlationid", "causationid", "identity")


def new_id() -> str:
    """A new sortable, NATS-token-safe identifier (ULID)."""
    return str(ULID())


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("time must carry a UTC offset (RFC 3339)")
    return value


Token = Annotated[str, Field(pattern=names.TOKEN_PATTERN)]
AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class Payload(BaseModel):
    """Base of every command and event payload: strict, closed, immutable.

    `TYPE` and `VERSION` are set by the registry decorators; a payload whose shape changes gets a
    new `VERSION` and an upcaster from the previous one (see `schemas.registry`).
    """

    # allow_inf_nan=False: JSON's non-standard Infinity/NaN (which pydantic's parser reads) and
    # literals like 1e400 (which parse to inf) are refused like any out-of-range number; an inf
    # that got through would be written as null and the event would not decode again.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


P = TypeVar("P", bound=Payload)


class Envelope(BaseModel, Generic[P]):
    """A CloudEvents 1.0 event whose `data` is a Swarm payload.

    Foreign extension attributes (e.g. `traceparent`) are kept, provided their names follow the
    CloudEvents naming rule, so a relay never strips what another tool put there.
    """

    model_config = ConfigDict(
        strict=True,
        extra="allow",
        frozen=True,
        allow_inf_nan=False,
        # What `_check_extensions` enforces on foreign attributes, for other languages' clients.
        json_schema_extra={
            "maxProperties": len(_KNOWN_ATTRIBUTES) + MAX_EXTENSIONS,
            "propertyNames": {"pattern": _EXTENSION_NAME.pattern},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_EXTENSION_CHARS},
                    {"type": "integer", "minimum": _INT32[0], "maximum": _INT32[1]},
                    {"type": "boolean"},
                ]
            },
        },
    )

    specversion: Literal["1.0"] = names.CLOUDEVENTS_SPECVERSION
    id: Token = Field(default_factory=new_id)
    source: str = Field(min_length=1, max_length=512)
    type: str = Field(min_length=1, max_length=256)
    time: AwareDatetime = Field(default_factory=utcnow)
    datacontenttype: Literal["application/json"] = names.CONTENT_TYPE_JSON
    dataschema: str | None = Field(default=None, max_length=MAX_ATTRIBUTE_CHARS)
    subject: str | None = Field(default=None, max_length=MAX_ATTRIBUTE_CHARS)
    correlationid: str | None = Field(default=None, max_length=MAX_ATTRIBUTE_CHARS)
    causationid: str | None = Field(default=None, max_length=MAX_ATTRIBUTE_CHARS)
    identity: str | None = Field(default=None, max_length=MAX_ATTRIBUTE_CHARS)
    data: P

    @model_validator(mode="after")
    def _check_extensions(self) -> Envelope[P]:
        if not self.model_extra:
            return self
        if len(self.model_extra) > MAX_EXTENSIONS:
            raise ValueError(
                f"{len(self.model_extra)} extension attributes; at most {MAX_EXTENSIONS} are kept"
            )
        for name, value in self.model_extra.items():
            if not _EXTENSION_NAME.fullmatch(name):
                raise ValueError(
                    f"extension attribute {name[:40]!r} must be 1-20 lowercase letters or digits"
                )
            if not isinstance(value, str | int | bool):
                raise ValueError(f"extension attribute {name!r} must be a string, integer or bool")
            if isinstance(value, str) and len(value) > MAX_EXTENSION_CHARS:
                raise ValueError(
                    f"extension attribute {name!r} is longer than {MAX_EXTENSION_CHARS} characters"
                )
            if isinstance(value, int) and not _INT32[0] <= value <= _INT32[1]:
                raise ValueError(f"extension attribute {name!r} must be a 32-bit integer")
        return self

    def to_json(self) -> bytes:
        # Unset optional *attributes* are left out (CloudEvents has no nulls for them), but the
        # payload is written whole: a payload field that is None (a crash with no restart time)
        # is data, and dropping it would make the event fail its own schema on the way back.
        # The serializer's bytes are used directly: model_dump_json() decodes them to str, and
        # encoding that back copies the body twice more (~0.8 us of ~3 us for a 1 KB event).
        unset = {name for name in _OPTIONAL_ATTRIBUTES if getattr(self, name) is None}
        return self.__pydantic_serializer__.to_json(self, exclude=unset or None)

    @property
    def extensions(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RawEnvelope(BaseModel):
    """The envelope alone, payload unchecked: what the timeline and relays need to read any event,
    including ones whose type this version of Swarm does not know."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    specversion: str
    id: str
    source: str
    type: str
    time: datetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    subject: str | None = None
    correlationid: str | None = None
    causationid: str | None = None
    identity: str | None = None
    data: dict[str, Any] | None = None

    KNOWN: ClassVar[frozenset[str]] = _KNOWN_ATTRIBUTES
