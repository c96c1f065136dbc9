"""The order and the units in which xdist's workers get the suite (tests/helpers/scheduling.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from tests.helpers.scheduling import GROUPED_MODULES, longest_first, time_limit, unit_of

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FakeItem:
    """What the scheduling reads of a test: its id and its `timeout` mark."""

    nodeid: str
    limit: float | None = None

    def get_closest_marker(self, name: str) -> Any:
        if name == "timeout" and self.limit is not None:
            return pytest.mark.timeout(self.limit).mark
        return None


def items(*fakes: FakeItem) -> list[pytest.Item]:
    return cast(list[pytest.Item], list(fakes))


def test_every_grouped_module_exists() -> None:
    # A renamed module would silently lose its group (and set its fixture up on every worker).
    assert sorted(m for m in GROUPED_MODULES if not (ROOT / m).is_file()) == []


def test_a_grouped_module_is_one_unit_and_another_test_its_own() -> None:
    assert unit_of("tests/test_cli_agent.py::test_a[x]") == "tests/test_cli_agent.py"
    assert unit_of("tests/test_stack.py::test_b") == "tests/test_stack.py::test_b"


def test_the_time_limit_is_the_mark_or_the_default() -> None:
    assert time_limit(items(FakeItem("a.py::t", 300))[0], 60) == 300
    assert time_limit(items(FakeItem("a.py::t"))[0], 60) == 60


def test_units_go_longest_first_and_equal_ones_keep_their_order() -> None:
    grouped = "tests/test_cli_views.py"
    order = items(
        FakeItem("tests/a.py::quick"),
        FakeItem(f"{grouped}::one"),
        FakeItem("tests/a.py::long", 420),
        FakeItem(f"{grouped}::two"),
        FakeItem("tests/b.py::quick"),
        FakeItem(f"{grouped}::three", 90),
    )
    longest_first(order, 60)
    assert [i.nodeid for i in order] == [
        "tests/a.py::long",
        # The module weighs 60 + 60 + 90; its tests keep their order.
        f"{grouped}::one",
        f"{grouped}::two",
        f"{grouped}::three",
        "tests/a.py::quick",
        "tests/b.py::quick",
    ]
