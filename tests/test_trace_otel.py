"""A trace tree becomes OpenTelemetry spans: parents from causation, times from the log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from swarm.cli import otel
from swarm.cli.trace import Node

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node(id: str, kind: str, ms: float, *children: Node) -> Node:
    return Node(
        id=id,
        type=f"swarm.{kind}.{id}",
        kind=kind,
        time=T0 + timedelta(milliseconds=ms),
        subject=f"subject.{id}",
        source="test",
        cause=None,
        correlation="C1",
        summary=f"summary of {id}",
        seq=int(ms),
        children=list(children),
    )


def test_spans_follow_the_causation_tree_with_the_logs_times() -> None:
    tree = node(
        "deploy",
        "command",
        0,
        node("deployed", "event", 4),
        node("accepted", "outcome", 4),
        node("requested", "event", 4, node("propose", "command", 14, node("ok", "outcome", 170))),
    )
    exporter = InMemorySpanExporter()
    assert otel.export([tree], "C1", exporter) == 6
    spans = {s.attributes["swarm.id"]: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"deploy", "deployed", "accepted", "requested", "propose", "ok"}
    root = spans["deploy"]
    assert root.parent is None
    assert spans["deployed"].parent.span_id == root.context.span_id
    assert spans["propose"].parent.span_id == spans["requested"].context.span_id
    assert spans["ok"].parent.span_id == spans["propose"].context.span_id
    # One trace, its id derived from the correlation id (stable across exports).
    assert len({s.context.trace_id for s in spans.values()}) == 1
    again = InMemorySpanExporter()
    otel.export([tree], "C1", again)
    assert again.get_finished_spans()[0].context.trace_id == root.context.trace_id
    # A command lasts until its outcome; an event is an instant.
    assert root.end_time - root.start_time == 4_000_000
    assert spans["propose"].end_time - spans["propose"].start_time == 156_000_000
    assert spans["deployed"].end_time == spans["deployed"].start_time
    assert spans["deployed"].start_time == root.start_time + 4_000_000
    assert spans["deploy"].attributes["swarm.summary"] == "summary of deploy"
