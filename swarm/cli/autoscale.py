"""Autoscaling policies on the command line: `--autoscale min=1,max=10,target-rate=50`.

Used by `swarm agent deploy --autoscale` and `swarm agent autoscale`. A policy is checked here
with the same model the Hive uses, so a bad one never leaves the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarm.cli.output import EXIT_USAGE, CliError

#: `key=value` names on the command line -> AutoscalePolicy fields.
KEYS: dict[str, str] = {
    "min": "min_replicas",
    "max": "max_replicas",
    "target-rate": "target_rate",
    "target-queue": "target_queue",
    "utilization": "target_utilization",
    "cooldown": "cooldown_s",
    "scale-down-after": "scale_down_after_s",
    "horizon": "horizon_s",
    "method": "method",
}
_INTS = {"min_replicas", "max_replicas"}
_FLOATS = {
    "target_rate",
    "target_queue",
    "target_utilization",
    "cooldown_s",
    "scale_down_after_s",
    "horizon_s",
}
HELP = (
    "Autoscaling, as comma-separated key=value: min, max (replicas), target-rate (msg/s per "
    "replica; default: learned), target-queue (waiting messages per replica), utilization, "
    "cooldown, scale-down-after, horizon (seconds), method (holt|ewma)."
)


def parse(text: str) -> dict[str, Any]:
    """`min=1,max=10,target-rate=50` as the fields of a policy (not yet checked)."""
    fields: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in KEYS:
            raise CliError(
                f"--autoscale: {item!r} is not key=value with a known key",
                code=EXIT_USAGE,
                hint=f"keys: {', '.join(KEYS)}",
            )
        name = KEYS[key]
        fields[name] = _number(name, value.strip(), item)
    return fields


def _number(name: str, value: str, item: str) -> Any:
    try:
        if name in _INTS:
            return int(value)
        if name in _FLOATS:
            return float(value)
    except ValueError:
        raise CliError(f"--autoscale: {item!r} needs a number", code=EXIT_USAGE) from None
    return value


def policy(fields: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`fields` over `base` (an existing policy), checked; the policy as JSON data."""
    # Imported here: `HELP` is read by every `swarm` call, the model only by these verbs.
    from pydantic import ValidationError

    from schemas.specs import AutoscalePolicy

    merged = {**(base or {}), **fields, "enabled": True}
    try:
        checked = AutoscalePolicy.model_validate(merged, strict=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'autoscale'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid autoscaling policy: {problems}", code=EXIT_USAGE) from None
    return checked.model_dump(mode="json")


def describe(value: Any) -> str:
    """One line about an agent's policy, for `swarm agent describe`."""
    if not isinstance(value, dict) or not value.get("enabled", True):
        return "off"
    rate = value.get("target_rate")
    per = [
        f"{rate:g} msg/s" if rate else f"learned x {value.get('target_utilization', 0.8):g}",
    ]
    if value.get("target_queue"):
        per.append(f"{value['target_queue']:g} queued")
    return (
        f"{value.get('min_replicas')}..{value.get('max_replicas')} replicas, "
        f"{' / '.join(per)} per replica, {value.get('method')} forecast "
        f"{value.get('horizon_s'):g}s ahead, cooldown {value.get('cooldown_s'):g}s, "
        f"down after {value.get('scale_down_after_s'):g}s"
    )


__all__ = ["HELP", "KEYS", "describe", "parse", "policy"]
