"""Stand-ins for the bindings componentize-py generates, so an agent imports outside a component.

Inside a component `swarm_agent` uses the generated `wit_world` and `componentize_py_types`.
Outside one (an agent's unit tests, a REPL) it uses these: `Err` and `exports.Handler` behave
alike, and `host` forwards each host function to the host `swarm_agent.testing.AgentHarness`
installs while it runs. With no harness running, calling one raises `OutsideComponent` saying so.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class Err(Exception):  # named as componentize_py_types names it
    """The error of a WIT `result`; `value` is the ABI's negative code."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


class _Handler:
    """The generated `exports.Handler` protocol: `init() -> int` and `handle(bytes) -> int`."""


#: Mirrors the generated module `wit_world.exports`.
exports = SimpleNamespace(Handler=_Handler)


class OutsideComponent(RuntimeError):
    """A host function was called outside a component and outside `AgentHarness`."""


class _Host:
    """`wit_world.imports.host`, forwarding to the harness's host while one runs."""

    def __init__(self) -> None:
        self.target: Any = None

    def __getattr__(self, name: str) -> Any:
        target = self.__dict__.get("target")
        if target is None:
            raise OutsideComponent(
                f"swarm_agent.{name} needs a host: agents run inside a component built by "
                "`swarm agent build`, or in tests under swarm_agent.testing.AgentHarness"
            )
        return getattr(target, name)


host = _Host()
