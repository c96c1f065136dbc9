"""The API's limits, against a real uvicorn with a real nats-server and Hive behind it: the token
is checked before the body is read, bodies are bounded while they stream, and text the API
cannot read is a 400 problem wherever it comes (body, path, query, headers), never a 500. After
each, the API still serves."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from schemas.specs import INLINE_MODULE_MAX_BYTES
from swarm.client.errors import FieldProblem
from swarm.gateway import GatewaySettings, problems
from swarm.gateway.problems import ProblemError
from tests.gateway.client import AUTH, TOKEN, problem
from tests.gateway.server import serving
from tests.helpers.stack import Stack

pytestmark = pytest.mark.timeout(120)

JSON = {"content-type": "application/json"}
MIB = 1024 * 1024
#: What a careless client streams in these tests: the 150 MB of the issue.
HUGE = 150 * MIB
#: How much of a refused stream the client may get to send before the server closes the
#: connection: socket buffers and the server's first reads (a few MiB), nowhere near HUGE.
SLACK = 32 * MIB
#: Values for the path parameters of every route, so each can be called.
PARAMS = {
    "namespace": "default",
    "name": "nobody",
    "queue": "limits",
    "command_id": "no-such-command",
    "type_name": "swarm.cmd.agent.deploy",
    "trace_id": "no-such-trace",
    "webhook_id": "no-such-webhook",
}

#: Bodies sent as JSON that the API cannot read, and where each is refused (None: the body).
UNREADABLE: dict[str, tuple[bytes, str | None]] = {
    "not UTF-8": (b'{"name": "caf\xe9"}', None),
    "UTF-16": ('{"name": "a"}'.encode("utf-16"), None),
    "a surrogate encoded as UTF-8": (b'{"name": "\xed\xa0\x80"}', None),
    "a lone surrogate escape": (b'{"name": "\\ud800"}', None),
    "a lone low surrogate in a key": (b'{"\\udc00": 1}', None),
    "a lone surrogate deep inside": (b'{"a": [{"b": ["x", "\\udfff"]}]}', None),
    "a high surrogate before a letter": (b'{"name": "\\ud83d\\u0041"}', None),
    "not JSON": (b"{not json", None),
    "two values": (b'{"name": "a"} {}', None),
    "a byte-order mark": (b'\xef\xbb\xbf{"name": "a"}', None),
    "NaN": (b'{"replicas": NaN}', None),
    "Infinity": (b'{"replicas": -Infinity}', None),
    "an integer of 5000 digits": (b'{"replicas": 1' + b"0" * 5000 + b"}", None),
    "nested 50,000 deep": (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", None),
    "1e400": (b'{"replicas": 1e400}', "body.replicas"),
    "-1e400 inside": (
        b'{"spec": {"resources": {"memory_mb": -1e400}}}',
        "body.spec.resources.memory_mb",
    ),
    "10**400": (b'{"replicas": [1, 1' + b"0" * 400 + b"]}", "body.replicas.1"),
    "nested 65 deep": (b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", "body.a" + ".0" * 63),
}


class Stream:
    """A request body of `total` bytes, produced as it is sent; `sent` counts what the client
    has taken of it so far."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        block = b" " * self.chunk
        while self.sent < self.total:
            self.sent += self.chunk
            yield block


async def post_blocking(
    base_url: str, path: str, content: bytes | Iterable[bytes], headers: dict[str, str]
) -> httpx.Response:
    """POST with httpx's blocking client, in a thread: like curl and browsers, it reads the
    answer a server gives before the body is all sent (a refusal); the asyncio client loses
    that answer when the server then closes the connection."""

    def post() -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            return client.post(path, content=content, headers=headers)

    return await asyncio.to_thread(post)


def chunked(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """`body` sent without a Content-Length (chunked)."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def exchange(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is and read the answer. Sent as a head without its body, a server
    that waited for the body would time out here."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 20)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 20)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        body = await asyncio.wait_for(reader.readexactly(length), 20)
        return int(status.split()[1]), headers, body
    finally:
        writer.close()


def head(
    path: str, content_length: int | str, *, token: str | None = TOKEN, expect: bool = True
) -> bytes:
    """A POST's head; with `expect`, asking to be told to go on before the body (the server
    would answer `100 Continue` first once it reads the body)."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: swarm.test",
        "Content-Type: application/json",
        f"Content-Length: {content_length}",
    ]
    if expect:
        lines.append("Expect: 100-continue")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def still_serves(client: httpx.AsyncClient, namespace: str) -> None:
    """The API answers reads and commands, with the Hive deciding."""
    assert (await client.get("/v1/agents")).status_code == 200
    created = await client.post("/v1/namespaces", json={"name": namespace})
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "accepted"


