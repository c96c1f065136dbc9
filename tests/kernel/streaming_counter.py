"""A counting stream app, run as its own process by the kill tests (tests/kernel/test_streaming.py).

    python -m tests.kernel.streaming_counter NATS_URL APP STREAM [--batch N] [--delay S]

Counts the JSON events `{"k": key}` of STREAM per key in the table `counts`, until killed.
`--delay` slows each event down so a kill lands in the middle of the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from swarm.kernel.settings import Settings
from swarm.kernel.streaming import StreamApp, StreamEvent, Tables


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("app")
    parser.add_argument("stream")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()

    app = StreamApp(args.app, Settings(nats_url=args.url), batch=args.batch, ack_wait=5.0)
    app.table("counts", default=int)

    @app.processor(stream=args.stream, durable=args.app, decode=json.loads)
    def count(tables: Tables, event: StreamEvent) -> None:
        if args.delay:
            time.sleep(args.delay)
        tables["counts"][event.envelope["k"]] += 1

    asyncio.run(app.run())


if __name__ == "__main__":
    main()
