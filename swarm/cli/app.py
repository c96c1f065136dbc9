"""The `swarm` command: one typer app, each group of verbs in a module of its own.

A call imports only the module of the verb it runs, and builds only that module's commands:
the root's commands are a mapping that imports a module and builds its verbs the first time one
of them is looked up (to run it, or for `swarm --help` and shell completion, which list them
all). The verb modules themselves import only typer, rich and the standard library at the top;
a verb imports what it needs (nats-py, the models, the kernel, river…) when it runs.
tests/test_cli_start.py keeps it so; bench/cli.py measures it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
import typer.main

# typer (pinned) carries its own click; the root group's help is written with its helpers.
from typer._click.utils import make_default_short_help
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter


@dataclass(frozen=True, slots=True)
class Verb:
    """Where a verb of `swarm` comes from, and the line `swarm --help` shows for it."""

    #: The module of `swarm.cli` whose `register(root)` adds the verb.
    module: str
    #: The first sentence of the verb's help: `swarm --help` lists every verb without building
    #: any (tests/test_cli_start.py checks each agrees with its module's help).
    summary: str


#: Every verb and group of `swarm`, in the order `swarm --help` lists them.
VERBS: Mapping[str, Verb] = {
    "up": Verb(
        "stack",
        "Start NATS, PostgreSQL and the Swarm services; stay in the foreground until Ctrl-C.",
    ),
    "down": Verb(
        "stack", "Stop the stack started by `swarm up` (services, then PostgreSQL, then NATS)."
    ),
    "status": Verb(
        "stack",
        "Show which stack this is, whether it runs, where it listens and how its services do.",
    ),
    "migrate": Verb(
        "stack",
        "Bring the database schema up to date, as `swarm up` does before starting services.",
    ),
    "publish": Verb("publish", "Send a command and wait for its outcome."),
    "market": Verb(
        "market",
        "Show the market: offers (pod, free, price, energy, labels) and recent clearings.",
    ),
    "logs": Verb(
        "logs", "Print an agent's log lines (all its replicas): time, level, replica, message."
    ),
    "trace": Verb(
        "trace",
        "Show everything one command caused (events, outcomes, the scheduler's proposals, the "
        "pods' reports) as a tree with times from the command.",
    ),
    "debug": Verb(
        "debug",
        "Inspect a live agent: status, replicas, trust, findings, logs, kv state; send messages.",
    ),
    "timeline": Verb(
        "timeline",
        "Read the log: list it, rebuild the Hive's state at a point, check, export, import.",
    ),
    "schemas": Verb(
        "schemas_cmd", "Inspect and export the JSON Schemas of every command and event."
    ),
    "agent": Verb("agent", "Deploy and manage agents."),
    "pod": Verb("pod", "Inspect the pods that run agents."),
    "namespace": Verb("namespace", "Create namespaces and set their quotas."),
    "module": Verb("module", "Push and list agent modules (WebAssembly)."),
    "task": Verb("task", "Send tasks to named queues."),
    "webhook": Verb(
        "webhook", "Send events to HTTP endpoints: signed CloudEvents, retried, recorded."
    ),
    "observe": Verb("observe", "Look at agent behaviour as the Observer sees it."),
}

#: How a verb finds the stack it talks to, shown under `swarm --help` (swarm.cli.discovery).
WHICH_STACK = (
    "Which stack: --nats-url or SWARM_NATS_URL name a NATS server outright. Otherwise the "
    "stack's data dir is --data-dir (up, down, status, migrate), else SWARM_HOME (or its "
    "older name SWARM_DATA_DIR), else the stack `swarm up` started last (recorded in "
    "$XDG_STATE_HOME/swarm/current.json, by default ~/.local/state/swarm/current.json), else "
    "./.swarm; `swarm status` says which one it shows and why. `swarm up` starts a stack in "
    "--data-dir, SWARM_HOME or ./.swarm, and that stack becomes the current one."
)


#: Help and usage errors as click prints them, plain text (like kubectl's and docker's): typer's
#: rich rendering imports rich.markdown, markdown-it and pygments, ~110 ms of every `--help` and
#: failed parse here (bench/cli.py). Typer gives a group's mode to every command under it, so
#: the two roots (`app`, the `build_verbs` holder) are where it is set.
MARKUP: None = None


def build_verbs(module: str) -> dict[str, Any]:
    """The commands `swarm.cli.<module>` registers, built as typer builds a root's commands."""
    holder = typer.Typer(add_completion=False, rich_markup_mode=MARKUP)
    # A callback makes typer build a group even for a module that registers one command.
    holder.callback()(_no_options)
    importlib.import_module(f"swarm.cli.{module}").register(holder)
    group = typer.main.get_command(holder)
    assert isinstance(group, TyperGroup)
    return dict(group.commands)


def _no_options() -> None:
    """Holds the verbs of one module while typer builds them."""


class LazyVerbs(MutableMapping[str, Any]):
    """The root's commands, built module by module on first lookup (see the module docstring).

    Iterating lists every name without building anything; looking one up builds its module's.
    """

    def __init__(self, verbs: Mapping[str, Verb]) -> None:
        self._verbs = verbs
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            verb = self._verbs.get(name)
            if verb is None:
                raise KeyError(name)
            self._built.update(build_verbs(verb.module))
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("the verbs of `swarm` are fixed")

    def __contains__(self, name: object) -> bool:
        return name in self._verbs or name in self._built

    def __iter__(self) -> Iterator[str]:
        yield from self._verbs
        yield from (name for name in self._built if name not in self._verbs)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Swarm(TyperGroup):
    """The root group, with `LazyVerbs` for commands.

    Listing the verbs (`swarm --help`, shell completion) builds none of them: building them all
    took ~250 ms of the ~400 ms `swarm --help` spent here (bench/cli.py).
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyVerbs(VERBS)

    def list_commands(self, ctx: Context) -> list[str]:
        # typer's iterates the commands' items, which would build every one.
        return list(self.commands)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        width = formatter.width or 80
        limit = width - 6 - max(len(name) for name in VERBS)
        rows = [
            (name, make_default_short_help(verb.summary, limit)) for name, verb in VERBS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="swarm",
    cls=Swarm,
    help="Swarm: deploy, run and coordinate autonomous AI agents on an event-sourced platform.",
    epilog=WHICH_STACK,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=MARKUP,
)


@app.callback()
def _root() -> None:
    # Without a callback or registered commands typer would not make `swarm` a group.
    pass


def main() -> None:
    _without_websockets()
    app()


def _without_websockets() -> None:
    """Keep nats-py from importing aiohttp, unless a NATS URL asks for WebSockets.

    nats-py imports aiohttp only for `ws://` and `wss://` servers, and leaves it out when it is
    not installed; it is installed here (faust needs it), and importing it cost ~125 ms of the
    ~500 ms a `swarm agent ls` spent starting (bench/cli.py). A `None` entry in `sys.modules`
    is Python's documented way to make an import fail as if the module were absent.
    """
    words = [*sys.argv, os.environ.get("SWARM_NATS_URL", "")]
    if not any("ws://" in w or "wss://" in w for w in words):
        sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
