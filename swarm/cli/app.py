"""The `swarm` command: one typer app, each group of verbs in a module of its own."""

from __future__ import annotations

import typer

from swarm.cli import (
    agent,
    debug,
    healing,
    logs,
    module,
    namespace,
    observe,
    pod,
    publish,
    schemas_cmd,
    stack,
    task,
    timeline,
    trace,
    webhook,
)
from swarm.cli import market as market_cmd

app = typer.Typer(
    name="swarm",
    help="Swarm: deploy, run and coordinate autonomous AI agents on an event-sourced platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

stack.register(app)
publish.register(app)
timeline.register(app)
app.add_typer(schemas_cmd.app, name="schemas")
agent.register(app)
pod.register(app)
namespace.register(app)
module.register(app)
task.register(app)
market_cmd.register(app)
webhook.register(app)

# Observing agents: logs, traces, live debugging.
logs.register(app)
trace.register(app)
debug.register(app)
healing.register(agent.app)
observe.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
