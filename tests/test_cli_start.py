"""Starting `swarm` stays cheap: building the command line imports none of the heavy packages.

A call imports the module of the verb it runs (`swarm --help` none); a verb module that imports
river, nats-py or the models at its top makes each of its verbs pay for them, `--help` included
(seconds, before this was kept). The check is on what is imported, never on a time:
bench/cli.py measures the time.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.helpers.interpreter import run_python

#: Packages no `swarm` call may import before a verb runs (prefixes of module names).
HEAVY = (
    "river",
    "scipy",
    "numpy",
    "wasmtime",
    "componentize_py",
    "fastapi",
    "starlette",
    "uvicorn",
    "faust",
    "mode",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "pgvector",
    "opentelemetry",
    "nats",
    "aiohttp",
    "httpx",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "yaml",
    "psutil",
    "asyncio",
    "rich.live",
    "rich.tree",
    # The project's own layers below the CLI: the models, services and runtime, the kernel, the
    # dev stack, the client layer's commands and queries (which bring the rest).
    "schemas",
    "services",
    "runtime",
    "swarm.kernel",
    "swarm.devstack",
    "swarm.gateway",
    "swarm.client.commands",
    "swarm.client.queries",
)


#: Light modules under a heavy prefix: the names of the variables that say where a stack is,
#: and the field-error type the client's errors carry (the `schemas` package itself loads its
#: exports lazily).
LIGHT = ("swarm.kernel", "swarm.kernel.env", "schemas", "schemas.fields")


def heavy(modules: list[str]) -> list[str]:
    return sorted(
        m for m in modules if m not in LIGHT and any(m == p or m.startswith(p + ".") for p in HEAVY)
    )


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = run_python("-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    modules: list[str] = json.loads(result.stdout.splitlines()[-1])
    return modules


def test_the_check_sees_a_heavy_import() -> None:
    """The check itself: a module on the list, once imported, is found."""
    assert "yaml" in heavy(loaded_after("import yaml"))


def test_importing_the_command_line_imports_nothing_heavy() -> None:
    assert heavy(loaded_after("import swarm.cli.app")) == []


def test_every_verbs_help_imports_nothing_heavy() -> None:
    """`--help` of every command and group: typer builds every verb's options from its
    signature, so this also proves no signature needs a heavy module."""
    code = """
import contextlib, io
import typer.main
from swarm.cli.app import app

root = typer.main.get_command(app)
ctx = root.make_context("swarm", ["--help"], resilient_parsing=True)

def paths(command, prefix):
    yield prefix
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            yield from paths(command.get_command(ctx, name), [*prefix, name])

shown = 0
for path in paths(root, []):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        app([*path, "--help"])
    assert "Usage" in out.getvalue(), (path, out.getvalue()[-500:])
    shown += 1
assert shown > 50, shown  # every group and verb, the root included
"""
    # typer coerces option values with pydantic (TypeAdapter), so any verb run, --help included,
    # imports pydantic itself; the models and the rest stay out.
    brought_by_typer = {"pydantic", "pydantic_core"}
    found = [m for m in heavy(loaded_after(code)) if m.split(".")[0] not in brought_by_typer]
    assert found == []


def test_a_verb_imports_only_its_own_module() -> None:
    """`swarm status` builds the stack verbs, not the other 60 (swarm.cli.app.LazyCommands)."""
    code = """
import contextlib, io
from swarm.cli.app import app
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    app(["status", "--help"])
"""
    verbs = {m for m in loaded_after(code) if m.startswith("swarm.cli.")}
    assert "swarm.cli.stack" in verbs
    assert not verbs & {"swarm.cli.agent", "swarm.cli.timeline", "swarm.cli.webhook"}


def test_a_groups_verb_is_built_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`swarm agent ls` builds `ls`, not the other verbs of `swarm agent` (~35 ms): the group
    lists them all without building any, and the module's typer app keeps its commands."""
    import typer.main

    from swarm.cli import agent
    from swarm.cli.app import build_verbs

    built: list[str] = []
    real = typer.main.get_command_from_info

    def spy(info: Any, **options: Any) -> Any:
        built.append(info.callback.__name__)
        return real(info, **options)

    monkeypatch.setattr(typer.main, "get_command_from_info", spy)
    group = build_verbs("agent")["agent"]
    assert {"ls", "describe", "deploy", "quarantine"} <= set(group.commands)
    assert built == []
    assert group.commands["ls"].name == "ls"
    assert built == ["ls"]
    assert len(agent.app.registered_commands) == len(group.commands)


def test_every_verb_is_where_the_root_says() -> None:
    """`swarm.cli.app.VERBS` names each module's verbs exactly: a verb missing there would not
    be listed, a name there that the module does not register would fail on use."""
    from swarm.cli.app import VERBS, build_verbs

    for module in {verb.module for verb in VERBS.values()}:
        expected = {name for name, verb in VERBS.items() if verb.module == module}
        assert set(build_verbs(module)) == expected, module


def test_the_root_help_lists_each_verb_with_its_own_first_sentence() -> None:
    """`swarm --help` lists the verbs from `VERBS` without building them: each summary there is
    the verb's help as its module writes it, so a changed help cannot leave a stale line."""
    from swarm.cli.app import VERBS, build_verbs

    built: dict[str, Any] = {}
    for module in {verb.module for verb in VERBS.values()}:
        built.update(build_verbs(module))
    for name, verb in VERBS.items():
        assert built[name].get_short_help_str(limit=1000) == verb.summary, name


