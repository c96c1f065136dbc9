"""The `net` capability for core modules: the `http_request` / `http_response` host functions
against a real HTTP server on 127.0.0.1 (runtime/net.py, runtime/ABI.md "Capabilities").

The fetcher allows private addresses (the server is on loopback) except where the guard itself
is under test.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runtime import net
from runtime.abi import ErrorCode
from runtime.config import PodSettings
from runtime.errors import DeadlineExceeded
from runtime.host import MemoryHost
from runtime.limits import CallBudget, Capability, SandboxLimits
from runtime.net import HttpFetcher, HttpRequest
from runtime.sandbox import AgentSandbox
from swarm.kernel.addresses import IpAddress
from tests.helpers import agents
from tests.helpers.pods import ask, cluster, deploy, running_on, running_pod
from tests.helpers.sandboxes import MakeSandbox
from tests.runtime.http_target import HttpTarget

#: Where the agent asks the host to write the answer; 40 pages of memory leave 2.5 MiB there.
OUT = 65536

#: Message: u32 `cap`, then the request JSON. Replies: the i32 result of http_request; if that
#: is larger than `cap`, the i32 result of http_response into a buffer of exactly that size;
#: then the answer (when the result is a length).
FETCHER = agents.agent(
    f"""
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $cap i32) (local $n i32)
    (local.set $cap (i32.load (local.get $ptr)))
    (local.set $n (call $http_request (i32.add (local.get $ptr) (i32.const 4))
                                      (i32.sub (local.get $len) (i32.const 4))
                                      (i32.const {OUT}) (local.get $cap)))
    (i32.store (i32.const 0) (local.get $n))
    (call $reply (i32.const 0) (i32.const 4))
    (if (i32.ge_s (local.get $n) (i32.const 0))
      (then
        (if (i32.gt_u (local.get $n) (local.get $cap))
          (then
            (i32.store (i32.const 4) (call $http_response (i32.const {OUT}) (local.get $n)))
            (call $reply (i32.const 4) (i32.const 4))))
        (call $reply (i32.const {OUT}) (local.get $n))))
    (i32.const 0))
