"""How an agent is behaving, for `swarm agent describe/ls` and `swarm debug`: its trust, whether
it is quarantined, the Observer's recent findings and what the Hive did about them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from swarm.cli.output import table
from swarm.cli.timeline import printable

#: Findings shown by describe (the Hive keeps the last 20; `-o json` has them all).
SHOWN_ANOMALIES = 5
_SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def trust_text(agent: Mapping[str, Any]) -> Text:
    """The trust score, red when low, with a quarantine mark."""
    trust = agent.get("trust")
    if not isinstance(trust, int | float):
        return Text("?", style="dim")
    style = "red" if trust < 0.4 else "yellow" if trust < 0.7 else "green"
    text = Text(f"{trust:.2f}", style=style)
    if agent.get("quarantined"):
        text.append(" Q", style="bold red")
    return text


def health_parts(agent: Mapping[str, Any]) -> list[RenderableType]:
    """Trust, quarantine, recent findings and healing actions, as describe sections."""
    reputation = agent.get("reputation") or {}
    quarantined = agent.get("quarantined")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(
        "Trust",
        Text.assemble(trust_text(agent), f" ({printable(str(reputation.get('reason', '')))})"),
    )
    grid.add_row(
        "Quarantine",
        Text(printable(f"yes, since {quarantined.get('at')}: {quarantined.get('reason')}"), "red")
        if isinstance(quarantined, dict)
        else Text("no"),
    )
    parts: list[RenderableType] = [Text(""), grid]

    anomalies = [a for a in agent.get("anomalies") or [] if isinstance(a, dict)]
    parts += [Text(""), Text(f"Anomalies (last {SHOWN_ANOMALIES}):", style="bold")]
    if anomalies:
        rows = [
            [
                str(a.get("at", "?"))[:19],
                Text(
                    str(a.get("severity")), style=_SEVERITY_STYLES.get(str(a.get("severity")), "")
                ),
                a.get("kind"),
                f"{a.get('score', 0):.2f}",
                a.get("replica_id") or "-",
                printable(str(a.get("summary") or "")),
            ]
            for a in anomalies[-SHOWN_ANOMALIES:]
        ]
        columns = ["TIME (UTC)", "SEVERITY", "KIND", "SCORE", "REPLICA", "SUMMARY"]
        parts.append(table(columns, rows, title=None))
    else:
        parts.append(Text("  <none>", style="dim"))

    actions = [h for h in agent.get("healing") or [] if isinstance(h, dict)]
    parts += [Text(""), Text("Healing actions:", style="bold")]
    if actions:
        rows = [
            [
                str(h.get("at", "?"))[:19],
                h.get("action"),
                h.get("replica_id") or "-",
                printable(str(h.get("reason") or "")),
            ]
            for h in actions
        ]
        parts.append(table(["TIME (UTC)", "ACTION", "REPLICA", "REASON"], rows, title=None))
    else:
        parts.append(Text("  <none>", style="dim"))
    return parts


def _severity(value: Any) -> Text:
    return Text(str(value), style=_SEVERITY_STYLES.get(str(value), ""))
