"""The core-module ABI as data: what an agent imports and exports, and what the host returns.

runtime/ABI.md is the prose version of this module. Both the module validator and the host-function
linker read these tables, so a signature lives in exactly one place and the validator cannot
accept what the linker would then refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from schemas import names

#: Bumped on any incompatible change; part of the compiled-module cache key.
ABI_VERSION: Final = 1

#: Namespace of every host function. Anything else a module imports is refused.
IMPORT_MODULE: Final = "swarm"

#: Import namespaces of WASI preview 1; named so that the refusal can say what they are.
WASI_MODULES: Final = frozenset({"wasi_snapshot_preview1", "wasi_unstable"})

WasmType = Literal["i32", "i64"]


@dataclass(frozen=True, slots=True)
class Signature:
    params: tuple[WasmType, ...]
    results: tuple[WasmType, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


_I32: Final[WasmType] = "i32"
_I64: Final[WasmType] = "i64"

#: Host functions under `IMPORT_MODULE`, by name.
IMPORTS: Final[dict[str, Signature]] = {
    "reply": Signature((_I32, _I32), ()),
    "send": Signature((_I32, _I32, _I32, _I32), (_I32,)),
    "emit": Signature((_I32, _I32, _I32, _I32), (_I32,)),
    "log": Signature((_I32, _I32, _I32), ()),
    "kv_get": Signature((_I32, _I32, _I32, _I32), (_I32,)),
    "kv_put": Signature((_I32, _I32, _I32, _I32), (_I32,)),
    "kv_delete": Signature((_I32, _I32), (_I32,)),
    "now_ms": Signature((), (_I64,)),
    "random": Signature((_I32, _I32), ()),
    "vector_store": Signature((_I32, _I32), (_I32,)),
    "vector_search": Signature((_I32, _I32, _I32, _I32), (_I32,)),
    "http_request": Signature((_I32, _I32, _I32, _I32), (_I32,)),
    "http_response": Signature((_I32, _I32), (_I32,)),
}

EXPORT_MEMORY: Final = "memory"
EXPORT_ALLOC: Final = "swarm_alloc"
EXPORT_HANDLE: Final = "swarm_handle"
EXPORT_INIT: Final = "swarm_init"

REQUIRED_FUNCTIONS: Final[dict[str, Signature]] = {
    EXPORT_ALLOC: Signature((_I32,), (_I32,)),
    EXPORT_HANDLE: Signature((_I32, _I32), (_I32,)),
}
OPTIONAL_FUNCTIONS: Final[dict[str, Signature]] = {
    EXPORT_INIT: Signature((), (_I32,)),
}


class ErrorCode(IntEnum):
    """What an i32-returning host function returns when it did not do what was asked.

    Errors the guest can handle are return values; a guest bug the host cannot answer honestly
    (a pointer outside memory, a reply that does not fit the budget) is a trap instead.
    """

    OK = 0
    #: kv_get, kv_delete: the key has no value.
    NOT_FOUND = -1
    #: A per-call budget (count or bytes) is used up, one argument is larger than allowed, or
    #: (kv_put) the write would take the agent's state past its caps.
    LIMIT = -2
    #: Malformed argument: not UTF-8, a bad destination or event type, JSON of the wrong shape.
    INVALID = -3
    #: The host does not offer this service here, or refused it.
    UNAVAILABLE = -4
    #: Not allowed: the spec does not grant the capability, or the pod's policy forbids the
    #: target (http_request to a non-public address).
    DENIED = -5


class LogLevel(IntEnum):
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3

    @classmethod
    def clamp(cls, raw: int) -> LogLevel:
        # A wrong level is not worth killing an agent for; the line is kept at the nearest level.
        return cls(min(max(raw, cls.DEBUG), cls.ERROR))


DestinationKind = Literal["agent", "topic"]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where `send` delivers: `agent:<name>` (one agent) or `topic:<name>` (its subscribers)."""

    kind: DestinationKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Destination | None:
        """None when `text` is not a destination; names become subject tokens, so they must be."""
        kind, sep, name = text.partition(":")
        if not sep or not names.is_token(name):
            return None
        if kind == "agent":
            return cls("agent", name)
        if kind == "topic":
            return cls("topic", name)
        return None


#: Event types an agent may emit: dot-separated tokens, e.g. `order.placed`.
EVENT_TYPE_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$"
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)


def is_event_type(text: str) -> bool:
    return bool(_EVENT_TYPE.fullmatch(text))
