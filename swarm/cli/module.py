"""`swarm module`: push WebAssembly modules to the object store and list them.

A pushed module is stored in the JetStream object store `names.OBJECT_STORE_MODULES` under its
sha256 (hex), which is the name a pod fetches it by; an agent then names it with
`swarm agent deploy NAME --module-sha256 HEX`. Modules of any size can be pushed, where inline
modules are limited to what fits in a command.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from swarm.cli import connect
from swarm.cli.agent import validate_module, wasm_bytes
from swarm.cli.output import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    CliError,
    Format,
    emit,
    stdout_console,
    table,
)
from swarm.cli.verbs import EXIT_CODES, OutputOption, finish
from swarm.client.modules import kind_of

if TYPE_CHECKING:
    from swarm.client.eventlog import EventLog, ModuleStore, StoredObject

app = typer.Typer(help="Push and list agent modules (WebAssembly).", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="module")


def module_bytes(path: Path) -> tuple[bytes, str]:
    """A module file's bytes (.wat assembled) and kind, checked as `swarm agent deploy` does."""
    raw = wasm_bytes(path)
    kind = kind_of(raw)
    if kind == "core":
        validate_module(path, raw)
    return raw, kind


async def _store(log: EventLog, target: connect.NatsTarget) -> ModuleStore:
    from schemas import names
    from swarm.client.eventlog import LogAdmin, NotFound

    try:
        return await LogAdmin(log).modules()
    except NotFound:
        raise CliError(
            f"object store {names.OBJECT_STORE_MODULES} does not exist on NATS at {target.url}",
            code=EXIT_UNAVAILABLE,
            hint="it is created by `swarm up` and by every Swarm service at start",
        ) from None


def _info_view(info: StoredObject) -> dict[str, Any]:
    return {"sha256": info.name, "size": info.size, "stored": info.stored}


@app.command("push", epilog=EXIT_CODES)
def push(
    file: Annotated[
        Path,
        typer.Argument(help="The module: a .wasm file or a .wat text module.", dir_okay=False),
    ],
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Store a module in the object store under its sha256, for --module-sha256."""

    async def main() -> int:
        raw, kind = module_bytes(file)
        digest = hashlib.sha256(raw).hexdigest()
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings) as log:
            store = await _store(log, target)
            already = await store.info(digest) is not None
            if not already:
                await store.put(digest, raw)
        result = {
            "sha256": digest,
            "size": len(raw),
            "kind": kind,
            "already_stored": already,
        }
        if output != Format.TABLE:
            emit(result, output)
            return EXIT_OK
        what = "already stored" if already else f"stored ({len(raw):,} bytes, {kind})"
        typer.echo(f"module {digest} {what}")
        typer.echo(f"deploy it with: swarm agent deploy NAME --module-sha256 {digest}")
        return EXIT_OK

    finish(main())


@app.command("ls")
def ls(
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """List the stored modules: sha256, size and when each was stored."""

    async def main() -> int:
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings) as log:
            store = await _store(log, target)
            infos = await store.list()
        modules = sorted((_info_view(i) for i in infos), key=lambda m: str(m["stored"]))
        if output != Format.TABLE:
            emit({"modules": modules}, output)
            return EXIT_OK
        if not modules:
            typer.echo("no modules stored")
            return EXIT_OK
        rows = [[m["sha256"], f"{m['size'] or 0:,}", m["stored"] or ""] for m in modules]
        stdout_console().print(table(["SHA256", "SIZE", "STORED"], rows, title=None))
        return EXIT_OK

    finish(main())
