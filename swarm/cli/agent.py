"""`swarm agent`: deploy, list, describe, scale, roll out, roll back, stop and delete agents.

Modelled on kubectl. A verb names an agent by namespace and name. Changes are commands sent
through the publish layer and answered by exactly one outcome: the verb prints what happened, or
the rejection's reason and rule and exits 1. Reads are Hive queries printed as a table or
`-o json|yaml`, and `--watch` redraws them every second until Ctrl-C.

The plumbing shared with `swarm namespace` and `swarm pod` (generic options, sending a command,
reading, watching, formatting) is in `swarm.cli.verbs`. The models, nats-py and the client layer
are imported by the verbs that use them: every `swarm` call imports this module.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from swarm.cli import autoscale as autoscaling
from swarm.cli import connect, healing, limits, publish
from swarm.cli import logs as logs_cli
from swarm.cli.health import health_parts, trust_text
from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_NO_OUTCOME,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Format,
    status,
    stdout_console,
    table,
)
from swarm.cli.timeline import printable
from swarm.cli.verbs import (
    DEFAULT_NAMESPACE,
    EXIT_CODES,
    AgentNameArgument,
    AgentNamespaceOption,
    Nothing,
    OutputOption,
    TimeoutOption,
    WatchOption,
    age,
    change_agent,
    conclude,
    finish,
    listing,
    show_read,
    styled,
)
from swarm.client.modules import WASM_MAGIC, kind_of

if TYPE_CHECKING:
    # The views are typed here and imported where an answer is read: every `swarm` call
    # imports this module, and the views bring pydantic and the models.
    from schemas.specs import AutoscalePolicy
    from schemas.views import AgentDetailView, AgentView
    from swarm.client.eventlog import Delivery, EventLog, Message
    from swarm.client.queries import HiveQueries

#: Seconds between status polls with `deploy --wait`.
WAIT_POLL = 0.25
#: Events shown by `describe`.
RECENT_EVENTS = 10

app = typer.Typer(help="Deploy and manage agents.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="agent")


# --- Formatting ----------------------------------------------------------------------------------


def _key_values(rows: Sequence[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(f"{key}:", value if isinstance(value, Text) else Text(str(value)))
    return grid


def _none(value: Any) -> str:
    return "<none>" if value in (None, "", [], {}) else str(value)


# --- Specs from flags and files ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecFlags:
    """The spec fields a verb's options may set; None (or empty) means "not given"."""

    version: str | None = None
    module: Path | None = None
    module_sha256: str | None = None
    memory_mb: int | None = None
    fuel_per_s: int | None = None
    autonomy: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    priority: int | None = None

    def apply(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """`spec` with these flags written over it (labels are added, autonomy replaced)."""
        result = dict(spec)
        if self.module is not None and self.module_sha256 is not None:
            raise CliError("give --module or --module-sha256, not both", code=EXIT_USAGE)
        if self.module is not None:
            result["module"] = read_module(self.module)
        if self.module_sha256 is not None:
            result["module"] = {"sha256": self.module_sha256.lower()}
        if self.version is not None:
            result["version"] = self.version
        if self.memory_mb is not None or self.fuel_per_s is not None:
            resources = result.get("resources")
            resources = dict(resources) if isinstance(resources, dict) else {}
            if self.memory_mb is not None:
                resources["memory_mb"] = self.memory_mb
            if self.fuel_per_s is not None:
                resources["fuel_per_s"] = self.fuel_per_s
            result["resources"] = resources
        if self.autonomy:
            # Checked here although the spec takes any string: autonomy bounds what an agent may
            # do, and a misspelt type would silently grant nothing.
            result["autonomy"] = [_command_type(t) for t in self.autonomy]
        if self.labels:
            labels = result.get("labels")
            merged = dict(labels) if isinstance(labels, dict) else {}
            merged.update(_label(item) for item in self.labels)
            result["labels"] = merged
        if self.priority is not None:
            result["priority"] = self.priority
        return result


def read_module(path: Path, kind: str | None = None) -> dict[str, Any]:
    """A module file as an inline module reference (base64), checked before anything is sent."""
    from schemas.specs import INLINE_MODULE_MAX_BYTES

    raw = wasm_bytes(path)
    if len(raw) > INLINE_MODULE_MAX_BYTES:
        raise CliError(
            f"module {path} is {len(raw):,} bytes; modules over {INLINE_MODULE_MAX_BYTES:,} "
            "bytes cannot travel inside a command",
            code=EXIT_USAGE,
            hint=(
                f"push it with `swarm module push {path}` and deploy it by reference: "
                "--module-sha256 HEX (or `module: {sha256: HEX}` in a spec file)"
            ),
        )
    detected = kind_of(raw)
    if detected == "core":
        validate_module(path, raw)
    return {"inline": base64.b64encode(raw).decode(), "kind": kind or detected}


def wasm_bytes(path: Path) -> bytes:
    """A module file's bytes, a .wat text module assembled, refused unless they are WebAssembly
    (`swarm agent deploy` and `swarm module push` read modules alike)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(
            f"cannot read module {path}: {exc.strerror or exc}", code=EXIT_USAGE
        ) from None
    if path.suffix == ".wat":
        raw = assemble_wat(path, raw)
    if raw[:4] != WASM_MAGIC:
        raise CliError(
            f"{path} is not a WebAssembly module: it does not start with \\0asm",
            code=EXIT_USAGE,
            hint="pass a compiled .wasm file or a .wat text module",
        )
    return raw


def assemble_wat(path: Path, text: bytes) -> bytes:
    """WebAssembly text to a module, so small agents can be deployed from their source."""
    import wasmtime

    try:
        return bytes(wasmtime.wat2wasm(text.decode("utf-8")))
    except (wasmtime.WasmtimeError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"{path} is not valid WebAssembly text: {first}", code=EXIT_USAGE) from None


def validate_module(path: Path, raw: bytes) -> None:
    """Refuse a module the engine would refuse, with the engine's reason, before it is sent."""
    import wasmtime

    try:
        wasmtime.Module.validate(wasmtime.Engine(), raw)
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise CliError(
            f"{path} is not a valid WebAssembly module: {first}", code=EXIT_USAGE
        ) from None


def _command_type(value: str) -> str:
    from schemas import REGISTRY

    entry = REGISTRY.get(value)
    if entry is None or entry.kind != "command":
        known = ", ".join(e.type for e in REGISTRY if e.kind == "command")
        raise CliError(
            f"--autonomy {value!r} is not a command type", code=EXIT_USAGE, hint=f"one of: {known}"
        )
    return value


def _label(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise CliError(f"--label {item!r}: expected key=value", code=EXIT_USAGE)
    return key.strip(), value


#: Keys a spec file may have at its top level.
_FILE_KEYS = frozenset({"name", "namespace", "replicas", "max_surge", "spec", "autoscale"})


@dataclass(frozen=True, slots=True)
class AgentFile:
    """An agent spec file: {name, namespace, replicas, spec: {…AgentSpec…}, autoscale}."""

    name: str | None
    namespace: str | None
    replicas: Any
    max_surge: Any
    spec: dict[str, Any]
    #: An autoscaling policy beside the spec (like replicas: not part of a version).
    autoscale: Any = None


def load_agent_file(source: str) -> AgentFile:
    """Read a spec file (JSON or YAML; `-` is stdin); `spec.module.path` is read and inlined.

    A module path is relative to the spec file, so a file and its module can move together.
    """
    document = publish.load_document(source)
    where = "stdin" if source == "-" else source
    unknown = sorted(set(document) - _FILE_KEYS)
    if unknown:
        raise CliError(
            f"{where}: unknown key(s) {', '.join(unknown)}",
            code=EXIT_USAGE,
            hint="a spec file has name, namespace, replicas, max_surge (rollout), spec and "
            "autoscale",
        )
    spec = document.get("spec", {})
    if not isinstance(spec, dict):
        raise CliError(f"{where}: spec must be an object", code=EXIT_USAGE)
    spec = dict(spec)
    module = spec.get("module")
    if isinstance(module, str):
        module = {"path": module}
    if isinstance(module, dict) and "path" in module:
        extra = sorted(set(module) - {"path", "kind"})
        if extra:
            raise CliError(
                f"{where}: spec.module has path and {', '.join(extra)}; give one of path, "
                "sha256 or inline",
                code=EXIT_USAGE,
            )
        base = Path.cwd() if source == "-" else Path(source).parent
        kind = module.get("kind")
        spec["module"] = read_module(
            base / str(module["path"]), kind if isinstance(kind, str) else None
        )
    for key in ("name", "namespace"):
        if key in document and not isinstance(document[key], str):
            raise CliError(f"{where}: {key} must be a string", code=EXIT_USAGE)
    return AgentFile(
        name=document.get("name"),
        namespace=document.get("namespace"),
        replicas=document.get("replicas"),
        max_surge=document.get("max_surge"),
        spec=spec,
        autoscale=document.get("autoscale"),
    )


def _pick(what: str, flag: str | None, from_file: str | None, default: str | None) -> str | None:
    """A value given both as an argument/flag and in the spec file must agree (as in kubectl)."""
    if flag is not None and from_file is not None and flag != from_file:
        raise CliError(
            f"{what} {flag!r} differs from the spec file's {what} {from_file!r}", code=EXIT_USAGE
        )
    return flag if flag is not None else from_file if from_file is not None else default


def _target(
    name: str | None, namespace: str | None, spec_file: AgentFile | None
) -> tuple[str, str]:
    picked_name = _pick("name", name, spec_file.name if spec_file else None, None)
    if picked_name is None:
        raise CliError("which agent? give NAME (or name in the spec file)", code=EXIT_USAGE)
    picked_ns = _pick(
        "namespace", namespace, spec_file.namespace if spec_file else None, DEFAULT_NAMESPACE
    )
    return picked_name, picked_ns or DEFAULT_NAMESPACE


# --- deploy --------------------------------------------------------------------------------------

FileOption = Annotated[
    str | None,
    typer.Option(
        "--file",
        "-f",
        help="Agent spec file (JSON/YAML): {name, namespace, replicas, spec}; '-' reads stdin.",
        show_default=False,
    ),
]
ModuleOption = Annotated[
    Path | None,
    typer.Option(
        "--module",
        help=f"The .wasm file, sent inline (up to {limits.INLINE_MODULE_MAX_BYTES // 1024} KiB).",
        show_default=False,
        dir_okay=False,
    ),
]
ModuleShaOption = Annotated[
    str | None,
    typer.Option(
        "--module-sha256",
        metavar="HEX",
        help="A module pushed with `swarm module push`, by its sha256.",
        show_default=False,
    ),
]
VersionOption = Annotated[
    str | None, typer.Option("--version", help="Version name.", show_default=False)
]
MemoryOption = Annotated[
    int | None,
    typer.Option("--memory-mb", min=1, help="Memory per replica, MB.", show_default=False),
]
FuelOption = Annotated[
    int | None,
    typer.Option("--fuel-per-s", min=1, help="Fuel per second per replica.", show_default=False),
]
AutonomyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--autonomy",
        metavar="TYPE",
        help="A command type the agent may send on its own (repeatable).",
        show_default=False,
    ),
]
LabelOption = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="K=V", help="A label (repeatable).", show_default=False),
]
PriorityOption = Annotated[
    int | None,
    typer.Option(
        "--priority", min=-1000, max=1000, help="Scheduling priority.", show_default=False
    ),
]
WaitTimeoutOption = Annotated[
    float,
    typer.Option("--wait-timeout", min=0.1, help="Seconds --wait waits (then exit 3)."),
]


