"""The Hive's log is tamper-evident: its sealed entries chain, and each accepted outcome gives
the digest of every event it caused. A history exported, edited and imported elsewhere (as
someone rewriting it would) is caught by `swarm timeline verify`: an event changed, an event
removed, a whole command (command, events, outcome) removed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas import commands, names
from swarm.kernel.seal import SealKey
from tests.helpers.servers import own_nats
from tests.helpers.stack import running_stack
from tests.helpers.timeline import invoke_timeline
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

Items = list[dict[str, Any]]


@pytest.fixture
async def exported(tmp_path: Path) -> Items:
    """The log of a real Hive that created four namespaces, as `swarm timeline export` writes
    it, with the Hive's public key."""
    async with running_stack(tmp_path / "source") as stack:
        await stack.send(
            [(commands.CreateNamespace(name=f"team-{i}"), "user:ann") for i in range(4)]
        )

        async def all_answered() -> bool:
            return len(await stack.events_named("accepted")) == 4

        await wait_until(all_answered, 60, "four commands answered")
        path = tmp_path / "log.json"
        result = await invoke_timeline(["export", "-f", str(path)], stack.url)
        assert result.exit_code == 0, result.output
    items: Items = json.loads(path.read_text())
    return items


async def verified(
    items: Items, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, str]]:
    """`items` imported into a fresh stack's log, then verified with the source Hive's key:
    (kind, detail) of each finding."""
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(items))
    # The in-process Hive's key (`tests.helpers.stack`: its Raft password is the secret).
    key = SealKey.from_secret("secret-123").public.text
    with own_nats(tmp_path / "target") as url:
        result = await invoke_timeline(["import", str(path)], url)
        assert result.exit_code == 0, result.output
        monkeypatch.setenv("SWARM_HIVE_PUBLIC_KEY", key)
        result = await invoke_timeline(["verify", "-o", "json", "--grace", "0"], url)
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["ok"] else 1), result.output
    return [(f["kind"], f["detail"]) for f in report["findings"]]


def where(items: Items, match: Callable[[dict[str, Any]], bool]) -> list[int]:
    return [i for i, item in enumerate(items) if match(item)]


def created(item: dict[str, Any]) -> bool:
    return str(item.get(names.EXPORT_ATTR_SUBJECT, "")).endswith(".created")


async def test_an_untouched_history_verifies(
    exported: Items, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = [i for i in exported if names.EXTENSION_HIVE_SEAL in i]
    assert len(sealed) == 4  # the outcomes (a leader on an empty log records no election)
    assert all(names.EXTENSION_HIVE_PREVIOUS in i for i in sealed[1:])
    assert await verified(exported, tmp_path, monkeypatch) == []


async def test_an_event_changed_after_the_hive_wrote_it_is_found(
    exported: Items, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, *_ = where(exported, created)
    changed = json.loads(json.dumps(exported))
    changed[first]["data"]["quota"]["max_agents"] = 10_000
    found = await verified(changed, tmp_path, monkeypatch)
    assert [kind for kind, _ in found] == ["altered-event"]
    assert exported[first]["id"] in found[0][1]


async def test_an_event_removed_is_found(
    exported: Items, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, second, *_ = where(exported, created)
    removed = [item for i, item in enumerate(exported) if i != second]
    found = await verified(removed, tmp_path, monkeypatch)
    assert [kind for kind, _ in found] == ["missing-event"]
    assert exported[second]["id"] in found[0][1]


async def test_a_whole_command_removed_breaks_the_chain(
    exported: Items, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its command, its event and its outcome gone: nothing dangles, only the chain shows it."""
    _, _, third, _ = where(exported, created)
    command_id = exported[third]["causationid"]
    gone = [
        item
        for item in exported
        if item.get("id") != command_id and item.get("causationid") != command_id
    ]
    assert len(gone) == len(exported) - 3
    found = await verified(gone, tmp_path, monkeypatch)
    assert [kind for kind, _ in found] == ["broken-chain"]
    assert "removed" in found[0][1]
