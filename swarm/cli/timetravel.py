"""`swarm timeline --at` and `swarm timeline diff A B`: print the Hive's state at a point of the
log, and what changed between two points, as `swarm.client.timetravel` rebuilds them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_OK,
    Format,
    StreamFormat,
    emit,
    render,
    run,
    status,
    stdout_console,
    table,
)
from swarm.client.timetravel import (
    Change,
    Point,
    Snapshot,
    check_order,
    diff_states,
    fold_pair,
    fold_until,
)

if TYPE_CHECKING:
    from swarm.client.settings import Settings

_VALUE_LIMIT = 60


# --- Printing ------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = render(value, StreamFormat.JSONL) if not isinstance(value, str) else value
    text = "".join(ch if ch.isprintable() else "·" for ch in text)
    return text if len(text) <= _VALUE_LIMIT else text[: _VALUE_LIMIT - 1] + "…"


def _when(snapshot: Snapshot) -> str:
    if snapshot.time is None:
        return "before the first event" if snapshot.applied_seq == 0 else "no time given"
    return snapshot.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def print_snapshot(snapshot: Snapshot, fmt: StreamFormat) -> None:
    if fmt != StreamFormat.TABLE:
        emit(snapshot.as_json(), Format.JSON if fmt == StreamFormat.JSON else fmt)
        return
    state = snapshot.state
    console = stdout_console()
    console.print(
        Text(
            f"Hive state at #{snapshot.applied_seq} ({_when(snapshot)}), "
            f"digest {snapshot.digest[:16]}"
        )
    )
    namespaces = state["namespaces"]
    console.print(
        table(
            ["NAMESPACE", "AGENTS", "REPLICAS", "MEMORY MB", "QUOTA"],
            [
                [
                    name,
                    ns["usage"]["agents"],
                    ns["usage"]["replicas"],
                    ns["usage"]["memory_mb"],
                    _short({k: v for k, v in ns["quota"].items() if v is not None}),
                ]
                for name, ns in sorted(namespaces.items())
            ],
            title="namespaces",
        )
    )
    agents = sorted(state["agents"].values(), key=lambda a: (a["namespace"], a["name"]))
    console.print(
        table(
            ["NAMESPACE", "NAME", "AGENT ID", "VERSION", "STATUS", "DESIRED", "RUNNING"],
            [
                [
                    a["namespace"],
                    a["name"] + (" (deleted)" if a["deleted"] else ""),
                    a["agent_id"],
                    a["spec"]["version"],
                    a["status"],
                    a["replicas_desired"],
                    sum(r["phase"] == "running" for r in a["replicas"].values()),
                ]
                for a in agents
            ],
            title="agents",
        )
    )
    pods = sorted(state["pods"].values(), key=lambda p: p["pod_id"])
    console.print(
        table(
            ["POD", "STATUS", "ZONE", "REPLICAS", "MEMORY MB USED/CAP"],
            [
                [
                    p["pod_id"],
                    p["status"],
                    p["zone"],
                    len(p["replicas"]),
                    f"{p['used_memory_mb']}/{p['capacity']['memory_mb']}",
                ]
                for p in pods
            ],
            title="pods",
        )
    )


def print_diff(first: Snapshot, second: Snapshot, changes: list[Change], fmt: Format) -> None:
    if fmt != Format.TABLE:
        emit(
            {
                "from": {k: v for k, v in first.as_json().items() if k != "state"},
                "to": {k: v for k, v in second.as_json().items() if k != "state"},
                "changes": [c.as_json() for c in changes],
            },
            fmt,
        )
        return
    console = stdout_console()
    console.print(
        Text(
            f"#{first.applied_seq} ({_when(first)}) → "
            f"#{second.applied_seq} ({_when(second)}): {len(changes)} change(s)"
        )
    )
    if changes:
        marks = {"added": "+", "removed": "-", "changed": "~"}
        console.print(
            table(
                ["", "PATH", "BEFORE", "AFTER"],
                [
                    [
                        marks[c.op],
                        c.path,
                        _short(c.before) if c.op != "added" else "",
                        _short(c.after) if c.op != "removed" else "",
                    ]
                    for c in changes
                ],
                title=None,
            )
        )


# --- Verbs ---------------------------------------------------------------------------------------


async def show_at(
    *, target: connect.NatsTarget, settings: Settings, point: Point, output: StreamFormat
) -> int:
    """`swarm timeline --at POINT`."""
    from schemas import names

    async with connect.session(target, settings, streams=[names.STREAM_EVENTS]) as log:
        end = await log.last_sequence(names.STREAM_EVENTS)
        (snapshot,) = await fold_until(log, [point])
    if point.seq is not None and point.seq > end:
        status(f"note: the log ends at #{end}; this is the state after its last event")
    print_snapshot(snapshot, output)
    return EXIT_OK


def register(group: typer.Typer) -> None:
    """Add `swarm timeline diff` to the timeline group."""

    @group.command("diff")
    def diff(
        first: Annotated[str, typer.Argument(help="From: a sequence (1234) or a time.")],
        second: Annotated[str, typer.Argument(help="To: a sequence or a time.")],
        output: Annotated[Format, typer.Option("--output", "-o", help="Output format.")] = (
            Format.TABLE
        ),
        nats_url: connect.NatsUrlOption = None,
    ) -> None:
        """What changed in the Hive's state between two points of the log."""
        from schemas import names

        async def main() -> int:
            now = datetime.now(UTC)
            a, b = Point.parse(first, now=now), Point.parse(second, now=now)
            check_order(a, b)  # before connecting: a usage error needs no server
            target, settings = connect.locate(nats_url)
            async with connect.session(target, settings, streams=[names.STREAM_EVENTS]) as log:
                before, after = await fold_pair(log, a, b)
            print_diff(before, after, diff_states(before.state, after.state), output)
            return EXIT_OK

        run(main())
