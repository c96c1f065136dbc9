"""Scheduler settings (`SWARM_SCHEDULER_*`); where NATS is comes from the shared `Settings`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.scheduler.catalog import POLICIES
from services.scheduler.policies import Pricing
from swarm.devstack.principals import Roster, load


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_SCHEDULER_", extra="ignore", frozen=True)

    #: Placement policy by name: `market` (see `market.py`), or the baselines `first-fit` and
    #: `most-free`.
    policy: str = "market"
    #: λ of the market's score `price + λ * energy_cost`; 0 places on price alone.
    energy_weight: float = Field(default=1.0, ge=0)
    #: Base price per resource unit (64 MB) of a pod without a `base-price` label.
    base_price: float = Field(default=1.0, gt=0)
    #: k in `base_price * (1 + k * utilisation^2)`.
    price_slope: float = Field(default=3.0, ge=0)
    #: Propose preemptions for waiting replicas of a higher priority (market policy only).
    preemption: bool = True
    #: Clearings kept for `swarm market` (answered on `swarm.query.market.state`).
    recent_clearings: int = Field(default=200, ge=0, le=10_000)
    #: First wait before a rejected proposal's replica is proposed again; doubles per rejection.
    retry_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=8.0, gt=0)
    #: Proposals sent per pipelined batch.
    max_proposals: int = Field(default=512, ge=1, le=4096)
    #: Events per batch of the stream app's intake (also its `max_ack_pending`; at most 1000).
    fetch_batch: int = Field(default=1000, ge=1)
    #: How often the planning pass looks for due retries when no event arrives.
    idle_s: float = Field(default=0.05, gt=0)
    #: The stack's principals (`principals.json`, as `swarm up` writes it): when given, the
    #: market is answered only to queries one of them signed, and to a user only with a role
    #: in every namespace (`swarm.kernel.queryguard`, `swarm.domain.policy.Reader`).
    principals_file: Path | None = None

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(
                f"unknown placement policy {value!r}; known: {', '.join(sorted(POLICIES))}"
            )
        return value

    @field_validator("principals_file")
    @classmethod
    def _readable_principals(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                load(value)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"cannot read the principals in it: {exc}") from None
        return value

    def pricing(self) -> Pricing:
        return Pricing(self.base_price, self.price_slope, self.energy_weight)

    def principals(self) -> Roster | None:
        """The principals (read again when the file changes), or None: any query is answered."""
        return Roster(self.principals_file) if self.principals_file is not None else None
