"""Unit-test an agent in-process: its `Handler` against an in-memory host, no stack, no build.

    from swarm_agent.testing import AgentHarness

    def test_counts():
        with AgentHarness("examples/counter-py/app.py") as agent:
            assert agent.send(b"{}") == b"1"
            assert agent.send(b"{}") == b"2"
            assert agent.kv == {"count": b"2"}
            agent.restart()  # a fresh instance, as after a crash or a move: kv is kept
            assert agent.send(b"{}") == b"3"

What matches a pod: the host functions are the pod's own (`runtime.components.HOST_FUNCTIONS`),
so arguments are checked, per-call budgets counted (replies, sends, kv operations, output
bytes), key-value state capped (`LimitError`), `http_request` refused without the "net"
capability, and the answer of `send` is what `swarm agent send` prints: the call's replies, joined.
A host-side failure the pod would trap on (too many replies, say) raises the pod's error
(`runtime.errors.AgentTrap`, ...).

What does not: the agent runs in this CPython, not in the component's (whose standard library
holds only what the app imported at build time, with no native extensions), and fuel, the
deadline and the memory limit are not enforced. Build it (`swarm agent build`) to check those.

Only this module needs Swarm installed (it uses the runtime's host); the rest of `swarm_agent`
runs inside components.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Final

from runtime import hostcalls
from runtime.components import HOST_FUNCTIONS
from runtime.errors import InitFailed
from runtime.host import LogLine, MemoryHost, SentMessage
from runtime.limits import SandboxLimits

from . import _local

if __package__ != "swarm_agent":
    # The agent imports `swarm_agent`; a harness loaded under another package name would
    # serve a copy of the SDK the agent never calls.
    raise ImportError(f"import swarm_agent.testing, not {__name__}")

__all__ = ["AgentError", "AgentHarness", "CallResult"]

#: WIT functions returning `result<_, s32>`: a code comes back as `Err(code)`, as in a component.
_RESULTS: Final = frozenset({"kv-get", "vector-search", "http-request"})
_fresh = itertools.count()


@dataclass(frozen=True, slots=True)
class CallResult:
    """One message's outcome: `status` is what `handle` returned, `replies` what it replied."""

    status: int
    replies: tuple[bytes, ...]

    @property
    def body(self) -> bytes:
        """The replies joined: the answer a sender gets (`swarm agent send` prints it)."""
        return b"".join(self.replies)

    @property
    def ok(self) -> bool:
        return self.status == 0


class AgentError(Exception):
    """`send`: the handler returned a non-zero status (the agent's own error code)."""

    def __init__(self, result: CallResult) -> None:
        super().__init__(f"handle returned {result.status} (replies: {result.body!r})")
        self.result = result


class _HarnessHost:
    """`wit_world.imports.host` outside a component: each call goes to the pod's host function."""

    def __getattr__(self, name: str) -> Any:
        wit_name = name.replace("_", "-")
        function = HOST_FUNCTIONS.get(wit_name)
        if function is None:
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            # Host functions run only inside a call (hostcalls.active), as in a pod.
            result = function(None, *args)
            if wit_name in _RESULTS and isinstance(result, int):
                raise _local.Err(result)
            return result

        return call


