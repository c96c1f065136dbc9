"""Process-wide settings, read from `SWARM_*` environment variables.

Every component reads the same settings object so that `swarm up`, the services it starts and a
test fixture agree on where the servers are without passing flags around.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # validate_by_name: `Settings(data_dir=…)` works although the field reads aliased variables.
    model_config = SettingsConfigDict(
        env_prefix="SWARM_", extra="ignore", frozen=True, validate_by_name=True
    )

    #: External NATS server; when unset `swarm up` starts an embedded one.
    nats_url: str | None = None
    #: External PostgreSQL (with pgvector); when unset `swarm up` starts an embedded one.
    database_url: str | None = None
    #: Where the embedded stack keeps its servers' data, logs and state file: `SWARM_HOME`, or
    #: its older name `SWARM_DATA_DIR` (SWARM_HOME wins when both are set). Left unset, the CLI
    #: uses the stack `swarm up` started last, else `./.swarm` (`swarm.cli.discovery`).
    data_dir: Path = Field(
        default=Path(".swarm"), validation_alias=AliasChoices("SWARM_HOME", "SWARM_DATA_DIR")
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

    @field_validator("hive_public_key", "command_id_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `VAR: ${VAR:-}` in docker-compose sets an empty string for "not given".
        return None if value == "" else value

    #: Identity stamped on commands this process sends (CloudEvents extension `identity`).
    identity: str = "user:local"
    #: What services log (debug, info, warning, error), and how: readable lines or JSON.
    log_level: str = "info"
    log_format: Literal["console", "json"] = "console"