""",
    imports=("http_request", "http_response", "reply"),
    memory="40",
)

NET: frozenset[Capability] = frozenset({"net"})


def _limits(*, net: bool = True, deadline_ms: int = 5000, **budget: int) -> SandboxLimits:
    return SandboxLimits(
        capabilities=NET if net else frozenset(),
        deadline_ms=deadline_ms,
        memory_bytes=64 * 1024 * 1024,
        budget=CallBudget(**budget),
    )


def _fetch(sandbox: AgentSandbox, request: Any, cap: int = 1 << 20) -> tuple[int, Any]:
    """(result, parsed answer or None) of one http_request made by FETCHER."""
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    replies = sandbox.handle(struct.pack("<I", cap) + raw).replies
    result = struct.unpack("<i", replies[0])[0]
    if result < 0:
        return result, None
    return result, json.loads(replies[-1])


def _sandbox(make_sandbox: MakeSandbox, fetcher: HttpFetcher | None, **limits: Any) -> AgentSandbox:
    return make_sandbox(FETCHER, _limits(**limits), MemoryHost(http=fetcher))


def test_granted_agent_fetches_from_the_server(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    sandbox = _sandbox(make_sandbox, fetcher)

    length, answer = _fetch(sandbox, {"url": target.url("/hello")})

    assert answer["status"] == 200
    assert answer["body"] == "hello"
    assert answer["headers"]["x-test"] == "yes"
    assert length == len(json.dumps(answer, separators=(",", ":")).encode())
    assert target.requests == ["/hello"]


def test_method_headers_and_body_reach_the_server(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    sandbox = _sandbox(make_sandbox, fetcher)

    _, text = _fetch(
        sandbox,
        {"method": "post", "url": target.url("/echo"), "headers": {"X-A": "1"}, "body": "hé"},
    )
    _, binary = _fetch(
        sandbox, {"method": "PUT", "url": target.url("/echo"), "body_base64": "/wA="}
    )
    _, raw = _fetch(sandbox, {"url": target.url("/binary")})

    echoed = json.loads(text["body"])
    assert (echoed["method"], echoed["headers"]["x-a"]) == ("POST", "1")
    assert echoed["body"].encode("latin-1") == "hé".encode()
    # The pod asks for the body as is: a compressed body could inflate past the size cap.
    assert echoed["headers"]["accept-encoding"] == "identity"
    assert json.loads(binary["body"])["body"].encode("latin-1") == b"\xff\x00"
    assert raw == {
        "status": 200,
        "headers": raw["headers"],
        "body_base64": "/wD+",
    }


def test_without_the_grant_the_call_is_denied_and_nothing_is_sent(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    sandbox = _sandbox(make_sandbox, fetcher, net=False)

    assert _fetch(sandbox, {"url": target.url("/hello")}) == (ErrorCode.DENIED, None)
    assert target.requests == []


def test_private_addresses_are_refused_unless_the_pod_allows_them(
    make_sandbox: MakeSandbox, target: HttpTarget
) -> None:
    with HttpFetcher(allow_private=False) as guarded:
        sandbox = _sandbox(make_sandbox, guarded)
        port = target.base.rsplit(":", 1)[1]
        for url in (
            target.url("/hello"),
            f"http://localhost:{port}/hello",
            f"http://[::ffff:127.0.0.1]:{port}/hello",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
        ):
            assert _fetch(sandbox, {"url": url}) == (ErrorCode.DENIED, None), url
        with pytest.raises(Exception, match=r"resolves to 127\.0\.0\.1 \(loopback\)"):
            guarded.fetch(HttpRequest("GET", target.url("/hello"), (), b""))
    assert target.requests == []


def test_the_guard_connects_to_the_address_it_checked(
    target: HttpTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No public DNS here: a name that "resolves" to the local server, and a classification
    # that calls it public. The request must go to the checked address, not resolve the name
    # again (which would fail: `rebind.invalid` exists nowhere), and carry the name as Host.
    checked: list[str] = []

    def resolve(host: str, port: int) -> list[IpAddress]:
        checked.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(net, "resolve", resolve)
    monkeypatch.setattr(net, "first_non_public", lambda addresses: None)
    port = target.base.rsplit(":", 1)[1]
    with HttpFetcher(allow_private=False) as guarded:
        response = guarded.fetch(
            HttpRequest("GET", f"http://rebind.invalid:{port}/echo", (), b"", timeout_s=5)
        )

    assert response.status == 200, response
    assert json.loads(response.body)["headers"]["host"] == f"rebind.invalid:{port}"
    assert checked == ["rebind.invalid"]
    assert target.requests == ["/echo"]


def test_the_specs_allow_list_limits_the_hosts(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    def sandbox(*allow: str) -> AgentSandbox:
        limits = replace(_limits(), net_allow=allow)
        return make_sandbox(FETCHER, limits, MemoryHost(http=fetcher))

    listed = _fetch(sandbox("example.org", "127.0.0.1"), {"url": target.url("/hello")})[1]
    unlisted = _fetch(sandbox("*.example.org"), {"url": target.url("/hello")})

    assert listed["status"] == 200
    assert unlisted == (ErrorCode.DENIED, None)
    assert target.requests == ["/hello"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("api.example.com", True),
        ("API.Example.com.", True),
        ("x.api.example.com", False),
        ("a.example.org", True),
        ("a.b.example.org", True),
        ("example.org", False),
        ("badexample.org", False),
        ("example.com", False),
    ],
)
def test_host_patterns(host: str, allowed: bool) -> None:
    assert net.host_allowed(host, ("api.example.com", "*.example.org")) is allowed


def test_the_allow_list_travels_from_the_spec() -> None:
    spec = agents.spec(FETCHER, capabilities=["net"], network={"allow": ["*.example.org"]})
    assert SandboxLimits.from_spec(spec).net_allow == ("*.example.org",)
    assert agents.spec(FETCHER).network.allow == []
    for bad in ("Example.org", "*.*.example.org", "http://example.org", "ex ample.org", "*"):
        with pytest.raises(ValueError, match="pattern"):
            agents.spec(FETCHER, network={"allow": [bad]})


def test_redirects_are_answers_not_followed(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    sandbox = _sandbox(make_sandbox, fetcher)

    _, answer = _fetch(sandbox, {"url": target.url("/redirect")})

    assert answer["status"] == 302
    assert answer["headers"]["location"] == "/hello"
    assert target.requests == ["/redirect"]


def test_a_response_over_the_cap_is_refused_as_too_large(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    sandbox = _sandbox(make_sandbox, fetcher, max_http_response_bytes=10_000)

    _, fits = _fetch(sandbox, {"url": target.url("/big?n=10000")})
    _, announced = _fetch(sandbox, {"url": target.url("/big?n=10001")})
    _, streamed = _fetch(sandbox, {"url": target.url("/chunked?n=50000")})
    _, streamed_fits = _fetch(sandbox, {"url": target.url("/chunked?n=9000")})

    _, head = _fetch(sandbox, {"method": "HEAD", "url": target.url("/big?n=10001")})

    assert (head["status"], head["headers"]["content-length"]) == (200, "10001")
    assert fits["body"] == "x" * 10_000
    assert announced["error"] == "too_large"
    assert "10001 bytes exceeds the limit of 10000" in announced["reason"]
    assert streamed["error"] == "too_large"
    assert streamed_fits["body"] == "y" * 9000


def test_a_large_answer_is_fetched_with_http_response_without_a_second_request(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    sandbox = _sandbox(make_sandbox, fetcher)
    raw = struct.pack("<I", 16) + json.dumps({"url": target.url("/big?n=3000")}).encode()

    first, second, answer = sandbox.handle(raw).replies

    length = struct.unpack("<i", first)[0]
    assert length > 3000
    assert struct.unpack("<i", second)[0] == length
    assert json.loads(answer)["body"] == "x" * 3000
    assert target.requests == ["/big"]


def test_http_response_without_a_request_is_not_found(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(agents.proxy("http_response"), _limits())

    reply = sandbox.handle(agents.proxy_message(0, 16)).replies[-1]

    assert agents.results(reply) == [ErrorCode.NOT_FOUND]


def test_a_slow_server_is_cut_at_the_deadline(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    # A deadline far above the agent's own timeout: on a loaded machine a 100 ms request took
    # 575 ms, which a tight deadline turned into the other outcome.
    sandbox = _sandbox(make_sandbox, fetcher, deadline_ms=3000)

    # The agent's own shorter timeout: it gets an answer it can handle (the server stalls 10 s).
    _, answer = _fetch(sandbox, {"url": target.url("/slow"), "timeout_ms": 100})
    assert answer["error"] == "timeout"
    # No timeout of its own: the request is bounded by the call's deadline, which then fails.
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"http_request to .* ran into the call's deadline"):
        _fetch(sandbox, {"url": target.url("/slow")})
    # Cut at the deadline, well before the server's 10 s stall would have ended it.
    assert time.monotonic() - started < 9.0


@pytest.mark.parametrize(
    "request_",
    [
        b"not json",
        {"method": "GET"},
        {"url": "ftp://example.com/"},
        {"url": "http:///nohost"},
        {"url": "http://x/", "method": "TRACE"},
        {"url": "http://x/", "headers": {"Host": "other"}},
        {"url": "http://x/", "headers": {"X-A": "a\r\nX-B: b"}},
        {"url": "http://x/", "body": "a", "body_base64": "YQ=="},
        {"url": "http://x/", "body_base64": "not base64!"},
        {"url": "http://x/", "timeout_ms": 0},
        {"url": "http://x/", "extra": 1},
    ],
)
def test_malformed_requests_are_invalid(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, request_: Any
) -> None:
    assert _fetch(_sandbox(make_sandbox, fetcher), request_) == (ErrorCode.INVALID, None)


def test_requests_per_call_and_body_size_are_limited(
    make_sandbox: MakeSandbox, fetcher: HttpFetcher, target: HttpTarget
) -> None:
    none_left = _sandbox(make_sandbox, fetcher, max_http_requests=0)
    small = _sandbox(make_sandbox, fetcher, max_http_request_bytes=4)

    assert _fetch(none_left, {"url": target.url("/hello")})[0] == ErrorCode.LIMIT
    assert _fetch(small, {"url": target.url("/echo"), "body": "12345"})[0] == ErrorCode.LIMIT
    assert _fetch(small, {"url": target.url("/echo"), "body": "1234"})[1]["status"] == 200


def test_a_host_without_network_is_unavailable(make_sandbox: MakeSandbox) -> None:
    sandbox = _sandbox(make_sandbox, None)

    assert _fetch(sandbox, {"url": "http://127.0.0.1:9/"}) == (ErrorCode.UNAVAILABLE, None)


def test_a_closed_port_is_a_connect_error(make_sandbox: MakeSandbox, fetcher: HttpFetcher) -> None:
    # Port 9 (discard) on loopback is closed on a test machine; the answer says so.
    _, answer = _fetch(_sandbox(make_sandbox, fetcher), {"url": "http://127.0.0.1:9/"})

    assert answer["error"] == "connect"
    assert fetcher.requests >= 1


# --- on a pod ------------------------------------------------------------------------------------


def test_pod_settings_read_the_net_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PodSettings(id="p").net_allow_private is False
    monkeypatch.setenv("SWARM_POD_NET_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("SWARM_POD_NET_MAX_RESPONSE_BYTES", "2048")
    config = PodSettings(id="p")
    assert (config.net_allow_private, config.net_max_response_bytes) == (True, 2048)


@pytest.mark.timeout(180)
async def test_a_pod_makes_the_requests_of_granted_agents_and_counts_them(
    tmp_path: Path, target: HttpTarget
) -> None:
    request = struct.pack("<I", 1 << 20) + json.dumps({"url": target.url("/hello")}).encode()
    async with (
        cluster(tmp_path) as stack,
        running_pod(stack, "p1", net_allow_private=True) as (pod, _),
    ):
        await deploy(stack, "fetch", FETCHER, capabilities=["net"])
        await deploy(stack, "nonet", FETCHER)
        await running_on(stack, "fetch", "p1")
        await running_on(stack, "nonet", "p1")

        granted, error = await ask(stack, "fetch", request)
        denied, _ = await ask(stack, "nonet", request)

        assert not error, granted
        assert json.loads(granted[4:])["body"] == "hello"
        assert struct.unpack("<i", denied)[0] == ErrorCode.DENIED
        assert target.requests == ["/hello"]
        by_name = {r.assignment.name: r.metrics_json() for r in pod.replicas.values()}
        assert (by_name["fetch"]["http_requests"], by_name["nonet"]["http_requests"]) == (1, 0)
