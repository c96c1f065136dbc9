"""Dispatcher settings (`SWARM_WEBHOOKS_*`); where NATS is comes from the shared `Settings`."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.webhooks import DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT
from swarm.kernel.webhook_storage import DEFAULT_RECORDS_MAX_AGE


class WebhookSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_WEBHOOKS_", extra="ignore", frozen=True)

    #: Deliver to loopback, private, link-local and other non-public addresses. Off by default:
    #: a subscription pointing inside the network would let anyone who may add webhooks make
    #: this process send requests there (server-side request forgery).
    allow_private: bool = False
    #: Attempts per event for subscriptions that do not set their own.
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_ATTEMPTS_LIMIT)
    #: Backoff before retry n is uniform in [0, min(backoff_max_s, backoff_base_s * 2**(n-1))]
    #: ("full jitter"), so receivers that failed together are not retried together.
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    #: Seconds one HTTP attempt may take, connecting included.
    timeout_s: float = Field(default=10.0, gt=0)
    #: Events of one subscription in flight at once (the consumer's max_ack_pending).
    window: int = Field(default=32, ge=1, le=1024)
    #: Seconds before JetStream hands an unacknowledged event out again (after a crash). The
    #: dispatcher renews it before every attempt and backoff, so it must exceed both.
    ack_wait_s: float = Field(default=60.0, gt=0)
    #: How long attempt records are kept.
    records_max_age_s: float = Field(default=DEFAULT_RECORDS_MAX_AGE, gt=0)
    #: Seconds a host's DNS answer is reused for the private-address check.
    dns_cache_s: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _ack_wait_covers_attempts(self) -> WebhookSettings:
        if self.ack_wait_s <= max(self.timeout_s, self.backoff_max_s):
            raise ValueError(
                "ack_wait_s must exceed timeout_s and backoff_max_s, or JetStream would hand an "
                "event being retried to the dispatcher a second time"
            )
        return self
