"""What a WebAssembly binary is, and a spec's module reference completed from the module store.

The header constants are light to import (the CLI checks every module file it reads with them).
A spec that names its module by sha256 alone would have `module.kind` default to `core`, and a
Python component would then be described (and run) as a core module. Every front end deploys
through `swarm.client.swarm`, which completes the kind here, so the CLI and the HTTP API agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarm.kernel.eventlog import EventLog

__all__ = ["COMPONENT_VERSION", "WASM_MAGIC", "kind_of", "with_module_kind"]

WASM_MAGIC = b"\0asm"
#: Version and layer of a WebAssembly component (a core module has version 1, layer 0).
COMPONENT_VERSION = b"\x0d\x00\x01\x00"


def kind_of(raw: bytes) -> str:
    """`component` or `core`: what a WebAssembly binary's header says it is."""
    return "component" if raw[4:8] == COMPONENT_VERSION else "core"


async def with_module_kind(log: EventLog, spec: dict[str, Any]) -> dict[str, Any]:
    """`spec`, or a copy whose module named by sha256 without a kind says the stored one's kind.

    The module is read from the object store as a pod will read it; one that is not there is
    left as it is, for the Hive to refuse (rule `module`).
    """
    # Imported here: every `swarm` call reads the constants above, few talk to the store.
    from swarm.kernel.admin import LogAdmin
    from swarm.kernel.eventlog import NotFound

    module = spec.get("module")
    if not isinstance(module, dict) or not module.get("sha256") or "kind" in module:
        return spec
    try:
        store = await LogAdmin(log).modules()
        raw = await store.get(str(module["sha256"]))
    except NotFound:  # no such module, or no object store at all
        return spec
    if raw[:4] != WASM_MAGIC:
        return spec
    return {**spec, "module": {**module, "kind": kind_of(raw)}}
