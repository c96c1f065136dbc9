"""How the Hive says no: one `Rejection`, whose `rule` is one of `Rule`.

`decide`, the policies (`policy.py`) and the Hive's command processor all refuse with this type,
and the `command.rejected` event carries `rule` as its string value, so every reader of the log
(the CLI, the HTTP API, the scheduler, the pods) can branch on the rule, never on the reason's
text. The values are the wire format: renaming one is a change of the event schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Rule(StrEnum):
    """Every rule a command can be refused by."""

    #: The command does not fit the state (exists already, wrong phase, nothing to do, ...).
    STATE = "state"
    #: The Hive does not handle this command type.
    TYPE = "type"
    #: The command's type is not the subject it was published on.
    SUBJECT = "subject"
    #: Its sender may not send it (`policy.check_identity`), or may not claim the identity it
    #: claims (`policy.check_principal`).
    IDENTITY = "identity"
    #: It is not signed by a principal of the stack, or its signature does not hold.
    SIGNATURE = "signature"
    #: A user without the role the command needs in its namespace (`policy.check_access`).
    ACCESS = "access"
    #: An agent acting on its own beyond what its spec allows.
    AUTONOMY = "autonomy"
    #: The module to deploy is not stored.
    MODULE = "module"
    #: What it names (namespace, agent, version, replica, pod, webhook) does not exist.
    NOT_FOUND = "not_found"
    #: A pod reported on a replica that is not (any more) placed on it.
    NOT_ASSIGNED = "not_assigned"
    #: A preemption named a victim that holds no place.
    NOT_PLACED = "not_placed"
    POD_UNAVAILABLE = "pod_unavailable"
    CAPACITY = "capacity"
    #: A preemption's victim does not rank below the replica it makes room for.
    PRIORITY = "priority"
    #: A crashed replica's restart was asked for before its backoff elapsed.
    BACKOFF = "backoff"
    #: A field's value breaks a rule its schema cannot state (see `Rejection.errors`).
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    AUTOSCALE = "autoscale"
    #: The namespace's quota (`schemas.specs.Quota`, one rule per limit).
    QUOTA_MAX_AGENTS = "quota.max_agents"
    QUOTA_MAX_REPLICAS = "quota.max_replicas"
    QUOTA_MAX_MEMORY_MB = "quota.max_memory_mb"
    QUOTA_MAX_FUEL_PER_S = "quota.max_fuel_per_s"
    #: Refused by the command processor, not by `decide`: the decision failed or could not be
    #: written, the command id was used for another command, or the message kept failing.
    INTERNAL = "internal"
    DUPLICATE_ID = "duplicate_id"
    POISON = "poison"


@dataclass(frozen=True, slots=True)
class Rejection:
    """The command was not carried out: why (for people), by which rule (for programs), and
    field-level problems when its fields were at fault."""

    reason: str
    rule: Rule = Rule.STATE
    errors: tuple[dict[str, str], ...] = ()


__all__ = ["Rejection", "Rule"]
