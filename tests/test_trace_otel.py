"""A trace tree becomes OpenTelemetry spans: parents from causation, times from the log."""

from __future__ import annotations

import re
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import swarm.cli
from swarm.cli import otel, trace
from swarm.cli.output import CliError
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


# --- Install hints -------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: `pip install NAME[extra]`, quoted or not.
INSTALL_EXTRA = re.compile(r"pip install '?([A-Za-z0-9_.-]+)\[([A-Za-z0-9_,-]+)\]")


def test_without_the_otel_extra_the_hint_names_the_real_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What an install without the extra looks like to `import`: the package is not there.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "swarm.cli.otel")
    monkeypatch.delattr(swarm.cli, "otel")
    with pytest.raises(CliError) as raised:
        trace._export([node("deploy", "command", 0)], "http://127.0.0.1:1/v1/traces")
    assert raised.value.message == "OpenTelemetry export needs the otel extra"
    assert raised.value.hint == f"pip install '{PROJECT['name']}[otel]'"


def test_every_install_hint_names_this_distribution_and_one_of_its_extras() -> None:
    sources = [
        path
        for folder in ("swarm", "services", "runtime", "schemas", "scripts", "examples")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".md", "") and path.is_file()
    ] + [ROOT / "README.md"]
    extras = set(PROJECT["optional-dependencies"])
    found = []
    for path in sources:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name, wanted in INSTALL_EXTRA.findall(text):
            found.append((path.relative_to(ROOT), name, wanted))
    assert found, "no install hints found: the pattern is wrong"
    wrong = [
        (where, f"{name}[{wanted}]")
        for where, name, wanted in found
        if name != PROJECT["name"] or not set(wanted.split(",")) <= extras
    ]
    assert not wrong, f"hints name another package or extra than {PROJECT['name']}: {wrong}"
