"""How Swarm's processes log: structlog, at the level `SWARM_LOG_LEVEL` names.

Services call `configure_logging(settings)` once at start. Their lines go to stderr (the
supervisor of `swarm up` writes each service's to `<data dir>/logs/<service>.log`). By default
(`SWARM_LOG_FORMAT=auto`) a service whose stderr is not a terminal (under the supervisor, in a
container, under systemd) writes one JSON object per line, for log shippers and `jq`; on a
terminal it writes readable key=value lines. `json` and `console` choose either way. Lines of the
standard library's loggers (uvicorn, nats-py, psycopg) are rendered the same way, so a JSON log
holds nothing else.

structlog is imported where it is configured, not by importing this module: the CLI configures
it only once something imports it (`configure_logging_on_import`).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    import structlog

LogFormat = Literal["auto", "console", "json"]


def renders_json(fmt: LogFormat) -> bool:
    """Whether `fmt` means JSON lines here: `auto` does when stderr is not a terminal."""
    if fmt == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        return not (callable(isatty) and isatty())
    return fmt == "json"


def level_number(level: str) -> int:
    """The standard library's number for a level name, or ValueError naming the choices."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    return number


def configure_logging(level: str, fmt: LogFormat = "auto") -> None:
    """Route structlog and the standard library's loggers at `level` and above to stderr."""
    import structlog

    number = level_number(level)
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


def configure_logging_on_import(level: str, fmt: LogFormat = "auto") -> None:
    """`configure_logging(level, fmt)` unless the process configured structlog itself (an
    embedding program, the tests): now if structlog is imported, else right after its import.

    For the CLI, whose read verbs never log through structlog: importing it (with rich's
    tracebacks and pygments) was ~50 ms of a ~600 ms `swarm agent ls` here (bench/cli.py). A
    module imports structlog before it logs, so its first line still goes where this says.
    A bad `level` is refused now, not at that import.
    """
    level_number(level)

    def configure() -> None:
        import structlog

        if not structlog.is_configured():
            configure_logging(level, fmt)

    if "structlog" in sys.modules:
        configure()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("structlog", configure))


class _AfterImport:
    """A `sys.meta_path` finder that runs `then` once, right after module `name` is imported.

    It finds the module as the finders after it would, and hands the import system the same
    spec with a loader that runs the module's own loader, then `then`.
    """

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenLoader(spec.loader, self.then)  # type: ignore[assignment]
        return spec


class _ThenLoader:
    """`loader`, then `then` once the module has run (see `_AfterImport`)."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its own loader, as if it had been imported without this.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.then()


__all__ = [
    "LogFormat",
    "configure_logging",
    "configure_logging_on_import",
    "level_number",
    "renders_json",
]