class AgentHarness:
    """An agent's `Handler` with an in-memory host; use it as a context manager.

    `app` is the agent: a path to its file (loaded afresh for each instance, as a component
    starts from its build-time state), a module name, or an imported module (its module-level
    variables then carry over between instances; keep state in kv anyway). `kv` is the state the
    agent starts with (as if restored from a snapshot); `limits` its spec's limits, capabilities
    ("net", "env", "fs") and `env`, and the caps of its state. `host` replaces the in-memory host
    (a `runtime.host.MemoryHost`; pass one with `seed`, `clock` or `embed` to control randomness,
    time or text embeddings).
    """

    def __init__(
        self,
        app: ModuleType | str | os.PathLike[str],
        *,
        kv: Mapping[str, bytes | str] | None = None,
        limits: SandboxLimits | None = None,
        host: MemoryHost | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.host = host or MemoryHost(state_caps=self.limits.state_caps)
        for key, value in (kv or {}).items():
            # Restored as a pod restores a snapshot: kept even if over the caps.
            self.host.kv[key] = value.encode() if isinstance(value, str) else bytes(value)
        self._app = app
        self._ctx = hostcalls.CallContext.under(self.limits, self.host)
        self._handler: Any = None
        self._previous_target: Any = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> AgentHarness:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> CallResult:
        """Make an instance: load the app, create its `Handler` and run `init` (`InitFailed` if
        it returns non-zero). Returns what `init` replied and returned."""
        installed = not self._started
        if installed:
            self._previous_target, _local.host.target = _local.host.target, _HarnessHost()
            self._started = True
        self._handler = None
        try:
            module = self._load()
            handler_class = getattr(module, "Handler", None)
            if not isinstance(handler_class, type):
                raise TypeError(f"{module.__name__} defines no class Handler")
            self._handler = handler_class()
            result = self._invoke(None)
            if not result.ok:
                raise InitFailed(f"init returned {result.status}", code=result.status)
        except BaseException:
            self._handler = None
            if installed:  # a harness that never started leaves nothing behind
                self.close()
            raise
        return result

    def restart(self) -> CallResult:
        """A new instance with the same key-value state, as after a crash, a restart or a move
        to another pod: anything kept in Python objects is gone."""
        self._require()
        return self.start()

    def close(self) -> None:
        """Safe to call twice; host functions called afterwards raise `OutsideComponent`."""
        if self._started:
            _local.host.target = self._previous_target
            self._started = False
        self._handler = None

    # -- messages -------------------------------------------------------------------------------

    def call(self, message: bytes | str) -> CallResult:
        """Deliver one message to `handle`; its status and replies. An uncaught exception from
        the agent propagates as itself (in a pod it fails the message and replaces the instance)."""
        self._require()
        data = message.encode() if isinstance(message, str) else bytes(message)
        if len(data) > self.limits.budget.max_message_bytes:
            raise ValueError(
                f"message of {len(data)} bytes exceeds {self.limits.budget.max_message_bytes}"
            )
        return self._invoke(data)

    def send(self, message: bytes | str) -> bytes:
        """Deliver one message; the answer (the replies, joined). `AgentError` if `handle`
        returned non-zero."""
        result = self.call(message)
        if not result.ok:
            raise AgentError(result)
        return result.body

    def send_json(self, value: Any) -> Any:
        """`send` of `value` as JSON, the answer parsed as JSON."""
        return json.loads(self.send(json.dumps(value)))

    # -- what the agent did ---------------------------------------------------------------------

    @property
    def kv(self) -> dict[str, bytes]:
        """The agent's key-value state now (a copy)."""
        return self.host.kv.copy()

    @property
    def sent(self) -> list[SentMessage]:
        """Messages the agent sent (`swarm.send`), oldest first."""
        return list(self.host.sent)

    @property
    def logs(self) -> list[LogLine]:
        return list(self.host.logs)

    @property
    def events(self) -> list[Any]:
        """Events the agent emitted (`swarm.emit`): `type` and `data`."""
        return list(self.host.events)

    # -- inside ---------------------------------------------------------------------------------

    def _require(self) -> None:
        if self._handler is None:
            raise RuntimeError("the harness is not running: use `with AgentHarness(app) as h:`")

    def _invoke(self, message: bytes | None) -> CallResult:
        ctx = self._ctx
        ctx.reset()
        with hostcalls.active(ctx):
            try:
                status = self._handler.init() if message is None else self._handler.handle(message)
            except hostcalls.GuestAborted:
                status = None  # the pod traps here; ctx.fault says why
        if ctx.fault is not None:
            raise ctx.fault
        if not isinstance(status, int) or isinstance(status, bool):
            what = "init" if message is None else "handle"
            raise TypeError(f"{what} must return an int status (0: success), not {status!r}")
        return CallResult(status, tuple(ctx.replies))

    def _load(self) -> ModuleType:
        app = self._app
        if isinstance(app, ModuleType):
            return app
        path = Path(app)
        if path.suffix != ".py":
            return importlib.import_module(str(app))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such agent file")
        # A fresh copy of the module per instance, under a name of its own, with its directory
        # importable for modules next to it (as on the component's Python path).
        name = f"_swarm_agent_app_{path.stem}_{next(_fresh)}"
        spec = importlib.util.spec_from_file_location(name, path.resolve())
        if spec is None or spec.loader is None:
            raise ImportError(f"{path}: cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        with _on_path(path.resolve().parent):
            spec.loader.exec_module(module)
        return module


@contextmanager
def _on_path(directory: Path) -> Iterator[None]:
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)
