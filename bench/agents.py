"""Python agent benchmark: how long a component takes to build, to deploy first, and to redeploy.

    .venv/bin/python bench/agents.py [--quick] [--component PATH] [--json PATH]

One run, one machine, every baseline measured in the same run:

* build: examples/counter-py/app.py into a component with componentize-py (`swarm agent build`),
  wall and CPU time (skipped by `--quick`, or given a prebuilt one with `--component`);
* where a pod's start of it goes, step by step in this process as a pod does it: the baseline
  compile (winch) a new component starts on, its instance and first call; the optimized compile
  (cranelift, measured alone); a load from the on-disk cache (a new cache on the same
  directory: what a restarted pod or another pod of the machine does), instantiate + `init`,
  first message; object store push and fetch; against the same steps for the echo core module;
* end to end through the control plane (a real Hive in a subprocess, the scheduler here, a pod
  as `python -m runtime` in a subprocess, as `swarm up` runs it): `agent.deploy` appended ->
  `replica_running` seen, for the first deploy (the pod's cache is cold; also until its
  optimized code is on disk), a redeploy (another
  agent of the same module on the same pod: compiled code in memory), and a deploy on a second
  pod that shares the machine's cache directory (compiled code on disk); the pods' CPU time for
  each; against the same deploys of the echo core module.

Without a component (`--quick` and no `--component`) only the baseline rows are measured; no
component number is made up. Results go to bench/results/agents.json with machine info.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import psutil
import structlog
import wasmtime
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from bench.controlplane import RunningWatch, control_plane, pods_registered
from bench.pods import pod_process
from runtime.components import ComponentCache, ComponentSandbox
from runtime.engine import SandboxEngine
from runtime.host import MemoryHost
from runtime.limits import SandboxLimits
from runtime.modules import ModuleCache
from runtime.sandbox import AgentSandbox
from schemas import command, commands, names
from schemas.specs import AgentSpec, ModuleRef, Placement
from swarm.kernel.eventlog import AppendRequest, EventLog

ROOT = Path(__file__).resolve().parents[1]
COUNTER_APP = ROOT / "examples" / "counter-py" / "app.py"
ECHO_WAT = ROOT / "examples" / "echo" / "echo.wat"
POD_IDS = ("bench-pod-0", "bench-pod-1")
TARGET_FIRST_DEPLOY_S = 10.0
TARGET_REDEPLOY_S = 1.0
T = TypeVar("T")


def cpu_s() -> float:
    """CPU time of this process (all threads: wasmtime compiles on several)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    wall, cpu = time.perf_counter(), cpu_s()
    result = fn()
    return result, {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_s() - cpu}


