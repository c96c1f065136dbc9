"""Topic fan-out end to end: a real nats-server, an in-process Hive and scheduler, a real pod.

Agents list topics in their spec; a message published on `mesh_topic_subject(t)` (by anyone,
or by an agent's `send("topic:t", ...)`) reaches one replica of every subscribed agent, through
its mailbox, and is never answered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from schemas import names
from tests.helpers.agents import agent
from tests.helpers.pods import cluster, deploy, running_on, running_pod
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

#: Logs every message it handles at info level, and replies with it (a reply nobody may see
#: for topic messages).
LOGGER = agent(
    """
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (call $log (i32.const 1) (local.get $ptr) (local.get $len))
    (call $reply (local.get $ptr) (local.get $len))
    (i32.const 0))
""",
    imports=("log", "reply"),
)

#: Publishes every message it gets on topic "news" and replies with send's return code.
PUBLISHER = agent(
    """
  (data (i32.const 16) "topic:news")
  (func (export "swarm_handle") (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 64)
      (call $send (i32.const 16) (i32.const 10) (local.get $ptr) (local.get $len)))
    (call $reply (i32.const 64) (i32.const 4))
    (i32.const 0))
""",
    imports=("send", "reply"),
)


class LogLines:
    """The `kind: log` lines of a pod's agents, by agent name, from a core NATS subscription."""

    def __init__(self) -> None:
        self.by_agent: dict[str, list[str]] = {}

    async def on_line(self, msg: Any) -> None:
        line = json.loads(msg.data)
        if line.get("kind") == "log":
            self.by_agent.setdefault(line["name"], []).append(line["message"])

    def of(self, name: str) -> list[str]:
        return self.by_agent.get(name, [])


async def _settle() -> None:
    # Long enough for a duplicate or a stray delivery to show up, if there were one.
    await asyncio.sleep(0.5)


async def test_topic_messages_reach_one_replica_of_every_subscribed_agent(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        lines = LogLines()
        nc = stack.client.nc
        sub = await nc.subscribe(names.logs_subject("p1", "info"), cb=lines.on_line)
        await deploy(stack, "reader-a", LOGGER, replicas=2, topics=["news"])
        await deploy(stack, "reader-b", LOGGER, topics=["weather", "news"])
        await deploy(stack, "bystander", LOGGER, topics=["weather"])
        await deploy(stack, "publisher", PUBLISHER)
        await running_on(stack, "reader-a", "p1", replicas=2)
        for name in ("reader-b", "bystander", "publisher"):
            await running_on(stack, name, "p1")

        # Published from outside, with a reply subject: subscribers never answer topics.
        inbox = nc.new_inbox()
        answers: list[bytes] = []

        async def on_answer(msg: Any) -> None:
            answers.append(msg.data)

        answer_sub = await nc.subscribe(inbox, cb=on_answer)
        await nc.publish(names.mesh_topic_subject("news"), b"first", reply=inbox)
        await nc.flush()
        await wait_until(
            lambda: _got(lines, ["reader-a", "reader-b"], "first"), 10, "first delivered"
        )
        await _settle()
        assert lines.of("reader-a") == ["first"]  # one of its two replicas, once
        assert lines.of("reader-b") == ["first"]
        assert lines.of("bystander") == []
        assert answers == []

        # An agent's send("topic:news") reaches the same subscribers.
        reply = await nc.request(names.mesh_agent_subject("default", "publisher"), b"second", 5)
        assert int.from_bytes(reply.data, "little", signed=True) == 0
        await wait_until(
            lambda: _got(lines, ["reader-a", "reader-b"], "second"), 10, "second delivered"
        )
        await _settle()
        assert lines.of("reader-a") == ["first", "second"]
        assert lines.of("reader-b") == ["first", "second"]
        assert lines.of("bystander") == []
        assert lines.of("publisher") == []

        # Another topic reaches its own subscribers only.
        await nc.publish(names.mesh_topic_subject("weather"), b"rain")
        await wait_until(
            lambda: _got(lines, ["reader-b", "bystander"], "rain"), 10, "rain delivered"
        )
        await _settle()
        assert lines.of("reader-a") == ["first", "second"]
        assert lines.of("reader-b") == ["first", "second", "rain"]
        assert lines.of("bystander") == ["rain"]
        assert answers == []
        await sub.unsubscribe()
        await answer_sub.unsubscribe()


async def test_topic_messages_over_a_full_mailbox_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1", mailbox_size=1) as (pod, _):
        await deploy(stack, "slow", SLOW, topics=["burst"])
        await running_on(stack, "slow", "p1")
        nc = stack.client.nc
        for i in range(20):
            await nc.publish(names.mesh_topic_subject("burst"), b"%d" % i)
        await nc.flush()
        replica = next(iter(pod.replicas.values()))

        async def all_seen() -> bool:
            m = replica.metrics
            return m.topic_messages + m.topic_dropped == 20 and m.calls == m.topic_messages

        await wait_until(all_seen, 45, "every burst message queued or dropped")
        metrics = replica.metrics_json()
        assert replica.metrics.topic_dropped > 0
        assert replica.metrics.topic_messages >= 1
        assert metrics["topic_dropped"] == replica.metrics.topic_dropped
        assert metrics["rejected"] == 0  # that count is for direct messages


#: Burns some fuel per message, so a burst of topic messages overflows a mailbox of 1.
SLOW = agent(
    """
  (func (export "swarm_handle") (param i32 i32) (result i32)
    (local $i i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 2000000))))
    (i32.const 0))
"""
)


async def _got(lines: LogLines, agents: list[str], message: str) -> bool:
    return all(message in lines.of(name) for name in agents)
