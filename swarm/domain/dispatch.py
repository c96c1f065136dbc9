"""Handlers by the payload type they take: how `decide`, `evolve` and the projections of the log
find the function for a command or an event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

H = TypeVar("H", bound=Callable[..., Any])


class HandlerTable(dict[type[Any], H]):
    """A dict from payload type to its handler, filled by decorating each handler with
    `@table.on(PayloadType)`; a type registered again is handled by the later function."""

    def on(self, payload_type: type[Any]) -> Callable[[H], H]:
        def register(fn: H) -> H:
            self[payload_type] = fn
            return fn

        return register
