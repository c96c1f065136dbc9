"""Stream processing on JetStream with faust-streaming: tables, windows, exactly-once state.

A service declares tables and processors on a `StreamApp` and runs it::

    app = StreamApp("observer", settings)
    app.table("crashes", default=int)
    app.table("recent", default=int, window=Tumbling(size=60, expires=600))

    @app.processor(stream=names.STREAM_EVENTS, subjects=[...], durable="observer")
    def count(tables: Tables, event: StreamEvent) -> None:
        tables["crashes"][event.envelope.data.agent_id] += 1
        tables["recent"][event.envelope.data.agent_id] += 1

    await app.run()          # or: async with app: ...

Handlers are plain functions of (tables, event): they run in stream order, one batch at a time,
only change tables and may return envelopes to append. On start the tables are recovered from
their JetStream changelog before any event is read; each batch's table changes are written,
then the processor's position, before the batch is acked; keys of a commit whose position never
landed are rolled back on recovery, so after any crash the tables equal exactly one application
of every event. Malformed events and
events whose handler keeps raising go to the dead-letter stream with the reason; the app goes on.
See README.md next to this file for the details and the measured cost.
"""

from swarm.kernel.streaming._app import (
    COMMIT_KEYS,
    MAX_BATCH,
    Handler,
    Hopping,
    Stats,
    Status,
    StreamApp,
    StreamEvent,
    Tables,
    Tumbling,
    Window,
)

__all__ = [
    "COMMIT_KEYS",
    "MAX_BATCH",
    "Handler",
    "Hopping",
    "Stats",
    "Status",
    "StreamApp",
    "StreamEvent",
    "Tables",
    "Tumbling",
    "Window",
]
