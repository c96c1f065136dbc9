"""`swarm schemas`: the JSON Schemas of every command and event — list, show, export, check.

The exported files are committed so that clients in other languages can validate against them;
`swarm schemas export --check` is how CI notices they no longer match the models. The models are
imported by the verbs: every `swarm` call imports this module.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    Format,
    emit,
    errors_to_exit,
    stdout_console,
    table,
)

app = typer.Typer(
    help="Inspect and export the JSON Schemas of every command and event.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="schemas")


def _display(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter, copyable)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@app.command("export")
def export_(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            file_okay=False,
            help="Where to write the schema files.",
            show_default="the schemas package's jsonschema/ folder",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Write nothing; exit 1 listing files that do not match the models."
        ),
    ] = False,
) -> None:
    """Write one JSON Schema file per command and event type and per query answer (plus
    index.json)."""
    from schemas import export

    directory = export.DEFAULT_DIR if directory is None else directory
    with errors_to_exit():
        console = stdout_console()
        if check:
            stale = export.stale(directory)
            if stale:
                for name in stale:
                    console.print(f"stale: {_display(directory / name)}", markup=False)
                raise CliError(
                    f"{len(stale)} schema file(s) in {_display(directory)} do not match the models",
                    code=EXIT_FAILED,
                    hint=f"run `swarm schemas export --dir {_display(directory)}` and commit",
                )
            console.print(f"schemas in {_display(directory)} are up to date", markup=False)
            return
        try:
            changed = export.write(directory)
        except OSError as exc:
            raise CliError(
                f"cannot write to {_display(directory)}: {exc}", code=EXIT_FAILED
            ) from None
        for path in changed:
            verb = "wrote" if path.exists() else "removed"
            console.print(f"{verb} {_display(path)}", markup=False)
        if not changed:
            console.print(f"schemas in {_display(directory)} are up to date", markup=False)


@app.command("ls")
def ls(
    output: Annotated[Format, typer.Option("--output", "-o", help="Output format.")] = Format.TABLE,
) -> None:
    """List every registered command and event type."""
    from schemas import REGISTRY, names

    rows = [
        {
            "type": entry.type,
            "kind": entry.kind,
            "version": entry.model.VERSION,
            "dataschema": names.dataschema(entry.type, entry.model.VERSION),
            "model": entry.model.__name__,
        }
        for entry in REGISTRY
    ]
    if output != Format.TABLE:
        emit(rows, output)
        return
    stdout_console().print(
        table(
            ["TYPE", "KIND", "VERSION", "MODEL"],
            [[r["type"], r["kind"], r["version"], r["model"]] for r in rows],
            title=None,
        )
    )


@app.command("show")
def show(
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="A command or event type.")],
    output: Annotated[
        Format,
        typer.Option("--output", "-o", help="json/yaml: the schema; table: the data fields."),
    ] = Format.JSON,
) -> None:
    """Print the JSON Schema of one command or event type."""
    from schemas import REGISTRY, export

    with errors_to_exit():
        entry = REGISTRY.get(type_)
        if entry is None:
            known = [e.type for e in REGISTRY]
            close = difflib.get_close_matches(type_, known, n=3)
            raise CliError(
                f"unknown type {type_!r}",
                code=EXIT_USAGE,
                hint=f"did you mean {', '.join(close)}?"
                if close
                else "`swarm schemas ls` lists them",
            )
        schema: dict[str, Any] = json.loads(
            export.render()[f"{entry.type}.v{entry.model.VERSION}.json"]
        )
        if output != Format.TABLE:
            emit(schema, output)
            return
        stdout_console().print(
            table(
                ["FIELD", "TYPE", "REQUIRED", "DESCRIPTION"],
                data_fields(schema),
                title=f"{entry.type} v{entry.model.VERSION} ({entry.kind}) data",
            )
        )


def data_fields(schema: dict[str, Any]) -> list[list[str]]:
    """One row per field of the payload (`data`) of an exported envelope schema."""
    defs: dict[str, Any] = schema.get("$defs", {})
    data = _resolve(schema.get("properties", {}).get("data", {}), defs)
    required = set(data.get("required", []))
    return [
        [
            name,
            _type_name(spec, defs),
            "yes" if name in required else "",
            spec.get("description", ""),
        ]
        for name, spec in data.get("properties", {}).items()
    ]


def _resolve(spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = defs.get(ref.removeprefix("#/$defs/"), {})
        return resolved
    return spec


def _type_name(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in spec:
        return " | ".join(_type_name(s, defs) for s in spec["anyOf"])
    if "const" in spec:
        return json.dumps(spec["const"])
    if "enum" in spec:
        return " | ".join(json.dumps(v) for v in spec["enum"])
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(spec.get('items', {}), defs)}]"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"dict[str, {_type_name(spec['additionalProperties'], defs)}]"
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    fmt = spec.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)
