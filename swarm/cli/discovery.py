"""Which stack a verb means, whatever directory it runs in.

`swarm up` records, per user, the data dir of the stack it starts (`record_current`). Every verb
that needs a stack picks its data dir the same way, first match wins:

1. `--data-dir`, on the verbs that have it (`up`, `down`, `status`, `migrate`);
2. `SWARM_HOME`, or its older name `SWARM_DATA_DIR` (`SWARM_HOME` wins when both are set);
3. the stack `swarm up` started last, recorded in `$XDG_STATE_HOME/swarm/current.json`
   (`~/.local/state/swarm/current.json` when XDG_STATE_HOME is unset), as long as its data dir
   still holds a stack;
4. `./.swarm` in the current directory.

`swarm up` skips 3: like `docker compose up`, it starts the stack of the directory it runs in
unless told otherwise, and that stack becomes the recorded one.

The verbs that talk to NATS read its URL from that data dir's `stack.json`, unless `--nats-url`
or `SWARM_NATS_URL` names a server (`swarm.cli.connect`).

Only the standard library at import time: every `swarm` call imports this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from swarm.client import env

if TYPE_CHECKING:
    from swarm.client.settings import Settings

#: The file in a data dir that a running stack's supervisor keeps up to date.
STACK_STATE_FILE = "stack.json"
#: The settings that name a data dir, in the order they are read.
ENV_VARS = env.DATA_DIR


class Source(StrEnum):
    """Where the choice of a data dir came from (`swarm status -o json`: `selected_by`)."""

    FLAG = "flag"
    ENV = "env"
    RECORDED = "recorded"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class StackChoice:
    """A stack's data dir (absolute) and why it was picked, so output can say which stack it
    shows and how to pick another."""

    data_dir: Path
    source: Source
    #: The flag or variable that named it, or the record file.
    detail: str

    def describe(self) -> str:
        if self.source is Source.FLAG:
            return "given with --data-dir"
        if self.source is Source.ENV:
            return f"named by {self.detail}"
        if self.source is Source.RECORDED:
            return f"the stack `swarm up` started last (recorded in {self.detail})"
        return f"./.swarm of this directory, as {self.detail}"


def state_home() -> Path:
    """`$XDG_STATE_HOME`, or `~/.local/state` when it is unset or not absolute (as the XDG base
    directory specification says to treat a relative one)."""
    value = os.environ.get("XDG_STATE_HOME", "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / ".local" / "state"


def current_file() -> Path:
    """The per-user record of the stack `swarm up` started last."""
    return state_home() / "swarm" / "current.json"


def record_current(data_dir: Path) -> Path:
    """Record `data_dir` as the user's current stack; returns the record's path.

    Written to a temporary file and renamed, so a reader sees the old record or the new one.
    Raises `OSError` when it cannot be written (e.g. a read-only home): the caller decides
    whether that matters.
    """
    path = current_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "data_dir": str(data_dir.expanduser().resolve()),
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_current() -> Path | None:
    """The recorded current stack's data dir, or None when nothing usable is recorded.

    The record is only a pointer: one that cannot be read, is not a JSON object with an absolute
    `data_dir`, or points at a directory without a stack state file (deleted since) is ignored,
    and the next rule (`./.swarm`) applies.
    """
    try:
        record = json.loads(current_file().read_text())
    except (OSError, ValueError, RuntimeError):  # RuntimeError: no home directory to be found
        return None
    value = record.get("data_dir") if isinstance(record, dict) else None
    if not isinstance(value, str) or not value or "\0" in value or not os.path.isabs(value):
        return None
    data_dir = Path(value)
    try:
        if not (data_dir / STACK_STATE_FILE).is_file():
            return None
    except OSError:
        return None
    return data_dir


def choose(
    settings: Settings | None, *, flag: Path | None = None, recorded: bool = True
) -> StackChoice:
    """The data dir a verb uses (see the module docstring for the order): `flag` is the verb's
    `--data-dir`; `recorded=False` for `swarm up`, which does not look at the record.

    A data dir set by `SWARM_HOME`/`SWARM_DATA_DIR` (or passed to `Settings`) is told from the
    default by pydantic's record of which fields were given. Without `settings` (a verb that has
    not read them yet) those variables are read straight from the environment.
    """
    if flag is not None:
        return StackChoice(flag.expanduser().resolve(), Source.FLAG, "--data-dir")
    named = next((name for name in ENV_VARS if os.environ.get(name)), None)
    if settings is None:
        data_dir = Path(os.environ[named]) if named else Path(env.DEFAULT_DATA_DIR)
        given_by_env = named is not None
    else:
        data_dir = settings.data_dir
        given_by_env = "data_dir" in settings.model_fields_set
    given = data_dir.expanduser().resolve()
    if given_by_env:
        return StackChoice(given, Source.ENV, named or "the settings")
    if not recorded:
        return StackChoice(given, Source.DEFAULT, "`swarm up` starts where it runs")
    current = read_current()
    if current is not None:
        return StackChoice(current, Source.RECORDED, str(current_file()))
    return StackChoice(given, Source.DEFAULT, "`swarm up` has recorded no stack")
