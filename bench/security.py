"""Security benchmark: what signing commands and NATS permissions cost, each against the same
run without them.

    .venv/bin/python bench/security.py [--commands N] [--trials N] [--json PATH]

Rows, each a paired ratio over `--trials` alternating repeats (every repeat has its own
nats-server and Hive, so each measures from the same empty start):

* commands/s end to end (publish to outcome on the log, one Hive replica), signed by the sender's
  nkey and verified by a Hive given the stack's principals (`swarm.kernel.signing`, rule
  `signature`), against the same commands unsigned to a Hive that takes any. Target >= 0.8x.
* raw JetStream publishes/s by a principal with a pod's permissions (deny lists on the subjects
  it publishes on: `swarm.devstack.principals`), against the same on a server without
  authorization. The raw baseline of the row above.

* mesh requests/s to an echo agent (`--messages`, 64 in flight, through the pod), signed by the
  client's key and verified by a pod given the stack's principals (runtime/meshguard.py), whose
  answer is signed as the agent, against the same requests unsigned to a pod that checks
  nothing. Both pods are processes (`python -m runtime`, as `swarm up` runs them) on one control
  plane (Hive, scheduler), each with its own echo agent (placed by a label); the client is this
  process. Target >= 0.8x.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.table import Table

from bench import _common
from bench.controlplane import control_plane, pods_registered
from bench.hive import decided_per_second, publish_raw
from bench.pods import pod_process
from schemas import command, commands, names
from schemas.specs import AgentSpec, ModuleRef, Placement, Quota, Resources
from services.hive.testing import HiveCluster
from swarm.devstack.embedded import AUTH_FILE, EmbeddedNats
from swarm.devstack.principals import Principal, issue, write_authorization
from swarm.kernel import env
from swarm.kernel.eventlog import AppendRequest, EventLog, EventLogError
from swarm.kernel.signing import MeshClaim

CHUNK = 500
TARGET = 0.8


def namespaces(n: int, tag: str) -> list[AppendRequest]:
    """`n` commands that each write one event (a namespace) and an outcome."""
    return [
        AppendRequest.of(
            command(
                commands.CreateNamespace(name=f"{tag}-{i}", quota=Quota()),
                source="bench",
                identity="user:bench",
            )
        )
        for i in range(n)
    ]


async def commands_per_second(root: Path, n: int, *, signed: bool) -> float:
    """One Hive replica; `signed`: it takes only the principals' signed commands, and the
    client signs with the owner's key."""
    keys = root / "principals"
    (admin,) = issue(keys, [("admin", "admin")])
    server = EmbeddedNats(root / "nats")
    url = server.start()
    extra = {env.HIVE_PRINCIPALS_FILE: str(keys / "principals.json")} if signed else {}
    cluster = HiveCluster(url, root / "hive", size=1, env=extra)
    (root / "hive").mkdir(parents=True, exist_ok=True)
    cluster.start()
    try:
        log = await EventLog.connect(url, credentials=admin.seed_file if signed else None)
        if not signed:
            log = EventLog(log.nc)  # the same connection, signing nothing
        await cluster.leader(log, timeout=60)  # signed: a Hive with principals answers no other
        requests = namespaces(n, "s" if signed else "u")
        rate, start_seq = await decided_per_second(log, requests)
        rejected = await _rejections(log, start_seq)
        if rejected:
            raise RuntimeError(f"{rejected} commands were rejected: the run measures nothing")
        await log.nc.close()
        return rate
    finally:
        cluster.stop()
        server.stop()


async def _rejections(log: EventLog, start_seq: int) -> int:
    reader = await log.reader(
        names.STREAM_EVENTS,
        start_seq=start_seq,
        subjects=[f"{names.EVENTS_PREFIX}.{names.OUTCOME_AGGREGATE}.*.{names.OUTCOME_REJECTED}"],
    )
    try:
        return len(await reader.fetch(10_000, timeout=0.5))
    finally:
        await reader.close()


