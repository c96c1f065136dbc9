"""Autoscaling policies on the command line: `--autoscale min=1,max=10,target-rate=50`.

Used by `swarm agent deploy --autoscale` and `swarm agent autoscale`. A policy is checked here
with the same model the Hive uses, so a bad one never leaves the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from swarm.cli.output import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from schemas.specs import AutoscalePolicy

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
    return checked(fields, base).model_dump(mode="json")


def checked(fields: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> AutoscalePolicy:
    """`fields` over `base` (an existing policy), checked, as the model."""
    # Imported here: `HELP` is read by every `swarm` call, the model only by these verbs.
    from pydantic import ValidationError

    from schemas.specs import AutoscalePolicy

    merged = {**(base or {}), **fields, "enabled": True}
    try:
        return AutoscalePolicy.model_validate(merged, strict=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'autoscale'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid autoscaling policy: {problems}", code=EXIT_USAGE) from None


def describe(policy: AutoscalePolicy | None) -> str:
    """One line about an agent's policy, for `swarm agent describe` and `autoscale`."""
    if policy is None or not policy.enabled:
        return "off"
    rate = policy.target_rate
    per = [f"{rate:g} msg/s" if rate else f"learned x {policy.target_utilization:g}"]
    if policy.target_queue:
        per.append(f"{policy.target_queue:g} queued")
    return (
        f"{policy.min_replicas}..{policy.max_replicas} replicas, "
        f"{' / '.join(per)} per replica, {policy.method} forecast "
        f"{policy.horizon_s:g}s ahead, cooldown {policy.cooldown_s:g}s, "
        f"down after {policy.scale_down_after_s:g}s"
    )


__all__ = ["HELP", "KEYS", "checked", "describe", "parse", "policy"]
