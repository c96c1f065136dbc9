"""`swarm logs`, `swarm trace` and `swarm debug` against a live stack: a real nats-server, an
in-process Hive and scheduler, a real pod running the echo example, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import re
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from schemas import utcnow
from schemas.observer import ReportAnomaly, SignalEvidence
from swarm.cli.debug import snapshot
from tests.helpers.agents import COUNTER
from tests.helpers.cli_process import ECHO_WAT, ROOT, swarm, swarm_until
from tests.helpers.pods import agent, ask, cluster, count, deploy, running_on, running_pod

# About twenty CLI child processes, each a Python start (2-4 s beside busy loops): 90 s was
# passed in a stress run.
pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP endpoint on port 0 that keeps the OTLP request bodies it is sent."""
    bodies: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", bodies
    finally:
        server.shutdown()
        server.server_close()


def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node["children"] for n in walk(child))]


def child_types(node: dict[str, Any]) -> set[str]:
    return {c["type"] for c in node["children"]}


async def test_logs_trace_and_debug_on_a_live_agent(tmp_path: Path) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        code, out, err = await swarm(
            stack.url, "agent", "deploy", "echo", "--module", str(ECHO_WAT), "--version", "v1",
            "--wait",
        )  # fmt: skip
        assert code == 0, out + err
        match = re.search(r"\(id ([0-9A-Z]+)\)", out)
        assert match, out
        deploy_id = match.group(1)
        code, out, err = await swarm(stack.url, "agent", "send", "echo", '{"hello": 1}')
        assert code == 0, err

        # --- logs: the level is a subject filter, --grep a text filter, --since a seek -------
        out = await swarm_until("echoing a message", stack.url, "logs", "echo", "--since", "5m")
        assert "DEBUG" in out
        code, out, err = await swarm(stack.url, "logs", "echo", "--level", "warn")
        assert code == 0, err
        assert "echoing a message" not in out
        code, out, err = await swarm(stack.url, "logs", "echo", "--grep", "nothing like it")
        assert (code, out) == (0, "")
        code, out, err = await swarm(stack.url, "logs", "echo", "--grep", "echoing", "-o", "json")
        entries = [json.loads(line) for line in out.splitlines()]
        assert entries
        assert entries[0]["message"] == "echoing a message"
        code, out, err = await swarm(stack.url, "logs", "echo", "--since", "tomorrow")
        assert code == 2
        assert "cannot read time" in err
        code, out, err = await swarm(stack.url, "logs", "echo", "--level", "loud")
        assert code == 2
        assert "not a log level" in err

        # --- trace: command -> outcome and events -> proposal -> placement -> pod reports ----
        code, out, err = await swarm(stack.url, "trace", deploy_id, "-o", "json")
        assert code == 0, err
        trees = json.loads(out)["trace"]
        root = trees[0]
        assert (root["id"], root["type"], root["kind"]) == (
            deploy_id,
            "swarm.cmd.agent.deploy",
            "command",
        )
        assert {"swarm.agent.deployed", "swarm.agent.replica_requested"} <= child_types(root)
        assert "swarm.command.accepted" in child_types(root)
        requested = next(
            c for c in root["children"] if c["type"] == "swarm.agent.replica_requested"
        )
        proposal = next(c for c in requested["children"] if c["kind"] == "command")
        assert proposal["type"] == "swarm.cmd.placement.propose"
        scheduled = next(
            c for c in proposal["children"] if c["type"] == "swarm.agent.replica_scheduled"
        )
        reports = [c for c in scheduled["children"] if c["type"] == "swarm.cmd.replica.report"]
        assert len(reports) == 2  # starting, running
        caused = {t for r in reports for t in child_types(r)}
        assert {"swarm.agent.replica_starting", "swarm.agent.replica_running"} <= caused
        everything = [n for tree in trees for n in walk(tree)]
        offsets = [n["offset_ms"] for n in everything]
        assert root["offset_ms"] == 0
        assert all(o is not None and o >= -1000 for o in offsets)
        # The same tree from one of the events the command caused.
        code, out, err = await swarm(stack.url, "trace", f"{deploy_id}-1", "-o", "json")
        assert json.loads(out)["trace"][0]["id"] == deploy_id
        code, out, err = await swarm(stack.url, "trace", deploy_id)
        assert code == 0, err
        assert "agent.deploy" in out
        assert "replica.report" in out
        assert " ms " in out
        assert "decided in" in out
        # --otlp: the same tree as OpenTelemetry spans, received by a real HTTP endpoint.
        with otlp_receiver() as (url, bodies):
            code, out, err = await swarm(stack.url, "trace", deploy_id, "--otlp", url)
        assert code == 0, err
        assert "exported" in err
        spans = [
            span
            for body in bodies
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        assert len(spans) == len(everything)
        assert {span.name for span in spans} == {n["type"] for n in everything}
        by_id = {s.span_id: s for s in spans}
        report_span = next(s for s in spans if s.name == "swarm.cmd.replica.report")
        assert by_id[report_span.parent_span_id].name == "swarm.agent.replica_scheduled"

        code, out, err = await swarm(stack.url, "trace", "NOSUCHID")
        assert code == 1
        assert "no command or event with id NOSUCHID" in err

        # --- debug: one screen, and a message with its reply --------------------------------
        view = await agent(stack, "echo")
        now = utcnow()
        finding = ReportAnomaly(
            agent_id=view["agent_id"],
            detector="robust-z",
            score=0.7,
            severity="warning",
            kind="latency_spike",
            window_start=now - timedelta(seconds=5),
            window_end=now,
            signals=[SignalEvidence(signal="latency", value=900, baseline=3, score=9, threshold=6)],
            summary="p99 latency 300x its median",
        )
        await stack.send([(finding, "service:observer")])
        await asyncio.sleep(0.5)
        code, out, err = await swarm(stack.url, "debug", "echo", "--send", '{"ping": true}')
        assert code == 0, err
        for section in ("Replicas:", "Trust", "Anomalies", "Healing actions:", "KV state"):
            assert section in out, section
        assert "latency_spike" in out
        assert "p99 latency 300x" in out  # (the table wraps the rest at 80 columns)
        assert "echoing a message" in out  # recent log lines
        assert '{"ping": true}' in out  # the reply
        code, out, err = await swarm(stack.url, "debug", "echo", "-o", "json")
        report = json.loads(out)
        assert report["agent"]["anomalies"][0]["kind"] == "latency_spike"
        assert report["agent"]["trust"] < 0.8
        assert report["logs"]
        assert report["reply"] is None

        # --listen sees messages others send meanwhile (the mesh stores nothing).
        listening = asyncio.create_task(swarm(stack.url, "debug", "echo", "--listen", "3"))
        sent = 0
        while not listening.done():  # the CLI process takes a while to start and subscribe
            assert await ask(stack, "echo", b"overheard") == (b"overheard", False)
            sent += 1
            await asyncio.sleep(0.3)
        code, out, err = await listening
        assert code == 0, err
        seen = re.search(r"Messages seen while listening \((\d+)\)", out)
        assert seen, out
        assert 1 <= int(seen.group(1)) <= sent
        assert "overheard" in out

        # -i: one message per stdin line, each reply printed; :state redraws the screen.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarm.cli.app", "debug", "echo", "-i", "--nats-url", stack.url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(b"first\n:state\nsecond\n"), 30)
        assert proc.returncode == 0, stderr.decode()
        text = stdout.decode()
        assert "< first" in text
        assert "< second" in text
        assert text.count("Replicas:") == 2

        code, out, err = await swarm(stack.url, "agent", "describe", "echo")
        assert "Trust" in out
        assert "latency_spike" in out


async def test_debug_shows_the_kv_state_as_last_saved(tmp_path: Path) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "counter", COUNTER)
        await running_on(stack, "counter", "p1")
        assert [await count(stack, "counter") for _ in range(3)] == [1, 2, 3]
        await asyncio.sleep(0.6)  # the pod saves changed kv every 0.2 s here
        report = await snapshot(stack.client, "default", "counter")
        (saved,) = report["kv"].values()
        assert saved["keys"]["count"]["bytes"] == 8
        assert saved["ref"].startswith("swarm-snapshots/")
