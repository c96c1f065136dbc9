"""A `swarm` CLI with only the verbs a test is about, run in-process with typer's CliRunner."""

from __future__ import annotations

from collections.abc import Callable

import typer


def cli_with(add: Callable[[typer.Typer], object]) -> typer.Typer:
    """A CLI holding only what `add` puts on it. Its callback keeps typer from collapsing a CLI
    of one command into that command (`swarm publish ...` stays `publish ...`)."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Only the verbs under test."""

    add(app)
    return app
