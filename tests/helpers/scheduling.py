"""The order pytest-xdist hands the suite's tests to its workers in: the longest first.

`scripts/test` runs with `--dist loadgroup`: xdist hands a worker one unit at a time, in the
order of the collection, as it runs out of work; a unit is one test, or all the tests of an
`xdist_group` (a module whose tests share a costly module fixture: set up once, on one worker).
A long unit handed out last keeps one worker busy while the others wait at the end of the run;
handed out first, the short ones fill in around it. The estimate of a test's time is its time
limit (pytest-timeout): the tests known to be long carry a larger one.
"""

from __future__ import annotations

from collections import defaultdict

import pytest


def time_limit(item: pytest.Item, default: float) -> float:
    """The test's own `timeout` mark (the closest: test, class, then module), else `default`."""
    mark = item.get_closest_marker("timeout")
    if mark is None:
        return default
    value = mark.args[0] if mark.args else mark.kwargs.get("timeout", default)
    return float(value)


def unit_of(item: pytest.Item) -> str:
    """What xdist hands out together: the test's group, or the test alone."""
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return item.nodeid
    return "group " + str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def longest_first(items: list[pytest.Item], default_limit: float) -> None:
    """Reorder `items` in place: units by the sum of their tests' time limits, largest first.

    The sort is stable, so units of equal weight keep the order pytest-randomly shuffled them
    into (which runs before this), and a group's tests keep theirs."""
    weight: dict[str, float] = defaultdict(float)
    for item in items:
        weight[unit_of(item)] += time_limit(item, default_limit)
    items.sort(key=lambda item: -weight[unit_of(item)])
