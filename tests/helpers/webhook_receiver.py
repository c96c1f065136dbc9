"""A real HTTP receiver for webhook tests: a threaded `http.server` on a free loopback port.

It answers each path with a scripted sequence of status codes (the last one repeats), records
every request (headers, body, when) and verifies signatures with the `standardwebhooks` library,
as a subscriber would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def event(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


@dataclass
class Receiver:
    secret: str
    #: path -> status codes to answer in turn; the last repeats. Unscripted paths answer 200.
    script: dict[str, list[int]] = field(default_factory=dict)
    #: path -> Location header for 3xx answers.
    locations: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def verify(self, request: Received) -> Any:
        """Raises `WebhookVerificationError` unless the signature checks out."""
        return Webhook(self.secret).verify(request.body, request.headers)

    def _answer(self, path: str) -> int:
        with self.lock:
            codes = self.script.get(path)
            if not codes:
                return 200
            return codes.pop(0) if len(codes) > 1 else codes[0]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if len(body) < length:
                # The sender died mid-request (a test kills the dispatcher): as any HTTP server
                # would, no request; recorded, its cut body failed the signature check.
                self.close_connection = True
                return
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            status = receiver._answer(self.path)
            with receiver.lock:
                receiver.received.append(
                    Received(self.path, dict(self.headers.items()), body, status, time.time())
                )
            self.send_response(status)
            if self.path in receiver.locations:
                self.send_header("location", receiver.locations[self.path])
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client closing its keep-alive connection is not worth a traceback


@contextmanager
def serve(receiver: Receiver) -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _handler(receiver))
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


__all__ = ["Received", "Receiver", "WebhookVerificationError", "serve"]
