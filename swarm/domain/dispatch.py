"""Handlers by the payload type they take: how `decide`, `evolve` and the projections of the log
find the function for a command or an event; and how a projection folds each event once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

H = TypeVar("H", bound=Callable[..., Any])


class HandlerTable(dict[type[Any], H]):
    """A dict from payload type to its handler, filled by decorating each handler with
    `@table.on(PayloadType)`; a type registered again is handled by the later function."""

    def on(self, payload_type: type[Any]) -> Callable[[H], H]:
        def register(fn: H) -> H:
            self[payload_type] = fn
            return fn

        return register


class Folded(Protocol):
    """A projection of the log: the last stream sequence it folded."""

    applied_seq: int


def unseen(view: Folded, seq: int) -> bool:
    """Whether the event stored at `seq` is new to `view`, which then counts it as folded.

    The projections of the log (the pods' view, the scheduler's, the autoscaler's) fold each
    event once, in stream order, as the Hive's `evolve` does: a redelivered one, at or below
    `applied_seq`, is skipped.
    """
    if seq <= view.applied_seq:
        return False
    view.applied_seq = seq
    return True
