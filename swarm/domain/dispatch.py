"""Handlers by the type of payload they apply to: every fold and decide of the log dispatches on
`type(envelope.data)` through one of these tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

H = TypeVar("H")


class Handlers(dict[type[Any], H]):
    """A handler per payload type, registered by decorating it with `on(payload_type)`."""

    def on(self, payload_type: type[Any]) -> Callable[[H], H]:
        def register(fn: H) -> H:
            self[payload_type] = fn
            return fn

        return register
