"""Roles per namespace (`swarm.cmd.access.*`, `policy.check_access`) without servers: what a
grant and a revoke decide and fold, which role a user holds where, and that a Raft snapshot of
an earlier Swarm (a pickled state without the newer fields) still loads."""

from __future__ import annotations

import pickle

import pytest

from schemas import command, commands, healing
from swarm.domain.policy import check_access, held_role
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
    assert held_role(state, "ann", "team") == "admin"
    assert held_role(state, "ann", "other") == "operator"
    assert held_role(state, "ann", None) == "operator"  # what reaches every namespace
    assert held_role(state, "bob", "other") is None
    assert held_role(state, "cid", "team") is None


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
