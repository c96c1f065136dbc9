"""The log itself: the Hive's state at a point, what changed between two, and what is wrong with
the log (as `swarm timeline --at`, `diff` and `verify`), each a verb of the client's timeline."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from swarm.client.errors import ClientError, FieldProblem
from swarm.client.timetravel import Point
from swarm.gateway.problems import ProblemError
from swarm.gateway.routes.common import GatewayDep, v1_router

router = v1_router("timeline", under="/timeline")

PointQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=64,
        description="A sequence of SWARM_EVENTS (`1234`) or a time (ISO 8601, or `10m` ago).",
    ),
]


def _point(name: str, text: str) -> Point:
    try:
        return Point.parse(text)
    except ClientError as exc:
        raise ProblemError(
            422,
            "invalid-request",
            "Invalid request",
            f"{name}: {exc.message}",
            errors=[FieldProblem(f"query.{name}", exc.message, "value_error")],
        ) from None


@router.get("/state", summary="The Hive's state at a point of the log")
async def state_at(gw: GatewayDep, at: PointQuery) -> dict[str, Any]:
    """The state folded from the log up to `at` (here, not asked of the Hive), its digest and
    where in the log it stands."""
    snapshot = await gw.swarm.timeline.state_at(_point("at", at))
    return snapshot.as_json()


@router.get("/diff", summary="What changed between two points of the log")
async def diff(gw: GatewayDep, first: PointQuery, second: PointQuery) -> dict[str, Any]:
    """The paths of the state that differ from `first` to `second` (`first` not later)."""
    before, after, changes = await gw.swarm.timeline.diff(
        _point("first", first), _point("second", second)
    )
    return {
        "from": {k: v for k, v in before.as_json().items() if k != "state"},
        "to": {k: v for k, v in after.as_json().items() if k != "state"},
        "changes": [c.as_json() for c in changes],
    }


@router.get("/verify", summary="Check the log")
async def verify(
    gw: GatewayDep,
    grace: Annotated[
        float,
        Query(ge=0, le=86_400, description="Seconds a new command may wait for its outcome."),
    ] = 30.0,
) -> dict[str, Any]:
    """Gaps, undecodable entries, commands without exactly one outcome, events that do not fold
    and causation that points nowhere (as `swarm timeline verify -o json`)."""
    report = await gw.swarm.timeline.verify(grace=grace)
    return report.as_json()
