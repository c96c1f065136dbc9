"""How Swarm's processes log: structlog, at the level `SWARM_LOG_LEVEL` names.

Services call `configure_logging(settings)` once at start. Their lines go to stderr (the
supervisor of `swarm up` writes each service's to `<data dir>/logs/<service>.log`), as JSON
objects when `SWARM_LOG_FORMAT=json` (for log shippers), else as readable key=value lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]


def configure_logging(level: str, fmt: LogFormat = "console") -> None:
    """Route structlog (and the standard library's loggers) at `level` and above to stderr."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    logging.basicConfig(level=number, stream=sys.stderr, format="%(name)s: %(message)s")
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


__all__ = ["LogFormat", "configure_logging"]
