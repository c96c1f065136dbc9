"""Build the C counter agent into a Swarm core module with the `ziglang` wheel's `zig cc`.

    python examples/counter-c/build.py              # writes counter.wasm next to it
    python examples/counter-c/build.py -o out.wasm  # writes it elsewhere

No other toolchain is needed. `ziglang` is not part of Swarm's base install (its wheel is
101 MB, 411 MB installed, for this example alone): the first build installs it into the
virtual environment running this script (`pip install ziglang==...`, once, with a progress
line), and says what to do when that cannot work (offline, or not in a virtual environment).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Final

HERE = Path(__file__).resolve().parent

#: The same pin as the dev extra of pyproject.toml (tests/test_toolchains.py checks it).
ZIGLANG: Final = "ziglang==0.17.0"

#: wasm32 with no OS and no libc. The exports are also marked in the source (export_name), the
#: memory is exported by wasm-ld by default, and the stack is kept to 64 KiB (the default 1 MiB
#: would make every instance start with 17 pages).
FLAGS = [
    "--target=wasm32-freestanding",
    "-nostdlib",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--no-entry",
    "-Wl,--export=swarm_alloc",
    "-Wl,--export=swarm_handle",
    "-Wl,-z,stack-size=65536",
]


class ToolchainMissing(Exception):
    """ziglang is not installed and could not be installed; the message says what to do."""


def command(source: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "ziglang", "cc", *FLAGS, "-o", str(output), str(source)]


def install_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        ZIGLANG,
    ]


def ensure_ziglang() -> None:
    """Install ziglang into this interpreter's virtual environment unless it is there."""
    if importlib.util.find_spec("ziglang") is not None:
        return
    by_hand = f"{sys.executable} -m pip install {ZIGLANG}"
    if sys.prefix == sys.base_prefix:
        raise ToolchainMissing(
            f"the C toolchain ({ZIGLANG}) is not installed, and {sys.executable} is not a virtual "
            "environment's Python, so it is not installed for you: run this script with "
            f"Swarm's .venv/bin/python (scripts/up makes it), or install it: {by_hand}"
        )
    print(
        f"installing the C toolchain {ZIGLANG} into {sys.prefix} (first build only; "
        "a 101 MB download)...",
        flush=True,
    )
    proc = subprocess.run(install_command(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ToolchainMissing(
            f"could not install {ZIGLANG} (offline, or no package index reachable?); "
            f"install it when online: {by_hand}\npip said:\n{detail}"
        )
    importlib.invalidate_caches()
    if importlib.util.find_spec("ziglang") is None:
        raise ToolchainMissing(f"pip installed {ZIGLANG} but it cannot be imported; try {by_hand}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build examples/counter-c/counter.c to wasm32.")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "counter.wasm")
    args = parser.parse_args(argv)
    try:
        ensure_ziglang()
    except ToolchainMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cmd = command(HERE / "counter.c", args.output)
    print(" ".join(cmd), flush=True)
    result = subprocess.run(cmd, check=False)
    if result.returncode == 0:
        print(f"wrote {args.output}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