def test_the_root_help_builds_no_verb() -> None:
    code = """
import contextlib, io
from swarm.cli.app import app
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    app(["--help"])
assert "observe" in out.getvalue() and "Deploy and manage agents." in out.getvalue()
"""
    assert {m for m in loaded_after(code) if m.startswith("swarm.cli.")} == {"swarm.cli.app"}


def test_the_limits_shown_by_options_are_the_models() -> None:
    from schemas import specs, webhooks
    from swarm.cli import limits
    from swarm.client import logs

    assert limits.MAX_REPLICAS == specs.MAX_REPLICAS
    assert limits.INLINE_MODULE_MAX_BYTES == specs.INLINE_MODULE_MAX_BYTES
    assert limits.WEBHOOK_MAX_ATTEMPTS == webhooks.MAX_ATTEMPTS_LIMIT
    assert limits.LOG_LEVELS == logs.LOG_LEVELS


def test_nats_client_without_websockets_leaves_aiohttp_out() -> None:
    """nats-py imports aiohttp only for ws:// servers; the CLI keeps it out (~125 ms) unless a
    URL asks for WebSockets."""
    start = "import os, sys; sys.argv = ['swarm', 'agent', 'ls']; "
    plain = loaded_after(
        start + "from swarm.cli.app import _without_websockets; _without_websockets(); import nats"
    )
    assert "nats" in plain
    assert "aiohttp" in plain  # the None entry that made its import fail
    assert "aiohttp.client" not in plain
    ws = loaded_after(
        start + "os.environ['SWARM_NATS_URL'] = 'ws://127.0.0.1:1'; "
        "from swarm.cli.app import _without_websockets; _without_websockets(); import nats"
    )
    assert "aiohttp.client" in ws


def test_a_read_verbs_client_layer_builds_no_contract_model_and_no_key() -> None:
    """What `swarm agent ls` imports once NATS is named: the contract models (built at the
    registry's first lookup) and cryptography (where a seal is made or checked) stay out."""
    loaded = loaded_after(
        "from swarm.cli import connect\n"
        "from swarm.cli.queries import HiveQueries\n"
        "from swarm.client.commands import read_floor\n"
        "from swarm.kernel.eventlog import EventLog"
    )
    assert "swarm.client.commands" in loaded
    models = ("schemas.commands", "schemas.events", "schemas.webhooks", "schemas.market")
    assert [m for m in loaded if m in models or m.split(".")[0] == "cryptography"] == []


@pytest.mark.parametrize("structlog_first", [True, False], ids=["imported", "imported-later"])
def test_a_verbs_log_lines_go_to_stderr_never_into_its_output(structlog_first: bool) -> None:
    """Once a verb connects, the layers below log to stderr (warnings and up): a reconnect
    warning on stdout would corrupt `-o json`. So too when structlog is imported only after
    the verb connected (a read verb does not import it: it is configured at that import)."""
    logs = (
        "import structlog\n"
        "log = structlog.get_logger('swarm.kernel.eventlog')\n"
        "log.info('not shown')\n"
        "log.warning('nats error', error='reconnecting')\n"
    )
    configure = (
        "import sys\n"
        "from swarm.cli.connect import _logs_to_stderr\n"
        "_logs_to_stderr(None)\n"
        "assert ('structlog' in sys.modules) is " + str(structlog_first) + "\n"
    )
    script = "import structlog\n" + configure + logs if structlog_first else configure + logs
    env = {k: v for k, v in os.environ.items() if k not in ("SWARM_LOG_LEVEL", "SWARM_LOG_FORMAT")}
    result = run_python("-c", script, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "nats error" in result.stderr
    assert "not shown" not in result.stderr


def test_a_read_verb_reads_no_settings_and_imports_no_structlog() -> None:
    """`swarm agent ls` (NATS unreachable here) reads no settings (pydantic-settings), imports
    no structlog and not the client layer's commands (the contract models): ~130 ms of the
    ~650 ms it took with a stack before (bench/cli.py). A bad setting it does not use does not
    stop it; one about logging, which it uses, still does."""
    code = """
import contextlib, io, json, sys
from swarm.cli.app import app
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
    app(["agent", "ls", "--nats-url", "nats://127.0.0.1:1"])
print(json.dumps({"stderr": err.getvalue(), "modules": sorted(sys.modules)}))
"""

    def ls(env: dict[str, str]) -> tuple[str, list[str]]:
        result = run_python("-c", code, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        ran = json.loads(result.stdout.splitlines()[-1])
        return ran["stderr"], ran["modules"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["SWARM_STREAM_REPLICAS"] = "many"
    said, loaded = ls(env)
    assert "cannot reach NATS" in said, said
    left_out = ("pydantic_settings", "structlog", "swarm.kernel.settings", "swarm.client.commands")
    assert [m for m in loaded if m.split(".")[0] in left_out or m in left_out] == []

    said, _ = ls({**env, "SWARM_LOG_FORMAT": "xml"})
    assert "invalid setting:" in said, said
    assert "SWARM_LOG_FORMAT: Input should be" in said, said


def test_the_variables_read_before_the_settings_are_the_settings_own() -> None:
    """`swarm.kernel.env` names variables the settings read: each is a field's (or alias's)."""
    from swarm.kernel import env
    from swarm.kernel.settings import Settings

    read = set()
    for name, field in Settings.model_fields.items():
        read.add(f"{env.PREFIX}{name.upper()}")
        aliases = getattr(field.validation_alias, "choices", ())
        read.update(a for a in aliases if isinstance(a, str))
    named = [env.NATS_URL, env.NATS_CREDENTIALS, env.DATABASE_URL, *env.DATA_DIR]
    named += [env.LOG_LEVEL, env.LOG_FORMAT]
    assert [n for n in named if n not in read] == []
