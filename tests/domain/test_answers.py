"""Whose answer from an agent's mesh subject counts (`policy.answer_refusal`), without servers:
the pod the log places the replica on, speaking as that agent, alone."""

from __future__ import annotations

import pytest

from swarm.domain.policy import answer_refusal

pytestmark = pytest.mark.timeout(30)

AGENT = ("a1", "default/echo")
PLACED = {"a1-0": "pod-1", "a1-1": None}


def test_a_refusal_needs_a_pod_speaking_for_an_agent_alone() -> None:
    assert answer_refusal(("pod-9", "pod"), "agent:a1", "a1-0", AGENT, None) is None
    refused = answer_refusal(("ann", "user"), "agent:a1", "a1-0", AGENT, None)
    assert refused is not None
    assert "not by a pod for the agent" in refused


@pytest.mark.parametrize(
    ("signer", "identity", "replica", "reason"),
    [
        (("pod-1", "pod"), "agent:a1", "a1-0", None),
        (None, "agent:a1", "a1-0", "signed by a key the stack did not issue as 'agent:a1'"),
        (("ann", "user"), "agent:a1", "a1-0", "signed by ann (role user) as 'agent:a1', not by"),
        (("pod-1", "pod"), "pod:pod-1", "a1-0", "as 'pod:pod-1', not by a pod for the agent"),
        (("pod-1", "pod"), "agent:a2", "a1-0", "speaks as 'agent:a2', not as default/echo"),
        (("pod-1", "pod"), "agent:a1", "a2-0", "replica 'a2-0', which is no replica of"),
        (
            ("pod-2", "pod"),
            "agent:a1",
            "a1-0",
            "by pod-2 for replica a1-0, which the log places on pod-1",
        ),
        (("pod-1", "pod"), "agent:a1", "a1-1", "for replica a1-1, which the log places on no pod"),
    ],
)
def test_only_the_placed_pod_answers_for_its_replica(
    signer: tuple[str, str] | None, identity: str, replica: str, reason: str | None
) -> None:
    refused = answer_refusal(signer, identity, replica, AGENT, PLACED)
    if reason is None:
        assert refused is None
    else:
        assert refused is not None
        assert reason in refused
