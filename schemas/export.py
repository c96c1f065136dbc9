"""JSON Schema for every registered command and event, one file per type, and for the answers
of the Hive's read queries (`schemas.views`: `swarm.view.<answer>.json`).

The files are committed under `schemas/jsonschema/` so that clients in any language can validate
against them; a test fails when they no longer match the models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas import names
from schemas.envelope import Envelope
from schemas.registry import REGISTRY, Registry
from schemas.views import ANSWERS

Views = Mapping[str, type[BaseModel]]

DEFAULT_DIR = Path(__file__).parent / "jsonschema"


def render(registry: Registry = REGISTRY, views: Views = ANSWERS) -> dict[str, str]:
    """File name -> JSON text for every registered type and every query answer in `views`
    (deterministic, sorted keys)."""
    files: dict[str, str] = {}
    index: list[dict[str, Any]] = []
    for entry in registry:
        schema = Envelope[entry.model].model_json_schema()  # type: ignore[name-defined]
        schema_id = names.dataschema(entry.type, entry.model.VERSION)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": schema_id,
            **schema,
            "title": entry.type,
            "description": (entry.model.__doc__ or "").strip(),
        }
        schema["properties"]["type"] = {"const": entry.type, "title": "Type"}
        # Decoding requires an id (`Registry.decode`) though the model makes one up in code.
        required = list(schema.get("required", ()))
        schema["required"] = required if "id" in required else ["id", *required]
        # The decoder reads only the versions it can upcast from (`Registry._version_of`); the
        # model's plain `str` would let a client's validator pass any other text.
        schema["properties"]["dataschema"] = {
            "anyOf": [
                {
                    "enum": [
                        names.dataschema(entry.type, v) for v in range(1, entry.model.VERSION + 1)
                    ],
                    "type": "string",
                },
                {"type": "null"},
            ],
            "default": None,
            "title": "Dataschema",
        }
        file_name = f"{entry.type}.v{entry.model.VERSION}.json"
        files[file_name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        index.append(
            {
                "type": entry.type,
                "kind": entry.kind,
                "version": entry.model.VERSION,
                "dataschema": schema_id,
                "file": file_name,
            }
        )
    for stem, model in views.items():
        # As answered: the form a reader sees (e.g. a rollout's `from`, times as text).
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{names.DATASCHEMA_PREFIX}/views/{stem}",
            **model.model_json_schema(mode="serialization", by_alias=True),
        }
        file_name = f"swarm.view.{stem}.json"
        files[file_name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        index.append(
            {
                "type": f"swarm.view.{stem}",
                "kind": "view",
                "version": 1,
                "dataschema": schema["$id"],
                "file": file_name,
            }
        )
    files["index.json"] = json.dumps(index, indent=2, sort_keys=True) + "\n"
    return files


def write(
    directory: Path = DEFAULT_DIR, registry: Registry = REGISTRY, views: Views = ANSWERS
) -> list[Path]:
    """Write the schemas, removing files of types that no longer exist. Returns what changed."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = render(registry, views)
    changed: list[Path] = []
    for stale in sorted(directory.glob("*.json")):
        if stale.name not in wanted:
            stale.unlink()
            changed.append(stale)
    for name, text in wanted.items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def stale(
    directory: Path = DEFAULT_DIR, registry: Registry = REGISTRY, views: Views = ANSWERS
) -> list[str]:
    """Names of files that are missing, outdated or orphaned in `directory`."""
    wanted = render(registry, views)
    present = (
        {p.name: p.read_text() for p in directory.glob("*.json")} if directory.exists() else {}
    )
    problems = [n for n, text in wanted.items() if present.get(n) != text]
    problems += [n for n in present if n not in wanted]
    return sorted(problems)
