"""The `swarm` CLI run in a worker thread against an in-process Hive, for the CLI tests.

A test module takes `stack` (one nats-server and Hive per module) and `wasm` by importing
them; `cli`, `ok` and `described` run and check verbs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from swarm.cli.app import app
from tests.helpers.stack import Stack, running_stack

#: The smallest valid WebAssembly module: magic and version, no sections.
WASM = b"\0asm\1\0\0\0"


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One nats-server and Hive for the module; tests keep apart by agent and namespace names."""
    async with running_stack(tmp_path_factory.mktemp("cli")) as running:
        yield running


@pytest.fixture(scope="module")
def wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("modules") / "echo.wasm"
    path.write_bytes(WASM)
    return path


async def cli(
    stack: Stack | str,
    *args: str | Path,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run `swarm ARGS --nats-url …` in a thread, so its event loop does not meet the Hive's;
    `env` is set for the run alone."""
    url = stack if isinstance(stack, str) else stack.url
    argv = [str(a) for a in args] + ["--nats-url", url]
    return await asyncio.to_thread(lambda: CliRunner().invoke(app, argv, input=stdin, env=env))


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


async def agents(stack: Stack, *scope: str) -> dict[str, dict[str, Any]]:
    """`swarm agent ls -o json`, by name."""
    listed = json.loads(ok(await cli(stack, "agent", "ls", *scope, "-o", "json")).stdout)
    return {a["name"]: a for a in listed["agents"]}


async def described(stack: Stack, name: str, *scope: str) -> dict[str, Any]:
    result = ok(await cli(stack, "agent", "describe", name, *scope, "-o", "json"))
    document: dict[str, Any] = json.loads(result.stdout)
    return document
