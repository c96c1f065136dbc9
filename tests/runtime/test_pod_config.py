"""Pod settings are bounded by the schema of what the pod registers (schemas/specs.py): a value
the Hive would refuse fails when the pod starts, naming the variable, not at registration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydantic
import pytest

from runtime.config import PodSettings, PodSettingsError, load_pod_settings
from schemas import commands
from schemas.specs import (
    MAX_ENERGY_COST,
    MAX_FUEL_PER_S,
    MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_LEASE_S,
    MAX_POD_MEMORY_MB,
    MAX_POD_SLOTS,
    MAX_ZONE_CHARS,
    MIN_LEASE_S,
    Capacity,
)
from tests.helpers.interpreter import run_python

ROOT = Path(__file__).resolve().parents[2]


BAD = [
    ("LEASE_S", str(MIN_LEASE_S / 2)),
    ("LEASE_S", str(MAX_LEASE_S + 1)),
    ("LEASE_S", "nan"),
    ("ENERGY_COST", str(MAX_ENERGY_COST * 10)),
    ("ENERGY_COST", "inf"),
    ("ENERGY_COST", "-1"),
    ("MEMORY_MB", str(MAX_POD_MEMORY_MB + 1)),
    ("FUEL_PER_S", str(MAX_FUEL_PER_S + 1)),
    ("SLOTS", str(MAX_POD_SLOTS + 1)),
    ("SLOTS", "0"),
    ("ZONE", "z" * (MAX_ZONE_CHARS + 1)),
    ("LABELS", json.dumps({f"k{i}": "v" for i in range(MAX_LABELS + 1)})),
    ("LABELS", json.dumps({"k" * (MAX_LABEL_KEY_CHARS + 1): "v"})),
    ("LABELS", json.dumps({"k": "v" * (MAX_LABEL_VALUE_CHARS + 1)})),
    ("LABELS", json.dumps({"k": 1})),
    ("LABELS", "gpu=a100"),
    ("ID", "not a token"),
    ("LOOP_STALL_S", "0"),
]


@pytest.mark.parametrize(("variable", "value"), BAD)
def test_a_setting_out_of_bounds_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(f"SWARM_POD_{variable}", value)
    with pytest.raises(PodSettingsError) as caught:
        load_pod_settings()
    message = str(caught.value)
    assert message.startswith("invalid pod setting: ")
    assert variable.lower() in message.lower()
    assert len(message) < 1000  # a long bad value is not echoed whole


def test_settings_at_the_bounds_register() -> None:
    """The largest and smallest values a pod accepts are ones the Hive accepts too."""
    for config in (
        PodSettings(
            id="p-max",
            lease_s=MAX_LEASE_S,
            energy_cost=MAX_ENERGY_COST,
            memory_mb=MAX_POD_MEMORY_MB,
            fuel_per_s=MAX_FUEL_PER_S,
            slots=MAX_POD_SLOTS,
            zone="z" * MAX_ZONE_CHARS,
            labels={
                f"{i:0{MAX_LABEL_KEY_CHARS}d}": "v" * MAX_LABEL_VALUE_CHARS
                for i in range(MAX_LABELS)
            },
        ),
        PodSettings(id="p-min", lease_s=MIN_LEASE_S, energy_cost=0, memory_mb=1, slots=1),
    ):
        register = commands.RegisterPod(
            pod_id=config.id,
            capacity=Capacity(
                memory_mb=config.memory_mb, fuel_per_s=config.fuel_per_s, slots=config.slots
            ),
            labels=dict(config.labels),
            zone=config.zone,
            energy_cost=config.energy_cost,
            lease_s=config.lease_s,
        )
        # What the pod sends survives the Hive's strict decoding.
        assert commands.RegisterPod.model_validate_json(register.model_dump_json()) == register


def test_settings_given_in_code_are_bounded_too() -> None:
    with pytest.raises(pydantic.ValidationError):
        PodSettings(lease_s=0.1)


def test_the_pod_process_exits_with_the_message_before_it_connects() -> None:
    env = {
        **os.environ,
        "SWARM_POD_LEASE_S": "0.1",
        "SWARM_POD_SLOTS": str(MAX_POD_SLOTS + 1),
        # Nothing listens here: the settings must fail first.
        "SWARM_NATS_URL": "nats://127.0.0.1:1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = run_python("-m", "runtime", env=env, cwd=ROOT)
    assert done.returncode == 1
    assert "invalid pod setting: SWARM_POD_SLOTS" in done.stderr
    assert "SWARM_POD_LEASE_S: Input should be greater than or equal to 0.5" in done.stderr
    assert "Traceback" not in done.stderr
