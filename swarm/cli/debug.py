"""`swarm debug <agent>`: one screen about a live agent, and a way to poke it.

Shows, from the running stack: the agent's status, version, trust and quarantine (Hive query);
its replicas and their pods; the Observer's recent findings and the healing actions taken; its
recent log lines (SWARM_LOGS); the kv state of each replica as last saved (the snapshot bucket,
newest revision per replica key); and, with `--listen`, the messages sent to it meanwhile (the
mesh is request-reply and nothing stores it, so messages are only seen live, by a plain
subscriber next to the replicas' queue group, which never answers).

`--send MESSAGE` sends one message first and shows the reply (as `swarm agent send`);
`-i` then reads messages from stdin, one per line, until EOF (`:state` redraws the screen).
"""

from __future__ import annotations

import base64
import sys
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from swarm.cli import connect
from swarm.cli.agent import ask_agent
from swarm.cli.health import health_parts
from swarm.cli.logs import format_line
from swarm.cli.output import EXIT_OK, CliError, Format, emit, stdout_console, table
from swarm.cli.timeline import printable
from swarm.cli.verbs import (
    DEFAULT_NAMESPACE,
    AgentNameArgument,
    AgentNamespaceOption,
    OutputOption,
    finish,
    styled,
)

if TYPE_CHECKING:
    from swarm.client.eventlog import EventLog, Message

#: Log lines shown, searched for in this recent past.
RECENT_LINES = 10
LOG_WINDOW = timedelta(minutes=10)
#: Longest value shown per kv key (the rest is elided; -o json has it whole).
_VALUE_PREVIEW = 80


def register(root: typer.Typer) -> None:
    root.command("debug")(debug)


