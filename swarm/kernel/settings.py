"""Process-wide settings, read from `SWARM_*` environment variables.

Every component reads the same settings object so that `swarm up`, the services it starts and a
test fixture agree on where the servers are without passing flags around.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from swarm.kernel import env

S = TypeVar("S", bound=BaseSettings)


class Settings(BaseSettings):
    # validate_by_name: `Settings(data_dir=…)` works although the field reads aliased variables.
    model_config = SettingsConfigDict(
        env_prefix=env.PREFIX, extra="ignore", frozen=True, validate_by_name=True
    )

    #: External NATS server; when unset `swarm up` starts an embedded one.
    nats_url: str | None = None
    #: The NATS nkey seed file this process connects with (`swarm up` gives each service its
    #: own; `swarm status -o json` names the owner's as `nats_credentials`).
    nats_credentials: Path | None = None
    #: External PostgreSQL (with pgvector); when unset `swarm up` starts an embedded one.
    database_url: str | None = None
    #: Where the embedded stack keeps its servers' data, logs and state file: `SWARM_HOME`, or
    #: its older name `SWARM_DATA_DIR` (SWARM_HOME wins when both are set). Left unset, the CLI
    #: uses the stack `swarm up` started last, else `./.swarm` (`swarm.cli.discovery`).
    data_dir: Path = Field(
        default=Path(env.DEFAULT_DATA_DIR), validation_alias=AliasChoices(*env.DATA_DIR)
    )

    #: Replicas of every stream (3 in a clustered deployment, 1 on one machine).
    stream_replicas: int = Field(default=1, ge=1, le=5)
    #: How long metrics and agent logs are kept, in seconds (the audit log is kept forever).
    metrics_max_age: float = Field(default=24 * 3600, gt=0)
    logs_max_age: float = Field(default=7 * 24 * 3600, gt=0)
    #: Window within which a repeated `Nats-Msg-Id` is dropped as a duplicate, in seconds.
    duplicate_window: float = Field(default=2 * 3600, gt=0)
    #: JetStream fsync policy of the embedded server: "always" fsyncs every write (safe against
    #: power loss, slower); "default" is nats-server's periodic flush.
    jetstream_sync: Literal["always", "default"] = "default"

    #: The Hive's public key (base64url ed25519, `swarm status -o json`): with it, readers take
    #: only outcomes the Hive sealed and ignore foreign writes (`swarm.kernel.seal`).
    hive_public_key: str | None = None
    #: Secret behind the ids services derive for their commands (`swarm.kernel.ids`); unset, a
    #: process draws its own, and its ids change when it restarts.
    command_id_secret: str | None = Field(default=None, min_length=16, repr=False)

    @field_validator("nats_credentials", "hive_public_key", "command_id_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `VAR: ${VAR:-}` in docker-compose sets an empty string for "not given".
        return None if value == "" else value

    #: Identity stamped on commands this process sends (CloudEvents extension `identity`).
    identity: str = "user:local"
    #: What services log (debug, info, warning, error), and how: JSON lines, readable lines, or
    #: `auto` (JSON unless stderr is a terminal; `swarm.kernel.logs`).
    log_level: str = "info"
    log_format: Literal["auto", "console", "json"] = "auto"


class SettingsRefused(SystemExit):
    """A setting read from the environment is missing, does not parse or is out of bounds; the
    message names each variable (the process exits with it, before it connects anywhere)."""


def load(cls: type[S], what: str, error: type[SettingsRefused] = SettingsRefused) -> S:
    """`cls()` from the environment, or `error` naming each bad variable and why, in one line
    instead of a traceback (`what`: e.g. "hive setting")."""
    try:
        return cls()
    except SettingsError as exc:  # a value that does not even parse (e.g. JSON that is not)
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise error(f"invalid {what}: {exc}{cause}") from None
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = "; ".join(_problem(prefix, e) for e in exc.errors(include_url=False))
        raise error(f"invalid {what}: {problems}") from None


def _problem(prefix: str, error: Any) -> str:
    """One validation error as a line: the variable and what is wrong with it. An error raised
    by a check of the whole model (no location) names its variables itself: its message alone."""
    context = error.get("ctx") or {}
    if error["type"] == "value_error" and "error" in context:
        message = str(context["error"])  # without pydantic's "Value error, "
    else:
        message = str(error["msg"])
    return f"{_variable(prefix, error['loc'])}: {message}" if error["loc"] else message


def _variable(prefix: str, loc: tuple[int | str, ...]) -> str:
    """`SWARM_POD_LABELS[gpu]` for the location of an error (a long key is cut: the message
    names it, it need not repeat it)."""
    name = f"{prefix}{str(loc[0]).upper()}" if loc else f"{prefix}*"
    parts = [str(p) for p in loc[1:] if p != "[key]"]
    return name + "".join(f"[{p[:32]}…]" if len(p) > 32 else f"[{p}]" for p in parts)
