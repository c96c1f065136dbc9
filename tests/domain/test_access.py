"""Roles per namespace (`swarm.cmd.access.*`, `policy.check_access`) without servers: what a
grant and a revoke decide and fold, which role a user holds where, and that a Raft snapshot of
an earlier Swarm (a pickled state without the newer fields) still loads."""

from __future__ import annotations

import pickle

import pytest

from schemas import command, commands, healing
from swarm.domain.policy import Reader, check_access, held_role
from swarm.domain.state import Grant, HiveState
from tests.helpers.sim import Sim

pytestmark = pytest.mark.timeout(30)


def test_a_grant_replaces_the_role_held_there_and_a_revoke_takes_it_back() -> None:
    sim = Sim()
    sim.ok(commands.CreateNamespace(name="team"))
    sim.ok(commands.GrantAccess(user="ann", role="viewer", namespace="team"))
    sim.ok(commands.GrantAccess(user="ann", role="operator", namespace="team"))
    sim.ok(commands.GrantAccess(user="ann", role="viewer"))
    assert sim.state.grants == (Grant("ann", "team", "operator"), Grant("ann", None, "viewer"))
    assert sim.state.access_seq == {"ann": 4}  # the namespace took sequence 1

    assert sim.rejected(commands.GrantAccess(user="ann", role="viewer")).reason == (
        "user ann holds role viewer in every namespace already"
    )
    missing = sim.rejected(commands.GrantAccess(user="ann", role="admin", namespace="nowhere"))
    assert (missing.rule, missing.reason) == ("not_found", "namespace nowhere not found")

    sim.ok(commands.RevokeAccess(user="ann", namespace="team"))
    assert sim.state.grants == (Grant("ann", None, "viewer"),)
    gone = sim.rejected(commands.RevokeAccess(user="ann", namespace="team"))
    assert (gone.rule, gone.reason) == ("not_found", "user ann holds no role in namespace team")


def test_a_user_holds_the_highest_of_its_roles_there_and_everywhere() -> None:
    state = HiveState(
        grants=(
            Grant("ann", None, "operator"),
            Grant("ann", "team", "admin"),
            Grant("bob", "team", "viewer"),
        )
    )
    assert held_role(state.grants, "ann", "team") == "admin"
    assert held_role(state.grants, "ann", "other") == "operator"
    assert held_role(state.grants, "ann", None) == "operator"  # what reaches every namespace
    assert held_role(state.grants, "bob", "other") is None
    assert held_role(state.grants, "cid", "team") is None


@pytest.mark.parametrize("role", ["admin", "hive", "gateway", "service", "pod"])
def test_only_users_are_held_to_grants(role: str) -> None:
    env = command(commands.CreateNamespace(name="x"), source="t", identity="user:ann")
    assert check_access(HiveState(), role, env) is None


def test_a_command_naming_an_unknown_agent_takes_an_admin_of_every_namespace() -> None:
    """Its namespace cannot be known, so nothing about it is told to a namespace's operator."""
    state = HiveState(grants=(Grant("ann", "default", "operator"),))
    env = command(healing.ReleaseAgent(agent_id="nobody"), source="t", identity="user:ann")
    refused = check_access(state, "user", env)
    assert refused is not None
    assert "needs role admin in every namespace and holds no role there" in refused.reason


def test_a_state_pickled_by_an_earlier_swarm_loads_with_the_newer_fields_at_their_default() -> None:
    sim = Sim()
    sim.ok(commands.CreateNamespace(name="team"))
    sim.ok(commands.GrantAccess(user="ann", role="admin"))
    assert pickle.loads(pickle.dumps(sim.state)).digest() == sim.state.digest()
    # What unpickling does with the slots an earlier Swarm pickled (object.__reduce_ex__).
    _, saved = sim.state.__reduce_ex__(2)[2]
    for newer in ("grants", "access_seq", "chain_head"):
        del saved[newer]
    old = HiveState.__new__(HiveState)
    old.__setstate__((None, saved))
    assert (old.grants, old.access_seq, old.chain_head) == ((), {}, "")
    assert old.namespaces.keys() == {"default", "team"}


def test_the_cli_offers_the_roles_the_schema_names() -> None:
    from schemas.specs import ACCESS_ROLES
    from swarm.cli.user import Role

    assert tuple(r.value for r in Role) == ACCESS_ROLES


def test_messaging_agents_takes_an_operator_there_and_a_topic_an_operator_everywhere() -> None:
    from swarm.domain.policy import check_message

    grants = (Grant("ann", "team", "operator"), Grant("bob", None, "operator"))
    assert check_message(grants, "ann", "team") is None
    assert check_message(grants, "bob", "team") is None
    assert check_message(grants, "bob", None) is None
    assert check_message(grants, "ann", None) == (
        "user ann may not message on a topic: it needs role operator in every namespace and "
        "holds no role (the stack's owner grants it with "
        "`swarm user grant ann operator --all-namespaces`)"
    )
    viewer = check_message((Grant("cid", "team", "viewer"),), "cid", "team")
    assert viewer is not None
    assert "needs role operator there and holds viewer" in viewer


def test_a_user_reads_where_it_holds_a_role_and_everyone_else_reads_everything() -> None:
    """`policy.Reader`: what the Hive's queries and the HTTP API show a principal."""
    grants = (Grant("ann", "team", "viewer"), Grant("vic", None, "viewer"))
    ann = Reader.of("user", "ann")
    assert ann.reads(grants, "team")
    assert not ann.reads(grants, "other")
    assert not ann.reads(grants, None)  # what spans every namespace
    assert ann.refusal(grants, "team", "read namespace team") is None
    assert ann.refusal(grants, "other", "read namespace other") == (
        "user ann may not read namespace other: it needs role viewer in namespace other and "
        "holds no role there (the stack's owner grants it with "
        "`swarm user grant ann viewer --namespace other`)"
    )
    assert Reader.of("user", "vic").reads(grants, None)
    for role in ("admin", "hive", "gateway", "service", "pod"):
        anyone = Reader.of(role, "x")
        assert anyone.user is None
        assert anyone.reads((), None)
        assert anyone.refusal((), None, "list the pods") is None
