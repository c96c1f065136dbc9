"""uvicorn's HTTP/1.1 protocol, answering a request its parser refuses with a problem document.

h11 refuses some requests before the application sees them (a `Transfer-Encoding` header with
no value, a malformed request line) and uvicorn then answers in plain text; every other error
of the API is a problem document (`problems.py`), so this one is too.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from swarm.gateway.problems import ProblemError, response_of


class ProblemH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        answer = response_of(None, ProblemError(400, "bad-request", "Bad request", msg))
        headers = [(b"connection", b"close"), *answer.raw_headers]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=bytes(answer.body)),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


__all__ = ["ProblemH11Protocol"]
