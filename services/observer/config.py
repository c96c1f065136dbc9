"""Observer settings (`SWARM_OBSERVER_*`); where NATS and Postgres are comes from `Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.observer.machine import MachineConfig
from services.observer.scoring import DetectorConfig


class ObserverSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_OBSERVER_", extra="ignore", frozen=True)

    #: Window length in seconds of stream time. Pods publish metrics every
    #: SWARM_POD_METRICS_INTERVAL_S (5 s by default), so a window should span at least two.
    window_s: float = Field(default=10.0, gt=0)
    baseline_windows: int = Field(default=120, ge=3)
    warmup_windows: int = Field(default=10, ge=1)
    #: Windows with calls before a finding about an agent may be critical (and so stop it).
    critical_warmup_windows: int = Field(default=30, ge=1)
    #: A window with this many times an agent's usual calls per second is judged on latency
    #: and mailbox waits only against windows of similar load.
    load_step: float = Field(default=2.0, gt=1)
    #: Agents of one pod (at least this many, and this share of those observed) deviating
    #: together make a machine-wide finding instead of agent findings.
    machine_min_agents: int = Field(default=5, ge=2)
    machine_share: float = Field(default=0.5, gt=0, le=1)
    base_threshold: float = Field(default=0.5, gt=0, lt=1)
    threshold_quantile: float = Field(default=0.99, gt=0, le=1)
    quiet_windows: int = Field(default=3, ge=1)
    evidence_z: float = Field(default=4.0, gt=0)
    #: Events per batch of each processor (a batch's state is committed, then acked, at once).
    fetch_batch: int = Field(default=500, ge=1, le=1000)
    #: How long a fetch waits for events before it looks again.
    idle_s: float = Field(default=0.1, gt=0)
    #: Seconds before an unacknowledged batch is redelivered.
    ack_wait_s: float = Field(default=30.0, gt=0)
    #: Findings about windows that ended longer ago than this (read again from old metrics,
    #: after a first start or a rebuild) are logged, not reported; capped at the duplicate window.
    report_max_age_s: float = Field(default=3600.0, gt=0)
    #: Seconds between writes of behaviour vectors to Postgres.
    flush_s: float = Field(default=0.5, gt=0)
    #: Store a behaviour vector per agent per window in Postgres (needs SWARM_DATABASE_URL).
    store_behaviour: bool = True

    def machine(self) -> MachineConfig:
        return MachineConfig(
            min_agents=self.machine_min_agents,
            share=self.machine_share,
            quiet_windows=self.quiet_windows,
        )

    def detector(self) -> DetectorConfig:
        return DetectorConfig(
            baseline_windows=self.baseline_windows,
            warmup_windows=self.warmup_windows,
            critical_warmup_windows=self.critical_warmup_windows,
            load_step=self.load_step,
            base_threshold=self.base_threshold,
            threshold_quantile=self.threshold_quantile,
            quiet_windows=self.quiet_windows,
            evidence_z=self.evidence_z,
        )