async def timed_async(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    wall, cpu = time.perf_counter(), cpu_s()
    result = await fn()
    return result, {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_s() - cpu}


# --- build ---------------------------------------------------------------------------------------


def build(out: Path) -> tuple[bytes, dict[str, float]]:
    from runtime.build import build_agent

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = build_agent(COUNTER_APP, out / "counter.wasm")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    wall = time.perf_counter() - started
    return result.output.read_bytes(), {"wall_s": wall, "cpu_s": cpu, "bytes": result.size}


# --- a pod's steps, in this process --------------------------------------------------------------


def component_steps(wasm: bytes, root: Path) -> dict[str, dict[str, float]]:
    """A pod's steps for a new component: baseline code, then the optimized compile (measured
    alone, with nothing else compiling), a load from the disk cache, an instance, a call."""
    steps: dict[str, dict[str, float]] = {}
    sha256, steps["sha256"] = timed(lambda: hashlib.sha256(wasm).hexdigest())
    limits = SandboxLimits()
    with SandboxEngine() as engine:
        tiered = ComponentCache(engine, root / "tiered")
        baseline, steps["compile_baseline"] = timed(lambda: tiered.load(wasm))
        if baseline.optimized:
            raise RuntimeError("this wasmtime has no baseline compiler (winch)")
        host = MemoryHost()
        sandbox, steps["instantiate_baseline"] = timed(
            lambda: ComponentSandbox(tiered, baseline, limits, host)
        )
        result, steps["first_call_baseline"] = timed(lambda: sandbox.handle(b"{}"))
        assert result.replies == (b"1",), result
        sandbox.close()
        tiered.wait_optimized(sha256)  # its background compile, before the one measured alone
        tiered.close()
        cold = ComponentCache(engine, root / "optimized", baseline=False)
        _, steps["compile_optimized"] = timed(lambda: cold.load(wasm))
        disk = ComponentCache(engine, root / "optimized")
        component, steps["load_cached"] = timed(lambda: disk.load(wasm))
        assert disk.stats.disk_hits == 1, disk.stats
        sandbox, steps["instantiate"] = timed(
            lambda: ComponentSandbox(disk, component, limits, MemoryHost())
        )
        result, steps["first_call"] = timed(lambda: sandbox.handle(b"{}"))
        assert result.replies == (b"1",), result
        sandbox.close()
    return steps


def core_steps(wasm: bytes, cache_dir: Path) -> dict[str, dict[str, float]]:
    steps: dict[str, dict[str, float]] = {}
    _, steps["sha256"] = timed(lambda: hashlib.sha256(wasm).hexdigest())
    with SandboxEngine() as engine:
        # Core modules compile in milliseconds: cranelift only, no baseline tier.
        _, steps["compile_optimized"] = timed(lambda: ModuleCache(engine, cache_dir).load(wasm))
        disk = ModuleCache(engine, cache_dir)
        module, steps["load_cached"] = timed(lambda: disk.load(wasm))
        assert disk.stats.disk_hits == 1, disk.stats
        sandbox, steps["instantiate"] = timed(
            lambda: AgentSandbox(engine, module, SandboxLimits(), MemoryHost())
        )
        result, steps["first_call"] = timed(lambda: sandbox.handle(b"{}"))
        assert result.replies == (b"{}",), result
    return steps


# --- the control plane ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pod(url: str, pod_id: str, cache_dir: Path, root: Path) -> AsyncIterator[psutil.Process]:
    """`python -m runtime`, as `swarm up` runs a pod; its log goes to `root`/<pod_id>.log."""
    settings = {
        "SWARM_POD_ID": pod_id,
        "SWARM_POD_CACHE_DIR": str(cache_dir),
        "SWARM_POD_LABELS": json.dumps({"pod": pod_id}),
    }
    async with pod_process(url, settings, root / f"{pod_id}.log") as proc:
        yield psutil.Process(proc.pid)


def deploy_request(name: str, module: ModuleRef, pod_id: str) -> AppendRequest:
    # Pinned to one pod by its label, so each deploy lands where the measure says.
    spec = AgentSpec(
        version="v1", module=module, placement=Placement(node_selector={"pod": pod_id})
    )
    payload = commands.DeployAgent(name=name, spec=spec, replicas=1)
    return AppendRequest.of(command(payload, source="bench", identity="user:bench"))


async def deploy(
    log: EventLog,
    watch: RunningWatch,
    name: str,
    module: ModuleRef,
    pod_id: str,
    proc: psutil.Process,
    timeout: float,
) -> dict[str, float]:
    """`agent.deploy` appended -> `replica_running` seen; the pod's CPU time meanwhile."""
    waiter = watch.wait(name)
    cpu = sum(proc.cpu_times()[:2])
    started = time.perf_counter()
    await log.append_raw(deploy_request(name, module, pod_id))
    running = await asyncio.wait_for(waiter, timeout)
    return {"wall_s": running - started, "pod_cpu_s": sum(proc.cpu_times()[:2]) - cpu}


async def optimized_on_disk(cache_dir: Path, sha256: str, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not await asyncio.to_thread(lambda: any(cache_dir.glob(f"{sha256}-*.component.cwasm"))):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no optimized code for {sha256} in {cache_dir} after {timeout} s")
        await asyncio.sleep(0.1)


async def end_to_end_deploys(
    root: Path, component: bytes | None, echo: bytes, timeout: float
) -> dict[str, Any]:
    # One directory for the machine's pods, as `swarm up` gives them.
    cache_dir = root / "modules"
    result: dict[str, Any] = {}
    async with control_plane(root) as plane:
        log, watch, url = plane.log, plane.watch, plane.url
        store = await log.js.object_store(names.OBJECT_STORE_MODULES)
        echo_ref = ModuleRef(inline=base64.b64encode(echo).decode())
        first, second = POD_IDS
        async with pod(url, first, cache_dir, root) as pod0:
            await pods_registered(log, {first})
            core: dict[str, Any] = {}
            core["first_deploy"] = await deploy(log, watch, "echo1", echo_ref, first, pod0, timeout)
            core["redeploy"] = await deploy(log, watch, "echo2", echo_ref, first, pod0, timeout)
            result["core"] = core
            if component is not None:
                sha = hashlib.sha256(component).hexdigest()
                _, push = await timed_async(lambda: store.put(sha, component))
                _, fetch = await timed_async(lambda: store.get(sha))
                ref = ModuleRef(sha256=sha, kind="component")
                py: dict[str, Any] = {"push": push, "fetch": fetch}
                started = time.perf_counter()
                cpu = sum(pod0.cpu_times()[:2])
                py["first_deploy"] = await deploy(log, watch, "py1", ref, first, pod0, timeout)
                # Its optimized code compiles in the pod's background: ready once on disk.
                await optimized_on_disk(cache_dir, sha, timeout)
                py["first_deploy_optimized"] = {
                    "wall_s": time.perf_counter() - started,
                    "pod_cpu_s": sum(pod0.cpu_times()[:2]) - cpu,
                }
                py["redeploy"] = await deploy(log, watch, "py2", ref, first, pod0, timeout)
                async with pod(url, second, cache_dir, root) as pod1:
                    await pods_registered(log, {second})
                    py["other_pod"] = await deploy(log, watch, "py3", ref, second, pod1, timeout)
                result["component"] = py
    return result


# --- report --------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(title="Python agents: build, first deploy, redeploy (same run, same machine)")
    for col in ("measure", "component wall", "component CPU", "echo core wall", "echo core CPU"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    py, core = report.get("component_steps"), report["core_steps"]
    skipped = report.get("component_skipped")
    if report.get("build"):
        b = report["build"]
        table.add_row(f"build ({b['bytes'] / 2**20:.1f} MiB)", _s(b["wall_s"]), _s(b["cpu_s"]))
    for step in (
        "sha256",
        "compile_baseline",
        "instantiate_baseline",
        "first_call_baseline",
        "compile_optimized",
        "load_cached",
        "instantiate",
        "first_call",
    ):
        c = core.get(step, {})
        p = py.get(step, {}) if py else {}
        table.add_row(
            f"pod step: {step}",
            _s(p.get("wall_s")),
            _s(p.get("cpu_s")),
            _s(c.get("wall_s")),
            _s(c.get("cpu_s")),
        )
    e2e_py = report["deploys"].get("component", {})
    e2e_core = report["deploys"]["core"]
    for key in ("push", "fetch"):
        if key in e2e_py:
            table.add_row(f"object store {key}", _s(e2e_py[key]["wall_s"]), "", "", "")
    for key, label in (
        ("first_deploy", "first deploy (cold cache): running"),
        ("first_deploy_optimized", "first deploy: optimized code ready"),
        ("redeploy", "redeploy, same pod"),
        ("other_pod", "deploy on a 2nd pod (shared disk cache)"),
    ):
        p, c = e2e_py.get(key, {}), e2e_core.get(key, {})
        table.add_row(
            label,
            _s(p.get("wall_s")),
            _s(p.get("pod_cpu_s")),
            _s(c.get("wall_s")),
            _s(c.get("pod_cpu_s")),
        )
    console.print(table)
    if skipped:
        console.print(f"[yellow]component rows skipped: {skipped}[/]")
    met = report.get("met")
    if met:
        console.print(
            f"targets: first deploy < {TARGET_FIRST_DEPLOY_S:.0f} s: {met['first_deploy']}, "
            f"redeploy < {TARGET_REDEPLOY_S:.0f} s: {met['redeploy']} "
            f"(load average {report['machine']['load_average_1m_start']} on "
            f"{report['machine']['cpu_count']} CPUs: wall times are only meaningful when quiet)"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.arguments("agents", __doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="skip the component build (for the smoke test)"
    )
    parser.add_argument("--component", type=Path, help="a built counter component to use")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one deploy may take")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = _common.console()
    started, load = time.perf_counter(), _common.load_average()
    echo = bytes(wasmtime.wat2wasm(ECHO_WAT.read_text()))
    report: dict[str, Any] = {
        "targets": {"first_deploy_s": TARGET_FIRST_DEPLOY_S, "redeploy_s": TARGET_REDEPLOY_S},
    }
    with tempfile.TemporaryDirectory(prefix="swarm-bench-agents-") as tmp:
        root = Path(tmp)
        component: bytes | None = None
        if args.component is not None:
            component = args.component.read_bytes()
        elif args.quick:
            report["component_skipped"] = "--quick skips the component build"
        else:
            with console.status("building examples/counter-py/app.py (componentize-py)"):
                component, report["build"] = build(root)
        report["core_steps"] = core_steps(echo, root / "core-cache")
        if component is not None:
            with console.status("a pod's steps: compile, load, instantiate"):
                report["component_steps"] = component_steps(component, root / "steps")
        with console.status("deploys through the Hive, the scheduler and pods"):
            report["deploys"] = asyncio.run(end_to_end_deploys(root, component, echo, args.timeout))
    report = {
        **_common.report(
            "agents",
            {"quick": args.quick, "component": str(args.component or "")},
            load,
            wasmtime=version("wasmtime"),
        ),
        **report,
    }
    if component is not None:
        deploys = report["deploys"]["component"]
        report["met"] = {
            "first_deploy": deploys["first_deploy"]["wall_s"] < TARGET_FIRST_DEPLOY_S,
            "redeploy": deploys["redeploy"]["wall_s"] < TARGET_REDEPLOY_S,
        }
    report["elapsed_s"] = round(time.perf_counter() - started, 2)
    render(report, console)
    _common.write_report(args.json, report, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
