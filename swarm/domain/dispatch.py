"""Tables of handlers by the type of message they handle, filled by a decorator.

A fold or a decision that dispatches on a message's type keeps a table from the type to the
function that handles it; `filed_in(table)` is the decorator that files each handler there:

    _HANDLERS: dict[type[Any], Handler] = {}
    _on = filed_in(_HANDLERS)

    @_on(events.AgentDeployed)
    def _deployed(...) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

H = TypeVar("H", bound=Callable[..., Any])


def filed_in(table: dict[type[Any], H]) -> Callable[[type[Any]], Callable[[H], H]]:
    """A decorator factory: `@on(message_type)` files the function under that type in `table`
    and returns it unchanged."""

    def on(message_type: type[Any]) -> Callable[[H], H]:
        def register(fn: H) -> H:
            table[message_type] = fn
            return fn

        return register

    return on
