"""Build the C counter agent into a Swarm core module with the `ziglang` wheel's `zig cc`.

    .venv/bin/python examples/counter-c/build.py              # writes counter.wasm next to it
    .venv/bin/python examples/counter-c/build.py -o out.wasm  # writes it elsewhere

`ziglang` is in the `dev` extra (`pip install -e '.[dev]'`); no other toolchain is needed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

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


def command(source: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "ziglang", "cc", *FLAGS, "-o", str(output), str(source)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build examples/counter-c/counter.c to wasm32.")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "counter.wasm")
    args = parser.parse_args(argv)
    cmd = command(HERE / "counter.c", args.output)
    print(" ".join(cmd), flush=True)
    result = subprocess.run(cmd, check=False)
    if result.returncode == 0:
        print(f"wrote {args.output}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
