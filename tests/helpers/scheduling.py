"""How pytest-xdist shares the suite among its workers: the longest tests first, and the tests of
a module with a costly module fixture on one worker.

`scripts/test` runs `-n 3 --dist loadgroup --no-loadscope-reorder`, with the scheduler below:
xdist hands a worker one unit at a time, in the order of the collection, as it runs out of work.
A unit is one test, or a whole module of `GROUPED_MODULES`. A long unit handed out last keeps one
worker busy while the others wait at the end of the run; handed out first, the short ones fill in
around it. A test's estimated time is its time limit (pytest-timeout): the tests known to be long
carry a larger one.

The groups are named here, by module, because xdist's own `xdist_group` marks do nothing under
pytest 9: xdist renames each item through `item._nodeid`, which pytest 9 no longer reads (its
nodes keep their id in `_id`), so every test was a unit of its own (seen with xdist 3.8.0 and
pytest 9.2.0: a `--dist loadgroup` run built test_components' component on all three workers).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from xdist.scheduler import LoadScopeScheduling

#: Modules whose tests share a costly module-scoped fixture, set up once when one worker runs
#: them all (nats-server and Hive stacks, built and compiled components, a `swarm up`).
GROUPED_MODULES = frozenset(
    {
        "tests/client/test_swarm.py",
        "tests/gateway/test_api.py",
        "tests/gateway/test_limits.py",
        "tests/gateway/test_protocol.py",
        "tests/gateway/test_reads.py",
        "tests/gateway/test_server.py",
        "tests/gateway/test_user_tokens.py",
        "tests/gateway/test_webhooks.py",
        "tests/runtime/test_capabilities.py",
        "tests/runtime/test_components.py",
        "tests/runtime/test_examples.py",
        "tests/runtime/test_pod_containment.py",
        "tests/test_cli_agent.py",
        "tests/test_cli_autoscale.py",
        "tests/test_cli_views.py",
        "tests/test_compose.py",
        "tests/test_perimeter.py",
        "tests/test_stack_auth.py",
        "tests/test_timeline_recorded.py",
    }
)


def unit_of(nodeid: str) -> str:
    """What xdist hands out together: the test's module if it is grouped, or the test alone."""
    module = nodeid.split("::", 1)[0]
    return module if module in GROUPED_MODULES else nodeid


class ModulesTogether(LoadScopeScheduling):
    """xdist's scope scheduling with `unit_of` as the scope. With `--no-loadscope-reorder` it
    hands the units out in the order of the collection, that of `longest_first`."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)


def time_limit(item: pytest.Item, default: float) -> float:
    """The test's own `timeout` mark (the closest: test, class, then module), else `default`."""
    mark = item.get_closest_marker("timeout")
    if mark is None:
        return default
    value = mark.args[0] if mark.args else mark.kwargs.get("timeout", default)
    return float(value)


def longest_first(items: list[pytest.Item], default_limit: float) -> None:
    """Reorder `items` in place: units by the sum of their tests' time limits, largest first.

    The sort is stable, so units of equal weight keep the order pytest-randomly shuffled them
    into (which runs before this), and a module's tests keep theirs."""
    weight: dict[str, float] = defaultdict(float)
    for item in items:
        weight[unit_of(item.nodeid)] += time_limit(item, default_limit)
    items.sort(key=lambda item: -weight[unit_of(item.nodeid)])
