"""OpenTelemetry export of a `swarm trace`: each command and event becomes a span.

The log already holds the tree (causation ids) and the times, so spans are built after the fact
with explicit start and end times: a command's span lasts until its outcome was written, an
event's is the instant it was decided. The trace id is derived from the correlation id, so the
same chain exported twice is the same trace in the backend. Needs the `otel` extra.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from datetime import datetime

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from swarm.cli.trace import Node, decided_ms

SERVICE_NAME = "swarm"


class _CorrelationIds(IdGenerator):
    """Trace id from the correlation id (stable across exports); span ids random."""

    def __init__(self, correlation: str) -> None:
        self._trace_id = int.from_bytes(hashlib.sha256(correlation.encode()).digest()[:16], "big")

    def generate_trace_id(self) -> int:
        return self._trace_id

    def generate_span_id(self) -> int:
        return random.getrandbits(64) or 1


def export(roots: Sequence[Node], correlation: str, exporter: SpanExporter) -> int:
    """Send the trees as spans through `exporter`; returns how many were sent."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME}),
        id_generator=_CorrelationIds(correlation),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("swarm.trace")
    sent = 0
    for root in roots:
        sent += _emit(tracer, root, None)
    provider.shutdown()
    return sent


def otlp_exporter(endpoint: str) -> SpanExporter:
    """An OTLP/HTTP exporter to `endpoint` (e.g. http://localhost:4318/v1/traces)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def _emit(tracer: trace.Tracer, node: Node, parent: trace.Span | None) -> int:
    start = _ns(node.time)
    decided = decided_ms(node)
    end = start + int(decided * 1_000_000) if decided is not None and decided > 0 else start
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(
        node.type,
        context=context,
        start_time=start,
        kind=trace.SpanKind.INTERNAL,
        attributes={
            "swarm.id": node.id,
            "swarm.kind": node.kind,
            "swarm.source": node.source,
            "swarm.subject": node.subject,
            "swarm.seq": node.seq,
            "swarm.summary": node.summary,
        },
    )
    count = 1
    for child in node.children:
        count += _emit(tracer, child, span)
    span.end(end_time=max(end, start))
    return count


def _ns(moment: datetime | None) -> int:
    return int(moment.timestamp() * 1_000_000_000) if moment is not None else 0