def operations(document: dict[str, object]) -> list[tuple[str, str, bool]]:
    """(method, path with its parameters filled, takes a body) for every operation."""
    paths = document["paths"]
    assert isinstance(paths, dict)
    return [
        (method.upper(), path.format(**PARAMS), "requestBody" in operation)
        for path, methods in paths.items()
        for method, operation in methods.items()
    ]


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[str]:
    """The API as `python -m swarm.gateway` serves it, with the default limits."""
    with serving(stack.url, TOKEN) as url:
        yield url


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, headers=AUTH, timeout=60) as client:
        yield client


async def test_a_request_without_the_token_is_refused_before_its_body_is_read(
    gateway: str, client: httpx.AsyncClient
) -> None:
    stream = Stream(HUGE)
    refused = await post_blocking(
        gateway, "/v1/namespaces", stream, {**JSON, "Authorization": "Bearer wrong"}
    )
    problem(refused, 401)
    assert refused.headers["www-authenticate"].startswith("Bearer")
    # Closed rather than read to the end to keep the connection.
    assert refused.headers["connection"] == "close"
    assert stream.sent < SLACK, f"the API took {stream.sent:,} bytes of a refused body"

    # Declared up front: answered at once, without a byte of the body.
    status, headers, body = await exchange(gateway, head("/v1/commands", HUGE, token=None))
    assert status == 401
    assert json.loads(body)["type"].endswith("/unauthorized")
    assert headers["connection"] == "close"

    # What the body holds does not matter without the token, even when it cannot be read.
    unread = await client.post(
        "/v1/namespaces", content=b"{not json", headers={**JSON, "Authorization": ""}
    )
    problem(unread, 401)
    await still_serves(client, "after-no-token")


async def test_a_body_over_the_limit_is_refused_while_it_streams(
    gateway: str, client: httpx.AsyncClient
) -> None:
    stream = Stream(HUGE)
    refused = await post_blocking(gateway, "/v1/commands", stream, {**JSON, **AUTH})
    body = problem(refused, 413)
    assert body["type"].endswith("/too-large")
    assert f"{GatewaySettings().max_body_bytes:,}" in body["detail"]
    assert refused.headers["connection"] == "close"
    assert stream.sent < SLACK, f"the API took {stream.sent:,} bytes of a refused body"

    # A Content-Length over the limit is refused before the body is sent.
    for declared in (str(HUGE), f"{HUGE:020d}"):
        status, headers, raw = await exchange(gateway, head("/v1/commands", declared))
        assert status == 413
        assert json.loads(raw)["type"].endswith("/too-large")
        assert headers["content-type"].startswith("application/problem+json")
    # Leading zeros say nothing about the size.
    small = b'{"name": "leading-zeros"}'
    declared = f"{len(small):020d}"
    status, _, raw = await exchange(gateway, head("/v1/namespaces", declared, expect=False) + small)
    assert status == 200, raw
    await still_serves(client, "after-too-large")


async def test_the_body_limit_is_configurable_and_exact(stack: Stack) -> None:
    limit = MIB
    settings = GatewaySettings(max_body_bytes=limit)
    with serving(stack.url, TOKEN, gateway_settings=settings) as url:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
            # JSON may end in whitespace: the same small command, padded to the limit.
            def padded(name: str, size: int) -> bytes:
                document = json.dumps({"name": name}).encode()
                return document + b" " * (size - len(document))

            for name, body in (
                ("padded-a", padded("padded-a", limit)),
                ("padded-b", chunked(padded("padded-b", limit))),
            ):
                at_limit = await post_blocking(url, "/v1/namespaces", body, {**JSON, **AUTH})
                assert at_limit.json()["status"] == "accepted", (name, at_limit.text)

            over = padded("padded-c", limit + 1)
            for body in (over, chunked(over)):
                too_large = await post_blocking(url, "/v1/namespaces", body, {**JSON, **AUTH})
                problem(too_large, 413)
            await still_serves(client, "after-exact-limit")


async def test_the_largest_valid_command_fits_the_default_limit(
    client: httpx.AsyncClient,
) -> None:
    # An inline module of the largest size the spec allows (the Hive does not compile it).
    module = b"\0asm\1\0\0\0" + bytes(INLINE_MODULE_MAX_BYTES - 8)
    spec = {"version": "v1", "module": {"inline": base64.b64encode(module).decode()}}
    body = json.dumps({"name": "largest", "spec": spec}).encode()
    assert len(body) < GatewaySettings().max_body_bytes
    deployed = await client.post("/v1/namespaces/default/agents", content=body, headers=JSON)
    assert deployed.status_code == 200, deployed.text[:2000]
    assert deployed.json()["status"] == "accepted"


