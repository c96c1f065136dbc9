"""How Swarm's processes log: structlog, at the level `SWARM_LOG_LEVEL` names.

Services call `configure_logging(settings)` once at start. Their lines go to stderr (the
supervisor of `swarm up` writes each service's to `<data dir>/logs/<service>.log`). By default
(`SWARM_LOG_FORMAT=auto`) a service whose stderr is not a terminal (under the supervisor, in a
container, under systemd) writes one JSON object per line, for log shippers and `jq`; on a
terminal it writes readable key=value lines. `json` and `console` choose either way. Lines of the
standard library's loggers (uvicorn, nats-py, psycopg) are rendered the same way, so a JSON log
holds nothing else.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "console", "json"]


def renders_json(fmt: LogFormat) -> bool:
    """Whether `fmt` means JSON lines here: `auto` does when stderr is not a terminal."""
    if fmt == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        return not (callable(isatty) and isatty())
    return fmt == "json"


def configure_logging(level: str, fmt: LogFormat = "auto") -> None:
    """Route structlog and the standard library's loggers at `level` and above to stderr."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if renders_json(fmt)
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    root = logging.getLogger()
    # Like `logging.basicConfig`: a process that set up logging itself (a test runner, an
    # embedding program) keeps its handlers.
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            )
        )
        root.addHandler(handler)
        root.setLevel(number)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


__all__ = ["LogFormat", "configure_logging", "renders_json"]