@app.command("deploy", epilog=EXIT_CODES)
def deploy(
    name: Annotated[
        str | None, typer.Argument(help="The agent's name.", show_default=False)
    ] = None,
    file: FileOption = None,
    module: ModuleOption = None,
    module_sha256: ModuleShaOption = None,
    version: VersionOption = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            min=0,
            max=limits.MAX_REPLICAS,
            help="How many replicas should run.",
            show_default="1",
        ),
    ] = None,
    memory_mb: MemoryOption = None,
    fuel_per_s: FuelOption = None,
    namespace: AgentNamespaceOption = None,
    autonomy: AutonomyOption = None,
    label: LabelOption = None,
    priority: PriorityOption = None,
    autoscale: Annotated[
        str | None,
        typer.Option("--autoscale", metavar="K=V,...", help=autoscaling.HELP, show_default=False),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the agent runs (exit 1 if it fails).")
    ] = False,
    wait_timeout: WaitTimeoutOption = 60.0,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Deploy a new agent from a WebAssembly module (`rollout` gives one a new version)."""
    from schemas import names

    flags = SpecFlags(
        version=version,
        module=module,
        module_sha256=module_sha256,
        memory_mb=memory_mb,
        fuel_per_s=fuel_per_s,
        autonomy=tuple(autonomy or ()),
        labels=tuple(label or ()),
        priority=priority,
    )

    async def main() -> int:
        settings = connect.load_settings()
        spec_file = load_agent_file(file) if file is not None else None
        agent_name, ns = _target(name, namespace, spec_file)
        spec = flags.apply(spec_file.spec if spec_file else {})
        spec.setdefault("version", "v1")
        if "module" not in spec:
            raise CliError(
                "deploy needs a module: --module FILE.wasm, --module-sha256 HEX, "
                "or spec.module in the spec file",
                code=EXIT_USAGE,
            )
        data: dict[str, Any] = {"namespace": ns, "name": agent_name, "spec": spec}
        count = replicas if replicas is not None else spec_file.replicas if spec_file else None
        if count is not None:
            data["replicas"] = count
        from_file = spec_file.autoscale if spec_file else None
        if autoscale is not None or from_file is not None:
            base = from_file if isinstance(from_file, dict) else None
            if from_file is not None and base is None:
                raise CliError("the spec file's autoscale must be an object", code=EXIT_USAGE)
            data["autoscale"] = autoscaling.policy(autoscaling.parse(autoscale or ""), base)
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.client(nats_url, settings, streams=streams, timeout=timeout) as swarm:
            issued = await swarm.agents.deploy(
                ns,
                agent_name,
                spec,
                replicas=data.get("replicas"),
                autoscale=data.get("autoscale"),
            )
            # The Hive names a new agent after the command that created it.
            agent_id = issued.deployed_agent() or issued.sent.id
            conclude(
                issued,
                output,
                what=f"deploy of {ns}/{agent_name}",
                done=f"agent {ns}/{agent_name} deployed (id {agent_id})",
                namespace=ns,
            )
            if wait:
                await wait_running(
                    await swarm.queries(),
                    ns,
                    agent_name,
                    agent_id,
                    at_least=issued.outcome.seq,
                    within=wait_timeout,
                    quiet=output != Format.TABLE,
                )
        return EXIT_OK

    finish(main())


async def wait_running(
    queries: HiveQueries,
    namespace: str,
    name: str,
    agent_id: str,
    *,
    at_least: int,
    within: float,
    quiet: bool = False,
    version: str | None = None,
    earlier: frozenset[str] = frozenset(),
) -> None:
    """Poll the agent until it is running; `failed` is exit 1, running out of time exit 3.

    With `version` (a rollout), until the rollout to it completed with every desired replica of
    that version running; a replica of it that failed, or the rollout undone (rolled back,
    reverted), is exit 1. Replicas in `earlier` (there before the rollout) are not its own.
    """
    import asyncio

    from swarm.client.errors import UNAVAILABLE, ClientError

    label = f"{namespace}/{name}"
    describe_it = f"`swarm agent describe {name} -n {namespace}`"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen: tuple[str, str] | None = None
    while True:
        try:
            agent = await queries.agent_detail_by_id(agent_id, at_least=at_least)
        except ClientError as exc:
            # One poll the Hive did not answer in time (a loaded machine: seen beside four busy
            # loops) is no verdict on the agent: ask again until the wait's own time is up.
            if exc.code != UNAVAILABLE or loop.time() >= deadline:
                raise
            await asyncio.sleep(WAIT_POLL)
            continue
        state, reason = agent.status, agent.reason
        if agent.deleted:
            raise CliError(f"agent {label} was deleted while waiting for it", code=EXIT_FAILED)
        if (state, reason) != seen:
            seen = (state, reason)
            status(f"{label}: {state} ({reason})")
        if version is None:
            desired = agent.replicas.desired
            # Zero replicas wanted is "stopped" for good: there is nothing to wait for.
            done = state == "running" or (state == "stopped" and desired == 0)
            failure = f"agent {label} failed: {reason}" if state == "failed" else None
            finished = f"agent {label} is {state} ({reason})"
            unplaced = state == "requested"
            late = f"agent {label} is not running after {within:g}s: {state} ({reason})"
        else:
            done, failure, unplaced = _rollout_progress(agent, version, earlier)
            finished = f"agent {label} rolled out {version}: {state} ({reason})"
            late = (
                f"the rollout of {label} to {version} is not done after {within:g}s: "
                f"{state} ({reason})"
            )
        if done and agent.rollout is None:
            if not quiet:
                stdout_console().print(Text(finished))
            return
        if failure is not None:
            raise CliError(
                failure,
                code=EXIT_FAILED,
                hint=f"{describe_it} shows its replicas and recent events",
            )
        if loop.time() >= deadline:
            hint = (
                "no replica is placed yet: is a scheduler running, and does a pod have room? "
                "(`swarm pod ls`)"
                if unplaced
                else f"{describe_it} shows where it is stuck"
            )
            raise CliError(late, code=EXIT_NO_OUTCOME, hint=hint)
        await asyncio.sleep(WAIT_POLL)


def _rollout_progress(
    agent: AgentDetailView, version: str, earlier: frozenset[str]
) -> tuple[bool, str | None, bool]:
    """(done, why it failed, whether one waits for a place) of a rollout to `version`, from the
    replicas it started.

    Judged on those replicas, not on the agent's status: a replica that failed before the
    rollout keeps the status `failed`, and may be what the rollout fixes.
    """
    label = f"{agent.namespace}/{agent.name}"
    mine = [r for r in agent.instances if r.version == version and r.replica_id not in earlier]
    failed = [r for r in mine if r.phase == "failed"]
    if failed:
        why = f"replica {failed[0].replica_id} failed: {failed[0].reason}"
        return False, f"the rollout of {label} to {version} failed: {why}", False
    current = agent.version
    if current != version:
        undone = f"the rollout of {label} to {version} was undone: it runs {current} now"
        return False, undone, False
    running = sum(1 for r in mine if r.phase == "running")
    unplaced = any(r.phase == "requested" for r in mine)
    return running >= agent.replicas.desired, None, unplaced


# --- ls ------------------------------------------------------------------------------------------


@app.command("ls")
def ls(
    namespace: AgentNamespaceOption = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Agents of every namespace.")
    ] = False,
    output: OutputOption = Format.TABLE,
    watch: WatchOption = False,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """List agents with their status and how many replicas are ready."""
    ns = None if all_namespaces else namespace or DEFAULT_NAMESPACE
    listing(
        nats_url,
        "agents",
        lambda queries, floor: queries.agents(ns, at_least=floor),
        lambda agents: _agents_drawn(agents, ns),
        output,
        watch=watch,
        title="agents in all namespaces" if ns is None else f"agents in {ns}",
    )


def _agents_drawn(agents: Sequence[Mapping[str, Any]], namespace: str | None) -> RenderableType:
    """The Hive's answer (printed as it came with `-o json`) read as views, as a table."""
    from schemas.views import AgentView
    from swarm.client.queries import parse_views

    return agents_table(parse_views(AgentView, agents), namespace)


