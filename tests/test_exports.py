"""The public packages export what their docs promise, and every exported name exists.

`schemas` (the contracts), `swarm.client` (the layer the CLI and the HTTP API share) and
`swarm_agent` (the SDK inside a Python agent) are what code outside Swarm imports; a name their
docs show but `__all__` lacks, or one `__all__` lists that is gone, breaks that code quietly.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ("schemas", "swarm.client", "swarm_agent")
#: A backticked name in Markdown: `name`, `name(args)`, `package.name`.
_TICKED = re.compile(r"`([A-Za-z_][\w.]*)")


def exports(package: str) -> tuple[ModuleType, list[str]]:
    module = importlib.import_module(package)
    names: list[str] = module.__all__
    return module, names


@pytest.mark.parametrize("package", PUBLIC)
def test_every_exported_name_exists_once(package: str) -> None:
    module, names = exports(package)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for name in names:
        # A submodule is exported by name and loads on import (swarm.client's do).
        if not hasattr(module, name):
            importlib.import_module(f"{package}.{name}")
        assert getattr(module, name) is not None, name


def _imported_from(package: str, text: str) -> set[str]:
    """Names a document imports from `package`, in `from package import a, b` lines (also in
    parentheses over several lines)."""
    names: set[str] = set()
    pattern = rf"^\s*from {re.escape(package)} import (\([^)]*\)|[^\n]*)"
    for found in re.finditer(pattern, text, re.MULTILINE):
        for part in found.group(1).strip("()").replace("\n", ",").split(","):
            name = part.split("#")[0].split(" as ")[0].strip()
            if name:
                names.add(name)
    return names


def _documents() -> list[Path]:
    docs = [ROOT / "README.md", *sorted((ROOT / "runtime").rglob("*.md"))]
    return (
        docs + sorted((ROOT / "examples").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.md"))
    )


@pytest.mark.parametrize("package", ["schemas", "swarm.client", "swarm_agent"])
def test_what_the_docs_import_is_exported(package: str) -> None:
    _, names = exports(package)
    promised: set[str] = set()
    for path in _documents():
        promised |= _imported_from(package, path.read_text())
    assert promised - set(names) == set()


def test_swarm_client_exports_each_module_its_docstring_names() -> None:
    module, names = exports("swarm.client")
    modules = {m.name for m in pkgutil.iter_modules(module.__path__) if not m.name.startswith("_")}
    assert set(names) == modules
    documented = set(_TICKED.findall(module.__doc__ or ""))
    assert modules - documented == set(), "modules the package docstring does not name"


def test_swarm_agent_exports_what_the_sdk_reference_lists() -> None:
    """The Reference section of runtime/sdk/README.md: its functions, the exceptions and codes
    it names (and the log levels of `log`)."""
    _, names = exports("swarm_agent")
    readme = (ROOT / "runtime" / "sdk" / "README.md").read_text()
    reference = readme.split("\n## Reference\n", 1)[1].split("\n## ", 1)[0]
    promised: set[str] = set()
    for line in reference.splitlines():
        if line.startswith("| `"):
            first_cell = line.split(" | ", 1)[0]
            promised |= set(_TICKED.findall(first_cell))
    for token in _TICKED.findall(reference):
        name = token.removeprefix("swarm_agent.")
        if name[:1].isupper() and "." not in name:
            promised.add(name)
    assert len(promised) > 20, promised  # the table was found and read
    assert promised - set(names) == set()


def test_swarm_agent_exports_what_its_docstring_and_first_agent_use() -> None:
    """`swarm.X` in the package docstring and in the SDK README's examples (`import swarm_agent
    as swarm`) is exported."""
    module, names = exports("swarm_agent")
    readme = (ROOT / "runtime" / "sdk" / "README.md").read_text()
    used = set(re.findall(r"\bswarm\.([A-Za-z_]\w*)\(", readme + (module.__doc__ or "")))
    used |= set(re.findall(r"\bswarm\.(Agent)\b", readme))
    assert used
    assert used - set(names) == set()
