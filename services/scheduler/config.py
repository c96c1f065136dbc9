"""Scheduler settings (`SWARM_SCHEDULER_*`); where NATS is comes from the shared `Settings`."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.scheduler.policies import POLICIES


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_SCHEDULER_", extra="ignore", frozen=True)

    #: Placement policy by name; `most-free` is the baseline.
    policy: str = "most-free"
    #: First wait before a rejected proposal's replica is proposed again; doubles per rejection.
    retry_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=8.0, gt=0)
    #: Proposals sent per pipelined batch.
    max_proposals: int = Field(default=512, ge=1, le=4096)
    #: Events read per fetch, and how long a fetch waits when the log is quiet.
    fetch_batch: int = Field(default=1000, ge=1)
    idle_s: float = Field(default=0.05, gt=0)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(
                f"unknown placement policy {value!r}; known: {', '.join(sorted(POLICIES))}"
            )
        return value
