"""A real HTTP server on 127.0.0.1 for the `net` capability's tests (runtime/net.py).

Paths: `/hello` (200, text, header `x-test: yes`), `/echo` (the method, headers and body back as
JSON), `/redirect` (302 to /hello), `/big?n=N` (N bytes with a content-length), `/chunked?n=N` (N
bytes, chunked: no length announced), `/binary` (non-UTF-8 bytes), `/slow` (headers only after
`release` is set or 10 s). `requests` records the paths asked for, in order.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class HttpTarget:
    base: str
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base + path


def _handler(target: HttpTarget) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _any(self) -> None:
            # The client may have given up (the tests of cut-off requests).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer()

        def _answer(self) -> None:
            parts = urlsplit(self.path)
            target.requests.append(parts.path)
            query = parse_qs(parts.query)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if parts.path == "/hello":
                self._send(200, b"hello", x_test="yes", content_type="text/plain")
            elif parts.path == "/echo":
                echoed = {
                    "method": self.command,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("latin-1"),
                }
                self._send(200, json.dumps(echoed).encode(), content_type="application/json")
            elif parts.path == "/redirect":
                self._send(302, b"", location="/hello")
            elif parts.path == "/big":
                self._send(200, b"x" * int(query["n"][0]))
            elif parts.path == "/chunked":
                n = int(query["n"][0])
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, n, 4096):
                    chunk = b"y" * min(4096, n - start)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            elif parts.path == "/binary":
                self._send(200, b"\xff\x00\xfe", content_type="application/octet-stream")
            elif parts.path == "/slow":
                target.release.wait(10)
                self._send(200, b"late")
            else:
                self._send(404, b"no such path")

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any  # noqa: N815 (http.server's names)

    return Handler


@contextmanager
def http_target() -> Iterator[HttpTarget]:
    target = HttpTarget("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(target))
    server.daemon_threads = True
    target.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="http-target", daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
