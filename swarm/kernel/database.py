"""PostgreSQL URLs as the project's two drivers spell them.

SQLAlchemy (the migrations) takes `postgresql+psycopg://…`; libpq, and psycopg's own
`connect` (pod memory, the Observer's behaviour vectors), takes `postgresql://…`. Settings may
hold either; each reader turns it into its own.
"""

from __future__ import annotations

import re

_DRIVER = re.compile(r"^postgresql\+\w+://")


def psycopg_url(url: str) -> str:
    """`postgresql+psycopg://…` (SQLAlchemy's spelling) as libpq wants it."""
    return _DRIVER.sub("postgresql://", url)


__all__ = ["psycopg_url"]
