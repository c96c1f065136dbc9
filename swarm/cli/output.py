"""Rendering shared by the CLI verbs: `-o` formats, tables, and errors a person can act on.

Results go to stdout and nothing else does, so `-o json|yaml|jsonl` can be piped into other
tools; progress lines and errors go to stderr. A user mistake or an unreachable server ends in one
readable line and an exit code, never a traceback.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import sys
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from swarm.client import errors as client_errors
from swarm.client.errors import FieldProblem as FieldProblem

# --- Exit codes ----------------------------------------------------------------------------------
# Scripts branch on these, so they are part of the CLI's contract. The client layer's error kinds
# are these same numbers, so a `ClientError` exits with its `code` as it is.

EXIT_OK = 0
#: The request was carried out and answered "no": a rejected command, stale schema files.
EXIT_FAILED = client_errors.FAILED
#: The input was wrong (click uses 2 for bad options too); nothing was sent.
EXIT_USAGE = client_errors.INVALID
#: A command was sent but no outcome came back in time.
EXIT_NO_OUTCOME = client_errors.NO_OUTCOME
#: NATS could not be reached or the Swarm streams are missing; nothing was sent.
EXIT_UNAVAILABLE = client_errors.UNAVAILABLE
#: Ctrl-C, by shell convention 128 + SIGINT.
EXIT_INTERRUPTED = 130

#: Wide enough for a table row with full ULIDs when stdout is a pipe or file, where rich would
#: otherwise assume 80 columns and cut the ids people copy from it.
_PIPE_WIDTH = 200

T = TypeVar("T")


class Format(enum.StrEnum):
    """`-o` for verbs that print one result."""

    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


class StreamFormat(enum.StrEnum):
    """`-o` for verbs that print a sequence which may not end (`--follow`)."""

    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"


#: An error meant for the person at the terminal: the client layer's error, printed with its
#: hint and ending the verb with its code as exit code.
CliError = client_errors.ClientError


# --- Consoles ------------------------------------------------------------------------------------


def stdout_console() -> Console:
    """A console on the current `sys.stdout` (created per call so test runners can capture it)."""
    return _console(stderr=False)


def stderr_console() -> Console:
    return _console(stderr=True)


def _console(*, stderr: bool) -> Console:
    # soft_wrap: a message is one line however long, so it can be grepped and copied whole.
    console = Console(stderr=stderr, soft_wrap=True, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, soft_wrap=True, highlight=False, width=_PIPE_WIDTH)
    return console


def status(message: str) -> None:
    """A progress line for people; on stderr so it never mixes into machine-readable output."""
    stderr_console().print(Text(message, style="dim"))


# --- Errors --------------------------------------------------------------------------------------


def print_error(error: CliError) -> None:
    console = stderr_console()
    console.print(Text.assemble(("error: ", "bold red"), error.message))
    if error.errors:
        console.print(field_errors_table(error.errors))
    if error.hint:
        console.print(Text.assemble(("hint: ", "bold"), error.hint))


def field_errors_table(errors: Iterable[FieldProblem]) -> Table:
    return table(["FIELD", "PROBLEM", "CODE"], [[e.loc, e.msg, e.type] for e in errors], title=None)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn the ways a verb can end into exit codes, printing what a person needs to know.

    Wrap a verb's whole body in this: a `CliError` prints its message (and hint) and exits with
    its code, Ctrl-C exits 130 quietly, and a closed pipe (`swarm timeline | head`) exits 0.
    """
    try:
        yield
    except CliError as exc:
        print_error(exc)
        raise typer.Exit(exc.code) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # The reader is gone; point stdout at /dev/null so the interpreter's final flush does not
        # raise a second BrokenPipeError on the way out.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_OK) from None


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a verb's async body to completion with readable errors (see `errors_to_exit`)."""
    with errors_to_exit():
        return run_interruptible(main)
    raise AssertionError("unreachable")  # pragma: no cover - errors_to_exit always re-raises


def run_interruptible(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where Ctrl-C always ends it with `KeyboardInterrupt`.

    asyncio's own Ctrl-C handling cancels the body once; a body waiting in nats-py can lose
    that cancellation (swarm.kernel.tasks) and go on: `--watch` and `--follow` then ignored
    Ctrl-C on a loaded machine. Here the body is cancelled until it is done.
    """
    import asyncio

    interrupted = False

    async def guarded() -> T:
        nonlocal interrupted
        from swarm.client.lifecycle import cancel_and_wait

        loop = asyncio.get_running_loop()
        body = asyncio.ensure_future(main)
        stop = asyncio.Event()
        try:
            loop.add_signal_handler(signal.SIGINT, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            return await body  # not the main thread (an embedding program, CliRunner)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({body, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not body.done():
                interrupted = True
                await cancel_and_wait([body])
                raise asyncio.CancelledError
            return body.result()
        finally:
            stopping.cancel()
            loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise


# --- Data ----------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """`value` with datetimes as RFC 3339 strings and paths as strings (YAML input has both)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def render(value: Any, fmt: Format | StreamFormat) -> str:
    """`value` as JSON (indented) or YAML text; JSONL is one compact line."""
    value = to_jsonable(value)
    if fmt == Format.YAML:
        import yaml

        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
    if fmt == StreamFormat.JSONL:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, indent=2, ensure_ascii=False)


def emit(value: Any, fmt: Format | StreamFormat) -> None:
    """Print `value` in a machine-readable format on stdout, unstyled."""
    typer.echo(render(value, fmt))


# --- Tables --------------------------------------------------------------------------------------


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None) -> Table:
    """A borderless table; cells are plain text, so brackets in user data are never markup."""
    result = Table(box=None, title=title, title_justify="left", header_style="bold", pad_edge=False)
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(cell if isinstance(cell, Text) else Text(_cell(cell)) for cell in row))
    return result


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable(value), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    #: Fixed width; `None` takes what the others leave (at least `min_width`).
    width: int | None = None
    min_width: int = 10
    justify: str = "left"


class RowPrinter:
    """Prints table rows one at a time, aligned, for output that streams (`--follow`).

    A rich `Table` needs every row before it can size its columns; here every column has a fixed
    width, so the header and each later row line up without holding rows in memory.
    """

    def __init__(self, columns: Sequence[Column], console: Console | None = None) -> None:
        self.console = console or stdout_console()
        fixed = sum(c.width or 0 for c in columns) + len(columns) - 1
        rest = max(self.console.width - fixed, 0)
        self._widths = [c.width if c.width is not None else max(rest, c.min_width) for c in columns]
        self._columns = columns
        self._printed_header = False
        self.rows = 0

    def _table(self, *, header: bool) -> Table:
        result = Table(
            box=None, show_header=header, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0)
        )
        for column, width in zip(self._columns, self._widths, strict=True):
            result.add_column(
                column.header,
                width=width,
                min_width=width,
                max_width=width,
                no_wrap=True,
                overflow="ellipsis",
                justify=column.justify,  # type: ignore[arg-type]
            )
        return result

    def header(self) -> None:
        if not self._printed_header:
            self._printed_header = True
            self.console.print(self._table(header=True))

    def row(self, cells: Sequence[Any]) -> None:
        self.header()
        result = self._table(header=False)
        result.add_row(*(cell if isinstance(cell, Text) else Text(_cell(cell)) for cell in cells))
        self.console.print(result)
        self.rows += 1
