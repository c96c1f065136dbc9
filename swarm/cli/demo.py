"""`swarm up --demo`: deploy the echo example once the Hive is up, so there is an agent to talk to.

The demo goes through the front door like any user: a DeployAgent command, answered by the Hive,
placed by the scheduler, run by a pod. Deploying it again on a stack that already has it is a
no-op, so `--demo` can stay on every `swarm up`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import wasmtime

from schemas import command, commands, names
from schemas.specs import AgentSpec, ModuleRef
from swarm.cli import publish
from swarm.client.eventlog import AppendRequest, EventLog, NoResponders, RequestTimeout

DEMO_AGENT = "echo"
_ECHO_WAT = Path(__file__).resolve().parents[2] / "examples" / "echo" / "echo.wat"
#: Used when the package is installed without the examples folder next to it.
_ECHO_FALLBACK = """(module
  (import "swarm" "reply" (func $reply (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "swarm_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "swarm_handle") (param $p i32) (param $n i32) (result i32)
    (call $reply (local.get $p) (local.get $n)) (i32.const 0)))"""


def echo_module() -> bytes:
    text = _ECHO_WAT.read_text() if _ECHO_WAT.exists() else _ECHO_FALLBACK
    return bytes(wasmtime.wat2wasm(text))


async def deploy_demo(
    nats_url: str,
    identity: str,
    timeout: float = 60.0,
    *,
    credentials: Path | None = None,
    ca: Path | None = None,
) -> str:
    """Deploy the echo agent unless it exists; returns a line saying what happened."""
    log = await EventLog.connect(
        nats_url, ensure=False, name="swarm-demo", credentials=credentials, ca=ca
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:  # the Hive elects itself a moment after the stack is up
            try:
                reply = await log.request(
                    names.QUERY_AGENTS_GET,
                    json.dumps({"namespace": "default", "name": DEMO_AGENT}).encode(),
                    timeout=1,
                )
                if "agent" in json.loads(reply.data):
                    return f"demo: agent default/{DEMO_AGENT} is already deployed"
                break
            except (NoResponders, RequestTimeout):
                if loop.time() > deadline:
                    return "demo: the Hive did not answer in time; nothing deployed"
                await asyncio.sleep(0.25)
        module = ModuleRef(inline=base64.b64encode(echo_module()).decode())
        envelope = command(
            commands.DeployAgent(
                name=DEMO_AGENT, replicas=1, spec=AgentSpec(version="demo", module=module)
            ),
            source="swarm-up",
            identity=identity,
        )
        start = await log.last_sequence(names.STREAM_EVENTS) + 1
        await log.append_raw(AppendRequest.of(envelope))
        outcome = await publish.wait_for_outcome(
            log, envelope.id, start_seq=start, within=max(1.0, deadline - loop.time())
        )
    finally:
        await log.close()
    if outcome is None:
        return "demo: no answer to the deploy in time"
    if not outcome.accepted:
        reason = (outcome.body or {}).get("data", {}).get("reason", "rejected")
        return f"demo: deploy refused: {reason}"
    return (
        f"demo: agent default/{DEMO_AGENT} deployed; try: "
        f'swarm agent send {DEMO_AGENT} \'{{"hello": "swarm"}}\''
    )
