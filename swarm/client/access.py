"""Who may read and do what, as the Hive decides it: a front end applies the same rules before
it asks, so a user is refused with the Hive's words.

`Grant` is one role a user holds in a namespace (or in all of them); `role_refusal` says why a
user's grants do not allow an action, or None; `answer_refusal` why an answer on an agent's
mesh subject is not that agent's (not from the pod the log places its replica on); `Reader` is
what a user may read (its namespaces); `READ_ROLE` is the role reading takes, `MESSAGE_ROLE`
the one messaging on a topic takes. The HTTP API limits a user's reads and task queueing with
them (`swarm.gateway.access`).

The domain's (`swarm.domain.policy`, `swarm.domain.state`), named here so that the front ends
import the client alone.
"""

from __future__ import annotations

from swarm.domain.policy import MESSAGE_ROLE, READ_ROLE, Reader, answer_refusal, role_refusal
from swarm.domain.state import Grant

__all__ = ["MESSAGE_ROLE", "READ_ROLE", "Grant", "Reader", "answer_refusal", "role_refusal"]
