"""Build a Python agent (`app.py`) into a WebAssembly component of the `swarm:agent` world.

componentize-py (installed with Swarm; pods do not use it) bundles CPython, the app, the Swarm
SDK (`runtime/sdk/swarm_agent`) and the bindings it generates from `runtime/wit/agent.wit` into
one component, offline. The app module must define `class Handler(swarm_agent.Agent)`.

Only the app's directory and the SDK are on the component's Python path: the app may import
the standard library, `swarm_agent`, and modules next to it (pure Python), nothing from the
environment that runs the build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runtime.components import WIT_DIR, WORLD, is_component

SDK_DIR: Final = Path(__file__).parent / "sdk"
#: Names the generated bindings and the SDK take; an app module may not shadow them.
_RESERVED: Final = frozenset({"wit_world", "swarm_agent", "componentize_py_types", WORLD})


class BuildError(Exception):
    """The agent could not be built; the message says why (componentize-py's output included)."""


class BadSource(BuildError):
    """The source is not a buildable agent file (missing, not .py, unusable module name)."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    output: Path
    size: int
    duration_s: float


def componentize_py() -> list[str]:
    """The command that runs componentize-py, or BuildError if it is not installed."""
    exe = Path(sys.executable).with_name("componentize-py")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("componentize-py")
    if found:
        return [found]
    raise BuildError(
        "componentize-py is not installed, although Swarm depends on it: reinstall Swarm "
        "(scripts/install) or `pip install componentize-py==0.25.1` into this environment"
    )


def build_agent(app: Path, output: Path | None = None, *, timeout_s: float = 300) -> BuildResult:
    """Build `app` (a .py file) into a component at `output` (default: `app` with `.wasm`)."""
    app = app.resolve()
    if not app.is_file() or app.suffix != ".py":
        raise BadSource(f"{app}: expected a Python file such as app.py")
    module = app.stem
    if not module.isidentifier() or module in _RESERVED:
        raise BadSource(f"{app.name}: the module name {module!r} is not usable; rename the file")
    output = (output or app.with_suffix(".wasm")).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        *componentize_py(),
        "--quiet",
        "--wit-path",
        str(WIT_DIR),
        "--world",
        WORLD,
        "componentize",
        "--python-path",
        str(app.parent),
        "--python-path",
        str(SDK_DIR),
        module,
        "--output",
        "",  # set below: a temporary file, renamed once complete
    ]
    # Without VIRTUAL_ENV componentize-py does not add the build environment's site-packages.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=".build-", suffix=".wasm")
    os.close(fd)
    command[-1] = tmp
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="swarm-build-") as workdir:
            proc = subprocess.run(
                command,
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise BuildError(f"componentize-py failed for {app.name}:\n{detail}")
        if not is_component(Path(tmp).read_bytes()[:8]):
            raise BuildError("componentize-py did not produce a WebAssembly component")
        os.replace(tmp, output)
    except subprocess.TimeoutExpired:
        raise BuildError(f"componentize-py took longer than {timeout_s:.0f} s") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return BuildResult(output, output.stat().st_size, time.perf_counter() - started)