async def test_unreadable_json_is_a_400_on_every_route_that_takes_a_body(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    with_body = [(method, path) for method, path, body in operations(document) if body]
    assert len(with_body) >= 11, with_body  # deploy … redeliver: the routes that take input
    for method, path in with_body:
        for case, (raw, loc) in UNREADABLE.items():
            response = await client.request(method, path, content=raw, headers=JSON)
            refused = problem(response, 400)
            assert refused["type"].endswith("/bad-request"), (method, path, case)
            [error] = refused["errors"]
            assert error["loc"] == (loc or "body"), (method, path, case, error)
    # Media types ending in +json are JSON too (a structured CloudEvent).
    event = await client.post(
        "/v1/commands",
        content=b'{"type": "swarm.cmd.namespace.create", "data": {"name": "\\udfff"}}',
        headers={"content-type": "application/cloudevents+json; charset=utf-8"},
    )
    problem(event, 400)

    # Around the edges: 64 levels, a surrogate pair and a large finite number are readable.
    deep = await client.post(
        "/v1/namespaces", content=b'{"a": ' + b"[" * 63 + b"]" * 63 + b"}", headers=JSON
    )
    assert "body.a" in {e["loc"] for e in problem(deep, 422)["errors"]}
    task = await client.post(
        "/v1/tasks/limits", content=b'{"emoji": "\\ud83d\\ude00", "n": 1.5e308}', headers=JSON
    )
    assert task.status_code == 202, task.text
    # A task's body is only checked when it is sent as JSON; other bytes are the task.
    raw_task = await client.post(
        "/v1/tasks/limits",
        content=b"\xff\\ud800 1e400",
        headers={"content-type": "application/octet-stream"},
    )
    assert raw_task.status_code == 202, raw_task.text
    await still_serves(client, "after-unreadable")


async def test_paths_queries_and_headers_that_are_not_text_are_a_400(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    for method, path, _ in operations(document):
        # %FF and %ED%A0%80 (a surrogate, encoded) do not decode to UTF-8 text.
        for query in ("x=%FF", "grep=%ED%A0%80"):
            response = await client.request(method, f"{path}?{query}")
            assert problem(response, 400)["errors"][0]["loc"] == "query", (method, path)

    for method, path in (
        ("GET", "/v1/namespaces/%FF/agents/x"),
        ("POST", "/v1/namespaces/%C3%28/agents"),
        ("GET", "/v1/commands/%ED%A0%80"),
        ("GET", "/v1/schemas/swarm.cmd.%FF"),
        ("GET", "/v1/traces/%80"),
        ("DELETE", "/v1/webhooks/%FF"),
        ("GET", "/healthz/%FF"),
    ):
        response = await client.request(method, path)
        assert problem(response, 400)["errors"][0]["loc"] == "path", (method, path)

    for path, header in (
        ("/v1/tasks/limits", "Idempotency-Key"),
        ("/v1/namespaces", "Content-Type"),
        ("/v1/events/stream", "Last-Event-ID"),
    ):
        method = "GET" if path.endswith("stream") else "POST"
        response = await client.request(method, path, headers={header: b"caf\xe9"})
        [error] = problem(response, 400)["errors"]
        assert error["loc"] == f"header.{header.lower()}"
    # Headers the API does not read are left alone.
    assert (await client.get("/v1/agents", headers={"User-Agent": b"caf\xe9"})).status_code == 200
    await still_serves(client, "after-bad-text")


async def test_numbers_out_of_range_in_queries_and_headers_are_a_422(
    client: httpx.AsyncClient,
) -> None:
    for path, params in (
        ("/v1/events", {"limit": "1e400"}),
        ("/v1/events", {"after": "1" + "0" * 400}),
        ("/v1/events", {"after": "1" + "0" * 5000}),
        ("/v1/market", {"limit": "-1e400"}),
        ("/v1/traces/no-such-trace", {"window": "nan"}),
        ("/v1/namespaces/default/agents/nobody", {"events": "inf"}),
    ):
        problem(await client.get(path, params=params), 422)
    problem(await client.post("/v1/namespaces?timeout=1e400", json={"name": "never"}), 422)
    for last_event_id in ("1" + "0" * 30, "1_0", "-1", "0x10"):
        async with client.stream(
            "GET", "/v1/events/stream", headers={"Last-Event-ID": last_event_id}
        ) as response:
            await response.aread()
            problem(response, 422)
    await still_serves(client, "after-numbers")


async def test_the_openapi_document_declares_the_token_and_the_limits(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert {"400", "413"} <= set(responses), (method, path)
            # The guard asks for the token on exactly the routes that declare it.
            declared = operation.get("security") == [{"HTTPBearer": []}]
            assert declared == path.startswith("/v1/"), (method, path)


async def test_a_problem_document_is_written_whatever_text_it_echoes() -> None:
    # Field errors echo what a client sent; a lone surrogate in one made the answer a 500.
    app = FastAPI()
    problems.install(app)

    @app.get("/echo")
    async def echo() -> None:
        raise ProblemError(
            422,
            "invalid-command",
            "Invalid command",
            "extra field in café",
            errors=[FieldProblem("body.data.\ud800", "extra field", "extra_forbidden")],
        )

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://swarm.test") as client:
        body = problem(await client.get("/echo"), 422)
    assert body["errors"][0]["loc"] == "body.data.\ud800"
    assert body["detail"] == "extra field in café"