async def raw_publish(root: Path, n: int, *, authorised: bool) -> float:
    """Pipelined JetStream publishes; `authorised`: as a service, on a server that admits the
    stack's principals alone, with their permissions."""
    server = EmbeddedNats(root / "nats")
    credentials = None
    if authorised:
        # A service (deny lists: the log's removal, events, secrets): a pod's allow lists take
        # Swarm's own subjects alone, and the bench publishes on a stream of its own.
        principals = issue(root / "principals", [("admin", "admin"), ("scheduler", "service")])
        (root / "nats").mkdir(parents=True, exist_ok=True)
        write_authorization(root / "nats" / AUTH_FILE, principals)
        server.authorize = True
        credentials = principals[1].seed_file
    url = server.start()
    try:
        log = await EventLog.connect(url, ensure=False, credentials=credentials)
        rate = await publish_raw(log, n, namespaces(1, "raw")[0].body)
        await log.nc.close()
        return rate
    finally:
        server.stop()


#: An agent that replies with the message it got (WAT, compiled by wasmtime).
ECHO_WAT = """
(module
  (import "swarm" "reply" (func $reply (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "swarm_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (call $reply (local.get $ptr) (local.get $len))
    (i32.const 0)))
"""
IN_FLIGHT = 64


@contextlib.asynccontextmanager
async def mesh_pods(url: str, root: Path) -> AsyncIterator[Principal]:
    """Two pods, each its own process as `swarm up` runs them: `pod-checked` given the
    principals (it verifies every message and signs its answers), `pod-open` given none.
    Yields the owner's principal, whose key the client signs with."""
    keys = root / "principals"
    admin, pod = issue(keys, [("admin", "admin"), ("pod-checked", "pod")])
    base = {"SWARM_POD_SLOTS": "4", "SWARM_POD_MEMORY_MB": "256"}
    checked = base | {
        "SWARM_POD_ID": "pod-checked",
        "SWARM_POD_CACHE_DIR": str(root / "checked"),
        "SWARM_POD_LABELS": '{"guard": "on"}',
        env.POD_PRINCIPALS_FILE: str(keys / "principals.json"),
        env.NATS_CREDENTIALS: str(pod.seed_file),
    }
    plain = base | {
        "SWARM_POD_ID": "pod-open",
        "SWARM_POD_CACHE_DIR": str(root / "open"),
        "SWARM_POD_LABELS": '{"guard": "off"}',
    }
    async with (
        pod_process(url, checked, root / "pod-checked.log", stop_s=15.0),
        pod_process(url, plain, root / "pod-open.log", stop_s=15.0),
    ):
        yield admin


async def deploy_echo(log: EventLog, name: str, guard: str) -> None:
    import base64

    import wasmtime

    wasm = wasmtime.wat2wasm(ECHO_WAT)
    spec = AgentSpec(
        version="v1",
        module=ModuleRef(inline=base64.b64encode(wasm).decode()),
        resources=Resources(memory_mb=16),
        placement=Placement(node_selector={"guard": guard}),
    )
    payload = commands.DeployAgent(name=name, spec=spec, replicas=1)
    await log.append(command(payload, source="bench", identity="user:bench"))


