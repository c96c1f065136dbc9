"""What a client of the HTTP API sends and checks in the gateway tests: the token, an agent spec
and the problem document's shape."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers.history import WASM

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response's problem document, checked to have the documented shape."""
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://swarm.dev/problems/")
    assert body["title"]
    assert body["detail"]
    assert set(body) == {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "errors",
        "rule",
        "command_id",
    }
    return body


SPEC = {
    "version": "v1",
    "module": {"inline": WASM},
    "resources": {"memory_mb": 64, "fuel_per_s": 1000},
}
