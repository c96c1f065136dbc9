"""How an agent is behaving, for `swarm agent describe/ls` and `swarm debug`: its trust, whether
it is quarantined, the Observer's recent findings and what the Hive did about them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from swarm.cli.output import table
from swarm.cli.timeline import printable

if TYPE_CHECKING:
    # Typed only: the views bring pydantic and the models, which a `swarm` call imports once
    # a verb has read an answer, never at start.
    from schemas.views import AgentDetailView, AgentView

#: Findings shown by describe (the Hive keeps the last 20; `-o json` has them all).
SHOWN_ANOMALIES = 5
_SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def trust_text(agent: AgentView) -> Text:
    """The trust score, red when low, with a quarantine mark."""
    trust = agent.trust
    style = "red" if trust < 0.4 else "yellow" if trust < 0.7 else "green"
    text = Text(f"{trust:.2f}", style=style)
    if agent.quarantined is not None:
        text.append(" Q", style="bold red")
    return text


def health_parts(agent: AgentDetailView) -> list[RenderableType]:
    """Trust, quarantine, recent findings and healing actions, as describe sections."""
    quarantined = agent.quarantined
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(
        "Trust", Text.assemble(trust_text(agent), f" ({printable(agent.reputation.reason)})")
    )
    grid.add_row(
        "Quarantine",
        Text(printable(f"yes, since {quarantined.at.isoformat()}: {quarantined.reason}"), "red")
        if quarantined is not None
        else Text("no"),
    )
    parts: list[RenderableType] = [Text(""), grid]

    anomalies = agent.anomalies
    parts += [Text(""), Text(f"Anomalies (last {SHOWN_ANOMALIES}):", style="bold")]
    if anomalies:
        rows = [
            [
                _stamp(a.at),
                _severity(a.severity),
                a.kind,
                f"{a.score:.2f}",
                a.replica_id or "-",
                printable(a.summary),
            ]
            for a in anomalies[-SHOWN_ANOMALIES:]
        ]
        columns = ["TIME (UTC)", "SEVERITY", "KIND", "SCORE", "REPLICA", "SUMMARY"]
        parts.append(table(columns, rows, title=None))
    else:
        parts.append(Text("  <none>", style="dim"))

    actions = agent.healing
    parts += [Text(""), Text("Healing actions:", style="bold")]
    if actions:
        rows = [[_stamp(h.at), h.action, h.replica_id or "-", printable(h.reason)] for h in actions]
        parts.append(table(["TIME (UTC)", "ACTION", "REPLICA", "REASON"], rows, title=None))
    else:
        parts.append(Text("  <none>", style="dim"))
    return parts


def _stamp(at: datetime | None) -> str:
    """A finding's time to the second, as the Hive wrote it (ISO 8601, `T` and all).

    "None" for a finding without a time is what this column showed when it printed the raw
    answer; kept so that the typed rendering changes no output.
    """
    return "None" if at is None else at.isoformat()[:19]


def _severity(value: str) -> Text:
    return Text(value, style=_SEVERITY_STYLES.get(value, ""))