def debug(
    name: AgentNameArgument,
    namespace: AgentNamespaceOption = None,
    send: Annotated[
        str | None,
        typer.Option("--send", help="Send this message (e.g. JSON) and show the reply."),
    ] = None,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive", "-i", help="Then send each line of stdin and print the reply."
        ),
    ] = False,
    listen: Annotated[
        float,
        typer.Option("--listen", min=0, help="Seconds to watch the messages sent to the agent."),
    ] = 0.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds to wait for a reply.")
    ] = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Inspect a live agent: status, replicas, trust, findings, logs, kv state; send messages."""
    import asyncio

    from schemas import names

    ns = namespace or DEFAULT_NAMESPACE

    async def main() -> int:
        target, settings = connect.locate(nats_url)
        streams = (names.STREAM_EVENTS, names.STREAM_LOGS)
        async with connect.session(target, settings, streams=streams) as log:
            seen: list[dict[str, Any]] = []
            sub = None
            if listen > 0:
                sub = await log.subscribe(names.mesh_agent_subject(ns, name), _recorder(seen))
            try:
                reply = None
                if send is not None:
                    reply = _reply_view(
                        await ask_agent(
                            log, ns, name, send.encode(), timeout, identity=settings.identity
                        )
                    )
                if listen > 0:
                    await asyncio.sleep(listen)
                report = await snapshot(log, ns, name)
            finally:
                if sub is not None:
                    await sub.close()
            report["messages"] = seen if listen > 0 else None
            report["reply"] = reply
            if output != Format.TABLE:
                emit(report, output)
            else:
                stdout_console().print(render(report))
            if interactive:
                await _prompt(log, ns, name, timeout, identity=settings.identity)
        return EXIT_OK

    finish(main())


async def snapshot(log: EventLog, namespace: str, name: str) -> dict[str, Any]:
    """Everything `swarm debug` shows, as one JSON-ready document."""
    from schemas import utcnow
    from schemas.views import AgentDetailView
    from swarm.cli.queries import HiveQueries
    from swarm.client.logs import agent_lines
    from swarm.client.queries import parse_views, read_floor

    # The document keeps the Hive's answer as it came (`-o json` prints it); its view says
    # which logs and replicas to read.
    agent = await HiveQueries(log).agent(namespace, name, at_least=await read_floor(log))
    view = parse_views(AgentDetailView, [agent])[0]
    lines: deque[dict[str, Any]] = deque(maxlen=RECENT_LINES)
    async for entry in agent_lines(log, view.agent_id, since=utcnow() - LOG_WINDOW):
        lines.append(entry)
    replicas = [r.replica_id for r in view.instances if r.phase not in ("stopped", "failed")]
    state = {replica_id: await _kv_state(log, replica_id) for replica_id in replicas}
    return {"agent": agent, "logs": list(lines), "kv": state}


async def _kv_state(log: EventLog, replica_id: str) -> dict[str, Any] | None:
    """The replica's kv state as last saved (newest revision of its key), None if never saved.

    Read the way a pod reads it (`runtime.snapshots.SnapshotStore`), so a state saved in chunks
    (larger than one NATS message) shows too."""
    from runtime.snapshots import SnapshotUnreadable, saved_state

    try:
        loaded = await saved_state(log, replica_id)
    except (SnapshotUnreadable, ValueError, KeyError) as exc:
        return {"error": f"unreadable snapshot: {exc}"}
    if loaded is None:
        return None
    kv, ref = loaded
    return {
        "revision": ref.revision,
        "ref": str(ref),
        "keys": {k: _value(v) for k, v in sorted(kv.items())},
    }


def _value(raw: bytes) -> dict[str, Any]:
    try:
        return {"text": raw.decode("utf-8"), "bytes": len(raw)}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode(), "bytes": len(raw)}


def _recorder(seen: list[dict[str, Any]]) -> Any:
    from schemas import utcnow

    async def record(msg: Message) -> None:
        seen.append(
            {
                "time": utcnow().isoformat(),
                "bytes": len(msg.data),
                "text": msg.data[:200].decode("utf-8", "replace"),
            }
        )

    return record


def _reply_view(reply: Any) -> dict[str, Any]:
    return {"text": reply.text, "status": reply.status, "error": reply.error}


async def _prompt(
    log: EventLog, namespace: str, name: str, timeout: float, *, identity: str
) -> None:
    import asyncio

    console = stdout_console()
    console.print(Text("type a message per line; :state redraws; Ctrl-D ends", style="dim"))
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        text = line.rstrip("\n")
        if not text:
            continue
        if text == ":state":
            console.print(render(await snapshot(log, namespace, name)))
            continue
        try:
            reply = await ask_agent(log, namespace, name, text.encode(), timeout, identity=identity)
        except CliError as exc:
            console.print(Text(f"! {exc.message}", style="red"))
            continue
        style = "red" if reply.error else ""
        console.print(Text(f"< {reply.text}", style=style))


def render(report: dict[str, Any]) -> RenderableType:
    from schemas.views import AgentDetailView
    from swarm.client.queries import parse_views

    agent = parse_views(AgentDetailView, [report["agent"]])[0]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("Agent", f"{agent.namespace}/{agent.name} ({agent.agent_id})")
    head.add_row("Status", Text.assemble(styled(agent.status), f" ({agent.reason})"))
    head.add_row("Version", agent.version)
    parts: list[RenderableType] = [head, Text(""), Text("Replicas:", style="bold")]
    replicas = [
        [r.replica_id, r.version, styled(r.phase), r.pod_id or "-", r.snapshot or "-"]
        for r in agent.instances
        if r.phase != "stopped"
    ]
    if replicas:
        parts.append(
            table(["REPLICA", "VERSION", "PHASE", "POD", "SNAPSHOT"], replicas, title=None)
        )
    else:
        parts.append(Text("  <none>", style="dim"))
    parts += health_parts(agent)

    parts += [Text(""), Text("KV state (as last saved):", style="bold")]
    kv: dict[str, Any] = report.get("kv") or {}
    if not kv:
        parts.append(Text("  <no running replica>", style="dim"))
    for replica_id, saved in kv.items():
        if saved is None:
            parts.append(Text(f"  {replica_id}: never saved", style="dim"))
            continue
        if "error" in saved:
            parts.append(Text(f"  {replica_id}: {saved['error']}", style="red"))
            continue
        rows = [
            [key, _preview(value), value.get("bytes")]
            for key, value in (saved.get("keys") or {}).items()
        ]
        parts.append(Text(f"  {replica_id} @ revision {saved.get('revision')}:"))
        if rows:
            parts.append(table(["KEY", "VALUE", "BYTES"], rows, title=None))
        else:
            parts.append(Text("    <empty>", style="dim"))

    parts += [Text(""), Text(f"Logs (last {RECENT_LINES}, past 10 min):", style="bold")]
    lines = report.get("logs") or []
    if lines:
        parts += [Text(format_line(entry, "text")) for entry in lines]
    else:
        parts.append(Text("  <none>", style="dim"))

    messages = report.get("messages")
    if messages is not None:
        parts += [Text(""), Text(f"Messages seen while listening ({len(messages)}):", style="bold")]
        parts += [Text(printable(f"  {m['time'][11:23]} {m['text']}")) for m in messages[-20:]]
    reply = report.get("reply")
    if reply is not None:
        parts += [Text(""), Text("Reply:", style="bold")]
        style = "red" if reply.get("error") else ""
        parts.append(Text(printable(str(reply.get("text"))), style=style))
    return Group(*parts)


def _preview(value: dict[str, Any]) -> str:
    text = value.get("text")
    if text is None:
        text = f"base64:{value.get('base64', '')}"
    text = printable(str(text))
    return text if len(text) <= _VALUE_PREVIEW else text[: _VALUE_PREVIEW - 1] + "…"
