"""The agent toolchains the README's commands need are there after `scripts/up` alone.

componentize-py (`swarm agent build`) is a base dependency; ziglang (only examples/counter-c) is
installed by the example's build script on first use. The dev extra has both, so these tests
check the mechanisms themselves: the installed metadata, and build.py run in a stub virtual
environment whose `pip` and `ziglang` are stand-ins that record what they were asked.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BUILD_C = ROOT / "examples" / "counter-c" / "build.py"


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(requirements: list[str]) -> dict[str, str]:
    return {Requirement(r).name: str(Requirement(r).specifier) for r in requirements}


def test_componentize_py_is_installed_with_swarm_itself() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert _pins(project["dependencies"])["componentize-py"] == "==0.25.1"
    # What the installed distribution asks for (scripts/install): not behind an extra.
    installed = [Requirement(r) for r in importlib.metadata.requires("swarm-platform") or []]
    base = {r.name for r in installed if r.marker is None}
    assert "componentize-py" in base
    assert "ziglang" not in base  # 411 MB installed, for one example: installed on first use


def test_the_c_example_installs_the_dev_extras_ziglang() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    dev = _pins(project["optional-dependencies"]["dev"])
    assert f"ziglang{dev['ziglang']}" in BUILD_C.read_text()


def _stub_venv(root: Path, pip_main: str) -> Path:
    """A virtual environment without ziglang whose `python -m pip` runs `pip_main`."""
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pip = Path(purelib) / "pip"
    pip.mkdir(parents=True)
    (pip / "__init__.py").write_text("")
    (pip / "__main__.py").write_text(textwrap.dedent(pip_main))
    return python


# A stand-in pip that records its arguments and "installs" a ziglang whose `cc` writes a module.
_PIP_THAT_INSTALLS = """
    import json, pathlib, sys, sysconfig
    site = pathlib.Path(sysconfig.get_path("purelib"))
    (site / "pip-args.json").write_text(json.dumps(sys.argv[1:]))
    zig = site / "ziglang"
    zig.mkdir()
    (zig / "__init__.py").write_text("")
    (zig / "__main__.py").write_text(
        "import pathlib, sys\\n"
        "args = sys.argv[1:]\\n"
        "pathlib.Path(args[args.index('-o') + 1]).write_bytes(b'\\\\0asm\\\\1\\\\0\\\\0\\\\0')\\n"
    )
"""

_PIP_OFFLINE = """
    import sys
    print("ERROR: Could not find a version that satisfies the requirement ziglang==0.17.0",
          file=sys.stderr)
    sys.exit(1)
"""


def build_c(python: Path | str, output: Path) -> subprocess.CompletedProcess[str]:
    """examples/counter-c/build.py run by `python`, writing `output`."""
    return subprocess.run(
        [str(python), str(BUILD_C), "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(120)
def test_first_c_build_installs_ziglang_into_its_venv(tmp_path: Path) -> None:
    python = _stub_venv(tmp_path / "venv", _PIP_THAT_INSTALLS)
    output = tmp_path / "counter.wasm"

    first = build_c(python, output)

    assert first.returncode == 0, first.stderr
    assert "installing the C toolchain ziglang==0.17.0 into" in first.stdout
    assert output.read_bytes().startswith(b"\0asm")
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    assert (site / "pip-args.json").read_text() == (
        '["install", "--quiet", "--disable-pip-version-check", "ziglang==0.17.0"]'
    )
    # Installed once: the next build finds it and says nothing about installing.
    (site / "pip-args.json").unlink()
    second = build_c(python, output)
    assert second.returncode == 0, second.stderr
    assert "installing" not in second.stdout
    assert not (site / "pip-args.json").exists()


@pytest.mark.timeout(120)
def test_offline_c_build_says_how_to_install_the_toolchain(tmp_path: Path) -> None:
    python = _stub_venv(tmp_path / "venv", _PIP_OFFLINE)

    proc = build_c(python, tmp_path / "counter.wasm")

    assert proc.returncode == 1
    assert "could not install ziglang==0.17.0 (offline" in proc.stderr
    assert "-m pip install ziglang==0.17.0" in proc.stderr
    assert "Could not find a version" in proc.stderr  # pip's own reason, passed on
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "counter.wasm").exists()


def test_outside_a_venv_the_c_build_installs_nothing(tmp_path: Path) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    probe = subprocess.run(
        [
            base,
            "-c",
            "import importlib.util, sys; print(importlib.util.find_spec('ziglang') is None,"
            " sys.prefix == sys.base_prefix)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    if probe.stdout.split() != ["True", "True"]:
        pytest.skip(f"{base} has ziglang or is itself a virtual environment")

    proc = build_c(base, tmp_path / "counter.wasm")

    assert proc.returncode == 1
    assert "not a virtual environment's Python" in proc.stderr
    assert "installing" not in proc.stdout
