"""SandboxLimits come from the agent's spec."""

from __future__ import annotations

import dataclasses

import pytest

from runtime.limits import CallBudget, SandboxLimits
from schemas.specs import AgentSpec, Limits, Resources
from tests.runtime import agents


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
