"""How users write times (`--since 10m`, `?since=2h`) and JSON (`--data`, an export file), and
how untrusted text is shown safely."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from swarm.client.errors import INVALID, ClientError

__all__ = ["parse_json", "parse_time", "printable"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """RFC 3339 (`2024-05-01T12:00:00Z`; no offset means UTC), `now`, or relative: `10m`, `2h`."""
    now = now or datetime.now(UTC)
    text = value.strip()
    if text.lower() == "now":
        return now
    match = _RELATIVE.fullmatch(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        try:
            return now - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise _unreadable(value) from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _unreadable(value) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _unreadable(value: str) -> ClientError:
    return ClientError(
        f"cannot read time {value!r}",
        code=INVALID,
        hint="use RFC 3339 (2024-05-01T12:00:00Z) or an age such as 30s, 10m, 2h, 1d, 1w",
    )


def parse_json(text: str, what: str) -> Any:
    """`text` read as JSON; an INVALID `ClientError` saying `what` ("--data", "the file") is
    not JSON otherwise."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClientError(f"{what} is not JSON: {exc}", code=INVALID) from None


def printable(text: str) -> str:
    """`text` safe for one table row: control characters (a NUL, a newline) shown as `·`."""
    return "".join(ch if ch.isprintable() else "·" for ch in text)