def agents_table(agents: Sequence[AgentView], namespace: str | None) -> RenderableType:
    if not agents:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        return Nothing(f"no agents in {where}")
    now = datetime.now(UTC)
    rows = []
    for a in agents:
        version = a.version
        if a.rollout is not None:
            version = f"{a.rollout.from_version}→{a.rollout.version}"
        rows.append(
            [
                a.namespace,
                a.name,
                version,
                styled(a.status),
                f"{a.replicas.running}/{a.replicas.desired}",
                trust_text(a),
                age(a.created_at, now),
                printable(a.reason),
            ]
        )
    columns = ["NAMESPACE", "NAME", "VERSION", "STATUS", "READY", "TRUST", "AGE", "REASON"]
    return table(columns, rows, title=None)


# --- describe ------------------------------------------------------------------------------------


@app.command("describe")
def describe(
    name: AgentNameArgument,
    namespace: AgentNamespaceOption = None,
    output: OutputOption = Format.TABLE,
    watch: WatchOption = False,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Show one agent: spec, replicas, versions, rollout in progress, and its recent events."""
    ns = namespace or DEFAULT_NAMESPACE

    async def read(log: EventLog, queries: HiveQueries, floor: int) -> dict[str, Any]:
        from schemas.views import AgentDetailView
        from swarm.client.queries import parse_views

        # `-o json` prints the answer as it came; its view names the events to read, so an
        # answer that is not one is a clear error here in every format.
        agent = await queries.agent(ns, name, at_least=floor)
        view = parse_views(AgentDetailView, [agent])[0]
        recent = await recent_events(log, view.agent_id, view.last_seq)
        return {"agent": agent, "events": [_event_view(d) for d in recent]}

    show_read(nats_url, read, describe_view, output, watch=watch, title=f"agent {ns}/{name}")


async def recent_events(
    log: EventLog, agent_id: str, last_seq: int, limit: int = RECENT_EVENTS
) -> list[Delivery]:
    """The agent's last `limit` events, read from the log (see `swarm.client.history`)."""
    from swarm.client import history

    return await history.recent_events(log, "agent", agent_id, last_seq, limit)


def _event_view(delivery: Delivery) -> dict[str, Any]:
    try:
        body = json.loads(delivery.data)
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    data = body.get("data")
    data = _without_module_bytes(data) if isinstance(data, dict) else data
    return {
        "seq": delivery.stream_seq,
        "time": body.get("time") or delivery.timestamp.isoformat(),
        "type": body.get("type"),
        "id": body.get("id"),
        "data": data,
    }


def _without_module_bytes(data: dict[str, Any]) -> dict[str, Any]:
    """A deployed or rollout event's data with the inline module replaced by its size."""
    spec = data.get("spec")
    module = spec.get("module") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(module, dict) or "inline" not in module:
        return data
    try:
        size: int | None = len(base64.b64decode(str(module["inline"])))
    except ValueError:
        size = None
    stripped = {k: v for k, v in module.items() if k != "inline"}
    return {**data, "spec": {**spec, "module": {**stripped, "inline_bytes": size}}}


def describe_view(value: Mapping[str, Any]) -> RenderableType:
    """`describe`'s read (the Hive's answer as it came, and the agent's recent events) drawn,
    the answer read as its view."""
    from schemas.views import AgentDetailView
    from swarm.client.queries import parse_views

    agent = parse_views(AgentDetailView, [value["agent"]])[0]
    return describe_agent(agent, value.get("events") or [])


def describe_agent(agent: AgentDetailView, events: Sequence[Mapping[str, Any]]) -> RenderableType:
    replicas = agent.replicas
    rollout = agent.rollout
    instances = agent.instances
    rollout_text = "<none>"
    if rollout is not None:
        new = sum(1 for r in instances if r.version == rollout.version and r.phase == "running")
        kind = "rollback" if rollout.rollback else "rollout"
        rollout_text = (
            f"{kind} {rollout.from_version} → {rollout.version}: {new}/{replicas.desired} "
            "new replicas running"
        )
    created = agent.created_at
    summary = _key_values(
        [
            ("Name", agent.name),
            ("Namespace", agent.namespace),
            ("ID", agent.agent_id),
            ("Status", Text.assemble(styled(agent.status), f" ({agent.reason})")),
            ("Version", agent.version),
            (
                "Replicas",
                f"{replicas.running} running / {replicas.desired} desired "
                f"({replicas.active} active)",
            ),
            ("Rollout", rollout_text),
            ("Autoscale", autoscaling.describe(agent.autoscale)),
            ("Created", f"{_when(created)} ({age(created)} ago)" if created else "?"),
        ]
    )
    # The spec stays a mapping in the view: it is the deployed AgentSpec without its module's
    # bytes, which the spec model itself would refuse.
    parts: list[RenderableType] = [summary, Text(""), _spec_view(agent.spec)]

    shown = [r for r in instances if r.phase != "stopped"]
    hidden = len(instances) - len(shown)
    replica_rows = [
        [
            r.replica_id,
            r.version,
            styled(r.phase),
            _none(r.pod_id),
            r.crashes,
            _none(r.snapshot),
            printable(r.reason + (f" (restarts at {_when(r.restart_at)})" if r.restart_at else "")),
        ]
        for r in shown
    ]
    parts += [Text(""), Text("Replicas:", style="bold")]
    if replica_rows:
        columns = ["REPLICA", "VERSION", "PHASE", "POD", "CRASHES", "SNAPSHOT", "REASON"]
        parts.append(table(columns, replica_rows, title=None))
    else:
        parts.append(Text("  <none>", style="dim"))
    if hidden:
        parts.append(Text(f"  (+{hidden} stopped; -o json lists them)", style="dim"))

    # The Hive moves a version to the end of its history whenever it is rolled out again, and a
    # rollback without --to-version goes to the one before the current.
    history = agent.history
    current = agent.version
    version_rows = [
        [v, "current" if v == current else "rollback target" if i == len(history) - 2 else ""]
        for i, v in enumerate(history)
    ]
    parts += [Text(""), Text("Versions (most recently rolled out last):", style="bold")]
    parts.append(table(["VERSION", "NOTE"], version_rows, title=None))

    parts += health_parts(agent)

    event_rows = [
        [_when(e.get("time")), _short_type(e.get("type")), _event_summary(e.get("data"))]
        for e in events
    ]
    parts += [Text(""), Text(f"Events (last {RECENT_EVENTS}):", style="bold")]
    if event_rows:
        parts.append(table(["TIME (UTC)", "TYPE", "REASON"], event_rows, title=None))
    else:
        parts.append(Text("  <none>", style="dim"))
    return Group(*parts)


def _spec_view(spec: Mapping[str, Any]) -> Table:
    module = spec.get("module") or {}
    where = f"sha256 {module['sha256']}" if module.get("sha256") else "inline"
    resources = spec.get("resources") or {}
    limits = spec.get("limits") or {}
    restart = spec.get("restart") or {}
    labels = spec.get("labels") or {}
    env = spec.get("env") or {}
    return _key_values(
        [
            ("Module", f"{where} ({module.get('kind', 'core')})"),
            (
                "Resources",
                f"{resources.get('memory_mb')} MB, {resources.get('fuel_per_s'):,} fuel/s "
                "per replica",
            ),
            (
                "Limits",
                f"{limits.get('deadline_ms')} ms, {limits.get('fuel_per_call'):,} fuel per call",
            ),
            (
                "Restart",
                f"at most {restart.get('max_restarts')} in {restart.get('window_s'):g}s, "
                f"backoff {restart.get('backoff_s'):g}s..{restart.get('max_backoff_s'):g}s",
            ),
            ("Autonomy", _none(", ".join(spec.get("autonomy") or []))),
            ("Capabilities", _none(", ".join(spec.get("capabilities") or []))),
            ("Labels", _none(", ".join(f"{k}={v}" for k, v in sorted(labels.items())))),
            # Values may be secrets; describe is read over shoulders, so names only.
            ("Env", _none(", ".join(sorted(env)))),
            ("Priority", spec.get("priority", 0)),
        ]
    )


def _when(timestamp: Any) -> str:
    """A time as `2026-01-02 03:04:05` (UTC): a view's, parsed, or a log record's, a string."""
    if isinstance(timestamp, datetime):
        parsed = timestamp
    elif isinstance(timestamp, str):
        try:
            parsed = datetime.fromisoformat(timestamp)
        except ValueError:
            return timestamp
    else:
        return "?"
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short_type(type_: Any) -> str:
    from schemas import names

    text = str(type_ or "?")
    prefix = f"{names.EVENT_TYPE_PREFIX}.agent."
    return text.removeprefix(prefix)


def _event_summary(data: Any) -> str:
    """One line on what an agent event says, from its data (read leniently, like the log)."""
    if not isinstance(data, dict):
        return ""
    d: dict[str, Any] = data
    if "status" in d and "previous" in d:
        text = f"{d['previous']} → {d['status']}: {d.get('reason', '')}"
    elif "replicas" in d and "previous" in d:
        text = f"replicas {d['previous']} → {d['replicas']}"
        decision = d.get("autoscale")
        if isinstance(decision, dict):
            text += f" (autoscale {decision.get('direction')}: {decision.get('reason', '')})"
    elif "from_version" in d:
        spec = d.get("spec") or {}
        kind = "rollback" if d.get("rollback") else "rollout"
        text = (
            f"{kind} {d['from_version']} → {spec.get('version')} (max surge {d.get('max_surge')})"
        )
    elif "spec" in d:
        count = d.get("replicas")
        text = f"version {(d.get('spec') or {}).get('version')}, {count} replica" + (
            "" if count == 1 else "s"
        )
    elif "replica_id" in d:
        where = f" on {d['pod_id']}" if d.get("pod_id") else ""
        why = d.get("reason") or d.get("policy") or ""
        text = f"{d['replica_id']}{where}" + (f": {why}" if why else "")
    elif "version" in d:
        text = f"version {d['version']}"
    else:
        text = str(d.get("reason", ""))
    return printable(text)


# --- scale, rollout, rollback, stop, delete ------------------------------------------------------


@app.command("scale", epilog=EXIT_CODES)
def scale(
    name: AgentNameArgument,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            min=0,
            max=limits.MAX_REPLICAS,
            help="How many replicas should run.",
            show_default=False,
        ),
    ],
    namespace: AgentNamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Change how many replicas of an agent should run."""
    change_agent(
        name,
        namespace,
        lambda agents, ns: agents.scale(ns, name, replicas=replicas),
        command="scale",
        done=f"scaled to {replicas} replica{'s' if replicas != 1 else ''}",
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


@app.command("rollout", epilog=EXIT_CODES)
def rollout(
    name: Annotated[
        str | None, typer.Argument(help="The agent's name.", show_default=False)
    ] = None,
    file: FileOption = None,
    module: ModuleOption = None,
    module_sha256: ModuleShaOption = None,
    version: VersionOption = None,
    max_surge: Annotated[
        int | None,
        typer.Option(
            "--max-surge",
            min=1,
            max=1000,
            help="New replicas started beyond the desired count at once.",
            show_default="1",
        ),
    ] = None,
    memory_mb: MemoryOption = None,
    fuel_per_s: FuelOption = None,
    namespace: AgentNamespaceOption = None,
    autonomy: AutonomyOption = None,
    label: LabelOption = None,
    priority: PriorityOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait until the rollout completes (exit 1 if it fails or is undone)."
        ),
    ] = False,
    wait_timeout: WaitTimeoutOption = 60.0,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Roll out a new version: new replicas start before old ones stop.

    Without -f, the new version is the current spec with the given options changed; with -f, it
    is the spec in the file.
    """
    from schemas import names

    flags = SpecFlags(
        version=version,
        module=module,
        module_sha256=module_sha256,
        memory_mb=memory_mb,
        fuel_per_s=fuel_per_s,
        autonomy=tuple(autonomy or ()),
        labels=tuple(label or ()),
        priority=priority,
    )

    async def main() -> int:
        settings = connect.load_settings()
        spec_file = load_agent_file(file) if file is not None else None
        agent_name, ns = _target(name, namespace, spec_file)
        if spec_file is None and flags.version is None:
            raise CliError("rollout needs --version: the new version's name", code=EXIT_USAGE)
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.client(nats_url, settings, streams=streams, timeout=timeout) as swarm:
            queries = await swarm.queries()
            # The agent as it is: the base of the new spec without -f, and with --wait the
            # replicas that are not the rollout's.
            current: AgentDetailView | None = None
            if spec_file is None or wait:
                current = await queries.agent_detail(ns, agent_name, at_least=await swarm.floor())
            if spec_file is not None:
                spec = flags.apply(spec_file.spec)
            elif current is not None:
                spec = flags.apply(_reusable(current.spec, flags, f"{ns}/{agent_name}"))
            if "module" not in spec or "version" not in spec:
                raise CliError("the spec file's spec needs version and module", code=EXIT_USAGE)
            surge = (
                max_surge if max_surge is not None else spec_file.max_surge if spec_file else None
            )
            issued = await swarm.agents.rollout(ns, agent_name, spec, max_surge=surge)
            conclude(
                issued,
                output,
                what=f"rollout of {ns}/{agent_name}",
                done=f"agent {ns}/{agent_name} rolling out {spec['version']}",
                namespace=ns,
            )
            if wait and current is not None:
                before = frozenset(r.replica_id for r in current.instances)
                await wait_running(
                    queries,
                    ns,
                    agent_name,
                    current.agent_id,
                    at_least=issued.outcome.seq,
                    within=wait_timeout,
                    quiet=output != Format.TABLE,
                    version=str(spec["version"]),
                    earlier=before,
                )
        return EXIT_OK

    finish(main())


