"""The `swarm` command: one typer app, each group of verbs in a module of its own.

A call imports only the module of the verb it runs, and builds only that module's verbs, or of
a group (`swarm agent …`) only the verb it runs: the root's commands are a mapping that imports a
module and builds its verbs the first time one of them is looked up (to run it, or for
`swarm --help` and shell completion, which list them all), and a group's a mapping that builds
the verb looked up. The verb modules themselves import only typer, rich and the standard library
at the top; a verb imports what it needs (nats-py, the models, the kernel, river…) when it runs.
tests/test_cli_start.py keeps it so; bench/cli.py measures it.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
import typer.main

# typer (pinned) carries its own click; the root group's help is written with its helpers.
from typer._click.utils import make_default_short_help
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter
    from typer.models import CommandInfo, TyperInfo


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
    "user": Verb("user", "Add, rotate and remove the users a stack admits."),
    "key": Verb("user", "Rotate the NATS keys of a stack's services and of its owner."),
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
    """The commands `swarm.cli.<module>` registers, built as typer builds a root's commands,
    except that the verbs of a group it adds (`swarm agent …`) are built when looked up: building
    all of `swarm agent`'s took ~35 ms of every `swarm agent` call here (bench/cli.py)."""
    holder = typer.Typer(add_completion=False, rich_markup_mode=MARKUP)
    # A callback makes typer build a group even for a module that registers one command.
    holder.callback()(_no_options)
    importlib.import_module(f"swarm.cli.{module}").register(holder)
    pending: dict[str, dict[str, CommandInfo]] = {}
    groups = []
    for info in holder.registered_groups:
        assert isinstance(info.name, str)
        group_info, pending[info.name] = _without_commands(info)
        groups.append(group_info)
    holder.registered_groups = groups
    root = typer.main.get_command(holder)
    assert isinstance(root, TyperGroup)
    for name, infos in pending.items():
        group = root.commands[name]
        assert isinstance(group, LazyGroup)
        group.commands = LazyCommands(infos, _builder(infos, holder), group.commands)
    return dict(root.commands)


def _no_options() -> None:
    """Holds the verbs of one module while typer builds them."""


def _without_commands(info: TyperInfo) -> tuple[TyperInfo, dict[str, CommandInfo]]:
    """A copy of a group added with `add_typer`, made a `LazyGroup` without its own commands
    (its subgroups stay), and those commands by name. The module's typer app is left as it is."""
    app = copy.copy(info.typer_instance)
    assert app is not None
    commands = {_command_name(c): c for c in app.registered_commands}
    app.registered_commands = []
    group = copy.copy(info)
    group.typer_instance = app
    group.cls = LazyGroup
    return group, commands


def _command_name(info: CommandInfo) -> str:
    # As typer names a command (typer.main.get_command_from_info).
    assert info.callback is not None
    return info.name or typer.main.get_command_name(info.callback.__name__)


def _builder(
    infos: Mapping[str, CommandInfo], holder: typer.Typer
) -> Callable[[str], dict[str, Any]]:
    """What builds one of `infos` by name, with the options typer gives a group's commands."""

    def build(name: str) -> dict[str, Any]:
        command = typer.main.get_command_from_info(
            infos[name],
            pretty_exceptions_short=holder.pretty_exceptions_short,
            rich_markup_mode=holder.rich_markup_mode,
        )
        return {name: command}

    return build


class LazyCommands(MutableMapping[str, Any]):
    """A group's commands, built on first lookup (to run one, or for `--help` and shell
    completion, which list them all): `build(name)` builds the one named, and possibly others.

    Iterating lists every name without building anything.
    """

    def __init__(
        self,
        names: Iterable[str],
        build: Callable[[str], Mapping[str, Any]],
        built: Mapping[str, Any] | None = None,
    ) -> None:
        self._names = dict.fromkeys(names)
        self._build = build
        self._built: dict[str, Any] = dict(built or {})

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._names:
                raise KeyError(name)
            self._built.update(self._build(name))
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("the verbs of `swarm` are fixed")

    def __contains__(self, name: object) -> bool:
        return name in self._names or name in self._built

    def __iter__(self) -> Iterator[str]:
        yield from self._names
        yield from (name for name in self._built if name not in self._names)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class LazyGroup(TyperGroup):
    """A group whose commands may be `LazyCommands`: listing them builds none."""

    def list_commands(self, ctx: Context) -> list[str]:
        # typer's iterates the commands' items, which would build every one.
        return list(self.commands)


class Swarm(LazyGroup):
    """The root group: each module's verbs are built when one of them is looked up.

    Listing the verbs (`swarm --help`, shell completion) builds none of them: building them all
    took ~250 ms of the ~400 ms `swarm --help` spent here (bench/cli.py).
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(VERBS, lambda name: build_verbs(VERBS[name].module))

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