async def mesh_per_second(log: EventLog, name: str, n: int, claim: MeshClaim | None) -> float:
    """`n` requests to agent `name`, `IN_FLIGHT` at a time; `claim`: signed as that."""
    subject = names.mesh_agent_subject("default", name)
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            body = b"%d" % left
            reply = await log.request(subject, body, timeout=30, claim=claim)
            if reply.data != body or (reply.headers or {}).get(names.HEADER_AGENT_ERROR):
                raise RuntimeError(f"{name} answered {reply.data[:200]!r} to {body!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return n / (time.perf_counter() - started)


async def answering(log: EventLog, name: str, claim: MeshClaim | None) -> None:
    deadline = time.perf_counter() + 60
    while True:
        try:
            await mesh_per_second(log, name, IN_FLIGHT, claim)
            return
        except (EventLogError, RuntimeError, TimeoutError):
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def mesh_bench(root: Path) -> AsyncIterator[tuple[EventLog, EventLog, MeshClaim]]:
    """The control plane and `MeshPods`, each echo agent answering: (a client signing as the
    owner, the same connection signing nothing, the identity it signs as)."""
    async with control_plane(root) as plane, mesh_pods(plane.url, root) as admin:
        await pods_registered(plane.log, {"pod-checked", "pod-open"})
        await deploy_echo(plane.log, "echo-checked", "on")
        await deploy_echo(plane.log, "echo-open", "off")
        # Its own connection, answered under the owner's inbox prefix: a pod answers a signed
        # message there alone (runtime/meshguard.py).
        async with await EventLog.connect(
            plane.url, name="bench-signed", credentials=admin.seed_file, ensure=False
        ) as signed:
            claim = MeshClaim("user:bench")
            await answering(signed, "echo-checked", claim)
            await answering(plane.log, "echo-open", None)
            yield signed, plane.log, claim


async def main() -> None:
    parser = _common.arguments("security", __doc__, raw=True)
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    load_at_start = _common.load_average()
    console = _common.console()
    rows: dict[str, dict[str, list[float]]] = {
        "commands": {"with": [], "without": []},
        "publish": {"with": [], "without": []},
        "mesh": {"with": [], "without": []},
    }
    with tempfile.TemporaryDirectory(prefix="swarm-bench-security-") as tmp:
        root = Path(tmp)
        console.print("mesh: starting a control plane, two pods and two echo agents")
        async with mesh_bench(root / "mesh") as (signed, plain, claim):
            for trial in range(args.trials):
                order = (True, False) if trial % 2 == 0 else (False, True)
                for on in order:
                    with console.status(f"trial {trial + 1}: mesh requests, verified={on}"):
                        rate = await (
                            mesh_per_second(signed, "echo-checked", args.messages, claim)
                            if on
                            else mesh_per_second(plain, "echo-open", args.messages, None)
                        )
                        rows["mesh"]["with" if on else "without"].append(rate)
        for trial in range(args.trials):
            # Alternating which goes first, so a drift in the machine's load weighs on both.
            order = (True, False) if trial % 2 == 0 else (False, True)
            for on in order:
                where = root / f"cmd-{trial}-{on}"
                with console.status(f"trial {trial + 1}: commands, signed={on}"):
                    rows["commands"]["with" if on else "without"].append(
                        await commands_per_second(where, args.commands, signed=on)
                    )
            for on in order:
                where = root / f"raw-{trial}-{on}"
                with console.status(f"trial {trial + 1}: raw publishes, permissions={on}"):
                    rows["publish"]["with" if on else "without"].append(
                        await raw_publish(where, args.commands * 4, authorised=on)
                    )

    results: dict[str, Any] = {}
    table = Table(title="Security benchmark (paired, same run, same machine)")
    for col in ("measure", "with", "without", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    labels = {
        "commands": "commands/s end to end, signed + verified vs unsigned",
        "publish": "JetStream publish/s as a pod with permissions vs no auth",
        "mesh": "mesh request/reply/s, signed + verified vs neither",
    }
    for key, label in labels.items():
        with_, without = rows[key]["with"], rows[key]["without"]
        ratio = _common.paired_ratio(with_, without)
        target = TARGET if key in ("commands", "mesh") else None
        met = None if target is None else ratio >= target
        results[key] = {
            "with_per_s": with_,
            "without_per_s": without,
            "with_median_per_s": statistics.median(with_),
            "without_median_per_s": statistics.median(without),
            "ratio": ratio,
            "target": target,
            "met": met,
        }
        table.add_row(
            label,
            f"{statistics.median(with_):,.0f}",
            f"{statistics.median(without):,.0f}",
            f"{ratio:.2f}",
            f">= {target}" if target is not None else "",
            "" if met is None else ("yes" if met else "NO"),
        )
    console.print(table)
    report = _common.report("security", vars(args) | {"json": str(args.json)}, load_at_start)
    report["results"] = results
    _common.write_report(args.json, report, console)


if __name__ == "__main__":
    asyncio.run(main())