def _reusable(spec: Mapping[str, Any], flags: SpecFlags, label: str) -> dict[str, Any]:
    """The current spec as the base of the next version.

    Queries leave inline module bytes out, so an inline module cannot be carried over: the new
    version must name its module again.
    """
    result = dict(spec)
    module = result.pop("module", None)
    if flags.module is None and flags.module_sha256 is None:
        if not isinstance(module, dict) or not module.get("sha256"):
            raise CliError(
                f"agent {label} runs an inline module, which is not kept for reuse",
                code=EXIT_USAGE,
                hint="pass the module again: --module FILE.wasm (or --module-sha256 HEX)",
            )
        result["module"] = {"sha256": module["sha256"], "kind": module.get("kind", "core")}
    return result


@app.command("rollback", epilog=EXIT_CODES)
def rollback(
    name: AgentNameArgument,
    to_version: Annotated[
        str | None,
        typer.Option("--to-version", help="Version to go back to.", show_default="the previous"),
    ] = None,
    namespace: AgentNamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Roll back to an earlier version (a rollout in progress is aborted)."""
    change_agent(
        name,
        namespace,
        lambda agents, ns: agents.rollback(ns, name, to_version=to_version),
        command="rollback",
        done=f"rolling back to {to_version or 'the previous version'}",
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


@app.command("stop", epilog=EXIT_CODES)
def stop(
    name: AgentNameArgument,
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the log and `describe`.")
    ] = "stopped by request",
    namespace: AgentNamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Stop every replica; the agent and its versions are kept (`scale` starts it again)."""
    change_agent(
        name,
        namespace,
        lambda agents, ns: agents.stop(ns, name, reason=reason),
        command="stop",
        done=f"stopping: {reason}",
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


@app.command("delete", epilog=EXIT_CODES)
def delete(
    name: AgentNameArgument,
    namespace: AgentNamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Stop every replica and remove the agent (its events stay in the log)."""
    change_agent(
        name,
        namespace,
        lambda agents, ns: agents.delete(ns, name),
        command="delete",
        done="deleted",
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


@app.command("send")
def send(
    name: AgentNameArgument,
    message: Annotated[
        str,
        typer.Argument(
            help="The message: any text, by convention JSON; '-' reads stdin.", show_default=False
        ),
    ],
    namespace: AgentNamespaceOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the reply.")
    ] = 10.0,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Send one message to an agent and print its reply (one replica answers).

    An agent whose replicas are still coming up (just deployed, restarting) is waited for,
    within --timeout.

    Exit codes: 0 replied, 1 the agent or its pod reported an error (or the agent is unknown,
    failed or stopped), 3 no reply in time, 4 NATS unreachable.
    """
    ns = namespace or DEFAULT_NAMESPACE
    body = sys.stdin.buffer.read() if message == "-" else message.encode()

    async def main() -> int:
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings) as log:
            reply = await ask_agent(log, ns, name, body, timeout, identity=settings.identity)
        if reply.error:
            raise CliError(f"{ns}/{name}: {reply.text}", code=EXIT_FAILED)
        typer.echo(reply.text)
        if reply.status != "0":
            typer.echo(f"agent returned status {reply.status}", err=True)
            return EXIT_FAILED
        return EXIT_OK

    finish(main())


@dataclass(frozen=True, slots=True)
class AgentReply:
    text: str
    #: The agent's own return code (header Swarm-Status).
    status: str
    #: True when the platform refused or failed the message (header Swarm-Error).
    error: bool


async def ask_agent(
    log: EventLog, namespace: str, name: str, body: bytes, timeout: float, *, identity: str
) -> AgentReply:
    """Send one message to an agent over the mesh, signed as sent by `identity` when the
    connection has credentials (a stack's pods take signed messages alone), and wait for one
    replica's reply.

    An agent that exists but has no replica answering yet (just deployed, restarting, or its
    replica subscribing as the message went out) is asked again until `timeout` has passed,
    saying so once on stderr: the message waits for the agent, as its reply does.
    """
    import asyncio

    from schemas import names
    from swarm.client.eventlog import NoResponders, RequestTimeout
    from swarm.client.signing import MeshClaim

    subject = names.mesh_agent_subject(namespace, name)
    claim = MeshClaim(identity)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    said = False
    while True:
        try:
            reply = await log.request(
                subject, body, timeout=max(deadline - loop.time(), _MIN_REQUEST_S), claim=claim
            )
            break
        except NoResponders:
            refusal, coming = await _no_responder(log, namespace, name)
            if coming is None:
                raise refusal from None
            if loop.time() + _RETRY_S >= deadline:
                raise CliError(
                    f"no replica of {namespace}/{name} answered within {timeout:g}s: {coming}",
                    code=EXIT_NO_OUTCOME,
                    hint=refusal.hint,
                ) from None
            if not said:
                typer.echo(f"waiting for a replica of {namespace}/{name} to answer…", err=True)
                said = True
            await asyncio.sleep(_RETRY_S)
        except RequestTimeout:
            raise CliError(
                f"{namespace}/{name} did not reply within {timeout:g}s", code=EXIT_NO_OUTCOME
            ) from None
    answered = await _answered_by(log, reply, namespace, name)
    if answered is not None:
        raise CliError(f"{namespace}/{name}: {answered}", code=EXIT_FAILED)
    headers = reply.headers or {}
    return AgentReply(
        text=reply.data.decode("utf-8", "replace"),
        status=headers.get(names.HEADER_AGENT_STATUS, "0"),
        error=bool(headers.get(names.HEADER_AGENT_ERROR)),
    )


async def _answered_by(log: EventLog, reply: Message, namespace: str, name: str) -> str | None:
    """Why a signed answer is not the agent's, or None: its signature must hold and, when the
    stack's principals lie beside this connection's key (the owner's, in the data dir), it must
    come from the pod the log places the replica it names on, speaking as that agent
    (`swarm.domain.policy.answer_refusal`; the Hive says where the agent's replicas are, having
    read the log at least as far as the answer's placement). An unsigned answer is taken: the
    stack's pods sign when given its principals, an external server's may not."""
    from schemas import names
    from schemas.views import AgentDetailView
    from swarm.cli.queries import HiveQueries
    from swarm.client.access import answer_refusal
    from swarm.client.errors import ClientError
    from swarm.client.principals import LISTING, load
    from swarm.client.queries import parse_views
    from swarm.client.signing import mesh_signature_of

    answer = mesh_signature_of(reply.subject, reply.data, reply.headers)
    if answer is None:
        return None
    if not answer.valid:
        return f"the answer's signature does not hold ({answer.problem}): it is not the agent's"
    listing = log.credentials.parent / LISTING if log.credentials is not None else None
    if listing is None or not listing.exists():
        return None
    principal = load(listing).get(answer.signer)
    signer = (principal.name, principal.role) if principal is not None else None
    claim = answer.claim
    shown = f"{namespace}/{name}"
    if (reply.headers or {}).get(names.HEADER_AGENT_ERROR):
        # A pod's refusal ("forbidden: …"): its asker may not be allowed to read where the
        # agent runs, and it carries nothing of the agent's.
        return answer_refusal(signer, claim.identity, claim.replica, ("", shown), None)
    try:
        found = await HiveQueries(log).agent(namespace, name, at_least=claim.placed_seq)
    except ClientError as exc:  # no Hive answered, or the agent is gone meanwhile
        return f"who answered cannot be checked: {exc}"
    agent = parse_views(AgentDetailView, [found])[0]
    placed = {r.replica_id: r.pod_id for r in agent.instances}
    return answer_refusal(signer, claim.identity, claim.replica, (agent.agent_id, shown), placed)


#: How often `ask_agent` asks again while the agent's replicas come up, and the shortest wait
#: for one request.
_RETRY_S = 0.25
_MIN_REQUEST_S = 0.1
#: The statuses of an agent whose replicas are (or are about to be) up: worth waiting for.
_COMING: frozenset[str] = frozenset({"requested", "scheduled", "starting", "running", "degraded"})


async def _no_responder(log: EventLog, namespace: str, name: str) -> tuple[CliError, str | None]:
    """Why nobody answered on the agent's subject, and, when a replica may answer soon, how the
    agent is: the Hive knows whether the agent exists and how its replicas are.

    The mesh alone cannot tell a misspelt name from an agent whose replicas are all down, and
    the two need different fixes.
    """
    from schemas.views import AgentDetailView
    from swarm.cli.queries import HiveQueries, QueryFailed
    from swarm.client.eventlog import NotFound
    from swarm.client.queries import parse_views, read_floor

    describe_it = f"`swarm agent describe {name} -n {namespace}`"
    try:
        floor = await read_floor(log)
    except NotFound:  # a NATS server without Swarm's streams: no Hive has run there
        floor = 0
    try:
        answer = await HiveQueries(log).agent(namespace, name, at_least=floor)
    except QueryFailed as exc:
        if exc.error_code != "not_found":
            raise
        return CliError(
            f"agent {namespace}/{name} not found",
            code=EXIT_FAILED,
            hint=f"`swarm agent ls -n {namespace}` lists its agents, `-A` those of all namespaces",
        ), None
    except CliError:
        # No Hive to ask: say what is known for sure.
        return CliError(
            f"no replica of {namespace}/{name} is running to answer (and no Hive answered "
            "whether the agent exists)",
            code=EXIT_FAILED,
            hint="is the stack running? (`swarm status`)",
        ), None
    # Read outside the `try` above: an answer that is not the view is its own error, not "no
    # Hive answered".
    agent = parse_views(AgentDetailView, [answer])[0]
    replicas = agent.replicas
    state = (
        f"it is {agent.status} ({agent.reason}), "
        f"{replicas.running}/{replicas.desired} replicas running"
    )
    refusal = CliError(
        f"no replica of {namespace}/{name} is running to answer: {state}",
        code=EXIT_FAILED,
        hint=f"{describe_it} shows where its replicas are",
    )
    return refusal, state if agent.status in _COMING and replicas.desired > 0 else None


# --- logs ----------------------------------------------------------------------------------------

# `swarm logs` itself, registered here so that it keeps its place in `swarm agent --help`.
logs_cli.register_agent_verb(app)


@app.command("build")
def build(
    source: Annotated[
        Path,
        typer.Argument(help="The agent's Python file, e.g. app.py.", show_default=False),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write the component.", show_default="SOURCE.wasm"
        ),
    ] = None,
) -> None:
    """Build a Python agent into a WebAssembly component of the `swarm:agent` world.

    The file must define `class Handler(swarm_agent.Agent)` (see examples/counter-py). Runs
    componentize-py offline; deploy the result with `swarm agent deploy` or push it with
    `swarm module push`.
    """
    from swarm.cli.output import errors_to_exit

    with errors_to_exit():
        # Imported here: the build tooling is not needed by any other verb.
        from runtime.build import BadSource, BuildError, build_agent

        status(f"building {source} (componentize-py, 7 to 30 s)")
        try:
            result = build_agent(source, output)
        except BuildError as exc:
            code = EXIT_USAGE if isinstance(exc, BadSource) else EXIT_FAILED
            raise CliError(str(exc), code=code) from None
        typer.echo(
            f"built {result.output} ({result.size / 1024 / 1024:.1f} MiB, "
            f"{result.duration_s:.1f} s)"
        )


# --- autoscale -----------------------------------------------------------------------------------


@app.command("autoscale", epilog=EXIT_CODES)
def autoscale(
    name: AgentNameArgument,
    min_replicas: Annotated[
        int | None,
        typer.Option("--min", min=1, max=limits.MAX_REPLICAS, help="Fewest replicas."),
    ] = None,
    max_replicas: Annotated[
        int | None,
        typer.Option("--max", min=1, max=limits.MAX_REPLICAS, help="Most replicas."),
    ] = None,
    target_rate: Annotated[
        float | None,
        typer.Option(
            "--target-rate",
            min=0.001,
            help="Messages/s one replica should carry (default: learned from its busy time).",
        ),
    ] = None,
    target_queue: Annotated[
        float | None,
        typer.Option("--target-queue", min=0.001, help="Waiting messages per replica to aim for."),
    ] = None,
    cooldown: Annotated[
        float | None, typer.Option("--cooldown", min=0, help="Seconds between two decisions.")
    ] = None,
    scale_down_after: Annotated[
        float | None,
        typer.Option(
            "--scale-down-after", min=0, help="Seconds of low demand before scaling down."
        ),
    ] = None,
    horizon: Annotated[
        float | None,
        typer.Option(
            "--horizon", min=0.001, help="Seconds ahead to forecast (replica start + margin)."
        ),
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="Forecast: holt (trend) or ewma (level).")
    ] = None,
    set_: Annotated[
        str | None,
        typer.Option("--set", metavar="K=V,...", help=autoscaling.HELP, show_default=False),
    ] = None,
    off: Annotated[
        bool, typer.Option("--off", help="Stop autoscaling (replicas stay as they are).")
    ] = False,
    namespace: AgentNamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Set an agent's autoscaling policy (like `kubectl autoscale`); `scale` sets a count.

    Options not given keep the agent's current policy (or the defaults). The autoscaler in the
    scheduler forecasts the agent's message rate and queue depth and scales it within the bounds.
    """
    from schemas import names

    ns = namespace or DEFAULT_NAMESPACE
    given = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_rate": target_rate,
        "target_queue": target_queue,
        "cooldown_s": cooldown,
        "scale_down_after_s": scale_down_after,
        "horizon_s": horizon,
        "method": method,
    }

    async def main() -> int:
        flags: dict[str, Any] = autoscaling.parse(set_ or "")
        flags.update({k: v for k, v in given.items() if v is not None})
        if off and flags:
            raise CliError("--off takes no other autoscaling option", code=EXIT_USAGE)
        settings = connect.load_settings()
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.client(nats_url, settings, streams=streams, timeout=timeout) as swarm:
            policy: AutoscalePolicy | None = None
            if not off:
                # The options given change the current policy; the others stay.
                queries = await swarm.queries()
                current = await queries.agent_detail(ns, name, at_least=await swarm.floor())
                base = current.autoscale
                policy = autoscaling.checked(
                    flags, None if base is None else base.model_dump(mode="json")
                )
            issued = await swarm.agents.autoscale(
                ns, name, None if policy is None else policy.model_dump(mode="json")
            )
        done = (
            f"agent {ns}/{name} is no longer autoscaled"
            if policy is None
            else f"agent {ns}/{name} autoscaled: {autoscaling.describe(policy)}"
        )
        conclude(issued, output, what=f"autoscale of {ns}/{name}", done=done, namespace=ns)
        return EXIT_OK

    finish(main())


# The Hive's quarantine verbs are agent verbs too (`swarm agent quarantine|release`).
healing.register(app)
