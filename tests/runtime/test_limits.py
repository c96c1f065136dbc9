"""SandboxLimits come from the agent's spec."""

from __future__ import annotations

import dataclasses

import pytest

from runtime.config import PodSettings
from runtime.kvstate import StateCaps
from runtime.limits import CallBudget, SandboxLimits
from schemas.specs import AgentSpec, Limits, Resources
from tests.helpers import agents


def spec(**fields: object) -> AgentSpec:
    return agents.spec(agents.ECHO, **fields)


def test_limits_from_spec() -> None:
    agent = spec(
        limits=Limits(deadline_ms=250, fuel_per_call=5_000),
        resources=Resources(memory_mb=32),
        capabilities=["net"],
    )

    limits = SandboxLimits.from_spec(agent)

    assert limits.deadline_ms == 250
    assert limits.fuel_per_call == 5_000
    assert limits.memory_bytes == 32 * 1024 * 1024
    assert limits.capabilities == frozenset({"net"})
    assert limits.budget == CallBudget()


def test_state_caps_are_the_specs_bounded_by_the_pods() -> None:
    agent = spec(limits=Limits(state_bytes=8 << 20, state_keys=50))

    assert SandboxLimits.from_spec(agent).state_caps == StateCaps(8 << 20, 50)
    pod = PodSettings(max_state_bytes=2 << 20, max_state_keys=1000)
    limits = SandboxLimits.from_spec(agent, pod_state=pod.state_caps())
    assert (limits.state_bytes, limits.state_keys) == (2 << 20, 50)
    # The pod's defaults: 64 MiB and 100,000 keys.
    assert PodSettings().state_caps() == StateCaps(64 << 20, 100_000)


def test_an_agent_holds_at_most_half_the_workers_by_default() -> None:
    assert PodSettings(workers=16).agent_workers() == 8
    assert PodSettings(workers=5).agent_workers() == 3
    assert PodSettings(workers=1).agent_workers() == 1
    assert PodSettings(workers=16, workers_per_agent=4).agent_workers() == 4
    assert PodSettings(workers=2, workers_per_agent=4).agent_workers() == 2


def test_defaults_match_the_specs_defaults() -> None:
    assert SandboxLimits() == SandboxLimits.from_spec(spec())


def test_limits_are_a_frozen_value() -> None:
    limits = SandboxLimits()

    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.deadline_ms = 5  # type: ignore[misc]
    assert limits == SandboxLimits()
    assert hash(limits) == hash(SandboxLimits())


@pytest.mark.parametrize("field", ["fuel_per_call", "deadline_ms", "memory_bytes"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SandboxLimits(**{field: 0})  # type: ignore[arg-type]


def test_budget_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_sends"):
        CallBudget(max_sends=-1)
