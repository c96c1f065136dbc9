"""A request the HTTP parser refuses before the application sees it is answered, like every
other error of the API, with a problem document (uvicorn alone answers in plain text)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.gateway.client import PROBLEM, TOKEN
from tests.gateway.server import serving
from tests.helpers.stack import Stack

pytestmark = pytest.mark.timeout(60)

REFUSED = [
    # Found by schemathesis: an empty Transfer-Encoding.
    b"DELETE /v1/namespaces/a/agents/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n",
    b"GET /v1/agents HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"NOT A REQUEST LINE\r\n\r\n",
    b"GET /v1/agents HTTP/1.1\r\nBad Header Name: y\r\n\r\n",
]


async def exchange(base_url: str, request: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)  # the server closes after a 400
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", REFUSED)
async def test_a_request_the_parser_refuses_gets_a_problem_document(
    stack: Stack, request_bytes: bytes
) -> None:
    with serving(stack.url, TOKEN) as base_url:
        answer = await exchange(base_url, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 400"), answer
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == PROBLEM
    assert int(headers["content-length"]) == len(body)
    document = json.loads(body)
    assert document["status"] == 400
    assert document["type"].endswith("/bad-request")
    assert document["detail"]
