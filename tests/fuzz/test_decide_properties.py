"""Pure properties of the Hive's rules, on commands generated from the exported JSON Schemas.

* What the schema accepts, the decoder accepts (after the few cross-field rules JSON Schema does
  not state, see `schema_strategies`): a client that validates against the exported files is
  never surprised by a decode error.
* `decide` never raises, never changes the state it is given, and is deterministic: the same
  state, command and time give an equal outcome.
* What it decides can be written: every event of an accepted decision survives the trip
  through bytes and folds (`fold_checked`, what every replica does with the log).

The state each command is decided on is built by a random history of valid commands, decided and
folded the way the Hive's leader does it (decide, encode, decode back, evolve).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import REGISTRY, Envelope, Payload, event, names
from swarm.domain.decide import Decision, Rejection, decide
from swarm.domain.evolve import fold_checked
from swarm.domain.state import HiveState
from tests.fuzz.schema_strategies import command_object, command_types
from tests.fuzz.sends import SETUP_TYPES, steered_command

pytestmark = pytest.mark.timeout(60)

_START = datetime(2026, 1, 1, tzinfo=UTC)


def _decoded(obj: dict[str, Any]) -> Envelope[Any]:
    return REGISTRY.decode(json.dumps(obj, ensure_ascii=False).encode(), kind="command")


def _aggregate_id(payload: Payload) -> str:
    aggregate = payload.TYPE.split(".")[1]
    return str(getattr(payload, names.AGGREGATE_ID_FIELDS[aggregate]))


def _fold(state: HiveState, command: Envelope[Any], decision: Decision) -> None:
    """Write the decision the way the leader does: each event as bytes, decoded back, folded
    at the next sequence, then the outcome's sequence."""
    for n, payload in enumerate(decision.events):
        envelope = event(
            payload,
            aggregate_id=_aggregate_id(payload),
            source="fuzz",
            cause=command,
            id=f"{command.id}-{n}",
        )
        fold_checked(state, state.applied_seq + 1, envelope.to_json())
    state.applied_seq += 1


#: Setup steps every history takes at least once.
_MUST = frozenset({"swarm.cmd.pod.register", "swarm.cmd.agent.deploy"})


@st.composite
def histories(draw: st.DrawFn) -> tuple[HiveState, list[str]]:
    """A state built from a random history of valid commands; returns it and what happened."""
    state = HiveState()
    now = _START
    log: list[str] = []
    # The setup in the order things can build on each other (pods, namespaces, agents,
    # placements, replica reports), then anything.
    setup = [
        obj
        for type_ in SETUP_TYPES
        for obj in draw(st.lists(steered_command((type_,)), min_size=type_ in _MUST, max_size=3))
    ]
    for obj in setup + draw(st.lists(steered_command(), max_size=8)):
        command = _decoded(obj)
        now += timedelta(seconds=draw(st.sampled_from([0, 1, 30, 3600])))
        outcome = decide(state, command, now)
        if isinstance(outcome, Decision):
            _fold(state, command, outcome)
            log.append(f"{command.type} {command.id}: {[e.TYPE for e in outcome.events]}")
        else:
            log.append(f"{command.type} {command.id}: rejected ({outcome.rule})")
    return state, log


@pytest.mark.parametrize("type_", command_types())
@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_schema_valid_commands_decode(type_: str, data: st.DataObject) -> None:
    obj = data.draw(command_object(type_))
    command = _decoded(obj)
    assert command.type == type_


# CPU-bound: ~20 s on a quiet machine here, and over 60 s beside four busy loops (stress run I).
@pytest.mark.timeout(300)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    history=histories(),
    obj=steered_command(),
    later=st.sampled_from([0, 1, 59, 3600, 86_400 * 30]),
    missing=st.booleans(),
)
def test_decide_is_total_pure_and_deterministic(
    history: tuple[HiveState, list[str]], obj: dict[str, Any], later: int, missing: bool
) -> None:
    state, log = history
    command = _decoded(obj)
    now = _START + timedelta(days=1, seconds=later)
    spec = getattr(command.data, "spec", None)
    facts = frozenset({spec.module.sha256}) if missing and spec and spec.module.sha256 else None
    kwargs = {"missing_modules": facts} if facts else {}
    before = state.digest()
    pristine = copy.deepcopy(state)

    first = decide(state, command, now, **kwargs)

    assert state.digest() == before, f"decide changed its input state; history: {log}"
    assert isinstance(first, Decision | Rejection)
    assert decide(state, command, now, **kwargs) == first
    assert decide(pristine, command, now, **kwargs) == first
    if isinstance(first, Decision):
        # What was decided can be written and folded, as every replica will.
        _fold(pristine, command, first)
